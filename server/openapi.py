"""The OpenAPI 3.1 description of the server's HTTP API (served at ``/api/v1/openapi.json``).

Every route of the app except the dashboard's (its pages, and the JSON they refresh with, are
for signed-in browsers, not an API) is described here; a test walks ``app.url_map`` and fails
for a route missing from the document, or an operation that is no route. Each operation has
its parameters with their bounds (:mod:`overdrive.server.openapi_parameters`), its request body, the
2xx answer's schema (:mod:`overdrive.server.openapi_schemas`) and each error it really answers, all as
``Error``. The fuzzers (``tests/fuzz``) check every answer against
it, and a typed Python client is generated from it (``tests/server/test_openapi_client.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from overdrive import __version__
from overdrive.server.openapi_parameters import (
    AUDIT_FILTERS,
    CAMPAIGN_STATE,
    CAMPAIGN_VEHICLE_FILTERS,
    PAGING,
    PATH_PARAMETERS,
    VEHICLE_FILTERS,
)
from overdrive.server.openapi_schemas import SCHEMAS, Schema, ref

API = "/api/v1"
_JSON = "application/json"

# ------------------------------------------------------------------------------ operations


@dataclass(frozen=True)
class Operation:
    """One documented operation: what it does, who may call it, its inputs and answers."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    role: str
    """Minimum role (``viewer``/``operator``/``admin``), or ``public`` / ``vehicle``."""
    answer: Schema
    """The success answer's ``content`` (media type → schema object)."""
    status: int = 200
    errors: dict[int, str] = field(default_factory=dict)
    """Statuses besides the role's 401/403 and the database's 503, each with when."""
    parameters: tuple[Schema, ...] = ()
    body: Schema | None = None
    body_required: bool = True
    database: bool = True
    """Whether it reads the database (so it answers 503 while the database is down)."""
    description: str = ""


def _json(name: str) -> Schema:
    return {_JSON: {"schema": ref(name)}}


_EMPTY = "an empty value is the same as leaving that filter out"
_NOT_A_CAMPAIGN = "No campaign with this id (or id prefix)."
_PREFIX = "The id prefix matches several campaigns."
_STATE = "The campaign is not in a state this action applies to, or changed concurrently."


def _action(name: str, summary: str, conflict: str, reason: bool = False) -> Operation:
    return Operation(
        "post",
        f"/campaigns/{{campaign_id}}/{name}",
        f"{name}_campaign",
        summary,
        "campaigns",
        "operator",
        _json("Campaign"),
        errors={
            400: "A malformed reason." if reason else "",
            404: _NOT_A_CAMPAIGN,
            409: f"{_PREFIX} {conflict}",
            **({413: ""} if reason else {}),
            **({503: "The image repository is unavailable."} if name == "start" else {}),
        },
        body=ref("ActionReason") if reason else None,
        body_required=False,
    )


OPERATIONS: tuple[Operation, ...] = (
    # ---- vehicles (the vehicle protocol: no bearer token, signatures instead)
    Operation(
        "post",
        "/vehicles/register",
        "register_vehicle",
        "Register a vehicle with an enrollment token",
        "vehicles",
        "public",
        _json("Registered"),
        status=201,
        errors={
            400: "A malformed registration.",
            401: "The enrollment token is unknown, used up or expired.",
            409: "The vehicle id is already registered.",
            413: "",
        },
        body=ref("Registration"),
    ),
    Operation(
        "post",
        "/vehicles/{vehicle_id}/poll",
        "poll",
        "Poll with a vehicle version manifest; learn the director metadata's version",
        "vehicles",
        "vehicle",
        _json("PollAnswer"),
        errors={
            400: "A malformed manifest (counter, timestamp too far off, nonce, ECU reports, "
            "status), no report from the primary ECU, or a report whose hardware id is not "
            "the one registered for its ECU.",
            401: "Not signed by this vehicle's key (or no such vehicle: the same answer), or an "
            "ECU report not signed by that ECU's key.",
            409: "A replayed manifest or ECU report: its counter is not above the last one, or "
            "the report does not echo the manifest's nonce.",
            413: "",
            503: "No director repository to sign the vehicle's assignments.",
        },
        body=ref("PollRequest"),
        description="A report under a serial the vehicle has no ECU of is ignored (not the "
        "manifest): the vehicle's `unknown_ecus` records it, and "
        "`overdrive_unknown_ecu_reports_total` counts it.",
    ),
    Operation(
        "get",
        "/director/{vehicle_id}/metadata/{name}",
        "director_metadata",
        "A TUF metadata file of the vehicle's director repository",
        "vehicles",
        "public",
        _json("TufMetadata"),
        errors={
            404: "No such vehicle, or no such file (names: `N.root.json`, `root.json`, "
            "`timestamp.json`, `N.snapshot.json`, `N.targets.json`).",
            503: "No director repository configured.",
        },
        description="Any TUF client refreshes a vehicle's director repository from the "
        "director's root with `/api/v1/director/{vehicle_id}/metadata/` as its metadata URL. "
        "A timestamp past half its life is re-signed when asked for.",
    ),
    Operation(
        "post",
        "/vehicles/{vehicle_id}/events",
        "report_events",
        "Report signed events (stored once per event id)",
        "vehicles",
        "vehicle",
        _json("EventsAnswer"),
        errors={
            400: "A malformed event, or one for a campaign the vehicle is not a member of "
            "(code `not_a_member`); the whole batch is refused.",
            401: "Not signed by this vehicle's key (or no such vehicle: the same answer).",
            409: "Another report of the same events raced this one.",
            413: "",
        },
        body=ref("EventsRequest"),
    ),
    Operation(
        "get",
        "/vehicles",
        "list_vehicles",
        "List the fleet, filtered and sorted",
        "vehicles",
        "viewer",
        _json("VehicleList"),
        errors={400: "An unknown filter name, or a bad value or page."},
        parameters=VEHICLE_FILTERS,
        description=f"Filters combine; {_EMPTY}; any other parameter name is a 400.",
    ),
    Operation(
        "get",
        "/vehicles/{vehicle_id}",
        "get_vehicle",
        "One vehicle: its software set (ECUs and images), status and campaign memberships",
        "vehicles",
        "viewer",
        _json("VehicleDetail"),
        errors={404: "No vehicle with this id."},
    ),
    Operation(
        "post",
        "/vehicles/{vehicle_id}/ecus/{ecu_serial}/replace",
        "replace_ecu",
        "Replace an ECU by a new part (new serial and key, same hardware id)",
        "vehicles",
        "operator",
        _json("VehicleDetail"),
        errors={
            400: "A malformed body, or a hardware id that is not the replaced ECU's.",
            404: "No vehicle with this id, or it has no ECU with this serial.",
            409: "The vehicle already has an ECU with the new serial.",
            413: "",
        },
        body=ref("EcuReplacement"),
        description="The new serial takes the old one's place in the vehicle's software set "
        "(hardware id, primary flag and kind kept) with the new key (for the primary: the "
        "vehicle's key, and its manifest counter starts again); its installed image moves "
        "with it; its report counter starts from none. The old serial's reports are unknown "
        "from then on. Recorded in the audit log (`vehicle.replace_ecu`).",
    ),
    Operation(
        "get",
        "/vehicles/{vehicle_id}/events",
        "list_vehicle_events",
        "A vehicle's events, most recently received first",
        "vehicles",
        "viewer",
        _json("VehicleEvents"),
        errors={400: "A bad page.", 404: "No vehicle with this id."},
        parameters=PAGING,
    ),
    # ---- campaigns
    Operation(
        "post",
        "/campaigns",
        "create_campaign",
        "Create a campaign (a draft)",
        "campaigns",
        "operator",
        _json("Campaign"),
        status=201,
        errors={
            400: "A malformed campaign, an unknown policy, or a release the signed "
            "repository does not hold.",
            413: "",
            503: "The image repository is unavailable.",
        },
        body=ref("CampaignCreate"),
    ),
    Operation(
        "get",
        "/campaigns",
        "list_campaigns",
        "List campaigns, newest first",
        "campaigns",
        "viewer",
        _json("CampaignList"),
        errors={400: "An unknown state, or a bad page."},
        parameters=(*PAGING, CAMPAIGN_STATE),
    ),
    Operation(
        "get",
        "/campaigns/{campaign_id}",
        "get_campaign",
        "A campaign's status: stage, why it waits, counts and groups",
        "campaigns",
        "viewer",
        _json("Campaign"),
        errors={404: _NOT_A_CAMPAIGN, 409: _PREFIX},
    ),
    Operation(
        "delete",
        "/campaigns/{campaign_id}",
        "delete_campaign",
        "Delete a draft campaign",
        "campaigns",
        "operator",
        _json("CampaignDeleted"),
        errors={404: _NOT_A_CAMPAIGN, 409: f"{_PREFIX} The campaign is not a draft."},
    ),
    _action("start", "Start a draft campaign: admit its first stage", _STATE),
    _action("pause", "Pause a running campaign", _STATE, reason=True),
    _action("resume", "Resume a paused campaign", _STATE),
    _action("abort", "Abort a running or paused campaign", _STATE, reason=True),
    _action("approve", "Approve the manual gate of the current stage", _STATE),
    Operation(
        "get",
        "/campaigns/{campaign_id}/vehicles",
        "list_campaign_vehicles",
        "The vehicles behind a campaign's counts",
        "campaigns",
        "viewer",
        _json("CampaignVehicles"),
        errors={400: "An unknown status, or a bad page.", 404: _NOT_A_CAMPAIGN, 409: _PREFIX},
        parameters=CAMPAIGN_VEHICLE_FILTERS,
        description=f"Filters combine; {_EMPTY}.",
    ),
    Operation(
        "get",
        "/campaigns/{campaign_id}/history",
        "get_campaign_history",
        "Every action on a campaign, oldest first",
        "campaigns",
        "viewer",
        _json("History"),
        errors={404: _NOT_A_CAMPAIGN, 409: _PREFIX},
    ),
    Operation(
        "get",
        "/campaigns/{campaign_id}/timeline",
        "get_campaign_timeline",
        "Vehicles per state over time",
        "campaigns",
        "viewer",
        _json("Timeline"),
        errors={404: _NOT_A_CAMPAIGN, 409: _PREFIX},
    ),
    Operation(
        "get",
        "/releases",
        "list_releases",
        "Releases in the verified image repository",
        "campaigns",
        "viewer",
        _json("Releases"),
        errors={503: "No image repository, or it does not verify."},
    ),
    # ---- admin
    Operation(
        "post",
        "/tokens",
        "create_token",
        "Create an API token (its secret is shown once)",
        "admin",
        "admin",
        _json("TokenCreated"),
        status=201,
        errors={400: "A malformed name or unknown role.", 413: ""},
        body=ref("TokenCreate"),
    ),
    Operation(
        "get", "/tokens", "list_tokens", "List API tokens", "admin", "admin", _json("TokenList")
    ),
    Operation(
        "delete",
        "/tokens/{token_id}",
        "revoke_token",
        "Revoke an API token (and the dashboard sessions signed in with it)",
        "admin",
        "admin",
        _json("Token"),
        errors={404: "No API token with this id (or not an integer)."},
    ),
    Operation(
        "post",
        "/enroll-tokens",
        "create_enroll_token",
        "Create an enrollment token (its secret is shown once)",
        "admin",
        "admin",
        _json("EnrollTokenCreated"),
        status=201,
        errors={400: "A bad expiry or number of uses.", 413: ""},
        body=ref("EnrollTokenCreate"),
    ),
    Operation(
        "get",
        "/enroll-tokens",
        "list_enroll_tokens",
        "List enrollment tokens (never their secrets)",
        "admin",
        "admin",
        _json("EnrollTokenList"),
    ),
    Operation(
        "delete",
        "/enroll-tokens/{token_id}",
        "revoke_enroll_token",
        "Use up an enrollment token now",
        "admin",
        "admin",
        _json("EnrollToken"),
        errors={404: "No enrollment token with this id (or not an integer)."},
    ),
    Operation(
        "get",
        "/audit",
        "list_audit",
        "The audit log, newest first",
        "admin",
        "viewer",
        _json("AuditList"),
        errors={400: "A filter value that is too long, not one line, or not a time; a bad page."},
        parameters=AUDIT_FILTERS,
        description=f"Filters combine; {_EMPTY}.",
    ),
    Operation(
        "get",
        "/openapi.json",
        "get_openapi",
        "This document",
        "meta",
        "public",
        _json("OpenApiDocument"),
        database=False,
    ),
    # ---- meta, outside /api/v1 (absolute paths)
    Operation(
        "get",
        "//healthz",
        "healthz",
        "Liveness: the process answers",
        "meta",
        "public",
        _json("Health"),
        database=False,
    ),
    Operation(
        "get",
        "//readyz",
        "readyz",
        "Readiness: database, director key and image repository",
        "meta",
        "public",
        _json("Readiness"),
        database=False,
        description="503 (`Readiness` with `problems`, one line each) while not ready.",
    ),
    Operation(
        "get",
        "//metrics",
        "metrics",
        "Prometheus metrics of the whole server (all workers); no identifiers",
        "meta",
        "public",
        {"text/plain": {"schema": {"type": "string"}}},
        database=False,
        description="The Prometheus text format; see docs/deployment.md for the metrics.",
    ),
)

# ------------------------------------------------------------------------------ the document

_ERROR_TEXT = {
    400: "Bad input (also: a NUL anywhere in the URL).",
    401: "Missing, unknown or revoked bearer token.",
    403: "The token's role is below the one this needs.",
    404: "Not found.",
    409: "Conflict: another request changed the same data at the same time; reload and retry.",
    413: "The body is larger than the server accepts (1 MiB by default).",
    503: "Unavailable.",
}
_DATABASE_DOWN = (
    "The database is unavailable (code `database_unavailable`; retry after `Retry-After`)."
)
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 0}}
}


def full_path(operation: Operation) -> str:
    """The operation's URL path: under ``/api/v1``, or absolute when written ``//…``."""
    return operation.path[1:] if operation.path.startswith("//") else API + operation.path


def _error_statuses(operation: Operation) -> dict[int, str]:
    """Every error status the operation answers, with when: its own, its role's, the database's
    and the URL check's (a NUL anywhere in the URL is a 400 on every route)."""
    statuses = {400: ""}
    if operation.role in ("viewer", "operator", "admin"):
        statuses[401] = _ERROR_TEXT[401]
    if operation.role in ("operator", "admin"):
        statuses[403] = _ERROR_TEXT[403]
    if operation.path.count("{"):
        statuses.setdefault(404, "")
    statuses.update(operation.errors)
    if operation.database:
        statuses[503] = " ".join(t for t in (statuses.get(503, ""), _DATABASE_DOWN) if t)
    return dict(sorted(statuses.items()))


def _operation(operation: Operation) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(operation.status): {
            "description": operation.summary,
            "content": operation.answer,
        }
    }
    for status, text in _error_statuses(operation).items():
        responses[str(status)] = {
            "description": text or _ERROR_TEXT[status],
            "content": _json("Error"),
            **({"headers": _RETRY_AFTER} if status == 503 and operation.database else {}),
        }
    if operation.operation_id == "readyz":
        responses["503"] = {
            "description": "Not ready: the problems.",
            "content": _json("Readiness"),
        }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": PATH_PARAMETERS[name]}
        for name in _path_names(operation.path)
    ]
    result: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "parameters": [*parameters, *operation.parameters],
        "responses": responses,
        "x-minimum-role": operation.role,
    }
    if operation.description:
        result["description"] = operation.description
    if operation.role in ("viewer", "operator", "admin"):
        result["security"] = [{"bearer": []}]
    if operation.body is not None:
        result["requestBody"] = {
            "required": operation.body_required,
            "content": {_JSON: {"schema": operation.body}},
        }
    if not result["parameters"]:
        del result["parameters"]
    return result


def _path_names(path: str) -> list[str]:
    return [part.strip("{}") for part in path.split("/") if part.startswith("{")]


def openapi_document() -> dict[str, Any]:
    """The whole document, a fresh copy on each call (callers may change it: schemathesis,
    tests), sharing nothing with the module's tables."""
    paths: dict[str, dict[str, Any]] = {}
    for operation in OPERATIONS:
        paths.setdefault(full_path(operation), {})[operation.method] = _operation(operation)
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "Overdrive rollout server",
                "version": __version__,
                "description": "Operators (bearer tokens with roles viewer < operator < admin) "
                "drive campaigns; vehicles register with an enrollment token and sign every "
                'poll and event report. Every error is `{"error": {"status", "code", "message"}}`.',
            },
            "tags": [
                {"name": "vehicles", "description": "The vehicle protocol and the fleet."},
                {"name": "campaigns", "description": "Campaigns and releases."},
                {"name": "admin", "description": "API and enrollment tokens, the audit log."},
                {"name": "meta", "description": "Health, readiness, metrics, this document."},
            ],
            "paths": paths,
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                "schemas": SCHEMAS,
            },
        }
    )

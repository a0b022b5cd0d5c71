"""The component schemas of the OpenAPI document (:mod:`overdrive.server.openapi`): every request and
response body of ``/api/v1`` and the meta endpoints, written from the code that builds them
(``server.campaign_view``, ``server.fleet``, ``server.tokens``, ``server.poll``,
``server.vehicles``, ``server.api``), so that a typed client can be generated from them and the
fuzzers can check every answer against them.

Bounds are the server's own (``server.validation``, ``server.vehicles``, ``server.models``):
what the schema says is what the server checks, no more, so that schema-violating input is
always refused and schema-valid output always conforms.
"""

from __future__ import annotations

from typing import Any

from overdrive.server.campaigns import MAX_RELEASES
from overdrive.server.manifest import MAX_ECUS
from overdrive.server.validation import ID_PATTERN, MAX_INT32
from overdrive.server.vehicles import (
    ECU_KINDS,
    EVENT_TYPES,
    MAX_ATTRIBUTE_NAME,
    MAX_ATTRIBUTE_TEXT,
    MAX_ATTRIBUTES,
    MAX_EVENTS,
    MAX_IMAGES,
)
from overdrive.uptane import MAX_ATTACK_TEXT

Schema = dict[str, Any]

ROLES = ["viewer", "operator", "admin"]
CAMPAIGN_STATES = ["draft", "running", "paused", "completed", "aborted"]
#: ``server.validation.ID_PATTERN`` in JSON Schema syntax (``\A``/``\Z`` are Python-only).
IDENTIFIER = "^" + ID_PATTERN.pattern.removeprefix(r"\A").removesuffix(r"\Z") + "$"
SHA256 = "^[0-9a-f]{64}$"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or JSON null (OpenAPI 3.1: a type list, or ``anyOf`` for a reference)."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = (), **extra: Any) -> Schema:
    """An object whose properties are all required except ``optional`` (the server always sends
    every key of a response, null when there is no value; in a request, an optional field that
    is null is the same as one left out, hence the nullable optional request fields)."""
    return {
        "type": "object",
        "required": [name for name in properties if name not in optional],
        "properties": properties,
        **extra,
    }


def page(item: str, description: str) -> Schema:
    """A paginated list: one page of ``item`` and what the next page's offset is."""
    return obj(
        {
            "items": {"type": "array", "items": ref(item)},
            "total": {"type": "integer", "minimum": 0, "description": "Matches in all pages."},
            "next_offset": nullable(
                {"type": "integer", "minimum": 0, "description": "Offset of the next page."}
            ),
        },
        description=description,
    )


STRING = {"type": "string"}
TIME = {"type": "string", "format": "date-time"}
COUNT = {"type": "integer", "minimum": 0}
ANY_OBJECT: Schema = {"type": "object", "additionalProperties": True}

_ERRORS: dict[str, Schema] = {
    "Error": obj(
        {"error": ref("ErrorDetail")},
        description='Every error answer: `{"error": {"status", "code", "message"}}`.',
    ),
    "ErrorDetail": obj(
        {
            "status": {
                "type": "integer",
                "minimum": 400,
                "maximum": 599,
                "description": "The HTTP status.",
            },
            "code": {
                "type": "string",
                "minLength": 1,
                "description": "Stable machine-readable code, e.g. `bad_request`, `not_found`, "
                "`conflict`, `not_a_member`, `database_unavailable`, `repository_unverified`.",
            },
            "message": {"type": "string", "minLength": 1, "description": "One line for people."},
        }
    ),
}

_VEHICLE_PROTOCOL: dict[str, Schema] = {
    "Signature": obj({"keyid": STRING, "sig": STRING}, additionalProperties=True),
    "PublicKey": obj(
        {
            "keyid": STRING,
            "keytype": {"type": "string", "enum": ["ed25519"]},
            "scheme": {"type": "string", "enum": ["ed25519"]},
            "keyval": obj({"public": STRING}, description="The raw public key, hex."),
        },
        description="The vehicle's ed25519 public key as a TUF key object.",
    ),
    "ImageReport": obj(
        {
            "version": {"type": "string", "minLength": 1, "maxLength": 128},
            "sha256": {"type": "string", "pattern": SHA256},
            "release_counter": {"type": "integer", "minimum": 0, "maximum": MAX_INT32},
        },
        optional=("release_counter",),
        description="An installed image, as a vehicle reports it.",
    ),
    "InstalledImage": obj(
        {
            "version": STRING,
            "sha256": STRING,
            "release_counter": {"type": "integer", "minimum": 0},
        },
        description="An installed image, as the server stores it.",
    ),
    "Registration": obj(
        {
            "enroll_token": {"type": "string", "description": "A one-time enrollment secret."},
            "vehicle_id": {"type": "string", "pattern": IDENTIFIER},
            "public_key": ref("PublicKey"),
            "attributes": nullable(
                {
                    "type": "object",
                    "maxProperties": MAX_ATTRIBUTES,
                    "propertyNames": {"minLength": 1, "maxLength": MAX_ATTRIBUTE_NAME},
                    "additionalProperties": {
                        "oneOf": [
                            {"type": "string", "maxLength": MAX_ATTRIBUTE_TEXT},
                            {"type": "number"},
                            {"type": "boolean"},
                        ]
                    },
                    "description": "One-line names and values; `model` and `region` are also "
                    "kept as the vehicle's model and region.",
                }
            ),
            "images": {
                "type": "object",
                "maxProperties": MAX_IMAGES,
                "propertyNames": {"pattern": IDENTIFIER},
                "additionalProperties": ref("ImageReport"),
                "description": "Installed (factory) image per hardware id: one for every "
                "hardware id of `ecus`.",
            },
            "ecus": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_IMAGES,
                "propertyNames": {"pattern": IDENTIFIER},
                "additionalProperties": ref("EcuRegistration"),
                "description": "The vehicle's ECUs by serial: exactly one primary.",
            },
        },
        optional=("attributes", "images"),
    ),
    "EcuRegistration": obj(
        {
            "hardware_id": {"type": "string", "pattern": IDENTIFIER},
            "primary": nullable({"type": "boolean"}),
            "public_key": nullable(ref("PublicKey")),
            "kind": nullable(
                {
                    "type": "string",
                    "enum": list(ECU_KINDS),
                    "description": "`primary` for the primary; `secondary` (verifies for "
                    "itself) or `module` (updated by the primary over a bus) for the others.",
                }
            ),
        },
        optional=("primary", "public_key", "kind"),
        description="One ECU: its hardware id, whether it is the primary (whose key is the "
        "vehicle's `public_key`), a secondary's own key, and what kind of ECU it is. Each ECU "
        "starts with the factory image `images` gives for its hardware id.",
    ),
    "Registered": obj(
        {
            "vehicle_id": STRING,
            "poll_interval": {"type": "integer", "minimum": 1, "description": "Seconds."},
        }
    ),
    "InstalledImageReport": obj(
        {
            "filepath": nullable({"type": "string"}),
            "fileinfo": obj(
                {
                    "length": {"type": "integer", "minimum": 0},
                    "hashes": obj({"sha256": {"type": "string", "pattern": SHA256}}),
                }
            ),
            "version": {"type": "string", "minLength": 1, "maxLength": 128},
            "release_counter": {"type": "integer", "minimum": 0, "maximum": MAX_INT32},
        },
        optional=("filepath", "release_counter"),
    ),
    "EcuVersionReport": obj(
        {
            "_type": {"type": "string", "enum": ["ecu_version_report"]},
            "ecu_serial": {"type": "string", "pattern": IDENTIFIER},
            "hardware_id": {"type": "string", "pattern": IDENTIFIER},
            "nonce": {"type": "string", "description": "The manifest's nonce, echoed."},
            "counter": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_INT32,
                "description": "Above this ECU's last accepted report (replay guard).",
            },
            "time": TIME,
            "installed_image": ref("InstalledImageReport"),
            "attacks_detected": {"type": "string", "maxLength": MAX_ATTACK_TEXT},
        },
        optional=("time", "attacks_detected"),
        description="What one ECU runs, signed by that ECU's own key.",
    ),
    "SignedEcuVersionReport": obj(
        {
            "signed": ref("EcuVersionReport"),
            "signatures": {"type": "array", "items": ref("Signature")},
        }
    ),
    "Manifest": obj(
        {
            "_type": {"type": "string", "enum": ["vehicle_version_manifest"]},
            "vehicle_id": STRING,
            "primary_ecu_serial": {"type": "string", "pattern": IDENTIFIER},
            "counter": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_INT32,
                "description": "Must grow with every poll (replay guard).",
            },
            "timestamp": {
                **TIME,
                "description": "The vehicle's clock (not judged: the answer's time attestation "
                "tells a vehicle whose clock is off the time).",
            },
            "nonce": {
                "type": "string",
                "minLength": 8,
                "maxLength": 128,
                "pattern": "^[A-Za-z0-9]+$",
                "description": "Fresh per poll; echoed by the time attestation.",
            },
            "ecu_version_reports": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_ECUS,
                "propertyNames": {"pattern": IDENTIFIER},
                "additionalProperties": ref("SignedEcuVersionReport"),
                "description": "One report per ECU by serial; the primary's is required.",
            },
            "slot": nullable({"type": "string", "maxLength": 64}),
            "state": nullable({"type": "string", "maxLength": 64}),
            "last_result": {"description": "Free-form (at most 4 KiB of JSON with the rest)."},
        },
        optional=("primary_ecu_serial", "slot", "state", "last_result"),
        description="The vehicle version manifest: each ECU's signed version report and the "
        "vehicle's update state.",
    ),
    "PollRequest": obj(
        {"signed": ref("Manifest"), "signatures": {"type": "array", "items": ref("Signature")}},
        description="A vehicle version manifest signed with the vehicle's (primary's) key.",
    ),
    "TimeAttestation": obj(
        {
            "_type": {"type": "string", "enum": ["time_attestation"]},
            "nonce": STRING,
            "time": TIME,
        },
        description="The server's time and the poll's nonce.",
    ),
    "SignedTimeAttestation": obj(
        {
            "signed": ref("TimeAttestation"),
            "signatures": {"type": "array", "items": ref("Signature")},
        },
        description="Signed by the director's timestamp key(s).",
    ),
    "PollAnswer": obj(
        {
            "next_poll_seconds": {"type": "integer", "minimum": 1},
            "director": obj(
                {"version": {"type": "integer", "minimum": 1}},
                description="The version of the vehicle's director metadata: fetch and verify "
                "it (TUF) when it differs from the one last verified.",
            ),
            "time": ref("SignedTimeAttestation"),
        },
        optional=("director", "time"),
    ),
    "TufMetadata": obj(
        {
            "signed": {**ANY_OBJECT, "description": "TUF root, timestamp, snapshot or targets."},
            "signatures": {"type": "array", "items": ref("Signature")},
        },
        description="A TUF metadata file of the vehicle's director repository.",
    ),
    "EventDetails": {
        "type": "object",
        "additionalProperties": True,
        "properties": {
            "caused_by": obj(
                {
                    "ecu_serial": {"type": "string", "pattern": IDENTIFIER},
                    "hardware_id": {"type": "string", "pattern": IDENTIFIER},
                },
                description="The ECU whose install, trial boot or health check failed the "
                "vehicle's software set (or that stopped answering).",
            ),
            "software_set": {
                "type": "boolean",
                "description": "The event finishes the vehicle's whole software set.",
            },
        },
        "description": "Free-form, at most 8 KiB of JSON. A software set that fails is rolled "
        "back on every ECU: the vehicle reports one final event (`failed` or `rolled_back`) "
        "per hardware id of the set, each with the same `caused_by` and `software_set: true`. "
        "The campaign counts the failure against `caused_by.hardware_id` only (the other "
        "memberships of the set end rolled back, but not as failures of their own hardware "
        "id), when the vehicle has a membership of the campaign for it.",
    },
    "EventReport": obj(
        {
            "id": {
                "type": "string",
                "minLength": 8,
                "maxLength": 64,
                "description": "Unique per vehicle: a re-sent event is stored once.",
            },
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "at": TIME,
            "campaign_id": nullable({"type": "string", "pattern": IDENTIFIER, "maxLength": 36}),
            "hardware_id": nullable({"type": "string", "pattern": IDENTIFIER}),
            "reason": nullable({"type": "string", "maxLength": 1000}),
            "details": nullable(ref("EventDetails")),
        },
        optional=("campaign_id", "hardware_id", "reason", "details"),
    ),
    "EventBatch": obj(
        {
            "_type": {"type": "string", "enum": ["vehicle_events"]},
            "vehicle_id": STRING,
            "events": {"type": "array", "maxItems": MAX_EVENTS, "items": ref("EventReport")},
        }
    ),
    "EventsRequest": obj(
        {"signed": ref("EventBatch"), "signatures": {"type": "array", "items": ref("Signature")}},
        description="An event batch signed with the vehicle's registered key.",
    ),
    "EventsAnswer": obj(
        {
            "accepted": {**COUNT, "description": "New events stored."},
            "duplicates": {**COUNT, "description": "Events already stored (same id)."},
        }
    ),
}

_FLEET: dict[str, Schema] = {
    "Vehicle": obj(
        {
            "id": STRING,
            "model": nullable(STRING),
            "region": nullable(STRING),
            "attributes": {
                "type": "object",
                "additionalProperties": {
                    "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
                },
            },
            "registered_at": TIME,
            "last_seen_at": nullable(TIME),
            "status": {
                **ANY_OBJECT,
                "description": "The last manifest's `slot`, `state` and `last_result`, and what "
                "the server derived: `attacks_detected` (serial → text) with "
                "`attacks_reported_at`, `unreported_ecus` (registered ECUs the last manifest "
                "had no report of → the time of their last one), `unknown_ecus` (as below).",
            },
            "images": {
                "type": "object",
                "additionalProperties": ref("InstalledImage"),
                "description": "Per hardware id, the image of its ECU furthest behind (the "
                "lowest release counter; most vehicles have one ECU per hardware id).",
            },
            "ecus": {
                "type": "object",
                "additionalProperties": ref("Ecu"),
                "description": "The vehicle's software set: its registered ECUs by serial.",
            },
            "unknown_ecus": {
                "type": "object",
                "additionalProperties": ref("UnknownEcu"),
                "description": "Serials that sent a version report without being an ECU of "
                "this vehicle (their reports are ignored), the most recent 16.",
            },
        }
    ),
    "Ecu": obj(
        {
            "hardware_id": STRING,
            "primary": {"type": "boolean"},
            "kind": nullable(
                {
                    "type": "string",
                    "enum": list(ECU_KINDS),
                    "description": "As registered (`primary` for the primary; null: not said).",
                }
            ),
            "installed": nullable(ref("InstalledImage")),
            "last_report_at": nullable(
                {**TIME, "description": "Its last accepted version report (null: none yet)."}
            ),
            "attacks_detected": nullable(
                {"type": "string", "description": "What it detected, as its last report says."}
            ),
            "keyid": nullable(
                {"type": "string", "description": "The key its reports must be signed with."}
            ),
        },
        description="One ECU of a vehicle and the image it runs.",
    ),
    "UnknownEcu": obj(
        {
            "hardware_id": nullable(
                {"type": "string", "description": "What its report claims (not verified)."}
            ),
            "first_seen": TIME,
            "last_seen": TIME,
        },
        description="A serial that reported without being an ECU of the vehicle: a part "
        "swapped without `ecus/{ecu_serial}/replace`, or another vehicle's ECU.",
    ),
    "EcuReplacement": obj(
        {
            "new_serial": {"type": "string", "pattern": IDENTIFIER},
            "public_key": ref("PublicKey"),
            "hardware_id": nullable(
                {
                    "type": "string",
                    "pattern": IDENTIFIER,
                    "description": "If given, must be the replaced ECU's hardware id.",
                }
            ),
        },
        optional=("hardware_id",),
        description="The part a workshop fitted in place of an ECU: its serial and key.",
    ),
    "VehicleMembership": obj(
        {
            "campaign_id": STRING,
            "hardware_id": STRING,
            "admitted": {"type": "boolean"},
            "status": ref("MembershipStatus"),
            "reason": nullable(STRING),
        }
    ),
    "VehicleDetail": {
        "allOf": [
            ref("Vehicle"),
            obj({"campaigns": {"type": "array", "items": ref("VehicleMembership")}}),
        ],
        "description": "A vehicle with its campaign memberships.",
    },
    "VehicleList": page("Vehicle", "One page of the filtered fleet."),
    "StoredEvent": obj(
        {
            "id": STRING,
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "campaign_id": nullable(STRING),
            "hardware_id": nullable(STRING),
            "reason": nullable(STRING),
            "details": ref("EventDetails"),
            "occurred_at": TIME,
            "received_at": TIME,
        }
    ),
    "VehicleEvents": page("StoredEvent", "A vehicle's events, most recently received first."),
}

_CAMPAIGNS: dict[str, Schema] = {
    "MembershipStatus": {
        "type": "string",
        # `booted` too, which the status filters do not take (see server/campaign_view.py).
        "enum": ["pending", *EVENT_TYPES],
        "description": "A vehicle's progress in a campaign: `pending` until its first "
        "assignment, then what the vehicle last reported.",
    },
    "CampaignCreate": obj(
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "releases": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": MAX_RELEASES,
                "additionalProperties": STRING,
                "description": "The software set: the version to install per hardware id (in "
                "the signed repository).",
            },
            "install_order": nullable(
                {
                    "type": "array",
                    "items": STRING,
                    "uniqueItems": True,
                    "maxItems": MAX_RELEASES,
                    "description": "The hardware ids of `releases`, each once, in the order "
                    "their ECUs install and trial-boot (dependencies first, e.g. the gateway "
                    "last); default: the order of `releases`.",
                }
            ),
            "policy": {
                "oneOf": [
                    {"type": "string", "description": "A preset name, e.g. `canary`."},
                    {**ANY_OBJECT, "description": "A policy document (see docs/policies.md)."},
                ]
            },
            "filter": nullable(
                {
                    "type": "object",
                    "additionalProperties": {
                        "oneOf": [
                            {"type": "string", "minLength": 1, "maxLength": 200},
                            {
                                "type": "array",
                                "minItems": 1,
                                "items": {"type": "string", "minLength": 1, "maxLength": 200},
                            },
                        ]
                    },
                    "description": "Which vehicles: `model`, `region`, `hardware_id`, `vehicles`, "
                    "`exclude`, `installed_version` (versions or `FROM..TO`), any attribute.",
                }
            ),
        },
        optional=("filter", "install_order"),
    ),
    "ActionReason": obj(
        {"reason": nullable({"type": "string", "minLength": 1, "maxLength": 500})},
        description="Why an operator pauses or aborts (one line; kept in the audit log).",
    ),
    "CampaignRelease": obj(
        {
            "version": STRING,
            "release_counter": COUNT,
            "install_order": {**COUNT, "description": "Rank in the software set (0 first)."},
        }
    ),
    "CampaignCounts": {
        "type": "object",
        "required": ["eligible", "admitted"],
        "properties": {"eligible": COUNT, "admitted": COUNT},
        "additionalProperties": COUNT,
        "description": "Eligible and admitted vehicles, and admitted ones per membership status "
        "(`pending`, `assigned`, … `committed`, `failed`, `rolled_back`; absent: none).",
    },
    "CampaignGroup": obj(
        {
            "dimension": {"type": "string", "description": "`overall`, `hardware_id`, a cohort."},
            "value": STRING,
            "eligible": COUNT,
            "admitted": COUNT,
            "finished": COUNT,
            "succeeded": COUNT,
            "failures": {**COUNT, "description": "Failed plus rolled back."},
            "failure_rate": nullable({"type": "number", "minimum": 0, "maximum": 1}),
            "halts_at": nullable(
                {
                    "type": "integer",
                    "description": "Failures among the finished at which this group breaches.",
                }
            ),
            "evidence": {"type": "number", "description": "Log-likelihood ratio."},
            "threshold": {"type": "number"},
            "breached": {"type": "boolean"},
            "acceptable_failure_rate": {"type": "string", "description": "p0, e.g. `0.02`."},
        },
        description="One judged group and what the sequential test makes of it.",
    ),
    "Campaign": obj(
        {
            "id": STRING,
            "name": STRING,
            "state": {"type": "string", "enum": CAMPAIGN_STATES},
            "policy": {"type": "string", "description": "The policy's name."},
            "stage_index": COUNT,
            "stage": nullable(STRING),
            "stages": COUNT,
            "stage_started_at": nullable(TIME),
            "started_at": nullable(TIME),
            "finished_at": nullable(TIME),
            "approved_stage": {"type": "integer"},
            "reason": nullable(
                {"type": "string", "description": "Why it is in this state, or waits."}
            ),
            "waiting": {
                "type": "array",
                "items": STRING,
                "description": "A running campaign's unmet conditions, one line each.",
            },
            "waiting_for": {
                "type": "array",
                "items": STRING,
                "description": "Their kinds, e.g. `soak`, `sample`, `approval`.",
            },
            "until": nullable({**TIME, "description": "When a soak ends."}),
            "evaluated_at": nullable(TIME),
            "filter": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": STRING},
            },
            "releases": {"type": "object", "additionalProperties": ref("CampaignRelease")},
            "install_order": {
                "type": "array",
                "items": STRING,
                "description": "The hardware ids of `releases` in install order.",
            },
            "counts": ref("CampaignCounts"),
            "groups": {"type": "array", "items": ref("CampaignGroup")},
            "created_at": TIME,
            "created_by": STRING,
        }
    ),
    "CampaignList": page("Campaign", "One page of campaigns, newest first."),
    "CampaignDeleted": obj({"id": STRING, "deleted": {"type": "boolean", "enum": [True]}}),
    "LastEvent": obj({"type": STRING, "reason": nullable(STRING), "received_at": TIME}),
    "CampaignMember": obj(
        {
            "vehicle_id": STRING,
            "hardware_id": STRING,
            "status": ref("MembershipStatus"),
            "reason": nullable(STRING),
            "admitted": {"type": "boolean"},
            "admitted_stage": nullable({"type": "integer"}),
            "from_version": nullable(STRING),
            "installed_version": nullable(STRING),
            "model": nullable(STRING),
            "region": nullable(STRING),
            "updated_at": nullable(TIME),
            "caused_by": nullable(
                {
                    "type": "string",
                    "description": "For a failed software set: the hardware id that caused it "
                    "(another than this membership's: rolled back with the set, not counted as "
                    "a failure of its own hardware id).",
                }
            ),
            "last_event": nullable(ref("LastEvent")),
        }
    ),
    "CampaignVehicles": page("CampaignMember", "The vehicles behind a campaign's counts."),
    "AuditEntry": obj(
        {
            "id": COUNT,
            "at": TIME,
            "actor": {"type": "string", "description": "`NAME (ROLE)`, `policy` or `cli`."},
            "action": {"type": "string", "description": "e.g. `campaign.start`."},
            "target": nullable({"type": "string", "description": "e.g. `campaign:ID`."}),
            "details": ANY_OBJECT,
        }
    ),
    "History": obj(
        {"items": {"type": "array", "items": ref("AuditEntry")}},
        description="Every action on a campaign, oldest first (the last 200).",
    ),
    "TimelineSample": obj(
        {
            "at": TIME,
            "pending": {"type": "integer"},
            "in_progress": {"type": "integer"},
            "committed": COUNT,
            "failures": COUNT,
        }
    ),
    "Timeline": obj(
        {
            "states": {
                "type": "array",
                "items": {
                    "type": "string",
                    "enum": ["pending", "in_progress", "committed", "failures"],
                },
            },
            "samples": {"type": "array", "items": ref("TimelineSample")},
        },
        description="Vehicles per state over time, one sample per evaluation that changed them.",
    ),
    "BundleFile": obj({"path": STRING, "length": COUNT}),
    "DeltaBundle": obj({"path": STRING, "length": COUNT, "source_version": nullable(STRING)}),
    "Release": obj(
        {
            "version": STRING,
            "release_counter": COUNT,
            "image_sha256": STRING,
            "full": ref("BundleFile"),
            "deltas": {"type": "array", "items": ref("DeltaBundle")},
        }
    ),
    "Releases": obj(
        {
            "repository": {
                "type": "object",
                "additionalProperties": COUNT,
                "description": "Version of each verified TUF role (`root`, `targets`, …).",
            },
            "hardware": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": ref("Release")},
                "description": "Releases per hardware id, oldest first.",
            },
        }
    ),
}

_ADMIN: dict[str, Schema] = {
    "TokenCreate": obj(
        {
            "name": {"type": "string", "pattern": IDENTIFIER},
            "role": {"type": "string", "enum": ROLES},
        }
    ),
    "Token": obj(
        {
            "id": COUNT,
            "name": STRING,
            "role": {"type": "string", "enum": ROLES},
            "created_at": TIME,
            "revoked_at": nullable(TIME),
        }
    ),
    "TokenCreated": {
        "allOf": [
            ref("Token"),
            obj({"secret": {"type": "string", "description": "Shown only this once."}}),
        ]
    },
    "TokenList": obj({"items": {"type": "array", "items": ref("Token")}}),
    "EnrollTokenCreate": obj(
        {
            "expires_in_seconds": nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 10 * 366 * 86400,
                    "description": "Validity (default: no expiry).",
                }
            ),
            "uses": nullable({"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}),
        },
        optional=("expires_in_seconds", "uses"),
    ),
    "EnrollTokenCreated": obj(
        {
            "id": COUNT,
            "uses": COUNT,
            "secret": {"type": "string", "description": "Shown only this once."},
        }
    ),
    "EnrollToken": obj(
        {
            "id": COUNT,
            "created_at": TIME,
            "expires_at": nullable(TIME),
            "uses_left": COUNT,
            "used_by": nullable({"type": "string", "description": "The last vehicle it enrolled."}),
            "usable": {"type": "boolean"},
        }
    ),
    "EnrollTokenList": obj({"items": {"type": "array", "items": ref("EnrollToken")}}),
    "AuditList": page("AuditEntry", "One page of the audit log, newest first."),
}

_META: dict[str, Schema] = {
    "Health": obj({"status": {"type": "string", "enum": ["ok"]}}),
    "Readiness": obj(
        {
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "problems": {"type": "array", "items": STRING, "description": "One line each."},
        },
        optional=("problems",),
    ),
    "OpenApiDocument": obj(
        {"openapi": STRING, "info": ANY_OBJECT, "paths": ANY_OBJECT},
        additionalProperties=True,
        description="This document.",
    ),
}

SCHEMAS: dict[str, Schema] = {
    **_ERRORS,
    **_VEHICLE_PROTOCOL,
    **_FLEET,
    **_CAMPAIGNS,
    **_ADMIN,
    **_META,
}

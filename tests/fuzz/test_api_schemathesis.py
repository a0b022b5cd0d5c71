"""Property-based fuzzing of the whole ``/api/v1`` surface with schemathesis, driven by the
OpenAPI document the server publishes, against a real server on a loopback socket (SQLite).

Every operation is fuzzed (schemathesis's coverage and fuzzing phases: schema-valid and
schema-violating bodies, query strings and path parameters, undeclared methods):

* as an admin, with every schemathesis response check: no 5xx, documented status codes and
  content types, responses matching their schemas, schema-invalid input rejected, secured
  operations refusing the same request without credentials (``ignored_auth``);
* the secured (operator) operations with no, malformed, unknown and revoked bearer tokens:
  always 401 (or a 404/400 refused before any view: routing, a NUL in the URL), never a 2xx;
  and with a viewer token: 403 wherever the operation needs more;
* vehicle operations (register/poll/events) get mostly unsigned or wrongly signed bodies: they
  must be 4xx JSON errors (``test_vehicle_envelope.py`` signs random payloads properly).

The conformance checks (status code, content type, response schema with formats, response
headers) are on for every operation in every phase (``test_conformance_checks_are_on``). Every
error response must also be exactly the documented JSON error
``{"error": {"status", "code", "message"}}`` with the HTTP status inside (no other keys).
``test_api_document.py`` proves the success answers conform on a populated server.

The run is bounded and derandomised (fixed seed, ``deterministic``, no example database): the
same requests on every run, about 25 s in all.

Deviations that are known spec gaps or product bugs are tolerated *only* in the narrow shape
reported (``_spec_gap`` / ``KNOWN_5XX``); anything else fails. ``test_api_edge_cases.py`` has
one strict-xfail reproducer per product bug: when a fix lands it XPASSes (and fails the run), and
the matching entry here should be deleted with the marker there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from schemathesis import Case
from schemathesis.core.failures import Failure, FailureGroup, ServerError
from schemathesis.openapi.checks import AllowHeaderMismatch, UndefinedStatusCode

from overdrive.server.openapi import openapi_document
from tests.fuzz.conftest import ADMIN_TOKEN_ID, FuzzServer, assert_error_body

pytestmark = pytest.mark.slow

SEED = 20_240_611
ROLES = ("viewer", "operator", "admin")
#: The checks that prove the answers are the documented ones.
CONFORMANCE = (
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


def _config(max_examples: int, *, coverage: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": max_examples,
                "deterministic": True,  # same examples every run
                "database": "none",  # no .hypothesis example replay between runs
                # Credentials are ours to choose per test (admin, none, bad, viewer).
                "with-security-parameters": False,
            },
            "phases": {"coverage": {"enabled": coverage}, "stateful": {"enabled": False}},
            "checks": {
                # Excluded: "schema-valid data must be accepted" cannot hold for this API. What
                # makes a request acceptable is not expressible in JSON Schema: a valid
                # signature from the vehicle's registered key, an unused enrollment token, a
                # release present in the signed repository, campaign state transitions.
                "positive_data_acceptance": {"enabled": False},
                # On for every operation (``test_conformance_checks_are_on``): each answer's
                # status is documented, its content type is the documented one, and its body
                # matches the documented schema (formats included: date-time …).
                **{name: {"enabled": True} for name in CONFORMANCE},
                "response_schema_conformance": {"enabled": True, "validate-formats": True},
            },
            "request-timeout": 30,
        }
    )


DOCUMENT = openapi_document()
#: Every operation, as an admin: coverage phase (boundaries, undeclared methods, missing
#: fields) plus up to 25 random examples per operation.
ADMIN_SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=_config(25, coverage=True))
#: Secured operations only, with bad credentials: a few random examples each is enough, since
#: authentication runs before any input is looked at.
SECURED_SCHEMA = schemathesis.openapi.from_dict(
    DOCUMENT, config=_config(6, coverage=False)
).include(lambda ctx: "security" in ctx.operation.definition.raw)


# ---------------------------------------------------------------------------- known deviations


def _spec_gap(case: Case, failure: Failure) -> bool:
    """Whether ``failure`` is one of the known, narrow mismatches between what OpenAPI can say
    and what the server answers (none of them a wrong answer)."""
    if isinstance(failure, AllowHeaderMismatch):
        # The URL /api/v1/vehicles/register also matches GET /api/v1/vehicles/{vehicle_id} (a
        # vehicle may be called "register"), so Allow rightly advertises GET for a path that
        # OpenAPI can only document as POST-only: path templates cannot exclude a literal.
        return case.operation.label == "POST /api/v1/vehicles/register" and (
            failure.undocumented_methods == ["GET"]
        )
    return False


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


#: Reported product bugs that answer 500 (see test_api_edge_cases.py), each recognised by the
#: exact input that triggers it: operation label -> predicate over the case.
KNOWN_5XX: dict[str, Callable[[Case], bool]] = {}  # BUG-1..11 are fixed


def _known_5xx(case: Case, failure: Failure) -> bool:
    server_error = isinstance(failure, ServerError) or (
        isinstance(failure, UndefinedStatusCode) and failure.status_code == 500
    )
    if not server_error:
        return False
    predicate = KNOWN_5XX.get(case.operation.label)
    return predicate is not None and predicate(case)


# ---------------------------------------------------------------------------- the runs


def _headers(server: FuzzServer, credentials: str) -> dict[str, str]:
    return {
        "admin": {"Authorization": f"Bearer {server.admin}"},
        "viewer": {"Authorization": f"Bearer {server.viewer}"},
        "missing": {},
        "malformed": {"Authorization": f"Basic {server.admin}"},
        "unknown": {"Authorization": "Bearer odt_not-a-token-this-server-issued"},
        "revoked": {"Authorization": f"Bearer {server.revoked}"},
    }[credentials]


def _call(case: Case, server: FuzzServer, headers: dict[str, str]) -> Any:
    """Send ``case``, run schemathesis's checks, tolerate only the known deviations, and
    check that every error response is the documented JSON error."""
    response = case.call(base_url=server.url, headers=headers)
    try:
        case.validate_response(response, headers=headers, transport_kwargs={"base_url": server.url})
    except FailureGroup as group:
        remaining = [f for f in group.exceptions if not (_spec_gap(case, f) or _known_5xx(case, f))]
        if remaining:
            raise FailureGroup(remaining) from None
    if response.status_code >= 400:
        content_type = (response.headers.get("content-type") or [""])[0]
        assert_error_body(response.status_code, content_type, response.content)
    return response


def _revokes_our_token(case: Case) -> bool:
    return (
        case.operation.label == "DELETE /api/v1/tokens/{token_id}"
        and _int((case.path_parameters or {}).get("token_id")) == ADMIN_TOKEN_ID
    )


def test_served_document_is_the_one_fuzzed(fuzz_server: FuzzServer) -> None:
    """The fuzzers use ``openapi_document()`` at collection time (schemathesis's lazy
    ``from_fixture`` loader does not work with pytest 9); prove that is what the running server
    publishes at /api/v1/openapi.json, and that schemathesis loads it from there."""
    served = schemathesis.openapi.from_url(f"{fuzz_server.url}/api/v1/openapi.json")
    assert served.raw_schema == DOCUMENT
    # Loaded from a URL, schemathesis leaves out the operation that serves the document itself.
    assert {op.ok().label for op in served.get_all_operations()} | {"GET /api/v1/openapi.json"} == {
        op.ok().label for op in ADMIN_SCHEMA.get_all_operations()
    }


def test_conformance_checks_are_on() -> None:
    """Every operation, in every phase the fuzzers run, checks that its answers are the
    documented ones (status, content type, body schema, headers)."""
    for schema in (ADMIN_SCHEMA, SECURED_SCHEMA):
        operations = [op.ok() for op in schema.get_all_operations()]
        assert operations
        for operation in operations:
            for phase in ("examples", "coverage", "fuzzing"):
                checks = schema.config.checks_config_for(operation=operation, phase=phase)
                for name in CONFORMANCE:
                    assert checks.get_by_name(name=name).enabled, (operation.label, phase, name)
                assert checks.response_schema_conformance.validate_formats
    assert len(list(ADMIN_SCHEMA.get_all_operations())) == sum(
        len(methods) for methods in DOCUMENT["paths"].values()
    )


# The single-valued parametrize is not decoration: schemathesis 4.32 builds every operation's
# test item with the same pytest 9 node id unless the function is also parametrized, and
# xdist needs unique ids.
@pytest.mark.parametrize("credentials", ["admin"])
@ADMIN_SCHEMA.parametrize()
def test_api_as_admin(case: Case, fuzz_server: FuzzServer, credentials: str) -> None:
    if _revokes_our_token(case):
        return  # the fuzzer's own token; every other id may be revoked
    _call(case, fuzz_server, _headers(fuzz_server, credentials))


def _before_auth(response: Any) -> bool:
    """Refused before any view, so before authentication: a 404 from URL routing (e.g. for a
    schema-violating ``token_id`` that is not an integer), or the 400 for a NUL in the URL."""
    if response.status_code == 400:
        return b"NUL character in the URL" in response.content
    if response.status_code != 404:
        return False
    return b"The requested URL was not found on the server" in response.content


@pytest.mark.parametrize("credentials", ["missing", "malformed", "unknown", "revoked"])
@SECURED_SCHEMA.parametrize()
def test_secured_operations_refuse_bad_credentials(
    case: Case, fuzz_server: FuzzServer, credentials: str
) -> None:
    response = _call(case, fuzz_server, _headers(fuzz_server, credentials))
    assert response.status_code == 401 or _before_auth(response), (
        f"{case.operation.label} with {credentials} credentials answered "
        f"{response.status_code}: {response.content[:300]!r}"
    )


@pytest.mark.parametrize("credentials", ["viewer"])
@SECURED_SCHEMA.parametrize()
def test_viewer_cannot_use_operator_or_admin_operations(
    case: Case, fuzz_server: FuzzServer, credentials: str
) -> None:
    response = _call(case, fuzz_server, _headers(fuzz_server, credentials))
    needed = case.operation.definition.raw["x-minimum-role"]
    if ROLES.index(needed) > ROLES.index("viewer"):
        assert response.status_code == 403 or _before_auth(response), (
            f"{case.operation.label} (needs {needed}) answered a viewer "
            f"{response.status_code}: {response.content[:300]!r}"
        )
    else:
        assert response.status_code not in (401, 403), response.content[:300]

"""Hand-written edge cases of the HTTP API found by (or next to) the fuzzers, over SQLite and
(when ``OVERDRIVE_TEST_POSTGRES_URL`` is set) PostgreSQL.

Tests marked ``xfail(strict=True)`` reproduce a reported product bug (BUG-n, see the report and
the fuzzers' tolerance lists). They fail the suite once the bug is fixed (XPASS strict): then
delete the marker and the matching tolerance in ``test_api_schemathesis.py`` /
``test_vehicle_envelope.py``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from overdrive.envelope import EVENTS, sign_envelope
from overdrive.server.models import Vehicle
from overdrive.server.openapi import openapi_document
from overdrive.uptane import VEHICLE_MANIFEST
from tests.fuzz.conftest import FuzzServer, assert_error_body
from tests.server.conftest import vehicle_on
from tests.server.fleet import SimVehicle


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bug(
    request: pytest.FixtureRequest, server: FuzzServer, reason: str, backends: tuple[str, ...]
) -> None:
    """Names the bug this test reproduces (fixed: the test must pass on every backend)."""
    del request, server, reason, backends


def _assert_4xx(response: tuple[int, str, bytes]) -> dict[str, Any]:
    status, content_type, body = response
    assert 400 <= status < 500, (status, body[:300])
    return assert_error_body(status, content_type, body)


def _admin(server: FuzzServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin}"}


# ------------------------------------------------------------------ behaviour that holds today


def test_oversized_body_is_a_413_json_error(fuzz_server_any_db: FuzzServer) -> None:
    """Bodies over max_body_bytes (1 MiB) are refused before parsing, as the documented 413
    JSON error."""
    server = fuzz_server_any_db
    body = json.dumps({"signed": {"pad": "x" * (1 << 20)}, "signatures": []}).encode()
    documented = openapi_document()["paths"]
    for path, template in (
        ("/api/v1/vehicles/fuzz-car/poll", "/api/v1/vehicles/{vehicle_id}/poll"),
        ("/api/v1/vehicles/register", "/api/v1/vehicles/register"),
    ):
        status, content_type, data = server.post(path, body)
        assert status == 413
        assert_error_body(status, content_type, data)
        assert "413" in documented[template]["post"]["responses"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"{}"),
        ("application/json", b""),
        ("application/json", b"\xff\xfe\x00"),
        ("application/json", b'{"a": 1'),
        ("application/json", b"[]"),
        ("application/json", b'"signed"'),
    ],
)
def test_non_object_bodies_are_400(
    fuzz_server_any_db: FuzzServer, content_type: str, body: bytes
) -> None:
    server = fuzz_server_any_db
    for path, headers in (
        ("/api/v1/vehicles/fuzz-car/events", {}),
        ("/api/v1/tokens", _admin(server)),
    ):
        response = server.post(path, body, {**headers, "Content-Type": content_type})
        assert response[0] == 400, response
        assert_error_body(*response)


def test_a_batch_signed_by_one_car_is_refused_for_another(fuzz_server_any_db: FuzzServer) -> None:
    """Car A's correctly signed batch, posted as car B's (B registered with its own key)."""
    server = fuzz_server_any_db
    thief = server.vehicle
    victim = SimVehicle("fuzz-victim", image=dict(thief.image))
    status, _t, body = server.post(
        "/api/v1/vehicles/register", json.dumps(victim.registration(server.enroll)).encode()
    )
    assert status == 201, body
    batch = json.dumps(thief.events({"type": "downloading"})).encode()
    assert _assert_4xx(server.post("/api/v1/vehicles/fuzz-victim/events", batch))["status"] == 401


# ------------------------------------------------------------------ reproducers of product bugs


@pytest.mark.parametrize("resource", ["vehicles", "campaigns", "audit"])
def test_bug1_huge_offset(
    request: pytest.FixtureRequest, fuzz_server_any_db: FuzzServer, resource: str
) -> None:
    """BUG-1: ?offset beyond the database's integer range → OverflowError/DataError → 500.
    Fix: bound offset in server/validation.py::paging()."""
    server = fuzz_server_any_db
    _bug(request, server, "BUG-1 paging() does not bound offset", ("sqlite", "postgresql"))
    _assert_4xx(server.request("GET", f"/api/v1/{resource}?offset={10**20}", None, _admin(server)))


def test_bug2_huge_token_id(request: pytest.FixtureRequest, fuzz_server_any_db: FuzzServer) -> None:
    """BUG-2: DELETE /tokens/<id> with an id beyond the integer column → 500 (on PostgreSQL
    already from 2**31, the Integer column's limit)."""
    server = fuzz_server_any_db
    _bug(request, server, "BUG-2 token id not bounded", ("sqlite", "postgresql"))
    for token_id in (2**31, 10**20):
        response = server.request("DELETE", f"/api/v1/tokens/{token_id}", None, _admin(server))
        assert response[0] == 404, response


def test_bug3_huge_enrollment_expiry(
    request: pytest.FixtureRequest, fuzz_server_any_db: FuzzServer
) -> None:
    """BUG-3: POST /enroll-tokens {"expires_in_seconds": 10**15} → OverflowError → 500."""
    server = fuzz_server_any_db
    _bug(request, server, "BUG-3 expires_in_seconds not bounded", ("sqlite", "postgresql"))
    for seconds in (10**12, 10**15, 10**30):
        body = json.dumps({"expires_in_seconds": seconds}).encode()
        _assert_4xx(server.post("/api/v1/enroll-tokens", body, _admin(server)))


@pytest.mark.parametrize(
    "path", ["/api/v1/vehicles/register", "/api/v1/vehicles/fuzz-car/poll", "/api/v1/tokens"]
)
def test_bug4_deeply_nested_json(
    request: pytest.FixtureRequest, fuzz_server_any_db: FuzzServer, path: str
) -> None:
    """BUG-4: a deeply nested JSON body (100k "[", < 1 MiB) → RecursionError escapes
    request.get_json(silent=True) → 500, and on the vehicle endpoints without any credentials.
    Fix: catch RecursionError in server/validation.py::json_body()."""
    server = fuzz_server_any_db
    _bug(request, server, "BUG-4 RecursionError in json_body()", ("sqlite", "postgresql"))
    depth = 100_000
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        _assert_4xx(server.post(path, body, _admin(server)))


def test_bug5_405_has_allow_header(
    request: pytest.FixtureRequest, fuzz_server_any_db: FuzzServer
) -> None:
    """BUG-5: the JSON error handler (server/app.py http_error) drops the HTTPException's
    headers, so 405 answers lack the Allow header (RFC 9110 §15.5.6)."""
    server = fuzz_server_any_db
    _bug(request, server, "BUG-5 405 without Allow", ("sqlite", "postgresql"))
    request_ = urllib.request.Request(
        f"{server.url}/api/v1/campaigns", data=b"{}", method="PUT", headers=_admin(server)
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request_, timeout=10)
    with raised.value as error:
        assert error.code == 405
        assert_error_body(405, error.headers.get("Content-Type", ""), error.read())
        allow = error.headers.get("Allow") or ""
    assert {"GET", "POST"} <= {m.strip() for m in allow.split(",")}, allow


def _signed(
    server: FuzzServer, kind: str, image: dict[str, Any] | None = None, **fields: Any
) -> tuple[int, str, bytes]:
    """A poll (a vehicle version manifest whose primary's report says it runs ``image``) or
    an event batch, with ``fields`` in the manifest or the event, signed by the vehicle."""
    vehicle = server.vehicle
    if kind == "poll":
        with server.ctx.session() as session:
            stored = session.get(Vehicle, vehicle.vehicle_id)
            assert stored is not None
            counters = [stored.manifest_counter, *(stored.ecu_counters or {}).values()]
        vehicle.counter = max(counters)
        images = {vehicle.hardware_id: {**vehicle.image, **image}} if image else None
        payload = {**vehicle.manifest(images=images)["signed"], **fields}
    else:
        event = {"id": uuid.uuid4().hex, "type": "downloading", "at": _now(), **fields}
        payload = {"_type": EVENTS, "vehicle_id": vehicle.vehicle_id, "events": [event]}
    body = json.dumps(sign_envelope(payload, vehicle.signer)).encode()
    return server.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/{kind}", body)


SHA = "a" * 64


def test_bug6_counters_out_of_range(
    request: pytest.FixtureRequest, fuzz_server_any_db: FuzzServer
) -> None:
    """BUG-6: a signed manifest with counter or release_counter beyond the Integer column
    (2**31 on PostgreSQL, 2**63 on SQLite) → DataError/OverflowError → 500. Fix: range-check
    both in server/vehicles.py (poll, parse_images) → 400. (Now: the manifest's counter and
    the ECU report's installed image's release counter.)"""
    server = fuzz_server_any_db
    _bug(request, server, "BUG-6 counters not range-checked", ("sqlite", "postgresql"))
    _assert_4xx(_signed(server, "poll", counter=2**63))
    _assert_4xx(_signed(server, "poll", image={"release_counter": 2**63}))
    _assert_4xx(_signed(server, "poll", image={"release_counter": 2**31}))
    _assert_4xx(_signed(server, "poll", image={"length": 2**63}))
    _assert_4xx(_signed(server, "poll", counter=2**31))
    assert _signed(server, "poll")[0] == 200  # and the vehicle still polls


def test_bug7_nul_in_path_ids(
    request: pytest.FixtureRequest, fuzz_server_any_db: FuzzServer
) -> None:
    """BUG-7 (PostgreSQL): a NUL in the vehicle/campaign id of the URL reaches the query →
    'PostgreSQL text fields cannot contain NUL' → 500, on poll/events without any credentials.
    Fix: validate path ids with server.validation.identifier() before any query (vehicles:
    authenticate_message, get_vehicle; campaigns.get), or reject NUL in every URL."""
    server = fuzz_server_any_db
    _bug(request, server, "BUG-7 NUL in path ids", ("postgresql",))
    envelope = b'{"signed": {}, "signatures": []}'
    _assert_4xx(server.post("/api/v1/vehicles/%00/poll", envelope))
    _assert_4xx(server.post("/api/v1/vehicles/%00/events", envelope))
    _assert_4xx(server.request("GET", "/api/v1/vehicles/%00", None, _admin(server)))
    _assert_4xx(server.request("GET", "/api/v1/campaigns/%00", None, _admin(server)))


def test_bug8_nul_in_stored_strings(
    request: pytest.FixtureRequest, fuzz_server_any_db: FuzzServer, published: Any
) -> None:
    """BUG-8 (PostgreSQL): NUL in a string the server stores in a text column → 500: signed
    event id/reason, manifest image version/sha256, registration attributes (model), campaign
    name. SQLite stores them. Fix: refuse NUL in server/validation.py::field() for str (400)."""
    server = fuzz_server_any_db
    _bug(request, server, "BUG-8 NUL in text columns", ("postgresql",))
    responses = [
        _signed(server, "events", reason="a\x00b"),
        _signed(server, "events", id="abcdefgh\x00"),
        _signed(server, "poll", image={"version": "1\x00", "sha256": SHA}),
        _signed(server, "poll", image={"sha256": "a\x00" * 32}),
        _signed(server, "poll", nonce="abcdefgh\x00"),
        server.post(
            "/api/v1/vehicles/register",
            json.dumps(
                vehicle_on(published, "nul-car", model="m\x00").registration(server.enroll)
            ).encode(),
        ),
        server.post(
            "/api/v1/campaigns",
            json.dumps(
                {"name": "n\x00", "releases": {"ecu-a": "1.1"}, "policy": "immediate"}
            ).encode(),
            _admin(server),
        ),
    ]
    for response in responses:  # SQLite accepts them all; PostgreSQL must at least say 4xx
        assert response[0] < 500, response


def test_bug9_strings_longer_than_their_columns(
    request: pytest.FixtureRequest, fuzz_server_any_db: FuzzServer
) -> None:
    """BUG-9 (PostgreSQL): signed events with campaign_id > 36 or hardware_id > 128 characters,
    or a manifest image version > 128 → StringDataRightTruncation → 500. Fix: length checks
    in server/vehicles.py (_parse_event, parse_images) matching server/models.py."""
    server = fuzz_server_any_db
    _bug(request, server, "BUG-9 varchar overflow", ("postgresql",))
    responses = [
        _signed(server, "events", campaign_id="c" * 37),
        _signed(server, "events", hardware_id="h" * 129),
        _signed(server, "poll", image={"version": "v" * 129, "sha256": SHA}),
    ]
    for response in responses:
        assert response[0] < 500, response


@pytest.mark.parametrize("keyid", [{"a": 1}, ["a"]])
def test_bug10_signature_keyid_not_a_string(fuzz_server_any_db: FuzzServer, keyid: Any) -> None:
    """BUG-10: a signature whose ``keyid`` is an object or a list → ``keys.get(keyid)`` in
    overdrive/envelope.py::verify_envelope raises TypeError → 500, without any credentials, on
    poll and events. Fix: skip (or refuse) a signature whose keyid is not a string."""
    server = fuzz_server_any_db
    for kind in ("poll", "events"):
        envelope = {
            "signed": {
                "_type": VEHICLE_MANIFEST if kind == "poll" else EVENTS,
                "vehicle_id": "fuzz-car",
            },
            "signatures": [{"keyid": keyid, "sig": "00"}],
        }
        response = server.post(f"/api/v1/vehicles/fuzz-car/{kind}", json.dumps(envelope).encode())
        assert _assert_4xx(response)["status"] == 401


def test_bug11_booted_is_a_status_the_filters_refuse(fuzz_server_any_db: FuzzServer) -> None:
    """BUG-11: a vehicle's "booted" event (sent after the reboot into the new slot, before
    "committed") becomes its membership's status, but ``status=booted`` (GET
    /campaigns/{id}/vehicles) and ``campaign_status=booted`` (GET /vehicles) are 400s: the
    filters' lists (server/campaign_view.py MEMBER_STATUSES, server/fleet.py
    MEMBERSHIP_STATUSES) lack it. Fix: add "booted" to both (and to the dashboard's filters)."""
    server = fuzz_server_any_db
    status, _t, body = server.request(
        "GET", "/api/v1/vehicles?campaign_status=booted", None, _admin(server)
    )
    assert status == 200, body
    status, _t, body = server.request(
        "GET", "/api/v1/campaigns/f00d/vehicles?status=booted", None, _admin(server)
    )
    assert status == 404, body

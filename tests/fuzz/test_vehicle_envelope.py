"""Hypothesis fuzzing of the vehicle envelope: what a vehicle (or anyone pretending to be one)
can send to ``/vehicles/{id}/poll`` and ``/vehicles/{id}/events``.

Two layers, both against a real server on a loopback socket, on SQLite and (when
``OVERDRIVE_TEST_POSTGRES_URL`` is set) PostgreSQL:

* **unsigned garbage**: any JSON value, or arbitrary bytes, as the body → always a 4xx JSON
  error, never a 2xx (nothing unsigned is accepted) and never a 5xx;
* **signed random payloads**: envelopes correctly signed with the registered vehicle's key whose
  payload is random (near-valid vehicle version manifests, whose ECU version reports are
  near-valid too and signed by the vehicle's key, a stranger's or nobody, and event batches,
  with random field values, wrong types, huge numbers, odd strings) → a 200 with the
  documented shape (and a time attestation echoing the nonce), or a 4xx JSON error; never a
  5xx. Replay protection and idempotency hold under the fuzz: an accepted manifest replayed is
  refused (409), a refused one moves neither the manifest's nor an ECU's counter, an accepted
  event batch re-sent stores nothing new.

Inputs that hit a reported product bug (``test_api_edge_cases.py`` reproduces each) are
tolerated only for the backend and field the bug is about; see ``known_bug``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from securesystemslib.signer import CryptoSigner

from overdrive.envelope import EVENTS, canonical, sign_envelope
from overdrive.server.models import Event, Vehicle
from overdrive.server.vehicles import EVENT_TYPES
from overdrive.uptane import ECU_REPORT, VEHICLE_MANIFEST
from tests.fuzz.conftest import FuzzServer, assert_error_body
from tests.server.test_director_repo import attested_time

pytestmark = pytest.mark.slow

FUZZ_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples every run
    database=None,
    # One server per test (and per database backend) serves every example, on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -------------------------------------------------------------------------------- strategies

#: Anything JSON can carry.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
#: What canonical JSON (and so a signed payload) can carry: no floats.
canonical_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(max_size=200)
big_ints = st.integers() | st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1])
hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
hardware_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", fullmatch=True) | texts
timestamps = st.one_of(
    st.just("now"),
    st.just("stale"),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    texts,
    canonical_values,
)


def _near_valid(valid: st.SearchStrategy[dict[str, Any]], wild: dict[str, Any]) -> Any:
    """A valid object with no, one, or several fields replaced by wild values (or dropped), so
    that most examples get past the first check and the odd field is what is tested."""
    one = st.sampled_from(sorted(wild)).flatmap(lambda k: wild[k].map(lambda v: {k: v}))
    several = st.fixed_dictionaries({}, optional=wild)
    dropped = st.sets(st.sampled_from(sorted(wild)), max_size=2)
    return st.builds(
        lambda base, override, drop: {
            k: v for k, v in {**base, **override}.items() if k not in drop
        },
        valid,
        st.one_of(st.just({}), one, several),
        st.one_of(st.just(set()), dropped),
    )


#: An ECU version report's ``installed_image``.
installed_images = _near_valid(
    st.fixed_dictionaries(
        {
            "filepath": st.none() | st.just("ecu-a/1.1/full.bundle"),
            "fileinfo": st.fixed_dictionaries(
                {
                    "length": st.integers(0, 10**9),
                    "hashes": st.fixed_dictionaries({"sha256": hex64}),
                }
            ),
            "version": st.text(min_size=1, max_size=20),
            "release_counter": st.integers(0, 10**6),
        }
    ),
    {
        "filepath": canonical_values,
        "fileinfo": st.fixed_dictionaries(
            {},
            optional={
                "length": big_ints | canonical_values,
                "hashes": st.fixed_dictionaries({"sha256": hex64 | texts | canonical_values})
                | canonical_values,
            },
        )
        | canonical_values,
        "version": texts | canonical_values,
        "release_counter": big_ints | canonical_values,
    },
)
#: An ECU version report's payload. "primary", "echo", "next" and "now" stand for the
#: vehicle's primary ECU serial, the manifest's nonce, the ECU's next counter and the time:
#: filled in when the example is sent (``_reports``).
ecu_reports = _near_valid(
    st.fixed_dictionaries(
        {
            "_type": st.just(ECU_REPORT),
            "ecu_serial": st.just("primary"),
            "hardware_id": st.just("ecu-a"),
            "nonce": st.just("echo"),
            "counter": st.just("next"),
            "time": st.just("now"),
            "installed_image": installed_images,
        },
        optional={"attacks_detected": st.text(max_size=50)},
    ),
    {
        "_type": texts | canonical_values,
        "ecu_serial": hardware_ids | canonical_values,
        "hardware_id": hardware_ids | canonical_values,
        "nonce": st.text(max_size=130) | canonical_values,
        "counter": big_ints | canonical_values,
        "time": timestamps,
        "installed_image": canonical_values,
        "attacks_detected": st.text(max_size=600) | canonical_values,
    },
)
#: Who signs a report: the vehicle's key (the primary's: right), a stranger, nobody.
report_signers = st.sampled_from(["vehicle", "vehicle", "vehicle", "stranger", "unsigned"])
ecu_serials = st.sampled_from(["primary", "ghost-ecu"]) | hardware_ids


@dataclass(frozen=True)
class Reports:
    """The ECU version reports of a manifest, as (serial, payload, signer), signed when sent."""

    entries: tuple[tuple[Any, Any, str], ...]


#: The primary's report first.
valid_reports = st.builds(
    lambda first, more: Reports((first, *more)),
    st.tuples(st.just("primary"), ecu_reports, report_signers),
    st.lists(st.tuples(ecu_serials, ecu_reports, report_signers), max_size=1),
)
nonces = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    min_size=8,
    max_size=128,
)
manifests = _near_valid(
    st.fixed_dictionaries(
        {
            "counter": st.just("next"),
            "timestamp": st.just("now"),
            "nonce": nonces,
            "primary_ecu_serial": st.just("primary"),
            "ecu_version_reports": valid_reports,
        },
        optional={"slot": st.sampled_from(["A", "B"]), "state": st.just("idle")},
    ),
    {
        "counter": big_ints | canonical_values,
        "timestamp": timestamps,
        "nonce": st.text(max_size=130) | canonical_values,
        "primary_ecu_serial": hardware_ids | canonical_values,
        "ecu_version_reports": st.lists(
            st.tuples(ecu_serials, ecu_reports | canonical_values, report_signers), max_size=3
        ).map(lambda entries: Reports(tuple(entries)))
        | canonical_values,
        "slot": canonical_values,
        "state": canonical_values,
        "last_result": canonical_values,
        "unexpected": canonical_values,
    },
)
events = _near_valid(
    st.fixed_dictionaries(
        {
            "id": st.uuids().map(lambda u: u.hex) | st.just("fixed-event-id"),
            "type": st.sampled_from(EVENT_TYPES),
            "at": st.just("now"),
        },
        optional={
            "campaign_id": st.uuids().map(str),
            "hardware_id": st.just("ecu-a"),
            "reason": st.text(max_size=50),
            "details": st.dictionaries(st.text(max_size=10), canonical_values, max_size=3),
        },
    ),
    {
        "id": st.text(max_size=70) | canonical_values,
        "type": texts | canonical_values,
        "at": timestamps,
        "campaign_id": texts | canonical_values,
        "hardware_id": hardware_ids | canonical_values,
        "reason": texts | canonical_values,
        "details": canonical_values,
    },
)
event_batches = st.lists(st.one_of(events, events, events, canonical_values), max_size=3)


def _now(offset: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + offset).strftime("%Y-%m-%dT%H:%M:%SZ")


def _time(value: Any) -> Any:
    return (
        {"now": _now(), "stale": _now(timedelta(hours=-2))}.get(value, value)
        if isinstance(value, str)
        else value
    )


# -------------------------------------------------------------------------------- known bugs

INT32 = 2**31
INT64 = 2**63


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def known_bug(backend: str, payload: dict[str, Any]) -> str | None:
    """The reported bug a signed payload triggers (BUG-6, -8 and -9 are fixed: none; every
    5xx is a new bug)."""
    del backend, payload
    return None


# -------------------------------------------------------------------------------- tests


def _assert_rejected(status: int, content_type: str, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    assert_error_body(status, content_type, body)


@FUZZ_SETTINGS
@given(
    kind=st.sampled_from(["poll", "events"]),
    target=st.sampled_from(["registered", "unknown"]),
    body=json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=300),
)
def test_unsigned_garbage_is_rejected(
    fuzz_server_any_db: FuzzServer, kind: str, target: str, body: bytes
) -> None:
    server = fuzz_server_any_db
    vehicle_id = server.vehicle.vehicle_id if target == "registered" else "no-such-car"
    _assert_rejected(*server.post(f"/api/v1/vehicles/{vehicle_id}/{kind}", body))


@FUZZ_SETTINGS
@given(
    signed=json_values,
    signatures=st.lists(
        st.fixed_dictionaries({"keyid": st.text(max_size=70), "sig": st.text(max_size=140)})
        | json_values,
        max_size=3,
    ),
    kind=st.sampled_from(["poll", "events"]),
    steal_keyid=st.booleans(),
)
def test_envelopes_without_a_valid_signature_are_refused(
    fuzz_server_any_db: FuzzServer, signed: Any, signatures: list[Any], kind: str, steal_keyid: bool
) -> None:
    """Envelopes whose signatures are junk (even under the vehicle's own key id) are refused."""
    server = fuzz_server_any_db
    if steal_keyid:
        keyid = server.vehicle.signer.public_key.keyid
        signatures = [{"keyid": keyid, "sig": "00" * 64}, *signatures]
    envelope = {"signed": signed, "signatures": signatures}
    vehicle_id = server.vehicle.vehicle_id
    body = json.dumps(envelope).encode()
    _assert_rejected(*server.post(f"/api/v1/vehicles/{vehicle_id}/{kind}", body))


def _counters(server: FuzzServer, *, reset_huge: bool = False) -> tuple[int, dict[str, Any]]:
    """The vehicle's manifest counter and its ECUs' counters."""
    with server.ctx.transaction() as session:
        vehicle = session.get(Vehicle, server.vehicle.vehicle_id)
        assert vehicle is not None
        ecus = dict(vehicle.ecu_counters or {})
        if reset_huge and max([vehicle.manifest_counter, *ecus.values()]) > 2**30:
            # An accepted huge counter leaves no room above it (see BUG-6): start over, so
            # later examples still reach the code behind the replay checks.
            vehicle.manifest_counter = 0
            vehicle.ecu_counters = ecus = {}
        return vehicle.manifest_counter, ecus


#: Signs ECU reports as a key the server does not know for any ECU.
STRANGER = CryptoSigner.generate_ed25519()


def _reports(server: FuzzServer, raw: Any, nonce: Any, counters: dict[str, Any]) -> Any:
    """A manifest's ``ecu_version_reports`` from a :class:`Reports` example (anything else
    is sent as it is): placeholders filled in, each report signed as the example says."""
    if not isinstance(raw, Reports):
        return raw
    vehicle = server.vehicle
    reports: dict[str, Any] = {}
    for serial_example, report, signer in raw.entries:
        serial = vehicle.serial if serial_example == "primary" else serial_example
        if isinstance(report, dict):
            report = dict(report)
            if report.get("ecu_serial") == "primary":
                report["ecu_serial"] = vehicle.serial
            if report.get("nonce") == "echo":
                report["nonce"] = nonce
            if report.get("counter") == "next":
                last = counters.get(serial, 0)
                report["counter"] = last + 1 if isinstance(last, int) else 1
            if "time" in report:
                report["time"] = _time(report["time"])
        signatures = []
        if signer != "unsigned" and isinstance(report, dict):  # (only an object is signable)
            key = vehicle.signer if signer == "vehicle" else STRANGER
            signatures = [key.sign(canonical(report)).to_dict()]
        reports[serial] = {"signed": report, "signatures": signatures}
    event(f"{len(reports)} ECU report(s)")
    return reports


def _stored_events(server: FuzzServer) -> int:
    with server.ctx.session() as session:
        return session.query(Event).filter_by(vehicle_id=server.vehicle.vehicle_id).count()


def _send_signed(server: FuzzServer, kind: str, payload: dict[str, Any]) -> tuple[int, str, bytes]:
    envelope = sign_envelope(payload, server.vehicle.signer)
    return server.post(
        f"/api/v1/vehicles/{server.vehicle.vehicle_id}/{kind}", json.dumps(envelope).encode()
    )


def _check(server: FuzzServer, payload: dict[str, Any], response: tuple[int, str, bytes]) -> bool:
    """Assert the response is a 2xx or a 4xx JSON error (or a known bug's 5xx); True on 200."""
    status, content_type, body = response
    event(f"HTTP {status}")  # --hypothesis-show-statistics tells how deep the fuzz got
    if status >= 500:
        bug = known_bug(server.backend, payload)
        assert bug is not None, f"new 5xx on {server.backend} for {payload!r}: {body[:300]!r}"
        event(f"tolerated {bug.split(':')[0]}")
        assert_error_body(status, content_type, body)
        return False
    if status != 200:
        _assert_rejected(status, content_type, body)
        return False
    return True


@FUZZ_SETTINGS
@given(manifest=manifests)
def test_signed_random_manifests(fuzz_server_any_db: FuzzServer, manifest: dict[str, Any]) -> None:
    server = fuzz_server_any_db
    vehicle = server.vehicle
    payload: dict[str, Any] = {"_type": VEHICLE_MANIFEST, "vehicle_id": vehicle.vehicle_id}
    payload.update(manifest)
    before, ecus_before = _counters(server, reset_huge=True)
    if payload.get("counter") == "next":
        payload["counter"] = before + 1
    if "timestamp" in payload:
        payload["timestamp"] = _time(payload["timestamp"])
    if payload.get("primary_ecu_serial") == "primary":
        payload["primary_ecu_serial"] = vehicle.serial
    if "ecu_version_reports" in payload:
        payload["ecu_version_reports"] = _reports(
            server, payload["ecu_version_reports"], payload.get("nonce"), ecus_before
        )
    response = _send_signed(server, "poll", payload)
    if not _check(server, payload, response):
        assert _counters(server) == (before, ecus_before), "a refused manifest moved a counter"
        return
    answer = json.loads(response[2])
    # No campaign, so no director chain: the answer is the next poll and the signed time.
    assert set(answer) == {"next_poll_seconds", "time"}, answer
    assert answer["next_poll_seconds"] == 60, answer
    root = server.ctx.require_director().root_bytes(1)
    assert root is not None
    attested_time(answer, root, payload["nonce"])
    # A report of an ECU this vehicle does not have is ignored (and recorded), not counted.
    accepted = {s: r for s, r in payload["ecu_version_reports"].items() if s == vehicle.serial}
    assert _counters(server) == (
        payload["counter"],
        {**ecus_before, **{s: r["signed"]["counter"] for s, r in accepted.items()}},
    )
    replay = _send_signed(server, "poll", payload)  # the same manifest again: a replay
    assert replay[0] == 409, replay
    assert_error_body(*replay)


@FUZZ_SETTINGS
@given(batch=event_batches)
def test_signed_random_event_batches(fuzz_server_any_db: FuzzServer, batch: list[Any]) -> None:
    server = fuzz_server_any_db
    batch = [{**e, "at": _time(e["at"])} if isinstance(e, dict) and "at" in e else e for e in batch]
    payload = {"_type": EVENTS, "vehicle_id": server.vehicle.vehicle_id, "events": batch}
    stored = _stored_events(server)
    response = _send_signed(server, "events", payload)
    if not _check(server, payload, response):
        assert _stored_events(server) == stored, "a refused batch stored events"
        return
    counts = json.loads(response[2])
    assert set(counts) == {"accepted", "duplicates"}, counts
    assert counts["accepted"] + counts["duplicates"] == len(batch), counts
    assert _stored_events(server) == stored + counts["accepted"]
    again = _send_signed(server, "events", payload)  # re-sent after a lost answer
    assert again[0] == 200, again
    assert json.loads(again[2]) == {"accepted": 0, "duplicates": len(batch)}
    assert _stored_events(server) == stored + counts["accepted"]


def test_fuzzed_vehicle_still_works(fuzz_server_any_db: FuzzServer) -> None:
    """Sanity for the fuzzers' oracle: a well-formed signed poll and batch are accepted."""
    server = fuzz_server_any_db
    vehicle = server.vehicle
    manifest_counter, ecu_counters = _counters(server)
    vehicle.counter = max([manifest_counter, *ecu_counters.values()])
    status, _type, body = server.post(
        f"/api/v1/vehicles/{vehicle.vehicle_id}/poll", json.dumps(vehicle.manifest()).encode()
    )
    assert status == 200, body
    status, _type, body = server.post(
        f"/api/v1/vehicles/{vehicle.vehicle_id}/events",
        json.dumps(vehicle.events({"type": "downloading"})).encode(),
    )
    assert (status, json.loads(body)) == (200, {"accepted": 1, "duplicates": 0})

"""The vehicle API: registration, signed polls, replay protection, idempotent events, isolation."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from overdrive.envelope import sign_envelope
from tests.director_view import assignments, flask_get
from tests.server.conftest import Published, auth, vehicle_on
from tests.server.fleet import SimVehicle
from tests.server.test_director_repo import attested_time


def error_of(response) -> str:  # type: ignore[no-untyped-def]
    assert response.is_json, response.data
    body = response.json
    assert set(body) == {"error"} and {"status", "code", "message"} <= set(body["error"])
    return str(body["error"]["message"])


def test_register_then_poll_nothing_to_do(
    http: FlaskClient, published: Published, enroll: str
) -> None:

    car = vehicle_on(published, "car-1", model="m1")
    assert http.post("/api/v1/vehicles/register", json=car.registration(enroll)).status_code == 201
    again = http.post("/api/v1/vehicles/register", json=car.registration(enroll))
    assert again.status_code == 409 and "already registered" in error_of(again)
    poll = http.post("/api/v1/vehicles/car-1/poll", json=car.manifest(nonce="nothingToDo1"))
    assert poll.status_code == 200, poll.json
    # Nothing assigned: no director chain yet, and the server's signed time.
    assert set(poll.json) == {"next_poll_seconds", "time"} and poll.json["next_poll_seconds"] == 60
    root = published.director_root.read_bytes()
    attested_time(poll.json, root, "nothingToDo1")
    assert assignments(flask_get(http), "car-1", root) == []


@pytest.mark.parametrize(
    ("mutate", "status", "message"),
    [
        (lambda b: b.pop("enroll_token"), 400, "missing field 'enroll_token'"),
        (lambda b: b.update(enroll_token=5), 400, "must be a string"),
        (lambda b: b.update(enroll_token="ode_wrong"), 401, "invalid or used enrollment token"),
        (lambda b: b.update(vehicle_id="../x"), 400, "invalid vehicle id"),
        (lambda b: b.update(public_key={"keytype": "ed25519"}), 400, "public_key"),
        (lambda b: b.update(attributes=[1]), 400, "must be an object"),
        (lambda b: b.update(attributes={"x": {"nested": 1}}), 400, "attribute 'x'"),
        (lambda b: b.update(images={"ecu-a": {"version": "1"}}), 400, "sha256"),
    ],
)
def test_register_rejects_bad_input(
    http: FlaskClient, published: Published, enroll: str, mutate, status: int, message: str
) -> None:  # type: ignore[no-untyped-def]
    body = vehicle_on(published, "car-x").registration(enroll)
    mutate(body)
    response = http.post("/api/v1/vehicles/register", json=body)
    assert response.status_code == status
    assert message in error_of(response)


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (b"{not json", "application/json", "malformed JSON"),
        (b"[1, 2]", "application/json", "must be an object"),
        (b"hello", "text/plain", "expected a JSON body"),
    ],
)
def test_malformed_bodies_are_4xx_json(
    http: FlaskClient, data: bytes, content_type: str, message: str
) -> None:
    for path in (
        "/api/v1/vehicles/register",
        "/api/v1/vehicles/car-1/poll",
        "/api/v1/vehicles/car-1/events",
    ):
        response = http.post(path, data=data, content_type=content_type)
        assert response.status_code == 400
        assert message in error_of(response)


def test_oversize_body_and_unknown_routes(http: FlaskClient) -> None:
    big = http.post(
        "/api/v1/vehicles/register", data=b"x" * (2 << 20), content_type="application/json"
    )
    assert big.status_code == 413 and error_of(big)
    assert http.get("/api/v1/nothing-here").status_code == 404
    assert http.put("/api/v1/vehicles/register").status_code == 405


def test_poll_replay_and_forgery(http: FlaskClient, fleet: list[SimVehicle]) -> None:
    car, other = fleet[0], fleet[1]
    first = car.manifest()
    assert http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=first).status_code == 200
    replay = http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=first)
    assert replay.status_code == 409 and "replayed manifest" in error_of(replay)
    # Vehicle B cannot poll as vehicle A: its key does not verify.
    forged = other.manifest()
    forged["signed"]["vehicle_id"] = car.vehicle_id
    assert http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=forged).status_code == 401
    as_other = other.manifest()
    response = http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=as_other)
    assert response.status_code == 401
    unsigned = car.manifest()
    unsigned["signatures"] = []
    assert http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=unsigned).status_code == 401
    tampered = car.manifest()
    tampered["signed"]["counter"] += 1000
    assert http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=tampered).status_code == 401
    wrong_type = car.events()
    assert "expected a vehicle_version_manifest" in error_of(
        http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=wrong_type)
    )
    # An unknown vehicle gets a registered one's 401 for a bad signature: ids cannot be probed.
    unknown = http.post("/api/v1/vehicles/nobody/poll", json=car.manifest())
    assert unknown.status_code == 401 and "not signed by a trusted key" in error_of(unknown)


def test_operator_token_is_not_a_vehicle(
    http: FlaskClient, fleet: list[SimVehicle], tokens: dict[str, str]
) -> None:
    response = http.post(
        f"/api/v1/vehicles/{fleet[0].vehicle_id}/poll",
        json={"signed": {}, "signatures": []},
        headers=auth(tokens["admin"]),
    )
    assert response.status_code == 401


def test_manifest_checks(http: FlaskClient, fleet: list[SimVehicle], published: Published) -> None:
    """The manifest's timestamp is required and must be a time, but a vehicle whose clock is
    off still polls: the answer's time attestation tells it the time."""
    car = fleet[0]
    payload = car.manifest(nonce="clockIsOff1")["signed"]
    payload["timestamp"] = "2020-01-01T00:00:00Z"
    stale = sign_envelope(payload, car.signer)
    response = http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=stale)
    assert response.status_code == 200, response.json
    attested_time(response.json, published.director_root.read_bytes(), "clockIsOff1")
    for value, message in (
        ("yesterday", "not an ISO 8601 time"),
        (12, "must be an ISO 8601 time string"),
        (None, "must be an ISO 8601 time string"),
    ):
        payload = car.manifest()["signed"]
        payload["timestamp"] = value
        response = http.post(
            f"/api/v1/vehicles/{car.vehicle_id}/poll", json=sign_envelope(payload, car.signer)
        )
        assert response.status_code == 400 and message in error_of(response), value
    for nonce in ("short", "has-dashes-in-it", "x" * 129, "ünïcödeNonce"):
        payload = car.manifest()["signed"]
        payload["nonce"] = nonce  # (the ECU report still echoes the old one)
        response = http.post(
            f"/api/v1/vehicles/{car.vehicle_id}/poll", json=sign_envelope(payload, car.signer)
        )
        assert response.status_code == 400 and "signed.nonce" in error_of(response), nonce


def test_events_are_idempotent(http: FlaskClient, fleet: list[SimVehicle]) -> None:
    car = fleet[0]
    batch = car.events(
        {"id": "event-000001", "type": "downloading"},
        {"id": "event-000002", "type": "failed", "reason": "disk full"},
    )
    first = http.post(f"/api/v1/vehicles/{car.vehicle_id}/events", json=batch)
    assert first.status_code == 200 and first.json == {"accepted": 2, "duplicates": 0}
    again = http.post(f"/api/v1/vehicles/{car.vehicle_id}/events", json=batch)
    assert again.json == {"accepted": 0, "duplicates": 2}
    # Another vehicle cannot post events as this one.
    stolen = fleet[1].events({"type": "committed"})
    stolen["signed"]["vehicle_id"] = car.vehicle_id
    assert http.post(f"/api/v1/vehicles/{car.vehicle_id}/events", json=stolen).status_code == 401
    bad = car.events({"type": "exploded"})
    response = http.post(f"/api/v1/vehicles/{car.vehicle_id}/events", json=bad)
    assert response.status_code == 400 and "type' must be one of" in error_of(response)
    too_many = car.events(*({"type": "downloading"} for _ in range(101)))
    assert http.post(f"/api/v1/vehicles/{car.vehicle_id}/events", json=too_many).status_code == 400


def test_operators_read_the_fleet(
    http: FlaskClient, fleet: list[SimVehicle], tokens: dict[str, str]
) -> None:
    assert http.get("/api/v1/vehicles").status_code == 401
    page = http.get("/api/v1/vehicles?limit=10", headers=auth(tokens["viewer"]))
    assert page.status_code == 200 and len(page.json["items"]) == 10
    assert page.json["total"] == 25 and page.json["next_offset"] == 10
    assert http.get("/api/v1/vehicles?limit=0", headers=auth(tokens["viewer"])).status_code == 400
    assert http.get("/api/v1/vehicles?limit=x", headers=auth(tokens["viewer"])).status_code == 400
    one = http.get(f"/api/v1/vehicles/{fleet[0].vehicle_id}", headers=auth(tokens["viewer"]))
    assert one.json["images"]["ecu-a"]["version"] == "1.0"
    assert http.get("/api/v1/vehicles/nobody", headers=auth(tokens["viewer"])).status_code == 404

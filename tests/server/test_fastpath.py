"""Polls answered below Flask (server.fastpath) behave exactly like the Flask route.

A query string makes the middleware hand a poll to Flask, so each case runs both ways and the
answers (status, error code, body shape) must agree; requests it must not judge itself (bad
JSON, odd content types, oversize bodies, NUL) still get Flask's precise errors.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from overdrive.server.context import ServerContext
from tests.server.conftest import Published, vehicle_on
from tests.server.fleet import SimVehicle
from tests.server.test_director_repo import attested_time

ROUTES = {"fast path": "", "Flask": "?via=flask"}


@pytest.fixture
def car(http: FlaskClient, published: Published, enroll: str) -> SimVehicle:
    car = vehicle_on(published, "car-fp", model="m1")
    assert http.post("/api/v1/vehicles/register", json=car.registration(enroll)).status_code == 201
    return car


def answer(http: FlaskClient, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
    response = http.post(path, data=json.dumps(body), content_type="application/json", **kwargs)
    return response.status_code, response.get_json(silent=True)


@pytest.mark.parametrize("via", ROUTES)
def test_the_same_answers_both_ways(
    app: Flask,
    http: FlaskClient,
    car: SimVehicle,
    ctx: ServerContext,
    published: Published,
    via: str,
) -> None:
    flask_calls: list[str] = []
    view = app.view_functions["vehicles.poll"]

    def counted(vehicle_id: str) -> Any:
        flask_calls.append(vehicle_id)
        return view(vehicle_id=vehicle_id)

    app.view_functions["vehicles.poll"] = counted
    path = f"/api/v1/vehicles/car-fp/poll{ROUTES[via]}"
    status, body = answer(http, path, car.manifest(nonce="fastPath1"))
    assert status == 200 and set(body) == {"next_poll_seconds", "time"}, body
    assert body["next_poll_seconds"] == 60
    attested_time(body, published.director_root.read_bytes(), "fastPath1")

    replay = car.manifest()
    assert answer(http, path, replay)[0] == 200
    status, body = answer(http, path, replay)
    assert status == 409 and body["error"]["code"] == "conflict"
    assert "replayed manifest" in body["error"]["message"]

    forged = car.manifest()
    forged["signed"]["counter"] += 1000
    status, body = answer(http, path, forged)
    assert status == 401 and body["error"]["code"] == "unauthorized"

    status, body = answer(http, "/api/v1/vehicles/nobody/poll" + ROUTES[via], car.manifest())
    assert status == 401 and body["error"]["code"] == "unauthorized"  # as for a bad signature

    missing = car.manifest()
    del missing["signed"]["nonce"]
    status, body = answer(http, path, missing)
    assert status in (400, 401) and "error" in body  # unsigned change: signature fails first

    metrics = http.get("/metrics").data.decode()
    assert 'overdrive_polls_total{outcome="nothing"} 2.0' in metrics
    assert bool(flask_calls) == (via == "Flask")


@pytest.mark.parametrize(
    ("data", "content_type", "status", "message"),
    [
        (b"{not json", "application/json", 400, "malformed JSON"),
        (b"[1, 2]", "application/json", 400, "must be an object"),
        (b'{"a": "x\\u0000"}', "application/json", 400, "NUL"),
        (b"{}", "text/plain", 400, "expected a JSON body"),
        (b"{}", "application/json", 401, "message must have an object 'signed'"),
    ],
)
def test_what_the_fast_path_does_not_judge_gets_flasks_errors(
    http: FlaskClient, car: SimVehicle, data: bytes, content_type: str, status: int, message: str
) -> None:
    response = http.post("/api/v1/vehicles/car-fp/poll", data=data, content_type=content_type)
    assert response.status_code == status
    assert message in response.json["error"]["message"]


def test_oversize_and_odd_requests_go_to_flask(http: FlaskClient, car: SimVehicle) -> None:
    huge = b'{"pad": "' + b"x" * (2 << 20) + b'"}'
    response = http.post("/api/v1/vehicles/car-fp/poll", data=huge, content_type="application/json")
    assert response.status_code == 413 and response.is_json
    response = http.get("/api/v1/vehicles/car-fp/poll")
    assert response.status_code == 405 and "POST" in response.headers["Allow"]
    response = http.post("/api/v1/vehicles/car%00x/poll", json=car.manifest())
    assert response.status_code == 400 and "NUL" in response.json["error"]["message"]

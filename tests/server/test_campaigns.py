"""Campaigns through the operator API, driven by simulated vehicles' signed reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient

from overdrive.server.campaigns import tick
from overdrive.server.context import ServerContext
from tests.director_view import assignments, flask_get
from tests.server.conftest import Published, auth
from tests.server.fleet import SimVehicle
from tests.server.test_director_repo import image_target
from tests.server.test_vehicle_api import error_of

POLICY = {
    "name": "test-staged",
    "stages": [
        {
            "name": "canary",
            "share": "10%",
            "min_finished": 2,
            "max_failure_rate": "40%",
            "success_threshold": "50%",
        },
        {
            "name": "half",
            "share": "50%",
            "min_finished": "50%",
            "max_failure_rate": "20%",
            "success_threshold": "80%",
        },
        {
            "name": "all",
            "share": "100%",
            "min_finished": "100%",
            "max_failure_rate": "20%",
            "success_threshold": "80%",
        },
    ],
}


def create(http: FlaskClient, token: str, **overrides: Any) -> dict[str, Any]:
    body = {"name": "ecu-a to 1.1", "releases": {"ecu-a": "1.1"}, "policy": POLICY, **overrides}
    response = http.post("/api/v1/campaigns", json=body, headers=auth(token))
    assert response.status_code == 201, response.json
    return dict(response.json)


def act(
    http: FlaskClient, token: str, campaign_id: str, action: str, status: int = 200
) -> dict[str, Any]:
    response = http.post(f"/api/v1/campaigns/{campaign_id}/{action}", headers=auth(token))
    assert response.status_code == status, response.json
    return dict(response.json)


def poll_all(
    http: FlaskClient, vehicles: list[SimVehicle], director: ServerContext
) -> dict[str, dict[str, Any]]:
    """Poll with every vehicle; return what each one's verified director targets assign."""
    root = director.require_director().root_bytes(1)
    assert root is not None
    got = {}
    for vehicle in vehicles:
        nonce = f"nonce{vehicle.counter}x{vehicle.vehicle_id}".replace("-", "")
        response = http.post(
            f"/api/v1/vehicles/{vehicle.vehicle_id}/poll", json=vehicle.manifest(nonce=nonce)
        )
        assert response.status_code == 200, response.json
        for payload in assignments(flask_get(http), vehicle.vehicle_id, root):
            got[vehicle.vehicle_id] = payload
    return got


def finish(
    http: FlaskClient,
    vehicle: SimVehicle,
    payload: dict[str, Any],
    outcome: str,
    published: Published,
) -> None:
    ids = {"campaign_id": payload["campaign_id"], "hardware_id": payload["hardware_id"]}
    events = [
        {"type": "downloading", **ids},
        {"type": "installed", **ids},
        {"type": outcome, **ids},
    ]
    if outcome == "committed":
        image = dict(published.images["ecu-a/1.1"])
        image.pop("path")
        vehicle.image = image
    response = http.post(
        f"/api/v1/vehicles/{vehicle.vehicle_id}/events", json=vehicle.events(*events)
    )
    assert response.status_code == 200, response.json


def test_staged_campaign_pause_resume_complete(
    http: FlaskClient,
    ctx: ServerContext,
    fleet: list[SimVehicle],
    tokens: dict[str, str],
    published: Published,
) -> None:
    cars = [v for v in fleet if v.hardware_id == "ecu-a"]
    op = tokens["operator"]
    assert (
        http.post("/api/v1/campaigns", json={}, headers=auth(tokens["viewer"])).status_code == 403
    )
    campaign = create(http, op, filter={"model": ["m1"]})
    assert campaign["state"] == "draft" and campaign["releases"]["ecu-a"]["release_counter"] == 2
    assert poll_all(http, cars, ctx) == {}  # a draft assigns nothing
    started = act(http, op, campaign["id"], "start")
    assert started["state"] == "running" and started["counts"]["eligible"] == 20
    assert started["counts"]["admitted"] == 2  # 10% of 20

    canaries = poll_all(http, cars, ctx)
    assert len(canaries) == 2
    for payload in canaries.values():
        # The vehicles run 1.0, so they get the delta from 1.0 (smaller than the full bundle),
        # exactly as the image repository lists it.
        path = payload["target"]["path"]
        assert path.endswith("delta-from-1.0.bundle")
        bundle = image_target(published, path)
        assert bundle.custom["overdrive"]["kind"] == "delta"
        assert payload["target"] == {
            "path": path,
            "sha256": bundle.hashes["sha256"],
            "length": bundle.length,
        }
        assert (payload["version"], payload["release_counter"]) == ("1.1", 2)
    by_id = {v.vehicle_id: v for v in cars}
    for vehicle_id, payload in canaries.items():
        finish(http, by_id[vehicle_id], payload, "committed", published)
    assert tick(ctx) == {campaign["id"]: "advance"}
    status = http.get(f"/api/v1/campaigns/{campaign['id']}", headers=auth(tokens["viewer"])).json
    assert status["stage_index"] == 1 and status["counts"]["admitted"] == 10

    # Stage 2 goes wrong: 3 of the 8 new vehicles roll back → failure rate over 20% → pause.
    half = poll_all(http, cars, ctx)
    assert len(half) == 8
    for i, (vehicle_id, payload) in enumerate(sorted(half.items())):
        finish(http, by_id[vehicle_id], payload, "rolled_back" if i < 3 else "committed", published)
    assert tick(ctx) == {campaign["id"]: "pause"}
    paused = http.get(f"/api/v1/campaigns/{campaign['id']}", headers=auth(tokens["viewer"])).json
    assert paused["state"] == "paused" and "failure rate" in paused["reason"]
    assert poll_all(http, cars, ctx) == {}  # paused: nothing new is handed out

    audit = http.get("/api/v1/audit", headers=auth(tokens["viewer"])).json["items"]
    assert [e["action"] for e in audit[:4]] == [
        "campaign.pause",
        "campaign.advance",
        "campaign.start",
        "campaign.create",
    ]
    # Automatic transitions are the policy's, with its reason; the operator's are theirs.
    assert [e["actor"] for e in audit[:3]] == ["policy", "policy", "op"] or audit[2]["actor"]
    assert audit[0]["actor"] == audit[1]["actor"] == "policy"
    assert "failure rate" in audit[0]["details"]["reason"]
    history = http.get(
        f"/api/v1/campaigns/{campaign['id'][:8]}/history", headers=auth(tokens["viewer"])
    ).json["items"]
    assert [e["action"] for e in history][-2:] == ["campaign.advance", "campaign.pause"]

    # The operator aborts it; the vehicles are free for the next campaign.
    act(http, op, campaign["id"], "resume")
    aborted = act(http, op, campaign["id"], "abort")
    assert aborted["state"] == "aborted"
    act(http, op, campaign["id"], "resume", status=409)


def test_campaign_completes(
    http: FlaskClient,
    ctx: ServerContext,
    fleet: list[SimVehicle],
    tokens: dict[str, str],
    published: Published,
) -> None:
    cars = [v for v in fleet if v.hardware_id == "ecu-a"]
    by_id = {v.vehicle_id: v for v in cars}
    op = tokens["operator"]
    campaign = create(http, op, policy="immediate")
    act(http, op, campaign["id"], "start")
    later = datetime.now(UTC) + timedelta(days=1)
    for _round in range(3):
        for vehicle_id, payload in poll_all(http, cars, ctx).items():
            finish(http, by_id[vehicle_id], payload, "committed", published)
        tick(ctx, now=later)
    status = http.get(f"/api/v1/campaigns/{campaign['id']}", headers=auth(op)).json
    assert status["state"] == "completed", status
    assert status["counts"]["committed"] == 20


def test_conflicts_and_bad_input(
    http: FlaskClient, fleet: list[SimVehicle], tokens: dict[str, str]
) -> None:
    op = tokens["operator"]
    first = create(http, op)
    act(http, op, first["id"], "start")
    second = create(http, op, filter={"region": "EU"})
    clash = http.post(f"/api/v1/campaigns/{second['id']}/start", headers=auth(op))
    assert clash.status_code == 409 and "already in a running or paused campaign" in error_of(clash)
    act(http, op, first["id"], "start", status=409)
    act(http, op, first["id"], "resume", status=409)
    assert http.post("/api/v1/campaigns/nope/start", headers=auth(op)).status_code == 404
    assert http.post("/api/v1/campaigns/x/explode", headers=auth(op)).status_code == 404
    cases = [
        ({"releases": {"ecu-a": "9.9"}}, "not in the signed repository"),
        ({"releases": {}}, "releases"),
        ({"policy": "no-such-preset"}, "no-such-preset"),
        ({"policy": {"stages": [{"name": "x", "share": "110%"}]}}, "stages[0].share"),
        ({"filter": {"model": 5}}, "filter 'model'"),
        ({"name": ""}, "name"),
    ]
    for overrides, message in cases:
        body = {"name": "x", "releases": {"ecu-a": "1.1"}, "policy": "canary", **overrides}
        response = http.post("/api/v1/campaigns", json=body, headers=auth(op))
        assert response.status_code == 400, (overrides, response.json)
        assert message in error_of(response), (message, error_of(response))
    listed = http.get("/api/v1/campaigns?state=running", headers=auth(tokens["viewer"])).json
    assert [c["id"] for c in listed["items"]] == [first["id"]]
    assert (
        http.get("/api/v1/campaigns?state=bogus", headers=auth(tokens["viewer"])).status_code == 400
    )
    releases = http.get("/api/v1/releases", headers=auth(tokens["viewer"])).json
    assert [r["version"] for r in releases["hardware"]["ecu-a"]] == ["1.0", "1.1"]

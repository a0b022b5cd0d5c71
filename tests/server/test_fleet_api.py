"""The fleet listing with filters, a vehicle's events, enrollment tokens, audit filters and the
``overdrive fleet`` / ``overdrive server token|enroll-token`` commands."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from overdrive.server.context import ServerContext
from tests.conftest import Cli
from tests.server.conftest import Published, auth, vehicle_on
from tests.server.fleet import SimVehicle
from tests.server.test_campaign_cli import server_url  # noqa: F401  (a fixture)
from tests.server.test_campaigns import finish, poll_all


def get(http: FlaskClient, token: str, path: str, status: int = 200) -> Any:
    response = http.get(f"/api/v1{path}", headers=auth(token))
    assert response.status_code == status, response.json
    return response.json


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["items"]]


def test_fleet_filters_and_sorting(
    http: FlaskClient, fleet: list[SimVehicle], tokens: dict[str, str]
) -> None:
    viewer = tokens["viewer"]
    assert get(http, viewer, "/vehicles")["total"] == 25
    assert get(http, viewer, "/vehicles?hardware_id=ecu-b")["total"] == 5
    assert get(http, viewer, "/vehicles?hardware_id=ecu-a&version=1.0")["total"] == 20
    assert get(http, viewer, "/vehicles?version=9.9")["total"] == 0
    assert get(http, viewer, "/vehicles?model=m2")["total"] == 5
    assert get(http, viewer, "/vehicles?region=EU&model=m1")["total"] == 10
    assert get(http, viewer, "/vehicles?attr.region=US")["total"] == 10
    assert get(http, viewer, "/vehicles?search=bus-00")["total"] == 5
    assert get(http, viewer, "/vehicles?search=%25")["total"] == 0  # LIKE wildcards are text
    first = ids(get(http, viewer, "/vehicles?sort=-id&limit=2"))
    assert first == ["car-019", "car-018"]
    page = get(http, viewer, "/vehicles?sort=region&limit=5")
    assert page["next_offset"] == 5 and page["items"][0]["region"] == "EU"
    for bad, message in (
        ("/vehicles?colour=red", "unknown filter 'colour'"),
        ("/vehicles?sort=colour", "sort must be one of"),
        ("/vehicles?campaign_status=nope", "campaign_status must be one of"),
        ("/vehicles?model=a%0Ab", "must be one line"),
    ):
        assert message in get(http, viewer, bad, status=400)["error"]["message"]


def test_campaign_status_filter_and_vehicle_events(
    http: FlaskClient,
    ctx: ServerContext,
    fleet: list[SimVehicle],
    tokens: dict[str, str],
    published: Published,
) -> None:
    op = tokens["operator"]
    body = {"name": "x", "releases": {"ecu-a": "1.1"}, "policy": "immediate"}
    campaign = http.post("/api/v1/campaigns", json=body, headers=auth(op)).json
    http.post(f"/api/v1/campaigns/{campaign['id']}/start", headers=auth(op))
    cars = [v for v in fleet if v.hardware_id == "ecu-a"]
    payloads = poll_all(http, cars, ctx)
    by_id = {v.vehicle_id: v for v in cars}
    finish(http, by_id["car-003"], payloads["car-003"], "rolled_back", published)
    rolled = get(http, op, f"/vehicles?campaign={campaign['id'][:8]}&campaign_status=rolled_back")
    assert ids(rolled) == ["car-003"]
    assert get(http, op, "/vehicles?campaign_status=assigned")["total"] == 19
    events = get(http, op, "/vehicles/car-003/events")
    # One batch arrives at one moment: the feed is by arrival, then by the vehicle's time.
    assert sorted(e["type"] for e in events["items"]) == ["downloading", "installed", "rolled_back"]
    assert events["items"][0]["campaign_id"] == campaign["id"]
    assert get(http, op, "/vehicles/car-003/events?limit=1")["next_offset"] == 1
    assert get(http, op, "/vehicles/nobody/events", status=404)["error"]["code"] == "not_found"


def test_enroll_tokens_list_and_revoke_and_audit_filters(
    http: FlaskClient, tokens: dict[str, str], enroll: str, published: Published
) -> None:
    admin = tokens["admin"]
    listed = get(http, admin, "/enroll-tokens")["items"]
    assert listed[-1]["usable"] and not any("secret" in t or "token_hash" in t for t in listed)
    token_id = listed[-1]["id"]  # the fixture's, the newest
    assert get(http, tokens["operator"], "/enroll-tokens", status=403)
    revoked = http.delete(f"/api/v1/enroll-tokens/{token_id}", headers=auth(admin)).json
    assert revoked["uses_left"] == 0 and not revoked["usable"]
    car = vehicle_on(published, "late-car")
    refused = http.post("/api/v1/vehicles/register", json=car.registration(enroll))
    assert refused.status_code in (401, 403), refused.json
    assert http.delete("/api/v1/enroll-tokens/999", headers=auth(admin)).status_code == 404

    audit = get(http, admin, "/audit?action=enroll_token.revoke")["items"]
    assert [e["target"] for e in audit] == [f"enroll_token:{token_id}"]
    assert get(http, admin, "/audit?target=enroll_token:")["total"] == 2  # create, revoke
    assert get(http, admin, "/audit?since=2999-01-01T00:00:00Z")["total"] == 0
    assert get(http, admin, "/audit?until=2999-01-01")["total"] >= 1
    assert "ISO-8601" in get(http, admin, "/audit?since=yesterday", status=400)["error"]["message"]


def test_fleet_and_token_commands(
    cli: Cli,
    server_url: str,  # noqa: F811
    tokens: dict[str, str],
    config: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OVERDRIVE_SERVER", server_url)
    monkeypatch.setenv("OVERDRIVE_TOKEN", tokens["viewer"])
    listed = cli("fleet", "list", "--hardware-id", "ecu-b")
    assert listed.code == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "VEHICLE",
        "MODEL",
        "REGION",
        "IMAGES",
        "LAST",
        "SEEN",
    ]
    assert listed.stdout.endswith("5 of 5 vehicles\n")
    data = json.loads(cli("fleet", "list", "--attribute", "region=US", "--json").stdout)
    assert data["total"] == 10
    assert "expected NAME=VALUE" in cli("fleet", "list", "--attribute", "x").stderr
    bad = cli("fleet", "list", "--sort", "colour")
    assert bad.code != 0 and "sort must be one of" in bad.stderr
    shown = cli("fleet", "show", "bus-001")
    assert "  image     ecu-b 1.0" in shown.stdout
    assert cli("fleet", "events", "bus-001").stdout.endswith("0 of 0 events\n")
    missing = cli("fleet", "show", "nobody")
    assert missing.code != 0 and "404" in missing.stderr

    db = ["--db", config.db_url]
    rows = cli("server", "token", "list", *db).stdout.splitlines()
    assert rows[0].split()[:3] == ["ID", "NAME", "ROLE"] and len(rows) == 4
    token_id = json.loads(cli("server", "token", "list", *db, "--json").stdout)[0]["id"]
    assert cli("server", "token", "revoke", str(token_id), *db).stdout.startswith(
        f"revoked token {token_id}"
    )
    gone = cli("server", "token", "revoke", "999", *db)
    assert gone.code != 0 and "no API token 999" in gone.stderr
    enrolls = json.loads(cli("server", "enroll-token", "list", *db, "--json").stdout)
    assert [e["used_by"] for e in enrolls] == ["bus-004"]  # the fleet's token, used last by it
    assert cli("server", "enroll-token", "revoke", str(enrolls[0]["id"]), *db).code == 0
    after = json.loads(cli("server", "enroll-token", "list", *db, "--json").stdout)
    assert after[0]["usable"] is False

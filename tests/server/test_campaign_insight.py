"""Operators who can see why: per-group judging on the server, hold reasons, the vehicles
behind every count, history attributed to the policy, timelines, and the campaign commands
(pause/abort with a reason, delete a draft, short id prefixes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient

from overdrive.server.campaigns import tick
from overdrive.server.context import ServerContext
from tests.server.conftest import Published, auth
from tests.server.fleet import SimVehicle
from tests.server.test_campaigns import finish, poll_all

JUDGED = {
    "name": "judged",
    "judge": {"cohorts": ["region"]},
    "stages": [
        {
            "name": "all",
            "share": "100%",
            "soak": "2h",
            "min_finished": "100%",
            "max_failure_rate": "60%",
            "success_threshold": "0%",
        }
    ],
}


def create(http: FlaskClient, token: str, policy: Any = JUDGED, **body: Any) -> dict[str, Any]:
    response = http.post(
        "/api/v1/campaigns",
        json={"name": "ecu-a to 1.1", "releases": {"ecu-a": "1.1"}, "policy": policy, **body},
        headers=auth(token),
    )
    assert response.status_code == 201, response.json
    return dict(response.json)


def get(http: FlaskClient, token: str, path: str, status: int = 200) -> Any:
    response = http.get(f"/api/v1{path}", headers=auth(token))
    assert response.status_code == status, response.json
    return response.json


def post(http: FlaskClient, token: str, path: str, body: Any = None, status: int = 200) -> Any:
    response = http.post(f"/api/v1{path}", json=body, headers=auth(token))
    assert response.status_code == status, response.json
    return response.json


def test_a_failing_region_halts_the_campaign_and_every_count_has_its_vehicles(
    http: FlaskClient,
    ctx: ServerContext,
    fleet: list[SimVehicle],
    tokens: dict[str, str],
    published: Published,
) -> None:
    cars = [v for v in fleet if v.hardware_id == "ecu-a"]
    op, viewer = tokens["operator"], tokens["viewer"]
    campaign = create(http, op)
    cid = campaign["id"]
    post(http, op, f"/campaigns/{cid[:8]}/start")  # a short prefix, as the demo prints

    # Running and soaking: the campaign says what it waits for and until when, never null.
    assert tick(ctx) == {cid: "hold"}
    status = get(http, viewer, f"/campaigns/{cid}")
    assert status["state"] == "running" and status["reason"].startswith("holding at stage 'all'")
    assert status["waiting_for"] == ["soak", "sample"]
    assert status["waiting"][0].startswith("soaking until ") and " UTC, " in status["waiting"][0]
    assert status["waiting"][0].endswith(" left")
    assert status["waiting"][1].startswith("waiting for 20 more results")
    until = datetime.fromisoformat(status["until"])
    assert timedelta(hours=1, minutes=59) < until - datetime.now(UTC) <= timedelta(hours=2)

    # Every US car rolls back; the EU ones commit. 7 failures of 20 (35%) is under the stage's
    # raw 60%, but region US failing 7 of 7 is statistically clear.
    by_id = {v.vehicle_id: v for v in cars}
    us = [v.vehicle_id for v in cars if v.attributes["region"] == "US"]
    payloads = poll_all(http, cars, ctx)
    for vehicle_id in us[:7]:
        finish(http, by_id[vehicle_id], payloads[vehicle_id], "rolled_back", published)
    for vehicle_id in [v for v in payloads if by_id[v].attributes["region"] == "EU"]:
        finish(http, by_id[vehicle_id], payloads[vehicle_id], "committed", published)
    assert tick(ctx) == {cid: "pause"}
    status = get(http, viewer, f"/campaigns/{cid}")
    assert status["state"] == "paused"
    assert status["reason"].startswith("region 'US': 7 of 7 finished failed (100.0%), clearly")
    groups = {(g["dimension"], g["value"]): g for g in status["groups"]}
    assert set(groups) == {
        ("campaign", "all"),
        ("hardware_id", "ecu-a"),
        ("region", "EU"),
        ("region", "US"),
    }
    assert groups[("region", "US")]["breached"] and groups[("region", "US")]["failures"] == 7
    assert not groups[("region", "EU")]["breached"] and groups[("region", "EU")]["failures"] == 0
    assert groups[("region", "EU")]["halts_at"] is not None
    assert groups[("region", "US")]["acceptable_failure_rate"] == "2%"

    # The vehicles behind the count, by status and by group.
    rolled = get(http, viewer, f"/campaigns/{cid}/vehicles?status=rolled_back")
    assert rolled["total"] == 7 and {i["vehicle_id"] for i in rolled["items"]} == set(us[:7])
    item = rolled["items"][0]
    assert item["status"] == "rolled_back" and item["from_version"] == "1.0"
    assert item["region"] == "US" and item["last_event"]["type"] == "rolled_back"
    in_group = get(http, viewer, f"/campaigns/{cid}/vehicles?dimension=region&value=US")
    assert in_group["total"] == 10
    assert get(http, viewer, f"/campaigns/{cid}/vehicles?status=failures&limit=2")["next_offset"]
    assert (
        "status must be one of"
        in get(http, viewer, f"/campaigns/{cid}/vehicles?status=bogus", status=400)["error"][
            "message"
        ]
    )

    # History: the policy paused it, with its reason; the operator started it.
    history = get(http, viewer, f"/campaigns/{cid}/history")["items"]
    assert [(e["action"], e["actor"]) for e in history] == [
        ("campaign.create", "test-operator (operator)"),
        ("campaign.start", "test-operator (operator)"),
        ("campaign.pause", "policy"),
    ]
    assert history[-1]["details"]["reason"] == status["reason"]
    # Timeline: one sample per evaluation that changed the counts.
    samples = get(http, viewer, f"/campaigns/{cid}/timeline")["samples"]
    assert [s["failures"] for s in samples] == [0, 7]
    assert samples[-1]["committed"] == 10 and samples[-1]["in_progress"] == 3


def test_pause_and_abort_keep_the_operators_reason_and_drafts_can_be_deleted(
    http: FlaskClient, fleet: list[SimVehicle], tokens: dict[str, str]
) -> None:
    op = tokens["operator"]
    cid = create(http, op)["id"]
    post(http, op, f"/campaigns/{cid}/start")
    paused = post(http, op, f"/campaigns/{cid}/pause", {"reason": "brake supplier recall"})
    assert paused["reason"] == "paused by test-operator (operator): brake supplier recall"
    post(http, op, f"/campaigns/{cid}/resume")
    bad = post(http, op, f"/campaigns/{cid}/abort", {"reason": "two\nlines"}, status=400)
    assert "one line" in bad["error"]["message"]
    post(http, op, f"/campaigns/{cid}/abort", {"reason": ""}, status=400)
    aborted = post(http, op, f"/campaigns/{cid}/abort", {"reason": "superseded by 1.2"})
    assert aborted["reason"] == "aborted by test-operator (operator): superseded by 1.2"
    audit = get(http, op, "/audit")["items"]
    assert audit[0]["details"]["reason"] == aborted["reason"]

    # Only a draft can be deleted.
    assert (
        "only a draft"
        in (http.delete(f"/api/v1/campaigns/{cid}", headers=auth(op)).json["error"]["message"])
    )
    draft = create(http, op)["id"]
    assert (
        http.delete(f"/api/v1/campaigns/{draft}", headers=auth(tokens["viewer"])).status_code == 403
    )
    assert http.delete(f"/api/v1/campaigns/{draft}", headers=auth(op)).json == {
        "id": draft,
        "deleted": True,
    }
    assert get(http, op, f"/campaigns/{draft}", status=404)["error"]["message"] == (
        f"no campaign {draft}"
    )


def test_id_prefixes(http: FlaskClient, fleet: list[SimVehicle], tokens: dict[str, str]) -> None:
    op = tokens["operator"]
    ids = [create(http, op)["id"] for _ in range(2)]
    assert get(http, op, f"/campaigns/{ids[0][:6]}")["id"] == ids[0]
    common = 0
    while ids[0][common] == ids[1][common]:
        common += 1
    if common >= 4:  # rare: both ids share a prefix of four or more characters
        assert get(http, op, f"/campaigns/{ids[0][:common]}", status=409)
    assert get(http, op, "/campaigns/abc", status=404)  # too short to be a prefix
    assert get(http, op, "/campaigns/zzzzzzzz", status=404)


def test_campaign_names_and_filters_are_one_line(
    http: FlaskClient, fleet: list[SimVehicle], tokens: dict[str, str]
) -> None:
    op = tokens["operator"]
    for body, message in (
        ({"name": "eu\nrollout"}, "field 'name' must be one line of text, not a line break"),
        ({"name": "x\u202e"}, "field 'name' must be one line of text, not a control character"),
        ({"filter": {"region": "EU\n"}}, "filter 'region': names and values must be one line"),
        ({"filter": {"re\tgion": "EU"}}, "names and values must be one line"),
    ):
        response = http.post(
            "/api/v1/campaigns",
            json={"name": "n", "releases": {"ecu-a": "1.1"}, "policy": JUDGED, **body},
            headers=auth(op),
        )
        assert response.status_code == 400 and message in response.json["error"]["message"]


def test_a_running_campaign_says_what_it_waits_for_before_the_first_evaluation(
    http: FlaskClient, fleet: list[SimVehicle], tokens: dict[str, str]
) -> None:
    op = tokens["operator"]
    cid = create(http, op)["id"]
    started = post(http, op, f"/campaigns/{cid}/start")
    assert started["reason"].startswith("holding at stage 'all': soaking until ")
    assert started["waiting_for"] == ["soak", "sample"] and started["evaluated_at"] is None

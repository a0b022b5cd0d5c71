"""The dashboard shows why: what a running campaign waits for and until when, why a stopped one
stopped (the policy's breach reason), its judged groups with their thresholds, the vehicles
behind every count, its timeline and history; the vehicle list and audit log filter and sort;
withdrawn releases say so; every time is UTC. Flask test-client tests always run; the browser
tests (headless Chromium through Playwright) skip, saying why, without one.

``OVERDRIVE_DASHBOARD_SCREENSHOTS=DIR`` keeps the screenshots (campaign-groups, campaign-vehicles,
overview, …) in DIR, as for tests/server/test_dashboard.py.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from overdrive.server import campaigns
from overdrive.server.context import ServerContext
from overdrive.server.dashboard import chart, forms
from overdrive.server.dashboard.formatting import rate, when
from tests.conftest import run_cli
from tests.server import test_dashboard as dashboard_tests
from tests.server.conftest import Published, auth, vehicle_on
from tests.server.fleet import SimVehicle
from tests.server.test_campaigns import finish, poll_all
from tests.server.test_dashboard import expect, screenshot, signed_in

# The dashboard tests' fixtures: the app with the dashboard, and the headless browser.
app = dashboard_tests.app
browser = dashboard_tests.browser
live_url = dashboard_tests.live_url
browse = dashboard_tests.browse

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
WITHDRAWAL = "bricks the CAN gateway on cold boot"
#: A count that links to the vehicles behind it: the campaign page's tiles and group cells.
COUNT_LINK = re.compile(r'<a href="(/dashboard/campaigns/[^"]+/vehicles[^"]*)"[^>]*>(\d+)</a>')
SHOWING = re.compile(r'<p class="meta" id="showing">\s*(\d+) vehicles?')


# ------------------------------------------------------------------------------ helpers


def api(http: FlaskClient, token: str, method: str, path: str, body: Any = None) -> Any:
    response = http.open(f"/api/v1{path}", method=method, json=body, headers=auth(token))
    assert response.status_code in (200, 201), response.json
    return response.json


def judged_campaign(http: FlaskClient, token: str, policy: Any = JUDGED) -> str:
    """A running campaign of ecu-a 1.1 judged per region, soaking for two hours."""
    body = {"name": "ecu-a 1.1 by region", "releases": {"ecu-a": "1.1"}, "policy": policy}
    campaign_id = str(api(http, token, "POST", "/campaigns", body)["id"])
    api(http, token, "POST", f"/campaigns/{campaign_id}/start")
    return campaign_id


def us_and_eu(fleet: list[SimVehicle]) -> tuple[dict[str, SimVehicle], list[str], list[str]]:
    cars = {v.vehicle_id: v for v in fleet if v.hardware_id == "ecu-a"}
    us = sorted(i for i, v in cars.items() if v.attributes["region"] == "US")
    eu = sorted(i for i, v in cars.items() if v.attributes["region"] == "EU")
    return cars, us, eu


def breach_us(
    http: FlaskClient,
    ctx: ServerContext,
    fleet: list[SimVehicle],
    published: Published,
    payloads: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Seven US cars roll back, every EU car commits (three US cars are still updating)."""
    cars, us, eu = us_and_eu(fleet)
    payloads = payloads or poll_all(http, list(cars.values()), ctx)
    for vehicle_id in us[:7]:
        finish(http, cars[vehicle_id], payloads[vehicle_id], "rolled_back", published)
    for vehicle_id in eu:
        if vehicle_id in payloads:
            finish(http, cars[vehicle_id], payloads[vehicle_id], "committed", published)
    return us[:7]


def vehicle_ids(page_html: str) -> list[str]:
    return re.findall(r'<tr data-vehicle="([^"]+)"', page_html)


def showing(page_html: str) -> int:
    match = SHOWING.search(page_html)
    assert match, "the vehicle list does not say how many it shows"
    return int(match.group(1))


def assert_counts_link_to_their_vehicles(client: FlaskClient, page_html: str) -> int:
    """Follow every count link of a campaign page: each list holds exactly that many."""
    links = COUNT_LINK.findall(page_html)
    for href, count in links:
        response = client.get(html.unescape(href))
        assert response.status_code == 200, (href, response.text)
        assert showing(response.text) == int(count), href
    return len(links)


def withdraw(published: Published, ctx: ServerContext, hw: str, version: str) -> None:
    result = run_cli(
        "release", "yank", hw, version, "--reason", WITHDRAWAL,
        "--storage", published.storage, "--keys", published.keys,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    ctx.releases.index(force=True)


# ------------------------------------------------------------------------------ test client


def test_campaign_page_says_why_and_every_count_links_to_its_vehicles(
    app: Flask,
    http: FlaskClient,
    ctx: ServerContext,
    tokens: dict[str, str],
    fleet: list[SimVehicle],
    published: Published,
) -> None:
    campaign_id = judged_campaign(http, tokens["operator"])
    client, _csrf = signed_in(app, tokens["viewer"])
    page_url = f"/dashboard/campaigns/{campaign_id}"
    page = client.get(page_url).text
    # Before the evaluator's first run, the page shows what it would wait for now.
    assert "not checked yet" in page and "soaking until" in page

    # Soaking: what it waits for and until when, in UTC, prominently (before the actions).
    assert campaigns.tick(ctx) == {campaign_id: "hold"}
    page = client.get(page_url).text
    why = page[page.index('data-live-section="why"') : page.index('id="live"')]
    soak = re.search(r"soaking until (\d{4}-\d\d-\d\d \d\d:\d\d) UTC, [0-9hms]+ left", why)
    assert soak, why
    until = datetime.strptime(soak.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    assert timedelta(hours=1, minutes=58) < until - datetime.now(UTC) <= timedelta(hours=2)
    assert "waiting for 20 more results" in why and 'data-wait="sample"' in why
    live = client.get(f"{page_url}/status.json").json
    assert live["waiting"][0].startswith("soaking until ") and live["until"]
    assert (
        'data-live-section="why"' in live["html"] and "waiting for 20 more results" in live["html"]
    )
    assert re.fullmatch(r"\d\d:\d\d:\d\d UTC", live["updated"])
    assert {(g["dimension"], g["value"]) for g in live["groups"]} >= {("region", "US")}

    # The breach: paused by the policy, which says why; the groups table shows where.
    rolled_back = breach_us(http, ctx, fleet, published)
    assert campaigns.tick(ctx) == {campaign_id: "pause"}
    page = client.get(page_url).text
    assert "<strong>Paused:</strong> region &#39;US&#39;: 7 of 7 finished failed (100.0%)" in page
    assert 'by <span class="actor actor-policy">policy</span> at <time' in page
    assert 'class="breach-link">Region US</a>' in page
    groups = page[page.index('id="groups"') : page.index('id="timeline"')]
    us_row = re.search(r'<tr id="group-\d+" class="breached" data-dimension="region" '
                       r'data-value="US">(.*?)</tr>', groups, re.S)  # fmt: skip
    assert us_row, groups
    assert "halts at " in us_row.group(1) and "acceptable 2%" in us_row.group(1)
    assert "✕ breached" in us_row.group(1) and "100%" in us_row.group(1)
    eu_row = re.search(r'data-dimension="region" data-value="EU">(.*?)</tr>', groups, re.S)
    assert eu_row and "within" in eu_row.group(1) and 'class="breached"' not in eu_row.group(0)
    assert "hardware_id" in groups and "All vehicles" in groups

    # Every count (tiles and group cells) opens the list of exactly those vehicles.
    assert assert_counts_link_to_their_vehicles(client, page) >= 6 + 4 * 5
    failures = " ".join(
        client.get(
            f"/dashboard/campaigns/{campaign_id}/vehicles?status=failures&dimension=region&value=US"
        ).text.split()
    )
    assert sorted(vehicle_ids(failures)) == sorted(rolled_back)
    assert "Region US</strong>: 10 eligible, 10 admitted, 7 finished, 7 failed (100%)" in failures
    assert failures.count("rolled back</span>") >= 7 and "1.0" in failures  # from-version

    # The timeline: an SVG drawn on the server (no script), one sample per changed count.
    chart_html = page[page.index('id="timeline"') : page.index('aria-labelledby="stages-h"')]
    assert '<svg class="timeline"' in chart_html and 'data-samples="2"' in chart_html
    assert chart_html.count("data-band=") == 4
    assert re.search(r"2 samples, from \d{4}-\d\d-\d\d \d\d:\d\d UTC to ", chart_html)
    # The history: the operator created and started it, the policy paused it, saying why.
    history = page[page.index('id="history"') :]
    assert history.index("campaign.pause") < history.index("campaign.start")  # newest first
    assert "actor-policy" in history and "7 of 7 finished failed" in history
    # The overview says why too.
    overview = client.get("/dashboard/").text
    assert "<strong>Paused:</strong> region &#39;US&#39;" in overview
    assert client.get("/dashboard/overview.json").json["html"].count("data-live-section") == 3


def test_campaign_vehicles_filter_sort_page_and_refuse_bad_input(
    app: Flask,
    http: FlaskClient,
    ctx: ServerContext,
    tokens: dict[str, str],
    fleet: list[SimVehicle],
    published: Published,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from overdrive.server.dashboard import views

    campaign_id = judged_campaign(http, tokens["operator"])
    breach_us(http, ctx, fleet, published)
    client, _csrf = signed_in(app, tokens["viewer"])
    base = f"/dashboard/campaigns/{campaign_id}/vehicles"
    _cars, us, eu = us_and_eu(fleet)

    everyone = client.get(base).text
    assert showing(everyone) == 20 and len(vehicle_ids(everyone)) == 20
    by_region = vehicle_ids(client.get(f"{base}?sort=region&dir=desc").text)
    assert set(by_region[:10]) == set(us) and set(by_region[10:]) == set(eu)
    assert vehicle_ids(client.get(f"{base}?sort=vehicle").text) == sorted(us + eu)
    assert vehicle_ids(client.get(f"{base}?sort=vehicle&dir=desc").text) == sorted(us + eu)[::-1]
    statuses = vehicle_ids(client.get(f"{base}?sort=status").text)
    assert set(statuses[-7:]) == set(us[:7])  # rolled_back is the last status of the lifecycle
    committed = client.get(f"{base}?status=committed&region=EU").text
    assert sorted(vehicle_ids(committed)) == eu and "1.1" in committed  # installed version
    assert showing(client.get(f"{base}?status=in_progress").text) == 3
    assert showing(client.get(f"{base}?hardware_id=ecu-a&from_version=1.0&model=m1").text) == 20
    assert showing(client.get(f"{base}?hardware_id=ecu-b").text) == 0

    # Paging keeps the filters and the sort.
    monkeypatch.setattr(views, "MEMBERS_PER_PAGE", 4)
    first = client.get(f"{base}?region=US&sort=vehicle").text
    assert vehicle_ids(first) == us[:4] and "1–4 of 10 vehicles · page 1 of 3" in first
    assert 'href="/dashboard/campaigns/' in first and "region=US&amp;sort=vehicle" in first
    assert "&amp;page=2" in first and "dir=asc" in first
    last = client.get(f"{base}?region=US&sort=vehicle&page=99").text
    assert vehicle_ids(last) == us[8:]

    # Bad input: a clear message, the rest of the page still shown, never a 500.
    for query, message in [
        ("status=bogus", "There is no status &#39;bogus&#39;: choose one of pending"),
        ("admitted=maybe", "There is no admitted &#39;maybe&#39;"),
        ("sort=evil", "Cannot sort by &#39;evil&#39;"),
        ("dir=sideways", "The sort direction must be asc or desc"),
        ("value=EU", "A group value needs its dimension"),
        ("dimension=region", "The group &#39;region&#39; needs a value"),
        ("dimension=colour&value=red", "This campaign is not judged by &#39;colour&#39;"),
        ("model=" + "x" * 200, "The model filter is too long (at most 128 characters)"),
        ("region=EU%01", "The region filter contains control characters"),
    ]:
        response = client.get(f"{base}?{query}")
        assert response.status_code == 400, query
        assert message in response.text, (query, response.text[:2000])
        assert 'id="filter-errors"' in response.text and 'data-vehicle="' in response.text
    assert client.get(f"{base}?page=-3&dir=asc").status_code == 200
    missing = client.get("/dashboard/campaigns/nope/vehicles")
    assert missing.status_code == 404 and "There is no campaign with id" in missing.text

    # Hostile text is escaped wherever it is shown: filters, URLs, groups, reasons.
    hostile = '"><script>alert(1)</script>'
    response = client.get(f"{base}?region={hostile}&dimension={hostile}&value=x")
    assert response.status_code == 400
    assert "<script>alert(1)" not in response.text and "&lt;script&gt;alert(1)" in response.text
    for path in (
        "/dashboard/campaigns/<script>alert(1)</script>/vehicles",
        "/dashboard/vehicles/<script>alert(1)</script>",
    ):
        response = client.get(path)
        assert response.status_code == 404 and "<script>alert(1)" not in response.text


def test_hostile_vehicle_text_is_escaped_everywhere(
    app: Flask,
    http: FlaskClient,
    ctx: ServerContext,
    tokens: dict[str, str],
    fleet: list[SimVehicle],
    published: Published,
    enroll: str,
) -> None:
    evil = vehicle_on(
        published,
        "evil-001",
        model='"><script>alert(1)</script>',
        region="<img src=x onerror=alert(2)>",
    )
    assert http.post("/api/v1/vehicles/register", json=evil.registration(enroll)).status_code == 201
    policy = {**JUDGED, "judge": {"cohorts": ["region", "model"]}}
    campaign_id = judged_campaign(http, tokens["operator"], policy)
    payload = poll_all(http, [evil], ctx)["evil-001"]
    ids = {"campaign_id": payload["campaign_id"], "hardware_id": "ecu-a"}
    report = evil.events({"type": "failed", "reason": "<script>alert(3)</script>", **ids})
    assert http.post("/api/v1/vehicles/evil-001/events", json=report).status_code == 200
    campaigns.tick(ctx)
    client, _csrf = signed_in(app, tokens["viewer"])
    page = client.get(f"/dashboard/campaigns/{campaign_id}").text
    links = [h for h, _n in COUNT_LINK.findall(page) if "onerror" in html.unescape(h)]
    assert links, "the hostile region's group links to its vehicles"
    drill = client.get(html.unescape(links[0])).text
    assert vehicle_ids(drill) == ["evil-001"]
    for path in (
        f"/dashboard/campaigns/{campaign_id}",
        f"/dashboard/campaigns/{campaign_id}/vehicles?status=failed",
        html.unescape(links[0]),
        "/dashboard/vehicles?q=evil",
        "/dashboard/vehicles/evil-001",
        "/dashboard/",
    ):
        text = client.get(path).text
        for raw in ("<script>alert", "<img src=x"):
            assert raw not in text, (path, raw)
    assert (
        "&lt;script&gt;alert(3)&lt;/script&gt;"
        in client.get(f"/dashboard/campaigns/{campaign_id}/vehicles?status=failed").text
    )
    live = client.get(f"/dashboard/campaigns/{campaign_id}/status.json").json
    assert "<script>alert" not in live["html"] and "&lt;img src=x" in live["html"]


def test_vehicle_list_filters_and_sorting(
    app: Flask,
    http: FlaskClient,
    ctx: ServerContext,
    tokens: dict[str, str],
    fleet: list[SimVehicle],
) -> None:
    client, _csrf = signed_in(app, tokens["viewer"])
    cars = [v for v in fleet if v.hardware_id == "ecu-a"]
    for vehicle in cars[:3]:  # three report a state (before any campaign assigns them anything)
        manifest = vehicle.manifest(state="downloading", slot="A")
        response = http.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/poll", json=manifest)
        assert response.status_code == 200, response.json
    campaign_id = judged_campaign(http, tokens["operator"])

    def ids(query: str, status: int = 200) -> list[str]:
        response = client.get(f"/dashboard/vehicles?{query}")
        assert response.status_code == status, (query, response.text[:1500])
        return vehicle_ids(response.text)

    assert ids("model=m2") == [f"bus-{i:03d}" for i in range(5)]
    assert len(ids("region=EU")) == 15 and len(ids("region=US&model=m2")) == 0
    assert ids("state=downloading") == sorted(v.vehicle_id for v in cars[:3])
    assert ids("hw=ecu-b&version=1.0&sort=id&dir=desc") == [
        f"bus-{i:03d}" for i in range(4, -1, -1)
    ]
    by_region = ids("sort=region")
    assert set(by_region[:15]) == {v.vehicle_id for v in fleet if v.attributes["region"] == "EU"}
    assert ids("sort=hardware_id")[-5:] == [f"bus-{i:03d}" for i in range(5)]
    assert ids("sort=state")[:3] == sorted(v.vehicle_id for v in cars[:3])
    assert ids("sort=version&hw=ecu-a")[0] == "car-000"
    # Campaign status: the vehicles of the active campaign, and those in none.
    assert len(ids("status=pending")) == 20 and ids("status=none") == ids("model=m2")
    page = client.get("/dashboard/vehicles?q=car-001").text
    assert f'href="/dashboard/campaigns/{campaign_id}">ecu-a 1.1 by region</a>' in page

    for query, message in [
        ("status=bogus", "There is no campaign status &#39;bogus&#39;"),
        ("version=1.0", "Choose a hardware id to filter by version"),
        ("sort=colour", "Cannot sort by &#39;colour&#39;"),
        ("q=" + "c" * 129, "The vehicle id filter is too long"),
    ]:
        response = client.get(f"/dashboard/vehicles?{query}")
        assert response.status_code == 400 and message in response.text, query
        assert len(vehicle_ids(response.text)) == 25  # the filter was left out, not the list


def test_audit_log_filters(
    app: Flask,
    http: FlaskClient,
    ctx: ServerContext,
    tokens: dict[str, str],
    fleet: list[SimVehicle],
    published: Published,
) -> None:
    campaign_id = judged_campaign(http, tokens["operator"])
    body = {"name": "a draft", "releases": {"ecu-a": "1.1"}, "policy": "canary"}
    other = str(api(http, tokens["operator"], "POST", "/campaigns", body)["id"])
    breach_us(http, ctx, fleet, published)
    campaigns.tick(ctx)
    client, _csrf = signed_in(app, tokens["viewer"])

    def rows(query: str, status: int = 200) -> list[str]:
        response = client.get(f"/dashboard/audit?{query}")
        assert response.status_code == status, (query, response.text[:1500])
        return re.findall(r"<td><code>([^<]+)</code></td>", response.text)

    assert len(rows("")) >= 7
    assert set(rows("actor=policy")) == {"campaign.pause"}
    assert set(rows("actor=OPERATOR")) == {"campaign.create", "campaign.start"}
    assert rows(f"campaign={campaign_id}") == [
        "campaign.pause",
        "campaign.start",
        "campaign.create",
    ]
    assert rows(f"campaign={campaign_id}&dir=asc")[0] == "campaign.create"
    assert rows(f"target=campaign:{other[:8]}") == ["campaign.create"]
    assert set(rows("action=token.create")) == {"token.create"}
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert len(rows(f"from={today}&to={today}")) == len(rows(""))
    assert rows("to=2000-01-01") == [] and rows(f"from={today}T00:00Z") == rows("")
    for query, message in [
        ("from=yesterday", "&#39;yesterday&#39; is not a UTC time like 2026-12-04"),
        ("to=2026-02-30", "is not a valid date or time"),
        (f"from={today}&to=2000-01-01", "The &#39;from&#39; time is after the &#39;to&#39; time"),
        ("actor=%1b[31m", "contains control characters"),
        ("actor=%00", "NUL character in the URL"),  # refused by the app, as for the API
        ("dir=up", "The sort direction must be asc or desc"),
    ]:
        response = client.get(f"/dashboard/audit?{query}")
        assert response.status_code == 400 and message in response.text, (
            query,
            response.text[response.text.find("<main") :],
        )
        if "NUL" not in message:
            assert "campaign.create" in response.text  # the entries are still listed


def test_withdrawn_releases_are_shown_and_never_offered(
    app: Flask,
    http: FlaskClient,
    ctx: ServerContext,
    tokens: dict[str, str],
    fleet: list[SimVehicle],
    published: Published,
) -> None:
    campaign_id = judged_campaign(http, tokens["operator"])
    withdraw(published, ctx, "ecu-a", "1.1")
    client, csrf = signed_in(app, tokens["operator"])

    releases = client.get("/dashboard/releases").text
    row = re.search(r'<tr class="withdrawn" data-version="1.1">(.*?)</tr>', releases, re.S)
    assert row and '<span class="tag tag-bad">withdrawn</span>' in row.group(1)
    assert f"Withdrawn: {WITHDRAWAL}." in row.group(1) and "latest" not in row.group(1)
    assert re.search(
        r'data-version="1.0">\s*<td><strong>1.0</strong> <span class="tag tag-good">latest',
        releases,
    )

    form = client.get("/dashboard/campaigns/new").text
    ecu_a = form[
        form.index('id="release-ecu-a"') : form.index("</select>", form.index('id="release-ecu-a"'))
    ]
    assert 'value="1.1"' not in ecu_a and 'value="1.0"' in ecu_a
    assert f"Not offered, withdrawn: 1.1 ({WITHDRAWAL})" in form
    posted = client.post(
        "/dashboard/campaigns/new",
        data={"name": "x", "release-ecu-a": "1.1", "policy": "immediate", "csrf_token": csrf},
    )
    assert posted.status_code == 400 and "was withdrawn" in posted.text

    # The running campaign says its release was withdrawn, and the policy pauses it.
    page = client.get(f"/dashboard/campaigns/{campaign_id}").text
    assert "<strong>Withdrawn:</strong> ecu-a 1.1 was withdrawn" in page and WITHDRAWAL in page
    assert campaigns.tick(ctx) == {campaign_id: "pause"}
    page = client.get(f"/dashboard/campaigns/{campaign_id}").text
    assert "<strong>Paused:</strong> release 1.1 of hardware id ecu-a was withdrawn" in page
    overview = client.get("/dashboard/").text
    assert "latest release 1.0" in overview and "withdrawn</span>" not in overview  # none run it


def test_times_charts_and_filters_helpers() -> None:
    # One time zone: UTC, written as such, whatever the input's offset.
    assert when("2026-12-04T16:20:00+02:00") == "2026-12-04 14:20 UTC"
    assert when(datetime(2026, 12, 4, 14, 20, 5), seconds=True) == "2026-12-04 14:20:05 UTC"
    assert (rate(None), rate(0.35), rate(1 / 40), rate(1.0)) == ("—", "35%", "2.5%", "100%")
    parse = forms.parse_utc
    assert parse("2026-12-04") == datetime(2026, 12, 4, tzinfo=UTC)
    assert parse("2026-12-04", end=True) == datetime(2026, 12, 5, tzinfo=UTC)
    assert parse("2026-12-04T14:20Z", end=True) == datetime(2026, 12, 4, 14, 21, tzinfo=UTC)
    assert parse("2026-12-04 14:20:05 UTC") == datetime(2026, 12, 4, 14, 20, 5, tzinfo=UTC)
    for bad in ("14:20", "2026-12-04 25:00", "2026-13-01", "2026-12-04+02:00 x"):
        with pytest.raises(ValueError, match="not a"):
            parse(bad)

    samples = [
        {"at": "2026-12-04T10:00:00Z", "pending": 18, "in_progress": 2, "committed": 0, "failures": 0},
        {"at": "2026-12-04T11:30:00Z", "pending": 10, "in_progress": 8, "committed": 2, "failures": 0},
        {"at": "2026-12-04T13:00:00Z", "pending": 0, "in_progress": 3, "committed": 10, "failures": 7},
    ]  # fmt: skip
    drawn = chart.timeline_chart({"samples": samples}, datetime(2026, 12, 4, 14, 20, tzinfo=UTC))
    assert drawn is not None and drawn.samples == 3 and drawn.total == 20
    assert (drawn.start, drawn.end) == ("2026-12-04 10:00 UTC", "2026-12-04 14:20 UTC")
    assert [t.label for t in drawn.x_ticks] == ["10:00", "11:00", "12:00", "13:00", "14:00"]
    assert [t.label for t in drawn.y_ticks] == ["0", "5", "10", "15", "20"]
    assert [b.last for b in drawn.bands] == [10, 7, 3, 0]  # committed, failures, …, pending
    # The committed band steps up at each sample and holds to the end (the plot's right edge).
    committed = drawn.bands[0].path
    assert committed.startswith(f"M{drawn.left:g},{drawn.bottom:g} ") and committed.endswith(" Z")
    assert f"L{drawn.right:g},{drawn.top + (drawn.bottom - drawn.top) / 2:g}" in committed
    assert "10 committed, 7 failed or rolled back, 3 in progress" in drawn.columns[2].title
    # A campaign still going: its counts now, from the evaluator's last look to the end.
    now = {"pending": 0, "in_progress": 0, "committed": 12, "failures": 8}
    live = chart.timeline_chart(
        {"samples": samples},
        datetime(2026, 12, 4, 14, 20, tzinfo=UTC),
        current=now,
        checked="2026-12-04T14:00:00+00:00",
    )
    assert live is not None and live.samples == 3 and [b.last for b in live.bands] == [12, 8, 0, 0]
    assert live.columns[-1].title.startswith("now (since 2026-12-04 14:00:00 UTC): 12 committed")
    assert len(live.rows) == 3  # the table lists recorded samples only
    same = chart.timeline_chart({"samples": samples}, current=dict(samples[-1]))
    assert same is not None and len(same.columns) == 3
    assert chart.timeline_chart({"samples": []}) is None
    one = chart.timeline_chart({"samples": samples[:1]})
    assert one is not None and one.samples == 1 and one.start == one.end


# ------------------------------------------------------------------------------ browser


def rows_of(page: Any) -> list[str]:
    return [str(v) for v in page.eval_on_selector_all(
        "tbody tr[data-vehicle]", "rows => rows.map(r => r.dataset.vehicle)"
    )]  # fmt: skip


def test_browser_why_groups_drill_down_and_timeline(
    browse: Any,
    http: FlaskClient,
    ctx: ServerContext,
    tokens: dict[str, str],
    fleet: list[SimVehicle],
    published: Published,
    tmp_path: Path,
) -> None:
    campaign_id = judged_campaign(http, tokens["operator"])
    assert campaigns.tick(ctx) == {campaign_id: "hold"}
    b = browse()
    page = b.page
    b.sign_in(tokens["operator"])
    b.goto(f"/dashboard/campaigns/{campaign_id}")

    # Soaking: what it waits for, until when (UTC) and how long is left, above everything else.
    soak = page.locator('.waits [data-wait="soak"] .wait-text')
    assert re.fullmatch(
        r"soaking until \d{4}-\d\d-\d\d \d\d:\d\d UTC, [0-9hms]+ left", soak.inner_text()
    )
    results = page.locator('.waits [data-wait="sample"] .wait-text')
    assert results.inner_text().startswith("waiting for 20 more results")
    assert page.locator(".why-card").bounding_box()["y"] < page.locator("#live").bounding_box()["y"]

    # Vehicles report; the evaluator looks again: the page shows it without a reload.
    cars, us, eu = us_and_eu(fleet)
    payloads = poll_all(http, list(cars.values()), ctx)
    for vehicle_id in eu[:3]:
        finish(http, cars[vehicle_id], payloads[vehicle_id], "committed", published)
    assert campaigns.tick(ctx) == {campaign_id: "hold"}
    expect(results).to_have_text(re.compile(r"^waiting for 17 more results"))
    expect(page.locator("#events tbody tr").first).to_contain_text("committed")
    expect(page.locator("#timeline svg.timeline")).to_have_attribute("data-samples", "2")
    expect(page.locator("[data-live-stamp]")).to_have_text(
        re.compile(r"^Updated \d\d:\d\d:\d\d UTC$")
    )
    screenshot(page, tmp_path, "campaign-waiting")

    # The breach: the policy pauses it (the page reloads itself) and says why, and where.
    rolled_back = breach_us(
        http, ctx, fleet, published, {k: v for k, v in payloads.items() if k not in eu[:3]}
    )
    assert campaigns.tick(ctx) == {campaign_id: "pause"}
    page.wait_for_selector("text=Paused: region 'US': 7 of 7 finished failed")
    us_row = page.locator('#groups tr[data-dimension="region"][data-value="US"]')
    expect(us_row).to_have_class("breached")
    assert "✕ breached" in us_row.inner_text() and "halts at" in us_row.inner_text()
    assert "within" in page.inner_text('#groups tr[data-dimension="region"][data-value="EU"]')
    assert int(str(page.get_attribute("svg.timeline", "data-samples"))) == 3
    assert page.locator("svg.timeline path[data-band]").count() == 4
    history = page.inner_text("#history tbody tr >> nth=0")
    assert "policy" in history and "campaign.pause" in history and "7 of 7 finished" in history
    screenshot(page, tmp_path, "campaign-groups")

    # Clicking a count opens exactly the vehicles behind it.
    us_row.locator('a[data-link="failures"]').click()
    page.wait_for_selector("h1:has-text('Vehicles of')")
    assert (
        "status=failures" in page.url and "dimension=region" in page.url and "value=US" in page.url
    )
    assert sorted(rows_of(page)) == sorted(rolled_back)
    assert "Region US" in page.inner_text(".group-summary")
    screenshot(page, tmp_path, "campaign-vehicles")
    page.click("th a:has-text('Vehicle')")
    page.wait_for_url(re.compile("sort=vehicle"))
    assert rows_of(page) == sorted(rolled_back)
    page.click("th a:has-text('Vehicle')")
    page.wait_for_url(re.compile("dir=desc"))
    assert rows_of(page) == sorted(rolled_back, reverse=True)
    # The form: every EU car committed; the filter chips say what is shown.
    page.click("a:has-text('Clear')")
    page.select_option("#f-status", "committed")
    page.fill("#f-region", "EU")
    page.click("button:has-text('Apply')")
    page.wait_for_url(re.compile("region=EU"))
    assert sorted(rows_of(page)) == eu and "10 vehicles" in page.inner_text("#showing")
    b.goto(f"/dashboard/campaigns/{campaign_id}")
    page.click('#live .counts a[data-count="rolled_back"]')
    page.wait_for_url(re.compile("status=rolled_back"))
    assert sorted(rows_of(page)) == sorted(rolled_back)

    # Without JavaScript, the page says the same and the chart is still drawn.
    plain = browse(java_script_enabled=False)
    plain.sign_in(tokens["viewer"])
    plain.goto(f"/dashboard/campaigns/{campaign_id}")
    assert "Paused: region 'US'" in plain.page.inner_text(".why")
    assert plain.page.locator("svg.timeline path[data-band]").count() == 4
    assert plain.page.locator("#groups tr.breached").count() >= 1
    plain.page.click('#groups tr[data-dimension="region"][data-value="US"] a[data-link="eligible"]')
    plain.page.wait_for_selector("h1:has-text('Vehicles of')")
    assert sorted(rows_of(plain.page)) == us


def test_browser_overview_refresh_lists_and_withdrawn_release(
    browse: Any,
    http: FlaskClient,
    ctx: ServerContext,
    tokens: dict[str, str],
    fleet: list[SimVehicle],
    published: Published,
    tmp_path: Path,
) -> None:
    b = browse()
    page = b.page
    b.sign_in(tokens["operator"])
    assert "No campaign is running" in page.inner_text("[data-live-section=active]")

    # The overview refreshes itself: a campaign started elsewhere appears, with what it waits for.
    campaign_id = judged_campaign(http, tokens["operator"])
    campaigns.tick(ctx)
    active = page.locator("[data-live-section=active]")
    expect(active).to_contain_text("ecu-a 1.1 by region")
    expect(active).to_contain_text("soaking until")
    expect(page.locator("[data-live-section=recent]")).to_contain_text("campaign.start")
    assert re.fullmatch(r"Updated \d\d:\d\d:\d\d UTC", page.inner_text("[data-live-stamp]"))
    screenshot(page, tmp_path, "overview")

    # Vehicles: filter by model, sort by region (descending), by a header click.
    page.click("nav.mainnav >> text=Vehicles")
    page.fill("#f-model", "m1")
    page.select_option("#f-sort", "region")
    page.select_option("select[name=dir]", "desc")
    page.click("button:has-text('Search')")
    page.wait_for_url(re.compile("model=m1"))
    ids = rows_of(page)
    assert len(ids) == 20 and set(ids[:10]) == {f"car-{i:03d}" for i in range(0, 20, 2)}  # US
    page.click("th a:has-text('Vehicle')")
    page.wait_for_url(re.compile("sort=id"))
    assert rows_of(page) == [f"car-{i:03d}" for i in range(20)]
    assert "ecu-a 1.1 by region" in page.inner_text("tbody tr >> nth=0")
    screenshot(page, tmp_path, "vehicles")

    # Audit log: who did it, and when (UTC).
    page.click("nav.mainnav >> text=Audit log")
    page.fill("#f-actor", "operator")
    page.select_option("#f-action", "campaign.start")
    page.click("button:has-text('Filter')")
    page.wait_for_url(re.compile("action=campaign.start"))
    assert page.locator("tbody tr").count() == 1
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", page.inner_text("tbody tr"))
    page.fill("#f-from", "someday")
    page.click("button:has-text('Filter')")
    page.wait_for_selector("#filter-errors")
    assert "is not a UTC time" in page.inner_text("#filter-errors")

    # A withdrawn release: marked, with its reason, and never offered for a new campaign.
    withdraw(published, ctx, "ecu-a", "1.1")
    page.click("nav.mainnav >> text=Releases")
    withdrawn = page.locator('tr[data-version="1.1"]')
    assert "withdrawn" in withdrawn.inner_text() and WITHDRAWAL in withdrawn.inner_text()
    screenshot(page, tmp_path, "releases-withdrawn")
    b.goto(f"/dashboard/campaigns/{campaign_id}")
    assert WITHDRAWAL in page.inner_text(".why")
    b.goto("/dashboard/campaigns/new")
    options = page.eval_on_selector_all("#release-ecu-a option", "os => os.map(o => o.value)")
    assert options == ["", "1.0"]
    assert WITHDRAWAL in page.inner_text(".withdrawn-hint")

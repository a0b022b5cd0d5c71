"""The operators' dashboard (``server/dashboard``).

Two layers: Flask test-client tests that always run (HTML pages, sign-in and session cookie,
roles, CSRF, form errors, 404s, friendly errors), and end-to-end tests in a real headless
Chromium driven by Playwright against the app on a loopback socket, with simulated vehicles
reporting through the vehicle API meanwhile. The browser tests skip, saying why, when the
``playwright`` package or a Chromium binary is missing; they never download a browser.

Set ``OVERDRIVE_DASHBOARD_SCREENSHOTS=DIR`` to also keep the screenshots in DIR.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jinja2 import StrictUndefined
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from overdrive.server import campaigns
from overdrive.server.app import create_app
from overdrive.server.config import ServerConfig
from overdrive.server.context import EXTENSION, ServerContext
from overdrive.server.dashboard import bp, forms, listings, queries
from overdrive.server.dashboard.formatting import ago, size
from overdrive.server.dashboard.security import SECRET_ENV
from overdrive.server.errors import Unavailable
from overdrive.server.tokens import revoke_api_token
from tests.server.conftest import Published
from tests.server.fleet import SimVehicle
from tests.server.test_campaigns import finish, poll_all

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STAGED_YAML = """\
name: three-waves
stages:
  - name: canary
    share: 10%
    min_finished: 2
    max_failure_rate: 40%
    success_threshold: 50%
  - name: half
    share: 50%
    min_finished: 50%
  - name: everyone
    share: 100%
    min_finished: 100%
"""


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def app(config: ServerConfig) -> Iterator[Flask]:
    """The server app with the dashboard registered (until ``create_app`` does it itself)."""
    app = create_app(config, start_ticker=False)
    app.config.update(SECRET_KEY="dashboard-test-secret", DASHBOARD_REFRESH_SECONDS=1)
    app.jinja_env.undefined = StrictUndefined  # a misspelt template variable fails the test
    if "dashboard" not in app.blueprints:
        app.register_blueprint(bp)
    yield app
    app.extensions[EXTENSION].engine.dispose()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def signed_in(app: Flask, token: str) -> tuple[FlaskClient, str]:
    """A fresh test client signed in with ``token``, and its session's CSRF token."""
    client = app.test_client()
    csrf = csrf_of(client.get("/dashboard/sign-in").text)
    response = client.post("/dashboard/sign-in", data={"token": token, "csrf_token": csrf})
    assert response.status_code == 302, response.text
    return client, csrf_of(client.get("/dashboard/").text)


def create_form(**overrides: str) -> dict[str, str]:
    form = {"name": "ecu-a to 1.1", "release-ecu-a": "1.1", "policy": "immediate", "model": "m1"}
    form.update(overrides)
    return form


def create_campaign(client: FlaskClient, csrf: str, **overrides: str) -> str:
    """Create a campaign through the form; return its id (from the redirect)."""
    response = client.post(
        "/dashboard/campaigns/new", data={**create_form(**overrides), "csrf_token": csrf}
    )
    assert response.status_code == 302, response.text
    campaign_id = response.headers["Location"].rsplit("/", 1)[-1]
    assert len(campaign_id) == 36
    return campaign_id


def state_of(ctx: ServerContext, campaign_id: str) -> str:
    with ctx.session() as session:
        return campaigns.get(session, campaign_id).state


def error_text(response: TestResponse) -> str:
    assert response.mimetype == "text/html", response.mimetype
    return response.text


# ------------------------------------------------------------------------------ test client


def test_sign_in_session_cookie_and_pages(
    app: Flask, tokens: dict[str, str], fleet: list[SimVehicle]
) -> None:
    anonymous = app.test_client()
    response = anonymous.get("/dashboard/vehicles?q=car")
    assert response.status_code == 302
    assert response.headers["Location"] == "/dashboard/sign-in?next=/dashboard/vehicles?q%3Dcar"
    live = anonymous.get("/dashboard/campaigns/x/status.json")
    assert live.status_code == 401 and live.json and live.json["error"]["code"] == "unauthorized"

    client = app.test_client()
    page = client.get("/dashboard/sign-in?next=/dashboard/vehicles")
    assert page.status_code == 200 and "API token" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    response = client.post(
        "/dashboard/sign-in",
        data={
            "token": tokens["viewer"],
            "csrf_token": csrf_of(page.text),
            "next": "/dashboard/vehicles",
        },
    )
    assert response.status_code == 302 and response.headers["Location"] == "/dashboard/vehicles"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert tokens["viewer"] not in cookie
    # The cookie holds the token's hash (as the api_tokens table does), never the token.
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    data = app.session_interface.get_signing_serializer(app).loads(value)  # type: ignore[attr-defined]
    assert data["token"] == hashlib.sha256(tokens["viewer"].encode()).hexdigest()
    assert tokens["viewer"] not in repr(data)

    for path, expect in [
        ("/dashboard/", ["Fleet overview", "25</span>", "ecu-a", "No campaign is running"]),
        ("/dashboard/campaigns", ["Campaigns", "No campaigns yet"]),
        ("/dashboard/campaigns?state=exploded", ["no campaign state &#39;exploded&#39;"]),
        ("/dashboard/vehicles", ["car-000", "bus-004", "ecu-b 1.0"]),
        ("/dashboard/vehicles?q=BUS-00", ["bus-000", "5 vehicles"]),
        ("/dashboard/vehicles?hw=ecu-b&version=1.0&page=zero", ["bus-000", "running ecu-b 1.0"]),
        ("/dashboard/vehicles?q=%25_", ["No vehicle matches"]),
        (
            "/dashboard/vehicles/car-001",
            ["car-001", "Software set", "car-001-primary", "not reported any event"],
        ),
        ("/dashboard/releases", ["ecu-a", "1.1", "from 1.0", "latest"]),
        ("/dashboard/audit", ["token.create", "test-admin"]),
    ]:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.mimetype == "text/html"
        assert response.headers["Cache-Control"] == "no-store"
        for text in expect:
            assert text in response.text, (path, text)
    assert "New campaign" not in client.get("/dashboard/").text  # a viewer cannot create
    assert client.get("/dashboard/campaigns/new").status_code == 403
    # The pager: 25 vehicles, 50 a page → one page; the static files are served too.
    assert client.get("/dashboard/static/dashboard.css").status_code == 200

    # Sign out needs the CSRF token too; afterwards the pages redirect to the sign-in again.
    csrf = csrf_of(client.get("/dashboard/").text)
    assert client.post("/dashboard/sign-out").status_code == 403
    assert client.post("/dashboard/sign-out", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/dashboard/").status_code == 302


def test_vehicle_pages(
    app: Flask, tokens: dict[str, str], fleet: list[SimVehicle], monkeypatch: pytest.MonkeyPatch
) -> None:
    from overdrive.server.dashboard import views

    monkeypatch.setattr(views, "VEHICLES_PER_PAGE", 10)
    client, _csrf = signed_in(app, tokens["viewer"])
    first = client.get("/dashboard/vehicles?q=-0").text
    assert "1–10 of 25 vehicles · page 1 of 3" in first and "bus-000" in first  # by id
    assert "car-004" in first and "car-005" not in first
    assert 'href="/dashboard/vehicles?q=-0&amp;page=2" rel="next"' in first
    last = client.get("/dashboard/vehicles?q=-0&page=99").text  # clamped to the last page
    assert "21–25 of 25 vehicles · page 3 of 3" in last and "car-019" in last
    assert "car-014" not in last and 'rel="next"' not in last
    assert "1 vehicle" in client.get("/dashboard/vehicles?q=bus-004").text


def test_sign_in_errors(app: Flask, ctx: ServerContext, tokens: dict[str, str]) -> None:
    client = app.test_client()
    csrf = csrf_of(client.get("/dashboard/sign-in").text)
    for token, status, message in [
        ("", 400, "Paste your API token"),
        ("odt_not-a-real-token", 401, "That token is not valid"),
    ]:
        response = client.post("/dashboard/sign-in", data={"token": token, "csrf_token": csrf})
        assert response.status_code == status and message in error_text(response)
        assert 'aria-invalid="true"' in response.text
    # No CSRF token (a forged cross-site sign-in): refused before the token is even looked at.
    forged = app.test_client().post("/dashboard/sign-in", data={"token": tokens["admin"]})
    assert forged.status_code == 403 and "did not come from the dashboard" in error_text(forged)
    # A "next" outside the dashboard is ignored (no open redirect).
    for target in ("https://evil.example/", "//evil.example/dashboard/", "/api/v1/tokens"):
        response = client.post(
            "/dashboard/sign-in",
            data={"token": tokens["viewer"], "csrf_token": csrf, "next": target},
        )
        assert response.status_code == 302 and response.headers["Location"] == "/dashboard/"
        csrf = csrf_of(client.get("/dashboard/").text)  # signing in made a new session

    # Revoking the token ends the session at the next request.
    operator, _csrf = signed_in(app, tokens["operator"])
    with ctx.transaction() as session:
        revoke_api_token(session, 2)  # the operator token (viewer 1, operator 2, admin 3)
    response = operator.get("/dashboard/campaigns")
    assert response.status_code == 302 and "/dashboard/sign-in" in response.headers["Location"]
    assert "no longer valid" in operator.get("/dashboard/sign-in").text
    revoked = operator.post(
        "/dashboard/sign-in",
        data={
            "token": tokens["operator"],
            "csrf_token": csrf_of(operator.get("/dashboard/sign-in").text),
        },
    )
    assert revoked.status_code == 401 and "revoked" in revoked.text


def test_campaign_actions_roles_and_csrf(
    app: Flask, ctx: ServerContext, tokens: dict[str, str], fleet: list[SimVehicle]
) -> None:
    operator, csrf = signed_in(app, tokens["operator"])
    viewer, viewer_csrf = signed_in(app, tokens["viewer"])
    campaign_id = create_campaign(operator, csrf, policy="manual")
    page = operator.get(f"/dashboard/campaigns/{campaign_id}").text
    assert "created as a draft" in page and "Start campaign" in page and "Abort…" in page
    assert "If it started now, <strong>20</strong> vehicles would be eligible." in page

    start = f"/dashboard/campaigns/{campaign_id}/start"
    # No CSRF token: refused, nothing changes.
    refused = operator.post(start)
    assert refused.status_code == 403 and "did not come from the dashboard" in refused.text
    assert operator.post(start, data={"csrf_token": csrf + "x"}).status_code == 403
    assert state_of(ctx, campaign_id) == "draft"
    # A viewer sees no buttons, and a forged POST with a valid session token is still refused.
    viewer_page = viewer.get(f"/dashboard/campaigns/{campaign_id}").text
    assert "Start campaign" not in viewer_page and "formaction" not in viewer_page
    assert "signed in as a viewer" in viewer_page
    forged = viewer.post(start, data={"csrf_token": viewer_csrf})
    assert forged.status_code == 403 and "needs the operator role" in forged.text
    assert state_of(ctx, campaign_id) == "draft"

    response = operator.post(start, data={"csrf_token": csrf})
    assert response.status_code == 302
    page = operator.get(f"/dashboard/campaigns/{campaign_id}").text
    assert "Campaign started: 20 vehicles eligible, 1 admitted" in page
    assert "Approve next stage" in page and "needs approval" in page and "Pause" in page
    assert state_of(ctx, campaign_id) == "running"
    # A transition that does not apply is a message on the page, not an error page.
    operator.post(f"/dashboard/campaigns/{campaign_id}/resume", data={"csrf_token": csrf})
    assert (
        "Could not resume the campaign" in operator.get(f"/dashboard/campaigns/{campaign_id}").text
    )
    for action, state in [("approve", "running"), ("pause", "paused"), ("resume", "running")]:
        data = {"csrf_token": csrf, "reason": "checking the telemetry"}
        assert (
            operator.post(f"/dashboard/campaigns/{campaign_id}/{action}", data=data).status_code
            == 302
        )
        assert state_of(ctx, campaign_id) == state
    long_reason = {"csrf_token": csrf, "reason": "x" * 501}
    operator.post(f"/dashboard/campaigns/{campaign_id}/abort", data=long_reason)
    assert state_of(ctx, campaign_id) == "running"
    operator.post(
        f"/dashboard/campaigns/{campaign_id}/abort",
        data={"csrf_token": csrf, "reason": "bad build"},
    )
    assert state_of(ctx, campaign_id) == "aborted"
    page = operator.get(f"/dashboard/campaigns/{campaign_id}").text
    assert "Aborted:</strong> bad build" in page and "formaction" not in page

    live = viewer.get(f"/dashboard/campaigns/{campaign_id}/status.json")
    assert live.status_code == 200 and live.json
    assert live.json["state"] == "aborted" and live.json["progress"]["eligible"] == 20

    # The audit log names the dashboard user exactly as the API would.
    with ctx.session() as session:
        entries = listings.audit_page(session, forms.parse_audit_args({}), 10, 0)
    actions = [(e.action, e.actor) for e in entries if e.target == f"campaign:{campaign_id}"]
    assert actions == [
        ("campaign.abort", "test-operator (operator)"),
        ("campaign.resume", "test-operator (operator)"),
        ("campaign.pause", "test-operator (operator)"),
        ("campaign.approve", "test-operator (operator)"),
        ("campaign.start", "test-operator (operator)"),
        ("campaign.create", "test-operator (operator)"),
    ]
    audit_page = viewer.get("/dashboard/audit").text
    assert "checking the telemetry" in audit_page and "test-operator (operator)" in audit_page


FORM_ERRORS: list[tuple[dict[str, str], str, str]] = [
    ({"name": "  "}, "name", "Give the campaign a name."),
    ({"release-ecu-a": ""}, "releases", "Choose a release for at least one hardware id."),
    ({"release-ecu-a": "9.9"}, "releases", "is not in the signed repository"),
    ({"policy": ""}, "policy", "Choose a policy preset"),
    ({"policy": "custom", "policy_text": ""}, "policy", "Paste a policy document"),
    ({"policy": "custom", "policy_text": "stages: [oops"}, "policy", "invalid YAML"),
    ({"policy": "custom", "policy_text": '{"stages": 1,}'}, "policy", "invalid JSON"),
    (
        {"policy": "custom", "policy_text": "stages:\n  - name: x\n    share: 110%\n"},
        "policy",
        "stages[0].share",
    ),
    ({"vehicles": "car-001 car-999"}, "vehicles", "Unknown vehicle ids: car-999"),
    ({"vehicles": "car-001 ../etc"}, "vehicles", "Not a vehicle id"),
]


def test_campaign_form_errors_are_inline(
    app: Flask, ctx: ServerContext, tokens: dict[str, str], fleet: list[SimVehicle]
) -> None:
    client, csrf = signed_in(app, tokens["operator"])
    for overrides, field, message in FORM_ERRORS:
        response = client.post(
            "/dashboard/campaigns/new", data={**create_form(**overrides), "csrf_token": csrf}
        )
        assert response.status_code == 400, overrides
        html = response.text
        assert f'id="{field}-error"' in html, (overrides, html)
        assert message.replace("'", "&#39;") in html, (overrides, message)
        assert "The campaign was not created" in html
        if "name" not in overrides:
            assert 'value="ecu-a to 1.1"' in html  # what was typed stays in the form
    with ctx.session() as session:
        assert queries.count_campaigns(session, None) == 0


def test_custom_policy_and_filters_create_a_campaign(
    app: Flask, ctx: ServerContext, tokens: dict[str, str], fleet: list[SimVehicle]
) -> None:
    client, csrf = signed_in(app, tokens["operator"])
    form = client.get("/dashboard/campaigns/new").text
    assert "canary" in form and "1.1 (release 2) · latest" in form and "20 vehicles" in form
    campaign_id = create_campaign(
        client,
        csrf,
        policy="custom",
        policy_text=STAGED_YAML,
        region="EU, US",
        vehicles="car-001,car-002\ncar-003",
    )
    page = client.get(f"/dashboard/campaigns/{campaign_id}").text
    for text in ("three-waves", "canary", "half", "everyone", "car-003", "EU", "ecu-a"):
        assert text in page
    with ctx.session() as session:
        campaign = campaigns.get(session, campaign_id)
        assert campaign.filter == {
            "model": ["m1"],
            "region": ["EU", "US"],
            "vehicles": ["car-001", "car-002", "car-003"],
        }
        assert [s["name"] for s in campaign.policy["stages"]] == ["canary", "half", "everyone"]


def test_not_found_and_friendly_errors(
    app: Flask,
    ctx: ServerContext,
    tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, csrf = signed_in(app, tokens["operator"])
    for path, message in [
        ("/dashboard/campaigns/no-such-campaign", "There is no campaign with id"),
        ("/dashboard/vehicles/no-such-car", "There is no vehicle with id"),
        ("/dashboard/no/such/page", "There is no dashboard page"),
    ]:
        response = client.get(path)
        assert response.status_code == 404 and message in error_text(response)
        assert "Page not found" in response.text
    missing = client.get("/dashboard/campaigns/nope/status.json")
    assert (
        missing.status_code == 404 and missing.json and "nope" in missing.json["error"]["message"]
    )
    action = client.post("/dashboard/campaigns/nope/start", data={"csrf_token": csrf})
    assert action.status_code == 404 and "There is no campaign" in error_text(action)
    # The API keeps its JSON errors.
    assert client.get("/api/v1/nothing").mimetype == "application/json"

    # A repository that cannot be read: the pages say so instead of failing.
    def unavailable(**_kwargs: Any) -> Any:
        raise Unavailable("this server has no image repository configured (--storage)")

    monkeypatch.setattr(ctx.releases, "index", unavailable)
    releases = client.get("/dashboard/releases")
    assert releases.status_code == 503 and "no image repository configured" in releases.text
    assert "no image repository configured" in client.get("/dashboard/").text
    form = client.get("/dashboard/campaigns/new")
    assert "no image repository configured" in form.text and "disabled>Create draft" in form.text
    post = client.post("/dashboard/campaigns/new", data={**create_form(), "csrf_token": csrf})
    assert post.status_code == 400 and "no image repository configured" in post.text

    # An unexpected exception: a 500 page that says nothing about the internals.
    def explode(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(queries, "fleet_overview", explode)
    with caplog.at_level(logging.ERROR, logger="overdrive.dashboard"):
        response = client.get("/dashboard/")
    assert response.status_code == 500 and "Something went wrong" in error_text(response)
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert "secret internals" in caplog.text


def with_dashboard(config: ServerConfig) -> Flask:
    """A new app with the dashboard, registered by ``create_app`` or else here."""
    app = create_app(config, start_ticker=False)
    if "dashboard" not in app.blueprints:
        app.register_blueprint(bp)
    return app


def test_secret_key_settings(
    config: ServerConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(SECRET_ENV, "from-the-environment")
    app = with_dashboard(config)
    assert app.config["SECRET_KEY"] == "from-the-environment"
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Strict"
    app.extensions[EXTENSION].engine.dispose()

    monkeypatch.delenv(SECRET_ENV)
    with caplog.at_level(logging.WARNING, logger="overdrive.dashboard"):
        app = with_dashboard(config)
    assert len(app.config["SECRET_KEY"]) >= 32 and "do not span gunicorn workers" in caplog.text
    # Over HTTPS the cookie is Secure, without any setting.
    client = app.test_client()
    response = client.get("/dashboard/sign-in", base_url="https://ota.example")
    assert "Secure" in response.headers["Set-Cookie"]
    assert "Secure" not in client.get("/dashboard/sign-in").headers["Set-Cookie"]
    app.extensions[EXTENSION].engine.dispose()


def test_formatting_helpers() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert ago(None) == "never"
    assert ago(now - timedelta(seconds=10), now) == "just now"
    assert ago(now - timedelta(minutes=4), now) == "4 min ago"
    assert ago((now - timedelta(hours=3)).replace(tzinfo=None), now) == "3 h ago"
    assert ago("2024-04-19T12:00:00Z", now) == "12 days ago"
    assert ago(now + timedelta(minutes=5), now) == "in 5 min"
    assert (size(812), size(120_000), size(3 << 30)) == ("812 B", "117.2 KiB", "3.0 GiB")


# ------------------------------------------------------------------------------ browser


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("OVERDRIVE_TEST_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # not installed, or installed but broken
        pytest.skip(f"the playwright package is not usable ({e}); pip install playwright")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium binary (apt-get install chromium); browsers are never downloaded")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def live_url(app: Flask) -> Iterator[str]:
    """The app on a real loopback socket, in a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-test", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


class Browser:
    """One browser context (its own cookies) on the live server, failing on console errors."""

    def __init__(self, browser: Any, base: str, **options: Any) -> None:
        self.base = base
        self.context = browser.new_context(
            **{"viewport": {"width": 1280, "height": 900}, **options}
        )
        self.page = self.context.new_page()
        self.page.set_default_timeout(10_000)
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on(
            "console",
            lambda message: (
                self.problems.append(f"console: {message.text}")
                if message.type == "error" and "status of 40" not in message.text
                else None
            ),
        )

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def sign_in(self, token: str) -> None:
        self.goto("/dashboard/")
        assert "/dashboard/sign-in" in self.page.url
        self.page.fill("#token", token)
        self.page.click("button:has-text('Sign in')")
        self.page.wait_for_selector("text=Fleet overview")

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems


@pytest.fixture
def browse(browser: Any, live_url: str) -> Iterator[Any]:
    opened: list[Browser] = []

    def open_browser(**options: Any) -> Browser:
        opened.append(Browser(browser, live_url, **options))
        return opened[-1]

    yield open_browser
    for one in opened:
        one.close()


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("OVERDRIVE_DASHBOARD_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path


def badge(page: Any) -> str:
    """The campaign's state badge, as written (the CSS capitalises it on screen)."""
    return str(page.text_content("h1 .badge")).strip()


def expect(locator: Any) -> Any:
    """Playwright's retrying assertions (they poll the DOM: the dashboard's CSP forbids eval)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def expect_count(page: Any, name: str, value: str) -> None:
    """Wait for the live refresh to show ``value``."""
    expect(page.locator(f'#live .counts [data-count="{name}"]')).to_have_text(value)


def count(page: Any, name: str) -> str:
    return str(page.inner_text(f'#live .counts [data-count="{name}"]'))


def test_browser_operator_runs_a_campaign(
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
    assert page.inner_text(".stat-value >> nth=0") == "25"
    screenshot(page, tmp_path, "overview-empty")

    # Create a campaign through the form, with a pasted YAML policy.
    page.click("nav.mainnav >> text=Campaigns")
    page.click("text=New campaign")
    page.fill("#name", "ecu-a 1.1 for m1")
    page.select_option("#release-ecu-a", "1.1")
    page.fill("#policy_text", STAGED_YAML)
    assert page.is_checked("#policy-custom")  # typing a policy selects "custom"
    page.fill("#model", "m1")
    screenshot(page, tmp_path, "new-campaign")
    page.click("button:has-text('Create draft')")
    page.wait_for_selector("text=created as a draft")
    assert badge(page) == "draft"
    assert page.locator(".step").count() == 3
    assert "20 vehicles would be eligible" in page.inner_text(".preview")

    # Start it: running, 10% of the 20 m1 cars admitted.
    page.click("button:has-text('Start campaign')")
    page.wait_for_selector("text=Campaign started: 20 vehicles eligible, 2 admitted")
    assert badge(page) == "running"
    assert (count(page, "eligible"), count(page, "admitted"), count(page, "committed")) == (
        "20",
        "2",
        "0",
    )
    assert "canary" in page.inner_text(".step-current")

    # The canaries update and report; the page's own refresh shows it without a reload.
    cars = {v.vehicle_id: v for v in fleet if v.hardware_id == "ecu-a"}
    canaries = poll_all(http, list(cars.values()), ctx)
    assert len(canaries) == 2
    expect_count(page, "in_progress", "2")
    for vehicle_id, payload in canaries.items():
        finish(http, cars[vehicle_id], payload, "committed", published)
    expect_count(page, "committed", "2")
    assert page.inner_text('[data-percent="committed"]') == "10"

    # The evaluator advances the stage: the page reloads itself and the stepper moves on.
    assert campaigns.tick(ctx) == {page.url.rsplit("/", 1)[-1]: "advance"}
    page.wait_for_selector(".step-current:has-text('half')")
    assert count(page, "admitted") == "10"
    assert page.inner_text("[data-statuses]") == "pending 8 committed 2"
    poll_all(http, list(cars.values()), ctx)  # the next wave is assigned
    expect(page.locator("[data-statuses]")).to_have_text("assigned 8 committed 2")
    assert count(page, "in_progress") == "8"
    shot = screenshot(page, tmp_path, "campaign")
    assert shot.stat().st_size > 10_000
    assert page.inner_text("[data-live-stamp]").startswith("Updated ")

    # Pause with a reason, resume, then abort through the confirm dialog.
    page.fill("input[name=reason]", "checking the telemetry")
    page.click("button:has-text('Pause')")
    page.wait_for_selector("text=Paused: checking the telemetry")
    assert badge(page) == "paused"
    page.click("button:has-text('Resume')")
    page.wait_for_selector("text=Campaign resumed.")
    assert badge(page) == "running"
    dialogs: list[str] = []

    def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.click("button:has-text('Abort')")
    assert dialogs and "cannot be resumed" in dialogs[0]
    assert badge(page) == "running"  # dismissed: nothing was sent
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:has-text('Abort')")
    page.wait_for_selector("text=Campaign aborted")
    assert badge(page) == "aborted"
    assert page.locator("form.actions").count() == 0
    screenshot(page, tmp_path, "campaign-aborted")

    # A vehicle's page shows its events; the audit log shows who did what.
    committed = sorted(canaries)[0]
    page.click(f"a:has-text('{committed}') >> nth=0")
    page.wait_for_selector("h1:has-text('" + committed + "')")
    history = str(page.text_content("section:has(#events-h)"))
    assert "committed" in history and "downloading" in history and "installed" in history
    screenshot(page, tmp_path, "vehicle")
    page.click("nav.mainnav >> text=Audit log")
    audit = page.inner_text("table")
    assert "campaign.abort" in audit and "test-operator (operator)" in audit
    screenshot(page, tmp_path, "audit")
    page.click("nav.mainnav >> text=Releases")
    assert "delta" not in page.inner_text("h1") and page.locator("text=from 1.0").count() == 1
    screenshot(page, tmp_path, "releases")
    page.click("nav.mainnav >> text=Campaigns")
    page.click("a.chip:has-text('aborted')")
    assert page.locator("tbody tr").count() == 1
    screenshot(page, tmp_path, "campaigns")

    # Unknown ids: the dashboard's 404 page.
    response = b.goto("/dashboard/campaigns/00000000-0000-0000-0000-000000000000")
    assert response.status == 404 and page.inner_text("h1") == "Page not found"


def test_browser_viewer_bad_token_and_bad_form(
    browse: Any,
    ctx: ServerContext,
    tokens: dict[str, str],
    fleet: list[SimVehicle],
    tmp_path: Path,
) -> None:
    with ctx.transaction() as session:
        campaign_id = campaigns.create(
            ctx,
            session,
            {"name": "made by the API", "releases": {"ecu-a": "1.1"}, "policy": "canary"},
        ).id

    viewer = browse(viewport={"width": 390, "height": 844})  # a phone
    page = viewer.page
    viewer.goto("/dashboard/sign-in")
    page.fill("#token", "odt_wrong")
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("#token-error")
    assert "not valid" in page.inner_text("#token-error")
    assert page.get_attribute("#token", "aria-invalid") == "true"
    screenshot(page, tmp_path, "sign-in-error")
    viewer.sign_in(tokens["viewer"])

    viewer.goto(f"/dashboard/campaigns/{campaign_id}")
    assert badge(page) == "draft"
    assert page.locator("form.actions").count() == 0
    assert page.locator("button:has-text('Start campaign')").count() == 0
    assert "signed in as a viewer" in page.inner_text(".readonly-note")
    screenshot(page, tmp_path, "campaign-phone")
    # Forged POSTs from the viewer's own page: with the session's CSRF token (403: role) and
    # without it (403: CSRF). Neither changes anything.
    statuses = page.evaluate(
        """async (id) => {
            const csrf = document.querySelector('input[name=csrf_token]').value;
            const post = (body) => fetch(`/dashboard/campaigns/${id}/start`, {
                method: 'POST', body, headers: {'Content-Type': 'application/x-www-form-urlencoded'}
            }).then(r => r.status);
            return [await post('csrf_token=' + encodeURIComponent(csrf)), await post('')];
        }""",
        campaign_id,
    )
    assert statuses == [403, 403]
    assert state_of(ctx, campaign_id) == "draft"

    # An operator's bad form: inline errors next to the fields, values kept.
    operator = browse(color_scheme="dark")
    operator.sign_in(tokens["operator"])
    operator.goto("/dashboard/campaigns/new")
    form = operator.page
    form.fill("#name", "needs a release")
    form.check("#policy-custom")
    form.fill("#policy_text", "stages:\n  - name: x\n    share: 110%\n")
    form.click("button:has-text('Create draft')")
    form.wait_for_selector("#form-errors")
    assert "Choose a release" in form.inner_text("#releases-error")
    assert "stages[0].share" in form.inner_text("#policy-error")
    assert form.input_value("#name") == "needs a release"
    screenshot(form, tmp_path, "form-errors-dark")

    response = operator.goto("/dashboard/vehicles/no-such-car")
    assert response.status == 404 and "There is no vehicle" in form.inner_text("main")

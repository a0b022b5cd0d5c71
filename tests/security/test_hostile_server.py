"""Hostile input against a real rollout server (loopback socket, real HTTP): one class each.

Each was tried against a live server and used to succeed:

1. a registered vehicle posting events for a campaign it is not in, dated 2099, to fill that
   campaign's feed: events may name only the vehicle's own memberships, feeds are ordered by
   receipt, implausible vehicle times are replaced by the time of receipt;
2. identifiers with a trailing newline (``re.match`` with ``$`` accepts one): refused everywhere;
3. a dashboard cookie copied before sign-out still working: sessions are revoked server-side;
4. a unique violation (two overlapping campaign starts at once) answered 500: now a 409;
5. polls and events answering 404 for unknown vehicles and 401 for known ones: the same 401;
6. a manifest with 3,001 hardware ids (and other unbounded reports): capped with a 400;
7. a lone surrogate in a registration attribute, then a 500 on the vehicle's page: refused at the
   door, like control characters in one-line fields;
8. a re-initialised image repository with a restarted server: a 503 naming the fix, not a 500,
   and ``/readyz`` not ready; trust state is kept per repository in an absolute state dir;
9. vehicle version manifests: an ECU version report signed by another key than that ECU's
   (401), a genuine report replayed with its old nonce or signed again with an old counter
   (409), and one vehicle's manifest (or ECU report) passed off as another's (401): nothing of
   them is stored; a report of an ECU not registered to the vehicle is ignored and recorded
   for the operators (``unknown_ecus``), the rest of the manifest accepted.

Every refusal is a one-line JSON error (``{"error": {status, code, message}}``), never a 500.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from flask import Flask
from securesystemslib.signer import CryptoSigner, Signer
from sqlalchemy import select, update
from sqlalchemy.exc import DataError, IntegrityError

from overdrive.client.api import ServerApi
from overdrive.client.events import EventQueue
from overdrive.envelope import EVENTS, sign_envelope
from overdrive.errors import OverdriveError
from overdrive.server import campaigns, tokens
from overdrive.server.app import create_app
from overdrive.server.config import ServerConfig, default_state_dir
from overdrive.server.context import ReleaseCache
from overdrive.server.manifest import MAX_ECUS
from overdrive.server.migrate import upgrade
from overdrive.server.models import (
    EVENT_ORDER,
    DashboardSession,
    Event,
    InstalledImage,
    Membership,
    Vehicle,
)
from overdrive.server.validation import ID_PATTERN
from overdrive.text import text_problem
from overdrive.tuf_layout import check_segment
from overdrive.uptane import VEHICLE_MANIFEST, ecu_report, installed_image
from tests.conftest import Cli, generate_keys, make_image, mutate
from tests.live_server import LiveServer, serve_live, start_campaign
from tests.repo_fixtures import Published
from tests.server.conftest import BACKENDS, POSTGRES, postgres_schema, vehicle_on
from tests.server.fleet import SimVehicle

# ------------------------------------------------------------------------------ helpers


def call(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    token: str | None = None,
) -> tuple[int, Any]:
    """One real HTTP request; the status and the JSON answer (every answer here is JSON)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        assert e.headers.get_content_type() == "application/json", e.headers
        return e.code, json.loads(e.read())


def refused(answer: tuple[int, Any], status: int, fragment: str = "", code: str = "") -> str:
    """Assert a one-line JSON error with ``status`` (and ``fragment``, ``code``); its message."""
    got, body = answer
    assert got == status, answer
    assert set(body) == {"error"} and set(body["error"]) == {"status", "code", "message"}, body
    message = body["error"]["message"]
    assert body["error"]["status"] == status and "\n" not in message, body
    assert "Traceback" not in message and len(message) < 1000, message
    assert fragment in message, (fragment, message)
    assert not code or body["error"]["code"] == code, body
    return str(message)


def register(live: LiveServer, vehicle: SimVehicle) -> None:
    answer = call(live.url, "POST", "/api/v1/vehicles/register", vehicle.registration(live.enroll))
    assert answer[0] == 201, answer


def post_events(live: LiveServer, vehicle: SimVehicle, *events: dict[str, Any]) -> tuple[int, Any]:
    return call(
        live.url, "POST", f"/api/v1/vehicles/{vehicle.vehicle_id}/events", vehicle.events(*events)
    )


def post_poll(live: LiveServer, vehicle: SimVehicle, **extra: Any) -> tuple[int, Any]:
    return call(
        live.url, "POST", f"/api/v1/vehicles/{vehicle.vehicle_id}/poll", vehicle.manifest(**extra)
    )


def signed_report(
    serial: str,
    image: dict[str, Any],
    *,
    nonce: str,
    counter: int,
    signer: Signer,
    hardware_id: str = "ecu-a",
) -> dict[str, Any]:
    """An ECU version report (``image``: version, sha256, release_counter, length), signed."""
    payload = ecu_report(
        ecu_serial=serial,
        hardware_id=hardware_id,
        nonce=nonce,
        counter=counter,
        image=installed_image(
            None,
            image.get("length", 0),
            image["sha256"],
            image["version"],
            image.get("release_counter", 0),
        ),
    )
    return sign_envelope(payload, signer)


def signed_manifest(
    vehicle: SimVehicle,
    reports: dict[str, Any],
    *,
    nonce: str,
    counter: int | None = None,
    signer: Signer | None = None,
    vehicle_id: str | None = None,
) -> dict[str, Any]:
    """A vehicle version manifest carrying ``reports`` (serial → signed report), signed by
    ``signer`` (default: the vehicle's key); ``counter`` defaults to the vehicle's next."""
    if counter is None:
        vehicle.counter += 1
        counter = vehicle.counter
    payload = {
        "_type": VEHICLE_MANIFEST,
        "vehicle_id": vehicle_id or vehicle.vehicle_id,
        "primary_ecu_serial": vehicle.serial,
        "counter": counter,
        "timestamp": iso(datetime.now(UTC)),
        "nonce": nonce,
        "ecu_version_reports": reports,
    }
    return sign_envelope(payload, signer or vehicle.signer)


def primary_report(
    vehicle: SimVehicle, nonce: str, counter: int, signer: Signer | None = None, **changes: Any
) -> dict[str, Any]:
    """The vehicle's primary ECU report (its own image), signed by its key or ``signer``."""
    return signed_report(
        changes.pop("serial", vehicle.serial),
        {**vehicle.image, **changes.pop("image", {})},
        nonce=nonce,
        counter=counter,
        signer=signer or vehicle.signer,
        hardware_id=changes.pop("hardware_id", vehicle.hardware_id),
    )


def poll_with(live: LiveServer, vehicle_id: str, manifest: dict[str, Any]) -> tuple[int, Any]:
    return call(live.url, "POST", f"/api/v1/vehicles/{vehicle_id}/poll", manifest)


def admin_token(live: LiveServer, name: str = "root") -> str:
    with live.ctx.transaction() as session:
        _token, secret = tokens.create_api_token(session, name, "admin")
    return secret


def stored_events(live: LiveServer, vehicle_id: str) -> list[Event]:
    with live.ctx.session() as session:
        return list(session.scalars(select(Event).where(Event.vehicle_id == vehicle_id)))


def aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def car(live_server: LiveServer, published: Published) -> SimVehicle:
    """A registered vehicle on ecu-a 1.0."""
    vehicle = vehicle_on(published, "car-1", model="m1", region="EU")
    register(live_server, vehicle)
    return vehicle


# ------------------------------------------------------------------------------ 1. events


def test_events_only_for_own_campaigns_and_feeds_ordered_by_receipt(
    live_server: LiveServer, published: Published, car: SimVehicle, tmp_path: Path
) -> None:
    live = live_server
    outsider = vehicle_on(published, "outsider-1", "ecu-b/1.0")
    register(live, outsider)
    campaign = start_campaign(live)  # ecu-a 1.1: car-1 is a member, outsider-1 (ecu-b) is not

    # The attack: a vehicle outside the campaign reports into its feed, dated 2099.
    forged = {"type": "committed", "campaign_id": campaign, "at": "2099-01-01T00:00:00Z"}
    for event in (forged, {**forged, "hardware_id": "ecu-b"}, {**forged, "hardware_id": "ecu-a"}):
        refused(
            post_events(live, outsider, event),
            400,
            f"vehicle outsider-1 is not a member of campaign {campaign}",
            "not_a_member",
        )
    # A member, but for a hardware id it has no membership for.
    refused(
        post_events(live, car, {"type": "failed", "campaign_id": campaign, "hardware_id": "ecu-b"}),
        400,
        "for hardware id ecu-b",
        "not_a_member",
    )
    # A campaign that does not exist at all, in the middle of a good batch: nothing is stored.
    bad_batch = car.events(
        {"type": "downloading", "campaign_id": campaign, "hardware_id": "ecu-a"},
        {"type": "downloading", "campaign_id": str(uuid.uuid4()), "hardware_id": "ecu-a"},
    )
    answer = call(live.url, "POST", "/api/v1/vehicles/car-1/events", bad_batch)
    refused(answer, 400, "signed.events[1]: vehicle car-1 is not a member", "not_a_member")
    assert stored_events(live, "outsider-1") == [] and stored_events(live, "car-1") == []
    with live.ctx.session() as session:
        assert (
            session.scalar(select(Membership.status).where(Membership.vehicle_id == "car-1"))
            == "pending"
        )

    # A member's own event dated 2099 (or 1999) is kept, at the time it was received.
    now = datetime.now(UTC)
    for claimed in (
        "2099-01-01T00:00:00Z",
        "1999-01-01T00:00:00Z",
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
    ):
        answer = post_events(
            live,
            car,
            {"type": "downloading", "campaign_id": campaign, "hardware_id": "ecu-a", "at": claimed},
        )
        assert answer == (200, {"accepted": 1, "duplicates": 0}), answer
    clamped = stored_events(live, "car-1")
    assert len(clamped) == 4
    for row in clamped:
        assert aware(row.occurred_at) == aware(row.received_at)
        assert abs(aware(row.received_at) - now) < timedelta(minutes=1)
        assert row.details["claimed_at"][:4] in ("2099", "1999", "9999", "0001")

    # Feeds are newest *received* first: an event that claims to be older, received later, leads.
    first = post_events(
        live, car, {"type": "downloaded", "campaign_id": campaign, "hardware_id": "ecu-a"}
    )
    assert first[0] == 200
    earlier = iso(datetime.now(UTC) - timedelta(seconds=200))  # plausible: within the clock skew
    second = post_events(
        live,
        car,
        {"type": "installing", "campaign_id": campaign, "hardware_id": "ecu-a", "at": earlier},
    )
    assert second[0] == 200
    with live.ctx.session() as session:
        feed = list(
            session.scalars(
                select(Event).where(Event.campaign_id == campaign).order_by(*EVENT_ORDER)
            )
        )
    assert [e.type for e in feed][:2] == ["installing", "downloaded"]
    assert all("claimed_at" not in e.details for e in feed[:2])

    # The real client's queue sends batches: the refused event is set aside, the others arrive.
    queue = EventQueue(tmp_path / "car-1-state")
    queue.add("installed", campaign_id=campaign, hardware_id="ecu-a")
    queue.add("installed", campaign_id=str(uuid.uuid4()), hardware_id="ecu-a")
    queue.add("booted", hardware_id="ecu-a")
    api = ServerApi(live.url, "car-1", car.signer, deadline_s=20)
    assert queue.flush(api.send_events) == 2
    [reason] = list((tmp_path / "car-1-state" / "events" / "rejected").glob("*.reason"))
    assert "is not a member of campaign" in reason.read_text()


# ------------------------------------------------------------------------------ 2. identifiers


def test_identifiers_with_a_trailing_newline_are_refused(
    live_server: LiveServer, published: Published, car: SimVehicle, cli: Cli, tmp_path: Path
) -> None:
    live = live_server
    assert ID_PATTERN.match("car-1\n") is None and ID_PATTERN.fullmatch("car-1")

    twin = vehicle_on(published, "car-1\n")
    refused(
        call(live.url, "POST", "/api/v1/vehicles/register", twin.registration(live.enroll)),
        400,
        "invalid vehicle id 'car-1\\n'",
    )
    other = vehicle_on(published, "car-2")
    body = other.registration(live.enroll)
    body["images"] = {"ecu-a\n": body["images"]["ecu-a"]}
    refused(
        call(live.url, "POST", "/api/v1/vehicles/register", body),
        400,
        "invalid hardware id 'ecu-a\\n'",
    )
    admin = admin_token(live)
    for name in ("ops\n", "ops\r\n", "\nops"):
        answer = call(
            live.url, "POST", "/api/v1/tokens", {"name": name, "role": "viewer"}, token=admin
        )
        refused(answer, 400, "invalid token name")

    # In signed messages: an ECU report's hardware id and serial, an event's hardware id and
    # campaign id.
    nonce = uuid.uuid4().hex
    report = primary_report(car, nonce, 1, hardware_id="ecu-a\n")
    answer = poll_with(live, "car-1", signed_manifest(car, {car.serial: report}, nonce=nonce))
    refused(answer, 400, "invalid hardware id 'ecu-a\\n'")
    nonce = uuid.uuid4().hex
    twin_serial = f"{car.serial}\n"
    report = primary_report(car, nonce, 1, serial=twin_serial)
    answer = poll_with(live, "car-1", signed_manifest(car, {twin_serial: report}, nonce=nonce))
    refused(answer, 400, "invalid ECU serial")
    for field in ("hardware_id", "campaign_id"):
        answer = post_events(live, car, {"type": "booted", field: "ecu-a\n"})
        refused(answer, 400, f"field 'signed.events[0].{field}' is not a valid id")
    # In the URL: "car-1\n" is no alias of car-1 (it is no vehicle at all).
    answer = call(live.url, "POST", "/api/v1/vehicles/car-1%0A/poll", car.manifest())
    refused(answer, 401, "not signed by a trusted key")

    # Key names (signing) and target path segments (hardware ids, versions of releases).
    result = cli(
        "keys", "generate", "root\n", "--dir", tmp_path / "keys", "--insecure-no-passphrase"
    )
    assert result.code != 0 and "invalid key name" in result.stderr
    with pytest.raises(OverdriveError, match="invalid version"):
        check_segment("version", "1.0\n")
    assert check_segment("version", "1.0") == "1.0"


# ------------------------------------------------------------------------------ 3. sessions


class Browser:
    """A browser reduced to what matters here: real HTTP, one cookie, no redirects followed."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.cookie: str | None = None

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        *,
        cookie: str | None = None,
    ) -> tuple[int, str, str]:
        """Status, Location and body; the session cookie is kept (or ``cookie`` sent instead)."""
        headers = {}
        sent = cookie if cookie is not None else self.cookie
        if sent:
            headers["Cookie"] = sent
        data = urlencode(form) if form is not None else None
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            text = response.read().decode()
            set_cookie = response.getheader("Set-Cookie")
            if set_cookie and cookie is None:
                self.cookie = set_cookie.split(";", 1)[0]
            return response.status, response.getheader("Location") or "", text
        finally:
            conn.close()

    def csrf(self, path: str = "/dashboard/sign-in") -> str:
        status, location, page = self.request("GET", path)
        if status == 302 and location.endswith("/dashboard/"):  # already signed in
            status, _location, page = self.request("GET", "/dashboard/")
        assert status == 200, (status, page[:300])
        match = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert match, "no CSRF token on the page"
        return match.group(1)

    def sign_in(self, token: str) -> str:
        """Sign in with ``token``; the session cookie it got."""
        status, location, _page = self.request(
            "POST", "/dashboard/sign-in", {"token": token, "csrf_token": self.csrf()}
        )
        assert status == 302 and location.endswith("/dashboard/"), (status, location)
        assert self.cookie
        return self.cookie


def signed_out(browser: Browser, cookie: str) -> bool:
    """Does ``cookie`` no longer sign anyone in (pages redirect, JSON endpoints answer 401)?"""
    status, location, _ = browser.request("GET", "/dashboard/", cookie=cookie)
    json_status, _, body = browser.request(
        "GET", "/dashboard/campaigns/x/status.json", cookie=cookie
    )
    if status == 200:
        return False
    assert status == 302 and "/dashboard/sign-in" in location, (status, location)
    assert json_status == 401 and json.loads(body)["error"]["code"] == "unauthorized", body
    return True


def sessions(live: LiveServer) -> list[DashboardSession]:
    with live.ctx.session() as session:
        return list(session.scalars(select(DashboardSession).order_by(DashboardSession.created_at)))


def test_a_cookie_copied_before_sign_out_no_longer_works(live_server: LiveServer) -> None:
    live = live_server
    browser = Browser(live.url)
    copied = browser.sign_in(live.operator)
    assert browser.request("GET", "/dashboard/")[0] == 200 and not signed_out(browser, copied)
    [row] = sessions(live)
    assert row.revoked_at is None and row.actor == "op (operator)" and row.role == "operator"
    assert (
        live.operator not in copied
        and hashlib.sha256(live.operator.encode()).hexdigest() != row.id_hash
    )

    status, location, _ = browser.request(
        "POST", "/dashboard/sign-out", {"csrf_token": browser.csrf("/dashboard/")}
    )
    assert status == 302 and "/dashboard/sign-in" in location
    assert signed_out(browser, copied)  # the copy made before signing out is dead too
    [row] = sessions(live)
    assert row.revoked_at is not None

    # Signing in again replaces the browser's session: the previous cookie is revoked.
    first = browser.sign_in(live.operator)
    second = browser.sign_in(live.operator)
    assert first != second and signed_out(browser, first) and not signed_out(browser, second)

    # Past its expiry, a session is over whatever the cookie says.
    with live.ctx.transaction() as session:
        session.execute(
            update(DashboardSession)
            .where(DashboardSession.revoked_at.is_(None))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    assert signed_out(browser, second)


def test_revoking_a_token_ends_its_dashboard_sessions(live_server: LiveServer) -> None:
    live = live_server
    admin = admin_token(live)
    status, created = call(
        live.url, "POST", "/api/v1/tokens", {"name": "alice", "role": "operator"}, token=admin
    )
    assert status == 201
    browser, bystander = Browser(live.url), Browser(live.url)
    cookie = browser.sign_in(created["secret"])
    other = bystander.sign_in(live.operator)
    assert call(live.url, "DELETE", f"/api/v1/tokens/{created['id']}", token=admin)[0] == 200
    assert signed_out(browser, cookie)
    assert not signed_out(bystander, other)  # only the sessions of that token end
    rows = {row.actor: row for row in sessions(live)}
    assert (
        rows["alice (operator)"].revoked_at is not None and rows["op (operator)"].revoked_at is None
    )


# ------------------------------------------------------------------------------ 4. races


def test_a_unique_violation_is_a_409_through_an_endpoint(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tokens made with the same secret (forced here) collide on the unique token hash."""
    live = live_server
    admin = admin_token(live)
    monkeypatch.setattr(tokens, "new_secret", lambda prefix: f"{prefix}_the-same-secret")
    body = {"name": "twin", "role": "viewer"}
    assert call(live.url, "POST", "/api/v1/tokens", body, token=admin)[0] == 201
    answer = call(live.url, "POST", "/api/v1/tokens", body, token=admin)
    message = refused(answer, 409, "conflicting change", "conflict")
    assert "reload and try again" in message and "INSERT" not in message


def test_database_errors_outside_a_transaction_are_4xx(tmp_path: Path) -> None:
    """The app's generic handlers: an IntegrityError is a 409, a DataError a 400; never a 500."""
    db = f"sqlite:///{tmp_path / 'server.db'}"
    upgrade(db)
    app: Flask = create_app(
        ServerConfig(db_url=db, state_dir=tmp_path / "state", tick_interval=0), start_ticker=False
    )

    def raising(error: Exception) -> Callable[[], Any]:
        def view() -> Any:
            raise error

        return view

    unique = IntegrityError(
        "INSERT …", {}, Exception("UNIQUE constraint failed: memberships.vehicle_id")
    )
    too_long = DataError(
        "INSERT …", {}, Exception("value too long for type character varying(128)")
    )
    app.add_url_rule("/test/unique", "unique", raising(unique))
    app.add_url_rule("/test/too-long", "too_long", raising(too_long))
    client = app.test_client()
    response = client.get("/test/unique")
    assert response.status_code == 409 and response.json
    assert "memberships.vehicle_id" in response.json["error"]["message"]
    response = client.get("/test/too-long")
    assert response.status_code == 400 and response.json
    assert response.json["error"]["message"] == (
        "a value does not fit the database: value too long for type character varying(128)"
    )


@pytest.mark.skipif(not POSTGRES, reason="OVERDRIVE_TEST_POSTGRES_URL not set")
def test_overlapping_campaign_starts_on_postgres(
    published: Published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two overlapping campaigns started at the same moment: both pass the clash check (neither
    sees the other's uncommitted memberships), the unique index decides, the loser gets a 409."""
    with postgres_schema() as url:
        upgrade(url)
        with serve_live(published, tmp_path, db_url=url) as live:
            try:
                _race_two_starts(live, published, monkeypatch)
            finally:
                if live.ctx.direct is not None:
                    live.ctx.direct.close_all()


def _race_two_starts(
    live: LiveServer, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        register(live, vehicle_on(published, f"car-{i}"))
    ids = [
        call(
            live.url,
            "POST",
            "/api/v1/campaigns",
            {"name": f"race {n}", "releases": {"ecu-a": "1.1"}, "policy": "immediate"},
            token=live.operator,
        )[1]["id"]
        for n in range(2)
    ]
    both_checked = threading.Barrier(2, timeout=20)
    name = next(n for n in ("eligible_memberships", "eligible_vehicles") if hasattr(campaigns, n))
    eligible, admit = getattr(campaigns, name), campaigns.admit

    def eligible_then_wait(*args: Any, **kwargs: Any) -> Any:
        result = eligible(*args, **kwargs)
        both_checked.wait()  # both starts read the memberships before either inserts
        return result

    def slow_admit(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # the first to insert commits late: the other has checked for clashes
        return admit(*args, **kwargs)

    monkeypatch.setattr(campaigns, name, eligible_then_wait)
    monkeypatch.setattr(campaigns, "admit", slow_admit)
    answers: dict[str, tuple[int, Any]] = {}

    def start(campaign_id: str) -> None:
        answers[campaign_id] = call(
            live.url, "POST", f"/api/v1/campaigns/{campaign_id}/start", token=live.operator
        )

    threads = [threading.Thread(target=start, args=(campaign_id,)) for campaign_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    statuses = sorted(status for status, _body in answers.values())
    assert statuses == [200, 409], answers
    [lost] = [answer for answer in answers.values() if answer[0] == 409]
    refused(lost, 409, "conflicting change (uq_membership_active)", "conflict")


# ------------------------------------------------------------------------------ 5. enumeration


@pytest.mark.parametrize("route", ["", "?via=flask"])  # the poll fast path, and Flask
@pytest.mark.parametrize("kind", ["poll", "events"])
def test_unknown_and_registered_vehicles_get_the_same_401(
    live_server: LiveServer, car: SimVehicle, kind: str, route: str
) -> None:
    live = live_server
    stranger = SimVehicle("car-1")  # claims car-1's id, but has its own key
    signed = stranger.manifest() if kind == "poll" else stranger.events({"type": "booted"})
    wrong_type = stranger.events() if kind == "poll" else stranger.manifest()
    envelopes: list[dict[str, Any]] = [signed, wrong_type, {}, {"signed": [], "signatures": {}}]
    for envelope in envelopes:
        known = call(live.url, "POST", f"/api/v1/vehicles/car-1/{kind}{route}", envelope)
        unknown = call(live.url, "POST", f"/api/v1/vehicles/no-such-car/{kind}{route}", envelope)
        refused(known, 401, code="unauthorized")
        assert unknown == known, (unknown, known)
    # The vehicle itself still gets in.
    answer = post_poll(live, car) if kind == "poll" else post_events(live, car, {"type": "booted"})
    assert answer[0] == 200, answer


# ------------------------------------------------------------------------------ 6. caps


def test_what_a_vehicle_reports_is_capped(
    live_server: LiveServer, published: Published, car: SimVehicle
) -> None:
    live = live_server
    image = dict(car.image)
    nonce = uuid.uuid4().hex
    report = primary_report(car, nonce, 1)
    # Counted before any report is looked at: placeholders do for 3,001 of them.
    many: dict[str, Any] = {f"ecu-{i:04d}": {"signed": {}, "signatures": []} for i in range(3001)}
    refused(
        poll_with(live, "car-1", signed_manifest(car, many, nonce=nonce)),
        400,
        f"a manifest may report at most {MAX_ECUS} ECUs, not 3001",
    )
    some = {f"ecu-{i:04d}": report for i in range(MAX_ECUS + 1)}
    refused(poll_with(live, "car-1", signed_manifest(car, some, nonce=nonce)), 400, "not 65")
    refused(post_poll(live, car, last_result={"message": "x" * 10_000}), 400, "bytes of JSON")
    refused(post_poll(live, car, slot={"a": 1}), 400, "field 'signed.slot' must be a string")
    refused(post_poll(live, car, state="x" * 65), 400, "field 'signed.state' must be at most 64")
    long_version = primary_report(car, nonce, 1, image={"version": "1" * 129})
    refused(
        poll_with(live, "car-1", signed_manifest(car, {car.serial: long_version}, nonce=nonce)),
        400,
        "installed version must be 1..128 characters",
    )
    assert post_poll(live, car)[0] == 200

    # A vehicle with as many ECUs as one may have reports them all, in one manifest.
    big = vehicle_on(published, "big-1")
    body = big.registration(live.enroll)
    secondaries = {f"big-1-ecu-{i:02d}": f"hw-{i:02d}" for i in range(MAX_ECUS - 1)}
    for ecu_serial, hw in secondaries.items():
        body["ecus"][ecu_serial] = {"hardware_id": hw, "primary": False}
        body["images"][hw] = image
    assert call(live.url, "POST", "/api/v1/vehicles/register", body)[0] == 201
    nonce = uuid.uuid4().hex
    reports = {big.serial: primary_report(big, nonce, 1)}
    for ecu_serial, hw in secondaries.items():
        reports[ecu_serial] = signed_report(
            ecu_serial, image, nonce=nonce, counter=1, signer=big.signer, hardware_id=hw
        )
    answer = poll_with(live, "big-1", signed_manifest(big, reports, nonce=nonce))
    assert answer[0] == 200, answer

    def registration(**changes: Any) -> dict[str, Any]:
        body = vehicle_on(published, f"big-{uuid.uuid4().hex[:8]}").registration(live.enroll)
        body.update(changes)
        return body

    many_ecus = {f"e-{i:02d}": {"hardware_id": "ecu-a"} for i in range(MAX_ECUS + 1)}
    for body, fragment in [
        (
            registration(images={f"hw-{i:04d}": image for i in range(3001)}),
            "reports 3001 hardware ids",
        ),
        (registration(ecus=many_ecus), f"lists {MAX_ECUS + 1} ECUs; at most {MAX_ECUS}"),
        (registration(attributes={f"a{i}": "x" for i in range(65)}), "65 entries; at most 64"),
        (
            registration(attributes={"model": "m" * 129}),
            "field 'attributes.model' must be at most 128",
        ),
        (registration(attributes={"n" * 65: "x"}), "must be 1..64 characters"),
        (registration(attributes={"": "x"}), "must be 1..64 characters"),
        (registration(attributes={"nested": {"a": 1}}), "must be a string, number or boolean"),
    ]:
        refused(call(live.url, "POST", "/api/v1/vehicles/register", body), 400, fragment)
    # Numbers PostgreSQL's JSON cannot hold (NaN, and 1e999, which parses as infinity).
    for number in ("NaN", "Infinity", "1e999"):
        raw = json.dumps(registration(attributes={"x": 0})).replace('"x": 0', f'"x": {number}')
        refused(
            call(live.url, "POST", "/api/v1/vehicles/register", raw=raw.encode()), 400, "finite"
        )

    message = refused(post_events(live, car, {"type": "booted", "at": "9" * 100_000}), 400)
    assert "is not an ISO 8601 time: '9999" in message and len(message) < 200  # not echoed
    refused(post_events(live, car, {"type": "booted", "id": "event-1\nforged"}), 400, "line break")
    huge = {"note": "x" * 10_000}
    refused(post_events(live, car, {"type": "booted", "details": huge}), 400, "details' is")
    refused(post_events(live, car, {"type": "booted", "reason": "r" * 1001}), 400, "at most 1000")
    assert post_events(live, car, {"type": "booted", "reason": "r" * 1000})[0] == 200

    status, vehicle = call(live.url, "GET", "/api/v1/vehicles/big-1", token=live.operator)
    assert status == 200 and len(vehicle["images"]) == MAX_ECUS, vehicle  # every ECU's image


# ------------------------------------------------------------------------------ 7. text


def test_text_problem() -> None:
    assert text_problem("Müller 🚗 – ok") is None
    assert text_problem("a\ud800b") == "a lone surrogate (U+D800), which is not valid Unicode text"
    assert text_problem("two\nlines") == "a line break (U+000A)"
    assert text_problem("two\nlines\tand tabs\r\n", multiline=True) is None
    assert text_problem("\x1b[31mred") == "a control character (U+001B)"
    assert text_problem("\x1b[31mred", multiline=True) == "a control character (U+001B)"
    assert text_problem("evil\u202etxt.exe") == "a control character (U+202E)"


def test_lone_surrogates_and_control_characters_are_refused_at_the_door(
    live_server: LiveServer, published: Published, car: SimVehicle
) -> None:
    live = live_server

    def registration(vehicle_id: str, **attributes: Any) -> dict[str, Any]:
        return vehicle_on(published, vehicle_id, **attributes).registration(live.enroll)

    register_path = "/api/v1/vehicles/register"
    # json.dumps escapes a lone surrogate as \ud800: exactly what the attack sent.
    for attributes in ({"model": "\ud800"}, {"region": "EU\udfff"}, {"colour\ud800": "red"}):
        answer = call(live.url, "POST", register_path, registration("sur-1", **attributes))
        refused(answer, 400, "lone surrogate")
    # The same as raw (CESU-8) bytes, which Python's json decodes to a surrogate too.
    raw = (
        json.dumps(registration("sur-1", model="MODEL")).encode().replace(b"MODEL", b"\xed\xa0\x80")
    )
    refused(call(live.url, "POST", register_path, raw=raw), 400, "lone surrogate")
    # Signed messages are refused before their signature is even looked at.
    unsigned = {
        "signed": {"_type": EVENTS, "vehicle_id": "car-1", "events": [{"reason": "\udc00"}]},
        "signatures": [],
    }
    refused(
        call(live.url, "POST", "/api/v1/vehicles/car-1/events", unsigned), 400, "lone surrogate"
    )
    manifest = {
        "signed": {"_type": VEHICLE_MANIFEST, "vehicle_id": "car-1", "state": "\ud800"},
        "signatures": [],
    }
    refused(call(live.url, "POST", "/api/v1/vehicles/car-1/poll", manifest), 400, "lone surrogate")
    # Operators too: campaign names, token names.
    answer = call(
        live.url,
        "POST",
        "/api/v1/campaigns",
        {"name": "\ud800", "releases": {"ecu-a": "1.1"}, "policy": "immediate"},
        token=live.operator,
    )
    refused(answer, 400, "lone surrogate")
    with live.ctx.session() as session:
        assert session.get(Vehicle, "sur-1") is None

    # One-line fields refuse control characters, line breaks and bidi controls.
    for attributes, fragment in [
        ({"model": "m1\nx"}, "field 'attributes.model' contains a line break (U+000A)"),
        ({"region": "\x1b[31mEU"}, "contains a control character (U+001B)"),
        ({"owner": "evil\u202etxt"}, "contains a control character (U+202E)"),
    ]:
        refused(
            call(live.url, "POST", register_path, registration("ctl-1", **attributes)),
            400,
            fragment,
        )
    answer = post_events(live, car, {"type": "failed", "reason": "disk\nfull"})
    refused(answer, 400, "field 'signed.events[0].reason' contains a line break")

    # A real surrogate *pair* is a character like any other, and the vehicle's page works.
    register(live, vehicle_on(published, "emoji-1", model="🚗 m1", region="Zürich"))
    status, page = call(live.url, "GET", "/api/v1/vehicles/emoji-1", token=live.operator)
    assert status == 200 and page["attributes"] == {"model": "🚗 m1", "region": "Zürich"}


# ------------------------------------------------------------------------------ 8. trust state


def reinitialise(cli: Cli, published: Published, keys: Path, tmp_path: Path) -> None:
    """Re-initialise the repository in place with new keys, and publish ecu-a 1.0 and 1.1."""
    generate_keys(cli, keys, "root", "targets", "snapshot", "timestamp")
    storage = published.storage
    result = cli("repo", "init", "--storage", storage, "--keys", keys, "--force")
    assert result.code == 0, result.stderr
    a10 = make_image(tmp_path / f"{keys.name}-a10.img", 50_000, seed=7)
    a11 = mutate(a10, tmp_path / f"{keys.name}-a11.img", seed=8)
    for image, version in ((a10, "1.0"), (a11, "1.1")):
        result = cli(
            "release", "add", image, "--hardware-id", "ecu-a", "--version", version,
            "--storage", storage, "--keys", keys, "--quiet",
        )  # fmt: skip
        assert result.code == 0, result.stderr


def create_campaign(live: LiveServer) -> tuple[int, Any]:
    body = {"name": "after re-init", "releases": {"ecu-a": "1.1"}, "policy": "immediate"}
    return call(live.url, "POST", "/api/v1/campaigns", body, token=live.operator)


@pytest.fixture
def servers(published: Published, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start servers (each a restart: a new process state, the same state dir) one at a time."""
    state = tmp_path / "state"
    count = iter(range(100))

    def start(**overrides: Any) -> Any:
        run = tmp_path / f"run-{next(count)}"
        run.mkdir()
        return serve_live(published, run, state_dir=state, **overrides)

    yield start


def test_a_reinitialised_repository_is_a_clear_503_until_trust_is_reset(
    cli: Cli, published: Published, tmp_path: Path, servers: Callable[..., Any]
) -> None:
    with servers() as live:
        assert create_campaign(live)[0] == 201
        assert call(live.url, "GET", "/readyz") == (200, {"status": "ready"})
        [pinned] = list((tmp_path / "state" / "repositories").iterdir())
        assert (pinned / "root.json").exists()
        assert (
            pinned / "repository.txt"
        ).read_text().strip() == published.storage.resolve().as_uri()

    reinitialise(cli, published, tmp_path / "new-keys", tmp_path)
    with servers() as live:  # restarted, same state dir: the pinned root no longer verifies it
        message = refused(create_campaign(live), 503, code="repository_unverified")
        assert message.startswith(
            f"the image repository at {published.storage.resolve().as_uri()} does not verify "
            f"against the trusted root pinned in {pinned}: "
        )
        assert f"if the repository was re-initialised on purpose, remove {pinned}" in message
        assert "--trusted-root" in message
        status, ready = call(live.url, "GET", "/readyz")
        assert status == 503 and ready["status"] == "not ready"
        [problem] = ready["problems"]
        assert (
            problem.startswith("image repository: the image repository at")
            and str(pinned) in problem
        )
        refused(
            call(live.url, "GET", "/api/v1/releases", token=live.operator), 503, "does not verify"
        )

        shutil.rmtree(pinned)  # the documented fix; no restart needed
        assert create_campaign(live)[0] == 201
        assert call(live.url, "GET", "/readyz") == (200, {"status": "ready"})

    # The other documented fix: pass the new root as --trusted-root (its own trust state).
    reinitialise(cli, published, tmp_path / "newer-keys", tmp_path)
    new_root = tmp_path / "new-root.json"
    shutil.copyfile(published.storage / "metadata" / "1.root.json", new_root)
    with servers() as live:
        refused(create_campaign(live), 503, "does not verify")
    with servers(trusted_root=new_root) as live:
        assert create_campaign(live)[0] == 201
        assert call(live.url, "GET", "/readyz") == (200, {"status": "ready"})
    assert len(list((tmp_path / "state" / "repositories").iterdir())) == 2


def test_trust_state_is_per_repository_under_an_absolute_state_dir(
    published: Published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli: Cli
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir() == tmp_path / "xdg" / "overdrive" / "server"
    assert ServerConfig().state_dir == tmp_path / "xdg" / "overdrive" / "server"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/dir")  # not absolute: ignored, as XDG says
    assert default_state_dir() == Path.home() / ".local" / "state" / "overdrive" / "server"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir().is_absolute()
    monkeypatch.setenv("OVERDRIVE_STATE_DIR", "relative-state")
    assert ServerConfig.from_env().state_dir == Path.cwd() / "relative-state"
    monkeypatch.delenv("OVERDRIVE_STATE_DIR")
    help_text = cli("server", "run", "--help").stdout
    assert "XDG_STATE_HOME" in help_text and "OVERDRIVE_STATE_DIR" in help_text

    copy = tmp_path / "another-repository"
    shutil.copytree(published.storage, copy)
    caches = [
        ReleaseCache(ServerConfig(storage_url=str(storage), state_dir=tmp_path / "shared"))
        for storage in (published.storage, copy)
    ]
    for cache in caches:
        assert "ecu-a" in cache.index().releases
    dirs = [cache.trust_dir(cache.storage()) for cache in caches]
    assert dirs[0] != dirs[1] and all(
        d.parent == tmp_path / "shared" / "repositories" for d in dirs
    )
    assert all((d / "timestamp.json").exists() for d in dirs)


def test_an_unreadable_repository_is_a_503_that_says_so(
    published: Published, tmp_path: Path, servers: Callable[..., Any]
) -> None:
    shutil.rmtree(published.storage / "metadata")
    with servers() as live:
        refused(
            create_campaign(live),
            503,
            f"no image repository at {published.storage.resolve().as_uri()}",
        )
        status, ready = call(live.url, "GET", "/readyz")
        assert status == 503 and "image repository: no image repository at" in ready["problems"][0]


# ------------------------------------------------------------------------------ 9. manifests


def vehicle_row(live: LiveServer, vehicle_id: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """A vehicle's stored manifest counter, ECU counters and installed images."""
    with live.ctx.session() as session:
        vehicle = session.get(Vehicle, vehicle_id)
        assert vehicle is not None
        images = {
            row.hardware_id: (row.version, row.sha256)
            for row in session.scalars(
                select(InstalledImage).where(InstalledImage.vehicle_id == vehicle_id)
            )
        }
        return vehicle.manifest_counter, dict(vehicle.ecu_counters or {}), images


@pytest.fixture(params=BACKENDS)
def any_live(
    request: pytest.FixtureRequest, published: Published, tmp_path: Path
) -> Iterator[LiveServer]:
    """A live server on SQLite, or on PostgreSQL (the poll's prepared psycopg statements)."""
    if request.param == "sqlite":
        with serve_live(published, tmp_path) as live:
            yield live
        return
    with postgres_schema() as url:
        upgrade(url)
        with serve_live(published, tmp_path, db_url=url) as live:
            try:
                yield live
            finally:
                if live.ctx.direct is not None:
                    live.ctx.direct.close_all()


@pytest.fixture
def gateway(any_live: LiveServer, published: Published) -> tuple[SimVehicle, CryptoSigner]:
    """A registered vehicle (car-9, ecu-a 1.0) with a secondary ECU of its own key
    (``car-9-gateway``, ecu-b 1.0)."""
    live_server = any_live
    vehicle = vehicle_on(published, "car-9")
    secondary = CryptoSigner.generate_ed25519()
    body = vehicle.registration(live_server.enroll)
    key = secondary.public_key
    body["ecus"]["car-9-gateway"] = {
        "hardware_id": "ecu-b",
        "primary": False,
        "public_key": {"keyid": key.keyid, **key.to_dict()},
    }
    b10 = dict(published.images["ecu-b/1.0"])
    b10.pop("path")
    body["images"]["ecu-b"] = b10
    answer = call(live_server.url, "POST", "/api/v1/vehicles/register", body)
    assert answer[0] == 201, answer
    return vehicle, secondary


def gateway_reports(
    vehicle: SimVehicle,
    secondary: Signer,
    published: Published,
    nonce: str,
    counter: int,
    *,
    gateway_signer: Signer | None = None,
    gateway_version: str = "1.0",
) -> dict[str, Any]:
    b10 = {**published.images["ecu-b/1.0"], "version": gateway_version}
    return {
        vehicle.serial: primary_report(vehicle, nonce, counter),
        "car-9-gateway": signed_report(
            "car-9-gateway",
            b10,
            nonce=nonce,
            counter=counter,
            signer=gateway_signer or secondary,
            hardware_id="ecu-b",
        ),
    }


@pytest.mark.parametrize("route", ["", "?via=flask"])
def test_a_forged_ecu_version_report_is_refused(
    any_live: LiveServer,
    published: Published,
    gateway: tuple[SimVehicle, CryptoSigner],
    route: str,
) -> None:
    """An ECU version report signed by any key but that ECU's own is a 401, and changes nothing:
    neither a report signed by a stranger for the primary, nor the primary forging its
    secondary's report (the vehicle key is not the gateway's key)."""
    live = any_live
    vehicle, secondary = gateway
    before = vehicle_row(live, "car-9")
    url = f"/api/v1/vehicles/car-9/poll{route}"
    nonce = uuid.uuid4().hex
    reports = gateway_reports(vehicle, secondary, published, nonce, 1)
    reports[vehicle.serial] = primary_report(vehicle, nonce, 1, CryptoSigner.generate_ed25519())
    manifest = signed_manifest(vehicle, reports, nonce=nonce)
    refused(
        call(live.url, "POST", url, manifest),
        401,
        "ECU car-9-primary's version report: ecu_version_report is not signed by a trusted key",
        "unauthorized",
    )
    nonce = uuid.uuid4().hex
    forged = gateway_reports(
        vehicle,
        secondary,
        published,
        nonce,
        1,
        gateway_signer=vehicle.signer,
        gateway_version="9.9",
    )
    manifest = signed_manifest(vehicle, forged, nonce=nonce)
    refused(
        call(live.url, "POST", url, manifest),
        401,
        "ECU car-9-gateway's version report: ecu_version_report is not signed by a trusted key",
    )
    # A report of one ECU passed off as another's (the gateway's report, under the primary).
    nonce = uuid.uuid4().hex
    reports = gateway_reports(vehicle, secondary, published, nonce, 1)
    swapped = {vehicle.serial: reports["car-9-gateway"], "car-9-gateway": reports["car-9-gateway"]}
    refused(call(live.url, "POST", url, signed_manifest(vehicle, swapped, nonce=nonce)), 401)
    assert vehicle_row(live, "car-9") == before  # no counter moved, no image recorded

    nonce = uuid.uuid4().hex
    honest = signed_manifest(
        vehicle, gateway_reports(vehicle, secondary, published, nonce, 1), nonce=nonce
    )
    assert call(live.url, "POST", url, honest)[0] == 200
    _counter, ecu_counters, images = vehicle_row(live, "car-9")
    assert ecu_counters == {"car-9-primary": 1, "car-9-gateway": 1}
    assert images["ecu-b"][0] == "1.0"


def test_a_replayed_ecu_version_report_is_refused(
    any_live: LiveServer, published: Published, gateway: tuple[SimVehicle, CryptoSigner]
) -> None:
    """A genuine report replayed in a later manifest (an old nonce), or signed again with an old
    counter, is a 409; so is the whole manifest sent again. Nothing of them is stored."""
    live = any_live
    vehicle, secondary = gateway
    first_nonce = uuid.uuid4().hex
    first = gateway_reports(vehicle, secondary, published, first_nonce, 5)
    manifest = signed_manifest(vehicle, first, nonce=first_nonce)
    assert poll_with(live, "car-9", manifest)[0] == 200
    stored = vehicle_row(live, "car-9")
    assert stored[1] == {"car-9-primary": 5, "car-9-gateway": 5}

    refused(poll_with(live, "car-9", manifest), 409, "replayed manifest", "conflict")
    for serial in (vehicle.serial, "car-9-gateway"):
        # The genuine earlier report in a new manifest: it does not echo the new nonce.
        nonce = uuid.uuid4().hex
        reports = gateway_reports(vehicle, secondary, published, nonce, 6)
        reports[serial] = first[serial]
        refused(
            poll_with(live, "car-9", signed_manifest(vehicle, reports, nonce=nonce)),
            409,
            f"replayed version report: ECU {serial}'s does not echo this manifest's nonce",
        )
        # Signed again for the new nonce, but with a counter not above the last accepted.
        for old in (5, 4):
            nonce = uuid.uuid4().hex
            reports = gateway_reports(vehicle, secondary, published, nonce, 6)
            reports[serial] = gateway_reports(vehicle, secondary, published, nonce, old)[serial]
            refused(
                poll_with(live, "car-9", signed_manifest(vehicle, reports, nonce=nonce)),
                409,
                f"replayed version report: ECU {serial}'s counter {old} is not above 5",
            )
    assert vehicle_row(live, "car-9")[1:] == stored[1:]
    nonce = uuid.uuid4().hex
    reports = gateway_reports(vehicle, secondary, published, nonce, 6)
    assert poll_with(live, "car-9", signed_manifest(vehicle, reports, nonce=nonce))[0] == 200
    assert vehicle_row(live, "car-9")[1] == {"car-9-primary": 6, "car-9-gateway": 6}


def test_a_manifest_from_another_vehicle_is_refused(
    live_server: LiveServer, published: Published, car: SimVehicle
) -> None:
    """Vehicle B cannot report for vehicle A, nor A's manifest be replayed for B: each manifest
    (and each of its ECU reports) is checked against the key registered for the vehicle (and
    ECU) in the URL. Every attempt is the same 401, and changes nothing."""
    live = live_server
    other = vehicle_on(published, "car-2", "ecu-a/1.1")
    register(live, other)
    before = {vid: vehicle_row(live, vid) for vid in ("car-1", "car-2")}

    def both(reporter: SimVehicle, *, for_id: str, signer: Signer) -> dict[str, Any]:
        """A manifest naming vehicle ``for_id``, ``reporter``'s report, signed by ``signer``."""
        nonce = uuid.uuid4().hex
        report = primary_report(reporter, nonce, 50, signer)
        return signed_manifest(
            reporter, {reporter.serial: report}, nonce=nonce, signer=signer, vehicle_id=for_id
        )

    impostor = SimVehicle("car-1", image=dict(car.image), signer=other.signer)
    untrusted = "vehicle_version_manifest is not signed by a trusted key"
    attempts = [
        # B's key signs a manifest for A (B's report, or one claiming A's primary ECU)
        ("car-1", both(other, for_id="car-1", signer=other.signer), untrusted),
        ("car-1", both(impostor, for_id="car-1", signer=other.signer), untrusted),
        # A's genuine manifest, replayed to B's URL
        ("car-2", both(car, for_id="car-1", signer=car.signer), untrusted),
        # A's key, signing a manifest that says it is B's (sent for B, or for A)
        ("car-2", both(car, for_id="car-2", signer=car.signer), untrusted),
        ("car-1", both(car, for_id="car-2", signer=car.signer), "signed for another vehicle"),
        # B's own genuine manifest, sent for A
        ("car-1", both(other, for_id="car-2", signer=other.signer), untrusted),
    ]
    for vehicle_id, manifest, message in attempts:
        refused(poll_with(live, vehicle_id, manifest), 401, message, "unauthorized")
    # ... or B's report in place of A's own (B's key, A's ECU serial).
    nonce = uuid.uuid4().hex
    reports = {car.serial: primary_report(car, nonce, 50, other.signer)}
    refused(poll_with(live, "car-1", signed_manifest(car, reports, nonce=nonce)), 401)
    assert {vid: vehicle_row(live, vid) for vid in ("car-1", "car-2")} == before
    # A's key signs the manifest for A, but it carries B's ECU's report too: that report is not
    # A's ECU, so it is ignored and recorded for the operators (a stray report must not wedge
    # the vehicle); B is untouched.
    nonce = uuid.uuid4().hex
    reports = {
        car.serial: primary_report(car, nonce, 50),
        other.serial: primary_report(other, nonce, 50),
    }
    assert poll_with(live, "car-1", signed_manifest(car, reports, nonce=nonce))[0] == 200
    assert vehicle_row(live, "car-2") == before["car-2"]
    with live.ctx.session() as session:
        status = session.get(Vehicle, "car-1").status  # type: ignore[union-attr]
    assert other.serial in status.get("unknown_ecus", {}), status
    assert post_poll(live, other)[0] == 200

"""The dashboard's pages and form handlers.

Reads go through :mod:`server.dashboard.queries`; every change goes through the same domain
function the API calls (``server.campaigns.create/start/pause/resume/abort/approve``) inside one
transaction, so the audit log records it exactly as it would an API call (``g.actor`` is set by
the blueprint's ``before_request``). Failed changes come back as a message on the page, not an
error page: a 409 "campaign is paused" is something to read, not a crash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from overdrive.releases import ReleaseIndex
from server import campaigns
from server.context import context
from server.dashboard import forms, queries, security
from server.dashboard.blueprint import bp
from server.errors import ApiError, NotFoundError
from server.models import DRAFT

log = logging.getLogger("overdrive.dashboard")

CAMPAIGNS_PER_PAGE = 25
VEHICLES_PER_PAGE = 50
AUDIT_PER_PAGE = 50
MAX_REASON = 500

ACTION_DONE = {
    "start": "Campaign started.",
    "pause": "Campaign paused: vehicles already updating finish, no new ones are admitted.",
    "resume": "Campaign resumed.",
    "abort": "Campaign aborted: no vehicle is offered this release any more.",
    "approve": "Stage approved: the campaign moves on once the stage's other conditions hold.",
}


# ------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Pager:
    """Page ``page`` of ``total`` items, ``size`` per page; links keep the other query args."""

    page: int
    size: int
    total: int

    @classmethod
    def from_request(cls, size: int, total: int) -> Pager:
        try:
            page = int(request.args.get("page", "1"))
        except ValueError:
            page = 1  # a bad page number is not worth an error: show the first page
        last = cls(1, size, total).pages
        return cls(min(max(page, 1), last), size, total)

    @property
    def pages(self) -> int:
        return max((self.total + self.size - 1) // self.size, 1)

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def first(self) -> int:
        return self.offset + 1 if self.total else 0

    @property
    def last(self) -> int:
        return min(self.offset + self.size, self.total)

    def url(self, page: int) -> str:
        args: dict[str, Any] = {k: v for k, v in request.args.items() if k != "page"}
        args.update(request.view_args or {}, page=page)
        return url_for(str(request.endpoint), **args)


def release_index() -> tuple[ReleaseIndex | None, str | None]:
    """The verified release index, or why it cannot be read (pages still render without it)."""
    try:
        return context().releases.index(), None
    except ApiError as e:
        return None, str(e)
    except Exception as e:  # a repository that fails verification must not break the pages
        log.warning("dashboard: release index unavailable: %s", e)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"The image repository could not be verified: {first}"


def latest_versions(index: ReleaseIndex | None) -> dict[str, str]:
    """Hardware id → its newest version (highest release counter) in the repository."""
    if index is None:
        return {}
    return {
        hw: max(versions.items(), key=lambda kv: kv[1].full.info.release_counter)[0]
        for hw, versions in index.releases.items()
        if versions
    }


def now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------------------ sign-in


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    """The sign-in form: an API token in, a session cookie out."""
    target = security.safe_next(request.values.get("next"))
    if request.method == "GET":
        if security.current_user() is not None:
            return redirect(target or url_for(".overview"))
        return render_template("dashboard/sign_in.html", next=target, error=None)
    try:
        user = security.sign_in(request.form.get("token", ""))
    except ApiError as e:
        return render_template("dashboard/sign_in.html", next=target, error=str(e)), e.status
    flash(f"Signed in as {user.name} ({user.role}).", "success")
    return redirect(target or url_for(".overview"))


@bp.route("/sign-out", methods=["GET", "POST"])
def sign_out() -> ResponseReturnValue:
    """Sign out (POST, with the CSRF token); a GET only goes back to the dashboard."""
    if request.method == "POST":
        security.end_session("You have signed out.")
        return redirect(url_for(".sign_in"))
    return redirect(url_for(".overview"))


# ------------------------------------------------------------------------------ overview


@bp.get("/")
@security.requires_role("viewer")
def overview() -> ResponseReturnValue:
    """Fleet overview: freshness, versions per hardware id, active campaigns, recent actions."""
    index, index_error = release_index()
    with context().session() as session:
        data = queries.fleet_overview(session, now(), latest_versions(index))
        return render_template("dashboard/overview.html", index_error=index_error, **data)


# ------------------------------------------------------------------------------ campaigns


@bp.get("/campaigns")
@security.requires_role("viewer")
def campaign_list() -> ResponseReturnValue:
    """All campaigns, newest first, optionally of one state."""
    state = request.args.get("state", "")
    error = None
    if state and state not in queries.STATES:
        error = f"There is no campaign state {state!r}; showing every campaign."
        state = ""
    with context().session() as session:
        total = queries.count_campaigns(session, state or None)
        pager = Pager.from_request(CAMPAIGNS_PER_PAGE, total)
        views = queries.campaign_page(session, state or None, pager.size, pager.offset)
        return render_template(
            "dashboard/campaigns.html",
            campaigns=views,
            state=state,
            states=queries.STATES,
            per_state=queries.campaigns_per_state(session),
            pager=pager,
            error=error,
        )


@bp.route("/campaigns/new", methods=["GET", "POST"])
@security.requires_role("operator")
def campaign_new() -> ResponseReturnValue:
    """The create-campaign form; a valid one creates a draft and opens its page."""
    index, index_error = release_index()
    hardware = sorted(index.releases) if index else []
    values: dict[str, Any] = {"policy": "canary"}
    errors: dict[str, str] = {}
    if request.method == "POST":
        values = request.form.to_dict()
        body, errors = forms.parse_campaign_form(request.form, hardware)
        if index is None:
            errors["form"] = index_error or "The image repository is not available."
        ctx = context()
        if not errors and body["filter"].get("vehicles"):
            with ctx.session() as session:
                wanted = body["filter"]["vehicles"]
                unknown = sorted(set(wanted) - queries.known_vehicles(session, wanted))
            if unknown:
                more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
                errors["vehicles"] = f"Unknown vehicle ids: {', '.join(unknown[:5])}{more}."
        if not errors:
            try:
                with ctx.transaction() as session:
                    campaign = campaigns.create(ctx, session, body)
                    campaign_id, name = campaign.id, campaign.name
            except ApiError as e:
                errors[forms.field_for(str(e))] = str(e)
            else:
                flash(f"Campaign “{name}” created as a draft. Review it, then start it.", "success")
                return redirect(url_for(".campaign_detail", campaign_id=campaign_id))
    with context().session() as session:
        per_hardware = queries.hardware_counts(session)
    releases = (
        {
            hw: sorted(index.releases[hw].items(), key=lambda kv: -kv[1].full.info.release_counter)
            for hw in hardware
        }
        if index
        else {}
    )
    return render_template(
        "dashboard/campaign_new.html",
        values=values,
        errors=errors,
        releases=releases,
        per_hardware=per_hardware,
        presets=forms.preset_choices(),
        index_error=index_error,
    ), (400 if errors else 200)


@bp.get("/campaigns/<campaign_id>")
@security.requires_role("viewer")
def campaign_detail(campaign_id: str) -> ResponseReturnValue:
    """One campaign: state, stages, counts, releases, filter, recent events and actions."""
    ctx = context()
    with ctx.session() as session:
        campaign = queries.get_campaign(session, campaign_id)
        view = queries.campaign_view(session, campaign, events=30)
        draft = campaign.state == DRAFT
        preview = queries.eligible_preview(ctx, session, campaign) if draft else None
        return render_template("dashboard/campaign.html", c=view, preview=preview)


@bp.get("/campaigns/<campaign_id>/status.json")
@security.requires_role("viewer")
def campaign_status_json(campaign_id: str) -> ResponseReturnValue:
    """The campaign page's refresh: state, stage and counts, for the signed-in session."""
    with context().session() as session:
        return jsonify(queries.live_status(session, campaign_id))


@bp.post("/campaigns/<campaign_id>/<any(start, pause, resume, abort, approve):action>")
@security.requires_role("operator")
def campaign_action(campaign_id: str, action: str) -> ResponseReturnValue:
    """Start, pause, resume, abort or approve: the API's domain functions, audited the same."""
    reason = request.form.get("reason", "").strip()
    back = redirect(url_for(".campaign_detail", campaign_id=campaign_id))
    if len(reason) > MAX_REASON:
        flash(f"Keep the reason to {MAX_REASON} characters.", "error")
        return back
    ctx = context()
    try:
        with ctx.transaction() as session:
            if action == "start":
                campaign = campaigns.start(ctx, session, campaign_id)
                message = (
                    f"Campaign started: {campaign.eligible_count} vehicles eligible, "
                    f"{campaigns.counts(session, campaign_id)['admitted']} admitted to the "
                    "first stage."
                )
            else:
                if action == "pause":
                    campaigns.pause(session, campaign_id, reason or "paused by operator")
                elif action == "resume":
                    campaigns.resume(session, campaign_id)
                elif action == "abort":
                    campaigns.abort(session, campaign_id, reason or "aborted by operator")
                else:
                    campaigns.approve(session, campaign_id)
                message = ACTION_DONE[action]
    except NotFoundError as e:
        raise NotFoundError(f"There is no campaign with id {campaign_id!r}.") from e
    except ApiError as e:
        flash(f"Could not {action} the campaign: {e}", "error")
        return back
    flash(message, "success")
    return back


# ------------------------------------------------------------------------------ vehicles


@bp.get("/vehicles")
@security.requires_role("viewer")
def vehicle_list() -> ResponseReturnValue:
    """Vehicles by id, searchable by id and filterable by installed image."""
    search = request.args.get("q", "").strip()[:128]
    hardware_id = request.args.get("hw", "").strip()[:128]
    version = request.args.get("version", "").strip()[:128] if hardware_id else ""
    with context().session() as session:
        total = queries.count_vehicles(session, search, hardware_id, version)
        pager = Pager.from_request(VEHICLES_PER_PAGE, total)
        vehicles, images = queries.vehicle_page(
            session, search, hardware_id, version, pager.size, pager.offset
        )
        return render_template(
            "dashboard/vehicles.html",
            vehicles=vehicles,
            images=images,
            pager=pager,
            search=search,
            hardware_id=hardware_id,
            version=version,
        )


@bp.get("/vehicles/<vehicle_id>")
@security.requires_role("viewer")
def vehicle_detail(vehicle_id: str) -> ResponseReturnValue:
    """One vehicle: attributes, installed images, status, campaigns and event history."""
    with context().session() as session:
        return render_template(
            "dashboard/vehicle.html", **queries.vehicle_detail(session, vehicle_id)
        )


# ------------------------------------------------------------------------------ releases, audit


@bp.get("/releases")
@security.requires_role("viewer")
def releases() -> ResponseReturnValue:
    """The releases of the verified image repository, and how many vehicles run each."""
    index, index_error = release_index()
    with context().session() as session:
        installed = queries.installed_versions(session, latest_versions(index))
    running = {(hw, row.version): row.vehicles for hw, rows in installed.items() for row in rows}
    hardware = (
        {
            hw: sorted(versions.items(), key=lambda kv: -kv[1].full.info.release_counter)
            for hw, versions in sorted(index.releases.items())
        }
        if index
        else {}
    )
    versions_by_sha = {
        release.full.info.image.sha256: version
        for versions in (index.releases.values() if index else [])
        for version, release in versions.items()
    }
    return render_template(
        "dashboard/releases.html",
        hardware=hardware,
        running=running,
        versions_by_sha=versions_by_sha,
        repository=context().releases.versions,
        index_error=index_error,
    ), (503 if index is None else 200)


@bp.get("/audit")
@security.requires_role("viewer")
def audit() -> ResponseReturnValue:
    """The audit log: every operator action and automatic decision, newest first."""
    with context().session() as session:
        pager = Pager.from_request(AUDIT_PER_PAGE, queries.count_audit(session))
        entries = queries.audit_page(session, pager.size, pager.offset)
        return render_template("dashboard/audit.html", entries=entries, pager=pager)


@bp.route("/<path:unknown>", methods=["GET", "POST"])
def not_found(unknown: str) -> ResponseReturnValue:
    """Any other address under /dashboard/: the dashboard's 404 page (not the API's JSON)."""
    raise NotFoundError("There is no dashboard page at this address.")

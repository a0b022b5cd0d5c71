"""The dashboard's pages and form handlers.

Reads go through :mod:`overdrive.server.dashboard.queries` (campaigns, the fleet overview),
:mod:`overdrive.server.dashboard.insight` (a campaign's groups, vehicles, history and timeline) and
:mod:`overdrive.server.dashboard.listings` (the vehicle list and audit log); every change goes through the same domain
function the API calls (``server.campaigns.create/start/pause/resume/abort/approve``) inside one
transaction, so the audit log records it exactly as it would an API call (``g.actor`` is set by
the blueprint's ``before_request``). Failed changes come back as a message on the page, not an
error page: a 409 "campaign is paused" is something to read, not a crash.
"""

from __future__ import annotations

from typing import Any

from flask import flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from overdrive.server import campaigns
from overdrive.server.context import context
from overdrive.server.dashboard import forms, insight, listings, queries, security
from overdrive.server.dashboard.blueprint import bp
from overdrive.server.dashboard.pages import (
    Pager,
    latest_versions,
    list_status,
    newest_first,
    now,
    release_index,
    tile_links,
    updated_stamp,
    withdrawn_versions,
)
from overdrive.server.errors import ApiError, NotFoundError
from overdrive.server.models import DRAFT, Campaign

CAMPAIGNS_PER_PAGE = 25
VEHICLES_PER_PAGE = 50
MEMBERS_PER_PAGE = 50
AUDIT_PER_PAGE = 50
CAMPAIGN_EVENTS = 30
MAX_REASON = 500

ACTION_DONE = {
    "start": "Campaign started.",
    "pause": "Campaign paused: vehicles already updating finish, no new ones are admitted.",
    "resume": "Campaign resumed.",
    "abort": "Campaign aborted: no vehicle is offered this release any more.",
    "approve": "Stage approved: the campaign moves on once the stage's other conditions hold.",
}


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
    """Fleet overview: freshness, versions per hardware id, active campaigns and what each
    waits for, recent actions (refreshed in place by ``overview.json``)."""
    index, index_error = release_index()
    with context().session() as session:
        data = queries.fleet_overview(session, now(), latest_versions(index))
        return render_template(
            "dashboard/overview.html",
            index_error=index_error,
            withdrawn=withdrawn_versions(index),
            **data,
        )


@bp.get("/overview.json")
@security.requires_role("viewer")
def overview_json() -> ResponseReturnValue:
    """The overview's refresh: its fleet, campaign and activity sections, rendered here."""
    index, _index_error = release_index()
    with context().session() as session:
        data = queries.fleet_overview(session, now(), latest_versions(index))
        html = render_template("dashboard/_overview_live.html", **data)
        return jsonify({"updated": updated_stamp(), "html": html})


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
    # A withdrawn release is never offered (the domain function refuses it as well).
    newest = {hw: newest_first(index.releases[hw]) for hw in hardware} if index else {}
    releases = {hw: [(v, r) for v, r in rows if r.yanked is None] for hw, rows in newest.items()}
    withdrawn = {hw: [(v, r.yanked) for v, r in rows if r.yanked] for hw, rows in newest.items()}
    return render_template(
        "dashboard/campaign_new.html",
        values=values,
        errors=errors,
        releases=releases,
        withdrawn=withdrawn,
        per_hardware=per_hardware,
        presets=forms.preset_choices(),
        index_error=index_error,
    ), (400 if errors else 200)


@bp.get("/campaigns/<campaign_id>")
@security.requires_role("viewer")
def campaign_detail(campaign_id: str) -> ResponseReturnValue:
    """One campaign: what it waits for (or why it stopped), counts that link to their
    vehicles, groups, stages, timeline, releases, filter, events, history and actions."""
    ctx = context()
    with ctx.session() as session:
        campaign = queries.get_campaign(session, campaign_id)
        parts = campaign_parts(session, campaign)
        draft = campaign.state == DRAFT
        preview = queries.eligible_preview(ctx, session, campaign) if draft else None
        return render_template("dashboard/campaign.html", preview=preview, **parts)


def campaign_parts(session: Session, campaign: Campaign) -> dict[str, Any]:
    """What the campaign page and its refresh render: its view (``c``), insight (``i``) and
    the links behind its count tiles."""
    index, _index_error = release_index()
    view = queries.campaign_view(session, campaign, events=CAMPAIGN_EVENTS)
    why = insight.campaign_insight(session, campaign, view.data, index, now())
    return {"c": view, "i": why, "tiles": tile_links(campaign.id, insight.TILE_FILTERS)}


@bp.get("/campaigns/<campaign_id>/status.json")
@security.requires_role("viewer")
def campaign_status_json(campaign_id: str) -> ResponseReturnValue:
    """The campaign page's refresh, for the signed-in session: state, stage, counts, what it
    waits for, its groups, and its live sections (why, groups, timeline, events, history)
    rendered here, so the page's script only swaps them in."""
    with context().session() as session:
        parts = campaign_parts(session, queries.get_campaign(session, campaign_id))
        html = render_template("dashboard/_campaign_live.html", **parts)
    view: queries.CampaignView = parts["c"]
    d = view.data
    return jsonify(
        {
            "id": d["id"],
            "state": d["state"],
            "stage_index": d["stage_index"],
            "reason": d["reason"],
            "waiting": d["waiting"],
            "until": d["until"],
            "evaluated_at": d["evaluated_at"],
            "progress": view.progress.to_dict(),
            "statuses": dict(view.statuses),
            "groups": d["groups"],
            "updated": updated_stamp(),
            "html": html,
        }
    )


@bp.get("/campaigns/<campaign_id>/vehicles")
@security.requires_role("viewer")
def campaign_vehicles(campaign_id: str) -> ResponseReturnValue:
    """The vehicles behind a campaign count: by status, hardware id, model, region,
    from-version or judged group, sortable by every column, a page at a time."""
    with context().session() as session:
        campaign = queries.get_campaign(session, campaign_id)
        view = queries.campaign_view(session, campaign)
        groups = insight.group_rows(view.data["groups"])
        query = forms.parse_member_args(request.args, {g.dimension for g in groups})
        total = insight.count_members(session, campaign, query)
        pager = Pager.from_request(MEMBERS_PER_PAGE, total, query.args())
        rows = insight.member_page(session, campaign, query, pager.size, pager.offset)
        f = query.filters
        group = next(
            (g for g in groups if (g.dimension, g.value) == (f.get("dimension"), f.get("value"))),
            None,
        )
        return render_template(
            "dashboard/campaign_vehicles.html",
            c=view,
            rows=rows,
            q=query,
            group=group,
            groups=groups,
            pager=pager,
            statuses=forms.MEMBER_STATUS_CHOICES,
        ), list_status(query)


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
    """Vehicles, searchable by id, filtered by installed image, model, region, reported state
    or status in an active campaign, and sorted by any of those."""
    query = forms.parse_vehicle_args(request.args)
    with context().session() as session:
        total = listings.count_vehicles(session, query)
        pager = Pager.from_request(VEHICLES_PER_PAGE, total, query.args())
        vehicles, images, active = listings.vehicle_page(session, query, pager.size, pager.offset)
        return render_template(
            "dashboard/vehicles.html",
            vehicles=vehicles,
            images=images,
            active=active,
            pager=pager,
            q=query,
            choices=listings.vehicle_choices(session),
            statuses=forms.VEHICLE_STATUSES,
        ), list_status(query)


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
    releases_of = sorted(index.releases.items()) if index else []
    hardware = {hw: newest_first(versions) for hw, versions in releases_of}
    versions_by_sha = {
        release.full.info.image.sha256: version
        for versions in (index.releases.values() if index else [])
        for version, release in versions.items()
    }
    return render_template(
        "dashboard/releases.html",
        hardware=hardware,
        running=running,
        latest=latest_versions(index),
        versions_by_sha=versions_by_sha,
        repository=context().releases.versions,
        index_error=index_error,
    ), (503 if index is None else 200)


@bp.get("/audit")
@security.requires_role("viewer")
def audit() -> ResponseReturnValue:
    """The audit log: every operator action and automatic decision, newest first, filtered
    by actor, action, target or campaign and a UTC time range."""
    query = forms.parse_audit_args(request.args)
    with context().session() as session:
        total = listings.count_audit(session, query)
        pager = Pager.from_request(AUDIT_PER_PAGE, total, query.args())
        entries = listings.audit_page(session, query, pager.size, pager.offset)
        return render_template(
            "dashboard/audit.html",
            entries=entries,
            pager=pager,
            q=query,
            choices=listings.audit_choices(session),
        ), list_status(query)


@bp.route("/<path:unknown>", methods=["GET", "POST"])
def not_found(unknown: str) -> ResponseReturnValue:
    """Any other address under /dashboard/: the dashboard's 404 page (not the API's JSON)."""
    raise NotFoundError("There is no dashboard page at this address.")

"""``/api/v1/campaigns`` and ``/api/v1/releases``: what operators drive rollouts with."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from overdrive.server import campaign_view, campaigns
from overdrive.server.auth import requires
from overdrive.server.context import context
from overdrive.server.errors import BadRequest
from overdrive.server.models import Campaign
from overdrive.server.validation import json_body, paging

bp = Blueprint("campaigns", __name__, url_prefix="/api/v1")
STATES = ("draft", "running", "paused", "completed", "aborted")


@bp.post("/campaigns")
@requires("operator")
def create() -> ResponseReturnValue:
    ctx = context()
    body = json_body()
    with ctx.transaction() as session:
        campaign = campaigns.create(ctx, session, body)
        return jsonify(campaign_view.campaign_dict(session, campaign)), 201


@bp.get("/campaigns")
@requires("viewer")
def list_campaigns() -> ResponseReturnValue:
    from flask import request

    limit, offset = paging()
    state = request.args.get("state")
    if state is not None and state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}")
    query = select(Campaign)
    if state:
        query = query.where(Campaign.state == state)
    with context().session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(
            query.order_by(Campaign.created_at.desc(), Campaign.id).limit(limit).offset(offset)
        )
        items = [campaign_view.campaign_dict(session, c) for c in rows]
    return jsonify(
        {
            "items": items,
            "total": total,
            "next_offset": offset + limit if offset + limit < total else None,
        }
    )


@bp.get("/campaigns/<campaign_id>")
@requires("viewer")
def status(campaign_id: str) -> ResponseReturnValue:
    with context().session() as session:
        return jsonify(campaign_view.campaign_dict(session, campaigns.get(session, campaign_id)))


def _action(campaign_id: str, name: str) -> ResponseReturnValue:
    ctx = context()
    reason = _reason(name) if name in ("pause", "abort") else None
    with ctx.transaction() as session:
        if name == "start":
            campaign = campaigns.start(ctx, session, campaign_id)
        elif name == "pause":
            campaign = campaigns.pause(session, campaign_id, reason or "paused by operator")
        elif name == "resume":
            campaign = campaigns.resume(session, campaign_id)
        elif name == "abort":
            campaign = campaigns.abort(session, campaign_id, reason or "aborted by operator")
        else:
            campaign = campaigns.approve(session, campaign_id)
        return jsonify(campaign_view.campaign_dict(session, campaign))


MAX_REASON = 500


def _reason(action: str) -> str | None:
    """The operator's reason for a pause or abort (optional JSON body ``{"reason": …}``)."""
    from flask import g, request

    if not request.get_data(cache=True):
        return None
    body = json_body()
    reason = body.get("reason")
    if reason is None:
        return None
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON:
        raise BadRequest(
            f"field 'reason' must be non-empty text of at most {MAX_REASON} characters"
        )
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in reason):
        raise BadRequest("field 'reason' must be one line of text without control characters")
    return f"{'paused' if action == 'pause' else 'aborted'} by {g.get('actor', 'operator')}: {reason.strip()}"


@bp.delete("/campaigns/<campaign_id>")
@requires("operator")
def delete_draft(campaign_id: str) -> ResponseReturnValue:
    with context().transaction() as session:
        deleted = campaigns.delete_draft(session, campaign_id)
    return jsonify({"id": deleted, "deleted": True})


@bp.get("/campaigns/<campaign_id>/vehicles")
@requires("viewer")
def vehicles(campaign_id: str) -> ResponseReturnValue:
    from flask import request

    limit, offset = paging()
    keys = (
        "status",
        "hardware_id",
        "model",
        "region",
        "from_version",
        "admitted",
        "dimension",
        "value",
    )
    filters = campaign_view.member_filters({k: request.args.get(k, "") for k in keys})
    if filters.get("admitted", "true") not in ("true", "false"):
        raise BadRequest("admitted must be true or false")
    with context().session() as session:
        campaign = campaigns.get(session, campaign_id)
        return jsonify(
            campaign_view.campaign_vehicles(session, campaign, filters, limit=limit, offset=offset)
        )


@bp.get("/campaigns/<campaign_id>/history")
@requires("viewer")
def history(campaign_id: str) -> ResponseReturnValue:
    with context().session() as session:
        campaign = campaigns.get(session, campaign_id)
        return jsonify({"items": campaign_view.history(session, campaign)})


@bp.get("/campaigns/<campaign_id>/timeline")
@requires("viewer")
def timeline(campaign_id: str) -> ResponseReturnValue:
    with context().session() as session:
        campaign = campaigns.get(session, campaign_id)
        return jsonify(campaign_view.timeline(session, campaign))


@bp.post("/campaigns/<campaign_id>/<any(start, pause, resume, abort, approve):action>")
@requires("operator")
def action(campaign_id: str, action: str) -> ResponseReturnValue:
    return _action(campaign_id, action)


@bp.get("/releases")
@requires("viewer")
def releases() -> ResponseReturnValue:
    ctx = context()
    index = ctx.releases.index()
    return jsonify(
        {
            "repository": ctx.releases.versions,
            "hardware": {
                hw: [
                    {
                        "version": version,
                        "release_counter": r.full.info.release_counter,
                        "image_sha256": r.full.info.image.sha256,
                        "full": {"path": r.full.path, "length": r.full.length},
                        "deltas": [
                            {
                                "path": d.path,
                                "length": d.length,
                                "source_version": d.info.source.version if d.info.source else None,
                            }
                            for ds in r.deltas.values()
                            for d in ds
                        ],
                    }
                    for version, r in sorted(
                        versions.items(), key=lambda kv: kv[1].full.info.release_counter
                    )
                ]
                for hw, versions in sorted(index.releases.items())
            },
        }
    )

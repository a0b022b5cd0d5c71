"""What operators read about a campaign: its state and why, per-group counts, the vehicles
behind every count, its history and its timeline. Read-only; the API, the CLI (through the API)
and the dashboard all show these same dicts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

import overdrive.rollout_policies as rp
from overdrive.rollout_policies.units import format_duration
from overdrive.server.campaigns import FAILED, aware, counts, policy_of, utcnow
from overdrive.server.errors import BadRequest
from overdrive.server.evaluator import NONE_VALUE, dimension_column, stage_state
from overdrive.server.fleet import image_of
from overdrive.server.models import (
    EVENT_ORDER,
    MEMBERSHIP_STATUSES,
    RUNNING,
    AuditEntry,
    Campaign,
    CampaignRelease,
    CampaignSample,
    Event,
    InstalledImage,
    Membership,
    Vehicle,
)
from overdrive.server.vehicles import FINAL, iso

MEMBER_STATUSES = MEMBERSHIP_STATUSES
HISTORY_LIMIT = 200
SAMPLE_LIMIT = 2000


def campaign_dict(session: Session, campaign: Campaign) -> dict[str, Any]:
    """The campaign as the API answers it: state, stage, why it waits, counts and groups."""
    releases = list(
        session.scalars(select(CampaignRelease).where(CampaignRelease.campaign_id == campaign.id))
    )
    ordered = sorted(releases, key=lambda r: (r.install_order, r.hardware_id))
    stages = campaign.policy.get("stages", [])
    now = utcnow()
    policy = policy_of(campaign)
    # One read of the counts, overall and per group, serves the counts, the groups and (before
    # the evaluator's first run) the preview of its decision.
    state: rp.StageState | None = None
    if campaign.started_at is None:  # a draft has no members yet
        raw = counts(session, campaign.id)
    else:
        state, raw = stage_state(session, campaign, policy, now)
    decision = None
    if campaign.state == RUNNING and state is not None:
        decision = campaign.decision or {**rp.decide(policy, state).to_dict(), "at": None}
    waiting = waits(decision, now) if decision else []
    return {
        "id": campaign.id,
        "name": campaign.name,
        "state": campaign.state,
        "policy": campaign.policy_name,
        "stage_index": campaign.stage_index,
        "stage": stages[campaign.stage_index].get("name")
        if campaign.stage_index < len(stages)
        else None,
        "stages": len(stages),
        "stage_started_at": iso(campaign.stage_started_at) if campaign.stage_started_at else None,
        "started_at": iso(campaign.started_at) if campaign.started_at else None,
        "finished_at": iso(campaign.finished_at) if campaign.finished_at else None,
        "approved_stage": campaign.approved_stage,
        "reason": campaign.reason if decision is None else decision.get("reason"),
        "waiting": waiting,
        "waiting_for": decision.get("waiting_for", []) if decision else [],
        "until": decision.get("until") if decision else None,
        "evaluated_at": decision.get("at") if decision else None,
        "filter": campaign.filter,
        "releases": {
            r.hardware_id: {
                "version": r.version,
                "release_counter": r.release_counter,
                "install_order": r.install_order,
            }
            for r in releases
        },
        "install_order": [r.hardware_id for r in ordered],
        "counts": raw,
        "groups": groups(policy, state) if state is not None else [],
        "created_at": iso(campaign.created_at),
        "created_by": campaign.created_by,
    }


def waits(decision: dict[str, Any], now: datetime) -> list[str]:
    """The hold's reasons, one line each, with a soak's time left counted from ``now``."""
    lines = list(decision.get("waits") or [])
    until = decision.get("until")
    if until and lines and lines[0].startswith("soaking until"):
        end = datetime.fromisoformat(until)
        left = max(0, math.ceil((end - now).total_seconds()))
        lines[0] = f"soaking until {rp.clock(end)}, {format_duration(timedelta(seconds=left))} left"
    return lines


def groups(policy: rp.Policy, state: rp.StageState) -> list[dict[str, Any]]:
    """Every judged group now: counts, rate, and what the sequential test holds it against."""
    verdicts = rp.judge(policy.judge, (state.overall, *state.groups))
    p0 = str(policy.judge.acceptable_failure_rate)
    return [{**v.to_dict(), "acceptable_failure_rate": p0} for v in verdicts]


# ------------------------------------------------------------------------------ vehicles


def member_filters(args: dict[str, str]) -> dict[str, str]:
    """The vehicle-list filters of a request, checked (unknown values are a 400)."""
    status = args.get("status") or None
    if status is not None and status not in (*MEMBER_STATUSES, "finished", "failures"):
        raise BadRequest(
            f"status must be one of {', '.join(MEMBER_STATUSES)}, finished or failures"
        )
    return {k: v for k, v in args.items() if v}


def campaign_vehicles(
    session: Session,
    campaign: Campaign,
    filters: dict[str, str],
    *,
    limit: int,
    offset: int,
) -> dict[str, Any]:
    """The vehicles behind a campaign's counts: membership status and reason, installed
    version, model, region, last event; filtered by status, hardware id, model, region,
    stage, or a group (``dimension`` + ``value`` as in ``groups``)."""
    query = filter_members(member_query(campaign), filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows: Sequence[Any] = session.execute(
        query.order_by(Membership.updated_at.desc(), Membership.vehicle_id)
        .limit(limit)
        .offset(offset)
    ).all()
    last = last_events(session, campaign.id, [m.vehicle_id for m, _v, _ver in rows])
    items = [
        {
            "vehicle_id": m.vehicle_id,
            "hardware_id": m.hardware_id,
            "status": m.status,
            "reason": m.reason,
            "admitted": m.admitted,
            "admitted_stage": m.admitted_stage,
            "from_version": m.from_version,
            "installed_version": version,
            "model": v.model,
            "region": v.region,
            "updated_at": iso(m.updated_at) if m.updated_at else None,
            "caused_by": m.caused_by,
            "last_event": _event_summary(last.get((m.vehicle_id, m.hardware_id))),
        }
        for m, v, version in rows
    ]
    return {
        "items": items,
        "total": total,
        "next_offset": offset + limit if offset + limit < total else None,
    }


_Members = Select[Membership, Vehicle, str]


def member_query(campaign: Campaign) -> _Members:
    """The campaign's memberships with their vehicles and the version each runs now (of a
    vehicle's several ECUs of the membership's hardware id, the one furthest behind)."""
    return (
        select(Membership, Vehicle, InstalledImage.version)
        .join(Vehicle, Vehicle.id == Membership.vehicle_id)
        .outerjoin(InstalledImage, image_of(Membership.vehicle_id, Membership.hardware_id))
        .where(Membership.campaign_id == campaign.id)
    )


def filter_members(query: _Members, filters: dict[str, str]) -> _Members:
    """Apply the vehicle-list filters (see :func:`member_filters`; ``status`` may also be
    ``in_progress``: admitted and not finished, which the dashboard offers)."""
    status = filters.get("status")
    if status == "finished":
        query = query.where(Membership.status.in_(FINAL))
    elif status == "failures":
        query = query.where(Membership.status.in_(FAILED))
    elif status == "in_progress":
        query = query.where(Membership.admitted.is_(True), Membership.status.not_in(FINAL))
    elif status:
        query = query.where(Membership.status == status)
    for key, column in (
        ("hardware_id", Membership.hardware_id),
        ("model", Vehicle.model),
        ("region", Vehicle.region),
        ("from_version", Membership.from_version),
    ):
        if key in filters:
            query = query.where(column == filters[key])
    if "admitted" in filters:
        query = query.where(Membership.admitted.is_(filters["admitted"] == "true"))
    dimension, value = filters.get("dimension"), filters.get("value")
    if dimension and value is not None and dimension != rp.OVERALL:
        selected = dimension_column(dimension)
        query = query.where(selected.is_(None) if value == NONE_VALUE else selected == value)
    return query


def last_events(
    session: Session, campaign_id: str, vehicle_ids: list[str]
) -> dict[tuple[str, str | None], Event]:
    """The newest event each of these vehicles reported for the campaign, per hardware id."""
    if not vehicle_ids:
        return {}
    last: dict[tuple[str, str | None], Event] = {}
    for event in session.scalars(
        select(Event)
        .where(Event.campaign_id == campaign_id, Event.vehicle_id.in_(vehicle_ids))
        .order_by(*EVENT_ORDER)
    ):
        last.setdefault((event.vehicle_id, event.hardware_id), event)
    return last


def _event_summary(event: Event | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {"type": event.type, "reason": event.reason, "received_at": iso(event.received_at)}


# ------------------------------------------------------------------------------ history


def history(session: Session, campaign: Campaign) -> list[dict[str, Any]]:
    """Every action on the campaign, oldest first: who (an operator, or ``policy``) and why."""
    from overdrive.server.audit import entry_dict

    entries = session.scalars(
        select(AuditEntry)
        .where(AuditEntry.target == f"campaign:{campaign.id}")
        .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
        .limit(HISTORY_LIMIT)
    )
    return [entry_dict(e) for e in reversed(list(entries))]


def timeline(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Vehicles per state over time, one sample per evaluation that changed the counts."""
    samples = list(
        session.scalars(
            select(CampaignSample)
            .where(CampaignSample.campaign_id == campaign.id)
            .order_by(CampaignSample.at.desc(), CampaignSample.id.desc())
            .limit(SAMPLE_LIMIT)
        )
    )
    samples.reverse()
    return {
        "states": ["pending", "in_progress", "committed", "failures"],
        "samples": [{"at": iso(aware(s.at) or s.at), **_states(s.counts)} for s in samples],
    }


def _states(c: dict[str, int]) -> dict[str, int]:
    failures = c.get("failed", 0) + c.get("rolled_back", 0)
    committed = c.get("committed", 0)
    admitted = c.get("admitted", 0)
    return {
        "pending": c.get("eligible", 0) - admitted,
        "in_progress": admitted - committed - failures,
        "committed": committed,
        "failures": failures,
    }

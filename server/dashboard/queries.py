"""What the dashboard pages show, read from the database with the server's own domain code.

Campaign data comes from :func:`overdrive.server.campaign_view.campaign_dict` and :func:`overdrive.server.campaigns.counts`
(the same numbers the API answers); this module only shapes it for people: a progress breakdown
that adds up to the eligible fleet, the policy's stages as a stepper, the actions that make sense
in the campaign's state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, distinct, func, select
from sqlalchemy.orm import Session

import overdrive.rollout_policies as rp
from overdrive.errors import OverdriveError
from overdrive.server import campaigns
from overdrive.server.campaign_view import campaign_dict
from overdrive.server.context import ServerContext
from overdrive.server.dashboard.formatting import percent
from overdrive.server.errors import NotFoundError
from overdrive.server.fleet import ecu_views
from overdrive.server.models import (
    ABORTED,
    ACTIVE_STATES,
    COMPLETED,
    DRAFT,
    EVENT_ORDER,
    PAUSED,
    RUNNING,
    AuditEntry,
    Campaign,
    Event,
    InstalledImage,
    Membership,
    Vehicle,
)

#: Campaign states, in the order of their lifecycle (the list page's filter chips).
STATES = (DRAFT, RUNNING, PAUSED, COMPLETED, ABORTED)
#: Events newest first: by when the server received them (a vehicle's own clock, which it may
#: set to 2099, never moves its events ahead of others), then by when they happened and by
#: lifecycle step (a vehicle reports an update in one batch, and rows keep no insertion order).
#: The parts of a campaign's progress bar, in drawing order, with their labels.
PARTS = (
    ("committed", "Committed"),
    ("failed", "Failed"),
    ("rolled_back", "Rolled back"),
    ("in_progress", "In progress"),
    ("waiting", "Not yet admitted"),
)


@dataclass(frozen=True)
class Progress:
    """A campaign's counts, split so the parts add up to the eligible fleet."""

    eligible: int
    admitted: int
    committed: int
    failed: int
    rolled_back: int
    in_progress: int
    waiting: int

    @classmethod
    def from_counts(cls, counts: dict[str, int]) -> Progress:
        eligible, admitted = counts.get("eligible", 0), counts.get("admitted", 0)
        committed = counts.get("committed", 0)
        failed, rolled_back = counts.get("failed", 0), counts.get("rolled_back", 0)
        return cls(
            eligible=eligible,
            admitted=admitted,
            committed=committed,
            failed=failed,
            rolled_back=rolled_back,
            in_progress=max(admitted - committed - failed - rolled_back, 0),
            waiting=max(eligible - admitted, 0),
        )

    def share(self, part: str) -> float:
        """``part`` (a field name) as a percentage of the eligible fleet."""
        value: int = getattr(self, part)
        return percent(value, self.eligible)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "percent": {name: self.share(name) for name, _ in PARTS}}


@dataclass(frozen=True)
class StageView:
    """One policy stage as the stepper draws it."""

    index: int
    name: str
    share: str
    soak: str
    min_finished: str
    success_threshold: str
    max_failure_rate: str
    on_breach: str
    manual_approval: bool
    approved: bool
    status: str  # done | current | stopped | upcoming
    admits: int | None


@dataclass
class CampaignView:
    """Everything the campaign page shows."""

    data: dict[str, Any]
    progress: Progress
    stages: list[StageView]
    statuses: list[tuple[str, int]]
    actions: list[str]
    events: list[Event] = field(default_factory=list)

    @property
    def current_stage(self) -> StageView | None:
        return next((s for s in self.stages if s.status in ("current", "stopped")), None)


def _share_label(value: Any) -> str:
    return f"{value} vehicles" if isinstance(value, int) else str(value)


def stage_views(campaign: Campaign) -> list[StageView]:
    """The policy's stages, marked done / current / stopped / upcoming for this campaign."""
    documents: list[dict[str, Any]] = list(campaign.policy.get("stages", []))
    try:
        policy: rp.Policy | None = rp.parse_policy(campaign.policy, source="campaign")
    except rp.PolicyError:  # stored policies are normalised; never fail a page over one
        policy = None
    started = campaign.started_at is not None
    views = []
    for index, stage in enumerate(documents):
        if campaign.state == COMPLETED or (started and index < campaign.stage_index):
            status = "done"
        elif started and index == campaign.stage_index:
            status = "stopped" if campaign.state == ABORTED else "current"
        else:
            status = "upcoming"
        admits = (
            rp.admission_target(policy.stages[index], campaign.eligible_count)
            if policy is not None and started
            else None
        )
        views.append(
            StageView(
                index=index,
                name=str(stage.get("name", f"stage {index + 1}")),
                share=_share_label(stage.get("share")),
                soak=str(stage.get("soak", "0s")),
                min_finished=_share_label(stage.get("min_finished")),
                success_threshold=str(stage.get("success_threshold", "")),
                max_failure_rate=str(stage.get("max_failure_rate", "")),
                on_breach=str(stage.get("on_breach", "pause")),
                manual_approval=bool(stage.get("manual_approval")),
                approved=campaign.approved_stage > index,
                status=status,
                admits=admits,
            )
        )
    return views


def available_actions(campaign: Campaign, stages: list[StageView]) -> list[str]:
    """The buttons that make sense now (the domain functions check again, atomically)."""
    actions = []
    if campaign.state == DRAFT:
        actions.append("start")
    if campaign.state == RUNNING:
        actions.append("pause")
    if campaign.state == PAUSED:
        actions.append("resume")
    if campaign.state in ACTIVE_STATES and campaign.stage_index < len(stages):
        stage = stages[campaign.stage_index]
        if stage.manual_approval and not stage.approved:
            actions.append("approve")
    if campaign.state in (DRAFT, *ACTIVE_STATES):
        actions.append("abort")
    return actions


def get_campaign(session: Session, campaign_id: str) -> Campaign:
    """The campaign, or a 404 that says which id was not found."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFoundError(f"There is no campaign with id {campaign_id!r}.")
    return campaign


def status_breakdown(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Admitted vehicles per membership status (pending, assigned, downloading, …)."""
    return sorted(
        ((k, v) for k, v in counts.items() if k not in ("eligible", "admitted") and v),
        key=lambda kv: (-kv[1], kv[0]),
    )


def campaign_view(session: Session, campaign: Campaign, *, events: int = 0) -> CampaignView:
    """A campaign with its counts and stages; ``events`` most recent events of its vehicles."""
    data = campaign_dict(session, campaign)
    stages = stage_views(campaign)
    view = CampaignView(
        data=data,
        progress=Progress.from_counts(data["counts"]),
        stages=stages,
        statuses=status_breakdown(data["counts"]),
        actions=available_actions(campaign, stages),
    )
    if events:
        view.events = list(
            session.scalars(
                select(Event)
                .where(Event.campaign_id == campaign.id)
                .order_by(*EVENT_ORDER)
                .limit(events)
            )
        )
    return view


def eligible_preview(ctx: ServerContext, session: Session, campaign: Campaign) -> int | None:
    """For a draft: how many vehicles would be eligible if it started now (None if unknown).

    The same query ``start`` runs, read-only; starting takes the real snapshot.
    """
    try:
        return len(campaigns.eligible_vehicles(ctx, session, campaign))
    except OverdriveError:  # e.g. an installed_version range while the repository is away
        return None


def _campaigns(state: str | None) -> Select[Campaign]:
    query = select(Campaign)
    return query.where(Campaign.state == state) if state else query


def count_campaigns(session: Session, state: str | None) -> int:
    """How many campaigns there are (of ``state``, if given)."""
    return session.scalar(select(func.count()).select_from(_campaigns(state).subquery())) or 0


def campaigns_per_state(session: Session) -> dict[str, int]:
    """State → how many campaigns are in it."""
    rows = session.execute(select(Campaign.state, func.count()).group_by(Campaign.state))
    return {state: count for state, count in rows}


def campaign_page(
    session: Session, state: str | None, limit: int, offset: int
) -> list[CampaignView]:
    """A page of campaigns (of ``state``, if given), newest first."""
    rows = session.scalars(
        _campaigns(state)
        .order_by(Campaign.created_at.desc(), Campaign.id)
        .limit(limit)
        .offset(offset)
    )
    return [campaign_view(session, c) for c in rows]


# ------------------------------------------------------------------------------ fleet


@dataclass(frozen=True)
class VersionRow:
    """A version of one hardware id that vehicles run, with how many and what share run it."""

    version: str
    release_counter: int
    vehicles: int
    share: float
    latest: bool


def installed_versions(session: Session, latest: dict[str, str]) -> dict[str, list[VersionRow]]:
    """Hardware id → the versions vehicles run, newest first, with how many run each (a
    vehicle with several ECUs of one hardware id counts once per version they run)."""
    rows = session.execute(
        select(
            InstalledImage.hardware_id,
            InstalledImage.version,
            func.max(InstalledImage.release_counter),
            func.count(distinct(InstalledImage.vehicle_id)),
        ).group_by(InstalledImage.hardware_id, InstalledImage.version)
    ).all()
    totals: dict[str, int] = {}
    for hw, _version, _counter, count in rows:
        totals[hw] = totals.get(hw, 0) + count
    result: dict[str, list[VersionRow]] = {}
    for hw, version, counter, count in rows:
        result.setdefault(hw, []).append(
            VersionRow(
                version, counter or 0, count, percent(count, totals[hw]), latest.get(hw) == version
            )
        )
    for versions in result.values():
        versions.sort(key=lambda r: (-r.release_counter, r.version))
    return dict(sorted(result.items()))


def seen_summary(session: Session, now: datetime) -> dict[str, int]:
    """How many vehicles were last seen within a day, within a week, longer ago, or never."""
    day, week = now - timedelta(days=1), now - timedelta(days=7)
    seen = Vehicle.last_seen_at
    row = session.execute(
        select(
            func.count(),
            func.sum(case((seen >= day, 1), else_=0)),
            func.sum(case(((seen < day) & (seen >= week), 1), else_=0)),
            func.sum(case((seen.is_(None), 1), else_=0)),
        ).select_from(Vehicle)
    ).one()
    total, recent, this_week, never = (int(v or 0) for v in row)
    return {
        "total": total,
        "day": recent,
        "week": this_week,
        "older": total - recent - this_week - never,
        "never": never,
    }


def fleet_overview(session: Session, now: datetime, latest: dict[str, str]) -> dict[str, Any]:
    """The home page: fleet size and freshness, versions per hardware id, active campaigns."""
    per_state = campaigns_per_state(session)
    active = session.scalars(
        select(Campaign)
        .where(Campaign.state.in_(ACTIVE_STATES))
        .order_by(Campaign.started_at.desc(), Campaign.id)
        .limit(20)
    )
    recent = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(6))
    return {
        "seen": seen_summary(session, now),
        "versions": installed_versions(session, latest),
        "latest": latest,
        "per_state": per_state,
        "active": [campaign_view(session, c) for c in active],
        "recent": list(recent),
    }


def vehicle_detail(session: Session, vehicle_id: str, events: int = 100) -> dict[str, Any]:
    """One vehicle: attributes, its software set (each ECU and its image), status, its
    campaigns and its recent events."""
    vehicle = session.get(Vehicle, vehicle_id)
    if vehicle is None:
        raise NotFoundError(f"There is no vehicle with id {vehicle_id!r}.")
    images = list(
        session.scalars(
            select(InstalledImage)
            .where(InstalledImage.vehicle_id == vehicle_id)
            .order_by(InstalledImage.hardware_id, InstalledImage.ecu_serial)
        )
    )
    memberships = session.execute(
        select(Membership, Campaign)
        .join(Campaign, Campaign.id == Membership.campaign_id)
        .where(Membership.vehicle_id == vehicle_id)
        .order_by(Campaign.created_at.desc())
    ).all()
    history = list(
        session.scalars(
            select(Event).where(Event.vehicle_id == vehicle_id).order_by(*EVENT_ORDER).limit(events)
        )
    )
    status = vehicle.status or {}
    unknown = status.get("unknown_ecus")
    return {
        "vehicle": vehicle,
        "images": images,
        "ecus": ecu_views(vehicle, images),
        "unknown_ecus": unknown if isinstance(unknown, dict) else {},
        "memberships": [(m, c) for m, c in memberships],
        "events": history,
    }


def hardware_counts(session: Session) -> dict[str, int]:
    """Hardware id → how many vehicles have that hardware."""
    rows = session.execute(
        select(
            InstalledImage.hardware_id, func.count(distinct(InstalledImage.vehicle_id))
        ).group_by(InstalledImage.hardware_id)
    )
    return {hw: n for hw, n in rows}


def known_vehicles(session: Session, ids: list[str]) -> set[str]:
    """Which of ``ids`` are registered vehicles."""
    return set(session.scalars(select(Vehicle.id).where(Vehicle.id.in_(ids)))) if ids else set()

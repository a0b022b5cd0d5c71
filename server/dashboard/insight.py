"""Why a campaign is where it is: its judged groups as table rows, the vehicles behind every
count (filtered, sorted, paged), its history and its timeline chart.

The numbers are those of :mod:`overdrive.server.campaign_view` (what the API answers): the groups come
from ``campaign_dict``, the history and samples from ``history`` and ``timeline``. The vehicle
list is read here rather than through ``campaign_vehicles`` because the dashboard sorts it by
any column; its filters mean exactly what that function's do, plus ``in_progress`` (admitted,
not finished), and every link on the campaign page is built from :meth:`GroupRow.link` and
:data:`TILE_FILTERS` so that a count and the list behind it always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

import overdrive.rollout_policies as rp
from overdrive.releases import ReleaseIndex
from overdrive.server import campaign_view
from overdrive.server.campaigns import FAILED
from overdrive.server.dashboard.chart import Chart, timeline_chart
from overdrive.server.dashboard.forms import ListQuery
from overdrive.server.models import (
    ACTIVE_STATES,
    Campaign,
    Event,
    InstalledImage,
    Membership,
    Vehicle,
)

#: The vehicle-list filters behind each count of the progress card (``data-count`` names).
TILE_FILTERS: dict[str, dict[str, str]] = {
    "eligible": {},
    "admitted": {"admitted": "true"},
    "in_progress": {"status": "in_progress"},
    "committed": {"status": "committed"},
    "failed": {"status": "failed"},
    "rolled_back": {"status": "rolled_back"},
    "waiting": {"admitted": "false"},
}
#: The audit actions that put a campaign in each final or paused state.
TRANSITIONS = {
    "paused": "campaign.pause",
    "aborted": "campaign.abort",
    "completed": "campaign.complete",
}


# ------------------------------------------------------------------------------ groups


@dataclass(frozen=True)
class GroupRow:
    """One judged group (the whole campaign, a hardware id, a cohort value) as a table row."""

    dimension: str
    value: str
    eligible: int
    admitted: int
    finished: int
    succeeded: int
    failures: int
    failure_rate: float | None
    halts_at: int | None
    acceptable: str
    evidence: float
    threshold: float
    breached: bool

    @property
    def overall(self) -> bool:
        return self.dimension == rp.OVERALL

    def link(self, count: str) -> dict[str, str]:
        """The vehicle-list args behind one of this row's counts (``eligible``, ``admitted``,
        ``finished``, ``succeeded``, ``failures``)."""
        args = {} if self.overall else {"dimension": self.dimension, "value": self.value}
        extra = {
            "eligible": {},
            "admitted": {"admitted": "true"},
            "finished": {"status": "finished"},
            "succeeded": {"status": "committed"},
            "failures": {"status": "failures"},
        }[count]
        return {**args, **extra}


def group_rows(groups: Sequence[dict[str, Any]]) -> list[GroupRow]:
    """``campaign_dict(...)["groups"]`` as rows, the whole campaign first (as judged)."""
    return [
        GroupRow(
            dimension=str(g["dimension"]),
            value=str(g["value"]),
            eligible=int(g["eligible"]),
            admitted=int(g["admitted"]),
            finished=int(g["finished"]),
            succeeded=int(g["succeeded"]),
            failures=int(g["failures"]),
            failure_rate=g.get("failure_rate"),
            halts_at=g.get("halts_at"),
            acceptable=str(g.get("acceptable_failure_rate", "")),
            evidence=float(g.get("evidence") or 0.0),
            threshold=float(g.get("threshold") or 0.0),
            breached=bool(g.get("breached")),
        )
        for g in groups
    ]


# ------------------------------------------------------------------------------ vehicles


@dataclass(frozen=True)
class MemberRow:
    """A vehicle behind a campaign count: its membership, attributes and last event."""

    vehicle_id: str
    hardware_id: str
    status: str
    reason: str | None
    admitted: bool
    installed_version: str | None
    from_version: str | None
    model: str | None
    region: str | None
    updated_at: datetime | None
    last_event: Event | None
    #: For a failed software set: the hardware id that caused it (see Membership.caused_by).
    caused_by: str | None = None


_STATUS_ORDER = case(
    {status: i for i, status in enumerate(campaign_view.MEMBER_STATUSES)},
    value=Membership.status,
    else_=len(campaign_view.MEMBER_STATUSES),
)
MEMBER_ORDER: dict[str, tuple[ColumnElement[Any] | InstrumentedAttribute[Any], ...]] = {
    "updated": (Membership.updated_at,),
    "vehicle": (Membership.vehicle_id,),
    "hardware_id": (Membership.hardware_id,),
    "version": (InstalledImage.release_counter, InstalledImage.version),
    "from_version": (Membership.from_version,),
    "model": (Vehicle.model,),
    "region": (Vehicle.region,),
    "status": (_STATUS_ORDER,),
}


def count_members(session: Session, campaign: Campaign, query: ListQuery) -> int:
    """How many of the campaign's vehicles match ``query``'s filters."""
    selected = campaign_view.filter_members(campaign_view.member_query(campaign), query.filters)
    return session.scalar(select(func.count()).select_from(selected.subquery())) or 0


def member_page(
    session: Session, campaign: Campaign, query: ListQuery, limit: int, offset: int
) -> list[MemberRow]:
    """A page of the campaign's vehicles matching ``query``, in its sort order."""
    selected = campaign_view.filter_members(campaign_view.member_query(campaign), query.filters)
    order = [
        (c.desc() if query.descending else c.asc()).nulls_last() for c in MEMBER_ORDER[query.sort]
    ]
    rows = session.execute(
        selected.order_by(*order, Membership.vehicle_id, Membership.hardware_id)
        .limit(limit)
        .offset(offset)
    ).all()
    last = campaign_view.last_events(
        session, campaign.id, [m.vehicle_id for m, _v, _version in rows]
    )
    return [
        MemberRow(
            vehicle_id=m.vehicle_id,
            hardware_id=m.hardware_id,
            status=m.status,
            reason=m.reason,
            admitted=m.admitted,
            installed_version=version,
            from_version=m.from_version,
            model=v.model,
            region=v.region,
            updated_at=m.updated_at,
            last_event=last.get((m.vehicle_id, m.hardware_id)),
            caused_by=m.caused_by,
        )
        for m, v, version in rows
    ]


# ------------------------------------------------------------------------------ the page


@dataclass(frozen=True)
class Insight:
    """What the campaign page adds to the counts: groups, withdrawn releases, the transition
    that set its state (who and when), its history and its timeline."""

    groups: list[GroupRow]
    withdrawn: dict[str, str]
    transition: dict[str, Any] | None
    history: list[dict[str, Any]]
    chart: Chart | None

    @property
    def breached(self) -> list[GroupRow]:
        return [g for g in self.groups if g.breached]


def withdrawn_releases(index: ReleaseIndex | None, releases: dict[str, Any]) -> dict[str, str]:
    """Hardware id → why its campaign release was withdrawn, for those that were."""
    withdrawn = {}
    for hw, release in releases.items():
        found = index.find(hw, str(release["version"])) if index is not None else None
        if found is not None and found.yanked is not None:
            withdrawn[hw] = found.yanked
    return withdrawn


def campaign_insight(
    session: Session,
    campaign: Campaign,
    data: dict[str, Any],
    index: ReleaseIndex | None,
    now: datetime,
) -> Insight:
    """The groups, withdrawals, history and timeline of ``campaign`` (``data`` is its
    ``campaign_dict``)."""
    history = campaign_view.history(session, campaign)
    action = TRANSITIONS.get(campaign.state)
    transition = next((e for e in reversed(history) if e["action"] == action), None)
    going = campaign.state in ACTIVE_STATES
    chart = timeline_chart(
        campaign_view.timeline(session, campaign),
        now if going else campaign.finished_at,
        current=chart_counts(data.get("counts", {})) if going else None,
        checked=data.get("evaluated_at"),
    )
    return Insight(
        groups=group_rows(data.get("groups", [])),
        withdrawn=withdrawn_releases(index, data.get("releases", {})),
        transition=transition,
        history=history,
        chart=chart,
    )


def chart_counts(counts: dict[str, int]) -> dict[str, int]:
    """``campaigns.counts`` in the timeline's states (as its samples hold them)."""
    admitted, committed = counts.get("admitted", 0), counts.get("committed", 0)
    failures = sum(counts.get(status, 0) for status in FAILED)
    return {
        "pending": counts.get("eligible", 0) - admitted,
        "in_progress": admitted - committed - failures,
        "committed": committed,
        "failures": failures,
    }

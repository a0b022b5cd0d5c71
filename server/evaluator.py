"""The periodic evaluator: judge every running campaign with the policy engine and apply it.

Each evaluation reads the campaign's counts from the database, overall and per *group* (each
hardware id of its releases, and each value of every cohort dimension its policy's ``judge``
names: ``model``, ``region``, ``installed_version`` or a vehicle attribute), with one
``GROUP BY`` query per dimension, so the work is O(groups), never O(vehicles). The same pure
:func:`overdrive.rollout_policies.decide` then runs as in ``overdrive simulate``.

What the evaluator leaves behind, so operators can see why:

- ``Campaign.decision``: the last decision (what the campaign waits for and until when, and
  every judged group with its counts and the threshold it is held against);
- a :class:`~overdrive.server.models.CampaignSample` whenever the counts changed (the timeline chart);
- an audit entry by ``policy`` for every automatic transition, with the engine's reason.

A release withdrawn from the image repository (``overdrive release yank``) pauses every running
campaign that installs it, with the withdrawal's reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, false, func, insert, select, true, update
from sqlalchemy.orm import Session

import overdrive.rollout_policies as rp
from overdrive.server.audit import record
from overdrive.server.campaigns import (
    FAILED,
    SUCCEEDED,
    admit,
    aware,
    counts,
    deactivate,
    get,
    policy_of,
    transition,
    utcnow,
)
from overdrive.server.context import ServerContext
from overdrive.server.errors import Conflict
from overdrive.server.models import (
    ABORTED,
    COMPLETED,
    PAUSED,
    RUNNING,
    Campaign,
    CampaignRelease,
    CampaignSample,
    Membership,
    Vehicle,
)

POLICY_ACTOR = "policy"
NONE_VALUE = "(none)"
"""The group of vehicles that have no value for a dimension."""
MAX_GROUPS_PER_DIMENSION = 1000
"""A dimension with more values than this (an attribute that is really an id) is not judged
per value: its groups would be too small to say anything, and too many to show."""


#: Dimensions whose groups are of ECUs (a hardware id, the version an ECU ran): there a
#: software set's failure counts against the hardware id that caused it only.
PER_ECU_DIMENSIONS = (rp.HARDWARE_ID, "installed_version")


def group_counts(
    session: Session, campaign: Campaign, policy: rp.Policy
) -> tuple[rp.GroupCounts, ...]:
    """Counts per hardware id and per value of each cohort the policy judges.

    A vehicle's software set fails as a whole: every membership of the set ends rolled back,
    each naming the hardware id that caused it (``Membership.caused_by``). In the groups of
    :data:`PER_ECU_DIMENSIONS` the failure counts against that hardware id's membership only;
    the set's other memberships are admitted there but neither a success nor a failure (their
    hardware id did nothing wrong). Vehicle cohorts (model, region, attributes) and the
    campaign overall count every membership as it ended."""
    groups: list[rp.GroupCounts] = []
    # (constants, not bind parameters: PostgreSQL must see the grouped expression unchanged)
    collateral = case(
        (
            Membership.caused_by.is_not(None) & (Membership.caused_by != Membership.hardware_id),
            true(),
        ),
        else_=false(),
    )
    for dimension in policy.judge.dimensions:
        column = dimension_column(dimension)
        per_ecu = dimension in PER_ECU_DIMENSIONS
        keys = [column, Membership.status, Membership.admitted, *([collateral] if per_ecu else [])]
        query = (
            select(*keys, func.count())
            .select_from(Membership)
            .where(Membership.campaign_id == campaign.id)
            .group_by(*keys)
        )
        if not per_ecu:
            query = query.join(Vehicle, Vehicle.id == Membership.vehicle_id)
        tally: dict[str, list[int]] = {}
        for value, status, admitted, *rest in session.execute(query):
            elsewhere, count = (rest[0], rest[1]) if per_ecu else (False, rest[0])
            row = tally.setdefault(NONE_VALUE if value is None else str(value), [0, 0, 0, 0])
            row[0] += count
            if admitted:
                row[1] += count
                row[2] += count if status in SUCCEEDED else 0
                row[3] += count if status in FAILED and not elsewhere else 0
        if len(tally) > MAX_GROUPS_PER_DIMENSION:
            continue
        groups.extend(
            rp.GroupCounts(dimension, value, *row) for value, row in sorted(tally.items())
        )
    return tuple(groups)


def dimension_column(dimension: str) -> ColumnElement[Any]:
    """The column a dimension's values come from (an attribute: its JSON value as text)."""
    if dimension == rp.HARDWARE_ID:
        return Membership.hardware_id.expression
    if dimension == "installed_version":
        return Membership.from_version.expression
    if dimension == "model":
        return Vehicle.model.expression
    if dimension == "region":
        return Vehicle.region.expression
    column: ColumnElement[Any] = Vehicle.attributes[dimension].as_string()
    return column


def stage_state(
    session: Session, campaign: Campaign, policy: rp.Policy, now: datetime
) -> tuple[rp.StageState, dict[str, int]]:
    """What the engine looks at for ``campaign`` now, and the raw counts per status."""
    c = counts(session, campaign.id)
    succeeded = sum(c.get(s, 0) for s in SUCCEEDED)
    failed = c.get("failed", 0)
    rolled_back = c.get("rolled_back", 0)
    state = rp.StageState(
        stage_index=campaign.stage_index,
        stage_started_at=aware(campaign.stage_started_at) or now,
        campaign_started_at=aware(campaign.started_at) or now,
        now=now,
        eligible=campaign.eligible_count,
        admitted=c["admitted"],
        succeeded=succeeded,
        failed=failed,
        rolled_back=rolled_back,
        in_progress=c["admitted"] - succeeded - failed - rolled_back,
        installed=c.get("installed", 0),
        approved=campaign.approved_stage > campaign.stage_index,
        groups=group_counts(session, campaign, policy),
    )
    return state, c


def withdrawn(ctx: ServerContext, session: Session, campaign: Campaign) -> str | None:
    """The reason to pause ``campaign`` if one of its releases was withdrawn, else ``None``."""
    try:
        index = ctx.releases.index()
    except Exception:  # an unreadable repository is /readyz's business, not a pause
        return None
    releases = session.scalars(
        select(CampaignRelease).where(CampaignRelease.campaign_id == campaign.id)
    )
    for release in releases:
        found = index.find(release.hardware_id, release.version)
        if found is not None and found.yanked:
            return (
                f"release {release.version} of hardware id {release.hardware_id} was withdrawn "
                f"from the image repository: {found.yanked}"
            )
    return None


def evaluate(
    session: Session, campaign: Campaign, now: datetime, ctx: ServerContext | None = None
) -> str:
    """Run the policy engine for one running campaign and apply its decision (compare-and-set)."""
    policy = policy_of(campaign)
    reason = withdrawn(ctx, session, campaign) if ctx is not None else None
    if reason is not None:
        transition(session, campaign, expect=(RUNNING,), state=PAUSED, reason=reason)
        record(
            session, "campaign.pause", f"campaign:{campaign.id}", actor=POLICY_ACTOR, reason=reason
        )
        return "pause"
    state, raw = stage_state(session, campaign, policy, now)
    decision = rp.decide(policy, state)
    _remember(session, campaign, decision, raw, now)
    kind = decision.kind
    target = f"campaign:{campaign.id}"
    if kind == "advance":
        transition(
            session,
            campaign,
            expect=(RUNNING,),
            stage_index=campaign.stage_index + 1,
            stage_started_at=now,
        )
        admit(session, campaign)
        record(
            session,
            "campaign.advance",
            target,
            actor=POLICY_ACTOR,
            stage=campaign.stage_index,
            reason=decision.reason,
        )
    elif kind in ("pause", "abort", "complete"):
        state_after = {"pause": PAUSED, "abort": ABORTED, "complete": COMPLETED}[kind]
        ending = {} if kind == "pause" else {"finished_at": now}
        transition(
            session,
            campaign,
            expect=(RUNNING,),
            state=state_after,
            reason=decision.reason,
            **ending,
        )
        if kind != "pause":
            deactivate(session, campaign)
        record(session, f"campaign.{kind}", target, actor=POLICY_ACTOR, reason=decision.reason)
    else:
        admit(session, campaign)  # eligible vehicles may have been admitted short earlier
    return kind


def _remember(
    session: Session,
    campaign: Campaign,
    decision: rp.Decision,
    raw: dict[str, int],
    now: datetime,
) -> None:
    """Store the decision on the campaign, and a timeline sample if the counts changed."""
    previous = campaign.decision or {}
    stored = {**decision.to_dict(), "at": now.isoformat(), "counts": raw}
    session.execute(update(Campaign).where(Campaign.id == campaign.id).values(decision=stored))
    campaign.decision = stored
    if previous.get("counts") != raw:
        session.execute(insert(CampaignSample).values(campaign_id=campaign.id, at=now, counts=raw))


def tick(ctx: ServerContext, now: datetime | None = None) -> dict[str, str]:
    """Evaluate every running campaign, each in its own transaction; return the decisions."""
    now = now or utcnow()
    with ctx.session() as session:
        ids = list(session.scalars(select(Campaign.id).where(Campaign.state == RUNNING)))
    decisions = {}
    for campaign_id in ids:
        try:
            with ctx.transaction() as session:
                campaign = get(session, campaign_id, lock=True)
                if campaign.state == RUNNING:
                    decisions[campaign_id] = evaluate(session, campaign, now, ctx)
        except Conflict:
            decisions[campaign_id] = "skipped (changed concurrently)"
    return decisions

"""The decision engine: given a policy and a campaign's counts and times, what happens next.

:func:`decide` is a pure function: no I/O, no clock (``now`` is part of the state), no
randomness, O(1) in the size of the fleet and the policy. The server applies the decision in a
transaction; ``overdrive simulate`` runs the same function over a synthetic fleet.

Rules, in the order they are applied (``docs/policies.md`` explains them for operators):

1. No eligible vehicles: **complete**.
2. *Finished* vehicles are those that succeeded, failed or rolled back; *failures* are failed
   plus rolled back. Counts are cumulative over the campaign's admitted vehicles. The *sample*
   the stage needs is ``min_finished`` (a count, or a percentage of the admitted vehicles, rounded
   up), but never more than the vehicles admitted so far, and at least one.
3. Breach: every group (the campaign overall, each hardware id, each value of each cohort the
   policy's ``judge`` names) is judged by a sequential test (:mod:`overdrive.rollout_policies.groups`) at
   every evaluation, whatever the sample: a group whose failures are statistically clear is a
   breach at once. Then, once the sample is met, a failure rate (failures / finished) above the stage's
   ``max_failure_rate`` is a breach, judged at once even while the stage still soaks. So is a
   success rate below ``success_threshold`` when every admitted vehicle has finished (no more
   results can raise it). A breach returns the stage's ``on_breach`` (**pause** or **abort**).
4. Otherwise the stage may be left only when all of these hold (each unmet one is a reason to
   **hold**): the soak time has elapsed since the stage started; the sample is met; the success
   rate is at least ``success_threshold``; an operator approved, if ``manual_approval``; and on
   the last stage, the whole target is admitted and every admitted vehicle has finished.
5. Leaving the last stage is **complete**, even past the deadline.
6. Past the deadline (``now >= campaign start + deadline``) a campaign that is not complete gets
   the policy's ``on_deadline`` (**pause** by default): it never advances past its deadline.
7. Leaving any other stage is **advance** to the next one, with its admission target and cutoff.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from overdrive.rollout_policies.cohort import admission_target, cutoff
from overdrive.rollout_policies.errors import InvalidState
from overdrive.rollout_policies.groups import (
    OVERALL,
    GroupCounts,
    GroupVerdict,
    breach_reason,
    judge,
)
from overdrive.rollout_policies.model import Policy, Stage
from overdrive.rollout_policies.units import PPM, format_duration, format_ppm, format_rate

Kind = Literal["advance", "hold", "pause", "abort", "complete"]
Gate = Literal["soak", "sample", "success", "admission", "unfinished", "approval"]
"""Why a stage holds: what it still waits for."""

_COUNTS = ("eligible", "admitted", "succeeded", "failed", "rolled_back", "in_progress", "installed")


@dataclass(frozen=True, slots=True, kw_only=True)
class StageState:
    """Everything :func:`decide` looks at for one running campaign.

    Times must be all timezone-aware or all naive. Counts are over the campaign's admitted
    vehicles, cumulative across stages.
    """

    stage_index: int
    """The stage the campaign is in (0-based)."""
    stage_started_at: datetime
    """When that stage started (its soak runs from here)."""
    campaign_started_at: datetime
    """When the campaign started (its deadline runs from here)."""
    now: datetime
    eligible: int
    """Vehicles the campaign's filter selected: the base of every stage's share."""
    admitted: int
    """Vehicles admitted so far (all stages)."""
    succeeded: int
    failed: int
    rolled_back: int
    in_progress: int = 0
    """Admitted vehicles that are working on the update (informational: the engine counts every
    admitted vehicle that has not finished as unfinished, whatever it is doing)."""
    installed: int = 0
    """Of those, vehicles that installed and await reboot or health check (informational)."""
    approved: bool = False
    """An operator approved leaving the current stage."""
    groups: tuple[GroupCounts, ...] = ()
    """Counts per hardware id and per value of each cohort the policy judges (the campaign
    overall is added from the counts above)."""

    def __post_init__(self) -> None:
        for name in _COUNTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidState(f"{name} must be a count (an integer >= 0), got {value!r}")
        if not isinstance(self.stage_index, int) or self.stage_index < 0:
            raise InvalidState(f"stage_index must be an integer >= 0, got {self.stage_index!r}")
        times = (self.stage_started_at, self.campaign_started_at, self.now)
        if not all(isinstance(t, datetime) for t in times):
            raise InvalidState("stage_started_at, campaign_started_at and now must be datetimes")
        if len({t.tzinfo is None for t in times}) != 1:
            raise InvalidState(
                "stage_started_at, campaign_started_at and now mix naive and aware times"
            )
        if not all(isinstance(g, GroupCounts) for g in self.groups):
            raise InvalidState("groups must be GroupCounts")
        if self.finished > self.admitted:
            raise InvalidState(
                f"{self.finished} finished vehicles (succeeded + failed + rolled_back) "
                f"but only {self.admitted} admitted"
            )

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.rolled_back

    @property
    def failures(self) -> int:
        """Failed plus rolled back: a rollback is a failed update that the vehicle undid."""
        return self.failed + self.rolled_back

    @property
    def overall(self) -> GroupCounts:
        """The campaign as one group."""
        return GroupCounts(
            OVERALL, "all", self.eligible, self.admitted, self.succeeded, self.failures
        )

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "groups":
                value = [asdict(g) for g in value]
            result[f.name] = value.isoformat() if isinstance(value, datetime) else value
        return result


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a campaign now, and why (``reason`` is one line for operators)."""

    kind: Kind
    reason: str
    stage_index: int
    """The stage that was judged."""
    stage: str
    """Its name."""
    next_stage_index: int | None = None
    """For ``advance``: the stage to move to."""
    target: int = 0
    """Vehicles admitted by the stage the campaign is in after this decision (exact variant)."""
    cutoff: int = 0
    """That stage's bucket cutoff (stateless variant): admit ``bucket < cutoff``."""
    until: datetime | None = None
    """For ``hold`` while soaking: when the soak ends."""
    waiting_for: tuple[Gate, ...] = ()
    """For ``hold``: every condition still unmet."""
    groups: tuple[GroupVerdict, ...] = ()
    """Every judged group (the campaign first) with its counts and the sequential test's view."""
    waits: tuple[str, ...] = ()
    """For ``hold``: one line per unmet condition (``soaking until 14:20 UTC, 3h40m left``)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reason": self.reason,
            "stage_index": self.stage_index,
            "stage": self.stage,
            "next_stage_index": self.next_stage_index,
            "target": self.target,
            "cutoff": self.cutoff,
            "until": self.until.isoformat() if self.until is not None else None,
            "waiting_for": list(self.waiting_for),
            "waits": list(self.waits),
            "groups": [g.to_dict() for g in self.groups],
        }


def decide(policy: Policy, state: StageState) -> Decision:
    """Judge the campaign's current stage; see the module docstring for the rules.

    Raises :class:`InvalidState` only when ``state.stage_index`` is not a stage of ``policy``
    (every other invalid state is refused when the :class:`StageState` is built).
    """
    stages = policy.stages
    index = state.stage_index
    if index >= len(stages):
        raise InvalidState(
            f"stage_index {index} is out of range: the policy has {len(stages)} stage(s)"
        )
    stage = stages[index]
    last = index == len(stages) - 1
    verdicts = judge(policy.judge, (state.overall, *state.groups))

    def decision(kind: Kind, reason: str, **extra: Any) -> Decision:
        return Decision(
            kind,
            reason,
            index,
            stage.name,
            target=admission_target(stage, state.eligible),
            cutoff=cutoff(stage, state.eligible),
            groups=verdicts,
            **extra,
        )

    if state.eligible == 0:
        return decision("complete", "no eligible vehicles: nothing to roll out")

    finished, failures, succeeded = state.finished, state.failures, state.succeeded
    unfinished = state.admitted - finished
    sample = required_sample(stage, state.admitted)
    sample_met = finished >= sample
    at = f"at stage {stage.name!r}"

    # 3. Breach: the stage's own thresholds, then any group clearly failing.
    if sample_met and stage.max_failure_rate.exceeded_by(failures, finished):
        limit = stage.max_failure_rate.ppm
        return decision(
            stage.on_breach,
            f"failure rate {format_rate(failures, finished, limit)} > max "
            f"{format_ppm(limit, 1)} {at} ({failures} of {finished} finished)",
        )
    breached = [v for v in verdicts if v.breached]
    if breached:
        # Name a hardware id or cohort when one is clear: that is where to look.
        named = [v for v in breached if v.counts.dimension != OVERALL] or breached
        worst = max(named, key=lambda v: v.evidence - v.threshold)
        return decision(stage.on_breach, f"{breach_reason(worst, policy.judge)} {at}")
    success_met = sample_met and stage.success_threshold.met_by(succeeded, finished)
    if sample_met and not success_met and unfinished == 0:
        threshold = stage.success_threshold.ppm
        return decision(
            stage.on_breach,
            f"success rate {format_rate(succeeded, finished, threshold)} < required "
            f"{format_ppm(threshold, 1)} {at} ({succeeded} of {finished} finished) "
            f"and all {state.admitted} admitted vehicles have finished, so it cannot improve",
        )

    # 4. Gates.
    waiting: list[Gate] = []
    reasons: list[str] = []
    soak_end = state.stage_started_at + stage.soak
    if state.now < soak_end:
        waiting.append("soak")
        left = format_duration(timedelta(seconds=math.ceil((soak_end - state.now).total_seconds())))
        reasons.append(f"soaking until {clock(soak_end)}, {left} left")
    if not sample_met:
        waiting.append("sample")
        more = sample - finished
        reasons.append(
            f"waiting for {more} more {'result' if more == 1 else 'results'} "
            f"({finished} of {sample} needed; "
            f"{_progress(state, unfinished)})"
        )
    elif not success_met:
        waiting.append("success")
        threshold = stage.success_threshold.ppm
        reasons.append(
            f"success rate {format_rate(succeeded, finished, threshold)} < required "
            f"{format_ppm(threshold, 1)} ({succeeded} of {finished} finished succeeded)"
        )
    if last:
        target = admission_target(stage, state.eligible)
        if state.admitted < target:
            waiting.append("admission")
            reasons.append(f"waiting for admission ({state.admitted} of {target} admitted)")
        if unfinished > 0 and sample_met:
            waiting.append("unfinished")
            reasons.append(
                f"waiting for {unfinished} admitted {_vehicles(unfinished)} to finish "
                f"({_progress(state, unfinished)})"
            )
    if stage.manual_approval and not state.approved:
        waiting.append("approval")
        step = "complete" if last else f"advance to stage {stages[index + 1].name!r}"
        reasons.append(f"waiting for approval to {step}")

    summary = (
        f"{succeeded} of {finished} finished succeeded, "
        f"{format_rate(succeeded, finished)} >= {format_ppm(stage.success_threshold.ppm, 1)}"
    )

    # 5. Complete.
    if not waiting and last:
        return decision(
            "complete",
            f"stage {stage.name!r} passed ({summary}) and all {state.admitted} admitted vehicles "
            "have finished: campaign complete",
        )

    # 6. Deadline.
    deadline = policy.deadline
    if deadline is not None and state.now >= state.campaign_started_at + deadline:
        return decision(
            policy.on_deadline,
            f"deadline passed {at}: the campaign started "
            f"{state.campaign_started_at.isoformat(timespec='seconds')} and had "
            f"{format_duration(deadline)} to finish",
        )

    # 7. Advance, or hold.
    if not waiting:
        following = stages[index + 1]
        target = admission_target(following, state.eligible)
        return Decision(
            "advance",
            f"stage {stage.name!r} passed ({summary}); advancing to stage {following.name!r} "
            f"(target {target} {_vehicles(target)})",
            index,
            stage.name,
            next_stage_index=index + 1,
            target=target,
            cutoff=cutoff(following, state.eligible),
            groups=verdicts,
        )
    return decision(
        "hold",
        f"holding {at}: " + "; ".join(reasons),
        until=soak_end if "soak" in waiting else None,
        waiting_for=tuple(waiting),
        waits=tuple(reasons),
    )


def clock(moment: datetime) -> str:
    """``2025-03-01 14:00 UTC`` (``UTC`` only for aware times: the simulator's are local)."""
    if moment.tzinfo is None:
        return f"{moment:%Y-%m-%d %H:%M}"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def required_sample(stage: Stage, admitted: int) -> int:
    """Finished vehicles needed before the stage is judged: ``min_finished`` of ``admitted``
    (a percentage rounds up), capped at ``admitted`` (a stage cannot wait for vehicles it does
    not have) and at least 1 (a stage is never judged on nothing)."""
    wanted = stage.min_finished
    needed = -(-wanted.ppm * admitted // PPM) if wanted.ppm else wanted.count
    return max(1, min(needed, admitted))


def _vehicles(count: int) -> str:
    return "vehicle" if count == 1 else "vehicles"


def _progress(state: StageState, unfinished: int) -> str:
    """``12 not finished, 9 in progress, 3 installed`` (the informational counts when given)."""
    parts = [f"{unfinished} not finished"]
    if state.in_progress:
        parts.append(f"{state.in_progress} in progress")
    if state.installed:
        parts.append(f"{state.installed} installed")
    return ", ".join(parts)

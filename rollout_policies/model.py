"""The policy model: a :class:`Policy` is ordered :class:`Stage` s plus optional maintenance
windows and a deadline. Plain frozen dataclasses; :func:`overdrive.rollout_policies.parse.parse_policy` is
the validating constructor, and ``to_dict()`` writes the normalised document back (every default
filled in), which ``parse_policy`` reads again to an equal policy. The server stores that dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

from overdrive.maintenance import MaintenanceWindow
from overdrive.rollout_policies.groups import DEFAULT_JUDGEMENT, Judgement
from overdrive.rollout_policies.units import PPM, Ratio, Share, format_duration

Action = Literal["pause", "abort"]
"""What happens when a stage is breached or the deadline passes."""

ACTIONS: tuple[Action, ...] = ("pause", "abort")

DEFAULT_MAX_FAILURE_RATE = Ratio(50_000)
DEFAULT_SUCCESS_THRESHOLD = DEFAULT_MAX_FAILURE_RATE.complement()
DEFAULT_MIN_FINISHED = Share.absolute(1)


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a rollout: how far it reaches and what must hold before moving on."""

    name: str
    share: Share
    """Share of the eligible fleet admitted by the end of this stage (as written)."""
    soak: timedelta = timedelta(0)
    """Minimum time the stage runs, from when it started, before it may advance."""
    min_finished: Share = DEFAULT_MIN_FINISHED
    """Finished vehicles needed before judging: a count, or a percentage of those admitted."""
    success_threshold: Ratio = DEFAULT_SUCCESS_THRESHOLD
    """Fraction of finished vehicles that must have succeeded to advance."""
    max_failure_rate: Ratio = DEFAULT_MAX_FAILURE_RATE
    """Fraction of finished vehicles that failed or rolled back above which the stage breaches."""
    on_breach: Action = "pause"
    manual_approval: bool = False
    """An operator must approve leaving this stage (advancing, or completing on the last)."""
    reach: Share | None = field(default=None, compare=False, repr=False)
    """The largest share of this and every earlier stage; set by :class:`Policy`."""

    @property
    def cumulative(self) -> Share:
        """What admission at this stage is computed from (``reach``, or ``share`` standalone)."""
        return self.reach if self.reach is not None else self.share

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "share": self.share.to_json(),
            "soak": format_duration(self.soak),
            "min_finished": self.min_finished.to_json(),
            "success_threshold": str(self.success_threshold),
            "max_failure_rate": str(self.max_failure_rate),
            "on_breach": self.on_breach,
            "manual_approval": self.manual_approval,
        }


@dataclass(frozen=True, slots=True)
class Policy:
    """A rollout policy: ordered stages, maintenance windows and an optional deadline."""

    stages: tuple[Stage, ...]
    name: str | None = None
    description: str | None = None
    maintenance_windows: tuple[MaintenanceWindow, ...] = ()
    deadline: timedelta | None = None
    """Time from the campaign's start after which it may not advance any more."""
    on_deadline: Action = "pause"
    allow_partial: bool = False
    """Whether the last stage may stop short of 100% of the eligible fleet."""
    judge: Judgement = DEFAULT_JUDGEMENT
    """The sequential test every group (hardware id, cohort) is judged by at every stage."""

    def __post_init__(self) -> None:
        # Admission never shrinks: each stage reaches at least as far as every earlier one.
        reach = Share()
        stages = []
        for stage in self.stages:
            reach = reach.join(stage.share)
            stages.append(replace(stage, reach=reach))
        object.__setattr__(self, "stages", tuple(stages))

    @property
    def full_coverage(self) -> bool:
        """Does the last stage admit the whole eligible fleet?"""
        return self.stages[-1].cumulative.ppm == PPM

    def to_dict(self) -> dict[str, Any]:
        """The normalised policy document (JSON-serialisable; ``parse_policy`` reads it back)."""
        document: dict[str, Any] = {}
        if self.name is not None:
            document["name"] = self.name
        if self.description is not None:
            document["description"] = self.description
        document["stages"] = [stage.to_dict() for stage in self.stages]
        document["maintenance_windows"] = [w.to_dict() for w in self.maintenance_windows]
        if self.deadline is not None:
            document["deadline"] = format_duration(self.deadline)
            document["on_deadline"] = self.on_deadline
        document["allow_partial"] = self.allow_partial
        document["judge"] = self.judge.to_dict()
        return document

    def summary(self) -> str:
        """One line: ``4 stages: 1% → 10% → 50% → 100%``."""
        shares = " → ".join(str(stage.share) for stage in self.stages)
        noun = "stage" if len(self.stages) == 1 else "stages"
        return f"{len(self.stages)} {noun}: {shares}"

"""The inputs and outputs of a simulation: :class:`SimulationConfig` and :class:`SimulationResult`.

Plain frozen dataclasses. The config validates itself on construction (every field maps to an
``overdrive simulate`` option, and a bad value raises :class:`SimulationError` naming it), and
the result's ``to_dict()`` is what ``--json`` prints. Times are seconds from the campaign start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from typing import Any, Literal

from overdrive.errors import UsageError
from overdrive.rollout_policies.model import Policy

MiB = 1 << 20
DAY = 86_400
INF = math.inf

Outcome = Literal["completed", "paused", "aborted", "running"]
"""How a simulated campaign ended: ``running`` means it was still running at ``max_time``."""

STATES = ("idle", "admitted", "installing", "succeeded", "failed")
"""A vehicle's states, as plotted: not admitted; admitted but not yet installing (it has not
polled since, or is offline, or waits for a maintenance window); installing (download, install,
reboot, health check); committed the release; failed and rolled back."""


class SimulationError(UsageError):
    """A simulation was asked for something it cannot run (the message is one line)."""


@dataclass(frozen=True, slots=True)
class Spread:
    """A duration in seconds drawn uniformly from ``[mean - spread, mean + spread]``."""

    mean: float
    spread: float = 0.0

    def at(self, u: float) -> float:
        """The duration at quantile ``u`` in ``[0, 1)``."""
        return self.mean + self.spread * (2.0 * u - 1.0)

    def __str__(self) -> str:
        text = format_seconds(self.mean)
        return f"{text}±{format_seconds(self.spread)}" if self.spread else text


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationConfig:
    """Everything a simulation depends on; validated on construction (:class:`SimulationError`)."""

    policy: Policy
    vehicles: int
    fleet: tuple[tuple[str, Fraction], ...] = (("ecu-a", Fraction(1)),)
    """Hardware ids and the fraction of the fleet each holds (summing to exactly 1)."""
    cohorts: tuple[tuple[str, tuple[tuple[str, Fraction], ...]], ...] = ()
    """Other dimensions of the fleet (``region``, ``model``, …): each a name and its values'
    fractions, drawn independently of the hardware id."""
    fail_rate: float = 0.0
    """Probability that a vehicle installing the release fails and rolls back."""
    fail_on: tuple[str, ...] = ()
    """Groups the release is bad for (``fail_rate`` applies only there): a hardware id, or
    ``DIMENSION=VALUE`` of a cohort; a vehicle in any of them fails. Empty: every vehicle."""
    poll_interval: float = 900.0
    install_time: Spread = Spread(1200.0, 300.0)
    """Download + install + reboot + health check, from receiving the assignment to reporting."""
    offline_rate: float = 0.0
    """Fraction of vehicles offline when the campaign starts."""
    offline_for: Spread | None = Spread(DAY, DAY)
    """How long an offline vehicle stays offline; ``None``: it never comes back."""
    tick: int = 60
    """Seconds between evaluator runs."""
    auto_approve_after: float | None = 0.0
    """A stage needing manual approval is approved this long after it started; ``None``: never."""
    full_size: int = 200 * MiB
    delta_size: int = 20 * MiB
    delta_share: float = 0.8
    """Fraction of vehicles that get a delta (their installed image has one), the rest a full."""
    start: datetime = datetime(2025, 1, 6, 9, 0)
    """When the campaign starts, in the vehicles' local time (a Monday morning by default)."""
    max_time: float = 30.0 * DAY
    """Stop a campaign still running after this long (outcome ``running``)."""
    seed: int = 0
    skip_idle_ticks: bool = True
    """Skip evaluator runs that cannot decide differently from the last hold (nothing the engine
    looks at changed). ``False`` runs every tick: slower, and the same result (a test checks)."""

    def __post_init__(self) -> None:
        if isinstance(self.vehicles, bool) or not 1 <= self.vehicles <= 10_000_000:
            raise SimulationError(f"--vehicles: must be 1 to 10,000,000, got {self.vehicles}")
        _check_fleet(self.fleet)
        names = [name for name, _values in self.cohorts]
        if len(set(names)) != len(names) or "hardware_id" in names:
            raise SimulationError("--fleet: a dimension is given twice")
        for _name, values in self.cohorts:
            _check_fleet(values)
        known = self.groups()
        for spec in self.fail_on:
            if self.fail_group(spec) not in known:
                shown = ", ".join(g if d == "hardware_id" else f"{d}={g}" for d, g in known)
                raise SimulationError(f"--fail-on: {spec!r} is not a group of the fleet ({shown})")
        for name in ("fail_rate", "offline_rate", "delta_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SimulationError(f"{_option(name)}: must be between 0 and 1, got {value}")
        if not self.poll_interval > 0:
            raise SimulationError("--poll-interval: must be longer than 0")
        if self.tick < 1:
            raise SimulationError("--tick: must be at least 1s")
        if not self.max_time > 0:
            raise SimulationError("--max-time: must be longer than 0")
        for name in ("install_time", "offline_for"):
            spread = getattr(self, name)
            if spread is not None and not 0 <= spread.spread <= spread.mean:
                raise SimulationError(
                    f"{_option(name)}: {spread}: the ± range must be at least 0 and at most the "
                    "duration (durations cannot go below 0)"
                )
        if self.auto_approve_after is not None and self.auto_approve_after < 0:
            raise SimulationError("--auto-approve-after: must not be negative")
        if self.full_size < 0 or self.delta_size < 0:
            raise SimulationError("--full-size, --delta-size: must not be negative")

    def groups(self) -> list[tuple[str, str]]:
        """Every ``(dimension, value)`` of the fleet, hardware ids first."""
        result = [("hardware_id", hw) for hw, _share in self.fleet]
        for name, values in self.cohorts:
            result.extend((name, value) for value, _share in values)
        return result

    @staticmethod
    def fail_group(spec: str) -> tuple[str, str]:
        """``ecu-b`` → ``("hardware_id", "ecu-b")``; ``region=eu`` → ``("region", "eu")``."""
        name, sep, value = spec.partition("=")
        return (name, value) if sep else ("hardware_id", spec)

    @property
    def failing_groups(self) -> tuple[tuple[str, str], ...]:
        """The groups the release fails on (at ``fail_rate``); empty if it never fails."""
        if self.fail_rate == 0:
            return ()
        if not self.fail_on:
            return tuple(("hardware_id", hw) for hw, _share in self.fleet)
        return tuple(self.fail_group(spec) for spec in self.fail_on)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "vehicles": self.vehicles,
            "fleet": {hw: float(share) for hw, share in self.fleet},
            "cohorts": {
                name: {value: float(share) for value, share in values}
                for name, values in self.cohorts
            },
            "fail_rate": self.fail_rate,
            "fail_on": list(self.fail_on),
            "poll_interval": self.poll_interval,
            "install_time": [self.install_time.mean, self.install_time.spread],
            "offline_rate": self.offline_rate,
            "offline_for": None
            if self.offline_for is None
            else [self.offline_for.mean, self.offline_for.spread],
            "tick": self.tick,
            "auto_approve_after": self.auto_approve_after,
            "full_size": self.full_size,
            "delta_size": self.delta_size,
            "delta_share": self.delta_share,
            "start": self.start.isoformat(timespec="seconds"),
            "max_time": self.max_time,
            "seed": self.seed,
        }


@dataclass(frozen=True, slots=True)
class StageRecord:
    """One stage as the simulated campaign went through it (times in seconds from the start)."""

    index: int
    name: str
    started_at: int
    target: int
    """Vehicles admitted by the end of this stage (cumulative, the exact variant)."""
    admitted: int
    """Vehicles this stage newly admitted."""
    ended_at: int | None = None
    ended_by: str | None = None
    """``advance``, ``pause``, ``abort`` or ``complete``; ``None`` if still running at the end."""
    reason: str | None = None
    finished: int = 0
    """Finished vehicles (whole campaign) when the stage ended."""
    failures: int = 0
    """Of those, failed or rolled back."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "stage": self.name,
            "started_at": self.started_at,
            "target": self.target,
            "admitted": self.admitted,
            "ended_at": self.ended_at,
            "ended_by": self.ended_by,
            "reason": self.reason,
            "finished": self.finished,
            "failures": self.failures,
        }


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """A decision of the engine: every non-hold, and each hold that waits for something new."""

    at: int
    kind: str
    stage: str
    reason: str
    waiting_for: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "kind": self.kind,
            "stage": self.stage,
            "reason": self.reason,
            "waiting_for": list(self.waiting_for),
        }


@dataclass(frozen=True, slots=True)
class HardwareCounts:
    """What happened on one hardware id."""

    vehicles: int
    admitted: int
    started: int
    succeeded: int
    rolled_back: int

    def to_dict(self) -> dict[str, int]:
        return {
            "vehicles": self.vehicles,
            "admitted": self.admitted,
            "started": self.started,
            "succeeded": self.succeeded,
            "rolled_back": self.rolled_back,
        }


@dataclass(frozen=True, slots=True)
class GroupExposure:
    """What happened in one group (a hardware id, or one value of a cohort dimension)."""

    dimension: str
    value: str
    vehicles: int
    admitted: int
    started: int
    succeeded: int
    rolled_back: int
    exposed: int
    """Vehicles of the group the release harmed: rolled back, or committed it while it is bad
    for them (``fail_on``)."""
    judged: bool
    """Whether the policy's sequential test judged this group."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "value": self.value,
            "vehicles": self.vehicles,
            "admitted": self.admitted,
            "started": self.started,
            "succeeded": self.succeeded,
            "rolled_back": self.rolled_back,
            "exposed": self.exposed,
            "judged": self.judged,
        }


Sample = tuple[float, int, int, int, int, int]
"""``(time, idle, admitted, installing, succeeded, failed)``, in :data:`STATES` order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationResult:
    """The figures of one simulated campaign; times are seconds from its start."""

    config: SimulationConfig
    outcome: Outcome
    reason: str
    """The reason of the last decision (why it completed, paused, aborted, or what it waits for)."""
    stage_index: int
    """The stage the campaign ended in."""
    halted_at: int | None
    """When a pause or abort stopped the campaign (a breach, or the deadline)."""
    completed_at: int | None
    first_failure_at: float | None
    """When the first rollback was reported (the engine can react at its next tick)."""
    ended_at: float
    """When the simulation ended: the last report after a halt or completion, or ``max_time``."""
    eligible: int
    admitted: int
    started: int
    """Vehicles that received the assignment and installed (whatever the outcome)."""
    succeeded: int
    rolled_back: int
    exposed: int
    """The blast radius: vehicles that rolled back, plus those that committed the release on a
    hardware id it is bad for (``fail_on``). Includes installs that were in flight at the halt."""
    in_flight_at_halt: int
    """Vehicles already installing when the campaign halted (they finish; counted above)."""
    never_started: int
    """Admitted vehicles that never received the assignment (halted before their next poll)."""
    offline: int
    """Vehicles offline at the start."""
    bytes_shipped: int
    full_downloads: int
    delta_downloads: int
    hardware: dict[str, HardwareCounts]
    groups: tuple[GroupExposure, ...]
    """Every hardware id and cohort value, with its exposure."""
    stages: tuple[StageRecord, ...]
    decisions: tuple[DecisionRecord, ...]
    series: tuple[Sample, ...] = field(repr=False)
    """Vehicles per state over time (one sample per ``tick`` with activity, at its end)."""

    def to_dict(self, *, series: bool = False) -> dict[str, Any]:
        """The figures as JSON-ready data (``series`` adds the per-state time series)."""
        data: dict[str, Any] = {
            "policy": self.config.policy.name,
            "outcome": self.outcome,
            "reason": self.reason,
            "stage": self.config.policy.stages[self.stage_index].name,
            "exposed": self.exposed,
            "rolled_back": self.rolled_back,
            "halted_at": self.halted_at,
            "completed_at": self.completed_at,
            "bytes_shipped": self.bytes_shipped,
            "exposed_share": self.exposed / self.eligible,
            "first_failure_at": None
            if self.first_failure_at is None
            else round(self.first_failure_at, 3),
            "ended_at": round(self.ended_at, 3),
            "eligible": self.eligible,
            "admitted": self.admitted,
            "started": self.started,
            "succeeded": self.succeeded,
            "in_flight_at_halt": self.in_flight_at_halt,
            "never_started": self.never_started,
            "offline": self.offline,
            "full_downloads": self.full_downloads,
            "delta_downloads": self.delta_downloads,
            "hardware": {hw: counts.to_dict() for hw, counts in self.hardware.items()},
            "groups": [group.to_dict() for group in self.groups],
            "timeline": [stage.to_dict() for stage in self.stages],
            "decisions": [decision.to_dict() for decision in self.decisions],
            "config": self.config.to_dict(),
        }
        if series:
            data["series"] = {
                "states": list(STATES),
                "samples": [[round(s[0], 3), *s[1:]] for s in self.series],
            }
        return data


def _check_fleet(fleet: tuple[tuple[str, Fraction], ...]) -> None:
    if not fleet:
        raise SimulationError("--fleet: give at least one hardware id")
    names = [hw for hw, _share in fleet]
    if len(set(names)) != len(names):
        raise SimulationError(f"--fleet: a value appears twice ({', '.join(names)})")
    if any(share <= 0 for _hw, share in fleet):
        raise SimulationError("--fleet: every fraction must be greater than 0")
    total = sum((share for _hw, share in fleet), Fraction(0))
    if total != 1:
        raise SimulationError(f"--fleet: fractions must sum to 1, they sum to {float(total):g}")


def _option(name: str) -> str:
    """The command-line option that sets config field ``name``."""
    return "--" + name.replace("_", "-")


def format_seconds(seconds: float) -> str:
    """Simulated seconds as ``1d2h3m`` (rounded to the second; ``0s`` for none, ``never``)."""
    if seconds == INF:
        return "never"
    total = round(seconds)
    if total == 0:
        return "0s"
    parts = []
    for unit, size in (("d", DAY), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)

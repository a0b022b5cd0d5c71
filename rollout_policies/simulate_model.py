"""The inputs and outputs of a simulation: :class:`SimulationConfig` and :class:`SimulationResult`.

Plain frozen dataclasses, with the fleet's vehicle models (:class:`VehicleModel`, each a list of
:class:`Ecu`) for multi-ECU fleets. The config validates itself on construction (every field maps to an
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
DEFAULT_FLEET: tuple[tuple[str, Fraction], ...] = (("ecu-a", Fraction(1)),)

Outcome = Literal["completed", "paused", "aborted", "running"]
"""How a simulated campaign ended: ``running`` means it was still running at ``max_time``."""

STATES = ("idle", "admitted", "installing", "succeeded", "failed")
"""A vehicle's states, as plotted: not admitted; admitted but not yet installing (it has not
polled since, or is offline, or waits for a maintenance window); installing (download, install,
reboot, health check); committed the release; failed and rolled back."""


class SimulationError(UsageError):
    """A simulation was asked for something it cannot run (the message is one line)."""


MODEL = "model"
"""The cohort dimension whose values are the vehicle models of a multi-ECU fleet."""
MAX_MODELS = 1000
MAX_ECUS = 256
"""Per vehicle model: a car has dozens of ECUs, not thousands."""


@dataclass(frozen=True, slots=True)
class Ecu:
    """One ECU of a vehicle model: its hardware id, and how likely the release's image for that
    hardware id fails on it (install, trial boot or health check)."""

    hardware_id: str
    fail_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"hardware_id": self.hardware_id, "fail_rate": self.fail_rate}


@dataclass(frozen=True, slots=True)
class VehicleModel:
    """A kind of vehicle (a model, or a segment of the fleet): its share of the fleet and its
    ECUs in install order. The release is one software set over them: the vehicle is updated
    only if every ECU succeeds, and the first ECU that fails rolls the whole vehicle back."""

    name: str
    share: Fraction
    ecus: tuple[Ecu, ...]

    @property
    def hardware_ids(self) -> tuple[str, ...]:
        return tuple(ecu.hardware_id for ecu in self.ecus)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "share": float(self.share),
            "ecus": [ecu.to_dict() for ecu in self.ecus],
        }


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
    fleet: tuple[tuple[str, Fraction], ...] = DEFAULT_FLEET
    """Hardware ids and the fraction of the fleet each holds (summing to exactly 1): a fleet of
    single-ECU vehicles. Left at its default when ``models`` is given."""
    models: tuple[VehicleModel, ...] = ()
    """A multi-ECU fleet (``--fleet-file``): vehicle models, their fractions of the fleet
    (summing to exactly 1) and each one's ECUs. Empty: the single-ECU fleet of ``fleet``. The
    models are also the values of the cohort dimension ``model``."""
    cohorts: tuple[tuple[str, tuple[tuple[str, Fraction], ...]], ...] = ()
    """Other dimensions of the fleet (``region``, ``model``, …): each a name and its values'
    fractions, drawn independently of the hardware id."""
    fail_rate: float = 0.0
    """Probability that a vehicle installing the release fails and rolls back; in a multi-ECU
    fleet, that each ECU of a failing group fails (and rolls its vehicle back)."""
    fail_on: tuple[str, ...] = ()
    """Groups the release is bad for (``fail_rate`` applies only there): a hardware id (its
    ECUs), or ``DIMENSION=VALUE`` of a cohort (every ECU of its vehicles); a vehicle in any of
    them fails. Empty: every vehicle."""
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
        if self.models:
            if self.fleet != DEFAULT_FLEET:
                raise SimulationError(
                    "--fleet: the hardware ids come from --fleet-file's models; give --fleet "
                    "only DIMENSION: cohorts with it"
                )
            _check_models(self.models)
        names = [name for name, _values in self.cohorts]
        if len(set(names)) != len(names) or "hardware_id" in names:
            raise SimulationError("--fleet: a dimension is given twice")
        if self.models and MODEL in names:
            raise SimulationError(
                f"--fleet: dimension {MODEL!r} is given by --fleet-file's models; "
                "name the cohort otherwise"
            )
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

    @property
    def multi_ecu(self) -> bool:
        """Is the fleet described by vehicle models (``--fleet-file``)?"""
        return bool(self.models)

    @property
    def vehicle_types(self) -> tuple[VehicleModel, ...]:
        """The kinds of vehicle the fleet is dealt in: the models, or for a single-ECU fleet one
        per hardware id (named by it, one ECU that fails only at ``fail_rate``)."""
        if self.models:
            return self.models
        return tuple(VehicleModel(hw, share, (Ecu(hw),)) for hw, share in self.fleet)

    @property
    def hardware_ids(self) -> tuple[str, ...]:
        """Every hardware id of the fleet, in the order they first appear."""
        if not self.models:
            return tuple(hw for hw, _share in self.fleet)
        return tuple(dict.fromkeys(hw for model in self.models for hw in model.hardware_ids))

    def dimensions(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The cohort dimensions besides hardware id and their values: ``model`` (the vehicle
        models of a multi-ECU fleet), then the ``cohorts``."""
        result = [(name, tuple(value for value, _share in values)) for name, values in self.cohorts]
        if self.models:
            result.insert(0, (MODEL, tuple(model.name for model in self.models)))
        return tuple(result)

    def groups(self) -> list[tuple[str, str]]:
        """Every ``(dimension, value)`` of the fleet, hardware ids first."""
        result = [("hardware_id", hw) for hw in self.hardware_ids]
        for name, values in self.dimensions():
            result.extend((name, value) for value in values)
        return result

    def hardware_shares(self) -> tuple[tuple[str, Fraction], ...]:
        """Per hardware id, the fraction of the fleet's vehicles that have an ECU of it."""
        if not self.models:
            return self.fleet
        shares = dict.fromkeys(self.hardware_ids, Fraction(0))
        for model in self.models:
            for hw in model.hardware_ids:
                shares[hw] += model.share
        return tuple(shares.items())

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
            return tuple(("hardware_id", hw) for hw in self.hardware_ids)
        return tuple(self.fail_group(spec) for spec in self.fail_on)

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "vehicles": self.vehicles,
            "fleet": {hw: float(share) for hw, share in self.hardware_shares()},
            "models": [model.to_dict() for model in self.models],
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
    """What happened on one hardware id: counts of the vehicles that have an ECU of it."""

    vehicles: int
    admitted: int
    started: int
    succeeded: int
    """Vehicles updated: every ECU of their software set succeeded."""
    rolled_back: int
    """Vehicles rolled back, whichever of their ECUs failed."""
    rollbacks_caused: int
    """Rollbacks whose failing ECU is of this hardware id: the failures the campaign judges
    against it (a single-ECU fleet: ``rolled_back``)."""

    def to_dict(self) -> dict[str, int]:
        return {
            "vehicles": self.vehicles,
            "admitted": self.admitted,
            "started": self.started,
            "succeeded": self.succeeded,
            "rolled_back": self.rolled_back,
            "rollbacks_caused": self.rollbacks_caused,
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


def _check_fleet(fleet: tuple[tuple[str, Fraction], ...], option: str = "--fleet") -> None:
    if not fleet:
        raise SimulationError(f"{option}: give at least one value")
    names = [hw for hw, _share in fleet]
    if len(set(names)) != len(names):
        raise SimulationError(f"{option}: a value appears twice ({', '.join(names)})")
    if any(share <= 0 for _hw, share in fleet):
        raise SimulationError(f"{option}: every fraction must be greater than 0")
    total = sum((share for _hw, share in fleet), Fraction(0))
    if total != 1:
        raise SimulationError(f"{option}: fractions must sum to 1, they sum to {float(total):g}")


def _check_models(models: tuple[VehicleModel, ...]) -> None:
    """The rules of a multi-ECU fleet (the fleet file's reader checks the same, naming fields)."""
    if len(models) > MAX_MODELS:
        raise SimulationError(f"--fleet-file: at most {MAX_MODELS} models, got {len(models)}")
    _check_fleet(tuple((model.name, model.share) for model in models), "--fleet-file: models")
    for model in models:
        where = f"--fleet-file: model {model.name!r}"
        if not 1 <= len(model.ecus) <= MAX_ECUS:
            raise SimulationError(f"{where}: give 1 to {MAX_ECUS} ECUs, got {len(model.ecus)}")
        seen: set[str] = set()
        for ecu in model.ecus:
            if ecu.hardware_id in seen:
                raise SimulationError(
                    f"{where}: hardware id {ecu.hardware_id!r} is given twice (a software set "
                    "has one image per hardware id)"
                )
            seen.add(ecu.hardware_id)
            if not 0.0 <= ecu.fail_rate <= 1.0:
                raise SimulationError(
                    f"{where}: {ecu.hardware_id}'s fail_rate must be between 0 and 1, "
                    f"got {ecu.fail_rate}"
                )


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

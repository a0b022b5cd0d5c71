"""Dry-run a rollout policy: the real engine over a synthetic fleet, in accelerated time.

:func:`simulate` plays one campaign the way the server runs it (``server/campaigns.py``) against
vehicles that poll, install and report the way the client does (``client/vehicle.py``):

- **The campaign** covers the whole synthetic fleet (every hardware id in one campaign, as the
  server's one-campaign-many-releases model does). Starting it admits the first stage; admission
  is the exact variant: vehicles ordered by ``(bucket, vehicle_id)``, the first
  :func:`~overdrive.rollout_policies.cohort.admission_target` of them admitted.
- **The evaluator** ticks every ``tick`` seconds and applies :func:`~overdrive.rollout_policies.engine.decide`:
  *advance* admits the next stage, *pause* and *abort* stop handing out assignments (vehicles
  already installing finish and report), *complete* ends the campaign, *hold* waits.
- **A vehicle** polls every ``poll_interval`` from a random phase, so it learns of its admission
  at its first poll after it, and gets the assignment only while the campaign is running (and,
  if the policy has maintenance windows, only at a poll inside one). It then installs for a
  duration drawn from ``install_time`` and reports success, or a rollback with probability
  ``fail_rate`` on the hardware ids the release is bad for. Offline vehicles start polling only
  when they come back.
- **A multi-ECU vehicle** (``models``, :mod:`~overdrive.rollout_policies.simulate_ecus`) installs
  one software set: it is updated only if every ECU succeeds, and the first ECU that fails rolls
  the whole vehicle back. The campaign counts the vehicle once, and judges the rollback against
  the hardware id of the ECU that caused it: for each hardware id, *succeeded* is its vehicles
  that were updated and *failures* the rollbacks it caused (a vehicle rolled back by another
  ECU is neither). A single-ECU fleet is the case of one ECU per vehicle, drawn exactly as before.

Time is an event queue (:mod:`heapq`), not a clock loop: each admitted vehicle costs two events
(its first useful poll and its finish), and evaluator ticks in which nothing the engine looks at
can have changed are skipped (the engine would return the same hold), so 100,000 vehicles take
one to two seconds. The module is pure: no I/O, no wall clock; every random draw comes from
``random.Random(seed)`` in a fixed order, so a seed always gives the same result, and changing a
rate or duration keeps every vehicle's other draws (common random numbers: runs compare fairly).
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from fractions import Fraction

from overdrive.maintenance import MaintenanceWindow
from overdrive.rollout_policies.cohort import admission_target, bucket
from overdrive.rollout_policies.engine import Decision, StageState, decide
from overdrive.rollout_policies.groups import HARDWARE_ID, GroupCounts
from overdrive.rollout_policies.simulate_ecus import set_failure
from overdrive.rollout_policies.simulate_model import (
    DAY,
    INF,
    STATES,
    DecisionRecord,
    Ecu,
    GroupExposure,
    HardwareCounts,
    MiB,
    Outcome,
    Sample,
    SimulationConfig,
    SimulationError,
    SimulationResult,
    Spread,
    StageRecord,
    VehicleModel,
    format_seconds,
)

__all__ = [
    "DAY",
    "STATES",
    "DecisionRecord",
    "Ecu",
    "Fleet",
    "GroupExposure",
    "HardwareCounts",
    "MiB",
    "Outcome",
    "Sample",
    "SimulationConfig",
    "SimulationError",
    "SimulationResult",
    "Spread",
    "StageRecord",
    "VehicleModel",
    "WindowCalendar",
    "build_fleet",
    "format_seconds",
    "simulate",
]

_IDLE, _ADMITTED, _INSTALLING, _SUCCEEDED, _FAILED = range(5)
_FINISH, _POLL = 0, 1  # event kinds; at equal times a finish is handled before a poll


# ------------------------------------------------------------------------------ the fleet


@dataclass(frozen=True, slots=True)
class Fleet:
    """The synthetic fleet, one entry per vehicle in each list (index = vehicle number)."""

    ids: list[str]
    model: list[int]
    """The vehicle's kind: index into ``config.vehicle_types`` (a single-ECU fleet: into
    ``config.fleet``, one kind per hardware id)."""
    cohorts: list[list[int]]
    """Per cohort dimension of ``config.cohorts``: each vehicle's value (index)."""
    first_poll: list[float]
    """The vehicle's first poll; it polls every ``poll_interval`` from then (``inf``: never)."""
    install: list[float]
    fails: list[bool]
    cause: list[int]
    """The ECU (index into its kind's ``ecus``) whose failure rolls the vehicle back; ``-1``
    when the vehicle's update succeeds."""
    delta: list[bool]
    order: list[int]
    """Vehicle numbers in admission order: by ``(bucket, vehicle_id)`` for the campaign."""
    offline: int


def build_fleet(config: SimulationConfig) -> Fleet:
    """Draw the fleet for ``config``: hardware ids (or vehicle models) in exact proportions,
    then per vehicle (in vehicle order, always the same draws whatever the rates) its poll
    phase, install time, failure, bundle kind and whether and how long it is offline."""
    rng = random.Random(config.seed)
    n = config.vehicles
    kinds = tuple((kind.name, kind.share) for kind in config.vehicle_types)
    model = [index for index, count in enumerate(_apportion(kinds, n)) for _ in range(count)]
    rng.shuffle(model)
    width = max(6, len(str(n - 1)))
    ids = [f"veh-{i:0{width}d}" for i in range(n)]
    first_poll, install, u_fails, delta = [0.0] * n, [0.0] * n, [1.0] * n, [False] * n
    offline = 0
    draw, period = rng.random, config.poll_interval
    for i in range(n):
        phase, u_install, u_fail, u_delta = draw(), draw(), draw(), draw()
        u_offline, u_back = draw(), draw()
        install[i] = config.install_time.at(u_install)
        u_fails[i] = u_fail
        delta[i] = u_delta < config.delta_share
        if u_offline < config.offline_rate:
            offline += 1
            back = config.offline_for
            first_poll[i] = INF if back is None else back.at(u_back)
        else:
            first_poll[i] = phase * period
    # Cohorts are drawn after every other draw, so adding one keeps the rest of the fleet.
    cohorts = []
    for _name, values in config.cohorts:
        column = [index for index, count in enumerate(_apportion(values, n)) for _ in range(count)]
        rng.shuffle(column)
        cohorts.append(column)
    cause = _causes(config, model, cohorts, u_fails)
    fails = [c >= 0 for c in cause]
    campaign = f"simulation-{config.seed}"
    order = sorted(range(n), key=lambda i: (bucket(campaign, ids[i]), ids[i]))
    return Fleet(ids, model, cohorts, first_poll, install, fails, cause, delta, order, offline)


def _causes(
    config: SimulationConfig, model: list[int], cohorts: list[list[int]], u_first: list[float]
) -> list[int]:
    """Per vehicle: the ECU whose failure rolls it back (:func:`set_failure`), ``-1`` if none.

    An ECU fails at the larger of its own ``fail_rate`` and ``config.fail_rate`` if it is of a
    failing hardware id or its vehicle is in a failing cohort. The first ECU of every vehicle
    uses the vehicle's failure draw; the others draw from a stream of their own (seeded from
    the seed, in vehicle order), so a single-ECU fleet draws exactly as it always did and the
    ECUs change none of the fleet's other draws.
    """
    failing = set(config.failing_groups)
    rate = config.fail_rate
    kinds = config.vehicle_types
    in_group = _bad_vehicles(config, model, cohorts, {g for g in failing if g[0] != HARDWARE_ID})

    def rates(ecus: tuple[Ecu, ...], everywhere: bool) -> tuple[float, ...]:
        return tuple(
            max(ecu.fail_rate, rate)
            if everywhere or (HARDWARE_ID, ecu.hardware_id) in failing
            else ecu.fail_rate
            for ecu in ecus
        )

    outside = [rates(kind.ecus, False) for kind in kinds]
    inside = [rates(kind.ecus, True) for kind in kinds]
    if all(len(kind.ecus) == 1 for kind in kinds):
        return [
            set_failure((u,), (inside if in_group[v] else outside)[model[v]])
            for v, u in enumerate(u_first)
        ]
    extra = random.Random(f"overdrive-simulate-ecus-{config.seed}").random
    result = []
    for v, u in enumerate(u_first):
        kind = model[v]
        draws = [u, *(extra() for _ in range(len(kinds[kind].ecus) - 1))]
        result.append(set_failure(draws, (inside if in_group[v] else outside)[kind]))
    return result


def _bad_vehicles(
    config: SimulationConfig,
    model: list[int],
    cohorts: list[list[int]],
    failing: set[tuple[str, str]],
) -> list[bool]:
    """Per vehicle: is it in one of the ``failing`` groups (has an ECU of a failing hardware
    id, or is of a failing model or cohort value)?"""
    kind_bad = [
        any((HARDWARE_ID, hw) in failing for hw in kind.hardware_ids)
        for kind in config.vehicle_types
    ]
    bad = [kind_bad[m] for m in model]
    for (name, values), column in zip(
        config.dimensions(), _columns(config, model, cohorts), strict=True
    ):
        value_bad = [(name, value) in failing for value in values]
        if any(value_bad):
            bad = [b or value_bad[v] for b, v in zip(bad, column, strict=True)]
    return bad


def _columns(
    config: SimulationConfig, model: list[int], cohorts: list[list[int]]
) -> list[list[int]]:
    """Each vehicle's value (index) per dimension of ``config.dimensions()``."""
    return [model, *cohorts] if config.multi_ecu else cohorts


def _apportion(shares: tuple[tuple[str, Fraction], ...], n: int) -> list[int]:
    """Vehicles per value: the fractions of ``n``, remainders to the largest parts."""
    exact = [share * n for _hw, share in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


# ------------------------------------------------------------------------------ the run


def simulate(config: SimulationConfig) -> SimulationResult:
    """Run the campaign of ``config`` to its end (or ``max_time``) and return its figures."""
    return _Run(config, build_fleet(config)).run()


class _Run:
    """One simulated campaign: the event queue, the vehicles' states and the campaign's."""

    def __init__(self, config: SimulationConfig, fleet: Fleet) -> None:
        self.config, self.fleet, self.policy = config, fleet, config.policy
        n = config.vehicles
        self.state = bytearray(n)
        self.counts = [n, 0, 0, 0, 0]
        self.queue: list[tuple[float, int, int]] = []
        self.running = True
        self.stage_index = 0
        self.stage_started = 0
        self.admitted = 0
        self.last_tick = 0
        self.next_tick = config.tick
        self.stages: list[StageRecord] = []
        self.decisions: list[DecisionRecord] = []
        self.last_hold: tuple[int, tuple[str, ...]] | None = None
        self.series: list[Sample] = []
        self.outcome: Outcome = "running"
        self.reason = "not evaluated yet"
        self.halted_at: int | None = None
        self.completed_at: int | None = None
        self.first_failure_at: float | None = None
        self.in_flight_at_halt = 0
        self.bytes = self.full = self.deltas = 0
        self.windows = WindowCalendar(self.policy.maintenance_windows, config)
        self.judged = _judged_groups(config)
        self.member = _memberships(config, fleet, self.judged)
        self.ecus = [len(kind.ecus) for kind in config.vehicle_types]
        self.g_admitted = [0] * len(self.judged)
        self.g_succeeded = [0] * len(self.judged)
        self.g_failed = [0] * len(self.judged)
        self.g_eligible = [0] * len(self.judged)
        for groups in self.member:
            for g in groups:
                self.g_eligible[g] += 1
        deadline = self.policy.deadline
        self.deadline = INF if deadline is None else deadline.total_seconds()

    def run(self) -> SimulationResult:
        self._admit(0)
        self._sample(0.0)
        queue, now = self.queue, 0.0
        while True:
            next_event = queue[0][0] if queue else INF
            next_tick = self.next_tick if self.running else INF
            if next_event == INF and next_tick == INF:
                break
            if self.running and min(next_event, next_tick) > self.config.max_time:
                now = self.config.max_time
                break
            if next_event <= next_tick:
                now, kind, vehicle = heapq.heappop(queue)
                if kind == _POLL:
                    self._poll(now, vehicle)
                else:
                    self._finish(now, vehicle)
                self._sample(now)
            else:
                now = next_tick
                self._tick(self.next_tick)
        return self._result(now)

    # -- the server side

    def _admit(self, now: int) -> None:
        """Admit up to the current stage's target, in admission order; schedule their polls."""
        stage = self.policy.stages[self.stage_index]
        target = admission_target(stage, self.config.vehicles)
        fleet, state, queue, period = self.fleet, self.state, self.queue, self.config.poll_interval
        new = fleet.order[self.admitted : target]
        g_admitted, member = self.g_admitted, self.member
        for vehicle in new:
            state[vehicle] = _ADMITTED
            for g in member[vehicle]:
                g_admitted[g] += 1
            first = fleet.first_poll[vehicle]
            if first < now:
                first += period * math.ceil((now - first) / period)
            if first < INF:
                heapq.heappush(queue, (first, _POLL, vehicle))
        self.counts[_IDLE] -= len(new)
        self.counts[_ADMITTED] += len(new)
        self.admitted = max(self.admitted, target)
        self.stages.append(StageRecord(self.stage_index, stage.name, now, target, len(new)))

    def _tick(self, now: int) -> None:
        """One evaluator run: judge the stage with the engine and apply the decision."""
        self.last_tick = now
        stage = self.policy.stages[self.stage_index]
        approve_at = self._approval_time()
        succeeded, failed = self.counts[_SUCCEEDED], self.counts[_FAILED]
        start = self.config.start
        decision = decide(
            self.policy,
            StageState(
                stage_index=self.stage_index,
                stage_started_at=start + timedelta(seconds=self.stage_started),
                campaign_started_at=start,
                now=start + timedelta(seconds=now),
                eligible=self.config.vehicles,
                admitted=self.admitted,
                succeeded=succeeded,
                failed=0,
                rolled_back=failed,
                in_progress=self.admitted - succeeded - failed,
                approved=approve_at <= now,
                groups=tuple(
                    GroupCounts(
                        dimension,
                        value,
                        self.g_eligible[g],
                        self.g_admitted[g],
                        self.g_succeeded[g],
                        self.g_failed[g],
                    )
                    for g, (dimension, value) in enumerate(self.judged)
                ),
            ),
        )
        self.reason = decision.reason
        self._record(now, decision)
        kind = decision.kind
        if kind == "hold":
            wake = [self.config.max_time]
            if "soak" in decision.waiting_for:
                wake.append(self.stage_started + stage.soak.total_seconds())
            if "approval" in decision.waiting_for:
                wake.append(approve_at)
            if now < self.deadline:
                wake.append(self.deadline)
            self.next_tick = now + self.config.tick
            if self.config.skip_idle_ticks:
                self.next_tick = max(self.next_tick, self._tick_at_or_after(min(wake)))
            return
        self._end_stage(now, kind, decision.reason)
        if kind == "advance":
            self.stage_index += 1
            self.stage_started = now
            self._admit(now)
            self._sample(now)
            self.next_tick = now + self.config.tick
            return
        self.running = False
        if kind == "complete":
            self.outcome, self.completed_at = "completed", now
        else:
            self.outcome, self.halted_at = ("paused" if kind == "pause" else "aborted"), now
            self.in_flight_at_halt = self.counts[_INSTALLING]

    def _approval_time(self) -> float:
        stage = self.policy.stages[self.stage_index]
        if not stage.manual_approval:
            return 0.0
        after = self.config.auto_approve_after
        return INF if after is None else self.stage_started + after

    def _tick_at_or_after(self, t: float) -> int:
        """The first evaluator run at or after ``t`` (runs are at multiples of ``tick``)."""
        return math.ceil(t / self.config.tick) * self.config.tick

    def _record(self, now: int, decision: Decision) -> None:
        if decision.kind == "hold":
            key = (decision.stage_index, decision.waiting_for)
            if key == self.last_hold:
                return
            self.last_hold = key
        else:
            self.last_hold = None
        self.decisions.append(
            DecisionRecord(
                now, decision.kind, decision.stage, decision.reason, decision.waiting_for
            )
        )

    def _end_stage(self, now: int, kind: str, reason: str) -> None:
        self.stages[-1] = replace(
            self.stages[-1],
            ended_at=now,
            ended_by=kind,
            reason=reason,
            finished=self.counts[_SUCCEEDED] + self.counts[_FAILED],
            failures=self.counts[_FAILED],
        )

    # -- the vehicle side

    def _poll(self, now: float, vehicle: int) -> None:
        """An admitted vehicle polls: it gets the assignment only while the campaign runs."""
        if not self.running:
            return  # paused, aborted or complete: no assignment; it stays admitted
        ready = self.windows.next_poll_inside(now, self.config.poll_interval)
        if ready > now:
            if ready < INF:
                heapq.heappush(self.queue, (ready, _POLL, vehicle))
            return
        fleet = self.fleet
        self.state[vehicle] = _INSTALLING
        self.counts[_ADMITTED] -= 1
        self.counts[_INSTALLING] += 1
        if fleet.delta[vehicle]:
            self.deltas += 1
            self.bytes += self.config.delta_size
        else:
            self.full += 1
            self.bytes += self.config.full_size
        heapq.heappush(self.queue, (now + fleet.install[vehicle], _FINISH, vehicle))

    def _finish(self, now: float, vehicle: int) -> None:
        """A vehicle reports its result (commit, or rollback) as soon as it has one."""
        outcome = _FAILED if self.fleet.fails[vehicle] else _SUCCEEDED
        if outcome == _FAILED and self.first_failure_at is None:
            self.first_failure_at = now
        self.state[vehicle] = outcome
        self.counts[_INSTALLING] -= 1
        self.counts[outcome] += 1
        groups = self.member[vehicle]
        if outcome == _FAILED:
            per_group = self.g_failed
            ecus = self.ecus[self.fleet.model[vehicle]]
            if ecus > 1:  # judged against the hardware id that caused it, and every cohort
                groups = (groups[self.fleet.cause[vehicle]], *groups[ecus:])
        else:
            per_group = self.g_succeeded
        for g in groups:
            per_group[g] += 1
        if self.running:  # the engine's counts changed: evaluate at the next tick
            soonest = max(self.last_tick + self.config.tick, self._tick_at_or_after(now))
            self.next_tick = min(self.next_tick, soonest)

    def _sample(self, now: float) -> None:
        """Keep the last counts of every ``tick``-long interval with activity (for the plot)."""
        series, tick, c = self.series, self.config.tick, self.counts
        sample: Sample = (now, c[0], c[1], c[2], c[3], c[4])
        if series and math.ceil(series[-1][0] / tick) == math.ceil(now / tick):
            series[-1] = sample
        else:
            series.append(sample)

    def _result(self, now: float) -> SimulationResult:
        config, fleet, state = self.config, self.fleet, self.state
        if self.outcome == "running":
            self.reason = f"still running at {format_seconds(now)}: {self.reason}"
        hardware_ids = config.hardware_ids
        kind_hw = _kind_hardware(config)
        per_hw = [[0, 0, 0, 0, 0, 0] for _ in hardware_ids]
        for vehicle, kind in enumerate(fleet.model):
            status = state[vehicle]
            for hw in kind_hw[kind]:
                counts = per_hw[hw]
                counts[0] += 1
                counts[1] += status != _IDLE
                counts[2] += status >= _INSTALLING
                counts[3] += status == _SUCCEEDED
                counts[4] += status == _FAILED
            if status == _FAILED:
                per_hw[kind_hw[kind][fleet.cause[vehicle]]][5] += 1
        # A release that fails at a background rate everywhere harms only those that fail; one
        # that is bad for some groups harms every vehicle there that installed it.
        targeted = set(config.failing_groups) if config.fail_on else set()
        bad = _bad_vehicles(config, fleet.model, fleet.cohorts, targeted)
        harmed = [
            (status >= _INSTALLING) if bad[v] else status == _FAILED
            for v, status in enumerate(state)
        ]
        exposed = sum(harmed)
        groups = _exposures(config, fleet, state, harmed, set(self.judged))
        return SimulationResult(
            config=config,
            outcome=self.outcome,
            reason=self.reason,
            stage_index=self.stage_index,
            halted_at=self.halted_at,
            completed_at=self.completed_at,
            first_failure_at=self.first_failure_at,
            ended_at=now,
            eligible=config.vehicles,
            admitted=self.admitted,
            started=self.full + self.deltas,
            succeeded=self.counts[_SUCCEEDED],
            rolled_back=self.counts[_FAILED],
            exposed=exposed,
            in_flight_at_halt=self.in_flight_at_halt,
            never_started=self.counts[_ADMITTED],
            offline=fleet.offline,
            bytes_shipped=self.bytes,
            full_downloads=self.full,
            delta_downloads=self.deltas,
            hardware={
                hardware_ids[hw]: HardwareCounts(*counts) for hw, counts in enumerate(per_hw)
            },
            groups=groups,
            stages=tuple(self.stages),
            decisions=tuple(self.decisions),
            series=tuple(self.series),
        )


def _judged_groups(config: SimulationConfig) -> list[tuple[str, str]]:
    """The groups the policy's sequential test judges: every hardware id, and every value of
    each cohort dimension the policy names that the fleet has."""
    wanted = set(config.policy.judge.dimensions)
    return [(d, v) for d, v in config.groups() if d == HARDWARE_ID or d in wanted]


def _memberships(
    config: SimulationConfig, fleet: Fleet, judged: list[tuple[str, str]]
) -> list[tuple[int, ...]]:
    """Per vehicle: the indices (into ``judged``) of the groups it belongs to: the hardware ids
    of its ECUs first (in ECU order: one per ECU), then its judged cohort values."""
    index = {group: i for i, group in enumerate(judged)}
    hw_groups = [
        tuple(index[(HARDWARE_ID, hw)] for hw in kind.hardware_ids) for kind in config.vehicle_types
    ]
    per_dimension = [
        ([index[(name, value)] for value in values], column)
        for (name, values), column in zip(
            config.dimensions(), _columns(config, fleet.model, fleet.cohorts), strict=True
        )
        if (name, values[0]) in index
    ]
    return [
        (*hw_groups[fleet.model[v]], *(ids[column[v]] for ids, column in per_dimension))
        for v in range(config.vehicles)
    ]


def _kind_hardware(config: SimulationConfig) -> list[list[int]]:
    """Per vehicle kind: the indices (into ``config.hardware_ids``) of its ECUs' hardware ids."""
    index = {hw: i for i, hw in enumerate(config.hardware_ids)}
    return [[index[hw] for hw in kind.hardware_ids] for kind in config.vehicle_types]


def _exposures(
    config: SimulationConfig,
    fleet: Fleet,
    state: bytearray,
    harmed: list[bool],
    judged: set[tuple[str, str]],
) -> tuple[GroupExposure, ...]:
    """Per hardware id and cohort value: vehicles, admitted, started, outcomes, exposure (a
    vehicle counts in the group of every hardware id of its ECUs)."""
    kind_hw = _kind_hardware(config)
    singles = [
        [value] for value in range(max((len(v) for _n, v in config.dimensions()), default=0))
    ]
    dimensions = [(HARDWARE_ID, config.hardware_ids, [kind_hw[m] for m in fleet.model])]
    dimensions += [
        (name, values, [singles[value] for value in column])
        for (name, values), column in zip(
            config.dimensions(), _columns(config, fleet.model, fleet.cohorts), strict=True
        )
    ]
    result: list[GroupExposure] = []
    for name, values, column in dimensions:
        tally = [[0] * 6 for _ in values]
        for v, status in enumerate(state):
            for value in column[v]:
                row = tally[value]
                row[0] += 1
                row[1] += status != _IDLE
                row[2] += status >= _INSTALLING
                row[3] += status == _SUCCEEDED
                row[4] += status == _FAILED
                row[5] += harmed[v]
        result.extend(
            GroupExposure(
                name, value, row[0], row[1], row[2], row[3], row[4], row[5], (name, value) in judged
            )
            for value, row in zip(values, tally, strict=True)
        )
    return tuple(result)


class WindowCalendar:
    """The policy's maintenance windows as merged open intervals, in seconds from the start.

    The clock of the simulation is the vehicles' local time (one time zone for the fleet), which
    is what the windows are evaluated in on a real vehicle.
    """

    def __init__(self, windows: tuple[MaintenanceWindow, ...], config: SimulationConfig) -> None:
        self.always = not windows
        self.opens: list[float] = []
        self.closes: list[float] = []
        if self.always:
            return
        start = config.start
        midnight = datetime(start.year, start.month, start.day)
        offset = (start - midnight).total_seconds()
        intervals: list[tuple[float, float]] = []
        for day in range(-1, math.ceil(config.max_time / DAY) + 2):
            weekday = (start.weekday() + day) % 7
            base = day * DAY - offset
            for window in windows:
                if weekday in window.days:
                    close = window.end if window.end > window.start else window.end + 1440
                    intervals.append((base + window.start * 60, base + close * 60))
        for begin, end in sorted(intervals):
            if self.closes and begin <= self.closes[-1]:
                self.closes[-1] = max(self.closes[-1], end)
            else:
                self.opens.append(begin)
                self.closes.append(end)

    def next_poll_inside(self, now: float, period: float) -> float:
        """The first poll (``now``, ``now + period``, …) inside a window; ``inf`` if none."""
        if self.always:
            return now
        i = bisect.bisect_right(self.closes, now)
        while i < len(self.opens):
            poll = (
                now
                if now >= self.opens[i]
                else now + period * math.ceil((self.opens[i] - now) / period)
            )
            if poll < self.closes[i]:
                return poll
            i += 1
        return INF

    def contains(self, t: float) -> bool:
        """Is ``t`` (seconds from the start) inside a window? (For tests.)"""
        if self.always:
            return True
        i = bisect.bisect_right(self.closes, t)
        return i < len(self.opens) and self.opens[i] <= t

"""Rollout-safety benchmark: the blast radius of the shipped ``canary`` preset, per variant.

Runs ``overdrive simulate``'s engine (the same pure function the server's evaluator runs) over
100,000 vehicles for each case of issue 12's goals and reports every case on its own:

- a release failing on **100%** of one variant (hardware id) holding 0.5% … 50% of the fleet:
  that variant's exposed vehicles before the halt (goal: at most 50);
- a release failing on **20%** of one variant, same shares (goal: at most 100 exposed);
- the same two on a *region* (a cohort the preset judges) instead of a hardware id;
- a healthy release with a uniform **0.5%** background failure rate, over 100 seeds (goal:
  completes, no false halt, in at least 99).

*Exposed* is what the simulator reports per group: vehicles of the failing variant that
installed the release (all of them are harmed: each either rolled back or committed a release
that is bad for it). Each variant case runs over ``--seeds`` seeds; the table shows the median
and the worst. Writes ``bench/results/rollout-safety.md`` and re-assembles ``BENCHMARKS.md``.

    .venv/bin/python bench/rollout_safety.py                 # the full run (~5 min on 2 cores)
    .venv/bin/python bench/rollout_safety.py --seeds 3 --healthy-seeds 20 --out /tmp/rs.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks_md import assemble
from simulate import machine

import overdrive.rollout_policies as rp
from overdrive.rollout_policies.simulate import SimulationConfig, SimulationResult, simulate

RESULTS = Path(__file__).with_name("results") / "rollout-safety.md"
VEHICLES = 100_000
SHARES = ("0.5%", "1%", "2%", "5%", "10%", "20%", "50%")
REGIONS = (("eu", Fraction(6, 10)), ("us", Fraction(3, 10)))


@dataclass(frozen=True)
class Case:
    dimension: str
    """``hardware_id`` or ``region``: where the failing variant is."""
    share: str
    fail_rate: float
    goal: int


def fraction(share: str) -> Fraction:
    return Fraction(share.rstrip("%")) / 100


def config(case: Case | None, seed: int, policy: rp.Policy) -> SimulationConfig:
    """The fleet of one case: the variant (``ecu-x`` or region ``xx``) at its share."""
    if case is None:  # healthy release, 0.5% background everywhere
        return SimulationConfig(
            policy=policy,
            vehicles=VEHICLES,
            fleet=(("ecu-a", Fraction(9, 10)), ("ecu-b", Fraction(1, 10))),
            cohorts=(("region", (*REGIONS, ("xx", Fraction(1, 10)))),),
            fail_rate=0.005,
            seed=seed,
        )
    s = fraction(case.share)
    if case.dimension == "hardware_id":
        fleet: tuple[tuple[str, Fraction], ...] = (("ecu-a", 1 - s), ("ecu-x", s))
        regions = (*REGIONS, ("xx", Fraction(1, 10)))
        fail_on = ("ecu-x",)
    else:
        fleet = (("ecu-a", Fraction(1)),)
        regions = (("eu", (1 - s) * 2 / 3), ("us", (1 - s) / 3), ("xx", s))
        fail_on = ("region=xx",)
    return SimulationConfig(
        policy=policy,
        vehicles=VEHICLES,
        fleet=fleet,
        cohorts=(("region", regions),),
        fail_rate=case.fail_rate,
        fail_on=fail_on,
        seed=seed,
    )


def variant_exposure(result: SimulationResult, case: Case) -> int:
    value = "ecu-x" if case.dimension == "hardware_id" else "xx"
    for group in result.groups:
        if group.dimension == case.dimension and group.value == value:
            return group.exposed
    raise AssertionError(f"no group {case.dimension}={value}")


def run_case(args: tuple[Case | None, int, rp.Policy]) -> tuple[str, int, float, str]:
    case, seed, policy = args
    started = time.process_time()
    result = simulate(config(case, seed, policy))
    exposure = 0 if case is None else variant_exposure(result, case)
    return result.outcome, exposure, time.process_time() - started, result.reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="canary", help="preset name or policy file")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--healthy-seeds", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args()
    policy = (
        rp.load_policy(options.policy)
        if Path(options.policy).exists()
        else rp.preset(options.policy)
    )
    cases = [
        Case(dimension, share, rate, goal)
        for rate, goal in ((1.0, 50), (0.2, 100))
        for dimension in ("hardware_id", "region")
        for share in SHARES
    ]
    jobs: list[tuple[Case | None, int, rp.Policy]] = [
        (case, seed, policy) for case in cases for seed in range(options.seeds)
    ]
    jobs += [(None, seed, policy) for seed in range(options.healthy_seeds)]
    wall = time.perf_counter()
    with ProcessPoolExecutor(options.jobs) as pool:
        results = list(pool.map(run_case, jobs, chunksize=4))
    wall = time.perf_counter() - wall
    by_case: dict[Case | None, list[tuple[str, int, float, str]]] = {}
    for (case, _seed, _policy), outcome in zip(jobs, results, strict=True):
        by_case.setdefault(case, []).append(outcome)

    lines = [
        "# Rollout safety: blast radius per variant (`canary` preset)",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- command: `.venv/bin/python bench/rollout_safety.py --policy {options.policy} "
        f"--seeds {options.seeds} --healthy-seeds {options.healthy_seeds}` "
        f"({wall:.0f} s wall on {options.jobs} processes)",
        f"- fleet: {VEHICLES:,} vehicles; poll every 15m, install 20m±5m (the simulator's "
        "defaults); regions eu/us/xx besides the hardware ids. *Exposed*: vehicles of the "
        "failing variant that installed the release before the halt stopped assignments "
        "(in-flight installs included).",
        "",
        "| failing variant | share of fleet | fails on | goal (exposed ≤) | exposed, median "
        "| exposed, worst | outcome | seeds meeting the goal |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    met_all = True
    runs = met_runs = 0
    for case in cases:
        rows = by_case[case]
        exposures = [r[1] for r in rows]
        outcomes = sorted({r[0] for r in rows})
        worst = max(exposures)
        good = sum(1 for r in rows if r[1] <= case.goal and r[0] != "completed")
        runs, met_runs = runs + len(rows), met_runs + good
        met = good == len(rows)
        met_all &= met
        where = "hardware id ecu-x" if case.dimension == "hardware_id" else "region xx"
        lines.append(
            f"| {where} | {case.share} | {case.fail_rate:.0%} of it | {case.goal} "
            f"| {statistics.median(exposures):g} | {worst} | {', '.join(outcomes)} "
            f"| {good} of {len(rows)}{'' if met else ' **(miss)**'} |"
        )
    healthy = by_case[None]
    completed = sum(1 for r in healthy if r[0] == "completed")
    halts = [r[3] for r in healthy if r[0] != "completed"]
    met_all &= completed >= 99 * len(healthy) / 100
    lines += [
        "",
        f"Healthy release, uniform 0.5% background failure rate: **{completed} of "
        f"{len(healthy)} seeds completed** (goal: at least 99 of 100)"
        + (f"; halts: {'; '.join(sorted(set(halts)))}" if halts else "; no false halt."),
        "",
        f"CPU per simulated campaign: median {statistics.median(r[2] for r in results):.2f} s.",
        "",
        f"Failing-variant runs within their goal: {met_runs} of {runs}. "
        f"All goals met in every run: {'yes' if met_all else '**no**'}.",
    ]
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if options.out == RESULTS:
        print(f"wrote {assemble()}")


if __name__ == "__main__":
    main()

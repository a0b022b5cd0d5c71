"""Simulation benchmark: how long ``overdrive simulate`` takes for a 100,000-vehicle fleet.

Runs the command in this process (the click command object, as the root CLI would, so option
parsing, the simulation and the report are all timed; interpreter start-up is not) three times
per scenario and reports the median wall time and CPU time, plus the figures the simulation
produced (which must be identical across the repetitions: the simulation is deterministic).
Writes ``bench/results/simulate.md``.

    .venv/bin/python bench/simulate.py                    # 100,000 vehicles, 3 repetitions
    .venv/bin/python bench/simulate.py --vehicles 20000 --reps 1 --out /tmp/sim.md

CPU time is shown next to wall time because the machine may be shared: wall time then includes
waiting for a core, CPU time does not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click.testing

from overdrive.rollout_policies.simulate import format_seconds
from overdrive.rollout_policies.simulate_cli import simulate
from overdrive.rollout_policies.simulate_report import size

RESULTS = Path(__file__).with_name("results") / "simulate.md"


@dataclass(frozen=True)
class Scenario:
    name: str
    args: tuple[str, ...]


SCENARIOS = (
    Scenario(
        "bad release on ecu-b (10% of the fleet), canary",
        ("--policy", "canary", "--fleet", "ecu-a=0.9,ecu-b=0.1", "--fail-on", "ecu-b"),
    ),
    Scenario("good release, canary", ("--policy", "canary")),
)


@dataclass(frozen=True)
class Measurement:
    scenario: Scenario
    command: str
    wall_s: list[float]
    cpu_s: list[float]
    figures: dict[str, Any]


def measure(scenario: Scenario, vehicles: int, reps: int) -> Measurement:
    args = [*scenario.args, "--vehicles", str(vehicles), "--json"]
    runner = click.testing.CliRunner()
    walls, cpus, outputs = [], [], []
    for _ in range(reps):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = runner.invoke(simulate, args, catch_exceptions=False)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
        if result.exit_code != 0:
            raise SystemExit(f"{scenario.name}: exit {result.exit_code}: {result.output}")
        outputs.append(result.output)
    if len(set(outputs)) != 1:
        raise SystemExit(
            f"{scenario.name}: the repetitions disagree; the simulation must be deterministic"
        )
    return Measurement(
        scenario, "overdrive simulate " + " ".join(args), walls, cpus, json.loads(outputs[0])
    )


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{platform.system()} {platform.machine()}, {model}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; load average at the end: {load}"
    )


def when(seconds: float | None) -> str:
    return "-" if seconds is None else f"{format_seconds(seconds)} ({seconds:,.0f} s)"


def report(measurements: list[Measurement], reps: int) -> str:
    lines = [
        "# `overdrive simulate` benchmark",
        "",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- method: `.venv/bin/python bench/simulate.py` — each command run {reps} times in one "
        "process through the click command object (option parsing + simulation + JSON output; "
        "no interpreter start-up); median shown, all runs in brackets. The figures were "
        "identical in every run (deterministic for the seed).",
        "",
        "| scenario | wall time (median) | CPU time (median) | outcome | exposed | rolled back "
        "| halted at | completed at | bytes shipped |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in measurements:
        f = m.figures
        walls = ", ".join(f"{w:.2f}" for w in m.wall_s)
        lines.append(
            f"| {m.scenario.name} | {statistics.median(m.wall_s):.2f} s [{walls}] "
            f"| {statistics.median(m.cpu_s):.2f} s | {f['outcome']} | {f['exposed']:,} "
            f"({f['exposed'] / f['eligible']:.3%}) | {f['rolled_back']:,} | {when(f['halted_at'])} "
            f"| {when(f['completed_at'])} | {size(f['bytes_shipped'])} |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"- `{m.command}`" for m in measurements]
    for m in measurements:
        lines += ["", f"## {m.scenario.name}", "", "| stage | started | admitted | ended | by |"]
        lines.append("| --- | --- | --- | --- | --- |")
        for stage in m.figures["timeline"]:
            ended = stage["ended_at"]
            lines.append(
                f"| {stage['stage']} | {format_seconds(stage['started_at'])} "
                f"| {stage['admitted']:,} | {'-' if ended is None else format_seconds(ended)} "
                f"| {stage['ended_by'] or '-'} |"
            )
        lines += ["", f"Reason: {m.figures['reason']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vehicles", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    options = parser.parse_args()
    measurements = []
    for scenario in SCENARIOS:
        m = measure(scenario, options.vehicles, options.reps)
        print(f"{scenario.name}: median {statistics.median(m.wall_s):.2f} s wall", flush=True)
        measurements.append(m)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(report(measurements, options.reps), encoding="utf-8")
    print(f"wrote {options.out}")
    if options.out.resolve() == RESULTS.resolve():
        import benchmarks_md

        print(f"wrote {benchmarks_md.assemble()}")


if __name__ == "__main__":
    main()

"""``overdrive simulate``: the simulation core (pure), its report and plot, and the command run
through the real root CLI (registered for the test as ``overdrive/cli.py`` will register it)."""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import click.testing
import pytest

from overdrive.maintenance import MaintenanceWindow, in_maintenance_window
from overdrive.rollout_policies import admission_target, parse_policy, preset
from overdrive.rollout_policies.simulate import (
    DAY,
    SimulationConfig,
    SimulationError,
    SimulationResult,
    Spread,
    WindowCalendar,
    build_fleet,
    simulate,
)
from overdrive.rollout_policies.simulate_cli import simulate as simulate_command
from overdrive.rollout_policies.simulate_parse import parse_fleet, parse_size, parse_spread
from tests.conftest import Result, run_cli

HOUR = 3600
SPLIT = (("ecu-a", Fraction(9, 10)), ("ecu-b", Fraction(1, 10)))
NEVER_BREACHES = parse_policy(
    {
        "stages": [{"share": "100%", "max_failure_rate": "100%", "success_threshold": 0}],
        "judge": {"acceptable_failure_rate": "99%", "detect_failure_rate": "100%"},
    },
    source="test",
)


def run_sim(policy: str = "canary", vehicles: int = 2000, **options: Any) -> SimulationResult:
    return simulate(SimulationConfig(policy=preset(policy), vehicles=vehicles, **options))


Run = Result


Invoke = Callable[..., Run]


@pytest.fixture
def run() -> Invoke:
    """``overdrive simulate ARGS`` through the real root command."""
    return lambda *args: run_cli("simulate", *args)


def one_error(r: Run) -> str:
    assert r.code == 1, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0].removeprefix("error: ")


# ------------------------------------------------------------------------------ the core


def test_same_seed_same_result_other_seed_other_cohorts() -> None:
    options: dict[str, Any] = {"fleet": SPLIT, "fail_on": ("ecu-b",), "fail_rate": 0.5}
    first = run_sim(seed=7, **options).to_dict(series=True)
    assert run_sim(seed=7, **options).to_dict(series=True) == first
    assert run_sim(seed=8, **options).to_dict(series=True) != first


def test_good_release_completes_and_everyone_succeeds() -> None:
    result = run_sim(vehicles=3000)
    assert result.outcome == "completed"
    assert result.succeeded == result.admitted == result.started == 3000
    assert (result.rolled_back, result.exposed, result.halted_at) == (0, 0, None)
    assert [s.ended_by for s in result.stages] == ["advance"] * 11 + ["complete"]
    assert [s.target for s in result.stages] == [2, 3, 6, 12, 24, 48, 96, 192, 375, 750, 1500, 3000]
    # The soaks (6 x 1h, 2 x 2h, 4h, 8h, 12h) set the pace; the last wave installs in ~40 min.
    assert result.completed_at is not None
    assert 34 * HOUR <= result.completed_at <= 35 * HOUR
    assert result.stages[1].started_at == HOUR and result.stages[8].started_at == 10 * HOUR
    assert result.full_downloads + result.delta_downloads == 3000
    assert result.bytes_shipped == result.full_downloads * 200 * 2**20 + (
        result.delta_downloads * 20 * 2**20
    )


@pytest.mark.parametrize(("name", "outcome"), [("canary", "aborted"), ("linear", "paused")])
def test_release_failing_everywhere_halts_in_the_first_stage(name: str, outcome: str) -> None:
    result = run_sim(name, vehicles=5000, fail_rate=1.0)
    first = admission_target(preset(name).stages[0], 5000)
    assert (result.outcome, result.stage_index, result.completed_at) == (outcome, 0, None)
    assert result.halted_at is not None and len(result.stages) == 1
    assert result.admitted == first
    assert result.exposed == result.rolled_back == result.started <= first
    assert result.succeeded == 0
    assert "failure rate 100.0% > max" in result.reason or "clearly above" in result.reason


def test_halt_stops_vehicles_that_have_not_polled_yet() -> None:
    # Polls every 2h but installs take 5 min: the canary breaches long before most of the stage
    # has polled, and those vehicles never get the assignment.
    result = run_sim(
        vehicles=100_000, fail_rate=1.0, poll_interval=2 * HOUR, install_time=Spread(300, 60)
    )
    first = admission_target(preset("canary").stages[0], 100_000)
    assert result.outcome == "aborted" and result.admitted == first
    assert result.never_started > first / 2
    assert result.exposed + result.never_started == first
    assert 0 < result.in_flight_at_halt <= result.exposed
    assert result.halted_at is not None and result.halted_at < HOUR


def test_fail_on_only_affects_that_hardware_id() -> None:
    half = (("ecu-a", Fraction(1, 2)), ("ecu-b", Fraction(1, 2)))
    result = simulate(
        SimulationConfig(
            policy=NEVER_BREACHES, vehicles=4000, fleet=half, fail_on=("ecu-b",), fail_rate=0.5
        )
    )
    a, b = result.hardware["ecu-a"], result.hardware["ecu-b"]
    assert (a.vehicles, b.vehicles) == (2000, 2000)
    assert (a.succeeded, a.rolled_back) == (2000, 0)
    assert 800 < b.rolled_back < 1200 and b.succeeded == 2000 - b.rolled_back
    # Exposed: every ecu-b vehicle that installed the bad release, whether it rolled back or not.
    assert result.exposed == b.started == 2000
    assert result.rolled_back == b.rolled_back


def test_fail_rate_without_fail_on_counts_only_failures_as_exposed() -> None:
    result = simulate(SimulationConfig(policy=NEVER_BREACHES, vehicles=4000, fail_rate=0.05))
    assert result.outcome == "completed"
    assert 100 < result.exposed == result.rolled_back < 300
    assert result.succeeded == 4000 - result.rolled_back


def test_manual_approval_gates() -> None:
    never = run_sim("manual", auto_approve_after=None, max_time=2 * DAY)
    assert (never.outcome, never.stage_index, never.halted_at) == ("running", 0, None)
    assert never.decisions[-1].waiting_for == ("approval",)
    assert "waiting for approval to advance to stage 'manual-10%'" in never.reason
    assert never.ended_at == 2 * DAY

    at_once = run_sim("manual")
    assert at_once.outcome == "completed"
    assert at_once.completed_at is not None and at_once.completed_at < 4 * HOUR

    later = run_sim("manual", auto_approve_after=6 * HOUR)
    assert later.outcome == "completed"
    for stage in later.stages:
        assert stage.ended_at is not None and stage.ended_at - stage.started_at >= 6 * HOUR


def test_skipping_idle_ticks_changes_nothing() -> None:
    for options in (
        {"fail_rate": 0.03},
        {"fleet": SPLIT, "fail_on": ("ecu-b",)},
        {"offline_rate": 0.2},
    ):
        fast = run_sim(vehicles=1500, **options)
        slow = run_sim(vehicles=1500, skip_idle_ticks=False, **options)
        assert fast.to_dict(series=True) == slow.to_dict(series=True), options


def test_offline_vehicles_delay_completion_or_hit_the_deadline() -> None:
    online = run_sim(vehicles=2000)
    back = run_sim(vehicles=2000, offline_rate=0.1, offline_for=Spread(2 * DAY, DAY))
    assert 150 < back.offline < 250 and back.outcome == "completed"  # each is offline at 10%
    assert back.completed_at is not None and online.completed_at is not None
    assert back.completed_at > online.completed_at
    gone = run_sim(vehicles=2000, offline_rate=0.1, offline_for=None)
    assert gone.outcome == "paused" and gone.halted_at == 14 * DAY
    assert "deadline passed" in gone.reason and gone.never_started > 0


def test_maintenance_windows_hold_installs_until_a_window_opens() -> None:
    policy = parse_policy(
        {
            "maintenance_windows": [{"start": "22:00", "end": "05:00"}],
            "stages": [{"share": "100%"}],
        },
        source="test",
    )
    result = simulate(SimulationConfig(policy=policy, vehicles=500))  # starts Mon 09:00
    first_install = next(s[0] for s in result.series if s[3] or s[4])
    assert first_install >= 13 * HOUR  # 22:00
    assert result.outcome == "completed"


def test_window_calendar_matches_the_vehicle_rule() -> None:
    windows = (
        MaintenanceWindow((0, 2, 4), 22 * 60, 5 * 60),
        MaintenanceWindow((5,), 0, 1440),
        MaintenanceWindow((1,), 12 * 60, 13 * 60 + 30),
    )
    policy = parse_policy({"stages": [{"share": "100%"}]}, source="test")
    start = datetime(2025, 1, 8, 17, 23, 11)
    config = SimulationConfig(policy=policy, vehicles=1, start=start, max_time=20 * DAY)
    calendar = WindowCalendar(windows, config)
    rng = random.Random(1)
    for _ in range(3000):
        t = rng.uniform(0, 19 * DAY)
        expected = in_maintenance_window(windows, start + timedelta(seconds=t))
        assert calendar.contains(t) == expected, t
        nxt = calendar.next_poll_inside(t, 900)
        polls = (nxt - t) / 900
        assert nxt >= t and calendar.contains(nxt) and polls == pytest.approx(round(polls))
        assert nxt == t or not calendar.contains(nxt - 900)  # the first poll inside


def test_fleet_is_apportioned_exactly_and_cohorts_follow_the_bucket_order() -> None:
    config = SimulationConfig(
        policy=preset("canary"), vehicles=1001, fleet=parse_fleet("a=0.5,b=0.25,c=0.25")
    )
    fleet = build_fleet(config)
    # 500.5, 250.25, 250.25: the vehicle left over goes to the largest remainder.
    assert [fleet.model.count(i) for i in range(3)] == [501, 250, 250]
    assert sorted(fleet.order) == list(range(1001))


def test_config_refuses_impossible_values() -> None:
    with pytest.raises(SimulationError, match="--fail-on: 'ecu-z' is not a group of the fleet"):
        SimulationConfig(policy=preset("canary"), vehicles=10, fail_on=("ecu-z",), fail_rate=1)
    with pytest.raises(SimulationError, match="--fleet: fractions must sum to 1"):
        SimulationConfig(policy=preset("canary"), vehicles=10, fleet=(("a", Fraction(1, 2)),))
    with pytest.raises(SimulationError, match="--fail-rate: must be between 0 and 1"):
        SimulationConfig(policy=preset("canary"), vehicles=10, fail_rate=-0.1)
    with pytest.raises(SimulationError, match="--vehicles"):
        SimulationConfig(policy=preset("canary"), vehicles=0)


def test_parsers() -> None:
    assert parse_fleet("ecu-a=90%, ecu-b=0.1") == (
        ("ecu-a", Fraction(9, 10)),
        ("ecu-b", Fraction(1, 10)),
    )
    assert parse_spread("20m±5m", "x") == Spread(1200, 300)
    assert parse_spread("1h+-30m", "x") == Spread(3600, 1800)
    assert parse_spread("90s", "x") == Spread(90, 0)
    assert parse_size("200MiB", "x") == 200 * 2**20
    assert parse_size("1.5GiB", "x") == 3 * 2**29
    assert parse_size("20MB", "x") == 20_000_000


@pytest.mark.slow
def test_canary_goal_at_100k_vehicles() -> None:
    """The goals of the per-group judging (``bench/rollout_safety.py`` measures every case): a
    release that breaks every vehicle of a variant, from 0.5% to 50% of a 100,000-vehicle
    fleet, is halted by the canary preset with at most 50 of that variant exposed, all of
    them rolled back; a good release completes. (Tests make no timing assertions.)"""
    for seed, share in enumerate((Fraction(1, 200), Fraction(1, 10), Fraction(1, 2))):
        fleet = (("ecu-a", 1 - share), ("ecu-b", share))
        result = run_sim(
            vehicles=100_000, fleet=fleet, fail_on=("ecu-b",), fail_rate=1.0, seed=seed
        )
        assert result.outcome in ("aborted", "paused")
        assert result.exposed <= 50, (seed, result.exposed)
        assert result.hardware["ecu-a"].rolled_back == 0
        assert result.hardware["ecu-b"].rolled_back == result.exposed  # all of them rolled back
        assert "hardware id 'ecu-b'" in result.reason
    good = run_sim(vehicles=100_000)
    assert good.outcome == "completed" and good.succeeded == 100_000
    assert good.completed_at is not None and 34 * HOUR <= good.completed_at <= 36 * HOUR


# ------------------------------------------------------------------------------ the command


def test_cli_report(run: Invoke) -> None:
    r = run("--policy", "canary", "--vehicles", "5000", "--fleet", "ecu-a=0.9,ecu-b=0.1")
    assert (r.code, r.stderr) == (0, ""), r
    assert "release: good (no vehicle fails)" in r.stdout
    assert "outcome: COMPLETED after 1d10h" in r.stdout
    r = run(
        "--policy",
        "canary",
        "--vehicles",
        "5000",
        "--fleet",
        "ecu-a=0.9,ecu-b=0.1",
        "--fail-on",
        "ecu-b",
    )
    assert (r.code, r.stderr) == (0, ""), r
    out = r.stdout
    assert "release: fails (rolls back) with probability 100% on ecu-b; succeeds elsewhere" in out
    assert "manual approval: none in this policy" in out
    assert "outcome: PAUSED at " in out and "in stage 'wave-0.8%'" in out
    assert "hardware id 'ecu-b': 2 of 2 finished failed" in out
    assert "exposed (blast radius): " in out
    assert out.splitlines()[8].split() == [
        "STAGE",
        "STARTED",
        "ADMITTED",
        "TARGET",
        "ENDED",
        "BY",
        "FINISHED",
        "FAILURES",
    ]


def test_cli_json_keys(run: Invoke) -> None:
    r = run("--policy", "canary", "--vehicles", "1000", "--json", "--seed", "3")
    assert r.code == 0, r
    data = json.loads(r.stdout)
    for key in ("exposed", "rolled_back", "halted_at", "completed_at", "bytes_shipped"):
        assert key in data
    assert data["halted_at"] is None and data["completed_at"] > 30 * HOUR
    assert data["exposed"] == data["rolled_back"] == 0
    assert isinstance(data["bytes_shipped"], int) and data["bytes_shipped"] > 0
    assert [s["stage"] for s in data["timeline"]] == [s.name for s in preset("canary").stages]
    assert data["config"]["seed"] == 3 and data["source"] == "preset 'canary'"
    assert (
        run("--policy", "canary", "--vehicles", "1000", "--json", "--seed", "3").stdout == r.stdout
    )


def test_cli_manual_approval_is_explained(run: Invoke) -> None:
    r = run("--policy", "manual", "--vehicles", "500")
    assert r.code == 0, r
    assert "approved as soon as each starts (default; see --auto-approve-after)" in r.stdout
    r = run(
        "--policy",
        "manual",
        "--vehicles",
        "500",
        "--auto-approve-after",
        "never",
        "--max-time",
        "1d",
    )
    assert r.code == 0, r
    assert "outcome: STILL RUNNING at stage 'manual-1%'" in r.stdout


def test_cli_fail_on_several_hardware_ids(run: Invoke) -> None:
    r = run(
        *("--policy", "immediate", "--vehicles", "1000", "--json"),
        *("--fleet", "a=0.5,b=0.25,c=0.25", "--fail-on", "b,c", "--fail-rate", "0.5"),
    )
    assert r.code == 0, r
    data = json.loads(r.stdout)
    assert data["config"]["fail_on"] == ["b", "c"] and data["config"]["fail_rate"] == 0.5
    assert data["hardware"]["a"]["rolled_back"] == 0
    assert data["exposed"] == data["hardware"]["b"]["started"] + data["hardware"]["c"]["started"]


def test_cli_policy_file(run: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    path.write_text('{"stages": [{"share": 10}, {"share": "100%"}]}')
    r = run("--policy", path, "--vehicles", "300", "--json")
    assert r.code == 0, r
    assert json.loads(r.stdout)["outcome"] == "completed"


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_cli_plot(run: Invoke, tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / f"timeline{suffix}"
    r = run("--policy", "canary", "--vehicles", "1000", "--fail-rate", "0.5", "--plot", path)
    assert r.code == 0, r
    assert r.stdout.rstrip().endswith(f"plot: {path}")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]


def test_cli_plot_without_matplotlib(
    run: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    message = one_error(run("--policy", "canary", "--plot", tmp_path / "x.png"))
    assert message.startswith("--plot needs matplotlib, which is not installed (pip install")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fleet", "ecu-a=0.8,ecu-b=0.1"], "--fleet: fractions must sum to 1, they sum to 0.9"),
        (["--fleet", "ecu-a"], "--fleet: expected HW=FRACTION"),
        (["--fleet", "a=0.5,a=0.5"], "--fleet: hardware id 'a' is given twice"),
        (["--policy", "canery"], "'canery' is neither a preset"),
        (["--fail-rate", "-0.1"], "--fail-rate: expected a fraction from 0 to 1"),
        (["--fail-rate", "1.5"], "--fail-rate: expected a fraction from 0 to 1"),
        (["--offline-rate", "-1%"], "--offline-rate: expected a fraction from 0 to 1"),
        (["--fail-on", "ecu-z"], "--fail-on: 'ecu-z' is not a group of the fleet (ecu-a)"),
        (["--poll-interval", "15 minutes"], "--poll-interval: expected a duration"),
        (["--poll-interval", "0"], "--poll-interval: must be at least 1s"),
        (["--install-time", "20m±30m"], "--install-time: the ± range cannot exceed"),
        (["--install-time", "-5m"], "--install-time: expected a duration"),
        (["--tick", "1x"], "--tick: expected a duration"),
        (["--auto-approve-after", "soon"], "--auto-approve-after: expected a duration"),
        (["--vehicles", "0"], "--vehicles: expected a whole number from 1"),
        (["--vehicles", "lots"], "--vehicles: expected a whole number"),
        (["--full-size", "200 parsecs"], "--full-size: expected a size"),
        (["--start", "2025-01-06T09:00+01:00"], "--start: expected a local date and time"),
        (["--seed", "x"], "--seed: expected a whole number"),
        (["--plot", "timeline.pdf"], "--plot: the file must end in .png or .svg"),
        (["--plot", "no/such/dir/t.png"], "--plot: directory 'no/such/dir' does not exist"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(run: Invoke, args: list[str], message: str) -> None:
    if "--policy" not in args:
        args = ["--policy", "canary", "--vehicles", "100", *args]
    assert message in one_error(run(*args))


def test_cli_requires_a_policy(run: Invoke) -> None:
    assert one_error(run()) == "--policy: required (a preset name or a policy file)"


def test_command_object_runs_standalone() -> None:
    result = click.testing.CliRunner().invoke(
        simulate_command, ["--policy", "immediate", "--vehicles", "200", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["completed_at"] is not None

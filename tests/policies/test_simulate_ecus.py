"""``overdrive simulate`` with multi-ECU vehicles: a software set per vehicle (updated only if
every ECU succeeds; one failing ECU rolls the whole vehicle back), the rollback judged against
the hardware id that caused it, the fleet file, the report, and single-ECU fleets unchanged."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overdrive.rollout_policies import StageState, parse_policy, preset
from overdrive.rollout_policies import engine as engine_module
from overdrive.rollout_policies.simulate import (
    Ecu,
    SimulationConfig,
    SimulationError,
    VehicleModel,
    build_fleet,
    simulate,
)
from overdrive.rollout_policies.simulate_ecus import parse_models, set_failure
from tests.conftest import Result, reproducible, run_cli

NEVER_BREACHES = parse_policy(
    {
        "stages": [{"share": "100%", "max_failure_rate": "100%", "success_threshold": 0}],
        "judge": {"acceptable_failure_rate": "99%", "detect_failure_rate": "100%"},
    },
    source="test",
)
HARDWARE_ONLY = parse_policy(
    {
        "stages": [
            {"share": "10%", "soak": "1h", "max_failure_rate": "100%", "success_threshold": 0},
            {"share": "100%", "max_failure_rate": "100%", "success_threshold": 0},
        ]
    },
    source="test",
)
"""Judges only with the sequential test, on the campaign and each hardware id (no cohort)."""
SEDAN = VehicleModel("sedan", Fraction(7, 10), (Ecu("ivi-2", 1.0), Ecu("bcm-1"), Ecu("tcu-4")))
VAN = VehicleModel("van", Fraction(3, 10), (Ecu("bcm-1"), Ecu("tcu-4")))
FLEET_YAML = """\
# two models; each model's ECUs in install order
models:
  - name: sedan
    share: 70%
    ecus:
      - {hardware_id: ivi-2, fail_rate: 30%}
      - bcm-1
      - tcu-4
  - {name: van, share: 0.3, ecus: [bcm-1, tcu-4]}
"""


def config(models: tuple[VehicleModel, ...], **options: Any) -> SimulationConfig:
    options.setdefault("policy", NEVER_BREACHES)
    options.setdefault("vehicles", 2000)
    return SimulationConfig(models=models, **options)


def first_failing(ecus: tuple[Ecu, ...]) -> int:
    """With rates of 0 or 1 only, the ECU that rolls the vehicle back is known without draws."""
    return next((i for i, ecu in enumerate(ecus) if ecu.fail_rate == 1.0), -1)


# ------------------------------------------------------------------------------ the set rule

unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
rate = st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]) | st.floats(min_value=0.0, max_value=1.0)


@reproducible(300)
@given(st.lists(st.tuples(unit, rate), min_size=1, max_size=12))
def test_a_set_fails_at_its_first_failing_ecu_and_succeeds_only_if_all_do(
    ecus: list[tuple[float, float]],
) -> None:
    draws, rates = [d for d, _r in ecus], [r for _d, r in ecus]
    cause = set_failure(draws, rates)
    failed = [d < r for d, r in ecus]
    assert (cause == -1) == (not any(failed))  # updated iff every ECU succeeded
    if cause >= 0:
        assert failed[cause] and not any(failed[:cause])


# ------------------------------------------------------------------------------ properties

hardware_ids = st.sampled_from(["tcu-4", "ivi-2", "bcm-1", "adas-7", "door"])


@st.composite
def fleets(draw: st.DrawFn) -> tuple[VehicleModel, ...]:
    """1 to 3 models of 1 to 4 ECUs, each ECU's rate 0 or 1 (outcomes need no draws)."""
    count = draw(st.integers(min_value=1, max_value=3))
    parts = draw(st.lists(st.integers(min_value=1, max_value=5), min_size=count, max_size=count))
    models = []
    for index, part in enumerate(parts):
        hws = draw(st.lists(hardware_ids, min_size=1, max_size=4, unique=True))
        ecus = tuple(Ecu(hw, draw(st.sampled_from([0.0, 0.0, 1.0]))) for hw in hws)
        models.append(VehicleModel(f"m{index}", Fraction(part, sum(parts)), ecus))
    return tuple(models)


@reproducible(60)
@given(fleets(), st.integers(min_value=1, max_value=400), st.integers(0, 5))
def test_every_vehicle_is_one_set_and_rollbacks_are_counted_against_their_cause(
    models: tuple[VehicleModel, ...], vehicles: int, seed: int
) -> None:
    cfg = config(models, vehicles=vehicles, seed=seed)
    fleet = build_fleet(cfg)
    for v in range(vehicles):
        assert fleet.cause[v] == first_failing(models[fleet.model[v]].ecus)
        assert fleet.fails[v] == (fleet.cause[v] >= 0)
    result = simulate(cfg)
    assert result.outcome == "completed" and result.started == vehicles  # everyone installs
    caused = {hw: 0 for hw in result.hardware}
    updated = {hw: 0 for hw in result.hardware}
    rolled_back = {hw: 0 for hw in result.hardware}
    for v in range(vehicles):
        model = models[fleet.model[v]]
        for ecu in model.ecus:
            (rolled_back if fleet.fails[v] else updated)[ecu.hardware_id] += 1
        if fleet.fails[v]:
            caused[model.ecus[fleet.cause[v]].hardware_id] += 1
    assert sum(c.rollbacks_caused for c in result.hardware.values()) == result.rolled_back
    assert result.rolled_back + result.succeeded == vehicles
    for hw, counts in result.hardware.items():
        assert counts.rollbacks_caused == caused[hw], hw
        assert counts.succeeded == updated[hw] and counts.rolled_back == rolled_back[hw], hw
        assert counts.rollbacks_caused <= counts.rolled_back <= counts.started


@reproducible(30)
@given(fleets(), st.integers(min_value=20, max_value=400), st.integers(0, 3))
def test_the_engine_judges_each_hardware_id_on_the_rollbacks_it_caused(
    models: tuple[VehicleModel, ...], vehicles: int, seed: int
) -> None:
    states = _engine_inputs(config(models, vehicles=vehicles, seed=seed))
    last = states[-1]
    result = simulate(config(models, vehicles=vehicles, seed=seed))
    by_hw = {g.value: g for g in last.groups if g.dimension == "hardware_id"}
    for hw, counts in result.hardware.items():
        group = by_hw[hw]
        assert (group.eligible, group.admitted) == (counts.vehicles, counts.admitted)
        assert (group.succeeded, group.failures) == (counts.succeeded, counts.rollbacks_caused)
    # The campaign overall counts vehicles: one result per software set.
    assert (last.eligible, last.rolled_back) == (vehicles, result.rolled_back)


def _engine_inputs(cfg: SimulationConfig) -> list[StageState]:
    """Every state the simulation handed the engine (the real ``decide``, wrapped)."""
    seen: list[StageState] = []
    real = engine_module.decide

    def spy(policy: Any, state: StageState) -> Any:
        seen.append(state)
        return real(policy, state)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("overdrive.rollout_policies.simulate.decide", spy)
        simulate(cfg)
    return seen


# ------------------------------------------------------------------------------ the core


def test_a_failing_secondary_rolls_back_its_vehicles_and_is_judged_alone() -> None:
    result = simulate(config((SEDAN, VAN), policy=HARDWARE_ONLY, vehicles=10_000, seed=2))
    assert result.outcome in ("aborted", "paused")
    assert "hardware id 'ivi-2'" in result.reason
    ivi, bcm, tcu = (result.hardware[hw] for hw in ("ivi-2", "bcm-1", "tcu-4"))
    # Every sedan that installed rolled back all three ECUs; the rollbacks are ivi-2's alone.
    assert ivi.succeeded == 0 and ivi.rolled_back == ivi.started == ivi.rollbacks_caused
    assert bcm.rolled_back == tcu.rolled_back == result.rolled_back == ivi.rolled_back
    assert bcm.rollbacks_caused == tcu.rollbacks_caused == 0
    assert bcm.succeeded == tcu.succeeded == result.succeeded  # the vans
    assert result.exposed == result.rolled_back  # fleet-file rates: only rollbacks harm


def test_fail_on_a_hardware_id_fails_its_ecus_in_every_model() -> None:
    models = (
        VehicleModel("sedan", Fraction(1, 2), (Ecu("ivi-2"), Ecu("bcm-1"))),
        VehicleModel("van", Fraction(1, 2), (Ecu("bcm-1"),)),
    )
    result = simulate(config(models, fail_on=("bcm-1",), fail_rate=0.5, seed=1))
    assert result.hardware["ivi-2"].rollbacks_caused == 0
    assert result.hardware["bcm-1"].rollbacks_caused == result.rolled_back
    assert 800 < result.rolled_back < 1200
    # --fail-on: every vehicle with a bcm-1 ECU got a bad image, rolled back or not.
    assert result.exposed == result.started == 2000


def test_fail_on_a_model_fails_every_ecu_of_its_vehicles() -> None:
    models = (
        VehicleModel("sedan", Fraction(1, 2), (Ecu("ivi-2"), Ecu("bcm-1"))),
        VehicleModel("van", Fraction(1, 2), (Ecu("bcm-1"),)),
    )
    result = simulate(config(models, fail_on=("model=sedan",), fail_rate=1.0))
    groups = {(g.dimension, g.value): g for g in result.groups}
    assert groups[("model", "sedan")].rolled_back == 1000
    assert groups[("model", "van")].rolled_back == 0
    # The set stops at its first ECU: every sedan's rollback is ivi-2's.
    assert result.hardware["ivi-2"].rollbacks_caused == 1000
    assert result.hardware["bcm-1"].rollbacks_caused == 0


def test_rates_compound_over_a_vehicles_ecus() -> None:
    ecus = tuple(Ecu(f"ecu-{i}", 0.1) for i in range(3))
    result = simulate(config((VehicleModel("car", Fraction(1), ecus),), vehicles=20_000))
    expected = 1 - 0.9**3  # 27.1%
    assert abs(result.rolled_back / 20_000 - expected) < 0.02
    caused = [result.hardware[f"ecu-{i}"].rollbacks_caused for i in range(3)]
    # The first in install order is blamed more often: a later one fails only if earlier didn't.
    assert caused[0] > caused[1] > caused[2] > 0


def test_more_ecus_change_no_other_draw() -> None:
    one = VehicleModel("car", Fraction(1), (Ecu("tcu-4", 0.3),))
    three = VehicleModel("car", Fraction(1), (Ecu("tcu-4", 0.3), Ecu("ivi-2"), Ecu("bcm-1")))
    a, b = build_fleet(config((one,), seed=4)), build_fleet(config((three,), seed=4))
    assert a.cause == b.cause and a.install == b.install and a.order == b.order
    assert a.first_poll == b.first_poll and a.delta == b.delta


def test_one_ecu_per_model_is_the_single_ecu_fleet() -> None:
    """A fleet file whose models each have one ECU plays exactly like ``--fleet``."""
    split = (("ecu-a", Fraction(9, 10)), ("ecu-b", Fraction(1, 10)))
    models = tuple(VehicleModel(hw, share, (Ecu(hw),)) for hw, share in split)
    options: dict[str, Any] = {
        "policy": preset("linear"),  # judges no cohort: the model groups change nothing
        "vehicles": 5000,
        "fail_on": ("ecu-b",),
        "fail_rate": 0.5,
        "seed": 3,
    }
    single = simulate(SimulationConfig(fleet=split, **options)).to_dict(series=True)
    multi = simulate(SimulationConfig(models=models, **options)).to_dict(series=True)
    for data in (single, multi):
        data.pop("config")
        data["groups"] = [g for g in data["groups"] if g["dimension"] == "hardware_id"]
    assert multi == single


def test_same_seed_same_result() -> None:
    first = simulate(config((SEDAN, VAN), seed=9)).to_dict(series=True)
    assert simulate(config((SEDAN, VAN), seed=9)).to_dict(series=True) == first
    assert simulate(config((SEDAN, VAN), seed=10)).to_dict(series=True) != first


def test_skipping_idle_ticks_changes_nothing() -> None:
    models = (VehicleModel("car", Fraction(1), (Ecu("a", 0.02), Ecu("b", 0.01))),)
    fast = simulate(config(models, policy=preset("canary"), vehicles=1500))
    slow = simulate(config(models, policy=preset("canary"), vehicles=1500, skip_idle_ticks=False))
    assert fast.to_dict(series=True) == slow.to_dict(series=True)


def test_config_refuses_impossible_models() -> None:
    with pytest.raises(SimulationError, match="hardware ids come from --fleet-file"):
        config((SEDAN, VAN), fleet=(("x", Fraction(1)),))
    with pytest.raises(SimulationError, match="models: fractions must sum to 1"):
        config((SEDAN,))
    with pytest.raises(SimulationError, match="'bcm-1' is given twice"):
        config((VehicleModel("car", Fraction(1), (Ecu("bcm-1"), Ecu("bcm-1"))),))
    with pytest.raises(SimulationError, match="fail_rate must be between 0 and 1"):
        config((VehicleModel("car", Fraction(1), (Ecu("bcm-1", 1.5),)),))
    with pytest.raises(SimulationError, match="dimension 'model' is given by --fleet-file"):
        config((SEDAN, VAN), cohorts=(("model", (("x", Fraction(1)),)),))
    with pytest.raises(SimulationError, match="'tcu-9' is not a group of the fleet"):
        config((SEDAN, VAN), fail_on=("tcu-9",), fail_rate=1)


# ------------------------------------------------------------------------------ the fleet file


def test_parse_models() -> None:
    import yaml

    models = parse_models(yaml.safe_load(FLEET_YAML), "fleet.yaml")
    assert models == (
        VehicleModel(
            "sedan", Fraction(7, 10), (Ecu("ivi-2", 0.3), Ecu("bcm-1", 0.0), Ecu("tcu-4", 0.0))
        ),
        VehicleModel("van", Fraction(3, 10), (Ecu("bcm-1", 0.0), Ecu("tcu-4", 0.0))),
    )


def _doc(*ecus: Any, share: Any = 1, **extra: Any) -> dict[str, Any]:
    return {"models": [{"name": "car", "share": share, "ecus": list(ecus), **extra}]}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected a mapping with 'models', got a list"),
        ({"models": []}, "models: expected a non-empty list of vehicle models"),
        ({"modles": 1}, "unknown field 'modles' (expected models)"),
        (_doc("a", share=0.5), "models: shares must sum to 1, they sum to 0.5 (car=0.5)"),
        (_doc("a", share="110%"), "models[0].share (model 'car'): expected a fraction above 0"),
        (_doc("a", share=True), "models[0].share (model 'car'): expected a fraction above 0"),
        (_doc(), "models[0].ecus (model 'car'): expected a list of 1 to 256 ECUs"),
        (_doc("a", "a"), "models[0].ecus (model 'car'): hardware id 'a' is given twice"),
        (_doc(3), "models[0].ecus[0] (model 'car'): expected a hardware id or a mapping"),
        (_doc("a b"), "models[0].ecus[0] (model 'car'): expected a hardware id"),
        ({"models": [{"name": "car", "share": 1}]}, "models[0].ecus: required"),
        ({"models": ["car"]}, "models[0]: expected a mapping with name, share and ecus"),
        (_doc({"fail_rate": 1}), "models[0].ecus[0].hardware_id (model 'car'): required"),
        (
            _doc({"hardware_id": "a", "failrate": 1}),
            "models[0].ecus[0] (model 'car'): unknown field 'failrate'",
        ),
        (
            _doc({"hardware_id": "a", "fail_rate": "130%"}),
            "models[0].ecus[0].fail_rate (model 'car'): expected a fraction from 0 to 1 "
            "(0.3 or 30%), got '130%'",
        ),
        (_doc({"hardware_id": "a", "fail_rate": float("nan")}), "got nan"),
        (
            {
                "models": [
                    {"name": "car", "share": 0.5, "ecus": ["a"]},
                    {"name": "car", "share": 0.5, "ecus": ["b"]},
                ]
            },
            "models: model 'car' is given twice",
        ),
    ],
)
def test_parse_models_refuses_bad_documents(document: Any, message: str) -> None:
    with pytest.raises(SimulationError) as caught:
        parse_models(document, "f.yaml")
    text = str(caught.value)
    assert text.startswith("--fleet-file f.yaml: ") and "\n" not in text
    assert message in text


# ------------------------------------------------------------------------------ the command


def sim(*args: str | Path) -> Result:
    return run_cli("simulate", *args)


def one_error(r: Result) -> str:
    assert r.code == 1, r
    assert len(r.error_lines) == 1 and r.error_lines[0].startswith("error: "), r.stderr
    return r.error_lines[0].removeprefix("error: ")


@pytest.fixture
def fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET_YAML)
    return path


def test_cli_report_shows_each_hardware_id(fleet_file: Path) -> None:
    r = sim("--policy", "canary", "--vehicles", "100000", "--fleet-file", fleet_file)
    assert (r.code, r.stderr) == (0, ""), r
    lines = r.stdout.splitlines()
    assert (
        "fleet: 100,000 vehicles in 2 models (sedan 70%: ivi-2 + bcm-1 + tcu-4; van 30%: "
        "bcm-1 + tcu-4), one campaign over all of them, one software set per vehicle "
        "(all or nothing)"
    ) in lines
    assert (
        "release: an ECU fails with probability 30% on ivi-2 in sedan, rolling back every ECU "
        "of its vehicle; succeeds elsewhere"
    ) in lines
    header = next(i for i, line in enumerate(lines) if line.startswith("HARDWARE ID"))
    assert lines[header].split("  ")[0:1] == ["HARDWARE ID"]
    assert "ROLLBACKS CAUSED" in lines[header] and "UPDATED" in lines[header]
    rows = {line.split()[0]: line.split() for line in lines[header + 1 : header + 4]}
    assert set(rows) == {"ivi-2", "bcm-1", "tcu-4"}
    assert rows["bcm-1"][6] == rows["tcu-4"][6] == "0"  # caused none
    assert rows["ivi-2"][5] == rows["ivi-2"][6] == rows["bcm-1"][5]  # all of them
    assert any(line.startswith("model=sedan ") for line in lines)
    assert not any(line.startswith("GROUP") and "ivi-2" in line for line in lines)


def test_cli_json(fleet_file: Path) -> None:
    args = ("--policy", "canary", "--vehicles", "5000", "--fleet-file", fleet_file, "--json")
    r = sim(*args)
    assert r.code == 0, r
    data = json.loads(r.stdout)
    hardware = data["hardware"]
    assert set(hardware) == {"ivi-2", "bcm-1", "tcu-4"}
    assert sum(c["rollbacks_caused"] for c in hardware.values()) == data["rolled_back"]
    assert hardware["ivi-2"]["rollbacks_caused"] == data["rolled_back"] > 0
    assert data["config"]["fleet"] == {"ivi-2": 0.7, "bcm-1": 1.0, "tcu-4": 1.0}
    assert [m["name"] for m in data["config"]["models"]] == ["sedan", "van"]
    assert data["config"]["models"][0]["ecus"][0] == {"hardware_id": "ivi-2", "fail_rate": 0.3}
    assert sim(*args).stdout == r.stdout


def test_cli_json_of_a_single_ecu_fleet_gains_only_the_caused_counts() -> None:
    r = sim("--policy", "canary", "--vehicles", "1000", "--fail-rate", "0.3", "--json")
    data = json.loads(r.stdout)
    assert data["config"]["models"] == []
    assert data["hardware"]["ecu-a"]["rollbacks_caused"] == data["rolled_back"] > 0


def test_cli_fleet_file_as_json_with_cohorts_and_fail_on(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(
        json.dumps({"models": [{"name": "car", "share": "100%", "ecus": ["tcu", "ivi"]}]})
    )
    r = sim(
        *("--policy", "canary", "--vehicles", "4000", "--fleet-file", path, "--json"),
        *("--fleet", "region:eu=0.5,us=0.5", "--fail-on", "region=us", "--fail-rate", "0.5"),
    )
    assert r.code == 0, r
    data = json.loads(r.stdout)
    assert data["outcome"] == "aborted"
    groups = {(g["dimension"], g["value"]): g for g in data["groups"]}
    assert groups[("region", "eu")]["rolled_back"] == 0
    assert data["hardware"]["tcu"]["rollbacks_caused"] > data["hardware"]["ivi"]["rollbacks_caused"]


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_cli_plot_has_the_hardware_panel(fleet_file: Path, tmp_path: Path, suffix: str) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / f"timeline{suffix}"
    r = sim("--policy", "canary", "--vehicles", "2000", "--fleet-file", fleet_file, "--plot", path)
    assert r.code == 0, r
    data = path.read_bytes()
    if suffix == ".svg":
        assert b"rollbacks caused" in data and b"ivi-2" in data
    else:
        assert data.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (FLEET_YAML, ["--fleet", "ecu-a=1"], "--fleet: the hardware ids come from --fleet-file"),
        (FLEET_YAML, ["--fleet", "model:x=1"], "--fleet: dimension 'model' is given by"),
        (FLEET_YAML, ["--fail-on", "ecu-z"], "--fail-on: 'ecu-z' is not a group of the fleet"),
        ("models: [", [], "invalid YAML at line"),
        ("models: {}", [], "models: expected a non-empty list of vehicle models"),
        (
            "models: [{name: car, share: 1, ecus: [{hardware_id: a, fail_rate: 2}]}]",
            [],
            "models[0].ecus[0].fail_rate (model 'car'): expected a fraction from 0 to 1",
        ),
    ],
)
def test_cli_bad_fleet_files_are_one_line_errors(
    tmp_path: Path, content: str, extra: list[str], message: str
) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(content)
    text = one_error(sim("--policy", "canary", "--fleet-file", path, *extra))
    assert message in text


def test_cli_unreadable_fleet_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    assert one_error(sim("--policy", "canary", "--fleet-file", missing)) == (
        f"--fleet-file {missing}: cannot read: No such file or directory"
    )
    assert "cannot read" in one_error(sim("--policy", "canary", "--fleet-file", tmp_path))

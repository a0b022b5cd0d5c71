"""``overdrive policy list|validate|show``: run through the real root command (with ``policy``
registered for the test, as ``overdrive/cli.py`` will register it) so error handling is the
console script's, plus CliRunner on the group itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click.testing
import pytest

from overdrive.rollout_policies import PRESETS
from overdrive.rollout_policies.cli import policy
from tests.conftest import Result, run_cli

VALID = """\
name: nightly
deadline: 10d
maintenance_windows:
  - {days: [mon, tue], start: "22:00", end: "05:00"}
stages:
  - {name: first, share: 50, soak: 2h, min_finished: 20}
  - {name: rest, share: 100%, manual_approval: true}
"""


Run = Result


Invoke = Callable[..., Run]


@pytest.fixture
def run() -> Invoke:
    """``overdrive policy ARGS`` through the real root command."""
    return lambda *args: run_cli("policy", *args)


def one_error(r: Run) -> str:
    assert r.code == 1, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0].removeprefix("error: ")


def test_list(run: Invoke) -> None:
    r = run("list")
    assert r.code == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STAGES", "DEADLINE", "DESCRIPTION"]
    assert [line.split()[0] for line in lines[1:]] == list(PRESETS)
    assert "0.05% → 0.1% → 0.2% → 0.4%" in lines[1]


def test_list_json() -> None:
    r = click.testing.CliRunner().invoke(policy, ["list", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [row["name"] for row in rows] == list(PRESETS)
    assert rows[0]["stages"][:3] == ["0.05%", "0.1%", "0.2%"] and rows[0]["deadline"] == "14d"


def test_validate_ok(run: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "nightly.yaml"
    path.write_text(VALID)
    r = run("validate", path)
    assert (r.code, r.stderr) == (0, "")
    assert r.stdout == (
        f"{path}: valid policy 'nightly': 2 stages: 50 → 100%; deadline 10d after start, "
        "then pause; 1 maintenance window\n"
    )


def test_validate_reports_one_line_naming_file_and_field(run: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text("stages:\n  - share: 1%\n  - share: 10%\n  - share: 110%\n")
    assert one_error(run("validate", path)) == (
        f"{path}: stages[2].share: must be a percentage like '10%' or a positive count, got '110%'"
    )


def test_validate_unknown_field_and_missing_file(run: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "typo.json"
    path.write_text('{"stages": [{"share": "100%", "sok": "2h"}]}')
    assert (
        one_error(run("validate", path))
        == f"{path}: stages[0].sok: unknown field; did you mean 'soak'?"
    )
    missing = tmp_path / "nope.yaml"
    assert (
        one_error(run("validate", missing)) == f"{missing}: cannot read: No such file or directory"
    )


def test_show_preset_table(run: Invoke) -> None:
    r = run("show", "canary", "--fleet", "12345")
    assert r.code == 0, r
    lines = r.stdout.splitlines()
    assert lines[0].startswith("canary: 0.05% pilot")
    assert lines[1] == "source: preset 'canary'"
    assert lines[2] == (
        "12 stages: 0.05% → 0.1% → 0.2% → 0.4% → 0.8% → 1.6% → 3.2% → 6.4% → 12.5% → 25% → "
        "50% → 100%; deadline 14d after start, then pause"
    )
    assert lines[3] == "maintenance windows: none (vehicles install whenever assigned)"
    assert lines[4] == (
        "judged: overall, per hardware id, region, model; halts when a group's failures are "
        "clearly above 1% (sequential test: caught fast at 20%, false-halt rate 1%)"
    )
    header = lines[6].split("  ")
    assert [h.strip() for h in header if h.strip()] == [
        "#",
        "STAGE",
        "SHARE",
        "SOAK",
        "MIN FINISHED",
        "SUCCESS ≥",
        "FAILURE ≤",
        "ON BREACH",
        "APPROVAL",
        "VEHICLES OF 12345",
    ]
    assert lines[7].split() == [
        "1",
        "pilot-0.05%",
        "0.05%",
        "1h",
        "90%",
        "of",
        "admitted",
        "90%",
        "10%",
        "abort",
        "-",
        "7",
    ]
    assert lines[18].split() == [
        "12",
        "fleet-100%",
        "100%",
        "-",
        "50%",
        "of",
        "admitted",
        "98%",
        "2%",
        "pause",
        "-",
        "12345",
    ]


def test_show_file_and_json(run: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "nightly.yaml"
    path.write_text(VALID)
    r = run("show", path)
    assert r.code == 0, r
    assert "maintenance windows: mon,tue 22:00–05:00 (vehicle local time)" in r.stdout
    assert "required" in r.stdout.splitlines()[-1]
    as_json = run("show", path, "--json")
    document = json.loads(as_json.stdout)
    assert document["stages"][0] == {
        "name": "first",
        "share": 50,
        "soak": "2h",
        "min_finished": 20,
        "success_threshold": "95%",
        "max_failure_rate": "5%",
        "on_breach": "pause",
        "manual_approval": False,
    }
    assert document["maintenance_windows"] == [
        {"days": ["mon", "tue"], "start": "22:00", "end": "05:00"}
    ]


def test_show_unknown_name(run: Invoke) -> None:
    assert one_error(run("show", "canry")) == (
        "'canry' is neither a preset (canary, linear, exponential, immediate, manual) nor a "
        "policy file; did you mean 'canary'?"
    )


def test_show_rejects_fleet_with_json() -> None:
    r = click.testing.CliRunner().invoke(policy, ["show", "canary", "--json", "--fleet", "5"])
    assert r.exit_code == 2 and "cannot be combined with --json" in r.output


def test_show_file_named_like_a_preset(
    run: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("canary").write_text('{"stages": [{"share": "100%"}]}')
    assert "source: preset 'canary'" in run("show", "canary").stdout
    assert "source: file ./canary" in run("show", "./canary").stdout


@pytest.mark.parametrize("name", list(PRESETS))
def test_show_yaml_is_an_editable_policy_that_validates(
    run: Invoke, tmp_path: Path, name: str
) -> None:
    shown = run("show", name, "--yaml")
    assert (shown.code, shown.stderr) == (0, "")
    assert shown.stdout.startswith(f"# from preset {name!r}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(shown.stdout)
    valid = run("validate", path)
    assert valid.code == 0 and "valid policy" in valid.stdout, valid
    # The same document as --json gives, field for field.
    assert json.loads(run("show", path, "--json").stdout) == json.loads(
        run("show", name, "--json").stdout
    )


def test_show_yaml_round_trips_a_file_with_windows(run: Invoke, tmp_path: Path) -> None:
    source = tmp_path / "nightly.yaml"
    source.write_text(VALID)
    shown = run("show", source, "--yaml")
    assert shown.code == 0, shown
    assert "start: '22:00'" in shown.stdout  # text, not YAML 1.1's base-60 number
    copy = tmp_path / "copy.yaml"
    copy.write_text(shown.stdout.replace("soak: 2h", "soak: 3h"))  # an edit
    assert run("validate", copy).code == 0
    assert json.loads(run("show", copy, "--json").stdout)["stages"][0]["soak"] == "3h"


def test_show_yaml_without_pyyaml_is_one_line(run: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def no_yaml(name: str, *args: object) -> object:
        if name == "yaml":
            raise ImportError("No module named 'yaml'", name="yaml")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib, "import_module", no_yaml)
    assert one_error(run("show", "canary", "--yaml")) == (
        "--yaml needs PyYAML, which is not installed (pip install 'overdrive[server]'); "
        "--json prints the same document as JSON"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--yaml", "--json"], "--json and --yaml exclude each other"),
        (["--yaml", "--fleet", "5"], "cannot be combined with --yaml"),
    ],
)
def test_show_yaml_rejects_conflicting_options(args: list[str], message: str) -> None:
    r = click.testing.CliRunner().invoke(policy, ["show", "canary", *args])
    assert r.exit_code == 2 and message in r.output

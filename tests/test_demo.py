"""``overdrive demo`` runs the whole system end to end (a smaller fleet) and ends as promised."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Cli


def test_demo_end_to_end(cli: Cli, tmp_path: Path) -> None:
    workspace = tmp_path / "demo"
    result = cli("demo", "--workspace", workspace, "--vehicles", "10")
    assert result.code == 0, result.stdout[-2000:] + result.stderr
    assert "the policy paused the campaign: failure rate" in result.stdout
    assert "campaign completed across the fleet" in result.stdout
    summary = json.loads((workspace / "summary.json").read_text())
    # Everyone ends on the fixed release 1.2; the broken 1.1 was rolled back where it was tried.
    assert summary["versions"] == {"ecu-gateway 1.2": 6, "ecu-infotainment 1.2": 4}
    assert summary["rollbacks"] >= 1
    assert summary["bytes_shipped"]["delta"] > 0
    assert summary["bytes_shipped"]["full"] == 0  # every vehicle had a delta for its image


def test_demo_refuses_a_non_empty_workspace(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    result = cli("demo", "--workspace", tmp_path)
    assert result.code == 1 and result.error_lines == [f"error: workspace {tmp_path} is not empty"]

"""The shipped systemd units are valid (systemd-analyze verify) and agree with the client."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "client" / "systemd"


def test_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    overdrive = Path(sys.executable).with_name("overdrive")
    for unit in UNITS.glob("*.service"):
        text = unit.read_text().replace("/usr/local/bin/overdrive", str(overdrive))
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", *sorted(tmp_path.glob("*.service"))], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_units_share_the_state_dir_and_order() -> None:
    post_boot = (UNITS / "overdrive-post-boot.service").read_text()
    daemon = (UNITS / "overdrive-vehicle.service").read_text()
    env = (UNITS / "overdrive.env").read_text()
    assert "OVERDRIVE_VEHICLE_STATE=/var/lib/overdrive" in env
    for unit in (post_boot, daemon):
        assert "EnvironmentFile=-/etc/default/overdrive" in unit
        assert "ConditionPathExists=/var/lib/overdrive/vehicle.toml" in unit
    assert "ExecStart=/usr/local/bin/overdrive vehicle post-boot" in post_boot
    assert "Type=oneshot" in post_boot and "SuccessExitStatus=4" in post_boot
    assert "After=network-online.target overdrive-post-boot.service" in daemon
    assert "Restart=on-failure" in daemon and "ReadWritePaths=/var/lib/overdrive" in daemon

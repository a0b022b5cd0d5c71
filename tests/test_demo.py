"""``overdrive demo`` runs the whole system end to end (a smaller fleet) and ends as promised."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from overdrive.demo import Demo, DemoError
from tests.conftest import Cli

README = Path(__file__).resolve().parents[1] / "README.md"


def normalised(line: str) -> str:
    """A demo output line without what changes from run to run: the clock, paths, ids, numbers."""
    line = re.sub(r"^\[\s*[\d.]+s\] ", "", line)
    line = re.sub(r"/[^\s,;)]+", "PATH", line)
    line = re.sub(r"\b[0-9a-f]{8}\b", "ID", line)
    return re.sub(r"\d+(\.\d+)?", "#", line).rstrip()


VARYING = ("the policy paused the campaign: ", "naming the ADAS ECU; the campaign is ")
"""Quoted lines whose rest depends on the run's draw."""


def readme_demo_lines() -> list[str]:
    text = README.read_text("utf-8")
    block = text.split("What `make demo` prints", 1)[1].split("```", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


def test_demo_end_to_end(cli: Cli, tmp_path: Path) -> None:
    workspace = tmp_path / "demo"
    result = cli("demo", "--workspace", workspace, "--vehicles", "20")
    assert result.code == 0, result.stdout[-2000:] + result.stderr
    assert "the policy paused the campaign: failure rate" in result.stdout
    assert "campaign completed across the fleet" in result.stdout
    # The README quotes this run (abridged): each quoted line is printed, in that order.
    printed = [normalised(line) for line in result.stdout.splitlines()]
    position = 0
    for line in readme_demo_lines():
        wanted = normalised(line)
        # Which vehicles the canary draws changes from run to run, and with it the words of
        # the breach (a campaign-wide rate, or one group's clear failures): compare the start.
        for varying in VARYING:
            if varying in wanted:
                wanted = wanted.split(varying, 1)[0] + varying
        matches = [i for i, p in enumerate(printed) if i >= position and p.startswith(wanted)]
        assert matches, f"README line not printed (in order): {line}"
        position = matches[0] + 1
    summary = json.loads((workspace / "summary.json").read_text())
    # Everyone ends on the fixed release 1.2; the broken 1.1 was rolled back where it was tried.
    assert summary["versions"] == {"ecu-gateway 1.2": 12, "ecu-infotainment 1.2": 8}
    assert summary["rollbacks"] >= 1
    assert summary["bytes_shipped"]["delta"] > 0
    assert summary["bytes_shipped"]["full"] == 0  # every vehicle had a delta for its image
    # The three-ECU cars: the broken set rolled back on every ECU, the fixed one committed.
    cars = summary["cars"]
    assert cars["sets_rolled_back"] >= 1 and cars["sets_committed"] == 3
    assert cars["ecus"] == {"car-adas 1.2": 3, "car-bcm 1.2": 3, "car-gateway 1.2": 3}


def test_demo_refuses_a_non_empty_workspace(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    result = cli("demo", "--workspace", tmp_path)
    assert result.code == 1 and result.error_lines == [f"error: workspace {tmp_path} is not empty"]


# ------------------------------------------------------------------ workspace and shutdown
# These replace the show itself (Demo.run_all) with something small: the workspace handling
# and the server's shutdown are what they test, and they stay fast.


def fake_show(size: int = 1_000_000) -> Any:
    def run_all(self: Demo) -> None:
        (self.ws / "images").mkdir()
        (self.ws / "images" / "big.img").write_bytes(os.urandom(size))

    return run_all


@pytest.fixture
def temporary_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the demo's temporary workspace goes (instead of the real /tmp)."""
    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def test_temporary_workspace_is_reported_and_removed(
    cli: Cli, temporary_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Demo, "run_all", fake_show())
    result = cli("demo")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    workspace = lines[0].split()[1]
    assert workspace.startswith(str(temporary_dir / "overdrive-demo-"))
    assert lines[0].endswith("(a temporary directory, removed at the end; --keep keeps it)")
    assert lines[-1].startswith(f"removed the workspace {workspace} (1.0 MB")
    assert list(temporary_dir.iterdir()) == []


def test_keep_keeps_the_temporary_workspace(
    cli: Cli, temporary_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Demo, "run_all", fake_show())
    result = cli("demo", "--keep")
    assert result.code == 0, result.stderr
    (kept,) = temporary_dir.iterdir()
    assert (kept / "images" / "big.img").is_file()
    assert result.stdout.splitlines()[-1] == (
        f"workspace {kept} holds 1.0 MB; remove it with: rm -rf {kept}"
    )


def test_a_failed_demo_keeps_its_workspace_to_look_into(
    cli: Cli, temporary_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Demo) -> None:
        fake_show(1000)(self)
        raise DemoError("the server did not start; see server.log")

    monkeypatch.setattr(Demo, "run_all", broken)
    result = cli("demo")
    assert result.code == 1
    assert result.error_lines == ["error: the server did not start; see server.log"]
    (kept,) = temporary_dir.iterdir()
    assert f"kept the workspace {kept}" in result.stdout and f"rm -rf {kept}" in result.stdout


DRIVER = """
import sys
from overdrive import demo as d

def run_all(self):
    for role in ("root", "targets", "snapshot", "timestamp", *d.DIRECTOR_KEYS):
        d.run("keys", "generate", role, "--dir", self.keys, "--insecure-no-passphrase")
    d.run("repo", "init", "--storage", self.repo, "--keys", self.keys)
    d.run("director", "init", "--storage", self.director, "--keys", self.keys)
    self.start_server()

d.Demo.run_all = run_all
from overdrive.cli import main
main(sys.argv[1:])
"""


def alive(pid: int) -> bool:
    """Is ``pid`` a running (not zombie) process?"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_stops_the_served_server_and_cleans_up(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    demo = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "demo", "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    assert demo.stdout is not None
    shown, server_pid = "", 0
    try:
        deadline = time.monotonic() + 60
        while "serving http" not in shown:
            assert demo.poll() is None and time.monotonic() < deadline, shown
            ready, _, _ = select.select([demo.stdout], [], [], 0.5)
            if ready:  # the raw pipe: a buffered readline would hide what select cannot see
                shown += os.read(demo.stdout.fileno(), 65536).decode()
        server_pid = int(re.search(r"pid (\d+)", shown).group(1))  # type: ignore[union-attr]
        assert alive(server_pid)
        demo.send_signal(signal.SIGTERM)
        rest, _ = demo.communicate(timeout=30)
        shown += rest.decode()
        assert demo.returncode == 0, shown  # it had completed: being stopped is how it ends
        assert "stopped (SIGTERM)" in shown and "removed the workspace" in shown
        assert not alive(server_pid)
        assert not list(tmp_path.glob("overdrive-demo-*"))
    finally:
        if demo.poll() is None:
            demo.kill()
        if server_pid and alive(server_pid):
            os.killpg(server_pid, signal.SIGKILL)


def test_demo_images_writes_sample_images(tmp_path: Path) -> None:
    """``overdrive demo images``: the README's sample builds, without running the demo."""
    from click.testing import CliRunner

    from overdrive.demo import demo

    runner = CliRunner()
    result = runner.invoke(demo, ["images", "--out", str(tmp_path), "--versions", "1.0,1.1"])
    assert result.exit_code == 0, result.output
    one, two = (
        (tmp_path / "rootfs-1.0.img").read_bytes(),
        (tmp_path / "rootfs-1.1.img").read_bytes(),
    )
    assert len(one) == len(two) == 8 << 20 and one != two
    again = runner.invoke(demo, ["images", "--out", str(tmp_path)])
    assert again.exit_code == 1 and "exists" in again.output
    bad = runner.invoke(demo, ["images", "--versions", "../etc"])
    assert bad.exit_code == 2 and "versions are like 1.0" in bad.output

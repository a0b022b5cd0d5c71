"""A vehicle updates end to end against a real server process (loopback HTTP) and storage."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from overdrive.server.campaigns import tick
from tests.client.conftest import LiveServer, provision
from tests.conftest import Cli
from tests.live_server import start_campaign, vehicle_status


def status(cli: Cli, state_dir: Path) -> dict[str, Any]:
    return vehicle_status(cli, state_dir)


def server_view(live: LiveServer, vehicle_id: str) -> dict[str, Any]:
    with live.ctx.session() as session:
        from overdrive.server.models import Event, Membership

        memberships = {
            m.hardware_id: m.status
            for m in session.query(Membership).filter_by(vehicle_id=vehicle_id)
        }
        events = [
            e.type
            for e in session.query(Event)
            .filter_by(vehicle_id=vehicle_id)
            .order_by(Event.received_at)
        ]
    return {"memberships": memberships, "events": events}


def test_delta_update_commits(cli: Cli, live_server: LiveServer, tmp_path: Path) -> None:
    car = provision(cli, live_server, tmp_path, "car-1")
    assert cli("vehicle", "run", "--state-dir", car.state_dir, "--once").stdout.startswith(
        "nothing"
    )
    start_campaign(live_server)
    run = cli("vehicle", "run", "--state-dir", car.state_dir, "--once")
    assert run.code == 0, run.stderr
    assert run.stdout.startswith("updated: installed 1.1 into slot B")
    assert status(cli, car.state_dir)["state"] == "installed"
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 0 and "committed 1.1 in slot B" in boot.stdout
    after = status(cli, car.state_dir)
    assert after["active_slot"] == "B" and after["slots"]["B"]["version"] == "1.1"
    assert after["pending_events"] == 0
    assert car.slot_b.read_bytes() == live_server.published.images["ecu-a/1.1"]["path"].read_bytes()
    view = server_view(live_server, "car-1")
    assert view["memberships"] == {"ecu-a": "committed"}
    assert sorted(view["events"]) == sorted(
        ["downloading", "downloaded", "installing", "installed", "booted", "committed"]
    )
    # The next poll reports 1.1 with its counter; nothing more to do.
    assert cli("vehicle", "run", "--state-dir", car.state_dir, "--once").stdout.startswith(
        "nothing"
    )
    assert tick(live_server.ctx)  # the immediate campaign completes
    again = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert "booted slot B" in again.stdout


def test_failed_health_check_rolls_back(cli: Cli, live_server: LiveServer, tmp_path: Path) -> None:
    script = tmp_path / "health.py"
    script.write_text(
        "import os, sys\nsys.exit(1 if os.environ['OVERDRIVE_VERSION'] == '1.1' else 0)\n"
    )
    car = provision(cli, live_server, tmp_path, "car-2", health_check=f"{sys.executable} {script}")
    start_campaign(live_server)
    assert cli("vehicle", "run", "--state-dir", car.state_dir, "--once").code == 0
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 4, boot  # rolled back
    assert "rolled back slot B: health check failed" in boot.stdout
    assert "rebooting into slot A; then booted slot A (1.0): healthy" in boot.stdout
    after = status(cli, car.state_dir)
    assert after["active_slot"] == "A" and after["state"] == "idle"
    assert after["last_result"]["status"] == "rolled_back"
    assert server_view(live_server, "car-2")["memberships"] == {"ecu-a": "rolled_back"}
    # It is not offered the same release again.
    assert cli("vehicle", "run", "--state-dir", car.state_dir, "--once").stdout.startswith(
        "nothing"
    )
    assert "booted slot A" in cli("vehicle", "boot", "--state-dir", car.state_dir).stdout


def test_boot_loop_exhausts_tries_and_rolls_back(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    car = provision(cli, live_server, tmp_path, "car-3")
    start_campaign(live_server)
    assert cli("vehicle", "run", "--state-dir", car.state_dir, "--once").code == 0
    for _ in range(3):  # the new slot's three tries, each boot dying before post-boot
        crash = cli("vehicle", "boot", "--state-dir", car.state_dir, "--crash")
        assert "booted slot B and crashed" in crash.stdout
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 4
    assert "rolled back slot B: boot attempts exhausted" in boot.stdout
    assert server_view(live_server, "car-3")["memberships"] == {"ecu-a": "rolled_back"}


def test_offline_events_are_queued_then_delivered(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    car = provision(cli, live_server, tmp_path, "car-4")
    start_campaign(live_server)
    assert cli("vehicle", "run", "--state-dir", car.state_dir, "--once").code == 0
    config = car.state_dir / "vehicle.toml"
    online = config.read_text()
    config.write_text(online.replace(live_server.url, "http://127.0.0.1:9"))  # the server is gone
    assert "committed" in cli("vehicle", "boot", "--state-dir", car.state_dir).stdout
    assert status(cli, car.state_dir)["pending_events"] == 2
    offline = cli("vehicle", "run", "--state-dir", car.state_dir, "--once")
    assert offline.code == 5 and offline.stdout.startswith("offline")
    config.write_text(online)
    assert cli("vehicle", "run", "--state-dir", car.state_dir, "--once").code == 0
    assert status(cli, car.state_dir)["pending_events"] == 0
    assert {"booted", "committed"} <= set(server_view(live_server, "car-4")["events"])


def test_slot_larger_than_the_factory_image(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """A partition is usually larger than the image it holds: --factory-length says how much of
    slot A is the factory image, so its hash is the release's and a delta applies."""
    ref = live_server.published.images["ecu-a/1.0"]
    padded = tmp_path / "padded.img"
    padded.write_bytes(ref["path"].read_bytes() + b"\0" * 65536)
    car = provision(
        cli,
        live_server,
        tmp_path,
        "car-big",
        factory=padded,
        extra=("--factory-length", str(ref["path"].stat().st_size)),
    )
    assert status(cli, car.state_dir)["slots"]["A"]["sha256"] == ref["sha256"]
    start_campaign(live_server)
    run = cli("vehicle", "run", "--state-dir", car.state_dir, "--once")
    assert run.code == 0 and "installed 1.1 into slot B" in run.stdout, run


@pytest.mark.parametrize("what", ["directory", "missing", "empty", "too-long"])
def test_slot_a_must_hold_the_factory_image(
    cli: Cli, live_server: LiveServer, tmp_path: Path, what: str
) -> None:
    slot = tmp_path / "slot-a"
    extra: list[str] = []
    if what == "directory":
        slot.mkdir()
    elif what == "empty":
        slot.write_bytes(b"")
    elif what == "too-long":
        slot.write_bytes(b"x" * 100)
        extra = ["--factory-length", "101"]
    result = cli(
        "vehicle",
        "provision",
        "--state-dir",
        tmp_path / "state",
        "--server",
        live_server.url,
        "--enroll-token",
        live_server.enroll,
        "--vehicle-id",
        "car-x",
        "--hardware-id",
        "ecu-a",
        "--slot-a",
        slot,
        "--slot-b",
        tmp_path / "slot-b",
        "--trusted-root",
        live_server.published.storage / "metadata" / "1.root.json",
        "--director-root",
        live_server.published.director_root,
        "--repo-url",
        live_server.published.storage.as_uri(),
        "--factory-version",
        "1.0",
        *extra,
    )
    if what == "directory":  # caught by the option's own type: a usage error
        assert result.code == 2 and "is a directory" in result.error_lines[-1], result
    else:
        assert result.code == 1 and len(result.error_lines) == 1, result
        assert "slot A" in result.stderr
    assert not (tmp_path / "state" / "vehicle.key").exists()


def test_reboot_after_install_says_so_then_reboots(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    marker = tmp_path / "rebooted"
    reboot = f"{sys.executable} -c \"open({str(marker)!r}, 'w').write('yes')\""
    car = provision(
        cli,
        live_server,
        tmp_path,
        "car-rb",
        extra=("--reboot-after-install", "--reboot-command", reboot),
    )
    start_campaign(live_server)
    run = cli("vehicle", "run", "--state-dir", car.state_dir, "--once")
    assert run.code == 0 and run.stdout.startswith(
        "updated: installed 1.1 into slot B; rebooting to try it"
    ), run
    assert marker.read_text() == "yes"
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 0 and "committed 1.1 in slot B" in boot.stdout

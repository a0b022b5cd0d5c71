"""``overdrive vehicle post-boot`` on a vehicle whose bootloader is real GRUB.

Each "reboot" here is the shipped GRUB fragment running in real GRUB (QEMU) over the vehicle's
grubenv, exactly as it runs at power-on; then post-boot runs as init would, with the kernel
command line GRUB's menu entry would pass (``overdrive.slot=…``) and a boot id of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from overdrive.server.models import Event, Membership
from tests.client.realboot import grub_boot, need, need_grub
from tests.conftest import Cli, Result
from tests.live_server import Car, LiveServer, provision, run_once, start_campaign

pytestmark = pytest.mark.usefixtures("grub_tools")


@pytest.fixture
def grub_tools() -> None:
    need("grub-editenv", "grub-common")
    need_grub()


class GrubCar:
    """A provisioned vehicle on the GRUB backend, its grubenv, and the boots it has had."""

    def __init__(self, cli: Cli, car: Car, env: Path, work: Path) -> None:
        self.cli, self.car, self.env, self.work = cli, car, env, work
        self.boots = 0
        self.reboots = work / "reboots"

    def power_on(self) -> str:
        """The bootloader's part of a boot: real GRUB over the grubenv; the slot it chose."""
        self.boots += 1
        return grub_boot(self.env, self.work / f"grub-{self.boots}")

    def post_boot(self, slot: str | None, *extra: str, arg: str = "overdrive.slot") -> Result:
        """init's part: post-boot with the command line GRUB's menu entry passes."""
        cmdline = self.work / f"cmdline-{self.boots}"
        cmdline.write_text(
            "BOOT_IMAGE=/vmlinuz root=/dev/vda2 ro quiet" + (f" {arg}={slot}" if slot else "")
        )
        return self.cli(
            "vehicle",
            "post-boot",
            "--state-dir",
            self.car.state_dir,
            "--cmdline",
            cmdline,
            "--boot-id",
            f"boot-{self.boots}",
            *extra,
        )

    def status(self) -> dict[str, Any]:
        result = self.cli("vehicle", "status", "--state-dir", self.car.state_dir, "--json")
        assert result.code == 0, result.stderr
        return dict(json.loads(result.stdout))

    def grubenv(self) -> dict[str, str]:
        listed = subprocess.run(
            ["grub-editenv", self.env, "list"], capture_output=True, text=True, check=True
        ).stdout
        return dict(line.split("=", 1) for line in listed.splitlines() if "=" in line)


def grub_car(
    cli: Cli, live: LiveServer, tmp_path: Path, name: str, *options: str, health: str = ""
) -> GrubCar:
    env = tmp_path / f"{name}-grubenv"
    reboots = tmp_path / "reboots"
    reboot = f"{sys.executable} -c \"open({str(reboots)!r}, 'a').write('reboot\\n')\""
    car = provision(
        cli,
        live,
        tmp_path,
        name,
        health_check=health,
        extra=(
            "--boot-backend",
            "grub",
            "--boot-env",
            str(env),
            "--reboot-command",
            reboot,
            *options,
        ),
    )
    return GrubCar(cli, car, env, tmp_path)


def membership(live: LiveServer, vehicle_id: str) -> str:
    with live.ctx.session() as session:
        return str(session.query(Membership).filter_by(vehicle_id=vehicle_id).one().status)


def events(live: LiveServer, vehicle_id: str) -> list[Event]:
    with live.ctx.session() as session:
        return list(session.query(Event).filter_by(vehicle_id=vehicle_id))


def failing_health(tmp_path: Path, bad_version: str) -> str:
    script = tmp_path / "health.py"
    script.write_text(
        "import os, sys\n"
        f"bad = os.environ['OVERDRIVE_VERSION'] == {bad_version!r}\n"
        "print('self-test:', 'service crashed' if bad else 'ok')\n"
        "sys.exit(1 if bad else 0)\n"
    )
    return f"{sys.executable} {script}"


def test_issue_example_grub_boots_b_and_post_boot_commits(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """The report's example: installed into B, GRUB boots B (as its own script does), and init's
    post-boot commits it; it used to be rolled back by 'vehicle boot', which re-ran the
    bootloader's rule on an environment GRUB had already updated."""
    car = grub_car(cli, live_server, tmp_path, "grub-1")
    start_campaign(live_server)
    installed = run_once(cli, car.car)
    assert installed.code == 0 and "installed 1.1 into slot B" in installed.stdout
    assert car.grubenv()["ORDER"] == "B A" and car.grubenv()["B_LEFT"] == "3"

    assert car.power_on() == "B"
    assert car.grubenv()["B_LEFT"] == "2" and car.grubenv()["BOOTED_SLOT"] == "B"
    commit = car.post_boot("B")
    assert commit.code == 0, commit
    assert commit.stdout.strip() == "committed 1.1 in slot B"
    assert membership(live_server, "grub-1") == "committed"
    assert car.grubenv()["B_GOOD"] == "1" and car.grubenv()["A_GOOD"] == "1"

    again = car.post_boot("B")  # the same boot: nothing changes
    assert again.code == 0 and again.stdout.startswith("already handled this boot: committed")
    before = car.env.read_bytes()
    assert car.power_on() == "B" and car.env.read_bytes() == before  # steady: no write at all
    routine = car.post_boot("B")
    assert routine.code == 0 and routine.stdout.startswith("booted slot B (1.1): healthy")
    assert not car.reboots.exists()


def test_failed_health_check_marks_bad_reboots_and_grub_falls_back(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    car = grub_car(cli, live_server, tmp_path, "grub-2", health=failing_health(tmp_path, "1.1"))
    start_campaign(live_server)
    assert run_once(cli, car.car).code == 0
    assert car.power_on() == "B"
    result = car.post_boot("B")
    assert result.code == 4, result
    assert "rolled back slot B: health check failed: self-test: service crashed (exit code 1)" in (
        result.stdout
    )
    assert result.stdout.strip().endswith("rebooting into slot A")
    assert car.reboots.read_text() == "reboot\n"  # through the configured command
    assert membership(live_server, "grub-2") == "rolled_back"
    assert car.power_on() == "A"
    after = car.post_boot("A")
    assert after.code == 0 and "booted slot A (1.0): healthy" in after.stdout
    status = car.status()
    assert status["active_slot"] == "A" and status["slots"]["B"] is None


def test_release_that_never_comes_up_is_rolled_back_by_grub_then_reported(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """The new slot dies before init on each of its tries: GRUB falls back by itself, and
    post-boot, on the old slot, records the rollback and reports it."""
    car = grub_car(cli, live_server, tmp_path, "grub-3", "--trial-boots", "2")
    start_campaign(live_server)
    assert run_once(cli, car.car).code == 0
    assert [car.power_on(), car.power_on()] == ["B", "B"]  # two tries, each a kernel panic
    assert car.power_on() == "A"
    result = car.post_boot("A")
    assert result.code == 4, result
    assert "rolled back slot B: boot attempts exhausted" in result.stdout
    assert "rebooting" not in result.stdout and not car.reboots.exists()
    assert membership(live_server, "grub-3") == "rolled_back"
    rolled = [e for e in events(live_server, "grub-3") if e.type == "rolled_back"]
    assert len(rolled) == 1 and rolled[0].campaign_id


def test_booted_slot_from_rauc_slot_or_the_boot_record(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    car = grub_car(cli, live_server, tmp_path, "grub-4")
    start_campaign(live_server)
    assert run_once(cli, car.car).code == 0
    assert car.power_on() == "B"
    no_arg = car.post_boot(None)  # no overdrive.slot=: GRUB's BOOTED_SLOT record says B
    assert no_arg.code == 0 and "committed 1.1 in slot B" in no_arg.stdout
    assert car.power_on() == "B"
    rauc = car.post_boot("B", arg="rauc.slot")
    assert rauc.code == 0 and "booted slot B" in rauc.stdout


def test_unknown_booted_slot_is_a_one_line_error(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    car = grub_car(cli, live_server, tmp_path, "grub-5")
    rescue = car.post_boot("R")
    assert rescue.code == 1 and rescue.error_lines == [
        "error: the kernel command line says slot 'R', which is not one of A B: a rescue "
        "system does not run post-boot"
    ]
    subprocess.run(["grub-editenv", car.env, "set", "BOOTED_SLOT="], check=True)
    unknown = car.post_boot(None)  # no record (not our boot script), no command-line argument
    assert unknown.code == 1 and len(unknown.error_lines) == 1
    assert "cannot tell which slot is running: put overdrive.slot=<slot>" in unknown.stderr


def test_no_reboot_says_a_reboot_is_needed(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    car = grub_car(cli, live_server, tmp_path, "grub-6", health=failing_health(tmp_path, "1.1"))
    start_campaign(live_server)
    assert run_once(cli, car.car).code == 0
    assert car.power_on() == "B"
    result = car.post_boot("B", "--no-reboot")
    assert result.code == 4 and result.stdout.strip().endswith(
        "rebooting into slot A (reboot needed)"
    )
    assert not car.reboots.exists()


def test_reboot_command_failure_is_an_error_after_everything_is_saved(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    car = grub_car(
        cli,
        live_server,
        tmp_path,
        "grub-7",
        "--reboot-command",
        "/nonexistent/reboot",
        health=failing_health(tmp_path, "1.1"),
    )
    start_campaign(live_server)
    assert run_once(cli, car.car).code == 0
    assert car.power_on() == "B"
    result = car.post_boot("B")
    assert result.code == 1 and len(result.error_lines) == 1
    assert "rolled back slot B" in result.stderr and "'/nonexistent/reboot' could not run" in (
        result.stderr
    )
    assert membership(live_server, "grub-7") == "rolled_back"  # reported before the reboot
    assert car.grubenv()["B_GOOD"] == "0" and car.grubenv()["ORDER"] == "A B"


def test_late_failure_of_a_committed_slot_falls_back(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """1.1 committed, then its health check fails on three boots in a row (a crash loop that
    started after the commit): the car falls back to 1.0, still in slot A, and says so."""
    marker = tmp_path / "broken"
    script = tmp_path / "late.py"
    script.write_text(
        "import os, sys\n"
        f"sys.exit(1 if os.path.exists({str(marker)!r}) and "
        "os.environ['OVERDRIVE_SLOT'] == 'B' else 0)\n"
    )
    car = grub_car(cli, live_server, tmp_path, "grub-8", health=f"{sys.executable} {script}")
    start_campaign(live_server)
    assert run_once(cli, car.car).code == 0
    assert car.power_on() == "B" and car.post_boot("B").code == 0  # committed
    marker.touch()
    codes = []
    for _ in range(3):
        assert car.power_on() == "B"
        codes.append(car.post_boot("B").code)
    assert codes == [6, 6, 4]  # unhealthy (counted), unhealthy, rolled back
    assert car.reboots.read_text() == "reboot\n"
    assert car.power_on() == "A" and car.post_boot("A").code == 0
    late = [e for e in events(live_server, "grub-8") if e.type == "rolled_back"]
    assert len(late) == 1 and late[0].campaign_id is None
    assert late[0].reason.startswith("late_fallback: slot B (1.1) health check failed on 3 boots")


def test_vehicle_boot_says_it_is_a_simulator(cli: Cli) -> None:
    help_text = cli("vehicle", "boot", "--help").stdout
    assert "SIMULATOR" in help_text and "never run this there" in help_text
    assert "post-boot" in cli("vehicle", "--help").stdout
    assert "tuf-client" not in cli("vehicle", "--help").stdout  # a test protocol, hidden

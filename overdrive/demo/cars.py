"""The demo's cars of three ECUs: a gateway (the primary, A/B slots), an ADAS computer (a
secondary process over loopback TCP, verifying for itself) and a body controller (behind the
simulated update module), updated as one software set.

A set whose ADAS 1.1 fails its health check is rolled back on every ECU of every car that tried
it; the fixed set 1.2 completes. Everything goes through the ``overdrive`` commands a person
would type; each secondary is a real ``overdrive vehicle secondary serve`` process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overdrive.demo.images import build_image

if TYPE_CHECKING:
    from overdrive.demo import Demo

#: The three ECU kinds of a demo car, in install order (the gateway last).
SET = ("car-bcm", "car-adas", "car-gateway")
SIM_MODULE = f"{sys.executable} -m overdrive.client.sim_module"


@dataclass
class ThreeEcuCar:
    vehicle_id: str
    state_dir: Path
    secondary: subprocess.Popen[bytes]


class Cars:
    """The chapter: releases for the three hardware ids, the cars, two set campaigns."""

    def __init__(self, demo: Demo, count: int) -> None:
        self.demo = demo
        self.count = count
        self.home = demo.ws / "cars"
        self.cars: list[ThreeEcuCar] = []
        self.rolled_back = 0
        self.committed = 0

    # ------------------------------------------------------------------ set-up

    def release_all(self) -> None:
        from overdrive.demo import IMAGE_SIZE

        d = self.demo
        for hw in SET:
            for version in ("1.0", "1.1", "1.2"):
                broken = hw == "car-adas" and version == "1.1"
                build_image(
                    d.images / f"{hw}-{version}.img",
                    hw,
                    version,
                    size=IMAGE_SIZE,
                    broken=broken,
                )
            d.release(hw, "1.0")
            d.release(hw, "1.1", "--delta-from", "1.0")

    def provision(self, enroll: str, adas_health: Path, health: Path) -> None:
        from overdrive.demo import run

        d = self.demo
        counters = d.counters()
        for i in range(self.count):
            vid = f"car-{i:02d}"
            home = self.home / vid
            home.mkdir(parents=True)
            secondary = self._start_secondary(home, vid, adas_health, counters[("car-adas", "1.0")])
            module_dir = home / "state" / "modules" / f"{vid}-bcm"
            module_dir.mkdir(parents=True)
            subprocess.run(
                [
                    *SIM_MODULE.split(),
                    "init",
                    str(d.images / "car-bcm-1.0.img"),
                    "1.0",
                    str(counters[("car-bcm", "1.0")]),
                ],
                env={**os.environ, "OVERDRIVE_MODULE_DIR": str(module_dir)},
                check=True,
            )
            ecus = home / "ecus.toml"
            ecus.write_text(
                f'[[ecus]]\nserial = "{vid}-adas"\nhardware_id = "car-adas"\nkind = "secondary"\n'
                f'address = "{secondary[1]}"\n\n'
                f'[[ecus]]\nserial = "{vid}-bcm"\nhardware_id = "car-bcm"\nkind = "module"\n'
                f'command = "{SIM_MODULE}"\n'
            )
            slot_a, slot_b = home / "gateway-a.img", home / "gateway-b.img"
            shutil.copyfile(d.images / "car-gateway-1.0.img", slot_a)
            slot_b.write_bytes(b"")
            run(
                "vehicle",
                "provision",
                "--state-dir",
                home / "state",
                "--server",
                d.url,
                "--enroll-token",
                enroll,
                "--vehicle-id",
                vid,
                "--ecu-serial",
                f"{vid}-gateway",
                "--hardware-id",
                "car-gateway",
                "--slot-a",
                slot_a,
                "--slot-b",
                slot_b,
                "--trusted-root",
                d.repo / "metadata" / "1.root.json",
                "--director-root",
                d.director / "metadata" / "1.root.json",
                "--repo-url",
                d.repo.resolve().as_uri() + "/",
                "--factory-version",
                "1.0",
                "--factory-release-counter",
                str(counters[("car-gateway", "1.0")]),
                "--health-check",
                f"{sys.executable} {health}",
                "--reboot-command",
                "true",
                "--attr",
                "model=m3",
                "--poll-interval",
                "5",
                "--ecus",
                ecus,
            )
            self.cars.append(ThreeEcuCar(vid, home / "state", secondary[0]))
        d.say(
            f"provisioned {self.count} cars of three ECUs: a gateway (A/B slots), an ADAS "
            "computer (a secondary process on loopback TCP) and a body controller (an update "
            "module)"
        )

    def _start_secondary(
        self, home: Path, vid: str, health: Path, counter: int
    ) -> tuple[subprocess.Popen[bytes], str]:
        from overdrive.demo import DemoError, run

        d = self.demo
        slot_a, slot_b = home / "adas-a.img", home / "adas-b.img"
        shutil.copyfile(d.images / "car-adas-1.0.img", slot_a)
        slot_b.write_bytes(b"")
        run(
            "vehicle",
            "secondary",
            "init",
            "--state-dir",
            home / "adas",
            "--serial",
            f"{vid}-adas",
            "--hardware-id",
            "car-adas",
            "--director-root",
            d.director / "metadata" / "1.root.json",
            "--image-root",
            d.repo / "metadata" / "1.root.json",
            "--slot-a",
            slot_a,
            "--slot-b",
            slot_b,
            "--factory-image",
            slot_a,
            "--factory-version",
            "1.0",
            "--factory-release-counter",
            str(counter),
            "--vehicle-id",
            vid,
            "--health-check",
            f"{sys.executable} {health}",
        )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = (home / "adas.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "overdrive.cli",
                "vehicle",
                "secondary",
                "serve",
                "--state-dir",
                str(home / "adas"),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return process, f"127.0.0.1:{port}"
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise DemoError(
                        f"the secondary of {vid} did not start; see {home}/adas.log"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop every secondary process (SIGTERM, then SIGKILL after 10 s)."""
        for car in self.cars:
            if car.secondary.poll() is None:
                car.secondary.send_signal(signal.SIGTERM)
        for car in self.cars:
            try:
                car.secondary.wait(10)
            except subprocess.TimeoutExpired:
                car.secondary.kill()
                car.secondary.wait()

    # ------------------------------------------------------------------ campaigns

    def campaign(self, version: str) -> dict[str, Any]:
        d = self.demo
        created = d.campaign(
            "create",
            "--name",
            f"software set {version}",
            *(arg for hw in SET for arg in ("--release", f"{hw}={version}")),
            "--install-order",
            ",".join(SET),
            "--policy",
            "immediate",
        )
        d.campaign("start", created["id"])
        return created

    def drive(self, campaign_id: str) -> str:
        """Every car polls and updates until its set is committed or rolled back, or the
        campaign stops offering it (the policy paused it); the campaign's state then."""
        from overdrive.demo import DemoError, run

        d = self.demo
        pending = list(self.cars)
        for _round in range(30):
            still = []
            for car in pending:
                out = run("vehicle", "run", "--state-dir", car.state_dir, "--once", ok=(0, 3))
                if "reboot to try it" in out:
                    run("vehicle", "boot", "--state-dir", car.state_dir, ok=(0, 4))
                    still.append(car)
                elif "software set committed" in out:
                    self.committed += 1
                    d.say(f"{car.vehicle_id}: software set committed on all three ECUs")
                elif "software set rolled back" in out:
                    self.rolled_back += 1
                    d.say(f"{car.vehicle_id}: {out.strip()}", fg="yellow")
                else:
                    still.append(car)
            pending = still
            state = str(d.campaign("status", campaign_id)["state"])
            if not pending or state != "running":
                return state
            time.sleep(1.0)
        raise DemoError(f"cars still updating: {', '.join(c.vehicle_id for c in pending)}")

    def versions(self) -> dict[str, int]:
        from overdrive.demo import run

        counts: dict[str, int] = {}
        for car in self.cars:
            status = json.loads(run("vehicle", "status", "--state-dir", car.state_dir, "--json"))
            names = [f"car-gateway {status['slots'][status['active_slot']]['version']}"]
            for ecu in status["ecus"]:
                if ecu["kind"] == "module":
                    names.append(f"{ecu['hardware_id']} {ecu['image']['version']}")
                else:
                    inner = ecu["status"]
                    names.append(
                        f"{ecu['hardware_id']} {inner['slots'][inner['active']]['version']}"
                    )
            for name in names:
                counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))

    def run_chapter(self, health: Path) -> None:
        """Releases, cars, the broken set, the fixed set (``health``: the demo's health check,
        whose words the ADAS computer's own copy changes)."""
        from overdrive.demo import DemoError, run

        d = self.demo
        enroll = run(
            "server", "enroll-token", "create", "--db", d.db, "--uses", str(self.count)
        ).strip()
        d.heading("5. Cars of three ECUs: one software set, all or nothing")
        self.release_all()
        adas_health = self.home / "adas-health-check.py"
        self.home.mkdir(parents=True, exist_ok=True)
        adas_health.write_text(
            health.read_text().replace("infotainment service", "ADAS perception service")
        )
        self.provision(enroll, adas_health, health)
        bad = self.campaign("1.1")
        d.say(f"campaign {bad['id'][:8]}: the set 1.1 (its ADAS 1.1 is broken on purpose)")
        state = self.drive(bad["id"])
        if not self.rolled_back or self.committed:
            raise DemoError(
                f"expected the set 1.1 to roll back, {self.committed} cars committed it"
            )
        d.say(
            f"{self.rolled_back} cars rolled back all three ECUs, naming the ADAS ECU; the "
            f"campaign is {state}",
            fg="red",
            bold=True,
        )
        if state in ("running", "paused"):
            d.campaign("abort", bad["id"])
        for hw in SET:
            d.release(hw, "1.2", "--delta-from", "1.0", "--delta-from", "1.1")
        good = self.campaign("1.2")
        d.say(f"campaign {good['id'][:8]}: the fixed set 1.2")
        self.drive(good["id"])
        if self.committed != self.count:
            raise DemoError(f"expected every car to commit the set 1.2, {self.committed} did")
        d.say("software set 1.2 committed on every ECU of every car", fg="green", bold=True)

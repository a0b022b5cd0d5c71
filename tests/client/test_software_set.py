"""A car of four ECUs updated as one software set, against a live server: the primary (A/B
slots, file boot backend), two secondary processes over loopback TCP (one verifying fully, one
partially) and an update module (the simulated one). A good set commits on every ECU; a set
whose release fails on one secondary's health check rolls every ECU back, and the vehicle
reports it once per hardware id, naming that secondary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overdrive.server.campaigns import tick
from overdrive.server.models import Event, Membership
from tests.conftest import Cli, generate_keys, make_image, mutate, run_cli
from tests.live_server import LiveServer, api, serve_live, vehicle_status
from tests.repo_fixtures import DIRECTOR_KEYS, Published

HARDWARE = ("gw", "adas", "ivi", "bcm")
VERSIONS = ("1.0", "1.1", "1.2")
#: The release that fails the ADAS secondary's health check.
BAD = "1.2"
SIM_MODULE = f"{sys.executable} -m overdrive.client.sim_module"


@pytest.fixture(scope="module")
def set_repo(tmp_path_factory: pytest.TempPathFactory) -> Published:
    """An image repository with 1.0, 1.1 and 1.2 for each of the four hardware ids."""
    root = tmp_path_factory.mktemp("set-repo")
    keys, storage = root / "keys", root / "repo"
    generate_keys(run_cli, keys, "root", "targets", "snapshot", "timestamp", *DIRECTOR_KEYS)
    assert run_cli("repo", "init", "--storage", storage, "--keys", keys).code == 0
    images: dict[str, dict[str, Any]] = {}
    for n, hw in enumerate(HARDWARE):
        previous = None
        for counter, version in enumerate(VERSIONS, start=1):
            path = root / f"{hw}-{version}.img"
            if previous is None:
                make_image(path, 60_000, seed=10 * n)
            else:
                mutate(previous, path, seed=10 * n + counter)
            result = run_cli(
                "release",
                "add",
                path,
                "--hardware-id",
                hw,
                "--version",
                version,
                "--storage",
                storage,
                "--keys",
                keys,
                "--quiet",
                "--chunk-size",
                "64KiB",
            )
            assert result.code == 0, result.stderr
            images[f"{hw}/{version}"] = {"path": path, "release_counter": counter}
            previous = path
    result = run_cli("director", "init", "--storage", root / "director", "--keys", keys)
    assert result.code == 0, result.stderr
    return Published(storage, keys, root / "director", images)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Secondary:
    state_dir: Path
    address: str
    process: subprocess.Popen[bytes]


def start_secondary(
    tmp_path: Path, repo: Published, vehicle_id: str, serial: str, hw: str, verification: str
) -> Secondary:
    """``overdrive vehicle secondary init`` then ``serve`` in a process of its own."""
    home = tmp_path / serial
    home.mkdir()
    slot_a, slot_b = home / "slot-a.img", home / "slot-b.img"
    shutil.copyfile(repo.images[f"{hw}/1.0"]["path"], slot_a)
    slot_b.write_bytes(b"")
    result = run_cli(
        "vehicle",
        "secondary",
        "init",
        "--state-dir",
        home / "state",
        "--serial",
        serial,
        "--hardware-id",
        hw,
        "--director-root",
        repo.director_root,
        "--image-root",
        repo.storage / "metadata" / "1.root.json",
        "--verification",
        verification,
        "--slot-a",
        slot_a,
        "--slot-b",
        slot_b,
        "--factory-image",
        slot_a,
        "--factory-version",
        "1.0",
        "--factory-release-counter",
        "1",
        "--vehicle-id",
        vehicle_id,
        "--health-check",
        f"sh -c 'test \"$OVERDRIVE_VERSION\" != {BAD}'" if hw == "adas" else "",
    )
    assert result.code == 0, result.stderr
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "overdrive.cli",
            "vehicle",
            "secondary",
            "serve",
            "--state-dir",
            str(home / "state"),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
    else:
        raise AssertionError(f"secondary {serial} did not start listening")
    return Secondary(home / "state", f"127.0.0.1:{port}", process)


@dataclass
class Vehicle:
    name: str
    state_dir: Path
    slot_a: Path
    slot_b: Path
    secondaries: dict[str, Secondary]
    module_dir: Path


def build_car(cli: Cli, live: LiveServer, repo: Published, tmp_path: Path, name: str) -> Vehicle:
    """Vehicle ``name``: its primary (``name-gw``), secondaries ``name-adas`` (full
    verification, fails its health check on 1.2) and ``name-ivi`` (partial), module ``name-bcm``."""
    home = tmp_path / name
    home.mkdir()
    secondaries = {
        f"{name}-adas": start_secondary(home, repo, name, f"{name}-adas", "adas", "full"),
        f"{name}-ivi": start_secondary(home, repo, name, f"{name}-ivi", "ivi", "partial"),
    }
    state_dir = home / "state"
    module_dir = state_dir / "modules" / f"{name}-bcm"
    module_dir.mkdir(parents=True)
    env = {**os.environ, "OVERDRIVE_MODULE_DIR": str(module_dir)}
    subprocess.run(
        [*SIM_MODULE.split(), "init", str(repo.images["bcm/1.0"]["path"]), "1.0", "1"],
        env=env,
        check=True,
    )
    ecus = home / "ecus.toml"
    ecus.write_text(
        "".join(
            f'[[ecus]]\nserial = "{serial}"\nhardware_id = "{serial.rsplit("-", 1)[1]}"\n'
            f'kind = "secondary"\naddress = "{secondary.address}"\ntimeout_s = 30\n\n'
            for serial, secondary in secondaries.items()
        )
        + f'[[ecus]]\nserial = "{name}-bcm"\nhardware_id = "bcm"\nkind = "module"\n'
        f'command = "{SIM_MODULE}"\n'
    )
    slot_a, slot_b = home / "slot-a.img", home / "slot-b.img"
    shutil.copyfile(repo.images["gw/1.0"]["path"], slot_a)
    slot_b.write_bytes(b"")
    result = cli(
        "vehicle",
        "provision",
        "--state-dir",
        state_dir,
        "--server",
        live.url,
        "--enroll-token",
        live.enroll,
        "--vehicle-id",
        name,
        "--ecu-serial",
        f"{name}-gw",
        "--hardware-id",
        "gw",
        "--slot-a",
        slot_a,
        "--slot-b",
        slot_b,
        "--trusted-root",
        repo.storage / "metadata" / "1.root.json",
        "--director-root",
        repo.director_root,
        "--repo-url",
        repo.storage.as_uri(),
        "--factory-version",
        "1.0",
        "--factory-release-counter",
        "1",
        "--ecus",
        ecus,
    )
    assert result.code == 0, result.stderr
    return Vehicle(name, state_dir, slot_a, slot_b, secondaries, module_dir)


@pytest.fixture
def fleet(set_repo: Published, tmp_path: Path, cli: Cli) -> Iterator[Fleet]:
    """A live server over a copy of the set repository; cars made with ``fleet.car(name)``."""
    repo = Published(tmp_path / "repo", set_repo.keys, set_repo.director_storage, set_repo.images)
    shutil.copytree(set_repo.storage, repo.storage)
    with serve_live(repo, tmp_path) as live:
        made = Fleet(live, repo, tmp_path, cli, [])
        try:
            yield made
        finally:
            for car in made.cars:
                for secondary in car.secondaries.values():
                    secondary.process.send_signal(signal.SIGTERM)
            for car in made.cars:
                for secondary in car.secondaries.values():
                    try:
                        secondary.process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        secondary.process.kill()


@dataclass
class Fleet:
    live: LiveServer
    repo: Published
    tmp_path: Path
    cli: Cli
    cars: list[Vehicle]

    def car(self, name: str) -> Vehicle:
        car = build_car(self.cli, self.live, self.repo, self.tmp_path, name)
        self.cars.append(car)
        return car


def start_set(live: LiveServer, version: str, vehicles: list[str] | None = None) -> str:
    body: dict[str, Any] = {
        "name": f"set {version}",
        "releases": {hw: version for hw in ("bcm", "adas", "ivi", "gw")},
        "policy": "immediate",
    }
    if vehicles:
        body["filter"] = {"vehicles": vehicles}
    try:
        campaign = api(live, "POST", "/campaigns", body)
        api(live, "POST", f"/campaigns/{campaign['id']}/start")
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{e}: {e.read().decode()}") from e
    return str(campaign["id"])


def run_once(cli: Cli, car: Vehicle) -> tuple[int, str]:
    result = cli("vehicle", "run", "--state-dir", car.state_dir, "--once")
    return result.code, result.stdout + result.stderr


def running_versions(cli: Cli, car: Vehicle) -> dict[str, str]:
    """ECU serial → the version it runs, as each ECU itself says."""
    status = vehicle_status(cli, car.state_dir)
    versions = {f"{car.name}-gw": status["slots"][status["active_slot"]]["version"]}
    for ecu in status["ecus"]:
        if "status" not in ecu and "image" not in ecu:
            continue  # not answering
        if ecu["kind"] == "module":
            versions[ecu["serial"]] = ecu["image"]["version"]
        else:
            inner = ecu["status"]
            versions[ecu["serial"]] = inner["slots"][inner["active"]]["version"]
    return versions


def memberships(
    live: LiveServer, campaign: str, vehicle: str = "car"
) -> dict[str, tuple[str, dict[str, Any]]]:
    with live.ctx.session() as session:
        rows = session.query(Membership).filter_by(campaign_id=campaign, vehicle_id=vehicle).all()
        result = {m.hardware_id: (m.status, {}) for m in rows}
        for event in session.query(Event).filter_by(campaign_id=campaign, vehicle_id=vehicle):
            if event.type in ("rolled_back", "failed", "committed"):
                result[event.hardware_id] = (result[event.hardware_id][0], event.details)
    return result


def test_good_set_commits_and_failing_set_rolls_every_ecu_back(cli: Cli, fleet: Fleet) -> None:
    live, vehicle = fleet.live, fleet.car("car")
    code, out = run_once(cli, vehicle)
    assert code == 0 and out.startswith("nothing"), out
    good = start_set(live, "1.1")
    code, out = run_once(cli, vehicle)
    assert code == 0, out
    assert "reboot to try it" in out, out
    # every other ECU is on trial of 1.1; the primary has 1.1 in slot B, not yet tried
    status = vehicle_status(cli, vehicle.state_dir)
    assert status["software_set"]["phase"] == "primary_trial", status["software_set"]
    boot = cli("vehicle", "boot", "--state-dir", vehicle.state_dir)
    assert boot.code == 0 and "committed 1.1" in boot.stdout, boot.stdout + boot.stderr
    code, out = run_once(cli, vehicle)
    assert code == 0 and "software set committed" in out, out
    assert running_versions(cli, vehicle) == {
        "car-gw": "1.1",
        "car-adas": "1.1",
        "car-ivi": "1.1",
        "car-bcm": "1.1",
    }
    code, out = run_once(cli, vehicle)  # reports the set; nothing more to do
    assert code == 0, out
    assert {hw: status for hw, (status, _d) in memberships(live, good).items()} == {
        hw: "committed" for hw in HARDWARE
    }
    assert tick(live.ctx)  # the campaign completes

    bad = start_set(live, BAD)
    code, out = run_once(cli, vehicle)
    assert code == 3, out
    assert "software set rolled back" in out and "car-adas" in out, out
    assert running_versions(cli, vehicle) == {
        "car-gw": "1.1",
        "car-adas": "1.1",
        "car-ivi": "1.1",
        "car-bcm": "1.1",
    }
    status = vehicle_status(cli, vehicle.state_dir)
    assert status["software_set"] is None
    assert status["last_result"]["caused_by"] == {"ecu_serial": "car-adas", "hardware_id": "adas"}
    # the primary's slot B (1.2 written, never tried) is not bootable
    boot = json.dumps(status["boot"])
    assert "B" in boot
    outcome = memberships(live, bad)
    assert set(outcome) == set(HARDWARE)
    for hw, (state, details) in outcome.items():
        assert state == "rolled_back", (hw, state)
        assert details.get("caused_by") == {"ecu_serial": "car-adas", "hardware_id": "adas"}


# ----------------------------------------------------------------------------- power cuts


def set_update(car: Vehicle) -> None:
    """The whole set, uninterrupted: daemon turn (every ECU but the primary on trial), the
    primary's trial boot, the turn that commits the others."""
    from overdrive.client.vehicle import Vehicle as Client

    Client(car.state_dir).cycle()
    Client(car.state_dir).boot()
    Client(car.state_dir).cycle()


def settle(car: Vehicle) -> None:
    """Reboot after the cut and run until the vehicle is idle with no set in progress."""
    from overdrive.client.state import IDLE, StateStore
    from overdrive.client.vehicle import Vehicle as Client

    for _ in range(8):
        client = Client(car.state_dir)
        client.boot()
        client.cycle()
        state = StateStore(car.state_dir).load()
        if state.state == IDLE and state.software_set is None:
            client.boot()
            return
    pytest.fail(f"{car.name} did not settle after the power cut")


#: Cut points tried (evenly spread over the set's durable operations, first and last included);
#: ``OVERDRIVE_SET_CUTS=all`` (``make power-cut-sets``) tries every one.
CUT_POINTS = 10


def test_power_cut_in_a_software_set(
    cli: Cli, fleet: Fleet, summary: Callable[[str], None]
) -> None:
    """The primary loses power at one of its durable operations (its state, cache, slot,
    event queue and boot environment writes) anywhere in a 4-ECU set; after reboots every ECU
    runs the same set (all 1.1, or all 1.0 and the set reported as failed) and the server's
    record is final."""
    from tests.client.test_power_cut import Cutter, PowerCut, power

    counting = fleet.car("count")
    start_set(fleet.live, "1.1", ["count"])
    cutter = Cutter(None)
    with power(cutter):
        set_update(counting)
    assert set(running_versions(cli, counting).values()) == {"1.1"}
    total = cutter.count
    assert total > CUT_POINTS
    if os.environ.get("OVERDRIVE_SET_CUTS") == "all":
        points = list(range(total))
    else:
        points = sorted({round(i * (total - 1) / (CUT_POINTS - 1)) for i in range(CUT_POINTS)})
    names = [f"cut{n}" for n in points]
    cars = [fleet.car(name) for name in names]
    campaign = start_set(fleet.live, "1.1", names)
    outcomes = {"1.1": 0, "1.0": 0}
    for n, car in zip(points, cars, strict=True):
        cutter = Cutter(n)
        with power(cutter), suppress(PowerCut):
            set_update(car)
        assert cutter.cut, f"cut point {n} was never reached"
        settle(car)
        versions = set(running_versions(cli, car).values())
        assert len(versions) == 1, (n, running_versions(cli, car))  # one set on every ECU
        (version,) = versions
        outcomes[version] += 1
        statuses = {state for state, _d in memberships(fleet.live, campaign, car.name).values()}
        if version == "1.1":
            assert statuses == {"committed"}, (n, statuses)
        else:
            assert statuses <= {"failed", "rolled_back"}, (n, statuses)
        from overdrive.client.vehicle import Vehicle as Client

        assert Client(car.state_dir).events.pending() == []
        for secondary in car.secondaries.values():  # done with this car: free its processes
            secondary.process.terminate()
            secondary.process.wait(timeout=10)
    summary(
        f"power-cut harness (4-ECU software set): {len(points)} of {total} cut points, "
        f"{outcomes['1.1']} completed, {outcomes['1.0']} rolled back cleanly"
    )


def test_a_secondary_that_stops_answering_rolls_the_set_back(
    cli: Cli, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partial secondary dies between staging and its install: the set waits for it up to
    ``set_deadline_s``, then every ECU that installed goes back and the rollback names it."""
    from overdrive.client.config import VehicleConfig
    from overdrive.client.ecus import SecondaryEcu
    from overdrive.client.vehicle import Vehicle as Client

    car = fleet.car("lost")
    config = VehicleConfig.load(car.state_dir)
    config.set_deadline_s = 0.5
    config.save(car.state_dir)
    campaign = start_set(fleet.live, "1.1", ["lost"])
    real_install = SecondaryEcu.install

    def install(self: SecondaryEcu, set_id: str, bundle: Path, info: Any) -> None:
        if self.config.serial == "lost-ivi":  # the cable is pulled
            car.secondaries["lost-ivi"].process.kill()
            car.secondaries["lost-ivi"].process.wait()
        real_install(self, set_id, bundle, info)

    monkeypatch.setattr(SecondaryEcu, "install", install)
    first = Client(car.state_dir).cycle()
    assert first.action == "waiting" and "lost-ivi" in first.detail, first
    time.sleep(0.6)
    second = Client(car.state_dir).cycle()
    assert second.action == "failed" and "lost-ivi" in second.detail, second
    versions = running_versions(cli, car)
    assert versions["lost-gw"] == "1.0" and versions["lost-bcm"] == "1.0"
    assert versions["lost-adas"] == "1.0"
    outcome = memberships(fleet.live, campaign, "lost")
    assert {details.get("caused_by", {}).get("ecu_serial") for _s, details in outcome.values()} == {
        "lost-ivi"
    }

"""Power-cut safety: cut the power at every durable step of a whole update, then reboot.

An injected I/O layer counts every durable operation the vehicle makes (write, fsync, rename,
truncate, unlink — in the bundle decoder, the downloader, the state and event files and the
boot environment). For each cut point N, a fresh vehicle runs a whole update (full or delta) and
the N-th operation "loses power": it and every later one raise :class:`PowerCut`, so nothing
after it reaches the disk. Then the vehicle "reboots" (``boot`` + ``run --once``, repeated until
it settles) and the invariants are checked:

- every boot starts a slot whose image hash is a verified, signed image;
- the update ends either completed (committed, running 1.1) or cleanly abandoned and reported
  (running the factory image, a final event on the server);
- the server's record of the vehicle is final and the vehicle has no events left to send.

The ignition tests cut the boot itself (the bootloader spending a try, post-boot's writes) at
each of its durable operations: a cut trial boot still commits on a later try, and any number
of cut boots of a committed slot never roll it back.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from overdrive.bundle import image_sha256
from overdrive.client.state import IDLE, StateStore
from overdrive.client.vehicle import Vehicle
from overdrive.server.models import Event, Membership
from tests.client.conftest import Car, LiveServer, provision
from tests.conftest import Cli, make_image
from tests.live_server import start_campaign

DURABLE = ("fsync", "replace", "rename", "pwrite", "ftruncate", "unlink")


class PowerCut(BaseException):
    """The power is gone: nothing more reaches the disk (not an Exception: nothing catches it)."""


class Cutter:
    def __init__(self, cut_at: int | None) -> None:
        self.cut_at = cut_at
        self.count = 0
        self.cut = False

    def wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        main = threading.main_thread()

        def op(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is main:  # the server thread is another machine
                if self.cut or self.count == self.cut_at:
                    self.cut = True
                    raise PowerCut(f"power cut at durable operation {self.count} ({name})")
                self.count += 1
            return real(*args, **kwargs)

        return op


@contextmanager
def power(cutter: Cutter) -> Iterator[None]:
    saved = {name: getattr(os, name) for name in DURABLE}
    for name, real in saved.items():
        setattr(os, name, cutter.wrap(name, real))
    try:
        yield
    finally:
        for name, real in saved.items():
            setattr(os, name, real)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def update(car: Car) -> None:
    """What the vehicle does, uninterrupted: daemon turn, reboot into the trial, commit."""
    Vehicle(car.state_dir).cycle()
    Vehicle(car.state_dir).boot()


def settle(car: Car, signed: set[str]) -> None:
    """Reboot after the cut and let the vehicle run until it is idle; check every boot."""
    for _ in range(6):
        vehicle = Vehicle(car.state_dir)
        vehicle.boot()
        state = StateStore(car.state_dir).load()
        running = car.slot_a if state.active == "A" else car.slot_b
        image = state.image(state.active)
        assert image is not None and image.sha256 in signed
        assert image_sha256(running, image.length) == image.sha256  # it really holds that image
        vehicle.cycle()
        if StateStore(car.state_dir).load().state == IDLE:
            vehicle.boot()
            return
    pytest.fail("the vehicle did not settle after the power cut")


def run_harness(
    cli: Cli, live: LiveServer, tmp_path: Path, kind: str, summary: Callable[[str], None]
) -> int:
    images = live.published.images
    new_sha = images["ecu-a/1.1"]["sha256"]
    factory = images["ecu-a/1.0"]["path"]
    if kind == "full":  # a factory image no delta applies to: the server sends the full bundle
        factory = make_image(tmp_path / "factory-0.9.img", 100_000, seed=99)
    signed = {new_sha, sha(factory)}

    def new_car(name: str) -> Car:
        if kind == "full":
            return provision(
                cli, live, tmp_path, name, factory=factory, factory_version="0.9", factory_counter=0
            )
        return provision(cli, live, tmp_path, name)

    counting = new_car(f"{kind}-count")
    start_campaign(live, filter={"vehicles": [f"{kind}-count"]})
    cutter = Cutter(None)
    with power(cutter):
        update(counting)
    assert sha(counting.slot_b) == new_sha
    total = cutter.count
    assert total > 10

    names = [f"{kind}-cut-{n:03d}" for n in range(total)]
    cars = [new_car(name) for name in names]
    start_campaign(live, filter={"vehicles": names})
    outcomes = {"completed": 0, "abandoned": 0}
    for n, (name, car) in enumerate(zip(names, cars, strict=True)):
        cutter = Cutter(n)
        with power(cutter), suppress(PowerCut):
            update(car)
        assert cutter.cut, f"cut point {n} was never reached"
        settle(car, signed)
        state = StateStore(car.state_dir).load()
        running = state.image(state.active)
        assert running is not None
        if running.sha256 == new_sha:
            outcomes["completed"] += 1
            expected_final = "committed"
        else:
            outcomes["abandoned"] += 1
            expected_final = None
        assert Vehicle(car.state_dir).events.pending() == []
        with live.ctx.session() as session:
            status = session.query(Membership).filter_by(vehicle_id=name).one().status
            types = {e.type for e in session.query(Event).filter_by(vehicle_id=name)}
        if expected_final:
            assert status == "committed" and "committed" in types, (n, status, types)
        else:
            assert status in ("failed", "rolled_back"), (n, status, types)
    summary(
        f"power-cut harness ({kind} update): {total} cut points exercised, "
        f"{outcomes['completed']} completed, {outcomes['abandoned']} abandoned cleanly"
    )
    return total


@pytest.mark.parametrize("kind", ["full", "delta"])
def test_power_cut_at_every_step(
    cli: Cli, live_server: LiveServer, tmp_path: Path, kind: str, summary: Callable[[str], None]
) -> None:
    assert run_harness(cli, live_server, tmp_path, kind, summary) > 10


# ----------------------------------------------------------------------------- ignition cycles


def count_boot_ops(car: Car) -> int:
    cutter = Cutter(None)
    with power(cutter):
        Vehicle(car.state_dir).boot()
    return cutter.count


def cut_boot(car: Car, n: int) -> bool:
    """A boot the ignition interrupts at its n-th durable operation (bootloader or post-boot);
    whether the boot got that far (a boot after an earlier cut may do less)."""
    cutter = Cutter(n)
    with power(cutter), suppress(PowerCut):
        Vehicle(car.state_dir).boot()
    return cutter.cut


def running(car: Car) -> tuple[str, str]:
    state = StateStore(car.state_dir).load()
    image = state.image(state.active)
    assert image is not None
    path = car.slot_a if state.active == "A" else car.slot_b
    assert image_sha256(path, image.length) == image.sha256
    return state.active, image.version


def test_ignition_cut_at_every_point_of_the_trial_boot_still_commits(
    cli: Cli, live_server: LiveServer, tmp_path: Path, summary: Callable[[str], None]
) -> None:
    """The update is installed; the first boot into it is cut at each of its durable
    operations (the bootloader spending the try, post-boot's writes), twice in a row. With
    three tries the third boot commits: an ignition cycle is not a failed update."""
    probe = provision(cli, live_server, tmp_path, "trial-count")
    start_campaign(live_server, filter={"vehicles": ["trial-count"]})
    Vehicle(probe.state_dir).cycle()
    total = count_boot_ops(probe)
    assert total >= 5
    names = [f"trial-cut-{n:02d}" for n in range(total)]
    cars = [provision(cli, live_server, tmp_path, name) for name in names]
    start_campaign(live_server, filter={"vehicles": names})
    for n, car in enumerate(cars):
        Vehicle(car.state_dir).cycle()
        assert cut_boot(car, n), f"cut point {n} of the boot was never reached"
        cut_boot(car, n)  # the next boot is cut at the same point, if it gets that far
        Vehicle(car.state_dir).boot()
        Vehicle(car.state_dir).cycle()  # deliver what the cut boots left queued
        assert running(car) == ("B", "1.1"), n
        assert Vehicle(car.state_dir).events.pending() == []
        with live_server.ctx.session() as session:
            status = session.query(Membership).filter_by(vehicle_id=names[n]).one().status
        assert status == "committed", (n, status)
    summary(f"ignition harness (trial boot): {total} cut points, each cut twice, all committed")


def test_ignition_cycles_at_every_point_never_roll_back_a_committed_slot(
    cli: Cli, live_server: LiveServer, tmp_path: Path, summary: Callable[[str], None]
) -> None:
    """1.1 committed; then every boot is cut at the same durable operation, ten times in a row,
    for every operation of a routine boot: the car keeps running 1.1, its fallback intact."""
    car = provision(cli, live_server, tmp_path, "committed")
    start_campaign(live_server, filter={"vehicles": ["committed"]})
    update(car)
    assert running(car) == ("B", "1.1")
    total = count_boot_ops(car)
    for n in range(total):
        for _ignition in range(10):
            cutter = Cutter(n)
            with power(cutter), suppress(PowerCut):
                Vehicle(car.state_dir).boot()
            assert running(car) == ("B", "1.1"), n
        Vehicle(car.state_dir).boot()
        assert running(car) == ("B", "1.1")
        state = StateStore(car.state_dir).load()
        assert state.unhealthy_boots == 0 and state.image("A") is not None
    summary(
        f"ignition harness (committed slot): {total} cut points x 10 ignition cycles each, "
        "never rolled back"
    )

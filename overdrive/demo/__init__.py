"""``overdrive demo``: the whole system end to end on the embedded defaults, in one command.

Everything goes through the same ``overdrive`` commands a person would type (release engineers'
``keys``/``repo``/``release``, operators' ``server``/``campaign``, vehicles' ``vehicle``), with a
real rollout server in a subprocess and every vehicle a real client with its own state directory
and file-backed A/B slots. Local storage, SQLite, no network.

Everything lives in one workspace directory (images, bundles, every vehicle's slots: close to
1 GB with the default fleet). Without ``--workspace`` it is a new temporary directory, removed at
the end unless ``--keep``; the demo says where it is and how big it grew either way. The server
runs in its own process group, stopped (with anything it started) however the demo ends: at the
end, on Ctrl-C, or on SIGTERM/SIGHUP.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import click

from overdrive.demo.cars import Cars
from overdrive.demo.images import HEALTH_CHECK, build_image
from overdrive.errors import OverdriveError

VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What ``demo images`` accepts as a version or hardware id (it becomes a file name)."""
HARDWARE = ("ecu-gateway", "ecu-infotainment")
#: The director's keys: its offline root key, and the server's online keys.
DIRECTOR_KEYS = ("director-root", "director-targets", "director-snapshot", "director-timestamp")
IMAGE_SIZE = 8 * 1024 * 1024
#: Cars of three ECUs (a primary, a secondary process, a module) in the demo's last chapter.
CARS = 3
DEMO_POLICY = """\
# The canary preset's shape with demo timing: seconds instead of hours.
name: canary-demo
stages:
  - name: canary
    share: 20%
    soak: 2s
    min_finished: 100%
    success_threshold: 90%
    max_failure_rate: 10%
    on_breach: pause
  - name: wave-50%
    share: 50%
    soak: 1s
    min_finished: 80%
    success_threshold: 90%
    max_failure_rate: 10%
    on_breach: pause
  - name: everyone
    share: 100%
    min_finished: 100%
    success_threshold: 90%
    max_failure_rate: 10%
    on_breach: pause
"""


class DemoError(OverdriveError):
    """A demo step failed; the message names the step and what it printed."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (stopping the server, cleaning up) and exit.

    A BaseException, so that the in-process ``overdrive`` commands' catch-all for unexpected
    errors lets it through, as it does KeyboardInterrupt.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run(*args: str | Path, ok: tuple[int, ...] = (0,)) -> str:
    """Run ``overdrive ARGS`` in this process, quietly; return what it printed on stdout."""
    from overdrive.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    if code == 130 and 130 not in ok:  # the command saw Ctrl-C: stop the demo, not one step
        raise KeyboardInterrupt
    if code not in ok:
        detail = (err.getvalue() or out.getvalue()).strip().splitlines()
        raise DemoError(
            f"'overdrive {' '.join(map(str, args[:3]))} …' failed: {detail[-1] if detail else code}"
        )
    return out.getvalue()


@dataclass
class Car:
    vehicle_id: str
    hardware_id: str
    state_dir: Path


@dataclass
class Tally:
    bytes_delta: int = 0
    bytes_full: int = 0
    updates: int = 0
    rollbacks: int = 0
    refusals: int = 0
    events: list[str] = field(default_factory=list)


class Demo:
    def __init__(self, workspace: Path, vehicles: int, port: int) -> None:
        self.ws = workspace
        self.keys, self.repo, self.images = (
            workspace / "keys",
            workspace / "repository",
            workspace / "images",
        )
        self.director = workspace / "director"
        self.fleet_dir = workspace / "fleet"
        self.db = f"sqlite:///{workspace / 'server.db'}"
        self.vehicle_count = vehicles
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log: IO[bytes] | None = None
        self.token = ""
        self.fleet: list[Car] = []
        self.tally = Tally()
        self.started = time.monotonic()
        self.cars = Cars(self, CARS)

    # ------------------------------------------------------------------ output

    def say(self, text: str, **style: Any) -> None:
        click.secho(f"[{time.monotonic() - self.started:6.1f}s] {text}", **style)

    def heading(self, text: str) -> None:
        click.echo()
        self.say(text, fg="cyan", bold=True)

    # ------------------------------------------------------------------ release engineering

    def sign_releases(self) -> None:
        self.heading("1. Release engineers: keys, the two TUF repositories, signed releases")
        for role in ("root", "targets", "snapshot", "timestamp", *DIRECTOR_KEYS):
            run("keys", "generate", role, "--dir", self.keys, "--insecure-no-passphrase")
        run("repo", "init", "--storage", self.repo, "--keys", self.keys)
        self.say(f"TUF image repository at {self.repo} (root, targets, snapshot, timestamp v1)")
        run("director", "init", "--storage", self.director, "--keys", self.keys)
        self.say(
            f"director root at {self.director} (its own root key; online targets, snapshot "
            "and timestamp keys for the server)"
        )
        self.images.mkdir(parents=True)
        for hw in HARDWARE:
            for version in ("1.0", "1.1", "1.2"):
                broken = hw == "ecu-infotainment" and version == "1.1"
                kind = build_image(
                    self.images / f"{hw}-{version}.img", hw, version, size=IMAGE_SIZE, broken=broken
                )
        self.say(
            f"built {len(HARDWARE) * 3} root filesystem images of {IMAGE_SIZE >> 20} MiB: {kind}"
        )
        for hw in HARDWARE:
            self.release(hw, "1.0")
            self.release(hw, "1.1", "--delta-from", "1.0")

    def release(self, hw: str, version: str, *extra: str) -> None:
        out = run(
            "release",
            "add",
            self.images / f"{hw}-{version}.img",
            "--hardware-id",
            hw,
            "--version",
            version,
            "--storage",
            self.repo,
            "--keys",
            self.keys,
            "--quiet",
            "--level",
            "9",
            "--chunk-size",
            "1MiB",
            *extra,
        )
        bundles = [line.strip() for line in out.splitlines()[1:]]
        self.say(
            f"signed {hw} {version}: "
            + "; ".join(b.split("  ")[1] + " " + b.split("  ")[2] for b in bundles)
        )

    # ------------------------------------------------------------------ server

    def start_server(self) -> None:
        self.heading("2. Operators: the rollout server and the fleet")
        run("server", "migrate", "--db", self.db)
        self.token = json.loads(
            run(
                "server",
                "token",
                "create",
                "--role",
                "admin",
                "--name",
                "demo-admin",
                "--db",
                self.db,
                "--json",
            )
        )["secret"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = self.server_log = (self.ws / "server.log").open("wb")
        self.server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "overdrive.cli",
                "server",
                "run",
                "--db",
                self.db,
                "--storage",
                str(self.repo),
                "--director-storage",
                str(self.director),
                "--director-keys",
                str(self.keys),
                "--state-dir",
                str(self.ws / "server-state"),
                "--port",
                str(self.port),
                "--tick-interval",
                "1",
                "--poll-interval",
                "5",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: stop_server ends all of it
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"the server did not start; see {self.ws / 'server.log'}")
            time.sleep(0.2)
        self.say(
            f"rollout server at {self.url} (SQLite, a director repository per vehicle; "
            f"pid {self.server.pid}, log {self.ws / 'server.log'})"
        )

    def stop_server(self) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after 10 s (and every
        car's secondary ECU process)."""
        self.cars.stop()
        server, self.server = self.server, None
        if server is not None and server.poll() is None:
            _signal_group(server.pid, signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                _signal_group(server.pid, signal.SIGKILL)
                server.wait()
        if self.server_log is not None:
            self.server_log.close()
            self.server_log = None

    # ------------------------------------------------------------------ fleet

    def provision_fleet(self) -> None:
        enroll = run(
            "server", "enroll-token", "create", "--db", self.db, "--uses", str(self.vehicle_count)
        ).strip()
        health = self.ws / "health-check.py"
        health.write_text(HEALTH_CHECK)
        counters = self.counters()
        gateways = round(self.vehicle_count * 0.6)
        for i in range(self.vehicle_count):
            hw = HARDWARE[0] if i < gateways else HARDWARE[1]
            version = "1.1" if hw == HARDWARE[0] and i % 6 == 5 else "1.0"
            car = Car(
                f"{'gw' if hw == HARDWARE[0] else 'ivi'}-{i:03d}",
                hw,
                self.fleet_dir / f"car-{i:03d}",
            )
            car.state_dir.parent.mkdir(parents=True, exist_ok=True)
            slot_a, slot_b = (
                car.state_dir.parent / f"{car.vehicle_id}-a.img",
                car.state_dir.parent / f"{car.vehicle_id}-b.img",
            )
            shutil.copyfile(self.images / f"{hw}-{version}.img", slot_a)
            slot_b.write_bytes(b"")
            run(
                "vehicle",
                "provision",
                "--state-dir",
                car.state_dir,
                "--server",
                self.url,
                "--enroll-token",
                enroll,
                "--vehicle-id",
                car.vehicle_id,
                "--hardware-id",
                hw,
                "--slot-a",
                slot_a,
                "--slot-b",
                slot_b,
                "--trusted-root",
                self.repo / "metadata" / "1.root.json",
                "--director-root",
                self.director / "metadata" / "1.root.json",
                "--repo-url",
                self.repo.resolve().as_uri() + "/",
                "--factory-version",
                version,
                "--factory-release-counter",
                str(counters[(hw, version)]),
                "--health-check",
                f"{sys.executable} {health}",
                "--attr",
                f"model={'m1' if i % 2 else 'm2'}",
                "--attr",
                f"region={'EU' if i % 3 else 'US'}",
                "--poll-interval",
                "5",
            )
            self.fleet.append(car)
        self.say(
            f"provisioned {len(self.fleet)} vehicles, each a real client with file-backed A/B slots: {self.versions_line()}"
        )

    def counters(self) -> dict[tuple[str, str], int]:
        status = json.loads(run("repo", "status", "--storage", self.repo, "--json"))
        return {
            (hw, v["version"]): v["release_counter"]
            for hw, versions in status["hardware"].items()
            for v in versions
        }

    def vehicle_status(self, car: Car) -> dict[str, Any]:
        return dict(json.loads(run("vehicle", "status", "--state-dir", car.state_dir, "--json")))

    def versions(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for car in self.fleet:
            status = self.vehicle_status(car)
            counts[f"{car.hardware_id} {status['slots'][status['active_slot']]['version']}"] += 1
        return counts

    def versions_line(self) -> str:
        return ", ".join(f"{count}× {name}" for name, count in sorted(self.versions().items()))

    # ------------------------------------------------------------------ campaigns

    def campaign(self, *args: str) -> dict[str, Any]:
        out = run("campaign", *args, "--server", self.url, "--token", self.token, "--json")
        return dict(json.loads(out))

    def drive(self, campaign_id: str, stop_on: tuple[str, ...]) -> dict[str, Any]:
        """Let every vehicle poll, update and reboot, round after round, until the campaign stops."""
        last = ""
        for _round in range(120):
            for car in self.fleet:
                out = run("vehicle", "run", "--state-dir", car.state_dir, "--once", ok=(0, 3))
                if out.startswith("updated"):
                    assignment = self.vehicle_status(car)["assignment"]
                    if assignment["kind"] == "delta":
                        self.tally.bytes_delta += assignment["target"]["length"]
                    else:
                        self.tally.bytes_full += assignment["target"]["length"]
                    boot = run("vehicle", "boot", "--state-dir", car.state_dir, ok=(0, 4))
                    if "committed" in boot:
                        self.tally.updates += 1
                    elif "rolled back" in boot:
                        self.tally.rollbacks += 1
                        self.say(f"{car.vehicle_id}: {boot.strip()}", fg="yellow")
                elif out.startswith(("refused", "failed")):
                    self.tally.refusals += 1
            status = self.campaign("status", campaign_id)
            c = status["counts"]
            line = (
                f"campaign {status['state']}, stage {status['stage_index'] + 1}/{status['stages']} ({status['stage']}): "
                f"admitted {c.get('admitted', 0)}/{c.get('eligible', 0)}, committed {c.get('committed', 0)}, "
                f"rolled back {c.get('rolled_back', 0)}, failed {c.get('failed', 0)}"
            )
            if line != last:
                self.say(line)
                last = line
            if status["state"] in stop_on:
                return status
            time.sleep(1.0)  # let the server's evaluator tick
        raise DemoError(f"campaign {campaign_id} did not finish: {last}")

    def first_campaign(self) -> None:
        self.heading("3. A canary campaign to 1.1 (infotainment 1.1 is broken on purpose)")
        policy = self.ws / "canary-demo.yaml"
        policy.write_text(DEMO_POLICY)
        created = self.campaign(
            "create",
            "--name",
            "1.1 for everyone",
            "--release",
            "ecu-gateway=1.1",
            "--release",
            "ecu-infotainment=1.1",
            "--policy",
            str(policy),
        )
        started = self.campaign("start", created["id"])
        self.say(
            f"campaign {created['id'][:8]} started: {started['counts']['eligible']} eligible vehicles, "
            f"canary admits {started['counts']['admitted']}"
        )
        status = self.drive(created["id"], stop_on=("paused", "aborted", "completed"))
        if status["state"] != "paused":
            raise DemoError(
                f"expected the campaign to pause on the broken release, it is {status['state']}"
            )
        self.say(f"the policy paused the campaign: {status['reason']}", fg="red", bold=True)
        self.campaign("abort", created["id"])
        self.say("the operator aborts it; the rolled-back vehicles run their previous good slot")

    def second_campaign(self) -> None:
        self.heading(
            "4. Release 1.2 (the fix), deltas from 1.0 and 1.1, and a campaign that completes"
        )
        for hw in HARDWARE:
            self.release(hw, "1.2", "--delta-from", "1.0", "--delta-from", "1.1")
        policy = self.ws / "canary-demo.yaml"
        created = self.campaign(
            "create",
            "--name",
            "1.2 for everyone",
            "--release",
            "ecu-gateway=1.2",
            "--release",
            "ecu-infotainment=1.2",
            "--policy",
            str(policy),
        )
        self.campaign("start", created["id"])
        status = self.drive(created["id"], stop_on=("completed", "paused", "aborted"))
        if status["state"] != "completed":
            raise DemoError(
                f"expected the 1.2 campaign to complete, it is {status['state']}: {status['reason']}"
            )
        self.say("campaign completed across the fleet", fg="green", bold=True)

    # ------------------------------------------------------------------ the whole show

    def run_all(self) -> None:
        """Every act in order: releases, server, fleet, two campaigns, the summary."""
        self.sign_releases()
        self.start_server()
        self.provision_fleet()
        self.first_campaign()
        self.second_campaign()
        self.cars.run_chapter(self.ws / "health-check.py")
        self.summary()

    # ------------------------------------------------------------------ summary

    def summary(self) -> dict[str, Any]:
        versions = self.versions()
        car_ecus = self.cars.versions() if self.cars.cars else {}
        total = self.tally.bytes_delta + self.tally.bytes_full
        data: dict[str, Any] = {
            "vehicles": len(self.fleet),
            "versions": dict(sorted(versions.items())),
            "updates_committed": self.tally.updates,
            "rollbacks": self.tally.rollbacks,
            "refusals": self.tally.refusals,
            "bytes_shipped": {
                "delta": self.tally.bytes_delta,
                "full": self.tally.bytes_full,
                "total": total,
            },
            "cars": {
                "count": len(self.cars.cars),
                "sets_rolled_back": self.cars.rolled_back,
                "sets_committed": self.cars.committed,
                "ecus": car_ecus,
            },
            "seconds": round(time.monotonic() - self.started, 1),
            "dashboard": f"{self.url}/dashboard/",
            "workspace": str(self.ws),
        }
        (self.ws / "summary.json").write_text(json.dumps(data, indent=2))
        self.heading("Summary")
        rows = [(name, str(count)) for name, count in sorted(versions.items())]
        rows += [(name, str(count)) for name, count in car_ecus.items()]
        rows += [
            ("updates committed", str(self.tally.updates)),
            ("rollbacks (broken 1.1)", str(self.tally.rollbacks)),
            ("3-ECU cars: sets rolled back (ADAS 1.1)", str(self.cars.rolled_back)),
            ("3-ECU cars: sets committed (1.2)", str(self.cars.committed)),
            ("bytes shipped as deltas", _mib(self.tally.bytes_delta)),
            ("bytes shipped as full bundles", _mib(self.tally.bytes_full)),
            ("time", f"{data['seconds']} s"),
        ]
        width = max(len(r[0]) for r in rows)
        for name, value in rows:
            click.echo(f"  {name:<{width}}  {value:>12}")
        click.echo(f"\n  dashboard: {data['dashboard']} (with --serve)")
        return data


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group led by ``pid`` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def disk_usage(path: Path) -> int:
    """Bytes ``path`` takes on disk (allocated blocks: sparse slot images count as written)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def human_size(n: int) -> str:
    """``912 MB``-style sizes for the workspace report."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


@dataclass
class Workspace:
    """Where the demo puts everything, and whether it is removed at the end."""

    path: Path
    temporary: bool  # made by the demo (no --workspace): removed unless keep
    keep: bool

    @classmethod
    def open(cls, given: Path | None, keep: bool) -> Workspace:
        """``given`` (which must be empty; kept), or a new temporary directory."""
        if given is None:
            return cls(Path(tempfile.mkdtemp(prefix="overdrive-demo-")).resolve(), True, keep)
        if given.exists() and any(given.iterdir()):
            raise DemoError(f"workspace {given} is not empty")
        given.mkdir(parents=True, exist_ok=True)
        return cls(given.resolve(), False, keep)

    def announce(self) -> None:
        if self.temporary and not self.keep:
            fate = "a temporary directory, removed at the end; --keep keeps it"
        else:
            fate = "kept afterwards"
        click.echo(f"workspace: {self.path} ({fate})")

    def close(self, *, failed: bool) -> None:
        """Say how big the workspace grew; remove it if it is temporary, not kept and the demo
        did not fail (a failed demo's workspace holds the server log that explains why)."""
        size = human_size(disk_usage(self.path))
        if self.temporary and not self.keep and not failed:
            shutil.rmtree(self.path, ignore_errors=True)
            click.echo(f"removed the workspace {self.path} ({size})")
        elif self.temporary and not self.keep:
            click.echo(
                f"kept the workspace {self.path} ({size}) to look into; "
                f"remove it with: rm -rf {self.path}"
            )
        else:
            click.echo(f"workspace {self.path} holds {size}; remove it with: rm -rf {self.path}")


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` while the demo runs (so its ``finally``
    stops the server and cleans up); a repeat of the signal during cleanup is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@click.group(invoke_without_command=True)
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to put everything (an empty or new directory; kept). Default: a new "
    "temporary directory, removed at the end unless --keep.",
)
@click.option("--keep", is_flag=True, help="Keep the temporary workspace afterwards.")
@click.option(
    "--vehicles", type=click.IntRange(5, 500), default=50, show_default=True, help="Fleet size."
)
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the server running afterwards (Ctrl-C or SIGTERM stops it).",
)
@click.option(
    "--port", type=click.IntRange(0, 65535), default=0, help="Server port (default: a free one)."
)
@click.pass_context
def demo(
    ctx: click.Context,
    workspace: Path | None,
    keep: bool,
    vehicles: int,
    serve: bool,
    port: int,
) -> None:
    """Run the whole system end to end: sign, serve, roll out to a simulated fleet.

    `overdrive demo images` only writes sample root filesystem images (to sign in the
    README's quickstart)."""
    if ctx.invoked_subcommand is not None:
        return
    ws = Workspace.open(workspace, keep)
    ws.announce()
    show = Demo(ws.path, vehicles, port)
    completed = failed = False
    stopped_by: int | None = None  # the exit code of a demo stopped before it completed
    with terminate_on_signals():
        try:
            show.run_all()
            completed = True
            if serve:
                click.echo(
                    f"\nserving {show.url} — admin token: {show.token}  "
                    "(Ctrl-C or SIGTERM stops it)"
                )
                while show.server and show.server.poll() is None:
                    time.sleep(1)
        except KeyboardInterrupt:
            click.echo("\nstopped")
            stopped_by = 130
        except Terminated as e:
            click.echo(f"\nstopped ({signal.Signals(e.signum).name})")
            stopped_by = 128 + e.signum
        except BaseException:
            failed = True
            raise
        finally:
            show.stop_server()
            ws.close(failed=failed)
    if stopped_by is not None and not completed:
        sys.exit(stopped_by)


@demo.command("images")
@click.option("--hardware-id", default="ecu-gateway", show_default=True)
@click.option(
    "--versions",
    default="1.0,1.1",
    show_default=True,
    metavar="V[,V…]",
    help="One image per version, each a patch release's change from the one before.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write rootfs-VERSION.img into.",
)
@click.option(
    "--size-mib", type=click.IntRange(2, 1024), default=8, show_default=True, help="Image size."
)
def images_command(hardware_id: str, versions: str, out: Path, size_mib: int) -> None:
    """Write sample root filesystem images (ext4 when e2fsprogs is installed): rootfs-1.0.img, …"""
    wanted = [v.strip() for v in versions.split(",") if v.strip()]
    if not wanted or not all(VERSION.fullmatch(v) for v in wanted):
        raise click.BadParameter(
            "versions are like 1.0 or 2.4.1-rc1, comma-separated", param_hint="--versions"
        )
    if not VERSION.fullmatch(hardware_id):
        raise click.BadParameter("letters, digits, '.', '_', '-'", param_hint="--hardware-id")
    out.mkdir(parents=True, exist_ok=True)
    for version in wanted:
        path = out / f"rootfs-{version}.img"
        if path.exists():
            raise click.ClickException(f"{path} exists; remove it or choose another --out")
        how = build_image(path, hardware_id, version, size=size_mib << 20)
        click.echo(f"{path}: {hardware_id} {version}, {size_mib} MiB, {how}")

"""Hostile input must never wedge a vehicle: real processes over loopback, one class each.

- untrusted text (a mirror's status line, a health check's output, a stored result from an
  older version) is sanitised and bounded before it is stored or sent, so the server never
  refuses what the vehicle sends because of it; one event the server refuses is set aside and
  the rest still arrive;
- every request has an overall deadline, headers included (a mirror that trickles its headers);
- a malformed poll answer is a failed turn, and the daemon goes on at its own interval;
- a bundle that is not what its signed target says is refused before a byte is written, and a
  hostile header cannot make the decoder read or parse more than the signed manifest;
- whatever the boot environment says, the slot that is running is never written into;
- exit codes say what happened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import socketserver
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import TargetFile

from overdrive.bundle import Expected, ImageIdentity, NotAsSigned
from overdrive.bundle.format import read_header
from overdrive.client.bootchooser import BootState, SlotState
from overdrive.client.bootenv import FileBootEnv
from overdrive.client.daemon import run_daemon
from overdrive.client.events import EventQueue
from overdrive.client.state import StateStore
from overdrive.client.vehicle import Vehicle
from overdrive.keys import KeyDirectory
from overdrive.server.models import Event, Membership
from overdrive.signing.repository import ImageRepository
from overdrive.storage import LocalStorage
from overdrive.tuf_layout import BundleInfo, ImageRef, bundle_target_path
from tests.bundle.conftest import chunk_entry, identity, raw_bundle
from tests.client.realboot import need
from tests.conftest import Cli, make_image
from tests.live_server import Car, LiveServer, provision, run_once, start_campaign
from tests.security.harness import Proxy, running_proxy

# ----------------------------------------------------------------------------- a raw mirror

Rule = Callable[[socket.socket], None]


class RawMirror(socketserver.ThreadingTCPServer):
    """Serves a repository directory over HTTP/1.0; a rule (by path substring) may take over the
    connection and send anything at all."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _RawHandler)
        self.root = root
        self.rules: dict[str, Rule] = {}
        self.hits: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _RawHandler(socketserver.BaseRequestHandler):
    server: RawMirror

    def handle(self) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            block = self.request.recv(65536)
            if not block:
                return
            request += block
        path = request.split(b" ", 2)[1].decode()
        self.server.hits.append(path)
        for key, rule in self.server.rules.items():
            if key in path:
                with contextlib.suppress(OSError):  # the vehicle hung up: what it should do
                    rule(self.request)
                return
        file = self.server.root / path.lstrip("/")
        if not file.is_file():
            self.request.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        data = file.read_bytes()
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        self.request.sendall(head + data)


def status_line(reason: bytes, code: int = 403) -> Rule:
    def rule(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.0 %d " % code + reason + b"\r\nContent-Length: 0\r\n\r\n")

    return rule


def trickled_headers(sock: socket.socket) -> None:
    """The status line, then one header byte a second: each read is quick, the headers never end."""
    sock.sendall(b"HTTP/1.0 200 OK\r\n")
    for byte in b"X-Slow: " + b"x" * 600:
        sock.sendall(bytes([byte]))
        time.sleep(1.0)


@pytest.fixture
def mirror(live_server: LiveServer) -> Iterator[RawMirror]:
    server = RawMirror(live_server.published.storage)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def configure(car: Car, **settings: Any) -> None:
    """Change vehicle.toml settings (as an integrator would, by hand)."""
    path = car.state_dir / "vehicle.toml"
    lines = path.read_text().splitlines()
    for key, value in settings.items():
        rendered = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
        lines = [f"{key} = {rendered}" if line.startswith(f"{key} = ") else line for line in lines]
    path.write_text("\n".join(lines) + "\n")


def server_events(live: LiveServer, vehicle_id: str) -> list[Event]:
    with live.ctx.session() as session:
        return list(session.query(Event).filter_by(vehicle_id=vehicle_id))


def membership(live: LiveServer, vehicle_id: str) -> str:
    with live.ctx.session() as session:
        return str(session.query(Membership).filter_by(vehicle_id=vehicle_id).one().status)


def pending(car: Car) -> int:
    return len(EventQueue(car.state_dir).pending())


# ----------------------------------------------------------------------------- untrusted text


@pytest.mark.parametrize(
    "reason",
    [
        b"Forbidden\x00by mirror",
        b"\x1b[31mred\x1b[0m \x07 \x7f \xc3\x28 \xff\xfe",  # escapes, bell, DEL, bad UTF-8
        b"x" * 20_000,
    ],
    ids=["nul", "escapes-and-bad-utf8", "huge"],
)
def test_mirror_status_line_cannot_wedge_the_vehicle(
    cli: Cli, live_server: LiveServer, mirror: RawMirror, tmp_path: Path, reason: bytes
) -> None:
    car = provision(cli, live_server, tmp_path, "car-1", repo_url=mirror.url)
    mirror.rules[".bundle"] = status_line(reason)
    start_campaign(live_server)
    run = run_once(cli, car)
    assert run.code == 3 and run.stdout.startswith("failed: download_failed: "), run.stdout
    assert "\x00" not in run.stdout and "\x1b" not in run.stdout and len(run.stdout) < 700
    result = StateStore(car.state_dir).load().last_result
    assert result is not None and result["status"] == "failed"
    assert "\x00" not in json.dumps(result) and len(result["message"]) <= 500
    # The refusal reached the server, and the vehicle keeps polling normally.
    assert pending(car) == 0 and membership(live_server, "car-1") == "failed"
    assert run_once(cli, car).code == 0
    assert pending(car) == 0


@pytest.mark.parametrize(
    "output",
    [
        "print('starting'); print('bad\\x00line \\ud800', end='')",
        "import sys; sys.stdout.buffer.write(b'x' * 5_000_000 + b'\\n\\x1b]0;pwned\\x07\\xff')",
    ],
    ids=["nul-and-surrogate", "megabytes-then-escapes"],
)
def test_health_check_output_cannot_hide_a_rollback(
    cli: Cli, live_server: LiveServer, tmp_path: Path, output: str
) -> None:
    script = tmp_path / "health.py"
    script.write_text(
        "import os, sys\n"
        "if os.environ['OVERDRIVE_VERSION'] == '1.1':\n"
        f"    {output}\n"
        "    sys.exit(1)\n"
    )
    car = provision(cli, live_server, tmp_path, "car-1", health_check=f"{sys.executable} {script}")
    start_campaign(live_server)
    assert run_once(cli, car).code == 0
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 4 and "health check failed: " in boot.stdout
    assert "\x00" not in boot.stdout and "\x1b" not in boot.stdout and len(boot.stdout) < 1500
    assert pending(car) == 0
    assert membership(live_server, "car-1") == "rolled_back"  # the brake sees it
    [rolled] = [e for e in server_events(live_server, "car-1") if e.type == "rolled_back"]
    assert rolled.reason and "\x00" not in rolled.reason and len(rolled.reason) <= 500


def test_one_refused_event_does_not_block_the_queue(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """An event the server refuses (here: one written by hand, of a type it does not know) is
    set aside with the server's reason; the events around it are delivered."""
    car = provision(cli, live_server, tmp_path, "car-1")
    queue = EventQueue(car.state_dir)
    queue.add("booted", details={"note": "before"})
    queue.put({"id": "f" * 32, "type": "exploded", "at": "2026-01-01T00:00:00Z"})
    queue.add("booted", details={"note": "after"})
    assert run_once(cli, car).code == 0
    assert pending(car) == 0
    assert len([e for e in server_events(live_server, "car-1") if e.type == "booted"]) == 2
    rejected = car.state_dir / "events" / "rejected"
    [kept] = list(rejected.glob("*.json"))
    assert json.loads(kept.read_text())["type"] == "exploded"
    assert "must be one of" in kept.with_suffix(".reason").read_text()


def test_a_hostile_stored_result_from_an_older_version_is_sent_clean(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """A state written before sanitising existed holds a NUL: polls still work (the manifest is
    cleaned before it is signed and sent), so the vehicle recovers by itself."""
    car = provision(cli, live_server, tmp_path, "car-1")
    store = StateStore(car.state_dir)
    state = store.load()
    state.last_result = {"status": "failed", "message": "HTTP 403 Forb\x00idden \udc80"}
    store.save(state)
    first = run_once(cli, car)
    assert first.code == 0 and first.stdout.startswith("nothing"), first


# ----------------------------------------------------------------------------- deadlines


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", [".bundle", "timestamp.json"], ids=["bundle", "tuf-timestamp"])
def test_trickled_headers_hit_the_request_deadline(
    cli: Cli, live_server: LiveServer, mirror: RawMirror, tmp_path: Path, where: str
) -> None:
    car = provision(cli, live_server, tmp_path, "car-1", repo_url=mirror.url)
    configure(car, request_deadline_s=3.0, download_attempts=1)
    mirror.rules[where] = trickled_headers
    start_campaign(live_server)
    run = run_once(cli, car)
    assert run.code == 5, run  # interrupted / offline: try again later
    if where == ".bundle":
        assert "no complete response headers within 3 s" in run.stdout, run.stdout
    else:
        assert run.stdout.startswith("offline: image repository unreachable: ")
        assert "no complete answer within 3 s" in run.stdout, run.stdout
    del mirror.rules[where]
    assert run_once(cli, car).stdout.startswith("updated: installed 1.1 into slot B")


@pytest.mark.timeout(90)
def test_a_server_that_trickles_its_answer_is_given_up_on(
    cli: Cli, live_server: LiveServer, mirror: RawMirror, tmp_path: Path
) -> None:
    car = provision(cli, live_server, tmp_path, "car-1")
    configure(car, server_url=mirror.url.rstrip("/"), request_deadline_s=2.0)
    mirror.rules["/api/v1/"] = trickled_headers
    run = run_once(cli, car)
    assert run.code == 5 and run.stdout.startswith("offline: cannot reach server: "), run
    assert "no complete answer within 2 s" in run.stdout


# ----------------------------------------------------------------------------- poll answers


@pytest.fixture
def raw_director(live_server: LiveServer) -> Iterator[Proxy]:
    """The real server behind, a poll answer of the test's choosing in front
    (``raw_poll_answer``)."""
    yield from running_proxy(live_server.url)


MALFORMED = {
    "negative": b'{"director": {"version": 1}, "next_poll_seconds": -5}',
    "huge": b'{"director": {"version": 1}, "next_poll_seconds": 100000000000000000000}',
    "string": b'{"director": {"version": 1}, "next_poll_seconds": "900"}',
    "bool": b'{"director": {"version": 1}, "next_poll_seconds": true}',
    "float": b'{"director": {"version": 1}, "next_poll_seconds": 1.5}',
    "array": b"[1, 2, 3]",
    "not-json": b"<html>hello</html>",
    "director-not-an-object": b'{"director": [1], "next_poll_seconds": 900}',
    "director-version-missing": b'{"director": {}, "next_poll_seconds": 900}',
    "director-version-zero": b'{"director": {"version": 0}}',
    "director-version-negative": b'{"director": {"version": -3}}',
    "director-version-a-string": b'{"director": {"version": "7"}}',
    "director-version-a-bool": b'{"director": {"version": true}}',
    "director-version-a-float": b'{"director": {"version": 2.5}}',
    "director-version-huge": b'{"director": {"version": 2147483648}}',
    "time-not-an-object": b'{"director": {"version": 1}, "time": "2026-01-01T00:00:00Z"}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_poll_answer_is_a_failed_turn(
    cli: Cli, live_server: LiveServer, raw_director: Proxy, tmp_path: Path, kind: str
) -> None:
    car = provision(cli, live_server, tmp_path, "car-1")
    configure(car, server_url=raw_director.url)
    raw_director.raw_poll_answer = MALFORMED[kind]
    run = run_once(cli, car)
    assert run.code == 5 and run.stdout.startswith("server_error: "), run
    assert run.stderr == ""  # no traceback, no "internal error"


def test_daemon_survives_malformed_answers_at_its_own_interval(
    cli: Cli, live_server: LiveServer, raw_director: Proxy, tmp_path: Path
) -> None:
    car = provision(cli, live_server, tmp_path, "car-1")
    configure(car, server_url=raw_director.url, poll_interval=77)
    lines: list[str] = []
    sleeps: list[float] = []
    answers = iter([MALFORMED["negative"], MALFORMED["array"], b""])

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        raw_director.raw_poll_answer = next(answers)

    raw_director.raw_poll_answer = MALFORMED["string"]
    run_daemon(Vehicle(car.state_dir), echo=lines.append, sleep=sleep, turns=4)
    assert [line.split(" ", 2)[1] for line in lines] == [
        "server_error:",
        "server_error:",
        "server_error:",
        "nothing:",
    ]
    assert all(0.8 * 77 <= s <= 1.2 * 77 for s in sleeps), sleeps  # its own interval, jittered
    for line in lines:  # a UTC time, then when the next poll is due
        assert line[:20].endswith("Z") and "; next poll 20" in line and line.endswith(" s)")


def test_daemon_outlives_an_unexpected_error(
    cli: Cli, live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    car = provision(cli, live_server, tmp_path, "car-1")
    vehicle = Vehicle(car.state_dir)
    calls = {"n": 0}
    real = vehicle.cycle

    def flaky() -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("surprise")
        return real()

    monkeypatch.setattr(vehicle, "cycle", flaky)
    lines: list[str] = []
    run_daemon(vehicle, echo=lines.append, sleep=lambda s: None, turns=2)
    assert "failed: internal error: KeyError: 'surprise'" in lines[0]
    assert " nothing: nothing to do" in lines[1]


# ----------------------------------------------------------------------------- bundles


def publish_signed(live: LiveServer, bundle: Path, info: BundleInfo) -> None:
    """Sign ``bundle`` as a target with ``info`` (a compromised build pipeline: the targets key
    signs what it is given)."""
    published = live.published
    repo = ImageRepository.load(LocalStorage(published.storage), KeyDirectory(published.keys))
    path = bundle_target_path(info.hardware_id, info.version)
    target = TargetFile.from_file(path, str(bundle), ["sha256"])
    target.unrecognized_fields["custom"] = info.to_custom()
    targets = repo.bump(repo.targets, "targets")
    targets.signed.targets[path] = target
    repo.sign(targets, "targets", repo.root.signed)
    repo.publish(targets=targets, target_files=[(path, target, bundle)])


def full_bundle(path: Path, image: bytes, version: str, chunk: int = 4096) -> None:
    entries, payload = [], b""
    for offset in range(0, len(image), chunk):
        data = image[offset : offset + chunk]
        entries.append(chunk_entry("raw", data, offset, len(payload), len(data)))
        payload += data
    manifest = {
        "hardware_id": "ecu-a",
        "image": identity(image, version),
        "source": None,
        "chunk_size": chunk,
        "chunks": entries,
    }
    path.write_bytes(raw_bundle(manifest, payload))


def test_bundle_bigger_than_its_signed_target_writes_nothing(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """The target says a 16 KiB image; the bundle's manifest declares and carries 4 MiB. The
    vehicle refuses it before the first byte reaches the slot."""
    real = make_image(tmp_path / "real.img", 16 << 10, seed=5).read_bytes()
    big = make_image(tmp_path / "big.img", 4 << 20, seed=6).read_bytes()
    bundle = tmp_path / "big.bundle"
    full_bundle(bundle, big, "1.2", chunk=1 << 20)
    ref = ImageRef("1.2", hashlib.sha256(real).hexdigest(), len(real))
    publish_signed(live_server, bundle, BundleInfo("ecu-a", "1.2", 3, "full", ref))
    car = provision(cli, live_server, tmp_path, "car-1")
    start_campaign(live_server, "1.2")
    run = run_once(cli, car)
    assert run.code == 3 and run.stdout.startswith("failed: not_as_signed: "), run.stdout
    assert "its signed target says 1.2 (16384 bytes" in run.stdout
    assert car.slot_b.stat().st_size == 0  # not one byte written
    assert not (car.state_dir / "install-progress.json").exists()


def test_huge_manifest_is_refused_before_it_is_read_or_parsed(tmp_path: Path) -> None:
    """A 48 MiB manifest for a small image: the header's length alone gives it away, so the
    decoder reads 14 bytes of it, not 48 MiB (and parses nothing)."""
    image = bytes(64 << 10)
    entries = [
        chunk_entry("raw", image[o : o + 1024], o, o, 1024) for o in range(0, len(image), 1024)
    ]
    manifest = {
        "hardware_id": "ecu-a",
        "image": identity(image, "1.2"),
        "source": None,
        "chunk_size": 1024,
        "chunks": entries,
        "padding": "x" * (48 << 20),  # unknown field: never reached
    }
    bundle = tmp_path / "huge.bundle"
    bundle.write_bytes(raw_bundle(manifest, image))
    signed = Expected("ecu-a", ImageIdentity("1.2", hashlib.sha256(image).hexdigest(), len(image)))
    tracemalloc.start()
    try:
        with bundle.open("rb") as f, pytest.raises(NotAsSigned, match="more than a bundle of"):
            read_header(f, signed)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # nothing like the manifest's 48 MiB was read
    # With the manifest's signed length, any other length is refused just as early.
    exact = Expected(signed.hardware_id, signed.image, manifest_sha256="0" * 64, manifest_length=99)
    with bundle.open("rb") as f, pytest.raises(NotAsSigned, match="its signed target says 99"):
        read_header(f, exact)


# ----------------------------------------------------------------------------- the booted slot


def test_edited_boot_environment_never_gets_the_running_slot_written(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """Someone marked slot B good and booted it, though B holds nothing this vehicle verified.
    The daemon refuses to update from an unverified system (and would never write into the
    slot it runs from); post-boot marks B bad and goes back to A; then updates resume."""
    car = provision(cli, live_server, tmp_path, "car-1")
    env = FileBootEnv(car.state_dir / "bootenv.json")
    env.save(BootState((SlotState("B", 0, True), SlotState("A", 0, True)), booted="B"))
    car.slot_b.write_bytes(b"something nobody verified")
    start_campaign(live_server)
    run = run_once(cli, car)
    assert run.code == 3 and "running slot B, but the committed image is in slot A" in run.stdout
    assert car.slot_b.read_bytes() == b"something nobody verified"
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 4 and boot.stdout.startswith("unverified_slot: slot B holds no image")
    assert "then booted slot A (1.0): healthy" in boot.stdout
    assert run_once(cli, car).stdout.startswith("updated: installed 1.1 into slot B")


def test_the_install_target_follows_the_running_slot_not_the_state(
    cli: Cli, live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state that says B is inactive, while the kernel says B is running: nothing is written,
    whatever else the environment says."""
    need("grub-editenv", "grub-common")
    car = provision(
        cli,
        live_server,
        tmp_path,
        "car-1",
        extra=("--boot-backend", "grub", "--boot-env", str(tmp_path / "grubenv")),
    )
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=/dev/vda3 ro overdrive.slot=B")
    start_campaign(live_server)
    monkeypatch.setattr(
        "overdrive.client.vehicle.CMDLINE", cmdline
    )  # what this kernel was booted with
    run = run_once(cli, car)
    assert run.code == 3 and "running slot B" in run.stdout
    assert car.slot_b.read_bytes() == b""

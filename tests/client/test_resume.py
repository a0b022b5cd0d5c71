"""Interrupted updates resume, end to end: a real server over loopback HTTP, the real published
repository, and ``overdrive vehicle run --once`` / ``vehicle boot``.

* A bundle download cut off again and again: the call gives up keeping its bytes, the next
  call continues with ``Range: bytes=N-`` and the update commits.
* An install cut off mid-apply (a power cut in this process, or a SIGKILLed process): the next
  run continues after the last verified chunk recorded in the progress file, and the slot ends
  up byte for byte the new image.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from sqlalchemy import select

from overdrive.bundle import decoder
from overdrive.client.download import DownloadOptions
from overdrive.server.models import Event, Membership
from tests.client.conftest import Car, LiveServer, provision
from tests.conftest import Cli, mutate
from tests.live_server import run_once, start_campaign

# ----------------------------------------------------------------------------- helpers


def status(cli: Cli, car: Car) -> dict[str, Any]:
    result = cli("vehicle", "status", "--state-dir", car.state_dir, "--json")
    assert result.code == 0, result.stderr
    return dict(json.loads(result.stdout))


def event_types(live: LiveServer, vehicle_id: str) -> list[str]:
    with live.ctx.session() as session:
        return sorted(session.scalars(select(Event.type).where(Event.vehicle_id == vehicle_id)))


def membership(live: LiveServer, vehicle_id: str) -> str:
    with live.ctx.session() as session:
        return session.scalars(select(Membership.status).filter_by(vehicle_id=vehicle_id)).one()


def boot_commits(cli: Cli, car: Car, version: str, image: Path) -> None:
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 0 and f"committed {version} in slot B" in boot.stdout, boot
    after = status(cli, car)
    assert after["state"] == "idle" and after["active_slot"] == "B", after
    assert after["slots"]["B"]["version"] == version and after["pending_events"] == 0
    assert car.slot_b.read_bytes() == image.read_bytes()


UPDATE_EVENTS = sorted(
    ["downloading", "downloaded", "installing", "installed", "booted", "committed"]
)


# ----------------------------------------------------------------------------- a flaky mirror


@dataclass
class Request:
    path: str
    range: str | None
    status: int


@dataclass
class Cut:
    """Drop the connection after ``after`` body bytes, for the next ``times`` requests."""

    after: int
    times: int


@dataclass
class RepoMirror:
    """Serves a repository directory over HTTP with ``Range: bytes=N-`` support; can drop the
    connection mid-body (``cuts``) or answer 503 to everything (``down``)."""

    root: Path
    cuts: dict[str, Cut] = field(default_factory=dict)
    down: bool = False
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, path: str, range_: str | None, status: int) -> None:
        with self.lock:
            self.requests.append(Request(path, range_, status))

    def to(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def take_cut(self, path: str) -> int | None:
        with self.lock:
            cut = self.cuts.get(path)
            if cut is None or cut.times == 0:
                return None
            cut.times -= 1
            return cut.after


class _MirrorHandler(BaseHTTPRequestHandler):
    server: _MirrorServer

    def do_GET(self) -> None:
        mirror = self.server.mirror
        key = unquote(urlsplit(self.path).path).lstrip("/")
        wanted = self.headers.get("Range")
        if mirror.down:
            return self._reply(mirror, key, wanted, 503, b"")
        file = (mirror.root / key).resolve()
        if not file.is_relative_to(mirror.root) or not file.is_file():
            return self._reply(mirror, key, wanted, 404, b"")
        data = file.read_bytes()
        start = 0
        if wanted is not None:
            m = re.fullmatch(r"bytes=(\d+)-", wanted.strip())
            assert m is not None, f"unexpected Range header {wanted!r}"
            start = int(m[1])
            if start >= len(data):
                return self._reply(mirror, key, wanted, 416, b"")
        body = data[start:]
        headers = {}
        if wanted is not None:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._reply(
            mirror, key, wanted, 206 if wanted else 200, body, headers, mirror.take_cut(key)
        )

    def _reply(
        self,
        mirror: RepoMirror,
        key: str,
        wanted: str | None,
        code: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        cut: int | None = None,
    ) -> None:
        mirror.log(key, wanted, code)
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut])  # then the link drops: fewer bytes than announced
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _MirrorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mirror: RepoMirror) -> None:
        super().__init__(("127.0.0.1", 0), _MirrorHandler)
        self.mirror = mirror


@pytest.fixture
def http_mirror(live_server: LiveServer) -> Iterator[RepoMirror]:
    mirror = RepoMirror(live_server.published.storage.resolve())
    server = _MirrorServer(mirror)
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        server.shutdown()
        server.server_close()


def stored_bundle(live: LiveServer, pattern: str) -> str:
    """The storage key of the one bundle file matching ``pattern`` under ``targets/``."""
    root = live.published.storage
    [path] = (root / "targets").glob(pattern)
    return path.relative_to(root).as_posix()


# ----------------------------------------------------------------------------- the download


def test_interrupted_download_resumes_with_range(
    cli: Cli,
    live_server: LiveServer,
    http_mirror: RepoMirror,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The vehicle's retries back off 1 s, 2 s, 4 s, 8 s (jittered) by default: 7.5-15 s of sleep
    # per interrupted call. The vehicle's config sets it; the test removes the backoff.
    attempts = DownloadOptions().attempts
    car = provision(cli, live_server, tmp_path, "car-1", repo_url=http_mirror.url)
    config = car.state_dir / "vehicle.toml"
    config.write_text(
        config.read_text().replace("download_backoff_s = 1.0", "download_backoff_s = 0.0")
    )
    start_campaign(live_server, "1.1")
    key = stored_bundle(live_server, "ecu-a/1.1/*.delta-from-1.0.bundle")
    length = (live_server.published.storage / key).stat().st_size
    step = length // (attempts + 2)
    http_mirror.cuts[key] = Cut(after=step, times=attempts)

    first = run_once(cli, car)
    assert first.code == 5, first  # interrupted: try again later
    assert first.stdout.startswith("interrupted: "), first.stdout
    kept = attempts * step
    assert f"gave up after {attempts} attempts, {kept} of {length} bytes kept" in first.stdout
    # Within the call, every retry continued from the bytes on disk.
    assert [r.range for r in http_mirror.to(key)] == [None] + [
        f"bytes={i * step}-" for i in range(1, attempts)
    ]
    during = status(cli, car)
    assert during["state"] == "downloading" and during["slots"]["B"] is None, during
    assert car.slot_b.read_bytes() == b""
    [part] = (car.state_dir / "cache").glob("*.part")
    assert part.stat().st_size == kept

    second = run_once(cli, car)
    assert second.code == 0 and second.stdout.startswith("updated: installed 1.1 into slot B"), (
        second
    )
    # Across calls: one more request, for the rest only.
    last = http_mirror.to(key)[attempts:]
    assert last == [Request(key, f"bytes={kept}-", 206)], last
    assert not part.exists()

    boot_commits(cli, car, "1.1", live_server.published.images["ecu-a/1.1"]["path"])
    assert event_types(live_server, "car-1") == UPDATE_EVENTS
    assert membership(live_server, "car-1") == "committed"


def test_repository_outage_during_poll_is_retried(
    cli: Cli, live_server: LiveServer, http_mirror: RepoMirror, tmp_path: Path
) -> None:
    """The mirror is briefly down (HTTP 503) when the vehicle verifies its assignment. Like an
    interrupted bundle download, this must be retried on a later poll, not end the update."""
    car = provision(cli, live_server, tmp_path, "car-1", repo_url=http_mirror.url)
    start_campaign(live_server, "1.1")
    http_mirror.down = True
    outage = run_once(cli, car)
    http_mirror.down = False
    assert outage.code == 5, outage  # an outage: try again later (not a refusal: 3)
    assert "failed" not in event_types(live_server, "car-1")
    again = run_once(cli, car)  # today: "nothing to do", the membership is final
    assert again.stdout.startswith("updated: installed 1.1 into slot B"), again


# ----------------------------------------------------------------------------- the install

CHUNK = 8192


@dataclass
class Release12:
    """ecu-a 1.2 with small chunks (a delta from 1.1), for a vehicle running 1.1."""

    image: Path
    chunks: int
    car: Car


@pytest.fixture
def release_12(cli: Cli, live_server: LiveServer, tmp_path: Path) -> Release12:
    published = live_server.published
    image = mutate(published.images["ecu-a/1.1"]["path"], tmp_path / "a12.img", seed=5, edits=40)
    result = cli(
        "release", "add", image,
        "--hardware-id", "ecu-a",
        "--version", "1.2",
        "--delta-from", "1.1",
        "--chunk-size", f"{CHUNK}",
        "--storage", published.storage,
        "--keys", published.keys,
        "--jobs", "1",
        "--quiet",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    car = provision(cli, live_server, tmp_path, "car-1", image="ecu-a/1.1")
    start_campaign(live_server, "1.2")
    return Release12(image, math.ceil(image.stat().st_size / CHUNK), car)


class PowerCut(BaseException):
    """Stands in for a power cut: nothing after it runs, no cleanup catches it."""


CRASH_AT = 5  # chunks 0..4 are written, verified and recorded; chunk 5 is not


def cut_power_in_process(cli: Cli, car: Car) -> None:
    real = decoder._save_progress

    def save(path: Path, record: dict[str, Any]) -> None:
        if record["next_chunk"] > CRASH_AT:
            raise PowerCut  # chunk CRASH_AT is in the slot, but its record never lands
        real(path, record)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decoder, "_save_progress", save)
        with pytest.raises(PowerCut):
            run_once(cli, car)


def kill_process(cli: Cli, car: Car) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from overdrive.bundle import decoder
        from overdrive.cli import main
        real = decoder._save_progress
        def save(path, record):
            real(path, record)
            if record["next_chunk"] == {CRASH_AT}:
                os.kill(os.getpid(), signal.SIGKILL)
        decoder._save_progress = save
        main(["vehicle", "run", "--state-dir", sys.argv[1], "--once"])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(car.state_dir)],
        capture_output=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == -9, proc.stderr.decode()


@pytest.mark.parametrize(
    "crash", [cut_power_in_process, kill_process], ids=["power-cut", "sigkill"]
)
def test_interrupted_install_resumes(
    cli: Cli,
    live_server: LiveServer,
    release_12: Release12,
    monkeypatch: pytest.MonkeyPatch,
    crash: Any,
) -> None:
    car = release_12.car
    assert release_12.chunks > CRASH_AT + 2
    crash(cli, car)

    during = status(cli, car)
    assert during["state"] == "installing" and during["active_slot"] == "A", during
    assert during["slots"]["B"] is None  # a half-written slot is never offered to boot
    progress = json.loads((car.state_dir / "install-progress.json").read_bytes())
    assert progress["next_chunk"] == CRASH_AT
    assert progress["target"] == str(car.slot_b.resolve())
    [bundle] = (car.state_dir / "cache").iterdir()  # downloaded and verified, kept for the resume
    assert bundle.name.endswith("delta-from-1.1.bundle")
    partial = car.slot_b.read_bytes()
    assert len(partial) > 0 and partial != release_12.image.read_bytes()

    decoded: list[int] = []
    real = decoder._decode_chunk

    def spy(i: int, *args: Any) -> bytes:
        decoded.append(i)
        return real(i, *args)

    monkeypatch.setattr(decoder, "_decode_chunk", spy)
    again = run_once(cli, car)
    assert again.code == 0 and again.stdout.startswith("updated: installed 1.2 into slot B"), again
    assert decoded == list(range(CRASH_AT, release_12.chunks))
    assert not (car.state_dir / "install-progress.json").exists()
    assert status(cli, car)["state"] == "installed"

    boot_commits(cli, car, "1.2", release_12.image)
    assert event_types(live_server, "car-1") == UPDATE_EVENTS
    assert membership(live_server, "car-1") == "committed"

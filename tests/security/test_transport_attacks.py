"""Attacks on what the vehicle downloads: endless data, slow retrieval, and a bundle that is
genuinely signed (a compromised build pipeline) but hostile to the decoder.

Each runs against the real published repository (served to the vehicle by a loopback HTTP mirror
the attacker controls) and the real server, and asserts that the vehicle refuses, reports the
precise reason, and stays on its good slot.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import zstandard
from tuf.api.metadata import TargetFile

from overdrive.bundle import MAGIC
from overdrive.keys import KeyDirectory
from overdrive.signing.repository import ImageRepository
from overdrive.storage import LocalStorage
from overdrive.tuf_layout import BundleInfo, ImageRef, bundle_target_path
from tests.bundle.conftest import chunk_entry, identity, raw_bundle
from tests.conftest import Cli
from tests.live_server import Car, LiveServer, provision, run_once, start_campaign
from tests.security.harness import Before, assert_stayed_put


class HostileMirror(ThreadingHTTPServer):
    """Serves the repository; for bundles it may send endless data or trickle bytes."""

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.mode = "honest"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/"


class _Handler(BaseHTTPRequestHandler):
    server: HostileMirror

    def do_GET(self) -> None:
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if not path.name.endswith(".bundle") or self.server.mode == "honest":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.end_headers()  # no Content-Length: the client must count for itself
        try:
            if self.server.mode == "endless":
                self.wfile.write(data)
                for _ in range(10_000):  # far beyond the signed length, until the client hangs up
                    self.wfile.write(b"\0" * 65536)
            else:  # trickle: a byte every 50 ms, under the vehicle's minimum rate
                for byte in data[:400]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def hostile_mirror(live_server: LiveServer) -> Iterator[HostileMirror]:
    server = HostileMirror(live_server.published.storage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()


def car_on(cli: Cli, live: LiveServer, tmp_path: Path, mirror: HostileMirror) -> Car:
    car = provision(cli, live, tmp_path, "car-1", repo_url=mirror.url)
    config = car.state_dir / "vehicle.toml"
    text = config.read_text().replace("download_attempts = 5", "download_attempts = 1")
    config.write_text(text.replace("download_rate_window_s = 10.0", "download_rate_window_s = 1.0"))
    return car


def test_endless_data_is_cut_at_the_signed_length(
    cli: Cli, live_server: LiveServer, hostile_mirror: HostileMirror, tmp_path: Path
) -> None:
    car = car_on(cli, live_server, tmp_path, hostile_mirror)
    before = Before.take(cli, car)
    start_campaign(live_server)
    hostile_mirror.mode = "endless"
    run = run_once(cli, car)
    reason = assert_stayed_put(
        cli, live_server, before, "car-1", run, "download_failed", action="failed"
    )
    assert "more than" in reason or "length" in reason, reason


def test_slow_retrieval_is_abandoned_and_retried_later(
    cli: Cli, live_server: LiveServer, hostile_mirror: HostileMirror, tmp_path: Path
) -> None:
    car = car_on(cli, live_server, tmp_path, hostile_mirror)
    start_campaign(live_server)
    hostile_mirror.mode = "trickle"
    run = run_once(cli, car)
    assert run.code == 5 and run.stdout.startswith("interrupted"), run.stdout  # tried again later
    assert not car.slot_b.read_bytes()
    hostile_mirror.mode = "honest"
    assert run_once(cli, car).stdout.startswith("updated")  # the next turn resumes and installs


def hostile_bundle(path: Path, image: bytes) -> None:
    """A full bundle for ``image`` whose second chunk is a zstd bomb (64 MiB of zeros)."""
    size = 4096
    bomb = zstandard.ZstdCompressor(level=19, write_content_size=False).compress(bytes(64 << 20))
    first = image[:size]
    entries = [
        chunk_entry("raw", first, 0, 0, len(first)),
        chunk_entry("zstd", image[size:], size, len(first), len(bomb)),
    ]
    manifest = {
        "hardware_id": "ecu-a",
        "image": {**identity(image, "1.2")},
        "source": None,
        "chunk_size": size,
        "chunks": entries,
    }
    path.write_bytes(raw_bundle(manifest, first + bomb))
    assert path.read_bytes().startswith(MAGIC)


def test_signed_but_hostile_bundle_is_refused_by_the_decoder(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """The targets key signed a bundle built to exhaust the vehicle (compromised pipeline)."""
    published = live_server.published
    image = bytes(8192)
    bundle = tmp_path / "evil.bundle"
    hostile_bundle(bundle, image)
    repo = ImageRepository.load(LocalStorage(published.storage), KeyDirectory(published.keys))
    path = bundle_target_path("ecu-a", "1.2")
    target = TargetFile.from_file(path, str(bundle), ["sha256"])
    ref = ImageRef("1.2", hashlib.sha256(image).hexdigest(), len(image))
    target.unrecognized_fields["custom"] = BundleInfo("ecu-a", "1.2", 3, "full", ref).to_custom()
    targets = repo.bump(repo.targets, "targets")
    targets.signed.targets[path] = target
    repo.sign(targets, "targets", repo.root.signed)
    repo.publish(targets=targets, target_files=[(path, target, bundle)])

    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    start_campaign(live_server, "1.2")
    run = run_once(cli, car)
    reason = assert_stayed_put(
        cli,
        live_server,
        before,
        "car-1",
        run,
        "bad_bundle",
        action="failed",
        slot_b_unchanged=False,
        nothing_downloaded=False,
    )
    assert "DecompressionBomb" in reason, reason
    assert car.slot_b.stat().st_size <= len(image)  # never written past the declared image

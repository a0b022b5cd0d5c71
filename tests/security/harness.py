"""The attack harness of the security tests: a man in the middle between a real vehicle and the
real server, a forger holding stolen director keys, and the refusal contract.

* :class:`Proxy` sits between ``overdrive vehicle`` and the live server (the vehicle's
  ``server_url`` points at it). Every request is forwarded to the real server (so manifests are
  checked and stored, events are verified and stored); the attacker may then rewrite the poll
  answer (``director.version``, ``time``) and serve director metadata of its own choosing under
  ``GET /api/v1/director/<vehicle>/metadata/<name>``.
* :class:`StolenDirectorKeys` signs director metadata with the director's genuine online keys
  (``director-targets``, ``director-snapshot``, ``director-timestamp``): what an attacker who
  compromised the server can sign. It builds the per-vehicle chain exactly as
  :meth:`overdrive.server.director.Director.sign_chain` does (python-tuf's Metadata API), so a
  forgery differs from an honest chain only in what an attack changes.
* :func:`assert_stayed_put` is what every refusal must leave behind.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from sqlalchemy import select
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from overdrive.client.config import VehicleConfig
from overdrive.client.state import StateStore
from overdrive.envelope import sign_envelope
from overdrive.keys import KeyDirectory
from overdrive.server.models import Event
from overdrive.signing.repository import ImageRepository
from overdrive.storage import LocalStorage
from overdrive.tuf_layout import BundleInfo
from overdrive.uptane import VEHICLE_FIELD, DirectorEntry, director_targets, time_attestation
from tests.conftest import Cli, Result
from tests.live_server import Car, LiveServer
from tests.repo_fixtures import Published

DELTA_11 = "ecu-a/1.1/delta-from-1.0.bundle"
FULL_11 = "ecu-a/1.1/full.bundle"
FULL_10 = "ecu-a/1.0/full.bundle"
FULL_B10 = "ecu-b/1.0/full.bundle"
_COMPACT = JSONSerializer(compact=True)


# ----------------------------------------------------------------------------- small helpers


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def serial(vehicle_id: str) -> str:
    """The primary ECU serial ``vehicle provision`` gives a vehicle by default."""
    return f"{vehicle_id}-primary"


def closed_window_policy() -> dict[str, Any]:
    """A policy whose only maintenance window is a minute twelve hours from now (local time):
    the vehicle verifies what the director assigns, then waits (acting on nothing)."""
    opens = datetime.now().astimezone() + timedelta(hours=12)
    return {
        "name": "night",
        "stages": [{"name": "all", "share": "100%"}],
        "maintenance_windows": [
            {
                "start": opens.strftime("%H:%M"),
                "end": (opens + timedelta(minutes=1)).strftime("%H:%M"),
            }
        ],
    }


def status(cli: Cli, car: Car) -> dict[str, Any]:
    result = cli("vehicle", "status", "--state-dir", car.state_dir, "--json")
    assert result.code == 0, result.stderr
    return dict(json.loads(result.stdout))


def trusted_time(car: Car) -> str | None:
    """The vehicle's trusted time (``state.json``)."""
    return StateStore(car.state_dir).load().trusted_time


def director_root_version(car: Car) -> int:
    """The version of the director root the vehicle trusts (``STATE_DIR/director/root.json``,
    else the one it was provisioned with)."""
    path = car.state_dir / "director" / "root.json"
    if not path.exists():
        path = car.state_dir / "director_root.json"
    return int(json.loads(path.read_bytes())["signed"]["version"])


def events(live: LiveServer, vehicle_id: str, kind: str | None = None) -> list[Event]:
    with live.ctx.session() as session:
        query = select(Event).where(Event.vehicle_id == vehicle_id)
        if kind is not None:
            query = query.where(Event.type == kind)
        rows = list(session.scalars(query))
        session.expunge_all()
    return rows


def point_at(car: Car, server_url: str) -> None:
    """Make the vehicle talk to another server (the attacker's man in the middle)."""
    config = VehicleConfig.load(car.state_dir)
    replace(config, server_url=server_url).save(car.state_dir)


def image_targets(published: Published) -> dict[str, TargetFile]:
    """The image repository's signed targets (path → target)."""
    repo = ImageRepository.load(LocalStorage(published.storage), KeyDirectory(published.keys))
    return repo.bundle_targets()


def provision_with_slot_a(
    cli: Cli, live: LiveServer, tmp_path: Path, vehicle_id: str, slot_a_image: Path, version: str
) -> Car:
    """Like ``provision``, but with any image in slot A claiming to be ``ecu-a VERSION``."""
    car_dir = tmp_path / vehicle_id
    car_dir.mkdir()
    car = Car(car_dir / "state", car_dir / "slot-a.img", car_dir / "slot-b.img")
    shutil.copyfile(slot_a_image, car.slot_a)
    car.slot_b.write_bytes(b"")
    result = cli(
        "vehicle", "provision",
        "--state-dir", car.state_dir,
        "--server", live.url,
        "--enroll-token", live.enroll,
        "--vehicle-id", vehicle_id,
        "--hardware-id", "ecu-a",
        "--slot-a", car.slot_a,
        "--slot-b", car.slot_b,
        "--trusted-root", live.published.storage / "metadata" / "1.root.json",
        "--director-root", live.published.director_root,
        "--repo-url", live.published.storage.as_uri(),
        "--factory-version", version,
        "--factory-release-counter", "1",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return car


# ----------------------------------------------------------------------------- the contract


@dataclass
class Before:
    """What must not change when the vehicle refuses an update."""

    car: Car
    slot_a: bytes
    boot: str

    @classmethod
    def take(cls, cli: Cli, car: Car) -> Before:
        assert car.slot_b.read_bytes() == b""
        return cls(car, car.slot_a.read_bytes(), status(cli, car)["boot"])


def assert_stayed_put(
    cli: Cli,
    live: LiveServer,
    before: Before,
    vehicle_id: str,
    run: Result,
    reason: str,
    *,
    action: str = "refused",
    slot_a_unchanged: bool = True,
    nothing_downloaded: bool = True,
    slot_b_unchanged: bool = True,
) -> str:
    """The refusal contract: the CLI exits 3 naming ``reason``, slot B was never written, the
    vehicle is idle on slot A with an untouched boot environment (and boots slot A), its
    ``last_result`` names the reason, and the server stored one ``failed`` event whose reason
    starts with it. Returns the reason the server stored."""
    car = before.car
    assert run.code == 3, (run.code, run.stdout, run.stderr)
    assert run.stdout.startswith(f"{action}: {reason}: "), run.stdout
    if slot_b_unchanged:
        assert car.slot_b.read_bytes() == b"", "the inactive slot was written"
    if slot_a_unchanged:
        assert car.slot_a.read_bytes() == before.slot_a
    after = status(cli, car)
    assert after["state"] == "idle" and after["active_slot"] == "A", after
    assert after["slots"]["B"] is None and after["assignment"] is None, after
    assert after["last_result"]["reason"] == reason, after["last_result"]
    assert after["last_result"]["status"] == action, after["last_result"]
    assert after["boot"] == before.boot, "a trial boot was requested"
    assert after["pending_events"] == 0
    assert not (car.state_dir / "install-progress.json").exists()
    if nothing_downloaded:
        cache = car.state_dir / "cache"
        assert not cache.exists() or not any(cache.iterdir()), list(cache.iterdir())
    failed = [e.reason or "" for e in events(live, vehicle_id, "failed")]
    assert len(failed) == 1, failed
    assert failed[0].startswith(f"{reason}: "), failed
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 0 and boot.stdout.startswith("booted slot A"), boot.stdout
    return failed[0]


def assert_did_nothing(cli: Cli, live: LiveServer, before: Before, vehicle_id: str) -> None:
    """Nothing written, nothing requested, nothing reported."""
    car = before.car
    assert car.slot_b.read_bytes() == b"" and car.slot_a.read_bytes() == before.slot_a
    after = status(cli, car)
    assert after["state"] == "idle" and after["assignment"] is None, after
    assert after["last_result"] is None, after["last_result"]
    assert after["boot"] == before.boot
    assert not events(live, vehicle_id, "failed")


# ----------------------------------------------------------------------------- the proxy

#: (the manifest's signed payload, the genuine poll answer) → the answer the vehicle gets.
PollHook = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
#: (vehicle id, metadata file name) → (status, body) to serve instead, or None to forward.
GetHook = Callable[[str, str], tuple[int, bytes] | None]

_METADATA = re.compile(r"/api/v1/director/([^/]+)/metadata/([^/?]+)")
_VEHICLE_API = re.compile(r"/api/v1/vehicles/[^/]+/(poll|events)|/api/v1/vehicles/register")


def keep(_manifest: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    return answer


@dataclass
class Proxy:
    """A man in the middle the attacker controls, in front of the real server.

    ``poll`` rewrites poll answers; ``files`` (metadata file name → body, or an HTTP status)
    and ``get`` replace director metadata. Records what it saw: the manifests the vehicle sent,
    the genuine poll answers, the metadata files the vehicle asked for.
    """

    upstream: str
    poll: PollHook = keep
    files: dict[str, bytes | int] = field(default_factory=dict)
    get: GetHook | None = None
    #: Sent instead of the poll answer when set (raw bytes, for malformed answers).
    raw_poll_answer: bytes = b""
    manifests: list[dict[str, Any]] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    url: str = ""

    def forward(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.upstream + path,
            data=body,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def handle_get(self, path: str) -> tuple[int, bytes]:
        m = _METADATA.fullmatch(path)
        if m is None:
            return self.forward("GET", path, None)
        vehicle_id, name = m[1], m[2]
        self.fetched.append(name)
        if self.get is not None:
            served = self.get(vehicle_id, name)
            if served is not None:
                return served
        if name in self.files:
            body = self.files[name]
            if isinstance(body, int):
                return body, b'{"error": {"status": 404, "code": "not_found", "message": "no"}}'
            return 200, body
        return self.forward("GET", path, None)

    def handle_post(self, path: str, body: bytes) -> tuple[int, bytes]:
        m = _VEHICLE_API.fullmatch(path)
        if m is None:
            return 404, b'{"error": {"message": "not found"}}'
        code, answer = self.forward("POST", path, body)
        if code != 200 or m[1] != "poll":
            return code, answer
        if self.raw_poll_answer:
            return 200, self.raw_poll_answer
        manifest = json.loads(body)["signed"]
        genuine = json.loads(answer)
        self.manifests.append(manifest)
        self.answers.append(genuine)
        return 200, json.dumps(self.poll(manifest, json.loads(answer))).encode()

    # -- what attacks commonly do

    def announce(self, version: int) -> None:
        """Tell the vehicle its director chain is at ``version`` (the rest of the answer
        genuine)."""

        def hook(_manifest: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
            return {**answer, "director": {"version": version}}

        self.poll = hook

    def serve(self, chain: dict[str, bytes], version: int | None = None) -> None:
        """Serve ``chain`` (file name → body) instead of the server's, and announce it."""
        self.files.update(chain)
        if version is None:
            version = max(int(n.split(".")[0]) for n in chain if n[0].isdigit())
        self.announce(version)

    def honest(self) -> None:
        """Stop attacking: forward everything unchanged."""
        self.poll, self.files, self.get, self.raw_poll_answer = keep, {}, None, b""


class _ProxyHandler(BaseHTTPRequestHandler):
    server: _ProxyServer

    def _answer(self, work: Callable[[], tuple[int, bytes]]) -> None:
        proxy = self.server.proxy
        try:
            code, answer = work()
        except Exception as e:  # shown by the test, never hidden
            proxy.errors.append(f"{type(e).__name__}: {e}")
            code, answer = 500, b'{"error": {"message": "proxy crashed"}}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(lambda: self.server.proxy.handle_post(self.path, body))

    def do_GET(self) -> None:
        self._answer(lambda: self.server.proxy.handle_get(self.path))

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, proxy: Proxy) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.proxy = proxy


def running_proxy(upstream: str) -> Iterator[Proxy]:
    """A :class:`Proxy` in front of ``upstream`` on a loopback port (for fixtures)."""
    proxy = Proxy(upstream)
    server = _ProxyServer(proxy)
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
    assert not proxy.errors, proxy.errors


# ----------------------------------------------------------------------------- stolen keys


def entry(
    targets: dict[str, TargetFile], vehicle_id: str, image: str, **changes: Any
) -> DirectorEntry:
    """What an honest director would say about image target ``image`` for the vehicle's
    primary ECU (the image repository's length, hash, counter and version), with ``changes``
    (:class:`DirectorEntry` fields)."""
    target = targets[image]
    info = BundleInfo.from_custom(target.custom, image)
    fields: dict[str, Any] = {
        "ecu_serial": serial(vehicle_id),
        "hardware_id": info.hardware_id if info else "ecu-a",
        "path": image,
        "length": target.length,
        "hashes": {"sha256": target.hashes["sha256"]},
        "release_counter": info.release_counter if info else 1,
        "version": info.version if info else "1.0",
        "campaign_id": None,
        "maintenance_windows": [],
    }
    fields.update(changes)
    return DirectorEntry(**fields)


@dataclass
class StolenDirectorKeys:
    """Signers for the director's online roles (the genuine keys, in the attacker's hands)."""

    signers: dict[str, Signer]

    @classmethod
    def load(cls, root_path: Path, keys: Path) -> StolenDirectorKeys:
        """The online keys the director root at ``root_path`` names, from key directory ``keys``."""
        root = Metadata[Root].from_bytes(root_path.read_bytes()).signed
        directory = KeyDirectory(keys)
        signers = {}
        for role in ("targets", "snapshot", "timestamp"):
            signer = directory.signer(root.keys[root.roles[role].keyids[0]])
            assert signer is not None, f"no {role} key in {keys}"
            signers[role] = signer
        return cls(signers)

    def chain(
        self,
        vehicle_id: str,
        targets: dict[str, TargetFile] | list[DirectorEntry],
        version: int,
        *,
        now: datetime | None = None,
        expires: dict[str, datetime] | None = None,
        signers: dict[str, Signer] | None = None,
        after_signing: Callable[[Metadata[Targets]], None] | None = None,
    ) -> dict[str, bytes]:
        """Version ``version`` of a director chain (targets, snapshot, timestamp) for
        ``vehicle_id``: file name → body as the server serves it. ``expires`` overrides a role's
        expiry, ``signers`` a role's signer; ``after_signing`` edits the signed targets."""
        now = (now or datetime.now(UTC)).replace(microsecond=0)
        valid = {
            "targets": now + timedelta(days=7),
            "snapshot": now + timedelta(days=7),
            "timestamp": now + timedelta(days=1),
            **(expires or {}),
        }
        sign = {**self.signers, **(signers or {})}
        listed = director_targets(targets) if isinstance(targets, list) else targets
        targets_md = Metadata(
            Targets(
                version=version,
                expires=valid["targets"],
                targets=listed,
                unrecognized_fields={VEHICLE_FIELD: vehicle_id},
            )
        )
        targets_md.sign(sign["targets"])
        if after_signing is not None:
            after_signing(targets_md)
        snapshot = self.snapshot(
            version, version, expires=valid["snapshot"], signer=sign["snapshot"]
        )
        timestamp = self.timestamp(
            version, snapshot, version, expires=valid["timestamp"], signer=sign["timestamp"]
        )
        return {
            "timestamp.json": timestamp,
            f"{version}.snapshot.json": snapshot,
            f"{version}.targets.json": targets_md.to_bytes(_COMPACT),
        }

    def snapshot(
        self,
        version: int,
        targets_version: int,
        *,
        expires: datetime | None = None,
        signer: Signer | None = None,
    ) -> bytes:
        """Director snapshot ``version`` listing targets ``targets_version``."""
        md = Metadata(
            Snapshot(
                version=version,
                expires=expires or datetime.now(UTC).replace(microsecond=0) + timedelta(days=7),
                meta={"targets.json": MetaFile(version=targets_version)},
            )
        )
        md.sign(signer or self.signers["snapshot"])
        return md.to_bytes(_COMPACT)

    def timestamp(
        self,
        version: int,
        snapshot: bytes,
        snapshot_version: int,
        *,
        expires: datetime | None = None,
        signer: Signer | None = None,
    ) -> bytes:
        """Director timestamp ``version`` pointing at ``snapshot`` (version
        ``snapshot_version``)."""
        md = Metadata(
            Timestamp(
                version=version,
                expires=expires or datetime.now(UTC).replace(microsecond=0) + timedelta(days=1),
                snapshot_meta=MetaFile.from_data(snapshot_version, snapshot, ["sha256"]),
            )
        )
        md.sign(signer or self.signers["timestamp"])
        return md.to_bytes(_COMPACT)

    def time(self, nonce: str, when: datetime, signer: Signer | None = None) -> dict[str, Any]:
        """A time attestation for ``nonce`` at ``when``, signed with the stolen timestamp key
        (or ``signer``)."""
        return sign_envelope(time_attestation(nonce, when), signer or self.signers["timestamp"])


def stolen_keys(published: Published) -> StolenDirectorKeys:
    return StolenDirectorKeys.load(published.director_root, published.keys)

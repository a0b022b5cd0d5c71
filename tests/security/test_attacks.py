"""Every verification refusal, end to end: a real server over loopback HTTP, the real published
repository, and ``overdrive vehicle run --once``.

Each attack is set up the way an attacker would: by altering what the vehicle downloads (the
bundle, the TUF metadata in the mirror it reads), or by answering its polls from a director the
attacker controls (:class:`FakeDirector`: it forwards every request to the real server, so the
vehicle stays registered and its event reports are stored, but it may replace the assignments).
Crafted assignments are signed with the genuine director key unless the attack is about the
signature, and differ from an honest assignment in exactly what the attack changes;
:func:`test_honest_assignment_from_the_fake_director_is_installed` proves that the harness alone
causes no refusal.

After every refusal: the CLI exits 3, slot B was never written, the vehicle is idle on slot A with
an untouched boot environment (and boots slot A), and the server stored one ``failed`` event whose
reason starts with the precise reason code.
"""

from __future__ import annotations

import copy
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

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from sqlalchemy import select
from tuf.api.metadata import Metadata, MetaFile, Root, TargetFile

from overdrive.client.config import VehicleConfig
from overdrive.envelope import sign_envelope
from overdrive.server.director import Director
from overdrive.server.models import Campaign, Event, Membership
from overdrive.keys import KeyDirectory
from overdrive.signing.repository import ImageRepository, to_bytes
from overdrive.storage import LocalStorage
from overdrive.tuf_layout import metadata_key
from tests.client.conftest import Car, LiveServer, provision
from tests.conftest import Cli, Result, mutate
from tests.live_server import run_once, start_campaign

PAST = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
DELTA_11 = "ecu-a/1.1/delta-from-1.0.bundle"
FULL_11 = "ecu-a/1.1/full.bundle"
FULL_10 = "ecu-a/1.0/full.bundle"
FULL_B10 = "ecu-b/1.0/full.bundle"


# ----------------------------------------------------------------------------- helpers


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def closed_window_policy() -> dict[str, Any]:
    """A policy whose only maintenance window is a minute twelve hours from now (local time)."""
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


def events(live: LiveServer, vehicle_id: str, kind: str | None = None) -> list[Event]:
    with live.ctx.session() as session:
        query = select(Event).where(Event.vehicle_id == vehicle_id)
        if kind is not None:
            query = query.where(Event.type == kind)
        rows = list(session.scalars(query))
        session.expunge_all()
    return rows


def point_at(car: Car, server_url: str) -> None:
    """Make the vehicle talk to another rollout server (e.g. a director the attacker runs)."""
    config = VehicleConfig.load(car.state_dir)
    replace(config, server_url=server_url).save(car.state_dir)


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
        "--repo-url", live.published.storage.as_uri(),
        "--factory-version", version,
        "--factory-release-counter", "1",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return car


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
    """The refusal contract; returns the reason the server stored."""
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


# ----------------------------------------------------------------------------- the fake director

Answer = Callable[[dict[str, Any], list[dict[str, Any]]], list[dict[str, Any]]]


def passthrough(_manifest: dict[str, Any], genuine: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return genuine


@dataclass
class FakeDirector:
    """A rollout server the attacker controls, in front of the real one.

    Every request is forwarded to the real server first (so manifests are checked and stored,
    events are verified and stored); a poll is then answered with ``answer(manifest, genuine)``
    instead of the genuine assignments. Records what it saw.
    """

    upstream: str
    answer: Answer = passthrough
    manifests: list[dict[str, Any]] = field(default_factory=list)
    genuine: list[list[dict[str, Any]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    url: str = ""

    def forward(self, path: str, body: bytes) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.upstream + path,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def handle(self, path: str, body: bytes) -> tuple[int, bytes]:
        m = re.fullmatch(r"/api/v1/vehicles/[^/]+/(poll|events|register)", path)
        if m is None:
            return 404, b'{"error": {"message": "not found"}}'
        code, answer = self.forward(path, body)
        if code != 200 or m[1] == "register":
            return code, answer
        signed = json.loads(body)["signed"]
        if m[1] == "events":
            self.events.extend(signed["events"])
            return code, answer
        genuine = json.loads(answer)["assignments"]
        self.manifests.append(signed)
        self.genuine.append(genuine)
        reply = {"assignments": self.answer(signed, genuine), "next_poll_seconds": 5}
        return 200, json.dumps(reply).encode()


class _DirectorHandler(BaseHTTPRequestHandler):
    server: _DirectorServer

    def do_POST(self) -> None:
        director = self.server.director
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            code, answer = director.handle(self.path, body)
        except Exception as e:  # shown by the test, never hidden
            director.errors.append(f"{type(e).__name__}: {e}")
            code, answer = 500, b'{"error": {"message": "fake director crashed"}}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _DirectorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, director: FakeDirector) -> None:
        super().__init__(("127.0.0.1", 0), _DirectorHandler)
        self.director = director


@pytest.fixture
def fake_director(live_server: LiveServer) -> Iterator[FakeDirector]:
    director = FakeDirector(live_server.url)
    server = _DirectorServer(director)
    director.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield director
    finally:
        server.shutdown()
        server.server_close()
        assert not director.errors, director.errors


FORGED_CAMPAIGN = "forged-campaign"


def enlist(live: LiveServer, vehicle_id: str) -> None:
    """Make ``vehicle_id`` a member of :data:`FORGED_CAMPAIGN` on the real server (a draft that
    never starts, with inactive memberships): the campaign the attacker's director claims its
    assignments are for. The server accepts a vehicle's events only about its own campaigns, so
    without this the vehicle's reports of refused assignments would be refused in turn."""
    with live.ctx.transaction() as session:
        if session.get(Campaign, FORGED_CAMPAIGN) is None:
            session.add(
                Campaign(
                    id=FORGED_CAMPAIGN,
                    name="forged",
                    state="draft",
                    policy_name="immediate",
                    policy={},
                    filter={},
                    created_at=datetime.now(UTC),
                    created_by="test",
                )
            )
            session.flush()
        for hw in ("ecu-a", "ecu-b"):
            if session.get(Membership, (FORGED_CAMPAIGN, vehicle_id, hw)) is None:
                session.add(
                    Membership(
                        campaign_id=FORGED_CAMPAIGN,
                        vehicle_id=vehicle_id,
                        hardware_id=hw,
                        bucket=0,
                        active=None,
                        status="pending",
                    )
                )


@dataclass
class Forge:
    """Builds assignments the way ``server.vehicles`` does, from the genuine signed targets;
    ``enlist`` makes the polling vehicle a member of the forged campaign on the real server."""

    director: Director
    targets: dict[str, TargetFile]
    enlist: Callable[[str], None] | None = None

    def payload(self, manifest: dict[str, Any], path: str, **changes: Any) -> dict[str, Any]:
        target = self.targets[path]
        info = target.custom.get("overdrive", {})
        now = datetime.now(UTC)
        payload = {
            "_type": "assignment",
            "vehicle_id": manifest["vehicle_id"],
            "nonce": manifest["nonce"],
            "issued": iso(now),
            "expires": iso(now + timedelta(hours=1)),
            "campaign_id": FORGED_CAMPAIGN,
            "hardware_id": info.get("hardware_id", "ecu-a"),
            "version": info.get("version", "1.1"),
            "release_counter": info.get("release_counter", 2),
            "target": {"path": path, "sha256": target.hashes["sha256"], "length": target.length},
            "kind": info.get("kind", "full"),
            "maintenance_windows": [],
        }
        payload.update(changes)
        if self.enlist is not None and payload["campaign_id"] == FORGED_CAMPAIGN:
            self.enlist(manifest["vehicle_id"])
        return payload

    def assignment(
        self, manifest: dict[str, Any], path: str, *, signer: Signer | None = None, **changes: Any
    ) -> dict[str, Any]:
        payload = self.payload(manifest, path, **changes)
        return sign_envelope(payload, signer or self.director.signer)


@pytest.fixture
def forge(live_server: LiveServer) -> Forge:
    published = live_server.published
    repo = ImageRepository.load(LocalStorage(published.storage), KeyDirectory(published.keys))
    return Forge(
        Director.from_file(published.director_key),
        repo.bundle_targets(),
        lambda vehicle_id: enlist(live_server, vehicle_id),
    )


# ----------------------------------------------------------------------------- 1. the bundle


def test_tampered_bundle_is_refused(cli: Cli, live_server: LiveServer, tmp_path: Path) -> None:
    """Bytes of the stored bundle swapped (same length): the download's sha256 is not the signed
    one, the bytes are discarded before any install, and the vehicle reports download_failed."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    start_campaign(live_server)
    [stored] = (live_server.published.storage / "targets" / "ecu-a" / "1.1").glob(
        "*.delta-from-1.0.bundle"
    )
    data = bytearray(stored.read_bytes())
    at = len(data) // 2
    data[at : at + 16] = bytes(b ^ 0x5A for b in data[at : at + 16])
    stored.write_bytes(bytes(data))

    for _ in range(2):  # a corrupted transfer is retried a couple of times before giving up
        retry = run_once(cli, car)
        assert retry.stdout.startswith("interrupted") and "will download again" in retry.stdout
        assert not car.slot_b.read_bytes()
    run = run_once(cli, car)
    reason = assert_stayed_put(
        cli, live_server, before, "car-1", run, "download_failed", action="failed"
    )
    assert "delta-from-1.0.bundle has sha256" in reason and "discarded the download" in reason
    with live_server.ctx.session() as session:
        membership = session.scalars(select(Membership).filter_by(vehicle_id="car-1")).one()
        assert membership.status == "failed"


# ----------------------------------------------------------------------------- 2. assignments


def test_honest_assignment_from_the_fake_director_is_installed(
    cli: Cli, live_server: LiveServer, fake_director: FakeDirector, forge: Forge, tmp_path: Path
) -> None:
    """Control: the harness itself refuses nothing. An honest assignment crafted and signed
    exactly like the attacks below (only without the attack) is installed and committed."""
    car = provision(cli, live_server, tmp_path, "car-1")
    point_at(car, fake_director.url)
    fake_director.answer = lambda manifest, _genuine: [forge.assignment(manifest, DELTA_11)]
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("updated: installed 1.1 into slot B"), run
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert "committed 1.1 in slot B" in boot.stdout
    assert car.slot_b.read_bytes() == live_server.published.images["ecu-a/1.1"]["path"].read_bytes()
    assert not events(live_server, "car-1", "failed")
    assert {e.type for e in events(live_server, "car-1")} >= {"installed", "committed"}


@dataclass(frozen=True)
class Attack:
    reason: str
    build: Callable[[Forge, dict[str, Any]], dict[str, Any]]
    image: str = "ecu-a/1.0"


def _fresh_key(forge: Forge, manifest: dict[str, Any]) -> dict[str, Any]:
    return forge.assignment(manifest, DELTA_11, signer=CryptoSigner.generate_ed25519())


def _altered_after_signing(forge: Forge, manifest: dict[str, Any]) -> dict[str, Any]:
    envelope = forge.assignment(manifest, DELTA_11)
    envelope["signed"]["target"] = forge.payload(manifest, FULL_11)["target"]
    return envelope


def _unsigned(forge: Forge, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"signed": forge.payload(manifest, DELTA_11), "signatures": []}


def _other_hash(forge: Forge, manifest: dict[str, Any]) -> dict[str, Any]:
    target = forge.payload(manifest, DELTA_11)["target"]
    target["sha256"] = forge.targets[FULL_11].hashes["sha256"]
    return forge.assignment(manifest, DELTA_11, target=target)


def _other_length(forge: Forge, manifest: dict[str, Any]) -> dict[str, Any]:
    target = forge.payload(manifest, DELTA_11)["target"]
    target["length"] += 1
    return forge.assignment(manifest, DELTA_11, target=target)


def _not_in_repository(forge: Forge, manifest: dict[str, Any]) -> dict[str, Any]:
    target = forge.payload(manifest, DELTA_11)["target"]
    target["path"] = "ecu-a/9.9/full.bundle"
    return forge.assignment(manifest, DELTA_11, target=target, version="9.9")


def _not_a_bundle(forge: Forge, manifest: dict[str, Any]) -> dict[str, Any]:
    keys = forge.targets["director/keys.json"]
    target = {"path": keys.path, "sha256": keys.hashes["sha256"], "length": keys.length}
    return forge.assignment(manifest, DELTA_11, target=target)


def _ecu_b_target(forge: Forge, manifest: dict[str, Any]) -> dict[str, Any]:
    return forge.assignment(manifest, FULL_B10, hardware_id="ecu-a")


ATTACKS = {
    "for-another-vehicle": Attack(
        "wrong_vehicle", lambda f, m: f.assignment(m, DELTA_11, vehicle_id="car-other")
    ),
    "expired": Attack(
        "expired_assignment",
        lambda f, m: f.assignment(
            m, DELTA_11, issued=iso(PAST - timedelta(hours=1)), expires=iso(PAST)
        ),
    ),
    "without-a-hardware-id": Attack(
        "wrong_hardware", lambda f, m: f.assignment(m, DELTA_11, hardware_id=None)
    ),
    "target-of-another-hardware-id": Attack("wrong_hardware", _ecu_b_target),
    "signed-by-an-unpublished-key": Attack("bad_signature", _fresh_key),
    "altered-after-signing": Attack("bad_signature", _altered_after_signing),
    "unsigned": Attack("bad_signature", _unsigned),
    "without-a-target": Attack(
        "malformed_assignment", lambda f, m: f.assignment(m, DELTA_11, target={"path": DELTA_11})
    ),
    "director-sha256-differs": Attack("director_mismatch", _other_hash),
    "director-length-differs": Attack("director_mismatch", _other_length),
    "target-not-in-the-repository": Attack("not_in_repository", _not_in_repository),
    "target-is-not-a-bundle": Attack("not_a_bundle", _not_a_bundle),
    # The payload's version and counter are the director's word; only TUF's count.
    "downgrade": Attack(
        "downgrade",
        lambda f, m: f.assignment(m, FULL_10, version="9.9", release_counter=99),
        image="ecu-a/1.1",
    ),
    "same-release-again": Attack(
        "downgrade", lambda f, m: f.assignment(m, FULL_11), image="ecu-a/1.1"
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_forged_assignment_is_refused(
    cli: Cli,
    live_server: LiveServer,
    fake_director: FakeDirector,
    forge: Forge,
    tmp_path: Path,
    name: str,
) -> None:
    attack = ATTACKS[name]
    car = provision(cli, live_server, tmp_path, "car-1", image=attack.image)
    before = Before.take(cli, car)
    point_at(car, fake_director.url)
    fake_director.answer = lambda manifest, _genuine: [attack.build(forge, manifest)]
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, attack.reason)
    assert len(fake_director.manifests) == 1
    if name == "downgrade":
        assert "release counter 1 of 1.0 is not above the installed 2" in reason


def test_assignment_for_another_hardware_id_is_ignored(
    cli: Cli, live_server: LiveServer, fake_director: FakeDirector, forge: Forge, tmp_path: Path
) -> None:
    """An assignment labelled for another hardware id is not for this ECU: it is skipped before
    verification (nothing installed, nothing reported), not refused."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, fake_director.url)
    fake_director.answer = lambda manifest, _genuine: [forge.assignment(manifest, FULL_B10)]
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("nothing"), run
    assert car.slot_b.read_bytes() == b""
    after = status(cli, car)
    assert after["state"] == "idle" and after["last_result"] is None
    assert after["boot"] == before.boot
    assert not events(live_server, "car-1")


def test_replayed_genuine_assignment_is_refused(
    cli: Cli, live_server: LiveServer, fake_director: FakeDirector, tmp_path: Path
) -> None:
    """The director's genuine assignment from one poll, withheld and replayed on the next: its
    signature, vehicle and expiry are fine, but it does not echo the new poll's nonce."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, fake_director.url)
    campaign = start_campaign(live_server)
    captured: list[dict[str, Any]] = []

    def withhold_then_replay(
        _manifest: dict[str, Any], genuine: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        if not captured:
            captured.extend(genuine)
            return []
        return captured

    fake_director.answer = withhold_then_replay
    first = run_once(cli, car)
    assert first.code == 0 and first.stdout.startswith("nothing"), first
    assert len(captured) == 1 and captured[0]["signed"]["campaign_id"] == campaign
    run = run_once(cli, car)
    assert_stayed_put(cli, live_server, before, "car-1", run, "replayed_assignment")
    old, new = (m["nonce"] for m in fake_director.manifests)
    assert captured[0]["signed"]["nonce"] == old != new


def test_forged_assignment_does_not_end_a_real_campaign(
    cli: Cli, live_server: LiveServer, fake_director: FakeDirector, forge: Forge, tmp_path: Path
) -> None:
    """One assignment signed by the attacker's key, naming the running campaign: the vehicle
    refuses it, and the genuine assignment of the next poll must still be installed."""
    car = provision(cli, live_server, tmp_path, "car-1")
    point_at(car, fake_director.url)
    campaign = start_campaign(live_server)
    attacker = CryptoSigner.generate_ed25519()

    def forge_once(manifest: dict[str, Any], genuine: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(fake_director.manifests) == 1:
            return [forge.assignment(manifest, DELTA_11, signer=attacker, campaign_id=campaign)]
        return genuine

    fake_director.answer = forge_once
    refused = run_once(cli, car)
    assert refused.code == 3 and refused.stdout.startswith("refused: bad_signature: "), refused
    # today: the membership is now final "failed" and counts against the campaign's failure rate
    again = run_once(cli, car)  # today: "nothing to do"
    assert again.stdout.startswith("updated: installed 1.1 into slot B"), again


def test_delta_for_another_source_image_is_refused(
    cli: Cli, live_server: LiveServer, fake_director: FakeDirector, forge: Forge, tmp_path: Path
) -> None:
    """Slot A holds a 1.0-like image that is not the released 1.0; a genuine delta from the
    released 1.0 is refused before download (the server itself would offer the full bundle)."""
    local = mutate(
        live_server.published.images["ecu-a/1.0"]["path"], tmp_path / "patched.img", seed=7
    )
    car = provision_with_slot_a(cli, live_server, tmp_path, "car-1", local, "1.0")
    before = Before.take(cli, car)
    point_at(car, fake_director.url)
    fake_director.answer = lambda manifest, _genuine: [forge.assignment(manifest, DELTA_11)]
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, "source_mismatch")
    assert "delta-from-1.0.bundle is for source image" in reason


def test_corrupted_source_slot_is_refused_at_install(
    cli: Cli, live_server: LiveServer, tmp_path: Path
) -> None:
    """The honest server offers the delta for the released 1.0, but slot A's bytes rotted since
    provisioning: the decoder re-hashes the source before writing and refuses."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    data = bytearray(before.slot_a)
    data[1000] ^= 0xFF
    car.slot_a.write_bytes(bytes(data))
    start_campaign(live_server)
    run = run_once(cli, car)
    reason = assert_stayed_put(
        cli,
        live_server,
        before,
        "car-1",
        run,
        "source_mismatch",
        action="failed",
        slot_a_unchanged=False,
        nothing_downloaded=False,  # the verified bundle stays cached
    )
    assert "the delta needs 1.0" in reason
    assert sorted(e.type for e in events(live_server, "car-1")) == sorted(
        ["downloading", "downloaded", "installing", "failed"]
    )


# ----------------------------------------------------------------------------- 3. TUF


@dataclass
class Mirror:
    """The copy of the image repository the vehicle reads; the attacker controls it. The
    server reads the genuine storage."""

    path: Path
    keys: Path

    def repo(self) -> ImageRepository:
        return ImageRepository.load(LocalStorage(self.path), KeyDirectory(self.keys))

    def put(self, key: str, data: bytes) -> None:
        (self.path / key).write_bytes(data)

    def get(self, key: str) -> bytes:
        return (self.path / key).read_bytes()


@pytest.fixture
def mirror(live_server: LiveServer, tmp_path: Path) -> Mirror:
    path = tmp_path / "mirror"
    shutil.copytree(live_server.published.storage, path)
    return Mirror(path, live_server.published.keys)


def sign_timestamp(
    repo: ImageRepository,
    mirror: Mirror,
    snapshot: MetaFile | None = None,
    expires: datetime | None = None,
) -> None:
    """Publish a new timestamp, legitimately signed with the timestamp key."""
    timestamp = repo.bump(repo.timestamp, "timestamp")
    if snapshot is not None:
        timestamp.signed.snapshot_meta = snapshot
    if expires is not None:
        timestamp.signed.expires = expires
    repo.sign(timestamp, "timestamp", repo.root.signed)
    mirror.put(metadata_key("timestamp"), to_bytes(timestamp))


def sign_snapshot(
    repo: ImageRepository,
    mirror: Mirror,
    targets: MetaFile | None = None,
    expires: datetime | None = None,
) -> None:
    """Publish a new snapshot (and a timestamp for it), signed with the online keys."""
    snapshot = repo.bump(repo.snapshot, "snapshot")
    if targets is not None:
        snapshot.signed.meta["targets.json"] = targets
    if expires is not None:
        snapshot.signed.expires = expires
    repo.sign(snapshot, "snapshot", repo.root.signed)
    data = to_bytes(snapshot)
    mirror.put(metadata_key("snapshot", snapshot.signed.version), data)
    sign_timestamp(repo, mirror, MetaFile.from_data(snapshot.signed.version, data, ["sha256"]))


def freeze_timestamp(mirror: Mirror) -> None:
    repo = mirror.repo()
    sign_timestamp(repo, mirror, expires=PAST)


def freeze_snapshot(mirror: Mirror) -> None:
    repo = mirror.repo()
    sign_snapshot(repo, mirror, expires=PAST)


def freeze_targets(mirror: Mirror) -> None:
    repo = mirror.repo()
    targets = repo.bump(repo.targets, "targets")
    targets.signed.expires = PAST
    repo.sign(targets, "targets", repo.root.signed)
    repo.publish(targets=targets)


def mix_and_match(mirror: Mirror) -> None:
    """The current snapshot with an older (genuinely signed) targets under the current name."""
    version = mirror.repo().targets.signed.version
    mirror.put(metadata_key("targets", version), mirror.get(metadata_key("targets", version - 1)))


def unsigned_timestamp(mirror: Mirror) -> None:
    """timestamp.json edited without the timestamp key (expiry pushed a year out)."""
    raw = json.loads(mirror.get(metadata_key("timestamp")))
    raw["signed"]["expires"] = iso(datetime.now(UTC) + timedelta(days=365))
    mirror.put(metadata_key("timestamp"), json.dumps(raw).encode())


def root_by_unknown_key(mirror: Mirror) -> None:
    """Root version 2 that hands every role to the attacker, signed only by the attacker."""
    repo = mirror.repo()
    attacker = CryptoSigner.generate_ed25519()
    root: Metadata[Root] = copy.deepcopy(repo.root)
    root.signed.version = 2
    for role in ("root", "targets", "snapshot", "timestamp"):
        for keyid in list(root.signed.roles[role].keyids):
            root.signed.revoke_key(keyid, role)
        root.signed.add_key(attacker.public_key, role)
    root.signatures.clear()
    root.sign(attacker)
    mirror.put(metadata_key("root", 2), to_bytes(root))


def online_keys_only(mirror: Mirror) -> None:
    """Stolen snapshot and timestamp keys: the attacker publishes targets that point 1.1's delta
    at their own bytes, signed with their own key (they have no targets key), and a snapshot and
    timestamp for it, signed with the genuine online keys."""
    repo = mirror.repo()
    attacker = CryptoSigner.generate_ed25519()
    targets = repo.bump(repo.targets, "targets")
    evil = b"malicious image" * 100
    genuine = targets.signed.targets[DELTA_11]
    forged = TargetFile.from_data(DELTA_11, evil, ["sha256"])
    forged.unrecognized_fields["custom"] = genuine.custom
    targets.signed.targets[DELTA_11] = forged
    targets.sign(attacker)
    data = to_bytes(targets)
    mirror.put(metadata_key("targets", targets.signed.version), data)
    sign_snapshot(
        repo, mirror, targets=MetaFile.from_data(targets.signed.version, data, ["sha256"])
    )


def root_below_threshold(mirror: Mirror) -> None:
    """Root version 2 adds the attacker's key and raises the threshold to 2, but carries only
    one of the two signatures the new root needs (the genuine old root key's)."""
    repo = mirror.repo()
    attacker = CryptoSigner.generate_ed25519()
    root: Metadata[Root] = copy.deepcopy(repo.root)
    root.signed.version = 2
    root.signed.add_key(attacker.public_key, "root")
    root.signed.roles["root"].threshold = 2
    root.signatures.clear()
    repo.sign(root, "root", repo.root.signed)  # the old root key: meets the old threshold only
    mirror.put(metadata_key("root", 2), to_bytes(root))


TUF_ATTACKS: dict[str, tuple[Callable[[Mirror], None], str]] = {
    "compromised-online-keys": (online_keys_only, "UnsignedMetadataError"),
    "root-rotation-below-threshold": (root_below_threshold, "UnsignedMetadataError"),
    "frozen-timestamp": (freeze_timestamp, "ExpiredMetadataError"),
    "frozen-snapshot": (freeze_snapshot, "ExpiredMetadataError"),
    "frozen-targets": (freeze_targets, "ExpiredMetadataError"),
    "mix-and-match": (mix_and_match, "LengthOrHashMismatchError"),
    "unsigned-timestamp": (unsigned_timestamp, "UnsignedMetadataError"),
    "root-by-an-unknown-key": (root_by_unknown_key, "UnsignedMetadataError"),
}


def provision_on_mirror(cli: Cli, live: LiveServer, tmp_path: Path, mirror: Mirror) -> Car:
    return provision(cli, live, tmp_path, "car-1", repo_url=mirror.path.as_uri())


@pytest.mark.parametrize("name", list(TUF_ATTACKS))
def test_tuf_attack_on_the_mirror_is_refused(
    cli: Cli, live_server: LiveServer, mirror: Mirror, tmp_path: Path, name: str
) -> None:
    """The honest server assigns 1.1; the mirror the vehicle reads serves attacked metadata."""
    attack, error = TUF_ATTACKS[name]
    car = provision_on_mirror(cli, live_server, tmp_path, mirror)
    before = Before.take(cli, car)
    start_campaign(live_server)
    attack(mirror)
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, "tuf_refresh_failed")
    assert f": {error}: " in reason, reason


def rollback_timestamp(mirror: Mirror, old: dict[str, Any]) -> None:
    mirror.put(metadata_key("timestamp"), old["timestamp"])


def rollback_snapshot(mirror: Mirror, old: dict[str, Any]) -> None:
    """A fresh timestamp (timestamp key) pointing at the previous snapshot."""
    sign_timestamp(mirror.repo(), mirror, snapshot=old["snapshot_meta"])


def rollback_targets(mirror: Mirror, old: dict[str, Any]) -> None:
    """A fresh snapshot and timestamp (online keys) listing the previous targets version."""
    sign_snapshot(mirror.repo(), mirror, targets=old["targets_meta"])


ROLLBACKS: dict[str, Callable[[Mirror, dict[str, Any]], None]] = {
    "timestamp": rollback_timestamp,
    "snapshot": rollback_snapshot,
    "targets": rollback_targets,
}


@pytest.mark.parametrize("role", list(ROLLBACKS))
def test_metadata_rollback_is_refused(
    cli: Cli, live_server: LiveServer, mirror: Mirror, tmp_path: Path, role: str
) -> None:
    """The vehicle has seen newer metadata; the mirror then serves an older version of
    ``role`` (every file genuinely signed)."""
    car = provision_on_mirror(cli, live_server, tmp_path, mirror)
    before = Before.take(cli, car)
    repo = mirror.repo()
    old = {
        "timestamp": mirror.get(metadata_key("timestamp")),
        "snapshot_meta": repo.timestamp.signed.snapshot_meta,
        "targets_meta": repo.snapshot.signed.meta["targets.json"],
    }
    newer = repo.bump(repo.targets, "targets")  # a legitimate new targets version
    repo.sign(newer, "targets", repo.root.signed)
    repo.publish(targets=newer)
    # The vehicle verifies the assignment (refreshing TUF) before it checks the window, so a
    # poll outside the window leaves the newer metadata trusted and changes nothing else.
    start_campaign(live_server, policy=closed_window_policy())
    waiting = run_once(cli, car)
    assert waiting.code == 0 and waiting.stdout.startswith("waiting: outside"), waiting
    trusted = car.state_dir / "tuf"
    for name, version in (
        ("timestamp", repo.timestamp.signed.version),
        ("snapshot", repo.snapshot.signed.version),
        ("targets", repo.targets.signed.version),
    ):
        assert json.loads((trusted / f"{name}.json").read_bytes())["signed"]["version"] == version

    ROLLBACKS[role](mirror, old)
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, "tuf_refresh_failed")
    assert ": BadVersionNumberError: " in reason, reason

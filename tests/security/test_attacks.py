"""Every verification refusal, end to end: a real server over loopback HTTP, the real published
repository, and ``overdrive vehicle run --once``.

Each attack is set up the way an attacker would: by altering what the vehicle downloads (the
bundle, the TUF metadata in the mirror it reads), or from a man in the middle between the vehicle
and the server (:class:`~tests.security.harness.Proxy`: it forwards every request to the real
server, so the vehicle stays registered and its event reports are stored, but it may rewrite the
poll answer and serve director metadata of its own). Forged director metadata is signed with the
director's genuine online keys (a compromised server: :class:`StolenDirectorKeys`) unless the
attack is about the signature, and differs from an honest chain in exactly what the attack
changes; :func:`test_honest_chain_signed_with_the_stolen_keys_is_installed` proves that the
harness alone causes no refusal.

After every refusal: the CLI exits 3, slot B was never written, the vehicle is idle on slot A with
an untouched boot environment (and boots slot A), and the server stored one ``failed`` event whose
reason starts with the precise reason code (:func:`~tests.security.harness.assert_stayed_put`).
The director-specific attacks (rollback, freeze, root rotation, time) are in
:mod:`tests.security.test_director_attacks`.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from sqlalchemy import select
from tuf.api.metadata import Metadata, MetaFile, Root, TargetFile, Targets

from overdrive.keys import KeyDirectory
from overdrive.server.models import Membership
from overdrive.signing.repository import ImageRepository, to_bytes
from overdrive.storage import LocalStorage
from overdrive.tuf_layout import metadata_key
from overdrive.uptane import director_targets
from tests.conftest import Cli, mutate
from tests.director_view import assignments, http_get
from tests.live_server import Car, LiveServer, provision, run_once, start_campaign
from tests.security.harness import (
    DELTA_11,
    FULL_10,
    FULL_11,
    FULL_B10,
    Before,
    Proxy,
    StolenDirectorKeys,
    assert_did_nothing,
    assert_stayed_put,
    closed_window_policy,
    entry,
    events,
    image_targets,
    iso,
    point_at,
    provision_with_slot_a,
    running_proxy,
    serial,
    stolen_keys,
)

PAST = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


@pytest.fixture
def proxy(live_server: LiveServer) -> Iterator[Proxy]:
    yield from running_proxy(live_server.url)


@pytest.fixture
def stolen(live_server: LiveServer) -> StolenDirectorKeys:
    return stolen_keys(live_server.published)


@pytest.fixture
def targets(live_server: LiveServer) -> dict[str, TargetFile]:
    return image_targets(live_server.published)


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


# ----------------------------------------------------------------------------- 2. the director

#: The version of the forged chains: the vehicles here have trusted none yet.
FORGED = 1


def test_honest_chain_signed_with_the_stolen_keys_is_installed(
    cli: Cli,
    live_server: LiveServer,
    proxy: Proxy,
    stolen: StolenDirectorKeys,
    targets: dict[str, TargetFile],
    tmp_path: Path,
) -> None:
    """Control: the harness itself refuses nothing. A director chain crafted and signed exactly
    like the attacks below (only without the attack) is installed and committed."""
    car = provision(cli, live_server, tmp_path, "car-1")
    point_at(car, proxy.url)
    proxy.serve(stolen.chain("car-1", [entry(targets, "car-1", DELTA_11)], FORGED))
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("updated: installed 1.1 into slot B"), run
    assert {"timestamp.json", "1.snapshot.json", "1.targets.json"} <= set(proxy.fetched)
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert "committed 1.1 in slot B" in boot.stdout
    assert car.slot_b.read_bytes() == live_server.published.images["ecu-a/1.1"]["path"].read_bytes()
    assert not events(live_server, "car-1", "failed")
    assert {e.type for e in events(live_server, "car-1")} >= {"installed", "committed"}


Build = Callable[[StolenDirectorKeys, dict[str, TargetFile], str], dict[str, bytes]]


@dataclass(frozen=True)
class Attack:
    reason: str
    build: Build
    image: str = "ecu-a/1.0"
    #: Part of the refusal's message.
    says: str = ""
    #: Something the attack needs in the image repository first (given the live server).
    setup: Callable[[Cli, LiveServer], None] | None = None


def _one(image: str, **changes: Any) -> Build:
    """A chain whose targets name image target ``image`` for the vehicle's ECU, with
    ``changes``."""
    return lambda s, t, vid: s.chain(vid, [entry(t, vid, image, **changes)], FORGED)


def _edited_custom(edit: Callable[[dict[str, Any], str], None]) -> Build:
    """A chain naming the 1.1 delta whose target's ``custom`` is edited (then signed)."""

    def build(s: StolenDirectorKeys, t: dict[str, TargetFile], vid: str) -> dict[str, bytes]:
        listed = director_targets([entry(t, vid, DELTA_11)])
        edit(listed[DELTA_11].custom, vid)
        return s.chain(vid, listed, FORGED)

    return build


def _no_hardware_id(custom: dict[str, Any], vid: str) -> None:
    custom["ecu_identifiers"] = {serial(vid): {}}


def _no_release_counter(custom: dict[str, Any], vid: str) -> None:
    del custom["release_counter"]


def _no_ecu(custom: dict[str, Any], vid: str) -> None:
    del custom["ecu_identifiers"]


def _attacker_signs(*roles: str) -> Build:
    def build(s: StolenDirectorKeys, t: dict[str, TargetFile], vid: str) -> dict[str, bytes]:
        attacker = CryptoSigner.generate_ed25519()
        return s.chain(
            vid, [entry(t, vid, DELTA_11)], FORGED, signers=dict.fromkeys(roles, attacker)
        )

    return build


def _altered_after_signing(
    s: StolenDirectorKeys, t: dict[str, TargetFile], vid: str
) -> dict[str, bytes]:
    def alter(md: Metadata[Targets]) -> None:
        md.signed.targets = director_targets([entry(t, vid, FULL_11)])

    return s.chain(vid, [entry(t, vid, DELTA_11)], FORGED, after_signing=alter)


def _unsigned(s: StolenDirectorKeys, t: dict[str, TargetFile], vid: str) -> dict[str, bytes]:
    return s.chain(
        vid, [entry(t, vid, DELTA_11)], FORGED, after_signing=lambda md: md.signatures.clear()
    )


def _expired(role: str) -> Build:
    def build(s: StolenDirectorKeys, t: dict[str, TargetFile], vid: str) -> dict[str, bytes]:
        return s.chain(vid, [entry(t, vid, DELTA_11)], FORGED, expires={role: PAST})

    return build


def _other_hash(s: StolenDirectorKeys, t: dict[str, TargetFile], vid: str) -> dict[str, bytes]:
    other = {"sha256": t[FULL_11].hashes["sha256"]}
    return s.chain(vid, [entry(t, vid, DELTA_11, hashes=other)], FORGED)


def _other_length(s: StolenDirectorKeys, t: dict[str, TargetFile], vid: str) -> dict[str, bytes]:
    return s.chain(vid, [entry(t, vid, DELTA_11, length=t[DELTA_11].length + 1)], FORGED)


def _extra_hash_differs(
    s: StolenDirectorKeys, t: dict[str, TargetFile], vid: str
) -> dict[str, bytes]:
    """The right sha256, and a sha512 the image repository does not have."""
    hashes = {"sha256": t[DELTA_11].hashes["sha256"], "sha512": "ab" * 64}
    return s.chain(vid, [entry(t, vid, DELTA_11, hashes=hashes)], FORGED)


def _twice(s: StolenDirectorKeys, t: dict[str, TargetFile], vid: str) -> dict[str, bytes]:
    return s.chain(vid, [entry(t, vid, DELTA_11), entry(t, vid, FULL_11)], FORGED)


NOTES = "notes/readme.txt"


def _publish_plain_target(_cli: Cli, live: LiveServer) -> None:
    """A target that is not an update bundle, signed into the image repository."""
    published = live.published
    repo = ImageRepository.load(LocalStorage(published.storage), KeyDirectory(published.keys))
    data = live.published.storage.parent / "readme.txt"
    data.write_bytes(b"release notes\n" * 100)
    target = TargetFile.from_file(NOTES, str(data), ["sha256"])
    new = repo.bump(repo.targets, "targets")
    new.signed.targets[NOTES] = target
    repo.sign(new, "targets", repo.root.signed)
    repo.publish(targets=new, target_files=[(NOTES, target, data)])


def _yank_11(cli: Cli, live: LiveServer) -> None:
    result = cli(
        "release", "yank", "ecu-a", "1.1", "--reason", "bricks the radio",
        "--storage", live.published.storage, "--keys", live.published.keys,
    )  # fmt: skip
    assert result.code == 0, result.stderr


ATTACKS = {
    # signatures and freshness: nothing of the chain is trusted
    "signed-by-an-unpublished-key": Attack(
        "director_refresh_failed",
        _attacker_signs("targets", "snapshot", "timestamp"),
        says="UnsignedMetadataError",
    ),
    "targets-by-an-unpublished-key": Attack(
        "director_refresh_failed", _attacker_signs("targets"), says="UnsignedMetadataError"
    ),
    "altered-after-signing": Attack(
        "director_refresh_failed", _altered_after_signing, says="UnsignedMetadataError"
    ),
    "unsigned": Attack("director_refresh_failed", _unsigned, says="UnsignedMetadataError"),
    "expired-timestamp": Attack(
        "director_refresh_failed", _expired("timestamp"), says="ExpiredMetadataError"
    ),
    "expired-snapshot": Attack(
        "director_refresh_failed", _expired("snapshot"), says="ExpiredMetadataError"
    ),
    "expired-targets": Attack(
        "director_refresh_failed", _expired("targets"), says="ExpiredMetadataError"
    ),
    # what the (validly signed) director targets say
    "for-another-vehicle": Attack(
        "wrong_vehicle",
        lambda s, t, vid: s.chain("car-other", [entry(t, vid, DELTA_11)], FORGED),
        says="signed for vehicle 'car-other', not 'car-1'",
    ),
    "without-an-ecu": Attack(
        "malformed_director_target", _edited_custom(_no_ecu), says="names no ECU"
    ),
    "without-a-hardware-id": Attack(
        "malformed_director_target", _edited_custom(_no_hardware_id), says="has no hardware_id"
    ),
    "without-a-release-counter": Attack(
        "malformed_director_target",
        _edited_custom(_no_release_counter),
        says="has no valid release_counter",
    ),
    "without-a-sha256": Attack(
        "malformed_director_target", _one(DELTA_11, hashes={"sha512": "ab" * 64}), says="sha256"
    ),
    "one-ecu-named-twice": Attack(
        "malformed_director_target", _twice, says="is named by two director targets"
    ),
    "target-of-another-hardware-id": Attack(
        "wrong_hardware", _one(FULL_B10), says="is for hardware id 'ecu-b', this ECU is 'ecu-a'"
    ),
    "another-hardware-ids-image-labelled-ours": Attack(
        "wrong_hardware",
        _one(FULL_B10, hardware_id="ecu-a"),
        says=f"target {FULL_B10} is for hardware id 'ecu-b', not 'ecu-a'",
    ),
    # against the image repository
    "target-not-in-the-repository": Attack(
        "not_in_repository",
        _one(DELTA_11, path="ecu-a/9.9/full.bundle", version="9.9", release_counter=9),
        says="ecu-a/9.9/full.bundle is not in the signed image repository",
    ),
    "target-is-not-a-bundle": Attack(
        "not_a_bundle", _one(NOTES), says="is not an update bundle", setup=_publish_plain_target
    ),
    "withdrawn-release": Attack(
        "withdrawn", _one(DELTA_11), says="bricks the radio", setup=_yank_11
    ),
    # mix-and-match: a genuine image path with another image's hash, or another length
    "director-sha256-differs": Attack(
        "director_mismatch", _other_hash, says="hash/length for ecu-a/1.1/delta-from-1.0.bundle"
    ),
    "director-length-differs": Attack("director_mismatch", _other_length, says="hash/length"),
    "director-adds-a-hash-that-differs": Attack(
        "director_mismatch", _extra_hash_differs, says="hash/length"
    ),
    # the release counter is the image repository's, never the director's
    "director-claims-a-higher-counter": Attack(
        "director_mismatch",
        _one(FULL_10, release_counter=99, version="9.9"),
        image="ecu-a/1.1",
        says="release counter 99 for ecu-a/1.0/full.bundle differs from the image repository's 1",
    ),
    "downgrade": Attack(
        "downgrade",
        _one(FULL_10),
        image="ecu-a/1.1",
        says="release counter 1 of 1.0 is not above the installed 2",
    ),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_forged_director_metadata_is_refused(
    cli: Cli,
    live_server: LiveServer,
    proxy: Proxy,
    stolen: StolenDirectorKeys,
    targets: dict[str, TargetFile],
    tmp_path: Path,
    name: str,
) -> None:
    attack = ATTACKS[name]
    if attack.setup is not None:
        attack.setup(cli, live_server)
        targets = image_targets(live_server.published)
    car = provision(cli, live_server, tmp_path, "car-1", image=attack.image)
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    proxy.serve(attack.build(stolen, targets, "car-1"), FORGED)
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, attack.reason)
    assert attack.says in reason, reason
    assert len(proxy.manifests) == 1 and "timestamp.json" in proxy.fetched


def test_director_target_for_another_ecu_is_ignored(
    cli: Cli,
    live_server: LiveServer,
    proxy: Proxy,
    stolen: StolenDirectorKeys,
    targets: dict[str, TargetFile],
    tmp_path: Path,
) -> None:
    """A director target naming another ECU (of another hardware id) is not for this one: it
    is skipped after verification (nothing installed, nothing reported), not refused."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    other = entry(targets, "car-1", FULL_B10, ecu_serial="car-1-secondary")
    proxy.serve(stolen.chain("car-1", [other], FORGED))
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("nothing"), run
    assert "1.targets.json" in proxy.fetched  # it did look
    assert_did_nothing(cli, live_server, before, "car-1")


def test_the_release_already_running_is_nothing_to_do(
    cli: Cli,
    live_server: LiveServer,
    proxy: Proxy,
    stolen: StolenDirectorKeys,
    targets: dict[str, TargetFile],
    tmp_path: Path,
) -> None:
    """The director names the image the vehicle already runs (1.1's full bundle, on 1.1):
    nothing is downloaded or written, and nothing is refused."""
    car = provision(cli, live_server, tmp_path, "car-1", image="ecu-a/1.1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    proxy.serve(stolen.chain("car-1", [entry(targets, "car-1", FULL_11)], FORGED))
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("nothing"), run
    assert_did_nothing(cli, live_server, before, "car-1")
    assert not (car.state_dir / "cache").exists() or not any((car.state_dir / "cache").iterdir())


def test_the_director_version_in_the_poll_answer_is_only_a_hint(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path
) -> None:
    """The poll answer is not signed: a director version the man in the middle makes up only
    makes the vehicle refresh its (genuine) director metadata, which assigns nothing."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    proxy.announce(42)
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("nothing"), run
    assert "timestamp.json" in proxy.fetched and "1.targets.json" in proxy.fetched
    assert_did_nothing(cli, live_server, before, "car-1")


def test_a_hidden_director_version_only_delays_the_update(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path
) -> None:
    """The man in the middle strips the director version from the answer (a freeze of the
    poll): the vehicle does nothing that poll, and installs once the answer gets through."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    start_campaign(live_server)
    proxy.poll = lambda _m, answer: {k: v for k, v in answer.items() if k != "director"}
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("nothing"), run
    assert proxy.answers[-1]["director"]["version"] >= 1 and not proxy.fetched
    assert_did_nothing(cli, live_server, before, "car-1")
    proxy.honest()
    again = run_once(cli, car)
    assert again.stdout.startswith("updated: installed 1.1 into slot B"), again


def test_another_vehicles_genuine_director_metadata_is_refused(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path
) -> None:
    """The man in the middle answers car-1's director requests with car-2's genuine metadata
    (signed by the director, for the same campaign): its signatures verify, but it is signed
    for car-2."""
    car = provision(cli, live_server, tmp_path, "car-1")
    other = provision(cli, live_server, tmp_path, "car-2")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    start_campaign(live_server)
    assert run_once(cli, other).stdout.startswith("updated: installed 1.1")
    root = live_server.published.director_root
    assert assignments(http_get(live_server.url), "car-2", root)[0]["vehicle_id"] == "car-2"

    def car_2s(vehicle_id: str, name: str) -> tuple[int, bytes]:
        assert vehicle_id == "car-1"
        return proxy.forward("GET", f"/api/v1/director/car-2/metadata/{name}", None)

    proxy.get = car_2s
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, "wrong_vehicle")
    assert "signed for vehicle 'car-2', not 'car-1'" in reason


def refuse_a_forged_chain_naming(
    cli: Cli, live: LiveServer, proxy: Proxy, car: Car, campaign: str
) -> None:
    """One poll whose director metadata the man in the middle signed with its own key (not a
    stolen one), naming the running campaign: refused, reported without naming the campaign."""
    attacker = CryptoSigner.generate_ed25519()
    forger = StolenDirectorKeys(dict.fromkeys(("targets", "snapshot", "timestamp"), attacker))
    targets = image_targets(live.published)
    listed = [entry(targets, "car-1", FULL_11, campaign_id=campaign)]
    proxy.files.update(forger.chain("car-1", listed, 1))
    before = Before.take(cli, car)
    refused = run_once(cli, car)
    reason = assert_stayed_put(cli, live, before, "car-1", refused, "director_refresh_failed")
    assert "UnsignedMetadataError" in reason
    proxy.honest()


def test_forged_director_metadata_does_not_end_a_real_campaign(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path
) -> None:
    """A refusal names a campaign only for director metadata that verified: the forged chain's
    refusal is reported without it, so the vehicle's membership is not failed (and does not
    count against the campaign's failure rate)."""
    car = provision(cli, live_server, tmp_path, "car-1")
    point_at(car, proxy.url)
    campaign = start_campaign(live_server)
    refuse_a_forged_chain_naming(cli, live_server, proxy, car, campaign)
    [failed] = events(live_server, "car-1", "failed")
    assert failed.campaign_id is None
    with live_server.ctx.session() as session:
        membership = session.scalars(select(Membership).filter_by(vehicle_id="car-1")).one()
        assert membership.status == "assigned"


def test_the_genuine_chain_is_installed_after_a_forged_one_was_refused(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path
) -> None:
    """After one forged poll, the genuine director chain of the next poll (the same version
    the forged answer named) is installed: the version the vehicle remembers as acted on is
    only ever one whose metadata verified."""
    car = provision(cli, live_server, tmp_path, "car-1")
    point_at(car, proxy.url)
    campaign = start_campaign(live_server)
    refuse_a_forged_chain_naming(cli, live_server, proxy, car, campaign)
    again = run_once(cli, car)
    assert again.stdout.startswith("updated: installed 1.1 into slot B"), again


def test_delta_for_another_source_image_is_refused(
    cli: Cli,
    live_server: LiveServer,
    proxy: Proxy,
    stolen: StolenDirectorKeys,
    targets: dict[str, TargetFile],
    tmp_path: Path,
) -> None:
    """Slot A holds a 1.0-like image that is not the released 1.0; a genuine delta from the
    released 1.0 is refused before download (the server itself would offer the full bundle)."""
    local = mutate(
        live_server.published.images["ecu-a/1.0"]["path"], tmp_path / "patched.img", seed=7
    )
    car = provision_with_slot_a(cli, live_server, tmp_path, "car-1", local, "1.0")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    proxy.serve(stolen.chain("car-1", [entry(targets, "car-1", DELTA_11)], FORGED))
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

"""Attacks on the director repository and on the time a vehicle trusts, end to end: a real
server over loopback HTTP (with the director of the published fixture, or one made here), the
real published image repository, and ``overdrive vehicle run --once`` behind a man in the middle
(:class:`~tests.security.harness.Proxy`) that rewrites poll answers and serves director metadata.

1. replayed and frozen director metadata: genuine older metadata served again after the vehicle
   saw newer (TUF rollback protection), genuine metadata kept past its expiry (expiry is judged
   at the attested time, not the vehicle's clock), and the same with stolen online keys;
2. the director's root: a rotation signed below the threshold is refused and v1 stays trusted;
   a proper rotation is followed (and it is how a vehicle recovers from stolen online keys);
3. time: an attestation that is not the director's timestamp key's, or not for this poll, is
   refused before anything else is looked at; an earlier time never moves trusted time back;
   a far-future time attested with a stolen timestamp key ends with that key's rotation.

Each refusal ends with :func:`~tests.security.harness.assert_stayed_put`: exit 3, the precise
reason in the vehicle's ``last_result`` and in the one ``failed`` event the server stored, and
nothing written to the inactive slot.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization.json import JSONSerializer

from overdrive.envelope import sign_envelope
from overdrive.keys import KeyDirectory
from overdrive.uptane import parse_iso, time_attestation
from tests.conftest import Cli, generate_keys
from tests.director_view import http_get
from tests.live_server import LiveServer, api, provision, run_once, serve_live, start_campaign
from tests.repo_fixtures import DIRECTOR_KEYS, Published
from tests.security.harness import (
    DELTA_11,
    Before,
    Proxy,
    StolenDirectorKeys,
    assert_stayed_put,
    closed_window_policy,
    director_root_version,
    entry,
    events,
    image_targets,
    point_at,
    running_proxy,
    status,
    stolen_keys,
    trusted_time,
)

METADATA = "/api/v1/director/{}/metadata/{}"


@pytest.fixture
def proxy(live_server: LiveServer) -> Iterator[Proxy]:
    yield from running_proxy(live_server.url)


def trusted_director_version(state_dir: Path, role: str) -> int:
    data = json.loads((state_dir / "director" / f"{role}.json").read_bytes())
    return int(data["signed"]["version"])


def own_director(
    cli: Cli, published: Published, tmp_path: Path, name: str, *init_options: str
) -> Published:
    """``published`` with a director root of its own (``director init`` with
    ``init_options``), whose keys are in their own directory (online keys with the usual
    names, plus whatever the test generated there first)."""
    keys = tmp_path / f"{name}-keys"
    generate_keys(cli, keys, *(k for k in DIRECTOR_KEYS if not (keys / k).exists()))
    storage = tmp_path / f"{name}-director"
    result = cli("director", "init", "--storage", storage, "--keys", keys, *init_options)
    assert result.code == 0, result.stderr
    return Published(published.storage, keys, storage, published.images)


def rotate(cli: Cli, live: LiveServer, role: str, *changes: str) -> str:
    """``overdrive director rotate`` on the live server's director, and the server's periodic
    reload of the root chain (made due now)."""
    published = live.published
    result = cli(
        "director", "rotate", "--storage", published.director_storage,
        "--keys", published.keys, "--role", role, *changes,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    director = live.ctx.require_director()
    director.refresh_s = 0  # what the server does every minute
    return result.stdout


# ----------------------------------------------------------------------------- 1. replay, freeze


Rollback = Callable[[Proxy, dict[str, bytes], StolenDirectorKeys], None]


def rollback_timestamp(proxy: Proxy, old: dict[str, bytes], _stolen: StolenDirectorKeys) -> None:
    """The genuine timestamp v1, served again (no key needed)."""
    proxy.files["timestamp.json"] = old["timestamp.json"]


def rollback_snapshot(proxy: Proxy, old: dict[str, bytes], stolen: StolenDirectorKeys) -> None:
    """A fresh timestamp (v3, the stolen timestamp key) pointing at the genuine snapshot v1."""
    proxy.files["timestamp.json"] = stolen.timestamp(3, old["1.snapshot.json"], 1)
    proxy.files["1.snapshot.json"] = old["1.snapshot.json"]


def rollback_targets(proxy: Proxy, old: dict[str, bytes], stolen: StolenDirectorKeys) -> None:
    """A fresh snapshot and timestamp (v3, the stolen online keys) listing the genuine
    targets v1."""
    snapshot = stolen.snapshot(3, 1)
    proxy.files["timestamp.json"] = stolen.timestamp(3, snapshot, 3)
    proxy.files["3.snapshot.json"] = snapshot
    proxy.files["1.targets.json"] = old["1.targets.json"]


ROLLBACKS: dict[str, Rollback] = {
    "timestamp": rollback_timestamp,
    "snapshot": rollback_snapshot,
    "targets": rollback_targets,
}


@pytest.mark.parametrize("role", list(ROLLBACKS))
def test_replayed_director_metadata_is_refused(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path, role: str
) -> None:
    """The vehicle has seen its director chain v2; the man in the middle then serves (some of)
    the genuine v1 again, every file genuinely signed."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    get = http_get(live_server.url)
    # Chain v1 (nothing assigned yet): anyone may fetch it, TUF metadata is public.
    old = {}
    for name in ("timestamp.json", "1.snapshot.json", "1.targets.json"):
        code, old[name] = get(METADATA.format("car-1", name))
        assert code == 200, (name, old[name])
    assert json.loads(old["timestamp.json"])["signed"]["version"] == 1
    # The campaign makes v2. Verified before the window is checked: the vehicle trusts v2 and
    # waits, changing nothing else.
    start_campaign(live_server, policy=closed_window_policy())
    waiting = run_once(cli, car)
    assert waiting.code == 0 and waiting.stdout.startswith("waiting: outside"), waiting
    for name in ("timestamp", "snapshot", "targets"):
        assert trusted_director_version(car.state_dir, name) == 2

    ROLLBACKS[role](proxy, old, stolen_keys(live_server.published))
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, "director_refresh_failed")
    assert ": BadVersionNumberError: " in reason, reason
    # (a fresh timestamp pointing at a newer snapshot is trusted as far as it goes)
    for name in ("snapshot", "targets"):
        assert trusted_director_version(car.state_dir, name) == 2


@pytest.mark.parametrize(
    ("role", "error"),
    [("targets", "BadVersionNumberError"), ("snapshot", "LengthOrHashMismatchError")],
)
def test_mixed_director_metadata_is_refused(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path, role: str, error: str
) -> None:
    """Mix and match: the current genuine timestamp (v2) with the genuine ``role`` v1 served
    under v2's name (no key needed): the timestamp pins the snapshot's hash, the snapshot the
    targets' version."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    code, older = http_get(live_server.url)(METADATA.format("car-1", f"1.{role}.json"))
    assert code == 200, older
    proxy.files[f"2.{role}.json"] = older
    start_campaign(live_server)  # chain v2
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, "director_refresh_failed")
    assert f": {error}: " in reason, reason
    assert f"2.{role}.json" in proxy.fetched


@pytest.fixture
def short_lived(cli: Cli, published: Published, tmp_path: Path) -> Iterator[LiveServer]:
    """A live server whose director signs timestamps valid for 2 seconds."""
    director = own_director(
        cli,
        published,
        tmp_path,
        "short",
        "--expires",
        "root=365d,targets=7d,snapshot=7d,timestamp=2s",
    )
    (tmp_path / "short-server").mkdir()
    with serve_live(director, tmp_path / "short-server") as live:
        yield live


@pytest.fixture
def proxy_short(short_lived: LiveServer) -> Iterator[Proxy]:
    yield from running_proxy(short_lived.url)


def test_a_frozen_director_timestamp_is_refused_once_it_expires(
    cli: Cli, short_lived: LiveServer, proxy_short: Proxy, tmp_path: Path
) -> None:
    """A genuine timestamp (valid for 2 s), kept by the man in the middle and served again
    past its expiry, with everything else genuine: the vehicle judges expiry at the director's
    attested time of this poll, so it refuses; once the man in the middle goes, it accepts the
    director's fresh timestamp."""
    live, proxy = short_lived, proxy_short
    car = provision(cli, live, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    served: dict[str, bytes] = {}

    def record(vehicle_id: str, name: str) -> tuple[int, bytes]:
        code, body = proxy.forward("GET", METADATA.format(vehicle_id, name), None)
        served[name] = body
        return code, body

    proxy.get = record
    start_campaign(live, policy=closed_window_policy())
    waiting = run_once(cli, car)
    assert waiting.code == 0 and waiting.stdout.startswith("waiting: outside"), waiting
    frozen = served["timestamp.json"]
    signed = json.loads(frozen)["signed"]
    expires = parse_iso(signed["expires"], "expires")
    trusted = trusted_time(car)
    assert trusted is not None and parse_iso(trusted, "trusted") < expires
    while datetime.now(UTC) < expires + timedelta(seconds=1.5):
        time.sleep(0.2)

    proxy.get = None
    proxy.files["timestamp.json"] = frozen
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live, before, "car-1", run, "director_refresh_failed")
    assert ": ExpiredMetadataError: " in reason, reason
    now = trusted_time(car)
    assert now is not None and parse_iso(now, "trusted") > expires

    # Once the man in the middle goes, the director's fresh timestamp is accepted.
    proxy.honest()
    again = run_once(cli, car)
    assert again.code == 0 and again.stdout.startswith("waiting: outside"), again
    assert trusted_director_version(car.state_dir, "timestamp") > signed["version"]


# ----------------------------------------------------------------------------- 2. the root


@pytest.fixture
def two_of_three(cli: Cli, published: Published, tmp_path: Path) -> Iterator[LiveServer]:
    """A live server whose director root needs 2 of the root keys r1, r2, r3 (all in the
    director's key directory, with a spare ``ts2`` for rotations)."""
    keys = tmp_path / "2of3-keys"
    generate_keys(cli, keys, "r1", "r2", "r3", "ts2", "sn2", "tg2")
    director = own_director(
        cli, published, tmp_path, "2of3", "--root-keys", "r1,r2,r3", "--root-threshold", "2"
    )
    (tmp_path / "2of3-server").mkdir()
    with serve_live(director, tmp_path / "2of3-server") as live:
        yield live


@pytest.fixture
def proxy_2of3(two_of_three: LiveServer) -> Iterator[Proxy]:
    yield from running_proxy(two_of_three.url)


def forged_root(live: LiveServer, *, attacker: CryptoSigner, also_a_root_key: bool) -> bytes:
    """Director root v2 handing the timestamp role to ``attacker`` (and, if
    ``also_a_root_key``, adding it as a root key), signed by r1 alone (and the attacker)."""
    published = live.published
    root: Metadata[Root] = Metadata[Root].from_bytes(published.director_root.read_bytes())
    new = copy.deepcopy(root)
    new.signed.version = 2
    for keyid in list(new.signed.roles["timestamp"].keyids):
        new.signed.revoke_key(keyid, "timestamp")
    new.signed.add_key(attacker.public_key, "timestamp")
    if also_a_root_key:
        new.signed.add_key(attacker.public_key, "root")
    new.signatures.clear()
    keys = KeyDirectory(published.keys)
    r1 = keys.signer(keys.resolve("r1"))
    assert r1 is not None
    new.sign(r1, append=True)
    if also_a_root_key:
        new.sign(attacker, append=True)
    verified = root.signed.get_root_verification_result(None, new.signed_bytes, new.signatures)
    assert not verified.verified  # one of the two signatures v1 requires
    return new.to_bytes(JSONSerializer(compact=True))


@pytest.mark.parametrize("time_by", ["genuine-time", "attackers-time"])
@pytest.mark.parametrize("signed_by", ["r1-alone", "r1-and-a-new-root-key"])
def test_a_director_root_below_the_threshold_is_refused(
    cli: Cli,
    two_of_three: LiveServer,
    proxy_2of3: Proxy,
    tmp_path: Path,
    signed_by: str,
    time_by: str,
) -> None:
    """One stolen root key (of 2 needed) signs a root v2 that hands the timestamp role to the
    attacker. Whether the vehicle meets it refreshing its director repository (the poll's time
    is genuine) or walking the root chain to check a time the attacker signed, it refuses,
    and keeps trusting root v1."""
    live, proxy = two_of_three, proxy_2of3
    car = provision(cli, live, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    attacker = CryptoSigner.generate_ed25519()
    proxy.files["2.root.json"] = forged_root(
        live, attacker=attacker, also_a_root_key=signed_by != "r1-alone"
    )
    if time_by == "attackers-time":
        forger = StolenDirectorKeys({"timestamp": attacker})
        proxy.poll = lambda manifest, answer: {
            **answer,
            "time": forger.time(manifest["nonce"], datetime.now(UTC)),
        }
    start_campaign(live)
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live, before, "car-1", run, "director_refresh_failed")
    assert "2.root.json" in proxy.fetched
    if time_by == "genuine-time":
        assert ": UnsignedMetadataError: " in reason, reason
    else:
        assert "director root does not verify" in reason, reason
        assert "timestamp.json" not in proxy.fetched  # refused before any director metadata
    assert director_root_version(car) == 1
    if time_by == "genuine-time":
        assert trusted_time(car) is not None  # the time was v1's key's: trusted
    else:
        assert trusted_time(car) is None


def test_a_proper_director_root_rotation_is_followed(
    cli: Cli, two_of_three: LiveServer, proxy_2of3: Proxy, tmp_path: Path
) -> None:
    """The director's timestamp key is rotated (``director rotate``, signed by the root
    threshold): the vehicle, which trusted root v1 and v1-signed metadata, checks the new key's
    time attestation by walking to root v2, follows the rotation, and still updates."""
    live, proxy = two_of_three, proxy_2of3
    car = provision(cli, live, tmp_path, "car-1")
    point_at(car, proxy.url)
    first = start_campaign(live, policy=closed_window_policy())
    waiting = run_once(cli, car)
    assert waiting.code == 0 and waiting.stdout.startswith("waiting: outside"), waiting
    assert director_root_version(car) == 1
    old_time_key = proxy.answers[-1]["time"]["signatures"][0]["keyid"]

    out = rotate(cli, live, "timestamp", "--add", "ts2", "--remove", "director-timestamp")
    assert "published root v2" in out, out
    api(live, "POST", f"/campaigns/{first}/abort")
    start_campaign(live)
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("updated: installed 1.1 into slot B"), run
    new_time_key = proxy.answers[-1]["time"]["signatures"][0]["keyid"]
    ts2 = KeyDirectory(live.published.keys).resolve("ts2").keyid
    assert old_time_key != new_time_key == ts2
    assert "2.root.json" in proxy.fetched
    assert director_root_version(car) == 2
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert "committed 1.1 in slot B" in boot.stdout


def test_rotating_stolen_online_keys_brings_a_fast_forwarded_vehicle_back(
    cli: Cli, two_of_three: LiveServer, proxy_2of3: Proxy, tmp_path: Path
) -> None:
    """With the stolen online keys the attacker had the vehicle trust director metadata v1000
    (naming an image the image repository does not have: refused). The genuine chain is then a
    "rollback" the vehicle refuses, until the director rotates the stolen keys away: metadata
    signed by revoked keys is no longer trusted, and the vehicle updates again."""
    live, proxy = two_of_three, proxy_2of3
    car = provision(cli, live, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    stolen = StolenDirectorKeys.load(live.published.director_root, live.published.keys)
    targets = image_targets(live.published)
    missing = entry(targets, "car-1", DELTA_11, path="ecu-a/9.9/full.bundle", version="9.9")
    proxy.serve(stolen.chain("car-1", [missing], 1000))
    run = run_once(cli, car)
    assert_stayed_put(cli, live, before, "car-1", run, "not_in_repository")
    assert trusted_director_version(car.state_dir, "timestamp") == 1000

    proxy.honest()
    start_campaign(live)
    stuck = run_once(cli, car)
    assert stuck.code == 3, stuck
    assert stuck.stdout.startswith("refused: director_refresh_failed: "), stuck
    assert "BadVersionNumberError" in stuck.stdout
    assert car.slot_b.read_bytes() == b""
    assert status(cli, car)["last_result"]["reason"] == "director_refresh_failed"
    assert len(events(live, "car-1", "failed")) == 2

    for role, new in (("timestamp", "ts2"), ("snapshot", "sn2"), ("targets", "tg2")):
        out = rotate(cli, live, role, "--add", new, "--remove", f"director-{role}")
        assert "published root v" in out, out
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("updated: installed 1.1 into slot B"), run
    assert director_root_version(car) == 4
    assert trusted_director_version(car.state_dir, "timestamp") < 1000


# ----------------------------------------------------------------------------- 3. time


def _strangers_key(manifest: dict[str, Any], answer: dict[str, Any], live: LiveServer) -> Any:
    forger = StolenDirectorKeys({"timestamp": CryptoSigner.generate_ed25519()})
    return forger.time(manifest["nonce"], datetime.now(UTC))


def _director_targets_key(
    manifest: dict[str, Any], answer: dict[str, Any], live: LiveServer
) -> Any:
    stolen = stolen_keys(live.published)
    return stolen.time(manifest["nonce"], datetime.now(UTC), stolen.signers["targets"])


def _altered(manifest: dict[str, Any], answer: dict[str, Any], live: LiveServer) -> Any:
    forged = copy.deepcopy(answer["time"])
    forged["signed"]["time"] = "2099-01-01T00:00:00Z"
    return forged


def _not_a_time(manifest: dict[str, Any], answer: dict[str, Any], live: LiveServer) -> Any:
    """Signed with the stolen timestamp key, echoing the nonce, but "tomorrow" is no time."""
    stolen = stolen_keys(live.published)
    payload = {**time_attestation(manifest["nonce"], datetime.now(UTC)), "time": "tomorrow"}
    return sign_envelope(payload, stolen.signers["timestamp"])


FORGED_TIMES: dict[str, tuple[Callable[..., Any], str]] = {
    "signed-by-a-strangers-key": (_strangers_key, "not signed by a trusted key"),
    "signed-by-the-director-targets-key": (_director_targets_key, "not signed by a trusted key"),
    "altered-after-signing": (_altered, "not signed by a trusted key"),
    "absent": (lambda m, a, live: None, "message must be a JSON object"),
    "not-a-time": (_not_a_time, "attested time must be an ISO-8601 time"),
}


@pytest.mark.parametrize("kind", list(FORGED_TIMES))
def test_a_forged_time_attestation_is_refused(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path, kind: str
) -> None:
    """The director assigns 1.1 (genuinely); the poll's time attestation is not the director
    timestamp key's (or not a time). The vehicle refuses before it looks at any director
    metadata, and trusts no time."""
    forge, says = FORGED_TIMES[kind]
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)

    def hook(manifest: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        forged = forge(manifest, answer, live_server)
        changed = {k: v for k, v in answer.items() if k != "time"}
        return changed if forged is None else {**changed, "time": forged}

    proxy.poll = hook
    start_campaign(live_server)
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, "bad_time")
    assert says in reason, reason
    assert "timestamp.json" not in proxy.fetched and "1.targets.json" not in proxy.fetched
    assert trusted_time(car) is None


@pytest.mark.parametrize("whose", ["an-earlier-poll", "another-vehicle"])
def test_a_time_attestation_for_another_nonce_is_refused(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path, whose: str
) -> None:
    """A genuine time attestation (the director's key, a fresh time) captured from an earlier
    poll of this vehicle, or from another vehicle's poll, replayed: it does not echo this
    poll's nonce."""
    car = provision(cli, live_server, tmp_path, "car-1")
    polled = provision(cli, live_server, tmp_path, "car-2") if whose == "another-vehicle" else car
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    point_at(polled, proxy.url)
    first = run_once(cli, polled)  # nothing assigned yet: the answer carries a time all the same
    assert first.code == 0 and first.stdout.startswith("nothing"), first
    captured = proxy.answers[-1]["time"]
    assert captured["signed"]["nonce"] == proxy.manifests[-1]["nonce"]

    proxy.poll = lambda _manifest, answer: {**answer, "time": captured}
    start_campaign(live_server)
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live_server, before, "car-1", run, "replayed_time")
    assert "does not echo this poll's nonce" in reason
    assert proxy.manifests[-1]["nonce"] != captured["signed"]["nonce"]
    assert "timestamp.json" not in proxy.fetched
    assert trusted_time(car) is None


def test_each_attested_time_replaces_the_last_even_an_earlier_one(
    cli: Cli, live_server: LiveServer, proxy: Proxy, tmp_path: Path
) -> None:
    """After a genuine poll the vehicle trusts time T. A later attestation of a time a month
    before T (the director's timestamp key: a server whose clock was set back, or the stolen
    key) verifies, and becomes the trusted time: the design prefers that a wrong time is undone
    by the next right one (a clock pushed ahead must never wedge the fleet) over a floor that
    would block a freeze which the same key can achieve anyway. It installs nothing."""
    car = provision(cli, live_server, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    start_campaign(live_server, policy=closed_window_policy())
    waiting = run_once(cli, car)
    assert waiting.code == 0 and waiting.stdout.startswith("waiting: outside"), waiting
    trusted = trusted_time(car)
    assert trusted is not None
    assert abs(parse_iso(trusted, "trusted") - datetime.now(UTC)) < timedelta(minutes=1)

    stolen = stolen_keys(live_server.published)
    earlier = parse_iso(trusted, "trusted") - timedelta(days=30)
    proxy.poll = lambda manifest, answer: {
        **answer,
        "time": stolen.time(manifest["nonce"], earlier),
    }
    again = run_once(cli, car)
    assert again.code == 0 and again.stdout.startswith("waiting: outside"), again
    assert trusted_time(car) == earlier.strftime("%Y-%m-%dT%H:%M:%SZ")
    after = status(cli, car)
    assert after["state"] == "idle" and after["last_result"] is None
    assert car.slot_b.read_bytes() == b"" and after["boot"] == before.boot


def test_a_far_future_time_from_a_stolen_key_is_undone_by_rotating_it(
    cli: Cli, two_of_three: LiveServer, proxy_2of3: Proxy, tmp_path: Path
) -> None:
    """With the stolen timestamp key the attacker attests a time ten years ahead: every
    director chain (and the director root) is expired at that time, so the vehicle refuses.
    Rotating the stolen key away must end the attack as it ends every other use of that key:
    the new key's genuine attestation is the time the vehicle then trusts."""
    live, proxy = two_of_three, proxy_2of3
    car = provision(cli, live, tmp_path, "car-1")
    before = Before.take(cli, car)
    point_at(car, proxy.url)
    stolen = StolenDirectorKeys.load(live.published.director_root, live.published.keys)
    future = datetime.now(UTC) + timedelta(days=3650)
    proxy.poll = lambda manifest, answer: {**answer, "time": stolen.time(manifest["nonce"], future)}
    start_campaign(live)
    run = run_once(cli, car)
    reason = assert_stayed_put(cli, live, before, "car-1", run, "director_refresh_failed")
    assert ": ExpiredMetadataError: " in reason, reason
    assert trusted_time(car) == future.strftime("%Y-%m-%dT%H:%M:%SZ")

    proxy.honest()
    out = rotate(cli, live, "timestamp", "--add", "ts2", "--remove", "director-timestamp")
    assert "published root v2" in out, out
    again = run_once(cli, car)
    assert again.code == 0 and again.stdout.startswith("updated: installed 1.1 into slot B"), again

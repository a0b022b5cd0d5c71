"""Secondary ECUs (issue 15): a real ``overdrive vehicle secondary serve`` process on a loopback
port, fed by a primary over the wire protocol, verifying every update itself.

* the whole set protocol for one ECU (verify → stage → install → trial → commit, each step
  repeatable), fully and partially verifying, a delta, a failed trial rolled back;
* a compromised primary cannot make it install what its own director targets do not list
  (another image, hash, hardware id, a lower release counter, tampered or replayed director
  metadata, a stale or forged time), nor forge its version report;
* a hostile peer (endless data, a slow sender, malformed or oversize lines) is cut off with a
  one-line error and the server keeps serving;
* a crash (kill -9, or a power cut at every durable operation) at any step resumes safely.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner, SSlibKey

from overdrive.bundle import image_sha256
from overdrive.client.bootenv import FileBootEnv
from overdrive.client.errors import Refused
from overdrive.client.secondary.config import SecondaryConfig
from overdrive.client.secondary.ecu import Secondary
from overdrive.client.secondary.state import SecondaryStore
from overdrive.client.secondary_link import (
    MAX_LINE,
    RepoFiles,
    SecondaryLink,
    SecondaryRefused,
    SecondaryUnreachable,
    decode_line,
)
from overdrive.envelope import EnvelopeError, verify_envelope
from overdrive.uptane import ECU_REPORT
from tests.client.secondary_harness import (
    DELTA_11,
    FULL_10,
    FULL_11,
    FULL_B10,
    SERIAL,
    Primary,
    SecondaryDir,
    Served,
    image_of,
    init_secondary,
    kill_9,
    serving,
)
from tests.client.test_power_cut import Cutter, PowerCut, power
from tests.conftest import Cli, generate_keys
from tests.repo_fixtures import Published
from tests.security.harness import StolenDirectorKeys

SET2 = "director-2"


@pytest.fixture
def primary(published: Published, tmp_path: Path) -> Primary:
    return Primary(published, tmp_path / "primary")


def refused(reason: str, call: Callable[[], Any]) -> SecondaryRefused:
    with pytest.raises(SecondaryRefused) as caught:
        call()
    assert caught.value.reason == reason, (caught.value.reason, str(caught.value))
    assert "\n" not in str(caught.value)
    return caught.value


# ----------------------------------------------------------------------------- the protocol


def test_a_full_update_through_every_step_each_repeatable(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    sec = init_secondary(cli, published, tmp_path)
    public = json.loads((sec.state_dir / "ecu.pub.json").read_bytes())
    assert sec.slot_a.read_bytes() == image_of(published, "ecu-a/1.0")
    with serving(sec.state_dir, tmp_path / "logs") as served:
        link = served.link()
        info = link.info()
        assert info == {
            "serial": SERIAL,
            "hardware_id": "ecu-a",
            "verification": "full",
            "public_key": public,
            "director_root_version": 1,
            "image_root_version": 1,
        }
        target = primary.targets[FULL_11]
        answer = primary.verify(link, [primary.entry(FULL_11, install_order=3)], 2)
        assert answer == {
            "status": "update",
            "path": FULL_11,
            "length": target.length,
            "sha256": target.hashes["sha256"],
            "release_counter": 2,
            "version": "1.1",
            "install_order": 3,
        }
        assert primary.verify(link, [primary.entry(FULL_11, install_order=3)], 2) == answer
        for _ in range(2):  # every step twice: a repeat after a lost answer does nothing
            link.stage(SET2, primary.bundle(FULL_11))
        assert link.status()["state"] == "staged" and sec.slot_b.read_bytes() == b""
        for _ in range(2):
            link.install(SET2)
        assert sec.slot_b.read_bytes() == image_of(published, "ecu-a/1.1")
        assert not (sec.state_dir / "staged.bundle").exists()
        for _ in range(2):
            assert link.trial(SET2) == {"healthy": True, "message": "no health check configured"}
        assert link.status()["running"] == "B" and link.status()["active"] == "A"
        for _ in range(2):
            link.commit(SET2)
        status = link.status()
        assert status["state"] == "committed" and status["active"] == "B"
        assert status["slots"]["B"]["version"] == "1.1" and status["committed_counter"] == 2
        assert FileBootEnv(sec.state_dir / "bootenv.json").load().describe() == (
            "B(good) A(good) booted=B"
        )

        # Its report: signed by its own key, counted, and what the primary alters fails.
        report = link.report("nonce-after")
        keys = {public["keyid"]: SSlibKey.from_dict(public["keyid"], dict(public))}
        payload = verify_envelope(report, keys, ECU_REPORT)
        assert payload["ecu_serial"] == SERIAL and payload["nonce"] == "nonce-after"
        assert payload["installed_image"]["version"] == "1.1"
        assert payload["counter"] == 3 and payload["attacks_detected"] == ""
        for path, value in ((("installed_image", "version"), "1.2"), (("counter",), 99)):
            altered = copy.deepcopy(report)
            place = altered["signed"]
            for name in path[:-1]:
                place = place[name]
            place[path[-1]] = value
            with pytest.raises(EnvelopeError):
                verify_envelope(altered, keys, ECU_REPORT)

        # What it runs already is nothing to do.
        assert primary.verify(link, [primary.entry(FULL_11)], 3) == {"status": "none"}
        assert primary.verify(link, [], 4) == {"status": "none"}
    shown = cli("vehicle", "secondary", "status", "--state-dir", sec.state_dir, "--json")
    assert shown.code == 0 and json.loads(shown.stdout)["slots"]["B"]["version"] == "1.1"
    human = cli("vehicle", "secondary", "status", "--state-dir", sec.state_dir)
    assert human.code == 0 and "slot B: 1.1" in human.stdout, human.stdout


def test_a_delta_whose_trial_is_unhealthy_rolls_back(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    check = "sh -c 'test \"$OVERDRIVE_VERSION\" != 1.1 || { echo broken $OVERDRIVE_SLOT; exit 1; }'"
    sec = init_secondary(cli, published, tmp_path, extra=("--health-check", check))
    with serving(sec.state_dir, tmp_path / "logs") as served:
        link = served.link()
        assert primary.verify(link, [primary.entry(DELTA_11)], 2)["path"] == DELTA_11
        link.stage(SET2, primary.bundle(DELTA_11))
        link.install(SET2)
        assert sec.slot_b.read_bytes() == image_of(published, "ecu-a/1.1")
        assert link.trial(SET2) == {"healthy": False, "message": "broken B (exit code 1)"}
        refused("unhealthy", lambda: link.commit(SET2))
        for _ in range(2):
            link.rollback(SET2)
        status = link.status()
        assert status["state"] == "rolled_back" and status["active"] == status["running"] == "A"
        assert status["slots"]["B"] is None and status["committed_counter"] == 1
        assert status["boot"] == "A(good) B(tries=0) booted=A"
        refused("rolled_back", lambda: link.install(SET2))
        link.rollback("director-77")  # a set it holds nothing of: nothing to do
        # the next set starts afresh from slot A
        assert primary.verify(link, [primary.entry(FULL_11)], 3)["status"] == "update"


def test_a_partially_verifying_secondary_updates_from_the_director_alone(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    sec = init_secondary(cli, published, tmp_path, verification="partial")
    assert not (sec.state_dir / "trusted_root.json").exists()
    with serving(sec.state_dir, tmp_path / "logs") as served:
        link = served.link()
        assert link.info()["verification"] == "partial"
        answer = primary.verify(link, [primary.entry(FULL_11)], 2, partial=True)
        assert answer["status"] == "update" and answer["release_counter"] == 2
        link.stage(SET2, primary.bundle(FULL_11))
        link.install(SET2)
        assert link.trial(SET2)["healthy"] is True
        link.commit(SET2)
        assert sec.slot_b.read_bytes() == image_of(published, "ecu-a/1.1")
        assert link.status()["slots"]["B"]["release_counter"] == 2
        assert primary.verify(link, [primary.entry(FULL_11)], 3, partial=True) == {"status": "none"}


@pytest.mark.parametrize("verification", ["full", "partial"])
def test_a_director_root_rotation_the_primary_forwards_is_followed(
    verification: str, cli: Cli, published: Published, tmp_path: Path
) -> None:
    """The director's timestamp key is rotated (root v2): the secondary, which trusts root v1,
    verifies the new key's time attestation and metadata through the root the primary
    forwards, and trusts v2 from then on."""
    sec = init_secondary(cli, published, tmp_path, verification=verification)
    keys, storage = tmp_path / "keys", tmp_path / "director"
    shutil.copytree(published.keys, keys)
    shutil.copytree(published.director_storage, storage)
    generate_keys(cli, keys, "ts2")
    rotated = cli(
        "director", "rotate", "--storage", storage, "--keys", keys,
        "--role", "timestamp", "--add", "ts2", "--remove", "director-timestamp",
    )  # fmt: skip
    assert rotated.code == 0 and "published root v2" in rotated.stdout, rotated
    root2 = storage / "metadata" / "2.root.json"
    primary = Primary(replace(published, keys=keys, director_storage=storage), tmp_path / "p")
    primary.stolen = StolenDirectorKeys.load(root2, keys)
    ecu = Secondary(sec.state_dir)
    ecu.report("rotated")
    chain = primary.chain([primary.entry(FULL_11)], 2)
    director = replace(primary.forged(chain, 2), roots=[root2.read_bytes()])
    image_repo = primary.image_repo() if verification == "full" else None
    time_v2 = primary.stolen.time("rotated", datetime.now(UTC))
    with pytest.raises(Refused) as caught:  # without the new root, the new key is nobody's
        ecu.verify(SET2, time_v2, replace(director, roots=[]), image_repo)
    assert caught.value.reason == "bad_time"
    verdict = ecu.verify(SET2, time_v2, director, image_repo)
    assert verdict["status"] == "update"
    assert ecu.info()["director_root_version"] == 2


# ----------------------------------------------------------------------------- attacks


def _nonce_of_another_report(primary: Primary, link: SecondaryLink) -> dict[str, Any]:
    stale = primary.time(link)
    link.report("a-later-report")
    return stale


#: name → (init options, what the compromised primary sends: (primary, link) → verify kwargs,
#: reason). Each must be refused with nothing written anywhere.
Attack = Callable[[Primary, SecondaryLink], dict[str, Any]]


def _honest(p: Primary, link: SecondaryLink, entries: list[Any], **kw: Any) -> dict[str, Any]:
    version = kw.pop("version", 2)
    return {
        "set_id": kw.pop("set_id", f"director-{version}"),
        "time": kw.pop("time", None) or p.time(link),
        "director": p.forged(p.chain(entries, version, **kw), version),
        "image_repo": p.image_repo(),
    }


def _tampered(md: Any) -> None:
    md.signed.targets[FULL_11].length += 1  # after signing: the signature no longer covers it


def _image_repo_tampered(p: Primary, link: SecondaryLink) -> dict[str, Any]:
    sent = _honest(p, link, [p.entry(FULL_11)])
    files: RepoFiles = sent["image_repo"]
    doc = json.loads(files.targets)
    doc["signed"]["targets"][FULL_11]["length"] += 1
    sent["image_repo"] = replace(files, targets=json.dumps(doc).encode())
    return sent


FULL_ATTACKS: dict[str, tuple[tuple[str, ...], Attack, str]] = {
    "image-not-in-the-repository": (
        (),
        lambda p, s: _honest(p, s, [p.entry(FULL_11, path="ecu-a/9.9/full.bundle")]),
        "not_in_repository",
    ),
    "another-hash": (
        (),
        lambda p, s: _honest(
            p, s, [p.entry(FULL_11, hashes={"sha256": p.targets[FULL_10].hashes["sha256"]})]
        ),
        "director_mismatch",
    ),
    "another-release-counter": (
        (),
        lambda p, s: _honest(p, s, [p.entry(FULL_11, release_counter=9)]),
        "director_mismatch",
    ),
    "another-hardware-id": ((), lambda p, s: _honest(p, s, [p.entry(FULL_B10)]), "wrong_hardware"),
    "another-hardware-image": (
        (),
        lambda p, s: _honest(p, s, [p.entry(FULL_B10, hardware_id="ecu-a")]),
        "wrong_hardware",
    ),
    "a-lower-release-counter": (
        ("--factory-release-counter", "5"),
        lambda p, s: _honest(p, s, [p.entry(FULL_11)]),
        "downgrade",
    ),
    "tampered-director-targets": (
        (),
        lambda p, s: _honest(p, s, [p.entry(FULL_11)], after_signing=_tampered),
        "director_refresh_failed",
    ),
    "director-targets-signed-by-another-key": (
        (),
        lambda p, s: _honest(
            p, s, [p.entry(FULL_11)], signers={"targets": CryptoSigner.generate_ed25519()}
        ),
        "director_refresh_failed",
    ),
    "an-expired-director-timestamp": (
        (),
        lambda p, s: _honest(
            p,
            s,
            [p.entry(FULL_11)],
            expires={"timestamp": datetime.now(UTC) - timedelta(hours=1)},
        ),
        "director_refresh_failed",
    ),
    "a-time-far-ahead-expires-everything": (
        (),
        lambda p, s: _honest(
            p, s, [p.entry(FULL_11)], time=p.time(s, when=datetime.now(UTC) + timedelta(days=30))
        ),
        "director_refresh_failed",
    ),
    "a-replayed-time-attestation": (
        (),
        lambda p, s: _honest(p, s, [p.entry(FULL_11)], time=_nonce_of_another_report(p, s)),
        "replayed_time",
    ),
    "a-time-not-signed-by-the-director": (
        (),
        lambda p, s: _honest(
            p, s, [p.entry(FULL_11)], time=p.time(s, signer=CryptoSigner.generate_ed25519())
        ),
        "bad_time",
    ),
    "another-vehicle": (
        ("--vehicle-id", "car-1"),
        lambda p, s: _honest(p, s, [p.entry(FULL_11)], vehicle_id="car-2"),
        "wrong_vehicle",
    ),
    "a-set-id-of-another-version": (
        (),
        lambda p, s: _honest(p, s, [p.entry(FULL_11)], set_id="director-7"),
        "wrong_set",
    ),
    "tampered-image-repository": ((), _image_repo_tampered, "tuf_refresh_failed"),
    "no-image-repository": (
        (),
        lambda p, s: {**_honest(p, s, [p.entry(FULL_11)]), "image_repo": None},
        "tuf_refresh_failed",
    ),
}


@pytest.mark.parametrize("name", sorted(FULL_ATTACKS))
def test_a_fully_verifying_secondary_refuses_what_its_director_did_not_sign(
    name: str, cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    options, attack, reason = FULL_ATTACKS[name]
    sec = init_secondary(cli, published, tmp_path, extra=options)
    with serving(sec.state_dir, tmp_path / "logs") as served:
        link = served.link()
        sent = attack(primary, link)
        set_id = sent.pop("set_id")
        refused(reason, lambda: link.verify(set_id, **sent))
        # nothing verified, so nothing can be staged or installed
        refused("unknown_set", lambda: link.stage(set_id, primary.bundle(FULL_11)))
        refused("unknown_set", lambda: link.install(set_id))
        assert sec.nothing_written()
        status = link.status()
        assert status["state"] == "idle" and status["active"] == "A", status
        assert status["last_result"]["reason"] == reason
        report = link.report("after-the-attack")["signed"]
        assert report["attacks_detected"].startswith(f"{reason}: "), report
        assert link.report("once-more")["signed"]["attacks_detected"] == ""


def test_replayed_director_metadata_and_another_vehicles_are_refused(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    """Chain v3 verified; the primary then replays the genuine, older chain v2, and a genuine
    chain of another vehicle (the first vehicle verified is the one it belongs to)."""
    sec = init_secondary(cli, published, tmp_path)
    with serving(sec.state_dir, tmp_path / "logs") as served:
        link = served.link()
        older = primary.chain([primary.entry(FULL_11)], 2)
        assert primary.verify(link, [primary.entry(FULL_11)], 3)["status"] == "update"
        link.rollback("director-3")
        refused(
            "director_refresh_failed",
            lambda: link.verify(
                SET2,
                time=primary.time(link),
                director=primary.forged(older, 2),
                image_repo=primary.image_repo(),
            ),
        )
        another = primary.chain([primary.entry(FULL_11)], 4, vehicle_id="car-2")
        refused(
            "wrong_vehicle",
            lambda: link.verify(
                "director-4",
                time=primary.time(link),
                director=primary.forged(another, 4),
                image_repo=primary.image_repo(),
            ),
        )
        assert sec.nothing_written()
        assert link.status()["vehicle_id"] == "car-1"
        # what it trusts is still its own vehicle's chain: v4 of car-1 is not a replay
        assert primary.verify(link, [primary.entry(FULL_11)], 4)["status"] == "update"


def test_a_bundle_that_is_not_the_verified_target_is_never_written(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    """The director lists 1.1's full bundle; the primary offers the delta (in the image
    repository, not in the director's targets for it) and then bytes with another hash."""
    sec = init_secondary(cli, published, tmp_path)
    with serving(sec.state_dir, tmp_path / "logs") as served:
        link = served.link()
        primary.verify(link, [primary.entry(FULL_11)], 2)
        refused("wrong_length", lambda: link.stage(SET2, primary.bundle(DELTA_11)))
        other = tmp_path / "other.bundle"
        data = bytearray(primary.bundle(FULL_11).read_bytes())
        data[-1] ^= 1
        other.write_bytes(bytes(data))
        refused("hash_mismatch", lambda: link.stage(SET2, other))
        refused("not_staged", lambda: link.install(SET2))
        assert sec.nothing_written()
        assert list(sec.state_dir.glob(".staged-*")) == []
        attacks = link.report("n")["signed"]["attacks_detected"]
        assert attacks.startswith("wrong_length: ") and "; hash_mismatch: " in attacks, attacks
        link.stage(SET2, primary.bundle(FULL_11))  # the genuine bundle is still welcome
        link.install(SET2)
        assert sec.slot_b.read_bytes() == image_of(published, "ecu-a/1.1")


def test_a_partially_verifying_secondary_refuses_what_the_director_did_not_sign(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    sec = init_secondary(
        cli, published, tmp_path, verification="partial", extra=("--vehicle-id", "car-1")
    )
    with serving(sec.state_dir, tmp_path / "logs") as served:
        link = served.link()

        def send(entries: list[Any], version: int, **kw: Any) -> Any:
            time = kw.pop("time", None) or primary.time(link)
            director = primary.forged(primary.chain(entries, version, **kw), version)
            return lambda: link.verify(
                f"director-{version}", time=time, director=director, image_repo=None
            )

        refused(
            "director_refresh_failed", send([primary.entry(FULL_11)], 2, after_signing=_tampered)
        )
        refused(
            "director_refresh_failed",
            send([primary.entry(FULL_11)], 2, signers={"targets": CryptoSigner.generate_ed25519()}),
        )
        refused(
            "director_refresh_failed",
            send(
                [primary.entry(FULL_11)],
                2,
                expires={"targets": datetime.now(UTC) - timedelta(minutes=1)},
            ),
        )
        refused("wrong_hardware", send([primary.entry(FULL_B10)], 2))
        refused("downgrade", send([primary.entry(FULL_11, release_counter=1)], 2))
        refused("wrong_vehicle", send([primary.entry(FULL_11)], 2, vehicle_id="car-2"))
        refused(
            "replayed_time",
            send([primary.entry(FULL_11)], 2, time=_nonce_of_another_report(primary, link)),
        )
        assert sec.nothing_written()
        # The director signs 1.1 with the *delta's* length and hash: the full bundle (of
        # another hash) and bytes of the right length but another hash are both refused.
        delta = primary.targets[DELTA_11]
        lying = primary.entry(FULL_11, length=delta.length, hashes=dict(delta.hashes))
        assert send([lying], 3)()["status"] == "update"
        refused("wrong_length", lambda: link.stage("director-3", primary.bundle(FULL_11)))
        garbage = tmp_path / "garbage.bundle"
        garbage.write_bytes(b"\0" * delta.length)
        refused("hash_mismatch", lambda: link.stage("director-3", garbage))
        assert sec.nothing_written()
        # and a replay of the older chain v2, once v3 verified
        link.rollback("director-3")
        refused("director_refresh_failed", send([primary.entry(FULL_11)], 2))


# ----------------------------------------------------------------------------- hostile peers


def _raw(served: Served) -> socket.socket:
    return socket.create_connection(served.host_port, timeout=5)


def _answer(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        block = sock.recv(65536)
        assert block, f"connection closed without an answer: {data!r}"
        data += block
    return decode_line(data, "answer")


def test_hostile_peers_get_one_line_and_the_server_keeps_serving(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    sec = init_secondary(cli, published, tmp_path)  # idle timeout: 1 s
    with serving(sec.state_dir, tmp_path / "logs") as served:
        link = served.link()
        idle = _raw(served)  # a connection that never says anything holds nobody up
        with _raw(served) as sock:
            sock.sendall(b"this is not json\n")
            assert _answer(sock)["reason"] == "protocol_error"
        with _raw(served) as sock:
            sock.sendall(b'{"op": "launch"}\n')
            assert _answer(sock)["reason"] == "unknown_op"
        with _raw(served) as sock:
            sock.sendall(b'{"op": "report", "nonce": ["x"]}\n{"op": "info"}\n')
            assert _answer(sock)["reason"] == "bad_request"
            assert _answer(sock)["serial"] == SERIAL  # several requests on one connection
        with _raw(served) as sock:
            with contextlib.suppress(OSError):  # it may stop reading before all of it is sent
                sock.sendall(b"[" * (MAX_LINE + 1))
            answer = _answer(sock)
            assert answer["reason"] == "protocol_error" and "longer than" in answer["error"]
        started = time.monotonic()
        assert _answer(idle)["reason"] == "timeout" and time.monotonic() - started < 3
        idle.close()
        crowd = [_raw(served) for _ in range(8)]  # max_connections: 8
        with _raw(served) as sock:
            assert _answer(sock)["reason"] == "busy"
        for sock in crowd:
            sock.close()

        primary.verify(link, [primary.entry(FULL_11)], 2)
        length = primary.targets[FULL_11].length
        stage = json.dumps({"op": "stage", "set_id": SET2, "length": length}).encode() + b"\n"

        # Endless data: it reads the verified length, no more, and answers meanwhile.
        with _raw(served) as sock:
            sock.sendall(stage)
            assert _answer(sock) == {"ok": True, "send": length}
            stop = threading.Event()
            sender = threading.Thread(target=_flood, args=(sock, stop), daemon=True)
            sender.start()
            answer = _answer(sock)  # the data never ends: an answer means it stopped reading
            stop.set()
            sender.join(5)
        assert answer["reason"] == "hash_mismatch", answer

        # A slow sender: cut off at the idle timeout.
        with _raw(served) as sock:
            sock.sendall(stage)
            assert _answer(sock)["send"] == length
            sock.sendall(primary.bundle(FULL_11).read_bytes()[:1000])
            started = time.monotonic()
            answer = _answer(sock)
            assert answer["reason"] == "slow_retrieval" and time.monotonic() - started < 3
        assert sec.nothing_written() and list(sec.state_dir.glob(".staged-*")) == []
        assert link.info()["serial"] == SERIAL
        link.stage(SET2, primary.bundle(FULL_11))
        assert link.status()["state"] == "staged"


def _flood(sock: socket.socket, stop: threading.Event) -> None:
    block = b"\xff" * 65536
    try:
        while not stop.is_set():
            sock.sendall(block)
    except OSError:
        pass


def test_cli_errors_are_one_line(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    sec = init_secondary(cli, published, tmp_path)
    twice = cli(
        "vehicle", "secondary", "init", "--state-dir", sec.state_dir, "--serial", SERIAL,
        "--hardware-id", "ecu-a", "--director-root", published.director_root,
        "--verification", "partial", "--slot-a", sec.slot_a, "--slot-b", sec.slot_b,
        "--factory-image", sec.slot_a, "--factory-version", "1.0",
    )  # fmt: skip
    assert twice.code == 1 and twice.error_lines == [
        f"error: {sec.state_dir} already holds a secondary ECU"
    ]
    missing = cli("vehicle", "secondary", "serve", "--state-dir", tmp_path / "nowhere")
    assert missing.code == 1 and len(missing.error_lines) == 1
    assert "secondary init" in missing.stderr
    with serving(sec.state_dir, tmp_path / "logs") as served:
        taken = cli("vehicle", "secondary", "serve", "--state-dir", sec.state_dir,
                    "--listen", served.address)  # fmt: skip
        assert taken.code == 1 and len(taken.error_lines) == 1, taken.stderr
        assert taken.error_lines[0].startswith(f"error: cannot listen on {served.address}")


def test_a_secondary_that_does_not_listen_is_unreachable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SecondaryUnreachable):
        SecondaryLink(f"127.0.0.1:{port}", timeout_s=2).info()


# ----------------------------------------------------------------------------- crashes


def test_kill_9_at_any_step_resumes(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path
) -> None:
    """Killed after staging, and again in the middle of a trial's health check: the restarted
    process installs what was staged, and rolls the unfinished trial back to slot A."""
    sec = init_secondary(cli, published, tmp_path, extra=("--health-check", "sleep 2"))
    logs = tmp_path / "logs"
    with serving(sec.state_dir, logs) as served:
        link = served.link()
        primary.verify(link, [primary.entry(FULL_11)], 2)
        link.stage(SET2, primary.bundle(FULL_11))
        kill_9(served)
    with serving(sec.state_dir, logs) as served:
        link = served.link()
        link.install(SET2)
        with pytest.raises(SecondaryUnreachable):
            served.link(timeout_s=0.3).trial(SET2)  # the health check is still running
        kill_9(served)
    assert sec.status()["stage"] == "trial" and sec.status()["trial"]["healthy"] is None
    with serving(sec.state_dir, logs) as served:
        link = served.link()
        refused("unhealthy", lambda: link.commit(SET2))  # no verdict: never committed
        link.rollback(SET2)
        status = link.status()
        assert status["active"] == status["running"] == "A" and status["slots"]["B"] is None
        assert status["boot"] == "A(good) B(tries=0) booted=A"


def _bootable_slots_hold_their_images(sec: SecondaryDir) -> None:
    """What a power cut must never break: every slot the bootloader may start holds the
    verified image recorded for it."""
    state = SecondaryStore(sec.state_dir).load()
    env = FileBootEnv(sec.state_dir / "bootenv.json").load()
    for slot in env.slots:
        if slot.good or slot.tries_left:
            image = state.slots[slot.name]
            assert image is not None, (slot, state)
            path = sec.slot_a if slot.name == "A" else sec.slot_b
            assert image_sha256(path, image.length) == image.sha256, slot
    assert env.good_slots() or env.slots[0].tries_left, env  # something to boot


def _copy(template: SecondaryDir, base: Path) -> SecondaryDir:
    shutil.copytree(template.state_dir.parent, base)
    sec = SecondaryDir(base / "state", base / "slot-a.img", base / "slot-b.img")
    config = SecondaryConfig.load(sec.state_dir)
    replace(config, slot_a=str(sec.slot_a), slot_b=str(sec.slot_b)).save(sec.state_dir)
    return sec


def _verified_template(
    cli: Cli, published: Published, primary: Primary, tmp_path: Path, *extra: str
) -> SecondaryDir:
    sec = init_secondary(cli, published, tmp_path, name="template", extra=extra)
    ecu = Secondary(sec.state_dir)
    nonce = "power-cut"
    ecu.report(nonce)
    verdict = ecu.verify(
        SET2,
        primary.stolen.time(nonce, datetime.now(UTC)),
        primary.honest([primary.entry(DELTA_11)], 2),
        primary.image_repo(),
    )
    assert verdict["status"] == "update"
    return sec


Steps = Callable[[Secondary, Path], None]


def _commit(ecu: Secondary, bundle: Path) -> None:
    ecu.stage_file(SET2, bundle)
    ecu.install(SET2)
    assert ecu.trial(SET2)["healthy"] is True
    ecu.commit(SET2)


def _unhealthy(ecu: Secondary, bundle: Path) -> None:
    ecu.stage_file(SET2, bundle)
    ecu.install(SET2)
    assert ecu.trial(SET2)["healthy"] is False
    ecu.rollback(SET2)


def _commit_then_rollback(ecu: Secondary, bundle: Path) -> None:
    _commit(ecu, bundle)
    ecu.rollback(SET2)


@pytest.mark.parametrize(
    ("steps", "check", "ends_on"),
    [(_commit, "", "B"), (_unhealthy, "false", "A"), (_commit_then_rollback, "", "A")],
    ids=["commit", "unhealthy-trial", "rollback-after-commit"],
)
def test_a_power_cut_at_every_durable_step_resumes(
    steps: Steps,
    check: str,
    ends_on: str,
    cli: Cli,
    published: Published,
    primary: Primary,
    tmp_path: Path,
) -> None:
    """Cut the power at the N-th durable operation of stage → install → trial → commit /
    rollback, for every N; restart (recover) and repeat every step: the bootable slots always
    hold their images, and the set always ends where it would have without the cut."""
    template = _verified_template(cli, published, primary, tmp_path, "--health-check", check)
    bundle = primary.bundle(DELTA_11)
    for cut in range(1000):
        sec = _copy(template, tmp_path / f"cut-{cut}")
        cutter = Cutter(cut)
        with power(cutter), contextlib.suppress(PowerCut):
            steps(Secondary(sec.state_dir), bundle)
        _bootable_slots_hold_their_images(sec)
        ecu = Secondary(sec.state_dir)  # the restart
        if ecu.state.stage == "rolled_back":
            ecu.rollback(SET2)  # the primary repeats the step it was at
        else:
            steps(ecu, bundle)  # the primary repeating every step
        _bootable_slots_hold_their_images(sec)
        state = SecondaryStore(sec.state_dir).load()
        env = FileBootEnv(sec.state_dir / "bootenv.json").load()
        assert env.slot(state.active).good and env.booted == state.active, (cut, env)
        assert state.active == ends_on, (cut, state)
        assert state.committed_counter == (2 if ends_on == "B" else 1), (cut, state)
        expected = "ecu-a/1.1" if ends_on == "B" else "ecu-a/1.0"
        active = sec.slot_a if ends_on == "A" else sec.slot_b
        assert active.read_bytes() == image_of(published, expected)
        assert FileBootEnv(sec.state_dir / "bootenv.json").load().booted == ends_on
        shutil.rmtree(sec.state_dir.parent)
        if not cutter.cut:
            assert cut > 10  # every durable operation was cut once
            return
    raise AssertionError("the steps never completed")

"""``overdrive director …``: the director's root, created, rotated and co-signed offline, and
the server's director following it (signatures checked with python-tuf's Metadata API)."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root, Timestamp

from overdrive.server.director import Director, DirectorKeyError
from tests.conftest import Cli, generate_keys

ONLINE = ("director-targets", "director-snapshot", "director-timestamp")


@pytest.fixture
def keys(cli: Cli, tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    generate_keys(cli, directory, "r1", "r2", "r3", *ONLINE)
    return directory


def init(cli: Cli, storage: Path, keys: Path) -> None:
    result = cli(
        "director", "init", "--storage", storage, "--keys", keys,
        "--root-keys", "r1,r2,r3", "--root-threshold", "2",
    )  # fmt: skip
    assert result.code == 0, result.stderr


def root(storage: Path, version: int) -> Root:
    return Metadata[Root].from_file(str(storage / "metadata" / f"{version}.root.json")).signed


def test_init_status_and_validity(cli: Cli, keys: Path, tmp_path: Path) -> None:
    storage = tmp_path / "director"
    init(cli, storage, keys)
    status = cli("director", "status", "--storage", storage, "--json")
    assert status.code == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["root_version"] == 1 and data["roles"]["root"]["threshold"] == 2
    assert len(data["roles"]["root"]["keyids"]) == 3
    # The per-vehicle validity the server signs with: short, kept in the root.
    assert data["roles"]["timestamp"]["validity_seconds"] == 86400
    assert data["roles"]["targets"]["validity_seconds"] == 7 * 86400
    text = cli("director", "status", "--storage", storage)
    assert text.code == 0 and text.stdout.startswith("director root v1 at ")
    # The server's director loads it and signs a chain with the online keys.
    director = Director.open(str(storage), keys)
    chain = director.sign_chain("car-1", {}, 1, datetime.now(UTC))
    timestamp = Metadata[Timestamp].from_bytes(chain.timestamp)
    root(storage, 1).verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)


def test_the_director_storage_is_never_the_image_repositorys_variable(
    cli: Cli, keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERDRIVE_STORAGE", str(tmp_path / "image-repository"))
    monkeypatch.delenv("OVERDRIVE_DIRECTOR_STORAGE", raising=False)
    result = cli("director", "init", "--keys", keys)
    assert result.code == 2 and "--storage" in result.stderr
    assert not (tmp_path / "image-repository").exists()
    monkeypatch.setenv("OVERDRIVE_DIRECTOR_STORAGE", str(tmp_path / "director"))
    assert cli("director", "init", "--keys", keys, "--root-keys", "r1").code == 0
    assert (tmp_path / "director" / "metadata" / "1.root.json").is_file()


def test_rotation_with_the_threshold_at_hand_and_the_server_follows(
    cli: Cli, keys: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "director"
    init(cli, storage, keys)
    director = Director.open(str(storage), keys)
    director.refresh_s = 0
    generate_keys(cli, keys, "timestamp-2")
    rotated = cli(
        "director", "rotate", "--storage", storage, "--keys", keys,
        "--role", "timestamp", "--add", "timestamp-2", "--remove", "director-timestamp",
    )  # fmt: skip
    assert rotated.code == 0, rotated.stderr
    new = root(storage, 2)
    old = root(storage, 1)
    md = Metadata[Root].from_file(str(storage / "metadata" / "2.root.json"))
    old.verify_delegate("root", md.signed_bytes, md.signatures)  # the old threshold signed it
    new.verify_delegate("root", md.signed_bytes, md.signatures)  # and the new one
    director.maybe_reload()
    assert director.root_version == 2
    chain = director.sign_chain("car-1", {}, 2, datetime.now(UTC))
    timestamp = Metadata[Timestamp].from_bytes(chain.timestamp)
    new.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
    assert director.root_bytes(1) == (storage / "metadata" / "1.root.json").read_bytes()


def test_rotation_below_threshold_is_staged_until_a_colleague_signs(
    cli: Cli, keys: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "director"
    init(cli, storage, keys)
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    for person, own in ((alice, "r1"), (bob, "r2")):
        person.mkdir()
        for name in (own, *ONLINE):
            shutil.copy(keys / name, person / name)
        for pub in keys.glob("*.pub"):
            shutil.copy(pub, person / pub.name)
    staged = cli(
        "director", "rotate", "--storage", storage, "--keys", alice,
        "--role", "root", "--threshold", "3",
    )  # fmt: skip
    assert staged.code == 0 and "staged root v2" in staged.stdout, staged
    assert not (storage / "metadata" / "2.root.json").exists()
    # The server keeps signing under root v1 meanwhile.
    assert Director.open(str(storage), alice).root_version == 1
    early = cli("director", "publish", "--storage", storage, "--keys", alice)
    assert early.code == 1 and len(early.error_lines) == 1, early
    # Threshold 3 needs all three root keys on the new root: Bob's, then r3's holder.
    assert cli("director", "sign", "--storage", storage, "--keys", bob).code == 0
    carol = tmp_path / "carol"
    carol.mkdir()
    shutil.copy(keys / "r3", carol / "r3")
    for pub in keys.glob("*.pub"):
        shutil.copy(pub, carol / pub.name)
    assert cli("director", "sign", "--storage", storage, "--keys", carol).code == 0
    published = cli("director", "publish", "--storage", storage, "--keys", alice)
    assert published.code == 0, published.stderr
    assert root(storage, 2).roles["root"].threshold == 3


def test_the_server_refuses_a_director_it_cannot_sign_for(
    cli: Cli, keys: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "director"
    init(cli, storage, keys)
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("director-targets", "director-snapshot"):
        shutil.copy(keys / name, partial / name)
    for pub in keys.glob("*.pub"):
        shutil.copy(pub, partial / pub.name)
    with pytest.raises(DirectorKeyError, match="holds 0 of the 1 director timestamp key"):
        Director.open(str(storage), partial)
    with pytest.raises(DirectorKeyError, match="no director root"):
        Director.open(str(tmp_path / "empty"), keys)
    run = cli(
        "server", "run", "--db", f"sqlite:///{tmp_path / 's.db'}",
        "--director-storage", tmp_path / "empty", "--director-keys", keys, "--port", "0",
    )  # fmt: skip
    assert run.code == 1 and len(run.error_lines) == 1 and "no director root" in run.stderr, run

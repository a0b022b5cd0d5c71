"""Changes that need several people's signatures, each signing from their own key directory.

Alice holds the root key, her targets key and the online snapshot and timestamp keys; Bob holds
only his own key. Raising the targets threshold to 2 (adding Bob), a release and a withdrawal are
each staged by Alice, signed by Bob with ``repo sign`` from his directory, and published by Alice;
the result verifies with ``repo verify`` and with a vehicle-side TUF refresh from the original
trusted root.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater

from overdrive.fetcher import LocalOrHttpFetcher
from overdrive.signing.verify import base_url
from overdrive.storage import LocalStorage
from tests.conftest import Cli, Result, generate_keys, make_image
from tests.signing.test_repository import assert_one_error, snapshot_of

REASON = "bricks the gateway on cold boot"


@dataclass
class Team:
    """A repository whose targets role is Alice's alone, and Bob, who is to join it."""

    storage: Path
    alice: Path
    bob: Path
    trusted_root: Path

    def as_alice(self) -> list[str]:
        return ["--storage", str(self.storage), "--keys", str(self.alice)]

    def as_bob(self) -> list[str]:
        return ["--storage", str(self.storage), "--keys", str(self.bob)]


@pytest.fixture
def team(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Team:
    monkeypatch.setenv("OVERDRIVE_CACHE_DIR", str(tmp_path / "cache"))
    alice, bob, storage = tmp_path / "alice", tmp_path / "bob", tmp_path / "repo"
    generate_keys(cli, alice, "root", "alice", "snapshot", "timestamp")
    generate_keys(cli, bob, "bob")
    shutil.copy(bob / "bob.pub", alice)  # Bob hands Alice his public key, nothing else
    init = cli(
        "repo",
        "init",
        "--storage",
        storage,
        "--keys",
        alice,
        "--targets-keys",
        "alice",
        "--targets-threshold",
        "1",
    )
    assert init.code == 0, init.stderr
    trusted = tmp_path / "vehicle-root.json"
    shutil.copy(storage / "metadata" / "1.root.json", trusted)
    return Team(storage, alice, bob, trusted)


def status(cli: Cli, team: Team) -> dict[str, Any]:
    result = cli("repo", "status", *team.as_alice(), "--json")
    assert result.code == 0, result.stderr
    return dict(json.loads(result.stdout))


def staged_line(result: Result, role: str, signed: int, threshold: int) -> None:
    """The one line that says a change was staged and how to complete it."""
    assert result.code == 0, (result.stdout, result.stderr)
    assert f"staged: {role} has {signed} of {threshold} signatures" in result.stdout.replace(
        " (new keys)", ""
    ), result.stdout
    assert (
        f"sign with `overdrive repo sign --role {role} --keys DIR`, then `overdrive repo publish`"
        in result.stdout
    ), result.stdout


def bob_signs(cli: Cli, team: Team, *role: str) -> Result:
    signed = cli("repo", "sign", *role, *team.as_bob())
    assert signed.code == 0, (signed.stdout, signed.stderr)
    assert "threshold met for every staged role" in signed.stdout, signed.stdout
    return signed


def alice_publishes(cli: Cli, team: Team) -> None:
    published = cli("repo", "publish", *team.as_alice())
    assert published.code == 0, published.stderr
    assert status(cli, team)["staged"] == []


def vehicle_refresh(team: Team, tmp_path: Path) -> Metadata[Targets]:
    """What a vehicle sees: python-tuf's ngclient, from the root it shipped with."""
    storage = LocalStorage(team.storage)
    meta, targets = tmp_path / "vehicle" / "metadata", tmp_path / "vehicle" / "targets"
    meta.mkdir(parents=True)
    targets.mkdir(parents=True)
    updater = Updater(
        str(meta),
        base_url(storage, "metadata/"),
        str(targets),
        base_url(storage, "targets/"),
        fetcher=LocalOrHttpFetcher(),
        bootstrap=team.trusted_root.read_bytes(),
    )
    updater.refresh()
    return Metadata.from_file(str(meta / "targets.json"))


def test_threshold_raise_release_and_yank_with_two_key_directories(
    team: Team, cli: Cli, tmp_path: Path
) -> None:
    # 1. Alice raises the targets threshold to 2 with Bob's key: root v2 and a targets v2 that
    #    must meet both the old threshold (Alice) and the new one (Alice and Bob) are staged.
    before = snapshot_of(team.storage)
    rotate = cli(
        "keys",
        "rotate",
        "--role",
        "targets",
        "--add",
        "bob",
        "--threshold",
        "2",
        *team.as_alice(),
    )
    staged_line(rotate, "targets", 1, 2)
    assert "staged root v2 and targets v2" in rotate.stdout
    assert "1 more needed from: bob (" in rotate.stdout
    now = status(cli, team)
    assert now["staged"] == ["root", "targets"]
    assert now["roles"]["targets"]["threshold"] == 1  # nothing published yet
    assert any("targets threshold 1 -> 2" in line for line in now["staged_changes"])
    assert any("bob" in line for line in now["staged_waiting"])
    published_before = {k: v for k, v in before.items() if not k.startswith("staging/")}
    assert {
        k: v for k, v in snapshot_of(team.storage).items() if not k.startswith("staging/")
    } == published_before
    not_yet = cli("repo", "publish", *team.as_alice())
    assert_one_error(not_yet, "targets (new keys): 1 of 2 signatures", "bob")

    signed = bob_signs(cli, team, "--role", "targets")
    assert "targets threshold 1 -> 2" in signed.stdout  # Bob sees what he signs
    alice_publishes(cli, team)
    now = status(cli, team)
    assert now["roles"]["root"]["version"] == 2
    assert now["roles"]["targets"]["threshold"] == 2

    # 2. A release needs both now: Alice stages it, Bob signs, Alice publishes.
    image = make_image(tmp_path / "v1.img", 40_000, seed=1)
    add = cli(
        "release",
        "add",
        image,
        "--hardware-id",
        "ecu",
        "--version",
        "1.0",
        *team.as_alice(),
        "--quiet",
        "--chunk-size",
        "64KiB",
    )
    staged_line(add, "targets", 1, 2)
    assert add.stdout.startswith("staged ecu 1.0 (release counter 1)")
    assert status(cli, team)["hardware"] == {}
    signed = bob_signs(cli, team)  # without --role: whatever is staged
    assert "+ecu/1.0/full.bundle" in signed.stdout
    alice_publishes(cli, team)
    assert [v["version"] for v in status(cli, team)["hardware"]["ecu"]] == ["1.0"]

    # 3. And so does a withdrawal.
    yank = cli("release", "yank", "ecu", "1.0", "--reason", REASON, *team.as_alice())
    staged_line(yank, "targets", 1, 2)
    assert status(cli, team)["hardware"]["ecu"][0]["yanked"] is None
    signed = bob_signs(cli, team, "--role", "targets")
    assert "withdraws ecu/1.0/full.bundle" in signed.stdout
    alice_publishes(cli, team)
    assert status(cli, team)["hardware"]["ecu"][0]["yanked"]["reason"] == REASON

    # The repository verifies as a vehicle sees it, from the root it shipped with (v1).
    verify = cli("repo", "verify", "--storage", team.storage, "--root", team.trusted_root)
    assert verify.code == 0, verify.stderr
    assert "PASS: root v2, timestamp v4, snapshot v4, targets v4; 1 target(s)" in verify.stdout
    targets = vehicle_refresh(team, tmp_path)
    assert targets.signed.version == 4
    assert targets.signed.targets["ecu/1.0/full.bundle"].custom["yanked"]["reason"] == REASON
    assert len(targets.signatures) == 2  # Alice's and Bob's


def test_root_threshold_raise_needs_the_old_and_the_new_root_keys(
    team: Team, cli: Cli, tmp_path: Path
) -> None:
    generate_keys(cli, team.bob, "bob-root")
    shutil.copy(team.bob / "bob-root.pub", team.alice)
    rotate = cli(
        "keys",
        "rotate",
        "--role",
        "root",
        "--add",
        "bob-root",
        "--threshold",
        "2",
        *team.as_alice(),
    )
    staged_line(rotate, "root", 1, 2)
    assert "root (new keys): 1 of 2 signatures" in rotate.stdout
    assert "root (old keys)" not in rotate.stdout  # Alice's root key met the old threshold
    bob_signs(cli, team, "--role", "root")
    alice_publishes(cli, team)
    assert status(cli, team)["roles"]["root"]["threshold"] == 2
    verify = cli("repo", "verify", "--storage", team.storage, "--root", team.trusted_root)
    assert verify.code == 0 and "root v2" in verify.stdout, verify.stderr
    assert vehicle_refresh(team, tmp_path).signed.version == 1  # targets untouched


def test_replacing_the_targets_key_needs_its_old_holder_too(
    team: Team, cli: Cli, tmp_path: Path
) -> None:
    """Swap Alice's targets key for Bob's: the new targets meets the old threshold (Alice) and
    the new one (Bob), so both sign; the swap then works without Alice's targets key."""
    rotate = cli(
        "keys", "rotate", "--role", "targets", "--add", "bob", "--remove", "alice", *team.as_alice()
    )
    staged_line(rotate, "targets", 0, 1)
    assert "waiting for targets (new keys): 0 of 1 signatures" in rotate.stdout
    assert "targets (old keys)" not in rotate.stdout
    bob_signs(cli, team)
    alice_publishes(cli, team)
    (team.alice / "alice").unlink()  # the old key is no longer needed for anything
    image = make_image(tmp_path / "img", 20_000)
    args = ["--hardware-id", "ecu", "--version", "2", "--quiet"]
    staged = cli("release", "add", image, *args, *team.as_alice(), "--stage-only")
    assert staged.code == 0 and "staged: targets has 0 of 1 signatures" in staged.stdout
    bob_signs(cli, team)
    alice_publishes(cli, team)
    assert vehicle_refresh(team, tmp_path).signed.targets["ecu/2/full.bundle"].length > 0


def test_staging_with_none_of_the_keys_is_refused_unless_asked_for(
    team: Team, cli: Cli, tmp_path: Path
) -> None:
    """Holding none of the keys is more likely the wrong --keys than a change for others."""
    image = make_image(tmp_path / "img", 10_000)
    args = ["--hardware-id", "ecu", "--version", "1", "--quiet"]
    before = snapshot_of(team.storage)
    assert_one_error(
        cli("release", "add", image, *args, *team.as_bob()),
        "targets needs 1 signature(s)",
        "holds 0 of its keys",
        "--stage-only",
    )
    assert_one_error(
        cli("keys", "rotate", "--role", "timestamp", "--threshold", "1", *team.as_bob()),
        "none of the keys in",
        "--stage-only",
    )
    assert snapshot_of(team.storage) == before
    staged = cli("release", "add", image, *args, *team.as_bob(), "--stage-only")
    assert staged.code == 0 and "staged: targets has 0 of 1 signatures" in staged.stdout
    signed = cli("repo", "sign", *team.as_alice())
    assert signed.code == 0 and "threshold met" in signed.stdout, signed.stderr
    alice_publishes(cli, team)


def test_stage_only_with_every_key_at_hand(team: Team, cli: Cli) -> None:
    staged = cli("keys", "rotate", "--role", "snapshot", "--threshold", "1", *team.as_alice())
    assert staged.code == 0 and "published root v2" in staged.stdout
    rotate = cli(
        "keys",
        "rotate",
        "--role",
        "timestamp",
        "--threshold",
        "1",
        *team.as_alice(),
        "--stage-only",
    )
    assert rotate.code == 0, rotate.stderr
    assert "staged: every threshold is met; publish with `overdrive repo publish`" in rotate.stdout
    assert "every threshold is met" in cli("repo", "status", *team.as_alice()).stdout
    alice_publishes(cli, team)


def test_repo_sign_errors_are_one_line(team: Team, cli: Cli, tmp_path: Path) -> None:
    assert_one_error(cli("repo", "sign", *team.as_bob()), "nothing is staged")
    rotate = cli(
        "keys", "rotate", "--role", "targets", "--add", "bob", "--threshold", "2", *team.as_alice()
    )
    assert rotate.code == 0, rotate.stderr
    assert_one_error(
        cli("keys", "rotate", "--role", "targets", "--threshold", "1", *team.as_alice()),
        "already staged (root, targets)",
        "publish or discard",
    )
    outsider = tmp_path / "outsider"
    generate_keys(cli, outsider, "mallory")
    assert_one_error(
        cli("repo", "sign", "--storage", team.storage, "--keys", outsider),
        "none of the keys in",
        "can sign the staged root or targets",
        "1 more needed from",
    )
    assert cli("repo", "discard", "--storage", team.storage).code == 0
    image = make_image(tmp_path / "img", 10_000)
    args = ["--hardware-id", "ecu", "--version", "1", "--quiet", "--stage-only"]
    assert cli("release", "add", image, *args, *team.as_alice()).code == 0
    assert_one_error(
        cli("repo", "sign", "--role", "root", *team.as_bob()),
        "no staged root metadata to sign (staged: targets)",
    )
    # A publish that overtakes the staged change makes it stale: signing it is refused.
    staged_targets = (team.storage / "staging" / "targets.json").read_bytes()
    assert cli("repo", "publish", *team.as_alice()).code == 0
    (team.storage / "staging").mkdir(exist_ok=True)
    (team.storage / "staging" / "targets.json").write_bytes(staged_targets)
    assert_one_error(cli("repo", "sign", *team.as_alice()), "staged targets v2 is stale")

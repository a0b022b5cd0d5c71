"""The TUF image repository end to end through the CLI, on a local directory."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from overdrive.storage import LocalStorage
from tests.conftest import Cli, Workspace, generate_keys, make_image, mutate


def snapshot_of(storage_dir: Path) -> dict[str, bytes]:
    """Every stored object, to prove a failed command changed nothing."""
    storage = LocalStorage(storage_dir)
    return {key: storage.get_bytes(key) for key in storage.list()}


def trusted_root(ws: Workspace) -> Path:
    return ws.storage / "metadata" / "1.root.json"


def assert_one_error(result: object, *needles: str) -> None:
    assert result.code == 1, (result.stdout, result.stderr)  # type: ignore[attr-defined]
    lines = result.error_lines  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], lines[0]


def add(
    cli: Cli, ws: Workspace, image: Path, version: str, *extra: str, hw: str = "ecu-a"
) -> object:
    return cli(
        "release",
        "add",
        image,
        "--hardware-id",
        hw,
        "--version",
        version,
        *ws.repo_args,
        "--chunk-size",
        "64KiB",
        "--quiet",
        *extra,
    )


def test_init_status_verify(repo: Workspace, cli: Cli) -> None:
    status = cli("repo", "status", *repo.repo_args, "--json")
    assert status.code == 0, status.stderr
    data = json.loads(status.stdout)
    assert {r: v["version"] for r, v in data["roles"].items()} == {
        "root": 1,
        "targets": 1,
        "snapshot": 1,
        "timestamp": 1,
    }
    assert data["roles"]["root"]["keys"][0]["label"].startswith("root (")
    assert data["hardware"] == {}
    verify = cli("repo", "verify", "--storage", repo.storage, "--root", trusted_root(repo))
    assert verify.code == 0, verify.stderr
    assert verify.stdout.startswith("PASS")


def test_init_refuses_existing_repository_unless_forced(repo: Workspace, cli: Cli) -> None:
    before = snapshot_of(repo.storage)
    assert_one_error(cli("repo", "init", *repo.repo_args), "already holds a repository", "--force")
    assert snapshot_of(repo.storage) == before
    forced = cli("repo", "init", *repo.repo_args, "--force", "--expires", "timestamp=2d")
    assert forced.code == 0, forced.stderr
    assert snapshot_of(repo.storage) != before


def test_releases_counters_deltas_and_verify(repo: Workspace, cli: Cli, tmp_path: Path) -> None:
    v1 = make_image(tmp_path / "v1.img", 300_000, seed=1)
    v2 = mutate(v1, tmp_path / "v2.img", seed=2)
    v3 = mutate(v2, tmp_path / "v3.img", seed=3)
    assert add(cli, repo, v1, "1.0").code == 0
    r2 = add(cli, repo, v2, "1.1", "--delta-from", "1.0")
    assert r2.code == 0, r2.stderr
    assert "release counter 2" in r2.stdout and "delta" in r2.stdout
    r3 = add(cli, repo, v3, "1.2", "--delta-from-recent", "2")
    assert r3.code == 0, r3.stderr
    assert add(cli, repo, v1, "0.9", hw="ecu-b").code == 0

    data = json.loads(cli("repo", "status", *repo.repo_args, "--json").stdout)
    ecu_a = {v["version"]: v for v in data["hardware"]["ecu-a"]}
    assert [ecu_a[v]["release_counter"] for v in ("1.0", "1.1", "1.2")] == [1, 2, 3]
    assert data["hardware"]["ecu-b"][0]["release_counter"] == 1
    kinds = sorted((b["kind"], b["source_version"]) for b in ecu_a["1.2"]["bundles"])
    assert kinds == [("delta", "1.0"), ("delta", "1.1"), ("full", None)]
    delta = next(b for b in ecu_a["1.1"]["bundles"] if b["kind"] == "delta")
    full = next(b for b in ecu_a["1.1"]["bundles"] if b["kind"] == "full")
    assert delta["length"] < full["length"] / 4

    verify = cli("repo", "verify", "--storage", repo.storage, "--root", trusted_root(repo))
    assert verify.code == 0, verify.stderr
    assert "7 target(s) verified" in verify.stdout


def test_release_add_rejects_bad_input_and_changes_nothing(
    repo: Workspace, cli: Cli, tmp_path: Path
) -> None:
    image = make_image(tmp_path / "v1.img", 50_000)
    assert add(cli, repo, image, "1.0").code == 0
    before = snapshot_of(repo.storage)
    assert_one_error(
        add(cli, repo, mutate(image, tmp_path / "other.img"), "1.0"),
        "already exists (with another image)",
    )
    same = add(cli, repo, image, "1.0")  # re-running a publish whose answer was lost
    assert same.code == 0 and "already published with this image" in same.stdout
    assert_one_error(add(cli, repo, tmp_path / "missing.img", "2.0"), "does not exist")
    assert_one_error(add(cli, repo, image, "2.0", hw="ecu/../x"), "invalid hardware id")
    assert_one_error(add(cli, repo, image, "2.0", hw="ecu a"), "invalid hardware id")
    assert_one_error(add(cli, repo, image, "../2"), "invalid version")
    assert_one_error(add(cli, repo, image, "2.0", "--delta-from", "0.1"), "no such release")
    assert_one_error(add(cli, repo, tmp_path, "2.0"), "is a directory")
    assert snapshot_of(repo.storage) == before


def test_root_rotation_is_followed_by_an_existing_client(
    repo: Workspace, cli: Cli, tmp_path: Path
) -> None:
    generate_keys(cli, repo.keys, "root2", "targets2", "timestamp2")
    old_trusted = tmp_path / "root-v1.json"
    shutil.copy(trusted_root(repo), old_trusted)
    for role, new, old in (
        ("root", "root2", "root"),
        ("targets", "targets2", "targets"),
        ("timestamp", "timestamp2", "timestamp"),
    ):
        result = cli(
            "keys", "rotate", "--role", role, *repo.repo_args, "--add", new, "--remove", old
        )
        assert result.code == 0, result.stderr
        assert "published root" in result.stdout
    assert add(cli, repo, make_image(tmp_path / "img", 20_000), "1.0").code == 0
    # The old key files are no longer trusted: remove them and the repository still works.
    for name in ("root", "targets", "timestamp"):
        (repo.keys / name).unlink()
    assert cli("repo", "refresh", *repo.repo_args).code == 0
    verify = cli("repo", "verify", "--storage", repo.storage, "--root", old_trusted)
    assert verify.code == 0, verify.stderr
    assert "root v4" in verify.stdout


def test_threshold_signing_across_engineers(workspace: Workspace, cli: Cli, tmp_path: Path) -> None:
    ws = workspace
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    generate_keys(cli, alice, "alice")
    generate_keys(cli, bob, "bob")
    # The key ceremony: everyone's key at hand once, to sign version 1.
    for src in (alice, bob):
        shutil.copy(src / src.name, ws.keys)
        shutil.copy(src / f"{src.name}.pub", ws.keys)
    result = cli(
        "repo",
        "init",
        *ws.repo_args,
        "--root-keys",
        "root,alice,bob",
        "--root-threshold",
        "1",
        "--targets-keys",
        "alice,bob",
        "--targets-threshold",
        "2",
    )
    assert result.code == 0, result.stderr
    for src in (alice, bob):
        (ws.keys / src.name).unlink()
    # Alice works with her own key, the online keys, and Bob's public key (to name him).
    shutil.copy(bob / "bob.pub", alice)
    for online in ("snapshot", "timestamp"):
        shutil.copy(ws.keys / online, alice)
        shutil.copy(ws.keys / f"{online}.pub", alice)
    image = make_image(tmp_path / "img", 30_000)
    args = ["--storage", str(ws.storage), "--keys", str(alice)]
    # Alice holds 1 of the 2 targets keys: the release is staged, not refused.
    staged = cli(
        "release", "add", image, "--hardware-id", "ecu", "--version", "1", *args, "--quiet"
    )
    assert staged.code == 0, staged.stderr
    assert staged.stdout.startswith("staged ecu 1 (release counter 1)")
    assert (
        "staged: targets has 1 of 2 signatures; sign with "
        "`overdrive repo sign --role targets --keys DIR`, then `overdrive repo publish`"
    ) in staged.stdout
    status = json.loads(cli("repo", "status", "--storage", ws.storage, "--json").stdout)
    assert status["staged"] == ["targets"] and status["hardware"] == {}
    not_yet = cli("repo", "publish", *args)
    assert_one_error(not_yet, "targets: 1 of 2 signatures", "bob")
    outsider = tmp_path / "outsider"
    generate_keys(cli, outsider, "mallory")
    assert_one_error(
        cli("repo", "sign", "--role", "targets", "--storage", ws.storage, "--keys", outsider),
        "none of the keys",
    )
    signed = cli("repo", "sign", "--role", "targets", "--storage", ws.storage, "--keys", bob)
    assert signed.code == 0, signed.stderr
    assert "threshold met" in signed.stdout
    published = cli("repo", "publish", *args)
    assert published.code == 0, published.stderr
    verify = cli("repo", "verify", "--storage", ws.storage, "--root", trusted_root(ws))
    assert verify.code == 0 and "1 target(s)" in verify.stdout


def test_refresh_only_when_expiring(repo: Workspace, cli: Cli) -> None:
    quiet = cli("repo", "refresh", *repo.repo_args, "--if-expiring-within", "12h")
    assert quiet.code == 0 and "nothing expires" in quiet.stdout
    due = cli("repo", "refresh", *repo.repo_args, "--if-expiring-within", "2d")
    assert due.code == 0 and "re-signed timestamp v2" in due.stdout
    snap = cli("repo", "refresh", *repo.repo_args, "--if-expiring-within", "8d")
    assert "re-signed snapshot v2" in snap.stdout and "re-signed timestamp v3" in snap.stdout
    assert_one_error(
        cli("repo", "refresh", *repo.repo_args, "--if-expiring-within", "soon"), "invalid duration"
    )


def test_errors_leave_repository_untouched(
    repo: Workspace, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_image(tmp_path / "img", 10_000)
    before = snapshot_of(repo.storage)
    # A missing key: the timestamp key is not in this directory.
    partial = tmp_path / "partial"
    shutil.copytree(repo.keys, partial)
    (partial / "timestamp").unlink()
    assert_one_error(
        cli("repo", "refresh", "--storage", repo.storage, "--keys", partial),
        "timestamp needs 1 signature(s)",
        "holds 0",
    )
    (partial / "timestamp.pub").unlink()
    assert_one_error(
        cli(
            "release",
            "add",
            image,
            "--hardware-id",
            "e",
            "--version",
            "1",
            "--storage",
            repo.storage,
            "--keys",
            partial,
            "--quiet",
        ),
        "timestamp needs 1 signature(s)",
    )
    # A wrong passphrase.
    locked = tmp_path / "locked"
    monkeypatch.setenv("PP", "secret")
    assert cli("keys", "generate", "t2", "--dir", locked, "--passphrase-env", "PP").code == 0
    shutil.copy(locked / "t2", repo.keys)
    shutil.copy(locked / "t2.pub", repo.keys)
    rotated = cli(
        "keys",
        "rotate",
        "--role",
        "timestamp",
        *repo.repo_args,
        "--add",
        "t2",
        "--remove",
        "timestamp",
        "--passphrase-env",
        "PP",
    )
    assert rotated.code == 0, rotated.stderr
    before = snapshot_of(repo.storage)
    monkeypatch.setenv("PP", "not it")
    assert_one_error(
        cli("repo", "refresh", *repo.repo_args, "--passphrase-env", "PP"),
        "wrong passphrase for key 't2'",
    )
    assert snapshot_of(repo.storage) == before


def test_corrupted_and_expired_metadata(repo: Workspace, cli: Cli, tmp_path: Path) -> None:
    targets_file = repo.storage / "metadata" / "1.targets.json"
    good = targets_file.read_bytes()
    targets_file.write_bytes(good[:40])
    assert_one_error(cli("repo", "status", *repo.repo_args), "metadata/1.targets.json is corrupted")
    tampered = json.loads(good)
    tampered["signed"]["expires"] = "2099-01-01T00:00:00Z"
    targets_file.write_text(json.dumps(tampered))
    assert_one_error(cli("repo", "status", *repo.repo_args), "1.targets.json fails verification")
    assert_one_error(cli("repo", "refresh", *repo.repo_args), "fails verification")
    failed = cli("repo", "verify", "--storage", repo.storage, "--root", trusted_root(repo))
    assert failed.code == 1 and failed.stderr.startswith("FAIL")
    targets_file.write_bytes(good)

    short = cli("repo", "init", *repo.repo_args, "--force", "--expires", "timestamp=1s")
    assert short.code == 0
    time.sleep(1.5)
    expired = cli("repo", "verify", "--storage", repo.storage, "--root", trusted_root(repo))
    assert expired.code == 1 and "expired" in expired.stderr.lower()
    status = json.loads(cli("repo", "status", *repo.repo_args, "--json").stdout)
    assert status["roles"]["timestamp"]["expired"] is True
    assert cli("repo", "refresh", *repo.repo_args).code == 0  # cron recovers it
    assert cli("repo", "verify", "--storage", repo.storage, "--root", trusted_root(repo)).code == 0


def test_no_private_key_material_reaches_storage(repo: Workspace, cli: Cli, tmp_path: Path) -> None:
    assert add(cli, repo, make_image(tmp_path / "img", 5_000), "1").code == 0
    for key, data in snapshot_of(repo.storage).items():
        assert b"PRIVATE KEY" not in data, key
    root = Metadata.from_file(str(trusted_root(repo)))
    assert all("private" not in json.dumps(k.to_dict()) for k in root.signed.keys.values())

"""Release engineers' ergonomics: a passphrase per key (variables, files), key file permissions,
``keys generate`` on a terminal, ``release add --json`` and ``bundle create`` help.

Every bad input is one ``error:`` line with exit code 1: never a traceback or an internal error.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from overdrive.passphrase import passphrase_variable
from tests.conftest import Cli, Result, make_image
from tests.signing.test_repository import assert_one_error, snapshot_of

ROLES = ("root", "targets", "snapshot", "timestamp")


def generate(cli: Cli, keys: Path, name: str, passphrase: str) -> None:
    result = cli(
        "keys", "generate", name, "--dir", keys, env={passphrase_variable(name): passphrase}
    )
    assert result.code == 0, result.stderr


def per_key_env() -> dict[str, str]:
    """Every role's key with its own passphrase, as a CI job's secrets would give them."""
    return {passphrase_variable(role): f"{role}-secret" for role in ROLES}


@pytest.fixture
def locked(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(keys, storage): a repository whose four keys each have a different passphrase."""
    monkeypatch.setenv("OVERDRIVE_CACHE_DIR", str(tmp_path / "cache"))
    keys, storage = tmp_path / "keys", tmp_path / "repo"
    for role in ROLES:
        generate(cli, keys, role, f"{role}-secret")
    init = cli("repo", "init", "--storage", storage, "--keys", keys, env=per_key_env())
    assert init.code == 0, init.stderr
    return keys, storage


# ----------------------------------------------------------------------------- passphrases


def test_variable_names() -> None:
    assert passphrase_variable("root") == "OVERDRIVE_PASSPHRASE_ROOT"
    assert passphrase_variable("ts-2026.q1") == "OVERDRIVE_PASSPHRASE_TS_2026_Q1"


def test_a_passphrase_per_key_from_variables_and_files(
    locked: tuple[Path, Path], cli: Cli, tmp_path: Path
) -> None:
    keys, storage = locked
    args = ["--storage", storage, "--keys", keys]
    image = make_image(tmp_path / "img", 20_000)
    release = ["release", "add", image, "--hardware-id", "ecu", "--version", "1", "--quiet"]
    assert cli(*release, *args, env=per_key_env()).code == 0
    # cron: the online keys' passphrases in files, one per key, readable by their owner only.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for role in ("snapshot", "timestamp"):
        (secrets / f"{role}.pass").write_text(f"{role}-secret\n")  # as `echo … >` writes it
        (secrets / f"{role}.pass").chmod(0o600)
    refreshed = cli("repo", "refresh", *args, "--passphrase-file-dir", secrets)
    assert refreshed.code == 0, refreshed.stderr
    from_env = cli("repo", "refresh", *args, env={"OVERDRIVE_PASSPHRASES_DIR": str(secrets)})
    assert from_env.code == 0, from_env.stderr


def test_lookup_order(locked: tuple[Path, Path], cli: Cli, tmp_path: Path) -> None:
    """Per-key variable, then per-key file, then --passphrase-env for all."""
    keys, storage = locked
    args = ["repo", "refresh", "--storage", storage, "--keys", keys]
    files = tmp_path / "files"
    files.mkdir()
    (files / "timestamp.pass").write_text("timestamp-secret")
    (files / "timestamp.pass").chmod(0o600)
    (files / "snapshot.pass").write_text("wrong")
    (files / "snapshot.pass").chmod(0o600)
    everything = [*args, "--passphrase-file-dir", files, "--passphrase-env", "ALL"]
    # The variable beats the file: snapshot's file is wrong, its variable right.
    env = {"OVERDRIVE_PASSPHRASE_SNAPSHOT": "snapshot-secret", "ALL": "wrong"}
    assert cli(*everything, "--if-expiring-within", "8d", env=env).code == 0
    # The file beats --passphrase-env: timestamp's file is right, $ALL wrong.
    assert cli(*everything, env={"ALL": "wrong"}).code == 0
    # --passphrase-env for the keys without a variable or file of their own.
    (files / "timestamp.pass").unlink()
    assert cli(*everything, env={"ALL": "timestamp-secret"}).code == 0
    # A source that has a passphrase is used, right or wrong: no silent fall-through.
    assert_one_error(
        cli(*everything, env={"OVERDRIVE_PASSPHRASE_TIMESTAMP": "nope", "ALL": "timestamp-secret"}),
        "wrong passphrase for key 'timestamp' (from $OVERDRIVE_PASSPHRASE_TIMESTAMP)",
    )
    assert_one_error(
        cli(*args),
        "no passphrase for key 'timestamp'",
        "$OVERDRIVE_PASSPHRASE_TIMESTAMP",
        "--passphrase-file-dir",
        "--passphrase-env",
    )


def staged_release(cli: Cli, keys: Path, storage: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "staged.img", 10_000, seed=7)
    staged = cli(
        "release",
        "add",
        image,
        "--hardware-id",
        "ecu",
        "--version",
        "9",
        "--storage",
        storage,
        "--keys",
        keys,
        "--quiet",
        "--stage-only",
        env=per_key_env(),
    )
    assert staged.code == 0, staged.stderr


COMMANDS = {
    "repo init": ["repo", "init", "--storage", "{new}", "--keys", "{keys}"],
    "repo refresh": ["repo", "refresh", "--storage", "{storage}", "--keys", "{keys}"],
    "release add": [
        *("release", "add", "{image}", "--hardware-id", "e", "--version", "1", "--quiet"),
        *("--storage", "{storage}", "--keys", "{keys}"),
    ],
    "release yank": [
        *("release", "yank", "ecu", "1", "--reason", "bad"),
        *("--storage", "{storage}", "--keys", "{keys}"),
    ],
    "keys rotate": [
        *("keys", "rotate", "--role", "snapshot", "--threshold", "1"),
        *("--storage", "{storage}", "--keys", "{keys}"),
    ],
    "repo sign": ["repo", "sign", "--storage", "{storage}", "--keys", "{keys}"],
    "repo publish": ["repo", "publish", "--storage", "{storage}", "--keys", "{keys}"],
    "keys generate": ["keys", "generate", "fresh", "--dir", "{keys}"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("empty", ["--passphrase-env", "per-key variable", "per-key file"])
def test_an_empty_passphrase_is_a_clear_error(
    locked: tuple[Path, Path], cli: Cli, tmp_path: Path, command: str, empty: str
) -> None:
    """Empty is a CI secret that is not set, never a passphrase (it used to be an internal
    error: TypeError from cryptography)."""
    keys, storage = locked
    image = make_image(tmp_path / "img", 10_000)
    if command == "release yank":
        release = ["release", "add", image, "--hardware-id", "ecu", "--version", "1", "--quiet"]
        assert cli(*release, "--storage", storage, "--keys", keys, env=per_key_env()).code == 0
    if command in ("repo sign", "repo publish"):
        staged_release(cli, keys, storage, tmp_path)
    values = {"new": tmp_path / "new", "keys": keys, "storage": storage, "image": image}
    args = [part.format(**values) for part in COMMANDS[command]]
    files = tmp_path / "passphrases"
    files.mkdir()
    env: dict[str, str] = {}
    if empty == "--passphrase-env":
        args += ["--passphrase-env", "EMPTY"]
        env["EMPTY"] = ""
        origin = "$EMPTY"
    elif empty == "per-key variable":
        env = {passphrase_variable(name): "" for name in (*ROLES, "fresh")}
        origin = "$OVERDRIVE_PASSPHRASE_"
    else:
        for name in (*ROLES, "fresh"):
            (files / f"{name}.pass").write_text("\n")
            (files / f"{name}.pass").chmod(0o600)
        args += ["--passphrase-file-dir", str(files)]
        origin = str(files)
    before = snapshot_of(storage)
    result = cli(*args, env=env)
    assert_one_error(result, origin, "is empty", "needs its passphrase")
    assert snapshot_of(storage) == before
    assert not (keys / "fresh").exists()


# ----------------------------------------------------------------------------- permissions


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_private_key_others_can_read_is_refused(
    locked: tuple[Path, Path], cli: Cli, mode: int
) -> None:
    keys, storage = locked
    (keys / "timestamp").chmod(mode)
    args = ["repo", "refresh", "--storage", storage, "--keys", keys]
    before = snapshot_of(storage)
    assert_one_error(
        cli(*args, env=per_key_env()),
        f"private key {keys / 'timestamp'} is accessible by",
        f"(mode {mode:04o})",
        f"`chmod 600 {keys / 'timestamp'}`",
        "--allow-insecure-key-permissions",
    )
    assert snapshot_of(storage) == before
    flagged = cli(*args, "--allow-insecure-key-permissions", env=per_key_env())
    assert flagged.code == 0, flagged.stderr
    from_env = cli(*args, env={**per_key_env(), "OVERDRIVE_ALLOW_INSECURE_KEY_PERMISSIONS": "1"})
    assert from_env.code == 0, from_env.stderr
    (keys / "timestamp").chmod(0o600)
    assert cli(*args, env=per_key_env()).code == 0


def test_a_passphrase_file_others_can_read_is_refused(
    locked: tuple[Path, Path], cli: Cli, tmp_path: Path
) -> None:
    keys, storage = locked
    files = tmp_path / "files"
    files.mkdir()
    secret = files / "timestamp.pass"
    secret.write_text("timestamp-secret")
    secret.chmod(0o644)
    args = ["repo", "refresh", "--storage", storage, "--keys", keys, "--passphrase-file-dir", files]
    assert_one_error(
        cli(*args), f"passphrase file {secret} is accessible by", f"`chmod 600 {secret}`"
    )
    assert cli(*args, "--allow-insecure-key-permissions").code == 0


def test_generated_files_modes(cli: Cli, tmp_path: Path) -> None:
    result = cli("keys", "generate", "k", "--dir", tmp_path, "--insecure-no-passphrase")
    assert result.code == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k.pub").stat().st_mode) == 0o644


# ----------------------------------------------------------------------------- keys generate


def on_terminal(args: list[str], answers: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run ``overdrive ARGS`` with a pseudo-terminal as its controlling terminal, answering
    each prompt (a line ending in ": ") in turn; return the exit code and what it showed."""
    master, slave = os.openpty()

    def make_controlling() -> None:  # in the child, after setsid (start_new_session)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(
        [sys.executable, "-m", "overdrive.cli", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=make_controlling,
    )
    os.close(slave)
    shown, pending = b"", list(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
                if pending and shown.rstrip(b" ").endswith(b":"):
                    os.write(master, pending.pop(0).encode() + b"\n")
            elif process.poll() is not None:
                break
        return process.wait(timeout), shown.decode(errors="replace")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()


@pytest.mark.skipif(not hasattr(termios, "TIOCSCTTY"), reason="needs a POSIX terminal")
def test_generate_on_a_terminal_prompts_twice_and_refuses_an_existing_key_first(
    tmp_path: Path,
) -> None:
    code, shown = on_terminal(
        ["keys", "generate", "alice", "--dir", str(tmp_path)], ["correct horse", "correct horse"]
    )
    assert code == 0, shown
    assert "Passphrase for key 'alice'" in shown and "Repeat for confirmation" in shown
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "alice").read_bytes()
    # An existing key is refused before any passphrase is asked for.
    code, shown = on_terminal(["keys", "generate", "alice", "--dir", str(tmp_path)], ["x", "x"])
    assert code == 1, shown
    assert "already exists; refusing to overwrite a key" in shown
    assert "Passphrase" not in shown


def test_generate_refuses_an_existing_key_before_reading_a_passphrase(
    cli: Cli, tmp_path: Path
) -> None:
    assert cli("keys", "generate", "k", "--dir", tmp_path, "--insecure-no-passphrase").code == 0
    (tmp_path / "other.pub").write_text("not a key")
    for name in ("k", "other"):
        result = cli("keys", "generate", name, "--dir", tmp_path)  # no passphrase configured
        assert_one_error(result, "already exists; refusing to overwrite a key")


# ----------------------------------------------------------------------------- output


def test_release_add_json(locked: tuple[Path, Path], cli: Cli, tmp_path: Path) -> None:
    keys, storage = locked
    image = make_image(tmp_path / "img", 30_000)
    args = ["release", "add", image, "--hardware-id", "ecu", "--version", "1"]
    args += ["--storage", storage, "--keys", keys, "--json", "--chunk-size", "64KiB"]
    result: Result = cli(*args, env=per_key_env())
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "published" and data["release_counter"] == 1
    assert [b["kind"] for b in data["bundles"]] == ["full"]
    assert data["bundles"][0]["path"] == "ecu/1/full.bundle" and data["waiting"] == []
    again = json.loads(cli(*args, env=per_key_env()).stdout)
    assert again["state"] == "already-published"


def test_bundle_create_help_says_source_version_is_required(cli: Cli, tmp_path: Path) -> None:
    help_text = " ".join(cli("bundle", "create", "--help").stdout.split()).replace("- ", "-")
    assert "needs --source-version" in help_text and "required with --source" in help_text
    image = make_image(tmp_path / "img", 5_000)
    missing = cli(
        "bundle",
        "create",
        *("--image", image, "--source", image, "--hardware-id", "e", "--version", "2"),
        *("-o", tmp_path / "out.bundle"),
    )
    assert missing.code == 2 and "required with --source" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_no_setting_is_named_like_a_key_passphrase() -> None:
    """A key's own variable is OVERDRIVE_PASSPHRASE_<NAME>: no other setting may look like one
    (a key named "dir" must not read a directory path as its passphrase)."""
    from overdrive.keys import INSECURE_PERMISSIONS_ENV, PASSPHRASE_DIR_ENV
    from overdrive.passphrase import PASSPHRASE_VAR_PREFIX

    for setting in (PASSPHRASE_DIR_ENV, INSECURE_PERMISSIONS_ENV):
        assert not setting.startswith(PASSPHRASE_VAR_PREFIX), setting

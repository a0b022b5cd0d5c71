"""``overdrive server migrate|token create|enroll-token create|tick`` and ``server run``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Cli, generate_keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_migrate_and_bootstrap_secrets(cli: Cli, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'o.db'}"
    assert cli("server", "migrate", "--db", db).code == 0
    assert cli("server", "migrate", "--db", db).code == 0  # idempotent
    token = cli("server", "token", "create", "--role", "admin", "--db", db, "--json")
    assert token.code == 0, token.stderr
    assert json.loads(token.stdout)["secret"].startswith("odt_")
    enroll = cli("server", "enroll-token", "create", "--db", db, "--expires", "7d", "--uses", "50")
    assert enroll.code == 0 and enroll.stdout.strip().startswith("ode_")
    bad = cli("server", "enroll-token", "create", "--db", db, "--expires", "soon")
    assert bad.code == 1 and bad.error_lines == [
        "error: invalid duration 'soon' (examples: 30m, 12h, 7d, 2w)"
    ]
    assert cli("server", "token", "create", "--role", "king", "--db", db).code == 2
    assert "no running campaigns" in cli("server", "tick", "--db", db).stdout


ADMIN_COMMANDS = [
    ["server", "token", "create", "--role", "admin"],
    ["server", "token", "list"],
    ["server", "token", "revoke", "1"],
    ["server", "enroll-token", "create"],
    ["server", "enroll-token", "list"],
    ["server", "enroll-token", "revoke", "1"],
    ["server", "tick"],
]


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: " ".join(c[1:3]))
def test_admin_commands_refuse_a_database_that_was_never_migrated(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Run in the wrong directory, `token create` used to create a fresh overdrive.db and print
    a token the real server never heard of."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERDRIVE_DB", raising=False)
    default = tmp_path / "overdrive.db"
    result = cli(*command)
    assert result.code == 1 and result.error_lines == [
        f"error: no Overdrive database at sqlite:///{default} (it was never migrated); "
        f"run `overdrive server migrate --db sqlite:///{default}` first, or pass the right --db"
    ]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # nothing was created
    typo = cli(*command, "--db", "sqlite:///typo/x.db")
    assert typo.code == 1 and typo.error_lines == [
        f"error: no Overdrive database at sqlite:///{tmp_path}/typo/x.db: directory "
        f"{tmp_path}/typo does not exist; pass the right --db"
    ]
    (tmp_path / "empty.db").write_bytes(b"")
    empty = cli(*command, "--db", "empty.db")
    assert empty.code == 1 and len(empty.error_lines) == 1
    assert "empty.db is not an Overdrive database (it was never migrated)" in empty.stderr
    (tmp_path / "junk.db").write_text("not a database at all, just text " * 100)
    junk = cli(*command, "--db", "junk.db")
    assert junk.code == 1 and junk.error_lines == [
        f"error: cannot read the database sqlite:///{tmp_path}/junk.db: file is not a database"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "junk.db"]


def test_database_errors_are_one_line(cli: Cli, tmp_path: Path) -> None:
    typo = cli("server", "migrate", "--db", f"sqlite:///{tmp_path}/typo/x.db")
    assert typo.code == 1 and typo.error_lines == [
        f"error: cannot create the database sqlite:///{tmp_path}/typo/x.db: directory "
        f"{tmp_path}/typo does not exist"
    ]
    unreachable = cli("server", "token", "list", "--db", "postgresql://u:secret@127.0.0.1:1/x")
    assert unreachable.code == 1 and len(unreachable.error_lines) == 1
    assert unreachable.error_lines[0].startswith(
        "error: cannot connect to the database postgresql://u:***@127.0.0.1:1/x: "
    )
    assert "secret" not in unreachable.stderr
    memory = cli("server", "token", "list", "--db", "sqlite://")
    assert memory.code == 1 and "in-memory SQLite database" in memory.stderr


def test_admin_commands_do_not_warn_about_the_dashboard_key(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OVERDRIVE_SECRET_KEY", raising=False)
    db = f"sqlite:///{tmp_path / 'o.db'}"
    assert cli("server", "migrate", "--db", db).code == 0
    for command in (
        ["token", "create", "--role", "admin", "--json"],
        ["token", "list"],
        ["enroll-token", "create"],
        ["tick"],
    ):
        result = cli("server", *command, "--db", db)
        assert result.code == 0, result.stderr
        assert "OVERDRIVE_SECRET_KEY" not in result.stderr, command


def test_create_app_still_warns_when_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from overdrive.server.app import create_app
    from overdrive.server.config import ServerConfig
    from overdrive.server.migrate import upgrade

    monkeypatch.delenv("OVERDRIVE_SECRET_KEY", raising=False)
    db = f"sqlite:///{tmp_path / 'o.db'}"
    upgrade(db)
    config = ServerConfig(db_url=db, tick_interval=0, state_dir=tmp_path / "state")
    with caplog.at_level("WARNING"):
        create_app(config, serving=False)
    assert "OVERDRIVE_SECRET_KEY" not in caplog.text
    with caplog.at_level("WARNING"):
        create_app(config)  # as `server run` builds it
    assert "OVERDRIVE_SECRET_KEY is not set" in caplog.text


def test_enroll_token_create_json(cli: Cli, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'o.db'}"
    assert cli("server", "migrate", "--db", db).code == 0
    result = cli("server", "enroll-token", "create", "--db", db, "--uses", "5", "--json")
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["secret"].startswith("ode_") and data["uses"] == 5
    assert data["expires_at"] is None and isinstance(data["id"], int)
    expiring = cli("server", "enroll-token", "create", "--db", db, "--expires", "1d", "--json")
    assert json.loads(expiring.stdout)["expires_at"].endswith("Z")


def test_server_run_serves_http(tmp_path: Path) -> None:
    port = free_port()
    db = f"sqlite:///{tmp_path / 'o.db'}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "overdrive.cli",
            "server",
            "run",
            "--db",
            db,
            "--port",
            str(port),
            "--tick-interval",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/healthz", timeout=2
                ) as response:
                    assert json.loads(response.read()) == {"status": "ok"}
                    break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(10)


def test_server_run_refuses_bad_databases_and_director_passphrases(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``server run``: a database path that cannot exist, and a director online key whose
    passphrase variable is empty (or unset), are one-line errors before anything starts."""
    typo = cli("server", "run", "--db", f"sqlite:///{tmp_path}/typo/x.db")
    assert typo.code == 1 and "directory" in typo.stderr and "typo" in typo.stderr
    keys, storage = tmp_path / "keys", tmp_path / "director"
    generate_keys(cli, keys, "director-root", "director-targets", "director-snapshot")
    monkeypatch.setenv("OVERDRIVE_PASSPHRASE_DIRECTOR_TIMESTAMP", "secret")
    made = cli("keys", "generate", "director-timestamp", "--dir", keys)
    assert made.code == 0, made.stderr
    made = cli("director", "init", "--storage", storage, "--keys", keys)
    assert made.code == 0, made.stderr
    db = f"sqlite:///{tmp_path / 'o.db'}"
    options = ("--db", db, "--director-storage", storage, "--director-keys", keys)
    monkeypatch.setenv("OVERDRIVE_PASSPHRASE_DIRECTOR_TIMESTAMP", "")
    empty = cli("server", "run", *options)
    assert empty.code == 1
    (line,) = [line for line in empty.error_lines if line.startswith("error:")]
    assert "$OVERDRIVE_PASSPHRASE_DIRECTOR_TIMESTAMP is empty" in line, empty.stderr
    monkeypatch.delenv("OVERDRIVE_PASSPHRASE_DIRECTOR_TIMESTAMP")
    missing = cli("server", "run", *options)
    assert missing.code == 1
    assert "set $OVERDRIVE_PASSPHRASE_DIRECTOR_TIMESTAMP" in missing.stderr
    # A root that is not there, or half of the director's options, are as plain.
    nowhere = cli(
        "server", "run", "--db", db, "--director-storage", tmp_path, "--director-keys", keys
    )
    assert nowhere.code == 1 and "no director root" in nowhere.stderr
    half = cli("server", "run", "--db", db, "--director-storage", storage)
    assert half.code == 1 and "go together" in half.stderr

"""``overdrive server migrate|token create|enroll-token create|tick`` and ``server run``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import Cli


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

"""``overdrive campaign …`` against a running server (real HTTP on loopback)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.conftest import Cli
from tests.server.fleet import SimVehicle


@pytest.fixture
def server_url(app: Any, fleet: list[SimVehicle]) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_campaign_commands(
    cli: Cli,
    server_url: str,
    tokens: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OVERDRIVE_SERVER", server_url)
    monkeypatch.setenv("OVERDRIVE_TOKEN", tokens["operator"])
    created = cli(
        "campaign",
        "create",
        "--name",
        "eu rollout",
        "--release",
        "ecu-a=1.1",
        "--policy",
        "canary",
        "--filter",
        "region=EU",
        "--json",
    )
    assert created.code == 0, created.stderr
    campaign_id = json.loads(created.stdout)["id"]
    started = cli("campaign", "start", campaign_id)
    assert started.code == 0 and "state     running" in started.stdout
    assert "eligible 10" in started.stdout  # the 10 EU cars on ecu-a
    listed = cli("campaign", "list")
    assert campaign_id in listed.stdout and "running" in listed.stdout
    assert cli("campaign", "pause", campaign_id).code == 0
    assert json.loads(cli("campaign", "status", campaign_id, "--json").stdout)["state"] == "paused"
    assert cli("campaign", "resume", campaign_id).code == 0
    assert cli("campaign", "approve", campaign_id).code == 0
    assert "aborted" in cli("campaign", "abort", campaign_id).stdout

    policy = tmp_path / "p.yaml"
    policy.write_text("stages:\n  - name: all\n    share: 100%\n")
    from_file = cli(
        "campaign",
        "create",
        "--name",
        "file policy",
        "--release",
        "ecu-b=1.0",
        "--policy",
        str(policy),
        "--json",
    )
    assert from_file.code == 0, from_file.stderr

    # Bad input: one line each, non-zero exit.
    bad = [
        (["campaign", "start", "no-such-id"], "server answered 404"),
        (["campaign", "resume", campaign_id], "server answered 409"),
        (
            ["campaign", "create", "--name", "x", "--release", "ecu-a", "--policy", "canary"],
            "expected KEY=VALUE",
        ),
        (
            ["campaign", "create", "--name", "x", "--release", "ecu-a=7.7", "--policy", "canary"],
            "not in the signed repository",
        ),
        (
            [
                "campaign",
                "create",
                "--name",
                "x",
                "--release",
                "ecu-a=1.1",
                "--policy",
                str(tmp_path / "missing.yaml"),
            ],
            "missing.yaml",
        ),
    ]
    for args, message in bad:
        result = cli(*args)
        assert result.code != 0, args
        assert message in result.stderr, (args, result.stderr)
    monkeypatch.setenv("OVERDRIVE_TOKEN", tokens["viewer"])
    assert "server answered 403" in cli("campaign", "pause", campaign_id).stderr
    monkeypatch.setenv("OVERDRIVE_SERVER", "http://127.0.0.1:9")
    unreachable = cli("campaign", "list")
    assert unreachable.code == 1 and unreachable.error_lines[0].startswith("error: cannot reach")

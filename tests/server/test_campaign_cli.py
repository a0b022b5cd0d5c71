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


def test_seeing_why_from_the_command_line(
    cli: Cli,
    server_url: str,
    ctx: Any,
    tokens: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Status says what a running campaign waits for and shows its groups; the vehicles
    behind a count are listed; pause/abort take a reason; short id prefixes work."""
    from overdrive.server.campaigns import tick

    monkeypatch.setenv("OVERDRIVE_SERVER", server_url)
    monkeypatch.setenv("OVERDRIVE_TOKEN", tokens["operator"])
    created = cli(
        "campaign",
        "create",
        "--name",
        "all",
        "--release",
        "ecu-a=1.1",
        "--policy",
        "canary",
        "--json",
    )
    campaign_id = json.loads(created.stdout)["id"]
    short = campaign_id[:8]
    assert cli("campaign", "start", short).code == 0
    tick(ctx)
    status = cli("campaign", "status", short)
    assert status.code == 0, status.stderr
    assert "  waiting   soaking until " in status.stdout and " UTC, " in status.stdout
    assert "hardware_id=ecu-a" in status.stdout and "region=EU" in status.stdout
    assert "HALTS AT" in status.stdout
    data = json.loads(cli("campaign", "status", short, "--json").stdout)
    assert data["reason"].startswith("holding at stage 'pilot-0.05%'") and data["waiting"]

    listed = cli("campaign", "vehicles", short, "--status", "assigned")
    assert listed.code == 0 and listed.stdout.endswith("0 of 0 vehicles\n")
    admitted = cli("campaign", "vehicles", short, "--group", "region=EU", "--json")
    assert json.loads(admitted.stdout)["total"] == 10
    every = cli("campaign", "vehicles", short)
    assert every.stdout.splitlines()[0].split()[:3] == ["VEHICLE", "HARDWARE", "ID"]
    assert every.stdout.endswith("20 of 20 vehicles\n")
    bad = cli("campaign", "vehicles", short, "--status", "nope")
    assert bad.code != 0 and "status must be one of" in bad.stderr
    assert "--group" in cli("campaign", "vehicles", short, "--group", "x").stderr

    paused = cli("campaign", "pause", short, "--reason", "waiting for the supplier")
    assert paused.code == 0 and "waiting for the supplier" in paused.stdout
    history = cli("campaign", "history", short)
    assert "campaign.pause: paused by" in history.stdout
    assert cli("campaign", "abort", short, "--reason", "superseded").code == 0

    draft = json.loads(
        cli(
            "campaign",
            "create",
            "--name",
            "d",
            "--release",
            "ecu-a=1.1",
            "--policy",
            "canary",
            "--json",
        ).stdout
    )["id"]
    assert cli("campaign", "delete", draft[:8]).stdout == f"deleted draft campaign {draft}\n"
    gone = cli("campaign", "status", draft)
    assert gone.code != 0 and "404" in gone.stderr

"""A real rollout server on a loopback socket over a published repository, and provisioned
vehicles: for client, security and fault tests (registered as a pytest plugin)."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from overdrive.server.app import create_app
from overdrive.server.config import ServerConfig
from overdrive.server.context import EXTENSION, ServerContext
from overdrive.server.migrate import upgrade
from overdrive.server.tokens import create_api_token, create_enroll_token
from tests.conftest import Cli, Result
from tests.repo_fixtures import Published


@dataclass
class LiveServer:
    url: str
    ctx: ServerContext
    operator: str
    enroll: str
    published: Published


@contextmanager
def serve_live(
    published: Published, tmp_path: Path, *, storage_url: str | None = None, **overrides: Any
) -> Iterator[LiveServer]:
    """A migrated SQLite server over ``published`` (or ``storage_url``) on a loopback socket,
    with an operator token and a 100-use enrollment token."""
    db = f"sqlite:///{tmp_path / 'server.db'}"
    upgrade(db)
    settings: dict[str, Any] = {
        "db_url": db,
        "storage_url": storage_url or str(published.storage),
        **published.director_config(),
        "state_dir": tmp_path / "server-state",
        "tick_interval": 0,
        "poll_interval": 5,
        **overrides,
    }
    app = create_app(ServerConfig(**settings), start_ticker=False)
    ctx: ServerContext = app.extensions[EXTENSION]
    with ctx.transaction() as session:
        _t, operator = create_api_token(session, "op", "operator")
        _e, enroll = create_enroll_token(session, None, uses=100)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield LiveServer(f"http://127.0.0.1:{server.server_port}", ctx, operator, enroll, published)
    finally:
        server.shutdown()
        ctx.engine.dispose()


@pytest.fixture
def live_server(published: Published, tmp_path: Path) -> Iterator[LiveServer]:
    with serve_live(published, tmp_path) as live:
        yield live


@dataclass
class Car:
    state_dir: Path
    slot_a: Path
    slot_b: Path


def provision(
    cli: Cli,
    live: LiveServer,
    tmp_path: Path,
    vehicle_id: str,
    *,
    repo_url: str | None = None,
    health_check: str = "",
    image: str = "ecu-a/1.0",
    factory: Path | None = None,
    factory_version: str | None = None,
    factory_counter: int | None = None,
    extra: tuple[str, ...] = (),
) -> Car:
    """Provision a vehicle whose slot A holds ``image`` (or ``factory``, an image of our own);
    ``extra`` are more ``vehicle provision`` options."""
    ref = live.published.images[image]
    car_dir = tmp_path / vehicle_id
    car_dir.mkdir()
    slot_a, slot_b = car_dir / "slot-a.img", car_dir / "slot-b.img"
    shutil.copyfile(factory or ref["path"], slot_a)
    slot_b.write_bytes(b"")
    result = cli(
        "vehicle",
        "provision",
        "--state-dir",
        car_dir / "state",
        "--server",
        live.url,
        "--enroll-token",
        live.enroll,
        "--vehicle-id",
        vehicle_id,
        "--hardware-id",
        image.split("/")[0],
        "--slot-a",
        slot_a,
        "--slot-b",
        slot_b,
        "--trusted-root",
        live.published.storage / "metadata" / "1.root.json",
        "--director-root",
        live.published.director_root,
        "--repo-url",
        repo_url or live.published.storage.as_uri(),
        "--factory-version",
        factory_version or ref["version"],
        "--factory-release-counter",
        str(ref["release_counter"] if factory_counter is None else factory_counter),
        "--health-check",
        health_check,
        "--attr",
        "model=m1",
        *extra,
    )
    assert result.code == 0, result.stderr
    return Car(car_dir / "state", slot_a, slot_b)


def api(live: LiveServer, method: str, path: str, body: Any = None) -> Any:
    """An operator's REST call to the live server (real HTTP)."""
    request = urllib.request.Request(
        f"{live.url}/api/v1{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {live.operator}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def start_campaign(
    live: LiveServer, version: str = "1.1", policy: Any = "immediate", **extra: Any
) -> str:
    """Create and start a campaign for ecu-a ``version``; return its id."""
    body = {"name": "t", "releases": {"ecu-a": version}, "policy": policy, **extra}
    campaign = api(live, "POST", "/campaigns", body)
    api(live, "POST", f"/campaigns/{campaign['id']}/start")
    return str(campaign["id"])


def run_once(cli: Cli, car: Car) -> Result:
    """One turn of the vehicle's daemon."""
    return cli("vehicle", "run", "--state-dir", car.state_dir, "--once")


def vehicle_status(cli: Cli, state_dir: Path) -> dict[str, Any]:
    result = cli("vehicle", "status", "--state-dir", state_dir, "--json")
    assert result.code == 0, result.stderr
    return dict(json.loads(result.stdout))

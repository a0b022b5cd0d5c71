"""Fuzzing fixtures: a real rollout server on a loopback socket (werkzeug in a thread), with
operator credentials of every kind and one registered vehicle whose key the fuzzers sign with."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from werkzeug.serving import make_server

from overdrive.server.app import create_app
from overdrive.server.config import ServerConfig
from overdrive.server.context import EXTENSION, ServerContext
from overdrive.server.migrate import upgrade
from overdrive.server.models import ApiToken
from overdrive.server.tokens import create_api_token, create_enroll_token, revoke_api_token
from tests.repo_fixtures import Published
from tests.server.conftest import db_url, vehicle_on  # noqa: F401 (db_url is a fixture)
from tests.server.fleet import SimVehicle

#: The fuzzers' admin token gets this id, far from the small ids that ``DELETE /tokens/{id}``
#: examples hit, so a fuzzed revocation cannot lock the fuzzer out (the schemathesis test also
#: never sends a DELETE for it).
ADMIN_TOKEN_ID = 1_987_654_321


@dataclass
class FuzzServer:
    url: str
    ctx: ServerContext
    admin: str
    viewer: str
    revoked: str
    enroll: str
    vehicle: SimVehicle

    @property
    def backend(self) -> str:
        return self.ctx.engine.dialect.name  # "sqlite" or "postgresql"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, bytes]:
        """Send raw bytes; return (status, content type, body); never raises on 4xx/5xx."""
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=body,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers.get("Content-Type", ""), e.read()

    def post(
        self, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, str, bytes]:
        return self.request("POST", path, body, headers)


def serve(db: str, published: Published, tmp_path: Path) -> Iterator[FuzzServer]:
    upgrade(db)
    config = ServerConfig(
        db_url=db,
        storage_url=str(published.storage),
        **published.director_config(),
        state_dir=tmp_path / "server-state",
        tick_interval=0,
        poll_interval=60,
    )
    app = create_app(config, start_ticker=False)
    ctx: ServerContext = app.extensions[EXTENSION]
    with ctx.transaction() as session:
        token, admin = create_api_token(session, "fuzz-admin", "admin")
        session.execute(update(ApiToken).where(ApiToken.id == token.id).values(id=ADMIN_TOKEN_ID))
        _v, viewer = create_api_token(session, "fuzz-viewer", "viewer")
        gone, revoked = create_api_token(session, "fuzz-revoked", "admin")
        revoke_api_token(session, gone.id)
        _e, enroll = create_enroll_token(session, None, uses=100_000)
    vehicle = vehicle_on(published, "fuzz-car")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    live = FuzzServer(
        f"http://127.0.0.1:{server.server_port}", ctx, admin, viewer, revoked, enroll, vehicle
    )
    try:
        status, _type, body = live.post(
            "/api/v1/vehicles/register", json.dumps(vehicle.registration(enroll)).encode()
        )
        assert status == 201, body
        yield live
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        ctx.engine.dispose()


@pytest.fixture(scope="module")
def fuzz_server(
    published_template: Published, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzServer]:
    """The server on SQLite, one per test module: schemathesis runs every operation's examples
    against it (hypothesis refuses function-scoped fixtures in a property test)."""
    tmp = tmp_path_factory.mktemp("fuzz-server")
    shutil.copytree(published_template.storage, tmp / "repo")
    published = dataclasses.replace(published_template, storage=tmp / "repo")
    yield from serve(f"sqlite:///{tmp / 'fuzz.db'}", published, tmp)


@pytest.fixture
def fuzz_server_any_db(
    db_url: str,  # noqa: F811
    published: Published,
    tmp_path: Path,
) -> Iterator[FuzzServer]:
    """The server on SQLite, and on PostgreSQL when OVERDRIVE_TEST_POSTGRES_URL is set."""
    yield from serve(db_url, published, tmp_path)


def assert_error_body(status: int, content_type: str, body: bytes) -> dict[str, Any]:
    """An error response must be the documented JSON error, ``{"error": {"status", "code",
    "message"}}``, whose status is the HTTP status. Returns the ``error`` object."""
    assert content_type.split(";")[0].strip() == "application/json", (status, content_type, body)
    data = json.loads(body)
    assert isinstance(data, dict) and set(data) == {"error"}, data
    error = data["error"]
    assert isinstance(error, dict), data
    assert error.get("status") == status, data
    assert isinstance(error.get("code"), str) and error["code"], data
    assert isinstance(error.get("message"), str) and error["message"], data
    return dict(error)

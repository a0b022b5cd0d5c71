"""Server fixtures: a published image repository, a migrated database (SQLite, and PostgreSQL
when ``OVERDRIVE_TEST_POSTGRES_URL`` is set), the app, tokens, and simulated vehicles."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from overdrive.server.app import create_app
from overdrive.server.config import ServerConfig
from overdrive.server.context import EXTENSION, ServerContext
from overdrive.server.migrate import upgrade
from overdrive.server.tokens import create_api_token, create_enroll_token
from tests.repo_fixtures import Published
from tests.server.fleet import SimVehicle

POSTGRES = os.environ.get("OVERDRIVE_TEST_POSTGRES_URL")
BACKENDS = [
    "sqlite",
    pytest.param(
        "postgres",
        marks=pytest.mark.skipif(not POSTGRES, reason="OVERDRIVE_TEST_POSTGRES_URL not set"),
    ),
]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'server.db'}"
        return
    with postgres_schema() as url:
        yield url


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A PostgreSQL URL whose search path is a fresh schema (dropped afterwards)."""
    assert POSTGRES
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in POSTGRES else "?"
    try:
        yield f"{POSTGRES}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def config(db_url: str, published: Published, tmp_path: Path) -> ServerConfig:
    upgrade(db_url)
    return ServerConfig(
        db_url=db_url,
        storage_url=str(published.storage),
        **published.director_config(),
        state_dir=tmp_path / "server-state",
        tick_interval=0,
        poll_interval=60,
    )


@pytest.fixture
def app(config: ServerConfig) -> Iterator[Flask]:
    app = create_app(config, start_ticker=False)
    yield app
    ctx = app.extensions[EXTENSION]
    if ctx.direct is not None:
        ctx.direct.close_all()
    ctx.engine.dispose()


@pytest.fixture
def ctx(app: Flask) -> ServerContext:
    server_context: ServerContext = app.extensions[EXTENSION]
    return server_context


@pytest.fixture
def http(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def tokens(ctx: ServerContext) -> dict[str, str]:
    """A secret per role."""
    secrets = {}
    with ctx.transaction() as session:
        for role in ("viewer", "operator", "admin"):
            _token, secrets[role] = create_api_token(session, f"test-{role}", role)
    return secrets


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def enroll(ctx: ServerContext) -> str:
    with ctx.transaction() as session:
        _token, secret = create_enroll_token(session, None, uses=1000)
    return secret


def vehicle_on(
    published: Published, vehicle_id: str, image: str = "ecu-a/1.0", **attributes: Any
) -> SimVehicle:
    ref = dict(published.images[image])
    ref.pop("path")
    return SimVehicle(vehicle_id, hardware_id=image.split("/")[0], image=ref, attributes=attributes)


@pytest.fixture
def fleet(http: FlaskClient, published: Published, enroll: str) -> list[SimVehicle]:
    """20 registered vehicles on ecu-a 1.0 (half in EU, half in US) and 5 on ecu-b 1.0."""
    vehicles = [
        vehicle_on(published, f"car-{i:03d}", model="m1", region="EU" if i % 2 else "US")
        for i in range(20)
    ]
    vehicles += [
        vehicle_on(published, f"bus-{i:03d}", "ecu-b/1.0", model="m2", region="EU")
        for i in range(5)
    ]
    for vehicle in vehicles:
        response = http.post("/api/v1/vehicles/register", json=vehicle.registration(enroll))
        assert response.status_code == 201, response.json
    return vehicles

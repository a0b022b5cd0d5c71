"""``overdrive server director-status`` and ``director-refresh`` against a real database."""

from __future__ import annotations

import json
from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import select, update

from overdrive.server.context import ServerContext
from overdrive.server.models import DirectorRepo
from overdrive.server.vehicles import utcnow
from tests.conftest import Cli
from tests.repo_fixtures import Published
from tests.server.fleet import SimVehicle


def test_status_and_refresh_of_the_vehicles_metadata(
    cli: Cli,
    http: FlaskClient,
    ctx: ServerContext,
    fleet: list[SimVehicle],
    published: Published,
) -> None:
    # Three vehicles fetch their timestamp: each gets a chain (signed on first use).
    for vehicle in fleet[:3]:
        got = http.get(f"/api/v1/director/{vehicle.vehicle_id}/metadata/timestamp.json")
        assert got.status_code == 200
    options = ["--db", ctx.config.db_url, "--director-storage", published.director_storage]
    options += ["--director-keys", published.keys]
    status = cli("server", "director-status", *options, "--json")
    assert status.code == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["vehicles"] == len(fleet) and data["vehicles_with_metadata"] == 3
    assert data["due_for_resigning"] == 0 and data["root_version"] == 1

    # One chain is about to expire: cron re-signs it (and only it), ahead of any request.
    soon = utcnow() + timedelta(hours=1)
    with ctx.engine.begin() as conn:
        conn.execute(
            update(DirectorRepo)
            .where(DirectorRepo.vehicle_id == fleet[0].vehicle_id)
            .values(expires=soon)
        )
    text = cli("server", "director-status", *options)
    assert text.code == 0 and "1 due for re-signing" in text.stdout, text
    refreshed = cli("server", "director-refresh", *options, "--if-expiring-within", "12h")
    assert refreshed.code == 0, refreshed.stderr
    assert refreshed.stdout.startswith("re-signed the director metadata of 1 vehicle(s)")
    with ctx.session() as session:
        rows = session.execute(select(DirectorRepo.vehicle_id, DirectorRepo.version)).all()
    versions = {vehicle_id: version for vehicle_id, version in rows}
    assert versions[fleet[0].vehicle_id] == 2 and versions[fleet[1].vehicle_id] == 1

    bad = cli("server", "director-refresh", *options, "--if-expiring-within", "soon")
    assert bad.code != 0 and len(bad.error_lines) == 1, bad

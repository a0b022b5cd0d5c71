"""A poll costs a constant number of indexed queries, and concurrent pollers across stage
transitions never get a vehicle counted twice or a share exceeded (threads, real sockets)."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import event, func, select
from werkzeug.serving import make_server

from overdrive.server.campaigns import tick
from overdrive.server.context import ServerContext
from overdrive.server.models import Membership
from tests.director_view import assignments, flask_get, http_get
from tests.server.conftest import Published, auth, vehicle_on
from tests.server.fleet import SimVehicle
from tests.server.test_campaigns import POLICY, create, finish


@contextmanager
def count_queries(ctx: ServerContext) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.startswith(("BEGIN", "PRAGMA", "COMMIT", "ROLLBACK")):
            statements.append(statement)

    event.listen(ctx.engine, "before_cursor_execute", record)
    if ctx.direct is not None:  # the poll path's own connections (PostgreSQL)
        ctx.direct.trace = lambda sql, _params: statements.append(sql)
    try:
        yield statements
    finally:
        event.remove(ctx.engine, "before_cursor_execute", record)
        if ctx.direct is not None:
            ctx.direct.trace = None


def test_poll_costs_constant_queries(
    http: FlaskClient,
    ctx: ServerContext,
    fleet: list[SimVehicle],
    tokens: dict[str, str],
    published: Published,
) -> None:
    cars = [v for v in fleet if v.hardware_id == "ecu-a"]
    campaign = create(http, tokens["operator"])
    http.post(f"/api/v1/campaigns/{campaign['id']}/start", headers=auth(tokens["operator"]))
    ctx.releases.index()  # warm the release cache, as a running server has it
    root = ctx.require_director().root_bytes(1)
    assert root is not None

    def polled(car: SimVehicle) -> tuple[int, dict[str, Any]]:
        with count_queries(ctx) as statements:
            response = http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=car.manifest())
        assert response.status_code == 200, response.json
        return len(statements), dict(response.json)

    counts: dict[str, list[int]] = {"nothing": [], "assignment": []}
    assigned: dict[str, SimVehicle] = {}
    for car in cars:
        count, answer = polled(car)
        counts["assignment" if "director" in answer else "nothing"].append(count)
        if "director" in answer:
            assigned[car.vehicle_id] = car
    assert counts["assignment"] and counts["nothing"]
    # "nothing to do": one read (vehicle, installed images, its director repository, "has an
    # open membership?", what its memberships offer) and the counter's compare-and-set. An
    # assignment adds one status update the first time a campaign hands it out, and its new
    # director chain: one upsert, a compare-and-set that writes the three files. Independent
    # of fleet size.
    assert set(counts["nothing"]) == {2}, counts
    assert set(counts["assignment"]) == {4}, counts
    # Polled again with nothing changed: the chain stands.
    unchanged = [polled(car) for car in assigned.values()]
    assert {count for count, _answer in unchanged} == {2}, unchanged
    # Installed: the chain is re-signed once, listing nothing, and the new installed image
    # stored (by the counter's statement on PostgreSQL, one more on SQLite); then the vehicle
    # is back to "nothing to do".
    image_upsert = 0 if ctx.direct is not None else 1
    for vehicle_id, car in assigned.items():
        (payload,) = assignments(flask_get(http), vehicle_id, root)
        finish(http, car, payload, "committed", published)
    emptied = [polled(car) for car in assigned.values()]
    assert {count for count, _answer in emptied} == {3 + image_upsert}, emptied
    assert {count for count, _answer in (polled(car) for car in assigned.values())} == {2}


def test_concurrent_pollers_across_stage_transitions(
    app: Any, ctx: ServerContext, published: Published, enroll: str, tokens: dict[str, str]
) -> None:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"

    def post(path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    try:
        cars = [vehicle_on(published, f"v-{i:03d}", model="m1") for i in range(40)]
        for car in cars:
            post("/api/v1/vehicles/register", car.registration(enroll))
        http = app.test_client()
        campaign = create(http, tokens["operator"], policy=POLICY)
        post(f"/api/v1/campaigns/{campaign['id']}/start", {}, auth(tokens["operator"]))
        assigned: dict[str, int] = {}
        lock = threading.Lock()
        errors: list[BaseException] = []

        root = ctx.require_director().root_bytes(1)
        assert root is not None
        get = http_get(base)

        def vehicle_loop(car: SimVehicle) -> None:
            try:
                seen = None
                for _ in range(6):
                    answer = post(f"/api/v1/vehicles/{car.vehicle_id}/poll", car.manifest())
                    version = answer.get("director", {}).get("version")
                    if version == seen:
                        continue  # the same chain as last time: nothing new is assigned
                    seen = version
                    for payload in assignments(get, car.vehicle_id, root):
                        with lock:
                            assigned[car.vehicle_id] = assigned.get(car.vehicle_id, 0) + 1
                        finish(http, car, payload, "committed", published)
            except BaseException as e:  # surfaced below
                errors.append(e)

        def ticker(stop: threading.Event) -> None:
            while not stop.is_set():
                tick(ctx)
                stop.wait(0.01)

        stop = threading.Event()
        tickers = [threading.Thread(target=ticker, args=(stop,)) for _ in range(3)]  # 3 "workers"
        pollers = [threading.Thread(target=vehicle_loop, args=(car,)) for car in cars]
        for thread in tickers + pollers:
            thread.start()
        for thread in pollers:
            thread.join()
        stop.set()
        for thread in tickers:
            thread.join()
        assert not errors, errors[:3]
        with ctx.session() as session:
            admitted = session.scalar(
                select(func.count())
                .select_from(Membership)
                .where(Membership.campaign_id == campaign["id"], Membership.admitted.is_(True))
            )
            stages = session.scalar(
                select(func.max(Membership.admitted_stage)).where(
                    Membership.campaign_id == campaign["id"]
                )
            )
        status = http.get(
            f"/api/v1/campaigns/{campaign['id']}", headers=auth(tokens["viewer"])
        ).json
        # Never more admitted than the current stage's share (10% → 50% → 100% of 40).
        assert admitted == {0: 4, 1: 20, 2: 40}[status["stage_index"]]
        assert stages == status["stage_index"]
        # Each vehicle's director targets listed its assignment until it reported; it
        # installed it once, and was counted once.
        assert status["counts"]["committed"] == len(assigned) == sum(assigned.values())
        audit = http.get("/api/v1/audit?limit=500", headers=auth(tokens["viewer"])).json["items"]
        advances = [e for e in audit if e["action"] == "campaign.advance"]
        assert len(advances) == status["stage_index"]  # no stage was advanced twice
    finally:
        server.shutdown()

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
    http: FlaskClient, ctx: ServerContext, fleet: list[SimVehicle], tokens: dict[str, str]
) -> None:
    cars = [v for v in fleet if v.hardware_id == "ecu-a"]
    campaign = create(http, tokens["operator"])
    http.post(f"/api/v1/campaigns/{campaign['id']}/start", headers=auth(tokens["operator"]))
    ctx.releases.index()  # warm the release cache, as a running server has it
    counts: dict[str, list[int]] = {"nothing": [], "assignment": []}
    for car in cars:
        with count_queries(ctx) as statements:
            response = http.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", json=car.manifest())
        counts["assignment" if response.json["assignments"] else "nothing"].append(len(statements))
    assert counts["assignment"] and counts["nothing"]
    # "nothing to do": one read (vehicle, installed images, "has an open membership?") and the
    # counter's compare-and-set; an assignment adds its query (+ one status update the first
    # time a campaign hands it out). Independent of fleet size.
    assert set(counts["nothing"]) == {2}, counts
    assert set(counts["assignment"]) <= {3, 4}, counts


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

        def vehicle_loop(car: SimVehicle) -> None:
            try:
                for _ in range(6):
                    answer = post(f"/api/v1/vehicles/{car.vehicle_id}/poll", car.manifest())
                    for envelope in answer["assignments"]:
                        with lock:
                            assigned[car.vehicle_id] = assigned.get(car.vehicle_id, 0) + 1
                        finish(http, car, envelope["signed"], "committed", published)
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
        # Each vehicle was handed its assignment until it reported, and counted once.
        assert status["counts"]["committed"] == len(assigned) == sum(1 for _ in assigned)
        audit = http.get("/api/v1/audit?limit=500", headers=auth(tokens["viewer"])).json["items"]
        advances = [e for e in audit if e["action"] == "campaign.advance"]
        assert len(advances) == status["stage_index"]  # no stage was advanced twice
    finally:
        server.shutdown()

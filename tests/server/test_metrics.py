"""``/metrics`` reports the whole server, not one gunicorn worker, and names nothing.

The real ``overdrive server run --workers 2`` (gunicorn) serves registrations, polls and
health checks from many threads at once, so that both workers answer some; every scrape, by
whichever worker, must report exactly the requests sent, the database's gauges once, and no
campaign or vehicle id. A worker killed mid-run leaves its counts in the totals (gunicorn
restarts it), and the private metrics directory is gone when the server stops.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from overdrive.server.app import create_app
from overdrive.server.config import ServerConfig
from overdrive.server.context import EXTENSION
from overdrive.server.migrate import upgrade
from overdrive.server.tokens import create_api_token, create_enroll_token
from tests.director_view import assignments as director_assignments
from tests.director_view import http_get
from tests.repo_fixtures import Published
from tests.server.conftest import vehicle_on
from tests.server.fleet import SimVehicle
from tests.server.test_server_cli import free_port

pytestmark = pytest.mark.slow

VEHICLES = 8
POLLS_EACH = 6


@dataclass
class Running:
    url: str
    process: subprocess.Popen[bytes]
    tmp: Path
    """The server's TMPDIR: its private metrics directory is made in here."""
    log: Path
    health_checks: int = 0
    """``/healthz`` requests answered to :meth:`wait_healthy`."""

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Connection": "close"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as e:
            with e:
                text, status = e.read().decode(), e.code
        return status, (json.loads(text) if text.startswith(("{", "[")) else text)

    def metrics_dirs(self) -> list[Path]:
        return sorted(self.tmp.glob("overdrive-metrics-*"))

    def served_by_worker(self) -> dict[int, float]:
        """HTTP requests counted so far in each worker's own file (pid → count), for every
        worker started so far, dead or alive."""
        counts: dict[int, float] = {}
        for path in self.metrics_dirs()[0].glob("counter_*.db"):
            pid = int(path.stem.split("_")[1])
            counts[pid] = 0
            for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
                if json.loads(key)[1] == "overdrive_http_requests_total":
                    counts[pid] = counts.get(pid, 0) + value
        return counts

    def wait_healthy(self, deadline: float) -> None:
        while True:
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    self.health_checks += 1
                    return
            except OSError:
                pass
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"server did not start\n{self.log.read_text()}"
            time.sleep(0.2)


@pytest.fixture
def gunicorn(published: Published, tmp_path: Path) -> Iterator[tuple[Running, dict[str, str]]]:
    """``overdrive server run --workers 2`` on SQLite, with an operator token and an
    enrollment token; yields the server and the secrets."""
    db = f"sqlite:///{tmp_path / 'metrics.db'}"
    upgrade(db)
    app = create_app(ServerConfig(db_url=db, tick_interval=0), start_ticker=False)
    ctx = app.extensions[EXTENSION]
    with ctx.transaction() as session:
        _t, operator = create_api_token(session, "metrics-operator", "operator")
        _e, enroll = create_enroll_token(session, None, uses=100)
    ctx.engine.dispose()
    port, tmp, log = free_port(), tmp_path / "tmp", tmp_path / "server.log"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    command = [
        *(sys.executable, "-m", "overdrive.cli", "server", "run", "--db", db),
        *("--storage", str(published.storage), *published.director_args()),
        *("--state-dir", str(tmp_path / "state"), "--port", str(port)),
        *("--workers", "2", "--threads", "4", "--tick-interval", "0", "--poll-interval", "60"),
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, env={**env, "TMPDIR": str(tmp)}, stdout=output, stderr=output
        )
    running = Running(f"http://127.0.0.1:{port}", process, tmp, log)
    try:
        running.wait_healthy(time.monotonic() + 60)
        yield running, {"operator": operator, "enroll": enroll}
    finally:
        if process.poll() is None:
            process.terminate()  # the gunicorn master: it stops its workers
            process.wait(30)


def _scrape(server: Running) -> tuple[str, dict[str, list[tuple[dict[str, str], float]]]]:
    status, text = server.request("GET", "/metrics")
    assert status == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return text, samples


def _total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(k) == v for k, v in labels.items())
    )


def test_metrics_are_the_whole_servers(
    gunicorn: tuple[Running, dict[str, str]], published: Published
) -> None:
    server, secrets = gunicorn
    call = server.request
    cars = [vehicle_on(published, f"metrics-car-{i}") for i in range(VEHICLES)]

    def register(car: SimVehicle) -> int:
        return call("POST", "/api/v1/vehicles/register", car.registration(secrets["enroll"]))[0]

    with ThreadPoolExecutor(VEHICLES) as pool:
        assert list(pool.map(register, cars)) == [201] * VEHICLES
    status, campaign = call(
        "POST",
        "/api/v1/campaigns",
        {"name": "metrics", "releases": {"ecu-a": "1.1"}, "policy": "canary"},
        secrets["operator"],
    )
    assert status == 201, campaign
    status, started = call(
        "POST", f"/api/v1/campaigns/{campaign['id']}/start", None, secrets["operator"]
    )
    assert status == 200 and started["counts"]["eligible"] == VEHICLES

    assignments = 0
    root = published.director_root.read_bytes()
    versions: dict[str, int | None] = {}

    def poll_and_check(car: SimVehicle) -> int:
        """Polls; how many images the director chains these polls signed assign."""
        handed = 0
        for _ in range(POLLS_EACH):
            status, answer = call("POST", f"/api/v1/vehicles/{car.vehicle_id}/poll", car.manifest())
            assert status == 200, answer
            version = answer.get("director", {}).get("version")
            if version != versions.get(car.vehicle_id):  # this poll signed a new chain
                versions[car.vehicle_id] = version
                handed += len(director_assignments(http_get(server.url), car.vehicle_id, root))
            assert call("GET", "/healthz")[0] == 200
        return handed

    rounds = 0
    while True:  # until both workers have answered some requests
        with ThreadPoolExecutor(VEHICLES) as pool:
            assignments += sum(pool.map(poll_and_check, cars))
        rounds += 1
        served = server.served_by_worker()
        if len([pid for pid, count in served.items() if count > 0]) >= 2:
            break
        assert rounds < 10, f"one worker served everything: {served}"

    polls = rounds * VEHICLES * POLLS_EACH
    text, samples = _scrape(server)
    assert _total(samples, "overdrive_polls_total") == polls
    assert _total(samples, "overdrive_http_requests_total", endpoint="vehicles.poll") == polls
    assert _total(samples, "overdrive_assignments_total") == assignments > 0
    assert _total(samples, "overdrive_http_requests_total", endpoint="vehicles.register") == (
        VEHICLES
    )
    healthz = polls + server.health_checks  # one after each poll, and the start-up probe's
    assert _total(samples, "overdrive_http_requests_total", endpoint="meta.healthz") == healthz
    assert (
        _total(samples, "overdrive_http_request_duration_seconds_count", endpoint="vehicles.poll")
        == polls
    )

    # Database gauges: reported once (not once per worker), as aggregates only.
    assert samples["overdrive_campaigns"].count(({"state": "running"}, 1.0)) == 1
    assert _total(samples, "overdrive_campaigns") == 1
    assert _total(samples, "overdrive_campaign_vehicles") == VEHICLES
    assert samples["overdrive_vehicles"] == [({}, float(VEHICLES))]
    assert samples["overdrive_database_up"] == [({}, 1.0)]
    for identifier in (campaign["id"], campaign["id"][:8], *(c.vehicle_id for c in cars)):
        assert identifier not in text
    labels = {name for series in samples.values() for found, _v in series for name in found}
    assert labels <= {"outcome", "type", "endpoint", "method", "status", "state", "admitted", "le"}

    # A worker dies: gunicorn starts another, and the dead one's counts stay in the totals.
    victim = max(served, key=lambda pid: served[pid])
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(server.served_by_worker()) < 3:
        assert time.monotonic() < deadline, f"no new worker\n{server.log.read_text()}"
        time.sleep(0.2)
    server.wait_healthy(deadline)
    _text, after = _scrape(server)
    assert _total(after, "overdrive_polls_total") == polls
    assert _total(after, "overdrive_http_requests_total", endpoint="meta.healthz") == healthz + 1

    directory = server.metrics_dirs()
    assert len(directory) == 1
    server.process.terminate()
    server.process.wait(30)
    assert not directory[0].exists(), "server run left its metrics directory behind"

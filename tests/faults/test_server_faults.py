"""Server faults: the real ``overdrive server run --workers 2`` (gunicorn) in a subprocess, real
HTTP from simulated vehicles (``tests/server/fleet.py``), and things going wrong under it.

* **A worker killed with SIGKILL mid-request.** One vehicle's event batch is left half-sent on a
  connection; the worker process holding that connection (found through /proc) is SIGKILLed
  while five other vehicles keep reporting. Vehicles retry failed requests with the same event
  ids. In the end every event sent is stored exactly once (rows in ``events``), every batch was
  acknowledged, and gunicorn has replaced the worker. SQLite, and PostgreSQL when
  ``OVERDRIVE_TEST_POSTGRES_URL`` is set.
* **PostgreSQL restarted during a campaign.** A private PostgreSQL (initdb into a temporary
  directory, as the ``postgres`` user, on a free port; the machine's shared server is never
  touched) backs the server; a running campaign's vehicles poll and report their update steps
  while PostgreSQL is stopped and started again. During the outage the server answers 5xx JSON
  errors (``/readyz`` 503) or drops connections — never a wrong answer; it recovers by itself
  (pool_pre_ping); the vehicles' retried events are stored exactly once and the campaign ends
  consistent: every membership committed, counts right, the campaign completes.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from overdrive.server.app import create_app
from overdrive.server.campaigns import tick
from overdrive.server.config import ServerConfig
from overdrive.server.context import EXTENSION, ServerContext
from overdrive.server.migrate import upgrade
from overdrive.server.models import Campaign, Event, Membership
from overdrive.server.tokens import create_api_token, create_enroll_token
from tests.director_view import assignments, http_get
from tests.repo_fixtures import Published
from tests.server.conftest import db_url, vehicle_on  # noqa: F401 (db_url is a fixture)
from tests.server.fleet import SimVehicle

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (gunicorn's workers, for its master)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.split("/")[2]))
    return sorted(found)


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server side of the loopback TCP connection from ``client_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                local, remote, inode = cols[1], cols[2], cols[9]
                if (
                    int(local.rsplit(":", 1)[1], 16) == server_port
                    and int(remote.rsplit(":", 1)[1], 16) == client_port
                ):
                    return inode
    return None


def process_holding(pids: list[int], server_port: int, client_port: int) -> int | None:
    inode = _socket_inode(server_port, client_port)
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return pid
    return None


# ------------------------------------------------------------------------------ the server


@dataclass
class Served:
    """``overdrive server run --workers 2`` in a subprocess, and a context on the same DB."""

    process: subprocess.Popen[bytes]
    url: str
    port: int
    ctx: ServerContext
    operator: str
    enroll: str
    log: Path

    def workers(self) -> list[int]:
        return children(self.process.pid)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def serve(db: str, published: Published, tmp_path: Path, workers: int = 2) -> Iterator[Served]:
    upgrade(db)
    ctx: ServerContext = create_app(
        ServerConfig(
            db_url=db,
            tick_interval=0,
            storage_url=str(published.storage),
            state_dir=tmp_path / "context-state",
        ),
        start_ticker=False,
    ).extensions[EXTENSION]
    with ctx.transaction() as session:
        _t, operator = create_api_token(session, "op", "operator")
        _e, enroll = create_enroll_token(session, None, uses=1000)
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "overdrive.cli", "server", "run",
                "--db", db, "--storage", str(published.storage),
                *published.director_args(),
                "--trusted-root", str(published.storage / "metadata" / "1.root.json"),
                "--state-dir", str(tmp_path / "server-state"),
                "--port", str(port), "--workers", str(workers),
                "--tick-interval", "0", "--poll-interval", "5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )  # fmt: skip
    served = Served(process, f"http://127.0.0.1:{port}", port, ctx, operator, enroll, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, served.output()
            with (
                contextlib.suppress(OSError, http.client.HTTPException),
                urllib.request.urlopen(f"{served.url}/readyz", timeout=2) as response,
            ):
                if response.status == 200 and len(served.workers()) == workers:
                    break
            assert time.monotonic() < deadline, "server did not start:\n" + served.output()
            time.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.terminate()  # gunicorn's master stops its workers
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        ctx.engine.dispose()


# ------------------------------------------------------------------------------ vehicles' HTTP


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when the request was sent
    received: float  # … and when its answer (or error) came back
    path: str
    status: int | None  # None: no HTTP answer (connection refused/reset, timeout)
    detail: str  # the error code, or the transport error's type


@dataclass
class Traffic:
    """Every answer the vehicles got."""

    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, sent: float, path: str, status: int | None, detail: str) -> None:
        with self.lock:
            self.answers.append(Answer(sent, time.monotonic(), path, status, detail))


def post_json(url: str, body: bytes, timeout: float = 10) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            raw = e.read()
            content_type = e.headers.get("Content-Type", "")
        assert content_type.startswith("application/json"), (e.code, content_type, raw[:300])
        data = json.loads(raw)
        assert set(data) == {"error"} and data["error"]["status"] == e.code, data
        return e.code, data


TRANSPORT_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)


def send_until_accepted(
    url: str,
    make_body: Callable[[], bytes],
    traffic: Traffic,
    *,
    deadline_s: float = 45,
) -> dict[str, Any]:
    """POST until a 2xx, as a vehicle does: on a transport error or a 5xx, back off briefly
    and send again (``make_body`` decides whether that is the same body: events are re-sent
    with their ids, polls are re-signed with a fresh counter). A 4xx is a test failure."""
    deadline = time.monotonic() + deadline_s
    path = url.split("/api/v1", 1)[-1]
    delay = 0.05
    while True:
        sent = time.monotonic()
        try:
            status, data = post_json(url, make_body())
        except TRANSPORT_ERRORS as e:
            traffic.note(sent, path, None, type(e).__name__)
        else:
            traffic.note(sent, path, status, "" if status < 400 else data["error"]["code"])
            if status < 300:
                return data
            assert status >= 500, (path, status, data)  # never refused: only failed
        assert time.monotonic() < deadline, f"{path}: no success within {deadline_s} s"
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def register(served: Served, vehicles: list[SimVehicle]) -> None:
    for vehicle in vehicles:
        status, data = post_json(
            f"{served.url}/api/v1/vehicles/register",
            json.dumps(vehicle.registration(served.enroll)).encode(),
        )
        assert status == 201, data


def stored_event_ids(ctx: ServerContext) -> list[tuple[str, str]]:
    with ctx.session() as session:
        return [tuple(row) for row in session.execute(select(Event.vehicle_id, Event.event_id))]  # type: ignore[misc]


# ============================================================================ worker SIGKILL


def half_sent_request(served: Served, path: str, body: bytes) -> socket.socket:
    """Open a connection and send the headers and half the body of a POST: a request in
    flight that the server cannot finish."""
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=10)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: len(body) // 2])
    return sock


def test_worker_killed_mid_request(
    db_url: str,  # noqa: F811
    published: Published,
    tmp_path: Path,
) -> None:
    vehicles = [vehicle_on(published, f"car-{i}") for i in range(6)]
    batches_per_vehicle, events_per_batch = 10, 4
    traffic = Traffic()
    with serve(db_url, published, tmp_path) as served:
        register(served, vehicles)
        workers_before = served.workers()
        sent: set[tuple[str, str]] = set()
        sent_lock = threading.Lock()
        acknowledged: list[int] = []
        progress = threading.Semaphore(0)

        def report(vehicle: SimVehicle, batches: int) -> None:
            for b in range(batches):
                ids = [f"{vehicle.vehicle_id}-{b}-{e}" for e in range(events_per_batch)]
                with sent_lock:
                    sent.update((vehicle.vehicle_id, i) for i in ids)
                body = json.dumps(
                    vehicle.events(*({"id": i, "type": "downloading"} for i in ids))
                ).encode()
                answer = send_until_accepted(
                    f"{served.url}/api/v1/vehicles/{vehicle.vehicle_id}/events",
                    lambda body=body: body,  # a retry re-sends the same ids
                    traffic,
                )
                assert answer["accepted"] + answer["duplicates"] == events_per_batch, answer
                acknowledged.append(1)
                progress.release()

        victim, others = vehicles[0], vehicles[1:]
        threads = [threading.Thread(target=report, args=(v, batches_per_vehicle)) for v in others]
        for thread in threads:
            thread.start()
        for _ in range(10):  # let the others get going, then strike mid-stream
            assert progress.acquire(timeout=30)

        # The victim's batch, half sent; find the worker process that holds the connection.
        ids = [f"{victim.vehicle_id}-inflight-{e}" for e in range(events_per_batch)]
        sent.update((victim.vehicle_id, i) for i in ids)
        body = json.dumps(victim.events(*({"id": i, "type": "downloading"} for i in ids))).encode()
        path = f"/api/v1/vehicles/{victim.vehicle_id}/events"
        sock = half_sent_request(served, path, body)
        client_port = sock.getsockname()[1]
        deadline = time.monotonic() + 10
        while (worker := process_holding(workers_before, served.port, client_port)) is None:
            assert time.monotonic() < deadline, "no worker took the connection"
            time.sleep(0.02)
        os.kill(worker, signal.SIGKILL)
        # The request dies with the worker: EOF or reset, never an answer.
        with sock, contextlib.suppress(ConnectionError, socket.timeout):
            assert sock.recv(1) == b""
        traffic.note(time.monotonic(), path, None, "killed")
        answer = send_until_accepted(f"{served.url}{path}", lambda: body, traffic)
        assert answer == {"accepted": events_per_batch, "duplicates": 0}
        report(victim, batches_per_vehicle)  # and the victim goes on reporting

        for thread in threads:
            thread.join(60)
            assert not thread.is_alive()
        assert len(acknowledged) == len(vehicles) * batches_per_vehicle

        # gunicorn replaced the killed worker.
        deadline = time.monotonic() + 30
        while not (len(served.workers()) == 2 and worker not in served.workers()):
            assert time.monotonic() < deadline, (worker, served.workers(), served.output())
            time.sleep(0.1)
        assert served.process.poll() is None

        stored = stored_event_ids(served.ctx)
        assert len(stored) == len(set(stored)) == len(sent)  # exactly once
        assert set(stored) == sent


# ============================================================================ PostgreSQL restart


@dataclass
class PrivatePostgres:
    bindir: Path
    root: Path
    port: int
    as_postgres: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        command = [
            *self.as_postgres,
            str(self.bindir / "pg_ctl"),
            "-D", str(self.root / "data"), "-l", str(self.root / "postgres.log"),
            "-w", "-t", "60", *args,
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, timeout=90)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off -c synchronous_commit=off -c max_connections=100"
        )
        self.pg_ctl("start", "-o", options)

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "fast")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of our own in a temporary directory, on a free port."""
    bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bindirs or not os.path.exists(f"{bindirs[-1]}/initdb"):
        pytest.skip("PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) not installed")
    bindir = Path(bindirs[-1])
    as_postgres: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as "postgres"
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        if not os.path.exists(runuser):
            pytest.skip("running as root without runuser to drop to the 'postgres' user")
        as_postgres = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="overdrive-pg-"))  # not under pytest's root-only tmp
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    server = PrivatePostgres(bindir, root, free_port(), as_postgres)
    try:
        init = subprocess.run(
            [*as_postgres, str(bindir / "initdb"), "-D", str(root / "data"), "-A", "trust",
             "-U", "postgres", "-E", "UTF8", "--no-sync"],
            capture_output=True, timeout=120,
        )  # fmt: skip
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.decode(errors='replace')[-500:]}")
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(root, ignore_errors=True)


STEPS = ("downloading", "downloaded", "installing", "installed", "booted", "committed")


def test_postgres_restart_during_campaign(
    private_postgres: PrivatePostgres, published: Published, tmp_path: Path
) -> None:
    vehicles = [vehicle_on(published, f"car-{i}", model="m1") for i in range(8)]
    traffic = Traffic()
    new_image = dict(published.images["ecu-a/1.1"])
    new_image.pop("path")
    with serve(private_postgres.url, published, tmp_path) as served:
        register(served, vehicles)
        operator = {
            "Authorization": f"Bearer {served.operator}",
            "Content-Type": "application/json",
        }

        def operator_post(path: str, body: Any) -> Any:
            request = urllib.request.Request(
                f"{served.url}/api/v1{path}", json.dumps(body).encode(), operator, method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())

        campaign = operator_post(
            "/campaigns", {"name": "restart", "releases": {"ecu-a": "1.1"}, "policy": "immediate"}
        )["id"]
        operator_post(f"/campaigns/{campaign}/start", {})

        root = published.director_root.read_bytes()
        halfway = threading.Barrier(len(vehicles) + 1, timeout=60)
        resume = threading.Event()
        errors: list[BaseException] = []

        def drive(vehicle: SimVehicle) -> None:
            try:
                poll_url = f"{served.url}/api/v1/vehicles/{vehicle.vehicle_id}/poll"
                answer = send_until_accepted(
                    poll_url, lambda: json.dumps(vehicle.manifest()).encode(), traffic
                )
                (assignment,) = assignments(http_get(served.url), vehicle.vehicle_id, root)
                assert assignment["campaign_id"] == campaign
                for n, step in enumerate(STEPS):
                    if n == 3:  # everyone is mid-update when the database goes away
                        halfway.wait()
                        resume.wait(60)
                    body = json.dumps(
                        vehicle.events(
                            {
                                "id": f"{vehicle.vehicle_id}-{step}",
                                "type": step,
                                "campaign_id": campaign,
                                "hardware_id": "ecu-a",
                            }
                        )
                    ).encode()
                    send_until_accepted(
                        f"{served.url}/api/v1/vehicles/{vehicle.vehicle_id}/events",
                        lambda body=body: body,
                        traffic,
                    )
                vehicle.image = new_image  # now running 1.1: nothing more to do
                answer = send_until_accepted(
                    poll_url, lambda: json.dumps(vehicle.manifest()).encode(), traffic
                )
                assert assignments(http_get(served.url), vehicle.vehicle_id, root) == [], answer
            except BaseException as e:
                errors.append(e)
                halfway.abort()
                raise

        threads = [threading.Thread(target=drive, args=(v,)) for v in vehicles]
        for thread in threads:
            thread.start()
        halfway.wait()

        private_postgres.stop()
        outage_started = time.monotonic()
        resume.set()  # the vehicles now report (and retry) against a server without database
        time.sleep(1.5)
        status, ready = _get(f"{served.url}/readyz")
        assert status == 503 and "database" in " ".join(ready["problems"]), ready
        private_postgres.start()
        outage_ended = time.monotonic()

        for thread in threads:
            thread.join(90)
            assert not thread.is_alive()
        assert not errors, errors
        assert _get(f"{served.url}/readyz")[0] == 200  # recovered by itself

        # While the database was down: only 5xx JSON errors (checked in post_json) or no answer.
        during = [a for a in traffic.answers if outage_started <= a.sent <= outage_ended]
        assert any(a.status is not None and a.status >= 500 for a in during), during
        assert all(a.status is None or a.status >= 500 for a in during), during
        # Once it was back, no request failed: stale pooled connections were replaced.
        after = [a for a in traffic.answers if a.sent > outage_ended]
        assert after and all(a.status is not None and a.status < 300 for a in after), [
            a for a in after if a.status is None or a.status >= 300
        ]

        # Exactly once, and the campaign agrees with what the vehicles reported.
        stored = stored_event_ids(served.ctx)
        expected = {(v.vehicle_id, f"{v.vehicle_id}-{s}") for v in vehicles for s in STEPS}
        assert len(stored) == len(set(stored)) and set(stored) == expected
        with served.ctx.session() as session:
            statuses = dict(
                session.execute(
                    select(Membership.vehicle_id, Membership.status).where(
                        Membership.campaign_id == campaign
                    )
                ).all()
            )
            per_type = dict(
                session.execute(select(Event.type, func.count()).group_by(Event.type)).all()
            )
        assert statuses == {v.vehicle_id: "committed" for v in vehicles}
        assert per_type == {step: len(vehicles) for step in STEPS}
        assert tick(served.ctx) == {campaign: "complete"}
        with served.ctx.session() as session:
            done = session.get(Campaign, campaign)
            assert done is not None and done.state == "completed"
        assert served.process.poll() is None


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())

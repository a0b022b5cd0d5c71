"""Poll benchmark: the production server (gunicorn) against 100,000 vehicles in PostgreSQL.

Setup (timed): a fresh database, the schema (Alembic), a small published TUF repository with
ecu-a 1.0 and 1.1 (+ delta from 1.0), a director root (``overdrive director init``, its own
storage and keys), 100,000 vehicles bulk-loaded with COPY (one ed25519 key each and one primary
ECU, ``<id>-primary`` on ecu-a, stored exactly as registration stores them; with ``--ecus N``
also N-1 secondaries with keys of their own, on hardware ids no campaign updates), and a running
campaign (ecu-a → 1.1) created and started through the operator API, whose first stage admits
10% of the fleet. Then ``overdrive server run --workers N --director-storage … --director-keys …``
(gunicorn, gthread) serves pre-signed polls (vehicle version manifests with one ECU version
report per ECU: the primary's signed by the vehicle key, each secondary's by its own) from a
load generator in another process (``wrk`` + Lua
if installed, else a Python generator) over keep-alive connections; client-side latency,
throughput and the CPU used by server, PostgreSQL, generator and everything else are reported
per scenario. An answer counts as an *assignment* when its director version differs from the
previous answer for that vehicle (the poll made the server sign a new per-vehicle chain:
targets, snapshot and timestamp: three signatures, and storing them), else as *nothing*;
the server's own ``overdrive_polls_total{outcome="assignment"}`` is read alongside.

a. ``nothing``: vehicles that are not admitted ("nothing to do" polls: no chain, only the
   time attestation),
b. ``assignment``: admitted vehicles, every poll signs a new chain: each vehicle reports
   ecu-a 1.0 and a factory image (0.9, in no repository) in turn, so what its director
   targets list (the 1.0→1.1 delta, or the full 1.1 bundle) changes on every poll,
e. ``assigned``: admitted vehicles that have their chain, reporting the same image again: it
   already lists their assignment, so nothing is re-signed (an admitted vehicle's steady state),
c. ``mixed``: the whole fleet in random order, the admitted 10% changing image as in b
   (≈10% of the polls sign a chain),
d. ``goal``: the mixed fleet offered at a fixed 1,000 polls/s (open loop, Python generator,
   latency from each request's due time), run when a–c show the server can reach it.

It also counts the SQL statements of single polls (in-process, Flask test client) with their
query plans, profiles polls in-process (where the CPU goes), and measures the cryptographic
work of a poll in-process (median µs to verify a manifest with 1 and 8 ECU reports, to sign a
time attestation and a one-target chain). Results go to ``bench/results/poll.md`` (see
``poll_report.py``), which ``bench/benchmarks_md.py`` copies into ``BENCHMARKS.md``. The
database, the server and the temporary files are removed at the end, also on Ctrl-C or an error.

    .venv/bin/python bench/poll.py                      # 100,000 vehicles, 20 s per scenario
    .venv/bin/python bench/poll.py --quick              # smoke run: 10,000 vehicles, 5 s
    .venv/bin/python bench/poll.py --workers 3 --concurrency 16 --duration 30
    .venv/bin/python bench/poll.py --pg postgresql://postgres@127.0.0.1:5432/test
    .venv/bin/python bench/poll.py --crypto-only        # only the cryptographic micro-measurement
    .venv/bin/python bench/poll.py --ecus 8             # 8-ECU vehicles → results/poll-ecus.md
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import hashlib
import io
import json
import logging
import math
import multiprocessing
import multiprocessing.pool
import os
import pstats
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import benchmarks_md
import poll_fleet
import poll_load
import poll_report
from poll_load import LoadResult
from poll_report import GOAL_RPS, Cpu, CryptoCost, Profile, QueryCount, Run

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "poll.md"
#: Where a run with ``--ecus N`` (N > 1) writes by default: beside the one-ECU figures.
RESULTS_ECUS = HERE / "results" / "poll-ecus.md"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
ADMITTED_SHARE = "10%"
POLICY = {
    "name": "bench-staged",
    "stages": [
        {
            "name": "canary",
            "share": ADMITTED_SHARE,
            "min_finished": "50%",
            "max_failure_rate": "5%",
            "success_threshold": "95%",
        },
        {
            "name": "all",
            "share": "100%",
            "min_finished": "50%",
            "max_failure_rate": "5%",
            "success_threshold": "95%",
        },
    ],
}
#: (gunicorn workers, threads per worker) tried in scenario a; the best is used for the rest.
SWEEP = ((2, 4), (2, 2), (2, 1), (3, 1), (4, 1))
WARM_UP_S = 3.0
CRYPTO_ITERATIONS = 4000
DIRECTOR_KEYS = ("director-root", "director-targets", "director-snapshot", "director-timestamp")
#: What a vehicle reports in a poll: its image again (``steady``), or the other image of
#: :attr:`Fleet.images` (``flip``: its director targets change, so the server signs a new chain).
STEADY, FLIP = "steady", "flip"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------- setup


@dataclass
class Fleet:
    size: int
    keyids: list[str]
    #: ecu-a 1.0 (what the bulk load installs) and a factory image in no repository
    images: list[poll_fleet.Image]
    counters: list[int]  # next manifest counter per vehicle
    ecus: int = 1  # ECUs per vehicle (the primary and ecus - 1 secondaries)
    admitted: list[int] = field(default_factory=list)  # indices with an assignment (shuffled)
    idle: list[int] = field(default_factory=list)  # the others (shuffled)
    admitted_set: set[int] = field(default_factory=set)
    installed: list[int] = field(default_factory=list)  # image index the server has per vehicle
    versions: dict[int, int] = field(default_factory=dict)  # director chain version (0: none)

    def refresh(self, db_url: str) -> None:
        """Read what the server stored: each vehicle's image and director chain version."""
        import psycopg

        by_sha = {image.sha256: i for i, image in enumerate(self.images)}
        self.installed = [0] * self.size
        self.versions = {}
        with psycopg.connect(db_url) as conn:
            for vid, sha in conn.execute(
                "SELECT vehicle_id, sha256 FROM installed_images WHERE hardware_id = %s",
                (poll_fleet.HARDWARE_ID,),
            ):
                self.installed[int(vid.removeprefix("veh-"))] = by_sha.get(sha, 0)
            for vid, version in conn.execute("SELECT vehicle_id, version FROM director_repos"):
                self.versions[int(vid.removeprefix("veh-"))] = int(version)

    def image_for(self, index: int, mode: str, rounds_ahead: int = 0) -> int:
        """The image index vehicle ``index`` reports ``rounds_ahead`` polls from now."""
        current = self.installed[index]
        if mode == FLIP and index in self.admitted_set:
            return current ^ ((rounds_ahead + 1) % 2)
        return current


@dataclass
class Setup:
    workdir: Path
    db_name: str
    db_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    server_wrapper: str | None = None  # a script run instead of ``-m overdrive.cli``

    @property
    def storage(self) -> Path:
        return self.workdir / "repo"

    @property
    def keys(self) -> Path:
        return self.workdir / "keys"

    @property
    def director_storage(self) -> Path:
        return self.workdir / "director"


@contextlib.contextmanager
def timed(setup: Setup, name: str) -> Iterator[None]:
    log(f"{name} …")
    start = time.perf_counter()
    yield
    setup.timings[name] = time.perf_counter() - start
    log(f"{name}: {setup.timings[name]:.1f} s")


def overdrive_cli(setup: Setup, *args: str | Path) -> None:
    command = [sys.executable, "-m", "overdrive.cli", *map(str, args)]
    env = {**os.environ, "OVERDRIVE_CACHE_DIR": str(setup.workdir / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed: {done.stderr}")


def make_image(path: Path, size: int, seed: int) -> Path:
    """A compressible, image-like file (random records and repeated text)."""
    rng = random.Random(seed)
    parts, total = [], 0
    while total < size:
        block = rng.randbytes(64) + b"overdrive-record " * rng.randint(1, 40)
        parts.append(block)
        total += len(block)
    path.write_bytes(b"".join(parts)[:size])
    return path


def build_repository(setup: Setup) -> list[poll_fleet.Image]:
    """keys → repo init → ecu-a 1.0, 1.1 (+ delta) → director init; returns ecu-a 1.0 and a
    factory image (0.9) that is in no repository."""
    for name in ("root", "targets", "snapshot", "timestamp", *DIRECTOR_KEYS):
        overdrive_cli(
            setup, "keys", "generate", name, "--dir", setup.keys, "--insecure-no-passphrase"
        )
    repo = ("--storage", setup.storage, "--keys", setup.keys)
    overdrive_cli(setup, "repo", "init", *repo)
    a10 = make_image(setup.workdir / "a10.img", 120_000, seed=1)
    data = bytearray(a10.read_bytes())
    rng = random.Random(2)
    for _ in range(8):  # a patch release: a few local edits
        at = rng.randrange(len(data))
        data[at : at + 16] = rng.randbytes(16)
    a11 = setup.workdir / "a11.img"
    a11.write_bytes(bytes(data))
    common = (*repo, "--quiet", "--chunk-size", "64KiB")
    overdrive_cli(
        setup, "release", "add", a10, "--hardware-id", "ecu-a", "--version", "1.0", *common
    )
    overdrive_cli(
        setup,
        "release",
        "add",
        a11,
        "--hardware-id",
        "ecu-a",
        "--version",
        "1.1",
        "--delta-from",
        "1.0",
        *common,
    )
    overdrive_cli(
        setup, "director", "init", "--storage", setup.director_storage, "--keys", setup.keys
    )
    a10_bytes = a10.read_bytes()
    factory = hashlib.sha256(b"factory image 0.9").hexdigest()
    return [
        poll_fleet.Image("1.0", hashlib.sha256(a10_bytes).hexdigest(), 1, len(a10_bytes)),
        poll_fleet.Image("0.9", factory, 0, len(a10_bytes)),
    ]


def pg_url(base: str, database: str) -> str:
    head, _, tail = base.rpartition("/")
    query = tail.partition("?")[2]
    return f"{head}/{database}" + (f"?{query}" if query else "")


def admin_sql(conninfo: str, *statements: str) -> None:
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def analyze_director_tables(conninfo: str) -> None:
    """ANALYZE the director's tables (``director_*``), empty at setup."""
    import psycopg

    with psycopg.connect(conninfo, autocommit=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename LIKE 'director%'"
            )
        ]
        if names:
            conn.execute(("ANALYZE " + ", ".join(names)).encode())


def drop_database(base: str, name: str) -> None:
    admin_sql(base, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def generate_keys(
    pool: multiprocessing.pool.Pool, count: int, ecus: int = 1
) -> list[tuple[str, str, list[str]]]:
    step = 2000
    chunks = [(range(i, min(count, i + step)), ecus) for i in range(0, count, step)]
    return [item for part in pool.starmap(poll_fleet.public_keys, chunks) for item in part]


def in_process_app(setup: Setup, state: str) -> tuple[Any, Any]:
    """The server's Flask app in this process (same code and config as the workers)."""
    from overdrive.server.app import create_app
    from overdrive.server.config import ServerConfig
    from overdrive.server.context import EXTENSION

    config = ServerConfig(
        db_url=setup.db_url,
        storage_url=str(setup.storage),
        director_storage=str(setup.director_storage),
        director_keys=setup.keys,
        state_dir=setup.workdir / state,
        tick_interval=0,
    )
    app = create_app(config, start_ticker=False)
    return app, app.extensions[EXTENSION]


class _FirstError(logging.Handler):
    """Keeps the first line of the first exception the in-process server logs (not the
    100,000-parameter SQL statement that follows it)."""

    def __init__(self) -> None:
        super().__init__()
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is None and record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            self.first = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"


def start_campaign(setup: Setup, fleet: Fleet) -> list[str]:
    """Create and start the campaign through the operator API (in-process, Flask test client).

    Returns notes for the report. If the server cannot start one campaign over the whole fleet
    (before 1681d64, ``campaigns.start`` checked for clashes with one ``IN (…)`` list of all
    eligible vehicles, and PostgreSQL takes at most 65,535 bind parameters), the failed draft is
    aborted and the fleet is covered by one campaign per vehicle model instead (same policy, same
    share admitted), and the report says so.
    """
    from sqlalchemy import select

    from overdrive.server.models import Membership
    from overdrive.server.tokens import create_api_token

    app, ctx = in_process_app(setup, "campaign-state")
    server_log = logging.getLogger("overdrive.server")
    catcher = _FirstError()
    server_log.addHandler(catcher)
    server_log.propagate = False
    notes: list[str] = []
    try:
        with ctx.transaction() as session:
            _token, secret = create_api_token(session, "bench-operator", "operator")
        http = app.test_client()
        headers = {"Authorization": f"Bearer {secret}"}

        def campaign(name: str, flt: dict[str, Any] | None, label: str) -> int:
            body = {"name": name, "releases": {"ecu-a": "1.1"}, "policy": POLICY}
            if flt:
                body["filter"] = flt
            with timed(setup, f"campaign create (API){label}"):
                response = http.post("/api/v1/campaigns", json=body, headers=headers)
            if response.status_code != 201:
                raise RuntimeError(f"campaign create: {response.status_code} {response.json}")
            campaign_id = response.json["id"]
            step = f"campaign start (API){label}"
            with timed(setup, step):
                response = http.post(f"/api/v1/campaigns/{campaign_id}/start", headers=headers)
            if response.status_code != 200:
                setup.timings[f"{step}: failed, HTTP {response.status_code}"] = setup.timings.pop(
                    step
                )
                http.post(f"/api/v1/campaigns/{campaign_id}/abort", headers=headers)
                return int(response.status_code)
            log(f"campaign {campaign_id}: {response.json['counts']}")
            return 200

        status = campaign("ecu-a to 1.1", None, f": {fleet.size:,} vehicles eligible")
        if status != 200:
            cause = catcher.first or f"HTTP {status}"
            log(f"campaign start failed ({cause}); one campaign per model instead")
            notes.append(
                f"**Server limit found:** starting one campaign over all {fleet.size:,} vehicles "
                f"fails with HTTP {status} (`{cause}`): `server/campaigns.py::start` checks for "
                "clashing memberships with a single `IN (…)` list of every eligible vehicle id, "
                "and PostgreSQL accepts at most 65,535 bind parameters per statement. The "
                "benchmark therefore starts one campaign per vehicle model (two campaigns, "
                "same policy, each under the limit); polls see the same work either way."
            )
            for model in ("m1", "m2"):
                status = campaign(f"ecu-a to 1.1 ({model})", {"model": [model]}, f": model {model}")
                if status != 200:
                    raise RuntimeError(
                        f"campaign start for {model}: HTTP {status}: {catcher.first}"
                    )
        with ctx.session() as session:
            admitted = {
                int(vid.removeprefix("veh-"))
                for vid in session.scalars(
                    select(Membership.vehicle_id).where(Membership.admitted.is_(True))
                )
            }
    finally:
        server_log.removeHandler(catcher)
        server_log.propagate = True
        ctx.engine.dispose()
    rng = random.Random(7)
    fleet.admitted = sorted(admitted)
    fleet.admitted_set = set(admitted)
    fleet.idle = [i for i in range(fleet.size) if i not in admitted]
    rng.shuffle(fleet.admitted)
    rng.shuffle(fleet.idle)
    return notes


# ---------------------------------------------------------------------------- manifests


def sign_requests(
    pool: multiprocessing.pool.Pool,
    fleet: Fleet,
    vehicles: Sequence[int],
    count: int,
    mode: str,
) -> list[bytes]:
    """``count`` pre-signed polls, round after round over ``vehicles`` (counters increase);
    ``mode`` says which image each poll reports (:data:`STEADY` or :data:`FLIP`), from what
    :meth:`Fleet.refresh` read."""
    rounds = math.ceil(count / len(vehicles))
    jobs: list[tuple[int, str, int, int]] = []
    for r in range(rounds):
        for index in vehicles[: count - len(jobs)]:
            image = fleet.image_for(index, mode, r)
            jobs.append((index, fleet.keyids[index], fleet.counters[index] + r, image))
    for index, _keyid, counter, _image in jobs:
        fleet.counters[index] = max(fleet.counters[index], counter + 1)
    stamp = poll_fleet.now_iso()
    images = [image.installed() for image in fleet.images]
    step = 2000
    parts = pool.starmap(
        poll_fleet.sign_chunk,
        [(jobs[i : i + step], images, stamp, fleet.ecus) for i in range(0, len(jobs), step)],
    )
    return [line for part in parts for line in part]


def sign_one(fleet: Fleet, index: int, mode: str = STEADY) -> tuple[str, bytes]:
    """One poll of vehicle ``index``, assumed to be accepted (in-process use)."""
    counter = fleet.counters[index]
    fleet.counters[index] += 1
    image = fleet.image_for(index, mode)
    fleet.installed[index] = image
    images = [image.installed() for image in fleet.images]
    line = poll_fleet.sign_chunk(
        [(index, fleet.keyids[index], counter, image)], images, poll_fleet.now_iso(), fleet.ecus
    )[0]
    path, _, body = line.partition(b" ")
    return path.decode(), body


# ---------------------------------------------------------------------- in-process checks


def count_queries(setup: Setup, fleet: Fleet) -> list[QueryCount]:
    """SQL statements of single polls, in-process (the server's code, Flask test client)."""
    from sqlalchemy import event

    app, ctx = in_process_app(setup, "count-state")
    engine = ctx.engine
    captured: list[tuple[str, Any]] = []
    pings = [0]

    def before(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        captured.append((statement, params))

    original_ping = engine.dialect.do_ping

    def ping(dbapi_connection: Any) -> bool:
        pings[0] += 1
        return bool(original_ping(dbapi_connection))

    engine.dialect.do_ping = ping
    direct = []  # statements on the poll path's own connections

    def traced(statement: str, params: Any) -> None:
        captured.append((statement, params))
        direct.append(statement)

    if ctx.direct is not None:
        ctx.direct.trace = traced
    # A transaction block on the poll connection (BEGIN … COMMIT) is no traced statement: count
    # psycopg's transaction() blocks instead (in this process only; the server is unchanged).
    import psycopg

    transactions = [0]
    original_transaction = psycopg.Connection.transaction

    def transaction(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Only the poll connection's (not, say, psycopg's type lookup on a new engine connection).
        if ctx.direct is not None and self is ctx.direct.current():
            transactions[0] += 1
        return original_transaction(self, *args, **kwargs)

    psycopg.Connection.transaction = transaction  # type: ignore[method-assign]
    http = app.test_client()
    results = []
    try:
        fleet.refresh(setup.db_url)
        path, body = sign_one(fleet, fleet.admitted[-2])  # warm: release index, pool
        http.post(path, data=body, content_type="application/json")
        path, body = sign_one(fleet, fleet.admitted[-2], FLIP)
        http.post(path, data=body, content_type="application/json")
        cases = [
            ("nothing to do", fleet.idle[-1], STEADY),
            ("nothing to do, again", fleet.idle[-1], STEADY),
            (
                "assignment, first (membership pending → assigned; chain v1)",
                fleet.admitted[-1],
                STEADY,
            ),
            ("assigned, unchanged (same image: no new chain)", fleet.admitted[-1], STEADY),
            ("assignment changed (other image: new chain)", fleet.admitted[-1], FLIP),
        ]
        event.listen(engine, "before_cursor_execute", before)
        for case, index, mode in cases:
            captured.clear()
            direct.clear()
            pings[0] = transactions[0] = 0
            previous = fleet.versions.get(index, 0)
            path, body = sign_one(fleet, index, mode)
            response = http.post(path, data=body, content_type="application/json")
            statements = list(captured)
            answer = response.json or {}
            version = int((answer.get("director") or {}).get("version", 0))
            fleet.versions[index] = version
            results.append(
                QueryCount(
                    case=case,
                    statements=[normalise_sql(s) for s, _ in statements],
                    pings=pings[0],
                    status=response.status_code,
                    director_version=version,
                    new_chain=version != previous,
                    plans=explain(engine, statements),
                    autocommit=bool(direct) and len(direct) == len(statements),
                    transactions=transactions[0],
                    batched=[
                        len(params)
                        for _, params in statements
                        if isinstance(params, list) and len(params) > 1
                    ],
                    raw=statements,
                )
            )
        event.remove(engine, "before_cursor_execute", before)
    finally:
        psycopg.Connection.transaction = original_transaction  # type: ignore[method-assign]
        engine.dialect.do_ping = original_ping
        engine.dispose()
    return results


def explain_again(setup: Setup, queries: list[QueryCount]) -> None:
    """The plans of the same statements once the load has filled the director tables (the
    ones at setup are of nearly empty tables)."""
    _app, ctx = in_process_app(setup, "explain-state")
    try:
        for q in queries:
            q.plans_after = explain(ctx.engine, q.raw)
    finally:
        ctx.engine.dispose()


def normalise_sql(statement: str) -> str:
    text = " ".join(statement.split())
    text = re.sub(r"::[A-Z]+(?: WITH TIME ZONE)?", "", text)  # psycopg casts: %(x)s::VARCHAR
    return re.sub(r"^SELECT .*? FROM", "SELECT … FROM", text, count=1)


def explain(engine: Any, statements: Sequence[tuple[str, Any]]) -> list[str]:
    plans = []
    with engine.connect() as conn:
        for statement, params in statements:
            if isinstance(params, list):  # executemany: the plan of its first row
                params = params[0]
            rows = conn.exec_driver_sql(f"EXPLAIN {statement}", params).all()
            nodes = [
                re.sub(r"\s+\(cost=.*", "", row[0]).strip().removeprefix("->").strip()
                for row in rows
                if "Scan" in row[0]
            ]
            plans.append("; ".join(nodes) or re.sub(r"\s+\(cost=.*", "", rows[0][0]).strip())
        conn.rollback()
    return plans


#: Server functions timed per poll (wall clock, in-process): (module, object, attribute) → label.
#: ``poll`` imported the module-level ones by name, so they are wrapped in its namespace.
HOT_FUNCTIONS = {
    ("overdrive.server.poll", None, "poll"): "whole poll()",
    ("overdrive.server.poll", None, "verify_signed"): "manifest signature",
    ("overdrive.server.poll", None, "check_reports"): "ECU reports",
    ("overdrive.server.poll", None, "_director_targets"): "assignment lookup",
    ("overdrive.server.poll", None, "publish"): "publish (sign + store)",
    ("overdrive.server.director", "Director", "sign_chain"): "sign chain",
    ("overdrive.server.director", "Director", "attest_time"): "time attestation",
    ("overdrive.server.poll", "_PsycopgStatements", "_execute"): "SQL (poll statements)",
}


@contextlib.contextmanager
def timing_hot_functions() -> Iterator[dict[str, float]]:
    """Wrap :data:`HOT_FUNCTIONS` (in this process only) to add up their wall time, in s."""
    import importlib

    totals: dict[str, float] = {}
    restore = []

    def wrap(label: str, fn: Any) -> Any:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

        return timed_call

    for (module_name, owner_name, attribute), label in HOT_FUNCTIONS.items():
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        original = getattr(owner, attribute)
        setattr(owner, attribute, wrap(label, original))
        restore.append((owner, attribute, original))
    # Each statement by name, and any transaction block's BEGIN and COMMIT (psycopg's
    # ``Connection.transaction``).
    import psycopg

    statements = importlib.import_module("overdrive.server.poll")._PsycopgStatements
    execute, transaction = statements._execute, psycopg.Connection.transaction

    def execute_by_name(self: Any, name: str, params: Any) -> Any:
        return wrap(f"SQL: {name}", execute)(self, name, params)

    @contextlib.contextmanager
    def timed_transaction(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        block = transaction(self, *args, **kwargs)
        start = time.perf_counter()
        entered = block.__enter__()
        totals["SQL: BEGIN"] = totals.get("SQL: BEGIN", 0.0) + time.perf_counter() - start
        try:
            yield entered
        except BaseException as e:
            if not block.__exit__(type(e), e, e.__traceback__):
                raise
        else:
            start = time.perf_counter()
            block.__exit__(None, None, None)
            totals["SQL: COMMIT"] = totals.get("SQL: COMMIT", 0.0) + time.perf_counter() - start

    restore.append((statements, "_execute", statements._execute))
    statements._execute = lambda self, name, params: execute_by_name(self, name, params)
    restore.append((psycopg.Connection, "transaction", transaction))
    psycopg.Connection.transaction = timed_transaction  # type: ignore[method-assign]
    # The fast path calls ``poll`` by the name it imported.
    fastpath = importlib.import_module("overdrive.server.fastpath")
    restore.append((fastpath, "poll", fastpath.poll))
    fastpath.poll = importlib.import_module("overdrive.server.poll").poll  # type: ignore[attr-defined]
    try:
        yield totals
    finally:
        for owner, attribute, original in reversed(restore):
            setattr(owner, attribute, original)


def profile_polls(setup: Setup, fleet: Fleet, count: int) -> list[Profile]:
    """CPU per poll with the WSGI app called directly (one thread), a cProfile split, and the
    wall time per poll of the server's main steps (:data:`HOT_FUNCTIONS`, timed by wrappers).

    Three kinds: idle vehicles ("nothing to do"), admitted vehicles reporting another image
    (their director targets change: a new chain), and admitted vehicles reporting the same image
    again (their chain already lists the assignment). The admitted vehicles are polled once
    first (unmeasured), so that both kinds start from a vehicle that has its chain."""
    app, ctx = in_process_app(setup, "profile-state")
    results = []
    per_kind = 3 * count + 20
    try:
        fleet.refresh(setup.db_url)
        admitted = [i for i in fleet.admitted if fleet.versions.get(i, 0) == 0][: 2 * per_kind]
        for index in admitted:
            call_wsgi(app, *sign_one(fleet, index))
        analyze_director_tables(setup.db_url)  # see Bench.warm_up
        kinds = (
            ("nothing to do", fleet.idle[:per_kind], STEADY),
            ("assignment (new chain)", admitted[:per_kind], FLIP),
            ("assigned, unchanged", admitted[per_kind:], STEADY),
        )
        for kind, vehicles, mode in kinds:
            requests = [sign_one(fleet, vehicles[i % len(vehicles)], mode) for i in range(per_kind)]
            for path, body in requests[:20]:  # warm up
                call_wsgi(app, path, body)
            measured = requests[20 : 20 + count]
            start = time.process_time()
            for path, body in measured:
                call_wsgi(app, path, body)
            cpu_ms = (time.process_time() - start) / count * 1000
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            for path, body in requests[20 + count : 20 + 2 * count]:
                call_wsgi(app, path, body)
            profiler.disable()
            with timing_hot_functions() as totals:
                wall = time.perf_counter()
                for path, body in requests[20 + 2 * count :]:
                    call_wsgi(app, path, body)
                wall = time.perf_counter() - wall
            hot = {label: seconds / count * 1000 for label, seconds in totals.items()}
            hot["whole request"] = wall / count * 1000
            results.append(Profile(kind, cpu_ms, split_profile(profiler), hot))
    finally:
        ctx.engine.dispose()
    return results


def call_wsgi(app: Any, path: str, body: bytes) -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    status: list[str] = []

    def start_response(line: str, _headers: Any, _exc: Any = None) -> None:
        status.append(line)

    b"".join(app.wsgi_app(environ, start_response))
    if not status[0].startswith("200"):
        raise RuntimeError(f"in-process poll {path}: {status[0]}")


def _category(filename: str, name: str) -> str | None:
    """A package for a profiled function; None for builtins (charged to their caller)."""
    if filename == "~":
        return None
    for needle, category in (
        ("/sqlalchemy/", "SQLAlchemy"),
        ("/psycopg", "psycopg"),
        ("/flask/", "Flask/Werkzeug"),
        ("/werkzeug/", "Flask/Werkzeug"),
        ("/tuf/", "python-tuf"),
        ("/securesystemslib/", "crypto"),
        ("/cryptography/", "crypto"),
        ("/overdrive/envelope", "crypto"),
        ("/json/", "JSON"),
        ("/server/", "overdrive"),
        ("/overdrive/", "overdrive"),
        ("/rollout_policies/", "overdrive"),
    ):
        if needle in filename:
            return category
    return "other"


def split_profile(profiler: cProfile.Profile) -> dict[str, float]:
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    totals: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, tottime, _ct, callers) in stats.items():
        category = _category(filename, name)
        if category is not None:
            totals[category] = totals.get(category, 0.0) + tottime
            continue
        # A builtin (C) function: charge it to its callers' packages, by their share of calls.
        if "json" in name or "loads" in name or "dumps" in name:
            totals["JSON"] = totals.get("JSON", 0.0) + tottime
            continue
        caller_time = sum(v[2] for v in callers.values()) or 1.0
        for (cfile, _cl, cname), values in callers.items():
            owner = _category(cfile, cname) or "other"
            totals[owner] = totals.get(owner, 0.0) + tottime * values[2] / caller_time
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}


# ------------------------------------------------------------------- cryptographic cost


def _median_us(fn: Any, iterations: int) -> tuple[float, float]:
    """Median and 90th percentile µs of ``fn()`` (each call timed with ``perf_counter``)."""
    for _ in range(min(100, iterations)):  # warm up
        fn()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.9)] * 1e6


def crypto_costs(setup: Setup, iterations: int) -> list[CryptoCost]:
    """Per-poll cryptographic work, in this process (one thread): verifying a vehicle version
    manifest as the server does (``vehicle_key_from_text`` and ``verify_signed`` of the
    manifest with the vehicle key, then ``check_reports``: one verification per ECU report),
    signing a time attestation and signing a one-target chain (``Director.attest_time``,
    ``sign_chain``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from securesystemslib.signer import CryptoSigner

    from overdrive.envelope import sign_envelope
    from overdrive.server.director import Director
    from overdrive.server.manifest import check_reports
    from overdrive.server.vehicles import vehicle_key_from_text, verify_signed
    from overdrive.uptane import (
        VEHICLE_MANIFEST,
        DirectorEntry,
        director_targets,
        ecu_report,
        installed_image,
    )

    def public(signer: CryptoSigner) -> dict[str, Any]:
        return {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}

    vid = "veh-000042"
    nonce = poll_fleet.nonce(42)
    now = dt.datetime.now(dt.UTC)
    image = installed_image(None, 120_000, "ab" * 32, "1.0", 1)

    def manifest(ecu_count: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """(stored public key, stored ecus, signed manifest) of a vehicle with ``ecu_count``
        ECUs: the primary (the vehicle key) and secondaries with keys of their own."""
        primary = CryptoSigner.generate_ed25519()
        ecus: dict[str, Any] = {f"{vid}-primary": {"hardware_id": "ecu-a", "primary": True}}
        signers = {f"{vid}-primary": primary}
        for k in range(1, ecu_count):
            signer = CryptoSigner.generate_ed25519()
            serial = f"{vid}-ecu{k}"
            ecus[serial] = {
                "hardware_id": f"ecu-{k}",
                "primary": False,
                "public_key": public(signer),
            }
            signers[serial] = signer
        reports = {
            serial: sign_envelope(
                ecu_report(
                    ecu_serial=serial,
                    hardware_id=ecus[serial]["hardware_id"],
                    nonce=nonce,
                    counter=7,
                    image=image,
                    now=now,
                ),
                signer,
            )
            for serial, signer in signers.items()
        }
        payload = {
            "_type": VEHICLE_MANIFEST,
            "vehicle_id": vid,
            "primary_ecu_serial": f"{vid}-primary",
            "counter": 7,
            "timestamp": poll_fleet.now_iso(),
            "nonce": nonce,
            "ecu_version_reports": reports,
            **poll_fleet.STATUS,
        }
        envelope = json.loads(json.dumps(sign_envelope(payload, primary)))  # as received
        return json.dumps(public(primary)), ecus, envelope

    def verifier(ecu_count: int) -> Any:
        key_text, ecus, envelope = manifest(ecu_count)

        def verify() -> None:
            keys = vehicle_key_from_text(key_text)  # what server/poll.poll does
            payload = verify_signed(keys, vid, envelope, VEHICLE_MANIFEST)
            reports = check_reports(
                payload["ecu_version_reports"],
                primary=payload["primary_ecu_serial"],
                nonce=nonce,
                vehicle_keys=keys,
                ecus=ecus,
                counters={},
            )
            assert len(reports.known) == ecu_count

        return verify

    director = Director.open(str(setup.director_storage), setup.keys)
    targets = director_targets(
        [
            DirectorEntry(
                f"{vid}-primary",
                "ecu-a",
                "ecu-a/1.1/delta-from-" + "ab" * 6 + ".bundle",
                23_456,
                {"sha256": "cd" * 32},
                2,
                "1.1",
                "3f2a9c1e",
                [],
            )
        ]
    )
    chain = director.sign_chain(vid, targets, 3, now)
    chain_bytes = len(chain.targets) + len(chain.snapshot) + len(chain.timestamp)
    raw_key = Ed25519PrivateKey.generate()
    raw_public = raw_key.public_key()
    message = json.dumps(manifest(1)[2]["signed"]).encode()
    raw_sig = raw_key.sign(message)
    signers = director._signers  # the online keys the server signs with
    cases: list[tuple[str, Any, int, str]] = [
        ("verify a vehicle version manifest, 1 ECU report", verifier(1), iterations,
         "2 ed25519 verifications (manifest + report), key parsing, canonical JSON, report checks"),
        ("verify a vehicle version manifest, 8 ECU reports", verifier(8), iterations,
         "9 ed25519 verifications (manifest + 8 reports; 7 secondaries with keys of their own)"),
        ("sign a time attestation (`Director.attest_time`)",
         lambda: director.attest_time(nonce, now), iterations,
         f"{len(signers['timestamp'])} ed25519 signature(s) (timestamp key), canonical JSON"),
        ("sign a per-vehicle chain, 1 target (`Director.sign_chain`)",
         lambda: director.sign_chain(vid, targets, 3, now), max(500, iterations // 2),
         f"3 ed25519 signatures via python-tuf `Metadata.sign` + `to_bytes`; {chain_bytes:,} bytes"),
        ("reference: one raw ed25519 signature (`cryptography`)",
         lambda: raw_key.sign(message), iterations, f"{len(message)}-byte message"),
        ("reference: one raw ed25519 verification (`cryptography`)",
         lambda: raw_public.verify(raw_sig, message), iterations, f"{len(message)}-byte message"),
    ]  # fmt: skip
    results = []
    for label, fn, count, note in cases:
        median, p90 = _median_us(fn, count)
        results.append(CryptoCost(label, median, p90, count, note))
        log(f"  {label}: median {median:.0f} µs, p90 {p90:.0f} µs ({count:,} iterations)")
    return results


# ---------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``overdrive server run --workers N`` (gunicorn) in its own process group."""

    def __init__(self, setup: Setup, workers: int, threads: int) -> None:
        self.setup, self.workers, self.threads = setup, workers, threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = setup.workdir / f"server-{workers}w{threads}t.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # A wrapper script (``--server-wrapper``) runs the same CLI after patching something in,
        # to measure a change to the server without editing it.
        entry = (
            [self.setup.server_wrapper] if self.setup.server_wrapper else ["-m", "overdrive.cli"]
        )
        command = [
            sys.executable,
            *entry,
            "server",
            "run",
            "--db",
            self.setup.db_url,
            "--storage",
            str(self.setup.storage),
            "--director-storage",
            str(self.setup.director_storage),
            "--director-keys",
            str(self.setup.keys),
            "--state-dir",
            str(self.setup.workdir / f"server-state-{self.workers}-{self.threads}"),
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
            "--port",
            str(self.port),
            "--tick-interval",
            "0",
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while True:
            with (
                contextlib.suppress(OSError, urllib.error.HTTPError),
                urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response,
            ):
                if response.status == 200 and len(self.worker_pids()) >= self.workers:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # our own process group only
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def worker_pids(self) -> list[int]:
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            return [int(x) for x in children.read_text().split()]
        return []


@contextlib.contextmanager
def running(setup: Setup, workers: int, threads: int) -> Iterator[Server]:
    server = Server(setup, workers, threads)
    try:
        log(f"starting the server: {workers} gunicorn workers × {threads} threads")
        server.start()
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------------ CPU

TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _postgres_cpu(db_name: str) -> float:
    """Backends of our database, plus the WAL writer, checkpointer and background writer."""
    total = 0.0
    shared = ("walwriter", "checkpointer", "background writer")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres:") and (
            f" {db_name} " in title or any(title.rstrip().endswith(s) for s in shared)
        ):
            total += _process_cpu(int(entry.name))
    return total


def _stat_ticks() -> list[int]:
    with open("/proc/stat") as f:
        # user nice system idle iowait irq softirq steal guest guest_nice
        return [int(x) for x in f.readline().split()[1:9]]


def _machine_busy() -> float:
    ticks = _stat_ticks()
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS  # all but idle and iowait


def _steal() -> float:
    return _stat_ticks()[7] / TICKS


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_snapshot(server: Server, db_name: str) -> Cpu:
    pids = server.worker_pids() + ([server.process.pid] if server.process else [])
    return Cpu(
        wall=time.monotonic(),
        server=sum(_process_cpu(pid) for pid in pids),
        postgres=_postgres_cpu(db_name),
        generator=_children_cpu(),
        machine=_machine_busy(),
        steal=_steal(),
    )


def cpu_delta(before: Cpu, after: Cpu) -> Cpu:
    return Cpu(
        wall=after.wall - before.wall,
        server=after.server - before.server,
        postgres=after.postgres - before.postgres,
        generator=after.generator - before.generator,
        machine=after.machine - before.machine,
        steal=after.steal - before.steal,
    )


def background_load(seconds: float = 2.0) -> float:
    """Cores busy while this benchmark does nothing (other people's work)."""
    before, start = _machine_busy(), time.monotonic()
    time.sleep(seconds)
    return (_machine_busy() - before) / (time.monotonic() - start)


# -------------------------------------------------------------------------------- scenarios

_ASSIGNMENT_METRIC = re.compile(
    r'^overdrive_polls_total\{outcome="assignment"\} ([0-9.e+]+)$', re.MULTILINE
)


def server_assignment_polls(server: Server) -> float | None:
    """The server's count of polls that signed a chain assigning something (all workers)."""
    try:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except (OSError, urllib.error.HTTPError):
        return None
    found = _ASSIGNMENT_METRIC.search(text)
    return float(found.group(1)) if found else 0.0


class Bench:
    def __init__(
        self, args: argparse.Namespace, setup: Setup, fleet: Fleet, pool: multiprocessing.pool.Pool
    ) -> None:
        self.args, self.setup, self.fleet, self.pool = args, setup, fleet, pool
        self.use_wrk = poll_load.wrk_path() is not None and not args.no_wrk
        #: polls/s per scenario: sizes the pre-signed batches (default: the highest seen)
        self.rate_estimates: dict[str, float] = {}
        self.serial = 0
        self.mixed = list(range(fleet.size))
        random.Random(11).shuffle(self.mixed)

    def rate_estimate(self, scenario: str) -> float:
        return self.rate_estimates.get(scenario, max(self.rate_estimates.values(), default=3000.0))

    def vehicles(self, scenario: str) -> list[int]:
        if scenario == "nothing":
            return self.fleet.idle
        if scenario == "assigned":  # those whose chain already lists their assignment
            listed = [i for i in self.fleet.admitted if self.fleet.versions.get(i, 0)]
            return listed or self.fleet.admitted
        if scenario == "assignment":
            return self.fleet.admitted
        return self.mixed

    @staticmethod
    def mode(scenario: str) -> str:
        """Which image the scenario's polls report (only admitted vehicles ever flip)."""
        return STEADY if scenario in ("nothing", "assigned") else FLIP

    def load(
        self,
        server: Server,
        scenario: str,
        duration: float,
        concurrency: int,
        rate: float | None = None,
    ) -> tuple[LoadResult, Cpu]:
        """Sign a batch just before the run (timestamps stay fresh), then replay it."""
        budget = int((rate or self.rate_estimate(scenario)) * duration * 1.3) + 500
        for _attempt in range(3):
            self.fleet.refresh(self.setup.db_url)  # what the server has: images, chain versions
            lines = sign_requests(
                self.pool, self.fleet, self.vehicles(scenario), budget, self.mode(scenario)
            )
            versions = dict(self.fleet.versions)
            self.serial += 1
            workdir = self.setup.workdir / f"load-{self.serial}"
            counted = server_assignment_polls(server)
            before = cpu_snapshot(server, self.setup.db_name)
            if self.use_wrk and rate is None:
                result = poll_load.run_wrk(
                    server.url, lines, workdir, duration, concurrency, versions
                )
            else:
                result = poll_load.run_python(
                    server.url, lines, workdir, duration, concurrency, versions, rate
                )
            cpu = cpu_delta(before, cpu_snapshot(server, self.setup.db_name))
            after = server_assignment_polls(server)
            if counted is not None and after is not None:
                result.server_assignment = int(after - counted)
            shutil.rmtree(workdir, ignore_errors=True)
            if not result.exhausted:
                return result, cpu
            log(f"ran out of pre-signed polls at {result.rps:,.0f}/s; again with twice as many")
            budget *= 2
        return result, cpu

    def measure(
        self,
        server: Server,
        scenario: str,
        duration: float,
        concurrency: int,
        rate: float | None = None,
    ) -> Run:
        result, cpu = self.load(server, scenario, duration, concurrency, rate)
        if rate is None:
            self.rate_estimates[scenario] = max(500.0, result.rps * 1.3)
        run = Run(scenario, server.workers, result, cpu, server.threads)
        r = result
        log(
            f"{scenario:10s} workers={server.workers}×{server.threads} conns={concurrency} {r.generator}: "
            f"{r.rps:,.0f} polls/s, p50 {r.p50_ms:.1f} p90 {r.p90_ms:.1f} p99 {r.p99_ms:.1f} "
            f"max {r.max_ms:.1f} ms, errors {r.errors}, new chain {r.with_assignment:,} "
            f"of {r.requests:,} (server: {r.server_assignment} assignment polls, "
            f"{r.unclassified} unclassified); CPU cores: server {cpu.cores('server'):.2f}, PostgreSQL "
            f"{cpu.cores('postgres'):.2f}, generator {cpu.cores('generator'):.2f}, other "
            f"{cpu.cores('other'):.2f}, steal {cpu.cores('steal'):.2f}"
        )
        for sample in r.samples:
            log(f"  error: {sample}")
        return run

    def warm_up(self, server: Server, concurrency: int) -> None:
        """Every worker loads the release index and opens its connections before we measure;
        then the director tables, empty at setup, get statistics (as a running server's have):
        until then the planner may scan them whole, and a prepared statement keeps its plan
        until the table is analyzed (seen with a per-chain DELETE before fd98b68)."""
        self.load(server, "mixed", WARM_UP_S, concurrency)
        analyze_director_tables(self.setup.db_url)


# ------------------------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vehicles", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per scenario")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="gunicorn workers (default: try the configurations in SWEEP, keep the best)",
    )
    parser.add_argument(
        "--threads", type=int, default=4, help="threads per gunicorn worker (with --workers)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=None, help="client connections (default: 4 × workers)"
    )
    parser.add_argument("--quick", action="store_true", help="10,000 vehicles, 5 s per scenario")
    parser.add_argument("--pg", default=DEFAULT_PG, help="PostgreSQL URL to administer from")
    parser.add_argument("--db-name", default="overdrive_bench", help="dropped and re-created")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"report file (default: {RESULTS.relative_to(HERE.parent)}, with --ecus > 1 "
        f"{RESULTS_ECUS.relative_to(HERE.parent)})",
    )
    parser.add_argument(
        "--ecus",
        type=int,
        default=1,
        help="ECUs per vehicle: the primary and N-1 secondaries with keys of their own; every "
        "manifest carries N ECU version reports (default 1)",
    )
    parser.add_argument("--no-wrk", action="store_true", help="use the Python load generator")
    parser.add_argument("--keep", action="store_true", help="keep the database and work files")
    parser.add_argument(
        "--server-wrapper",
        type=Path,
        default=None,
        help="a Python script that patches the server and then runs overdrive.cli's main "
        "(experiments; the report's command line names it)",
    )
    parser.add_argument(
        "--crypto-only",
        action="store_true",
        help="only the in-process cryptographic micro-measurement (no database, no server)",
    )
    args = parser.parse_args()
    if args.quick:
        args.vehicles = min(args.vehicles, 10_000)
        args.duration = min(args.duration, 5.0)
    if args.workers is not None and args.workers < 2:
        parser.error("--workers must be at least 2 (1 runs the development server, not gunicorn)")
    if not 100 <= args.vehicles <= 1_000_000:
        parser.error("--vehicles must be between 100 and 1,000,000")
    if not 1 <= args.duration <= 200:
        parser.error("--duration must be 1..200 s (manifests must stay within 300 s of signing)")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.db_name):
        parser.error("--db-name must be a plain lower-case identifier")
    if not 1 <= args.ecus <= 64:
        parser.error("--ecus must be 1..64 (the server's limit of ECUs per vehicle)")
    if args.out is None:
        args.out = RESULTS if args.ecus == 1 else RESULTS_ECUS
    return args


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    setup = Setup(Path(tempfile.mkdtemp(prefix="overdrive-poll-bench-")), args.db_name)
    if args.server_wrapper is not None:
        setup.server_wrapper = str(args.server_wrapper.resolve())
    # Workers ignore SIGINT: on Ctrl-C only this process is interrupted, so that it can
    # terminate them (a worker killed while holding the pool's queue lock hangs terminate()).
    pool = multiprocessing.get_context("spawn").Pool(os.cpu_count() or 2, _ignore_sigint)
    try:
        return run_all(args, setup, pool)
    finally:
        pool.terminate()
        pool.join()
        if args.keep:
            log(f"kept {setup.workdir} and database {args.db_name}")
        else:
            if setup.db_url:
                with contextlib.suppress(Exception):
                    drop_database(args.pg, args.db_name)
            shutil.rmtree(setup.workdir, ignore_errors=True)


def crypto_only(setup: Setup) -> int:
    for name in DIRECTOR_KEYS:
        overdrive_cli(
            setup, "keys", "generate", name, "--dir", setup.keys, "--insecure-no-passphrase"
        )
    overdrive_cli(
        setup, "director", "init", "--storage", setup.director_storage, "--keys", setup.keys
    )
    print(poll_report.render_crypto(crypto_costs(setup, CRYPTO_ITERATIONS)))
    return 0


def run_all(args: argparse.Namespace, setup: Setup, pool: multiprocessing.pool.Pool) -> int:
    from overdrive.server.migrate import upgrade

    if args.crypto_only:
        return crypto_only(setup)

    background = background_load()
    log(f"background load before the run: {background:.2f} cores busy")
    t_setup = time.perf_counter()
    with timed(setup, "repository: keys, ecu-a 1.0 and 1.1 (+ delta), director root"):
        images = build_repository(setup)
    with timed(setup, "database: drop, create, migrate"):
        drop_database(args.pg, args.db_name)
        admin_sql(args.pg, f"CREATE DATABASE {args.db_name}")
        setup.db_url = pg_url(args.pg, args.db_name)
        upgrade(setup.db_url)
    key_count = args.vehicles * args.ecus
    with timed(setup, f"ECU keys: {key_count:,} ed25519 ({os.cpu_count()} processes)"):
        keys = generate_keys(pool, args.vehicles, args.ecus)
    with timed(
        setup, f"bulk load: {args.vehicles:,} vehicles × {args.ecus} ECUs + installed images (COPY)"
    ):
        poll_fleet.copy_fleet(setup.db_url, args.vehicles, keys, images[0])
    with timed(setup, "ANALYZE"):
        admin_sql(setup.db_url, "ANALYZE")
    fleet = Fleet(
        size=args.vehicles,
        keyids=[k for k, _text, _secondaries in keys],
        images=images,
        counters=[1] * args.vehicles,
        ecus=args.ecus,
    )
    del keys
    notes = start_campaign(setup, fleet)
    with timed(setup, "ANALYZE (memberships)"):
        admin_sql(setup.db_url, "ANALYZE")
    setup.timings["total setup"] = time.perf_counter() - t_setup

    log("counting SQL statements per poll (in-process)")
    queries = count_queries(setup, fleet)
    for q in queries:
        log(f"  {q.case}: {len(q.statements)} statements, {q.round_trips} round trips")
    log("profiling polls in-process")
    profiles = profile_polls(setup, fleet, 100 if args.quick else 200)
    for p in profiles:
        shares = ", ".join(f"{k} {v * 100:.0f}%" for k, v in sorted(p.shares.items()))
        log(f"  {p.kind}: {p.cpu_ms:.2f} ms CPU per poll ({shares})")
        log("    " + ", ".join(f"{k} {v:.2f} ms" for k, v in p.hot.items()))
    log("cryptographic cost per poll (in-process)")
    crypto = crypto_costs(setup, 1000 if args.quick else CRYPTO_ITERATIONS)

    bench = Bench(args, setup, fleet, pool)
    t_load = time.perf_counter()
    sweep: list[Run] = []
    if args.workers is None:
        for workers, threads in SWEEP:
            conns = args.concurrency or 4 * workers
            with running(setup, workers, threads) as server:
                bench.warm_up(server, conns)
                sweep.append(bench.measure(server, "nothing", max(3.0, args.duration / 2), conns))
        winner = max(sweep, key=lambda run: (run.result.errors == 0, run.result.rps))
        best, threads = winner.workers, winner.threads
    else:
        best, threads = args.workers, args.threads
    conns = args.concurrency or 4 * best
    runs: list[Run] = []
    goal_note = ""
    with running(setup, best, threads) as server:
        bench.warm_up(server, conns)
        for scenario in ("nothing", "assignment", "assigned", "mixed"):
            runs.append(bench.measure(server, scenario, args.duration, conns))
        top = max(run.result.rps for run in runs)
        if top >= GOAL_RPS * 0.9:
            runs.append(bench.measure(server, "goal", args.duration, max(64, conns), GOAL_RPS))
        else:
            goal_note = (
                f"Scenario d ({GOAL_RPS:,} polls/s offered at a fixed rate) was not run: the "
                f"closed-loop runs top out at {top:,.0f} polls/s, so offering {GOAL_RPS:,}/s would "
                "only measure an ever-growing queue."
            )
    load_time = time.perf_counter() - t_load
    log("query plans again, after the load")
    explain_again(setup, queries)

    wrk = poll_load.wrk_path() and poll_report.wrk_version()
    if bench.use_wrk and wrk:
        generator = f"`{wrk}` with a Lua script (closed loop) for a–c and e"
        if any(run.scenario == "goal" for run in runs):
            generator += ", `bench/poll_load.py --rate` (open loop) for d"
    else:
        generator = "`bench/poll_load.py` (Python, one thread per connection; wrk not used)"
    data = {
        "command": shlex.join(["python", "bench/poll.py", *sys.argv[1:]]),
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "timings": setup.timings,
        "load_time": load_time,
        "background": background,
        "postgres": poll_report.postgres_info(args.pg),
        "generator": generator,
        "vehicles": fleet.size,
        "ecus": fleet.ecus,
        "admitted": len(fleet.admitted),
        "share": ADMITTED_SHARE,
        "duration": args.duration,
        "workers": best,
        "threads": threads,
        "sweep": sweep,
        "runs": runs,
        "queries": queries,
        "profiles": profiles,
        "crypto": crypto,
        "goal_note": goal_note,
        "notes": notes,
    }
    poll_report.write(args.out, poll_report.render(data))
    log(f"wrote {args.out}")
    if args.out.resolve() in (RESULTS.resolve(), RESULTS_ECUS.resolve()):
        log(f"wrote {benchmarks_md.assemble()}")
    for run in runs:
        print(poll_report.verdict_line(poll_report.LABELS[run.scenario], run.result))
    return 1 if any(run.result.errors for run in sweep + runs) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        sys.exit(130)

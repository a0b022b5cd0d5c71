"""The Markdown report of the poll benchmark (``bench/results/poll.md``).

Everything above the ``<!-- analysis -->`` marker is generated; everything below it (the
hand-written analysis: profiles, experiments, recommended fixes) is kept when the file is
regenerated, so a re-run refreshes the figures without losing the discussion.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from poll_load import LoadResult

MARKER = "<!-- analysis: everything below is kept when bench/poll.py rewrites this file -->"
GOAL_RPS = 1000
GOAL_P99_MS = 100.0


@dataclass
class Cpu:
    """CPU seconds used during a run, by whom, and the run's wall time."""

    wall: float
    server: float
    postgres: float
    generator: float
    machine: float
    steal: float = 0.0  # time the hypervisor ran other guests while ours wanted the CPU

    @property
    def other(self) -> float:
        return max(0.0, self.machine - self.steal - self.server - self.postgres - self.generator)

    def cores(self, what: str) -> float:
        value: float = getattr(self, what)
        return value / self.wall if self.wall else 0.0


@dataclass
class Run:
    scenario: str
    workers: int
    result: LoadResult
    cpu: Cpu | None = None
    threads: int = 4

    def ms_per_poll(self, what: str) -> float:
        if self.cpu is None or not self.result.requests:
            return float("nan")
        value: float = getattr(self.cpu, what)
        return value / self.result.requests * 1000


@dataclass
class QueryCount:
    case: str
    statements: list[str]
    pings: int
    status: int
    director_version: int  # the answer's (0: no chain)
    new_chain: bool  # the version changed: this poll signed and stored a chain
    plans: list[str] = field(default_factory=list)
    autocommit: bool = False
    transactions: int = 0  # BEGIN … COMMIT blocks on the autocommit poll connection
    batched: list[int] = field(default_factory=list)  # rows of each executemany
    raw: list[tuple[str, Any]] = field(default_factory=list, repr=False)  # (SQL, parameters)
    plans_after: list[str] = field(default_factory=list)  # EXPLAIN once the load has run

    @property
    def round_trips(self) -> int:
        # [pool pre-ping + BEGIN +] statements [+ COMMIT] (psycopg sends BEGIN on its own);
        # an executemany is one pipeline (one round trip); a transaction block adds BEGIN, COMMIT
        return (
            self.pings
            + len(self.statements)
            + (0 if self.autocommit else 2)
            + 2 * self.transactions
        )


@dataclass
class CryptoCost:
    """Median (and p90) µs of one cryptographic step of a poll, measured in-process."""

    label: str
    median_us: float
    p90_us: float
    iterations: int
    note: str


@dataclass
class Profile:
    """In-process CPU per poll (WSGI app called directly) and where it goes (cProfile)."""

    kind: str
    cpu_ms: float
    shares: dict[str, float]  # category → share of profiled CPU
    hot: dict[str, float] = field(default_factory=dict)  # function → cumulative ms per poll


# ------------------------------------------------------------------------------ machine


def machine_info() -> dict[str, str]:
    info = {"nproc": str(os.cpu_count())}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            info["ram"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    info["os"] = f"{platform.system()} {platform.release()} ({platform.machine()})"
    info["python"] = platform.python_version()
    versions = []
    for package in (
        "gunicorn",
        "flask",
        "sqlalchemy",
        "psycopg",
        "cryptography",
        "securesystemslib",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{package} {metadata.version(package)}")
    info["packages"] = ", ".join(versions)
    return info


def postgres_info(conninfo: str) -> str:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
            " current_setting('shared_buffers'), current_setting('max_connections')"
        ).fetchone()
    assert row is not None
    return (
        f"PostgreSQL {row[0]} on the same machine (synchronous_commit={row[1]}, "
        f"shared_buffers={row[2]}, max_connections={row[3]})"
    )


def wrk_version() -> str | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].split("[")[0].strip()


# ------------------------------------------------------------------------------- verdict


def verdict_line(label: str, result: LoadResult) -> str:
    misses = []
    if result.rps < GOAL_RPS * 0.98:
        misses.append(
            f"{result.rps:,.0f} polls/s, {(1 - result.rps / GOAL_RPS) * 100:.0f}% short of "
            f"{GOAL_RPS:,}"
        )
    if result.p99_ms >= GOAL_P99_MS:
        misses.append(f"p99 {ms(result.p99_ms)} ms, {result.p99_ms / GOAL_P99_MS:.1f}× the limit")
    if result.errors:
        misses.append(f"{result.errors} errors")
    if not misses:
        return (
            f"- {label}: **PASS** ({result.rps:,.0f} polls/s, p99 {ms(result.p99_ms)} ms, 0 errors)"
        )
    return f"- {label}: **MISS** ({'; '.join(misses)})"


def ms(value: float) -> str:
    if value != value:  # NaN
        return "–"
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


# -------------------------------------------------------------------------------- render

LABELS = {
    "nothing": "a. nothing to do",
    "assignment": "b. assignment (new chain every poll)",
    "mixed": "c. mixed fleet",
    "goal": f"d. mixed, offered {GOAL_RPS:,}/s",
    "assigned": "e. assigned, unchanged",
}


def render(data: dict[str, Any]) -> str:
    info = machine_info()
    setup_timings: dict[str, float] = data["timings"]
    # In label order (a, b, c, d, e), whatever order they ran in.
    order = list(LABELS)
    runs: list[Run] = sorted(
        data["runs"], key=lambda run: order.index(run.scenario) if run.scenario in order else 99
    )
    sweep: list[Run] = data["sweep"]
    queries: list[QueryCount] = data["queries"]
    profiles: list[Profile] = data["profiles"]
    best = data["workers"]
    threads = data.get("threads", 4)
    ecus = int(data.get("ecus", 1))
    if ecus == 1:
        heading = "## Poll throughput and latency (server)"
        reports = (
            "one ECU version report, the primary's, signed by the same key; counters increasing"
        )
        fleet = "one primary ECU each on ecu-a 1.0"
    else:
        heading = f"## Poll throughput and latency (server, {ecus}-ECU manifests)"
        reports = (
            f"{ecus} ECU version reports each: the primary's, signed by the same key, and "
            f"{ecus - 1} secondaries', each signed by the secondary's own key; counters increasing"
        )
        fleet = (
            f"{ecus} ECUs each (registered with all of them, one installed image per ECU): a "
            f"primary on ecu-a 1.0 and {ecus - 1} secondaries with keys of their own on hardware "
            f"ids ecu-s1…ecu-s{ecus - 1} (factory images no campaign updates), so every poll "
            f"verifies {ecus + 1} signatures"
        )
    lines = [
        heading,
        "",
        f"`{data['command']}` — {data['date']}; setup {setup_timings['total setup']:.0f} s, "
        f"load phase {data['load_time']:.0f} s.",
        "",
        f"- Machine: {info['nproc']} vCPUs ({info.get('cpu', '?')}), {info.get('ram', '?')} "
        f"RAM, {info['os']}. Server, PostgreSQL and load generator share it.",
        f"- Background load from other processes before the run: "
        f"{data['background']:.2f} cores busy (of {info['nproc']}); see the “other” CPU column.",
        f"- {data['postgres']}.",
        f"- Python {info['python']}; {info['packages']}.",
        "- Server: `overdrive server run --workers N --threads T --director-storage DIR "
        "--director-keys KEYS` = gunicorn, gthread worker class, `--tick-interval 0`; the "
        "director root made by `overdrive director init` (one key per role).",
        f"- Load generator: {data['generator']}. Pre-signed vehicle version manifests (one "
        f"ed25519 key per vehicle; {reports}), keep-alive connections, latency measured "
        "client-side. An "
        "answer is a **new chain** when its director version differs from the previous answer "
        "for that vehicle (the poll made the server sign and store a chain: targets, snapshot, "
        "timestamp); every answer carries a signed time attestation.",
        f"- Fleet: {data['vehicles']:,} vehicles, {fleet}. Campaign "
        f"ecu-a → 1.1 running, first stage {data['share']}: {data['admitted']:,} vehicles "
        "admitted (their director targets list the 1.1 bundle), "
        f"{data['vehicles'] - data['admitted']:,} not admitted (no chain). In b and c the "
        "admitted vehicles report ecu-a 1.0 and a factory image (0.9, in no repository) in "
        "turn, so their targets (the 1.0→1.1 delta, or the full 1.1 bundle) change on every "
        "poll: each such poll upserts the installed image and signs a new chain. In e they "
        "report the same image again: their chain stands, only the time attestation is signed.",
    ]
    for note in data.get("notes", []):
        lines += ["", note]
    lines += [
        "",
        "### Setup",
        "",
        "| step | time |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {seconds:.1f} s |" for name, seconds in setup_timings.items()]
    if sweep:
        r0 = sweep[0].result
        lines += [
            "",
            f"### Gunicorn workers × threads (scenario a, {r0.duration_s:.0f} s each)",
            "",
            "| workers | threads | conns | polls/s | p50 ms | p99 ms | errors | server CPU ms/poll |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for run in sweep:
            r = run.result
            lines.append(
                f"| {run.workers} | {run.threads} | {r.concurrency} | {r.rps:,.0f} | {ms(r.p50_ms)} | "
                f"{ms(r.p99_ms)} | {r.errors} | {ms(run.ms_per_poll('server'))} |"
            )
        lines += [
            "",
            f"Best: **{best} workers × {threads} threads** (highest polls/s without errors), "
            "used below.",
        ]
    lines += [
        "",
        f"### Results ({best} gunicorn workers × {threads} threads, {data['duration']:.0f} s per "
        "scenario)",
        "",
        "| scenario | generator | conns | polls/s | p50 ms | p90 ms | p99 ms | max ms "
        "| errors | new chain | server: assignment polls |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        r = run.result
        counted = "–" if r.server_assignment is None else f"{r.server_assignment:,}"
        lines.append(
            f"| {LABELS.get(run.scenario, run.scenario)} | {r.generator} | {r.concurrency} | "
            f"{r.rps:,.0f} | {ms(r.p50_ms)} | {ms(r.p90_ms)} | {ms(r.p99_ms)} | "
            f"{ms(r.max_ms)} | {r.errors} | {r.with_assignment:,} of {r.requests:,} | "
            f"{counted} |"
        )
    unclassified = sum(run.result.unclassified for run in runs)
    lines += [
        "",
        '*server: assignment polls* is the change of `overdrive_polls_total{outcome="assignment"}` '
        "over the run (polls whose new chain lists something; the server counts polls still in "
        "flight when the generator stops, so it can exceed the client's count by a few)."
        + (
            f" **{unclassified} answers named no vehicle** (no time attestation)."
            if unclassified
            else ""
        ),
    ]
    lines += [
        "",
        "CPU during each run, in cores busy (the machine has "
        f"{info['nproc']}), and per poll. “other” is everything else on the machine "
        "(other people's jobs, the kernel's softirq work for loopback TCP not charged to a "
        "process); “steal” is time the hypervisor gave our vCPUs to other guests (lost capacity).",
        "",
        "| scenario | server | PostgreSQL | generator | other | steal | server ms/poll "
        "| PostgreSQL ms/poll | polls/s if server + PostgreSQL had all cores |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    cores = int(info["nproc"])
    for run in runs:
        if run.cpu is None:
            continue
        c = run.cpu
        per_poll = run.ms_per_poll("server") + run.ms_per_poll("postgres")
        ceiling = cores * 1000 / per_poll if per_poll > 0 else float("nan")
        lines.append(
            f"| {LABELS.get(run.scenario, run.scenario)} | {c.cores('server'):.2f} | "
            f"{c.cores('postgres'):.2f} | {c.cores('generator'):.2f} | {c.cores('other'):.2f} | "
            f"{c.cores('steal'):.2f} | {ms(run.ms_per_poll('server'))} | {ms(run.ms_per_poll('postgres'))} | "
            f"{ceiling:,.0f} |"
        )
    lines += [
        "",
        "### Goal",
        "",
        f"≥ {GOAL_RPS:,} polls/s sustained with p99 < {GOAL_P99_MS:.0f} ms and no errors "
        "(one machine for a million vehicles polling every 15 minutes; 2% tolerance on the rate):",
        "",
    ]
    lines += [verdict_line(LABELS.get(run.scenario, run.scenario), run.result) for run in runs]
    if data.get("goal_note"):
        lines += ["", data["goal_note"]]
    lines += [
        "",
        "### SQL per poll",
        "",
        "Counted in-process (the server's code, Flask test client) with a SQLAlchemy "
        "`before_cursor_execute` listener; the pool's pre-ping (`pool_pre_ping=True`) is counted "
        "apart. The poll runs on the worker thread's own autocommit connection (no pool checkout, "
        "no pre-ping); *transactions* counts BEGIN … COMMIT blocks on it (two more round "
        "trips each), and an `executemany` counts as one statement and one round trip "
        "(psycopg pipelines it).",
        "",
        "| poll | HTTP | director version | new chain | SQL statements | transactions "
        "| round trips |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {q.case} | {q.status} | {q.director_version or '–'} | "
        f"{'yes' if q.new_chain else 'no'} | {len(q.statements)}"
        + (f" ({'+'.join(str(n) for n in q.batched)} rows batched)" if q.batched else "")
        + f" | {q.transactions} | {q.round_trips} |"
        for q in queries
    ]
    detail = max(queries, key=lambda q: len(q.statements))
    lines += [
        "",
        f"The statements of “{detail.case}” and their plans (EXPLAIN; at setup, when the "
        "director tables are nearly empty, and again after the load phase):",
        "",
    ]
    after = detail.plans_after or [""] * len(detail.plans)
    for i, (statement, plan, later) in enumerate(
        zip(detail.statements, detail.plans, after, strict=False), 1
    ):
        short = statement if len(statement) <= 200 else statement[:199] + "…"
        if later and later != plan:
            lines.append(f"{i}. `{short}` → {plan}; **after the load:** {later}")
        else:
            lines.append(f"{i}. `{short}` → {plan}" + (" (same after the load)" if later else ""))
    if profiles:
        categories = sorted({c for p in profiles for c in p.shares}, key=_category_order)
        lines += [
            "",
            "### Where a poll's CPU goes (in-process)",
            "",
            "The WSGI app called directly in one thread (no HTTP server, no concurrency): CPU per "
            "poll, then the split of a cProfile run (self time by package, CPU clock; builtins "
            "charged to their caller's package; cProfile inflates pure-Python code somewhat).",
            "",
            "| poll | CPU ms/poll | " + " | ".join(categories) + " |",
            "|---|---:|" + "---:|" * len(categories),
        ]
        for p in profiles:
            cells = " | ".join(f"{p.shares.get(c, 0) * 100:.0f}%" for c in categories)
            lines.append(f"| {p.kind} | {p.cpu_ms:.2f} | {cells} |")
        hot = [name for name in HOT_ORDER if any(name in p.hot for p in profiles)]
        if hot:
            lines += [
                "",
                "Wall ms per poll in the server's main steps, one more batch of the same polls "
                "with those functions wrapped in `perf_counter` timers (no profiler; nested: "
                "*publish* includes *sign chain* and its share of *SQL*; “SQL” is every poll "
                "statement's client side: sending, PostgreSQL's work, reading; *whole request* "
                "is the WSGI call):",
                "",
                "| poll | " + " | ".join(hot) + " |",
                "|---|" + "---:|" * len(hot),
            ]
            for p in profiles:
                cells = " | ".join(f"{p.hot[name]:.2f}" if name in p.hot else "–" for name in hot)
                lines.append(f"| {p.kind} | {cells} |")
        sql = sorted(
            {name for p in profiles for name in p.hot if name.startswith("SQL: ")},
            key=lambda name: SQL_ORDER.index(name[5:]) if name[5:] in SQL_ORDER else 99,
        )
        if sql:
            lines += [
                "",
                "The same batch, wall ms per poll of each statement (its client side: send, "
                "PostgreSQL's work, read; BEGIN and COMMIT of the chain's transaction apart):",
                "",
                "| poll | " + " | ".join(name[5:] for name in sql) + " |",
                "|---|" + "---:|" * len(sql),
            ]
            for p in profiles:
                cells = " | ".join(f"{p.hot[name]:.2f}" if name in p.hot else "–" for name in sql)
                lines.append(f"| {p.kind} | {cells} |")
    if data.get("crypto"):
        lines += ["", render_crypto(data["crypto"])]
    return "\n".join(lines) + "\n"


HOT_ORDER = (
    "whole request",
    "whole poll()",
    "manifest signature",
    "ECU reports",
    "assignment lookup",
    "publish (sign + store)",
    "sign chain",
    "time attestation",
    "SQL (poll statements)",
)


SQL_ORDER = (
    "read_vehicle",
    "advance",
    "advance_with_images",
    "upsert_image",
    "mark_assigned",
    "BEGIN",
    "director_upsert",
    "COMMIT",
)


def render_crypto(costs: list[CryptoCost]) -> str:
    """The cryptographic micro-measurement as a Markdown section."""
    lines = [
        "### Cryptographic cost per poll (in-process)",
        "",
        "One thread, the server's own functions on this machine (`time.perf_counter` around "
        "each call; median and p90 of the iterations, after 100 warm-up calls). Verifying a "
        "manifest is what the poll does with it: parse the stored vehicle key "
        "(`server.vehicles.vehicle_key_from_text`), `overdrive.envelope.verify_envelope` of the "
        "manifest (`server.vehicles.verify_signed`), then `server.manifest.check_reports`: per "
        "ECU report its key (parsed once: `server.vehicles.Ed25519Key`), one ed25519 "
        "verification over the report's canonical JSON (a plain `json.dumps`: the manifest "
        "holding it was canonicalised already) and its field checks.",
        "",
        "| step | median µs | p90 µs | iterations | what it does |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {c.label} | {c.median_us:,.0f} | {c.p90_us:,.0f} | {c.iterations:,} | {c.note} |"
        for c in costs
    ]
    verify1 = next((c.median_us for c in costs if "1 ECU report" in c.label), None)
    verify8 = next((c.median_us for c in costs if "8 ECU reports" in c.label), None)
    attest = next((c.median_us for c in costs if "time attestation" in c.label), None)
    chain = next((c.median_us for c in costs if "chain" in c.label), None)
    if verify1 is not None and attest is not None and chain is not None:
        lines += [
            "",
            f"So a poll's cryptography costs ≈ {verify1 + attest:,.0f} µs when nothing changes "
            f"(verify + time attestation) and ≈ {verify1 + attest + chain:,.0f} µs when it signs "
            f"a new chain: at 1,000 polls/s that is {(verify1 + attest) / 1000:.2f} resp. "
            f"{(verify1 + attest + chain) / 1000:.2f} of a core.",
        ]
        if verify8 is not None:
            lines[-1] += (
                f" With 8 ECU reports per manifest, ≈ {verify8 + attest:,.0f} µs resp. "
                f"{verify8 + attest + chain:,.0f} µs ({(verify8 + attest) / 1000:.2f} resp. "
                f"{(verify8 + attest + chain) / 1000:.2f} of a core at 1,000 polls/s)."
            )
    return "\n".join(lines)


CATEGORY_ORDER = (
    "SQLAlchemy",
    "psycopg",
    "Flask/Werkzeug",
    "crypto",
    "JSON",
    "overdrive",
    "other",
)


def _category_order(name: str) -> int:
    return CATEGORY_ORDER.index(name) if name in CATEGORY_ORDER else len(CATEGORY_ORDER)


def write(path: Path, generated: str) -> None:
    """Write ``generated``, keeping the hand-written part below the marker if there is one."""
    kept = ""
    if path.exists():
        old = path.read_text()
        if MARKER in old:
            kept = old[old.index(MARKER) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated + ("\n" + kept if kept else "\n" + MARKER + "\n"))

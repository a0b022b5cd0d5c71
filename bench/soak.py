"""Soak benchmark (not part of ``make test``): two gunicorn servers sharing one private
PostgreSQL, a simulated fleet polling both at random through a full staged campaign, with one
worker SIGKILLed at 1/3 of the run and PostgreSQL restarted at 2/3.

    .venv/bin/python bench/soak.py                # 2,000 vehicles, 600 s
    .venv/bin/python bench/soak.py --quick        # 300 vehicles, 120 s smoke run

Writes ``bench/results/soak.md`` (also printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.soak_fleet import Fleet, HttpError, Pool, Stats
from bench.soak_infra import (
    ROOT,
    PrivatePostgres,
    ServerProc,
    build_repository,
    cli_json,
    cli_text,
    start_server,
)
from tests.server.fleet import SimVehicle

RESULTS = ROOT / "bench" / "results" / "soak.md"


def policy(soak: str) -> dict[str, Any]:
    def stage(name: str, share: str, finished: str) -> dict[str, Any]:
        return {
            "name": name,
            "share": share,
            "soak": soak,
            "min_finished": finished,
            "max_failure_rate": "10%",
            "success_threshold": "85%",
        }

    return {
        "name": "soak-staged",
        "stages": [
            stage("canary", "5%", "90%"),
            stage("early", "25%", "90%"),
            stage("all", "100%", "100%"),
        ],
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return f"{os.cpu_count()} CPUs ({model}), {int(mem) // 1024 // 1024} GiB RAM"


def versions(pg_url: str) -> str:
    import gunicorn
    import psycopg

    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    pg = row[0] if row else "?"
    return (
        f"Python {platform.python_version()}, gunicorn {gunicorn.__version__}, "
        f"psycopg {psycopg.__version__}, PostgreSQL {pg}"
    )


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.pg = PrivatePostgres(root / "pg")
        self.servers: list[ServerProc] = []
        self.timeline: list[tuple[float, str]] = []
        self.t0 = time.monotonic()
        self.stats = Stats()
        self.version_text = "?"  # set once PostgreSQL is up (see main)

    def note(self, text: str) -> None:
        at = time.monotonic() - self.t0
        self.timeline.append((at, text))
        print(f"[{at:7.1f}s] {text}", flush=True)

    def cleanup(self) -> None:
        for server in self.servers:
            server.stop()
        self.pg.stop()

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        self.pg.start()
        self.note(f"private PostgreSQL on port {self.pg.port}")
        self.repo = build_repository(self.root)
        from overdrive.server.migrate import upgrade

        upgrade(self.pg.url)
        token = cli_json(
            "server", "token", "create", "--role", "operator", "--db", self.pg.url, "--json"
        )
        self.operator = str(token["secret"])
        self.enroll = cli_text(
            "server", "enroll-token", "create", "--db", self.pg.url,
            "--uses", str(self.args.vehicles + 10),
        )  # fmt: skip
        for name in ("server1", "server2"):
            self.servers.append(
                start_server(
                    name,
                    self.root,
                    self.pg.url,
                    self.repo,
                    self.args.workers,
                    self.args.tick_interval,
                    self.args.poll_interval,
                )
            )
        self.note(
            "servers up: "
            + ", ".join(
                f"{s.name} :{s.port} pid {s.proc.pid} workers {s.workers()}" for s in self.servers
            )
        )

    async def api(self, pool: Pool, method: str, path: str, body: Any = None) -> Any:
        for attempt in range(10):
            try:
                status, payload = await pool.request(
                    method, path, body, {"Authorization": f"Bearer {self.operator}"}
                )
            except HttpError as e:
                self.stats.error("operator api", e.kind)
                await asyncio.sleep(1 + attempt)
                continue
            if status < 300:
                return payload
            if status < 500:
                raise RuntimeError(f"{method} {path}: HTTP {status} {payload}")
            self.stats.error("operator api", f"HTTP {status}")
            await asyncio.sleep(1 + attempt)
        raise RuntimeError(f"{method} {path} kept failing")

    # ---------------------------------------------------------------- run

    async def run(self) -> dict[str, Any]:
        args = self.args
        pools = [Pool("127.0.0.1", s.port, args.connections) for s in self.servers]
        fleet = Fleet(
            pools,
            dict(self.repo.a10),
            dict(self.repo.a11),
            args.failure_rate,
            (args.install_min, args.install_max),
            self.stats,
            self.repo.director_root,
        )
        vehicles = [
            SimVehicle(f"soak-{i:05d}", image=dict(self.repo.a10), attributes={"model": "m1"})
            for i in range(args.vehicles)
        ]
        begin = time.monotonic()
        sem = asyncio.Semaphore(16)

        async def reg(v: SimVehicle) -> None:
            async with sem:
                await fleet.register(v, self.enroll)

        await asyncio.gather(*(reg(v) for v in vehicles))
        took = time.monotonic() - begin
        self.note(f"registered {len(vehicles)} vehicles over the API in {took:.1f}s")
        self.registration_seconds = took

        admin = pools[0]
        campaign = await self.api(
            admin,
            "POST",
            "/api/v1/campaigns",
            {"name": "soak ecu-a 1.1", "releases": {"ecu-a": "1.1"}, "policy": policy(args.soak)},
        )
        self.campaign_id = campaign["id"]
        started = await self.api(admin, "POST", f"/api/v1/campaigns/{self.campaign_id}/start")
        self.note(f"campaign {self.campaign_id} started: counts {started.get('counts')}")

        self.rss_start = {s.name: s.rss() for s in self.servers}
        self.load_start = os.getloadavg()[0]
        self.stats.started = time.monotonic()
        run_t0 = time.monotonic()
        tasks = [asyncio.create_task(fleet.run_vehicle(v, args.poll_interval)) for v in vehicles]
        kill_at, restart_at = args.duration / 3, 2 * args.duration / 3
        killed = restarted = False
        self.faults: list[tuple[str, float]] = []
        last_status = 0.0
        polls_before, status_t = 0, 0.0
        last_state = "?"
        while (elapsed := time.monotonic() - run_t0) < args.duration:
            await asyncio.sleep(1)
            if not killed and elapsed >= kill_at:
                killed = True
                workers = self.servers[0].workers()
                victim = workers[0]
                os.kill(victim, signal.SIGKILL)
                self.faults.append(
                    (f"SIGKILL worker {victim} of server1 (campaign: {last_state})", elapsed)
                )
                self.note(f"FAULT: SIGKILL worker {victim} of server1 (workers {workers})")
            if not restarted and elapsed >= restart_at:
                restarted = True
                self.note("FAULT: restarting PostgreSQL (pg_ctl restart -m fast)")
                t = time.monotonic()
                await asyncio.to_thread(self.pg.restart)
                self.faults.append((f"PostgreSQL restart (campaign: {last_state})", elapsed))
                self.note(f"PostgreSQL restarted in {time.monotonic() - t:.1f}s")
            if elapsed - last_status >= 15:
                last_status = elapsed
                try:
                    info = await self.api(pools[1], "GET", f"/api/v1/campaigns/{self.campaign_id}")
                    state = (
                        f"{info.get('state')} stage {info.get('stage')} counts {info.get('counts')}"
                    )
                    last_state = f"{info.get('state')} stage {info.get('stage')}"
                except RuntimeError as e:
                    state = f"status failed: {e}"
                now = time.monotonic() - run_t0
                rate = (self.stats.polls - polls_before) / max(now - status_t, 1e-9)
                polls_before, status_t = self.stats.polls, now
                self.note(
                    f"polls {self.stats.polls} (~{rate:.0f}/s), events sent {self.stats.events_sent}"
                    f" acked {self.stats.events_acked}, errors {sum(self.stats.errors.values())}; "
                    f"campaign {state}"
                )
        self.run_seconds = time.monotonic() - run_t0
        self.rss_end = {s.name: s.rss() for s in self.servers}
        self.load_end = os.getloadavg()[0]
        fleet.stop.set()
        self.note("stopping the fleet (in-flight installs finish and report)")
        done, pending = await asyncio.wait(tasks, timeout=120)
        for task in pending:
            task.cancel()
        self.pending_at_stop = len(pending)
        for task in done:
            if task.exception() is not None:
                self.stats.error("vehicle task", repr(task.exception()))
        await asyncio.sleep(args.tick_interval * 2 + 1)
        try:
            final = await self.api(pools[1], "GET", f"/api/v1/campaigns/{self.campaign_id}")
        except RuntimeError as e:
            self.note(f"final campaign status over the API failed ({e}); reading the database")
            final = {}
        return dict(final)

    # ---------------------------------------------------------------- report

    def database_counts(self) -> dict[str, Any]:
        import psycopg

        with psycopg.connect(self.pg.url) as conn:
            events = conn.execute("SELECT count(*) FROM events").fetchone()
            by_type = conn.execute(
                "SELECT type, count(*) FROM events GROUP BY type ORDER BY type"
            ).fetchall()
            members = conn.execute(
                "SELECT admitted, status, count(*) FROM memberships WHERE campaign_id = %s "
                "GROUP BY admitted, status ORDER BY admitted, status",
                (self.campaign_id,),
            ).fetchall()
            campaign = conn.execute(
                "SELECT state, stage_index, reason FROM campaigns WHERE id = %s",
                (self.campaign_id,),
            ).fetchone()
            dup = conn.execute(
                "SELECT count(*) FROM (SELECT vehicle_id, event_id FROM events "
                "GROUP BY vehicle_id, event_id HAVING count(*) > 1) d"
            ).fetchone()
        return {
            "events": events[0] if events else -1,
            "by_type": by_type,
            "members": members,
            "duplicate_ids": dup[0] if dup else -1,
            "campaign": campaign,
        }

    def report(self, final: dict[str, Any]) -> str:
        a, s = self.args, self.stats
        db = self.database_counts()
        lat = s.poll_latency
        ms = [x * 1000 for x in lat]
        members: Counter[str] = Counter()
        admitted = 0
        for adm, status, n in db["members"]:
            members[status] += n
            admitted += n if adm else 0
        failed = s.outcomes["rolled_back"]
        expected_committed = a.vehicles - failed
        ok_events = db["events"] == s.events_sent == s.events_acked and db["duplicate_ids"] == 0
        ok_members = (
            members["committed"] == expected_committed
            and members["rolled_back"] == failed
            and admitted == a.vehicles
        )
        cmd = "bench/soak.py " + " ".join(sys.argv[1:])
        lines = [
            "# Soak benchmark",
            "",
            f"- Command: `.venv/bin/python {cmd}`",
            f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {machine()} — load generator, both servers and PostgreSQL share it "
            f"(and whatever else runs there: 1-min load average {self.load_start:.1f} at the "
            f"start of the fleet traffic, {self.load_end:.1f} at its end)",
            f"- Versions: {self.version_text}",
            f"- Setup: 2 × `overdrive server run --workers {a.workers}` (gunicorn gthread, 4 threads)"
            f" on two loopback ports, `--tick-interval {a.tick_interval} --poll-interval "
            f"{a.poll_interval} --director-storage … --director-keys …` (one director root, "
            "`overdrive director init`), one private PostgreSQL (initdb, max_connections=300)",
            f"- Fleet: {a.vehicles} simulated vehicles in one asyncio process (ed25519-signed "
            "vehicle version manifests with one ECU version report, and event batches, over "
            f"HTTP/1.1 keep-alive, ≤{a.connections} connections per server), each request to a "
            "random server; every answer's time attestation is verified, and on a new director "
            "version the vehicle reads and verifies its director metadata (timestamp → snapshot → "
            "targets) and installs what its targets assign; installs are in-process sleeps of "
            f"{a.install_min:g}–{a.install_max:g} s; injected failure rate {a.failure_rate:.1%}",
            f"- Registration: all {a.vehicles} vehicles over the API in "
            f"{self.registration_seconds:.1f} s",
            f"- Campaign: ecu-a 1.0 → 1.1, stages 5% → 25% → 100%, soak {a.soak} each, "
            "max_failure_rate 10%, success_threshold 85%",
            "",
            "## Results",
            "",
            f"- Run duration: {self.run_seconds:.0f} s of fleet traffic (+ drain)",
            f"- Polls: {s.polls} successful, {s.polls / self.run_seconds:.1f} polls/s; director "
            f"metadata read and verified {s.director_reads} times, {s.assignments} assignments "
            "acted on",
            f"- Poll latency: p50 {percentile(ms, 0.5):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
            f"max {max(ms, default=float('nan')):.1f} ms",
            f"- Events: sent {s.events_sent}, acknowledged {s.events_acked}, stored in DB "
            f"{db['events']} (server said accepted {s.events_accepted}, duplicates "
            f"{s.events_duplicates} after {s.event_retries} retries); duplicate ids in DB "
            f"{db['duplicate_ids']}; batches given up {s.unacked} → "
            f"**{'EQUAL' if ok_events else 'MISMATCH'}**",
            f"- Events by type in DB: {', '.join(f'{t} {n}' for t, n in db['by_type'])}",
            f"- Campaign final: state **{final.get('state')}**, stage {final.get('stage')}, "
            f"counts {final.get('counts')}; in the database: (state, stage_index, reason) = "
            f"{db['campaign']}",
            f"- Memberships: admitted {admitted}/{a.vehicles}; by status "
            f"{dict(sorted(members.items()))}; expected committed {expected_committed}, "
            f"rolled_back {failed} (injected) → **{'AS EXPECTED' if ok_members else 'UNEXPECTED'}**",
            f"- Vehicle tasks still running after the 120 s drain: {self.pending_at_stop}",
            "",
            "| server | RSS start (master+workers) | RSS end | workers start → end |",
            "|---|---|---|---|",
        ]
        for server in self.servers:
            (r0, w0), (r1, w1) = self.rss_start[server.name], self.rss_end[server.name]
            lines.append(
                f"| {server.name} | {r0 / 1024:.0f} MiB | {r1 / 1024:.0f} MiB | {w0} → {w1} |"
            )
        lines += ["", "## Faults", ""]
        for label, at in self.faults:
            near = Counter(k for t, k in s.error_times if at - 5 <= t <= at + 30)
            lines.append(
                f"- {label} at {at:.0f} s; client errors in [-5 s, +30 s]: "
                f"{dict(near) if near else 'none'}"
            )
        lines += [
            "",
            "## Errors (all retried: polls re-polled, event batches re-sent with the same ids)",
            "",
        ]
        if s.errors:
            lines += [f"- {kind}: {n}" for kind, n in s.errors.most_common()]
        else:
            lines.append("- none")
        lines += ["", "## Timeline", "", "```"]
        lines += [f"{t:7.1f}s {text}" for t, text in self.timeline]
        lines += ["```", ""]
        return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vehicles", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=600, help="seconds of fleet traffic")
    parser.add_argument("--quick", action="store_true", help="300 vehicles, 120 s")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--tick-interval", type=int, default=2)
    parser.add_argument("--poll-interval", type=int, default=5)
    parser.add_argument("--connections", type=int, default=24, help="per server")
    parser.add_argument("--failure-rate", type=float, default=0.01)
    parser.add_argument("--install-min", type=float, default=2.0)
    parser.add_argument("--install-max", type=float, default=6.0)
    parser.add_argument(
        "--soak",
        default=None,
        help="soak time of each stage (default: a quarter of the duration, so that the campaign "
        "is still rolling out when the faults hit)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = parser.parse_args()
    if args.quick:
        args.vehicles, args.duration = 300, 120
    if args.soak is None:
        args.soak = f"{int(args.duration // 4)}s"
    return args


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="overdrive-soak-"))
    root.chmod(0o755)  # the postgres user must reach its data directory
    os.environ["OVERDRIVE_CACHE_DIR"] = str(root / "cache")
    soak = Soak(args, root)

    def interrupted(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        soak.setup()
        soak.version_text = versions(soak.pg.url)
        final = asyncio.run(soak.run())
        text = soak.report(final)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(text)
        print(f"written to {args.output}")
        if args.output.resolve() == RESULTS.resolve():
            import benchmarks_md

            print(f"wrote {benchmarks_md.assemble()}")
    finally:
        soak.cleanup()
        for server in soak.servers:
            tail = server.log.read_text(errors="replace").splitlines()[-15:]
            if any("Traceback" in line or "Error" in line for line in tail):
                print(f"--- tail of {server.log}:", *tail, sep="\n")
        if args.keep:
            print(f"kept {root}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

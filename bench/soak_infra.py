"""Infrastructure of the soak benchmark: a private PostgreSQL instance, the published
repository, and the two gunicorn server processes (start, RSS, worker kill, stop)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"no PostgreSQL {name} under /usr/lib/postgresql/*/bin")
    return found[-1]


def as_postgres(*args: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


@dataclass
class PrivatePostgres:
    """A throw-away PostgreSQL cluster on its own port (never the shared one)."""

    root: Path
    port: int = field(default_factory=free_port)
    started: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "sock"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/soak"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", *args),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.sockets, "postgres", "postgres")
        subprocess.run(
            as_postgres(
                pg_bin("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        opts = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c max_connections=300 -c shared_buffers=256MB -c fsync=on"
        )
        self._ctl("-o", opts, "-l", str(self.root / "postgres.log"), "start")
        self.started = True
        subprocess.run(
            as_postgres(
                pg_bin("createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "soak",
            ),
            check=True,
        )

    def restart(self) -> None:
        self._ctl("-m", "fast", "restart")

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(subprocess.CalledProcessError):
                self._ctl("-m", "immediate", "stop")
            self.started = False


@dataclass
class Repo:
    storage: Path
    #: the director's root (``overdrive director init``) and the keys the servers sign with
    director_storage: Path
    director_keys: Path
    a10: dict[str, object]
    a11: dict[str, object]

    @property
    def director_root(self) -> bytes:
        """``1.root.json`` of the director: what a vehicle is provisioned with."""
        return (self.director_storage / "metadata" / "1.root.json").read_bytes()


DIRECTOR_KEYS = ("director-root", "director-targets", "director-snapshot", "director-timestamp")


def build_repository(root: Path) -> Repo:
    """ecu-a 1.0 and 1.1 (+ delta), and the director's root (as tests/repo_fixtures.py)."""
    import hashlib

    from tests.conftest import generate_keys, make_image, mutate, run_cli

    os.environ.setdefault("OVERDRIVE_CACHE_DIR", str(root / "cache"))
    keys, storage, director = root / "keys", root / "repo", root / "director"
    generate_keys(run_cli, keys, "root", "targets", "snapshot", "timestamp", *DIRECTOR_KEYS)
    if run_cli("repo", "init", "--storage", storage, "--keys", keys).code != 0:
        raise RuntimeError("repo init failed")
    a10 = make_image(root / "a10.img", 60_000, seed=1)
    a11 = mutate(a10, root / "a11.img", seed=2)
    for image, version, extra in ((a10, "1.0", []), (a11, "1.1", ["--delta-from", "1.0"])):
        result = run_cli(
            "release", "add", image, "--hardware-id", "ecu-a", "--version", version,
            "--storage", storage, "--keys", keys, "--quiet", "--chunk-size", "64KiB", *extra,
        )  # fmt: skip
        if result.code != 0:
            raise RuntimeError(result.stderr)
    result = run_cli("director", "init", "--storage", director, "--keys", keys)
    if result.code != 0:
        raise RuntimeError(result.stderr)

    def ref(path: Path, version: str, counter: int) -> dict[str, object]:
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        return {"version": version, "sha256": sha, "release_counter": counter, "length": len(data)}

    return Repo(storage, director, keys, ref(a10, "1.0", 1), ref(a11, "1.1", 2))


def cli_json(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [str(VENV_BIN / "overdrive"), *args], check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout))


def cli_text(*args: str) -> str:
    out = subprocess.run(
        [str(VENV_BIN / "overdrive"), *args], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in Path(path).read_text().split()]
    return sorted(set(pids))


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class ServerProc:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def rss(self) -> tuple[int, int]:
        """(total KiB of master + workers, number of workers)."""
        workers = self.workers()
        return rss_kib(self.proc.pid) + sum(rss_kib(w) for w in workers), len(workers)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(
    name: str, root: Path, db: str, repo: Repo, workers: int, tick: int, poll: int
) -> ServerProc:
    port = free_port()
    log = root / f"{name}.log"
    env = dict(os.environ)
    env.pop("OVERDRIVE_SECRET_KEY", None)
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "overdrive"), "server", "run", "--db", db, "--storage", str(repo.storage),
            "--director-storage", str(repo.director_storage),
            "--director-keys", str(repo.director_keys), "--workers", str(workers),
            "--port", str(port), "--tick-interval", str(tick), "--poll-interval", str(poll),
            "--state-dir", str(root / f"{name}-state"),
        ],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=root,
    )  # fmt: skip
    server = ServerProc(name, port, proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                if len(server.workers()) >= workers:
                    return server
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{name} did not start: {log.read_text()[-2000:]}")

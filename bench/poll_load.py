"""Load generators of the poll benchmark: ``wrk`` with a Lua script, or a Python fallback.

Both replay pre-signed requests (one ``PATH SP BODY`` line each, see ``poll_fleet.sign_chunk``)
over persistent HTTP/1.1 connections, each request exactly once and in file order, so that a
vehicle's manifest counters reach the server in increasing order (two requests of one vehicle
are a whole round of the scenario's vehicles apart). Latency is measured client-side per request.

Each 200 answer is classified: **assignment** when its director version
(``{"director": {"version": V}}``, 0 when absent) differs from the previous answer for that vehicle
(the first answer of a run is compared with the version stored before the run,
``versions.txt``), i.e. the poll made the server sign a new chain; **nothing** otherwise. The
vehicle is found from the answer's time attestation, which echoes the manifest's nonce
``v<index>n…`` (see ``poll_fleet.nonce``).

* ``wrk`` (closed loop: ``--concurrency`` connections, each sends its next request when the
  previous answer is in) is preferred: it is C and costs the shared CPU almost nothing.
* The Python generator (run as ``python bench/poll_load.py …`` in its own process) does the same
  with one thread and one raw socket per connection, and can also run open loop at a fixed rate
  (``--rate``): request ``k`` is due at ``start + k / rate`` and its latency is measured from
  that due time, so a server that falls behind is charged for the queueing it causes
  (no coordinated omission).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

VERSION_RE = re.compile(rb'"director":\{"version":(\d+)\}')
NONCE_RE = re.compile(rb'"nonce":"v(\d+)n')


@dataclass
class LoadResult:
    generator: str  # "wrk" or "python" (+ " open loop R/s")
    concurrency: int
    requests: int  # completed requests (any status)
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    with_assignment: int  # 200 answers whose director version changed (a new chain)
    nothing: int  # 200 answers whose director version did not change
    non_200: int
    socket_errors: int
    exhausted: bool  # ran out of pre-signed requests before the end
    samples: list[str] = field(default_factory=list)  # first few non-200 answers
    unclassified: int = 0  # 200 answers naming no vehicle (no time attestation): must stay 0
    #: polls the server counted as "assignment" (``overdrive_polls_total``), if it was read
    server_assignment: int | None = None

    @property
    def errors(self) -> int:
        return self.non_200 + self.socket_errors

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[rank]


# ------------------------------------------------------------------------------------ wrk

WRK_SCRIPT = r"""
-- Replays pre-signed poll requests; one request file per wrk thread.
local threads = {}
local next_id = 0

function setup(thread)
   thread:set("tid", next_id)
   table.insert(threads, thread)
   next_id = next_id + 1
end

function init(args)
   local headers = {["Content-Type"] = "application/json"}
   reqs = {}
   for line in io.lines(args[1] .. "/requests-" .. tid .. ".txt") do
      local sp = line:find(" ", 1, true)
      reqs[#reqs + 1] = wrk.format("POST", line:sub(1, sp - 1), headers, line:sub(sp + 1))
   end
   n = #reqs
   last = {}
   for line in io.lines(args[1] .. "/versions.txt") do
      local sp = line:find(" ", 1, true)
      last[line:sub(1, sp - 1)] = tonumber(line:sub(sp + 1))
   end
   i = 0
   exhausted = 0
   ok_assign = 0
   ok_nothing = 0
   unknown = 0
   bad = 0
   samples = ""
   spare = wrk.format("GET", "/healthz")
end

function request()
   i = i + 1
   if i > n then
      exhausted = 1
      wrk.thread:stop()
      return spare
   end
   return reqs[i]
end

function response(status, headers, body)
   if status == 200 then
      local who = body:match('"nonce":"v(%d+)n')
      if who == nil then
         unknown = unknown + 1
      else
         local version = tonumber(body:match('"director":{"version":(%d+)}') or "0")
         if version ~= (last[who] or 0) then
            ok_assign = ok_assign + 1
         else
            ok_nothing = ok_nothing + 1
         end
         last[who] = version
      end
   else
      bad = bad + 1
      if #samples < 1500 then
         samples = samples .. status .. " " .. body:sub(1, 300):gsub("[\r\n\"\\]", " ") .. "\n"
      end
   end
end

function done(summary, latency, requests)
   local assign, nothing, unk, nbad, ex, text = 0, 0, 0, 0, 0, ""
   for _, t in ipairs(threads) do
      assign = assign + t:get("ok_assign")
      nothing = nothing + t:get("ok_nothing")
      unk = unk + t:get("unknown")
      nbad = nbad + t:get("bad")
      ex = math.max(ex, t:get("exhausted"))
      text = text .. t:get("samples")
   end
   local e = summary.errors
   io.write(string.format(
      'WRK-RESULT {"requests":%d,"duration_us":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,' ..
      '"assign":%d,"nothing":%d,"unknown":%d,"bad":%d,"exhausted":%d,"connect":%d,' ..
      '"read":%d,"write":%d,"status":%d,"timeout":%d,"samples":"%s"}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, assign, nothing, unk, nbad, ex, e.connect, e.read,
      e.write, e.status, e.timeout, text:gsub("\n", " | ")))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def write_request_files(
    lines: list[bytes], directory: Path, parts: int, versions: dict[int, int]
) -> None:
    """Split ``lines`` into ``parts`` files; a vehicle always lands in the same file (its
    requests keep their order within a file, whichever connection sends them). ``versions``
    (vehicle index → director version stored before the run) goes to ``versions.txt``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "versions.txt").write_text(
        "".join(f"{index} {version}\n" for index, version in versions.items()) or "-1 0\n"
    )
    buckets: list[list[bytes]] = [[] for _ in range(parts)]
    for line in lines:
        # "/api/v1/vehicles/veh-000123/poll {...}": hash the path to pick the file.
        path = line[: line.index(b" ")]
        buckets[hash(path) % parts].append(line)
    for index, bucket in enumerate(buckets):
        (directory / f"requests-{index}.txt").write_bytes(b"\n".join(bucket) + b"\n")


def run_wrk(
    url: str,
    lines: list[bytes],
    workdir: Path,
    duration: float,
    concurrency: int,
    versions: dict[int, int],
) -> LoadResult:
    wrk = wrk_path()
    assert wrk is not None
    threads = 1 if concurrency < 64 else 2  # one thread pushes >20k req/s; spare the CPU
    write_request_files(lines, workdir, threads, versions)
    script = workdir / "poll.lua"
    script.write_text(WRK_SCRIPT)
    command = [
        wrk,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
        "--",
        str(workdir),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next(
        (x for x in done.stdout.splitlines() if x.startswith("WRK-RESULT ")),
        None,
    )
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    data = json.loads(line.removeprefix("WRK-RESULT "))
    seconds = data["duration_us"] / 1e6
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return LoadResult(
        generator="wrk",
        concurrency=concurrency,
        requests=data["requests"],
        duration_s=seconds,
        rps=data["requests"] / seconds,
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        max_ms=data["max"] / 1000,
        with_assignment=data["assign"],
        nothing=data["nothing"],
        non_200=data["bad"],
        socket_errors=socket_errors,
        exhausted=bool(data["exhausted"]),
        samples=[s for s in data["samples"].split(" | ") if s.strip()][:5],
        unclassified=data["unknown"],
    )


# ------------------------------------------------------------------------------ python


def run_python(
    url: str,
    lines: list[bytes],
    workdir: Path,
    duration: float,
    concurrency: int,
    versions: dict[int, int],
    rate: float | None = None,
) -> LoadResult:
    """Run the Python generator in its own process (its GIL is not the orchestrator's)."""
    write_request_files(lines, workdir, 1, versions)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--url",
        url,
        "--requests",
        str(workdir / "requests-0.txt"),
        "--duration",
        str(duration),
        "--concurrency",
        str(concurrency),
        "--versions",
        str(workdir / "versions.txt"),
    ]
    if rate:
        command += ["--rate", str(rate)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"python load generator failed: {done.stderr}")
    return LoadResult(**json.loads(done.stdout))


class _Connection:
    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        sock = self._connect()
        sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self._fill(sock)
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        close = False
        for header in head.split(b"\r\n")[1:]:
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        self.buffer = rest
        while len(self.buffer) < length:
            self._fill(sock)
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if close:
            self.close()
        return status, body

    def _fill(self, sock: socket.socket) -> None:
        chunk = sock.recv(262144)
        if not chunk:
            self.close()
            raise ConnectionError("server closed the connection")
        self.buffer += chunk


def python_generator(
    url: str,
    requests: list[bytes],
    duration: float,
    concurrency: int,
    rate: float | None,
    versions: dict[bytes, int] | None = None,
) -> LoadResult:
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    indices = itertools.count()  # next() is atomic under the GIL
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    counts = {"assign": 0, "nothing": 0, "unknown": 0, "bad": 0, "socket": 0}
    # A vehicle's requests are a whole round apart, so its answers never race each other.
    last: dict[bytes, int] = dict(versions or {})
    samples: list[str] = []
    lock = threading.Lock()
    exhausted = threading.Event()
    start = time.perf_counter() + 0.2
    deadline = start + duration

    def worker(slot: int) -> None:
        conn = _Connection(host, int(port))
        mine = latencies[slot]
        assign = nothing = unknown = bad = sock_errors = 0
        while True:
            index = next(indices)
            if index >= len(requests):
                exhausted.set()
                break
            due = start + index / rate if rate else None
            now = time.perf_counter()
            if due is not None and due > now:
                time.sleep(due - now)
            sent = time.perf_counter()
            if sent >= deadline:
                break
            try:
                status, body = conn.exchange(requests[index])
            except OSError as e:
                sock_errors += 1
                conn.close()
                with lock:
                    if len(samples) < 5:
                        samples.append(f"socket error: {e}")
                continue
            finished = time.perf_counter()
            mine.append(finished - (due if due is not None else sent))
            if status == 200:
                who = NONCE_RE.search(body)
                if who is None:
                    unknown += 1
                else:
                    found = VERSION_RE.search(body)
                    version = int(found.group(1)) if found else 0
                    if version != last.get(who.group(1), 0):
                        assign += 1
                    else:
                        nothing += 1
                    last[who.group(1)] = version
            else:
                bad += 1
                with lock:
                    if len(samples) < 5:
                        samples.append(f"{status} {body[:300].decode(errors='replace')}")
        conn.close()
        with lock:
            counts["assign"] += assign
            counts["nothing"] += nothing
            counts["unknown"] += unknown
            counts["bad"] += bad
            counts["socket"] += sock_errors

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = min(time.perf_counter(), deadline + 10) - start
    if not exhausted.is_set():
        elapsed = max(elapsed, duration)
    values = sorted(x * 1000 for part in latencies for x in part)
    name = f"python, open loop {rate:g}/s" if rate else "python"
    return LoadResult(
        generator=name,
        concurrency=concurrency,
        requests=len(values),
        duration_s=elapsed,
        rps=len(values) / elapsed,
        p50_ms=percentile(values, 50),
        p90_ms=percentile(values, 90),
        p99_ms=percentile(values, 99),
        max_ms=values[-1] if values else math.nan,
        with_assignment=counts["assign"],
        nothing=counts["nothing"],
        non_200=counts["bad"],
        socket_errors=counts["socket"],
        exhausted=exhausted.is_set(),
        samples=samples,
        unclassified=counts["unknown"],
    )


def _requests_from_file(path: Path, host_header: str) -> list[bytes]:
    result = []
    for line in path.read_bytes().splitlines():
        if not line:
            continue
        target, _, body = line.partition(b" ")
        result.append(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (target, host_header.encode(), len(body), body)
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--rate", type=float, default=None)
    parser.add_argument(
        "--versions", type=Path, default=None, help="'index version' lines (see the docstring)"
    )
    args = parser.parse_args()
    host = args.url.removeprefix("http://").rstrip("/")
    requests = _requests_from_file(args.requests, host)
    versions = {}
    if args.versions is not None:
        for line in args.versions.read_bytes().splitlines():
            index, _, version = line.partition(b" ")
            versions[index] = int(version)
    result = python_generator(
        args.url, requests, args.duration, args.concurrency, args.rate, versions
    )
    json.dump(result.to_json(), sys.stdout)


if __name__ == "__main__":
    main()

"""client.download against a real HTTP server on a loopback socket, misbehaving on request.

Each test gets its own ``ThreadingHTTPServer`` on 127.0.0.1:0 and sets ``server.behaviour``: a
function that answers one request (it gets the handler and the request's index). The helpers
below are the usual behaviours: serve with Range support, drop the connection, ignore Range,
trickle, send endless data. Timeouts are small so the whole file runs in a few seconds.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overdrive.client.download import (
    BundleCache,
    DownloadError,
    DownloadInterrupted,
    DownloadOptions,
    HashMismatch,
    LengthExceeded,
    Throttle,
    download,
)

DATA = bytes(range(256)) * 400  # 102,400 bytes
SHA = hashlib.sha256(DATA).hexdigest()
FAST = DownloadOptions(
    connect_timeout=2, read_timeout=2, backoff_s=0.01, attempts=3, min_rate_bytes_per_s=0
)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackServer

    def do_GET(self) -> None:
        with self.server.lock:
            index = len(self.server.requests)
            self.server.requests.append({k.lower(): v for k, v in self.headers.items()})
            self.server.paths.append(self.path)
        try:
            self.server.behaviour(self, index)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up, as it should when it is done with us
        finally:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


Behaviour = Callable[[Handler, int], None]


class LoopbackServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.stop = threading.Event()
        self.behaviour: Behaviour = lambda h, _i: serve(h, DATA)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/targets/bundle.bin"

    @property
    def ranges(self) -> list[str | None]:
        return [r.get("range") for r in self.requests]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


def serve(
    h: Handler,
    data: bytes,
    *,
    ranges: bool = True,
    drop_after: int | None = None,
    content_length: bool = True,
) -> None:
    """Serve ``data``; honour ``Range: bytes=N-`` with a 206 unless ``ranges`` is False; hang up
    after ``drop_after`` body bytes."""
    start = 0
    m = re.fullmatch(r"bytes=(\d+)-", h.headers.get("Range", ""))
    if m and ranges:
        start = int(m[1])
        if start >= len(data):
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(206)
        h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
        h.send_response(200)
    body = data[start:]
    if content_length:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if drop_after is not None:
        body = body[:drop_after]
    h.wfile.write(body)
    h.wfile.flush()


def status(h: Handler, code: int) -> None:
    h.send_response(code)
    h.send_header("Content-Length", "0")
    h.end_headers()


def part_of(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


# --- the happy paths ------------------------------------------------------------------------


def test_download_verifies_and_renames(server: LoopbackServer, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "bundle.bin"
    seen: list[tuple[int, int]] = []
    result = download(
        server.url,
        dest,
        length=len(DATA),
        sha256=SHA,
        options=FAST,
        progress=lambda *a: seen.append(a),
    )
    assert result == dest
    assert dest.read_bytes() == DATA
    assert not part_of(dest).exists()
    assert server.ranges == [None]
    assert seen[0] == (0, len(DATA)) and seen[-1] == (len(DATA), len(DATA))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert server.requests[0]["accept-encoding"] == "identity"


def test_complete_dest_returns_without_network(server: LoopbackServer, tmp_path: Path) -> None:
    dest = tmp_path / "bundle.bin"
    dest.write_bytes(DATA)
    assert download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST) == dest
    assert server.requests == []


def test_wrong_dest_is_replaced(server: LoopbackServer, tmp_path: Path) -> None:
    dest = tmp_path / "bundle.bin"
    dest.write_bytes(b"x" * len(DATA))
    download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert dest.read_bytes() == DATA


def test_complete_part_is_verified_without_network(server: LoopbackServer, tmp_path: Path) -> None:
    dest = tmp_path / "bundle.bin"
    part_of(dest).write_bytes(DATA)
    download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert dest.read_bytes() == DATA
    assert not part_of(dest).exists()
    assert server.requests == []


def test_follows_redirects_keeping_the_range(server: LoopbackServer, tmp_path: Path) -> None:
    def behaviour(h: Handler, _i: int) -> None:
        if h.path.startswith("/targets/"):
            h.send_response(302)
            h.send_header("Location", "/cdn/bundle.bin")
            h.send_header("Content-Length", "0")
            h.end_headers()
        else:
            serve(h, DATA)

    server.behaviour = behaviour
    dest = tmp_path / "bundle.bin"
    part_of(dest).write_bytes(DATA[:1000])
    download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert dest.read_bytes() == DATA
    assert server.paths == ["/targets/bundle.bin", "/cdn/bundle.bin"]
    assert server.ranges == ["bytes=1000-", "bytes=1000-"]


# --- resume ---------------------------------------------------------------------------------


def test_resumes_after_a_drop_within_one_call(server: LoopbackServer, tmp_path: Path) -> None:
    server.behaviour = lambda h, i: serve(h, DATA, drop_after=30_000 if i == 0 else None)
    dest = tmp_path / "bundle.bin"
    seen: list[int] = []
    download(
        server.url,
        dest,
        length=len(DATA),
        sha256=SHA,
        options=FAST,
        progress=lambda done, _total: seen.append(done),
    )
    assert dest.read_bytes() == DATA
    assert server.ranges == [None, "bytes=30000-"]
    assert 30_000 in seen and seen[-1] == len(DATA)


def test_interrupted_call_keeps_the_part_and_the_next_call_resumes(
    server: LoopbackServer, tmp_path: Path
) -> None:
    server.behaviour = lambda h, i: serve(h, DATA, drop_after=10_000 if i < 2 else None)
    dest = tmp_path / "bundle.bin"
    options = DownloadOptions(read_timeout=2, backoff_s=0.01, attempts=2)
    with pytest.raises(DownloadInterrupted) as e:
        download(server.url, dest, length=len(DATA), sha256=SHA, options=options)
    message = str(e.value)
    assert "\n" not in message and server.url in message and "20000 of 102400" in message
    assert part_of(dest).read_bytes() == DATA[:20_000]
    assert not dest.exists()

    # A new call (think: after a reboot) hashes the part and asks only for the rest.
    download(server.url, dest, length=len(DATA), sha256=SHA, options=options)
    assert dest.read_bytes() == DATA
    assert server.ranges == [None, "bytes=10000-", "bytes=20000-"]
    assert not part_of(dest).exists()


def test_server_ignoring_range_restarts_from_zero(server: LoopbackServer, tmp_path: Path) -> None:
    server.behaviour = lambda h, _i: serve(h, DATA, ranges=False)
    dest = tmp_path / "bundle.bin"
    part_of(dest).write_bytes(b"garbage that must not survive")
    download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges == ["bytes=29-"]


def test_mismatched_content_range_starts_over(server: LoopbackServer, tmp_path: Path) -> None:
    def behaviour(h: Handler, i: int) -> None:
        if i == 0:  # a broken cache: 206, but for other bytes than asked
            h.send_response(206)
            h.send_header("Content-Range", f"bytes 7-{len(DATA) - 1}/{len(DATA)}")
            h.send_header("Content-Length", str(len(DATA) - 7))
            h.end_headers()
            h.wfile.write(DATA[7:])
        else:
            serve(h, DATA)

    server.behaviour = behaviour
    dest = tmp_path / "bundle.bin"
    part_of(dest).write_bytes(DATA[:500])
    download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges == ["bytes=500-", None]


def test_416_for_an_object_shorter_than_the_part(server: LoopbackServer, tmp_path: Path) -> None:
    """The server's object is shorter than the bytes we hold: start over, then refuse it."""
    server.behaviour = lambda h, _i: serve(h, DATA[:50])
    dest = tmp_path / "bundle.bin"
    part_of(dest).write_bytes(DATA[:60])
    with pytest.raises(DownloadError, match=r"is 50 bytes, expected 102400") as e:
        download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert type(e.value) is DownloadError
    assert server.ranges == ["bytes=60-", None]


def test_part_longer_than_length_is_discarded(server: LoopbackServer, tmp_path: Path) -> None:
    dest = tmp_path / "bundle.bin"
    part_of(dest).write_bytes(DATA + b"tail")
    download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert dest.read_bytes() == DATA
    assert server.ranges == [None]


# --- slow retrieval -------------------------------------------------------------------------


def trickle(h: Handler, data: bytes, step: int, pause: float) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    for at in range(0, len(data), step):
        if h.server.stop.wait(pause):
            return
        h.wfile.write(data[at : at + step])
        h.wfile.flush()


@pytest.mark.timeout(10)
def test_trickling_server_is_abandoned_and_the_part_kept(
    server: LoopbackServer, tmp_path: Path
) -> None:
    # 100 bytes every 20 ms is ~5 kB/s, always within the read timeout, below the 50 kB/s floor.
    server.behaviour = lambda h, _i: trickle(h, DATA, 100, 0.02)
    dest = tmp_path / "bundle.bin"
    options = DownloadOptions(
        read_timeout=5,
        min_rate_bytes_per_s=50_000,
        rate_window_s=0.2,
        attempts=2,
        backoff_s=0.01,
    )
    with pytest.raises(DownloadInterrupted, match="too slow"):
        download(server.url, dest, length=len(DATA), sha256=SHA, options=options)
    kept = part_of(dest).read_bytes()
    assert 0 < len(kept) < len(DATA) and DATA.startswith(kept)
    assert len(server.requests) == 2
    assert server.ranges[1] is not None  # the second attempt resumed


@pytest.mark.timeout(10)
def test_stalled_server_hits_the_read_timeout(server: LoopbackServer, tmp_path: Path) -> None:
    def stall(h: Handler, _i: int) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(DATA)))
        h.end_headers()
        h.wfile.write(DATA[:1000])
        h.wfile.flush()
        h.server.stop.wait(10)

    server.behaviour = stall
    dest = tmp_path / "bundle.bin"
    options = DownloadOptions(read_timeout=0.2, attempts=1)
    with pytest.raises(DownloadInterrupted, match="read timeout"):
        download(server.url, dest, length=len(DATA), sha256=SHA, options=options)
    assert part_of(dest).read_bytes() == DATA[:1000]


# --- endless data ---------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_endless_data_raises_length_exceeded(server: LoopbackServer, tmp_path: Path) -> None:
    def endless(h: Handler, _i: int) -> None:
        h.send_response(200)  # no Content-Length: the body ends when the connection does
        h.end_headers()
        block = DATA[:4096]
        while not h.server.stop.is_set():
            h.wfile.write(block)

    server.behaviour = endless
    dest = tmp_path / "bundle.bin"
    with pytest.raises(LengthExceeded, match="more than the expected 102400 bytes"):
        download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert not part_of(dest).exists() and not dest.exists()


@pytest.mark.timeout(10)
def test_reads_at_most_one_byte_past_the_length(server: LoopbackServer, tmp_path: Path) -> None:
    """The server sends 100 bytes too many, then stalls: a client that reads on (to EOF) would
    time out instead of noticing the overflow."""

    def overflow_then_stall(h: Handler, _i: int) -> None:
        h.send_response(200)
        h.end_headers()
        h.wfile.write(DATA + b"x" * 100)
        h.wfile.flush()
        h.server.stop.wait(10)

    server.behaviour = overflow_then_stall
    dest = tmp_path / "bundle.bin"
    options = DownloadOptions(read_timeout=5, attempts=1)
    with pytest.raises(LengthExceeded):
        download(server.url, dest, length=len(DATA), sha256=SHA, options=options)
    assert not part_of(dest).exists()


def test_exact_length_without_content_length_then_stall_is_accepted(
    server: LoopbackServer, tmp_path: Path
) -> None:
    """All bytes arrived; the server just never closes. The hash decides, not the timeout."""

    def exact_then_stall(h: Handler, _i: int) -> None:
        h.send_response(200)
        h.end_headers()
        h.wfile.write(DATA)
        h.wfile.flush()
        h.server.stop.wait(10)

    server.behaviour = exact_then_stall
    dest = tmp_path / "bundle.bin"
    download(
        server.url, dest, length=len(DATA), sha256=SHA, options=DownloadOptions(read_timeout=0.2)
    )
    assert dest.read_bytes() == DATA


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Length": str(len(DATA) + 1)},
        {"Content-Length": "10", "Content-Range": f"bytes 0-9/{len(DATA) + 1}"},
    ],
    ids=["content-length", "content-range-total"],
)
def test_announced_overlength_is_refused_up_front(
    server: LoopbackServer, tmp_path: Path, headers: dict[str, str]
) -> None:
    def announce(h: Handler, _i: int) -> None:
        h.send_response(206 if "Content-Range" in headers else 200)
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(b"z" * 10)

    server.behaviour = announce
    dest = tmp_path / "bundle.bin"
    with pytest.raises(LengthExceeded, match="refused"):
        download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert len(server.requests) == 1
    assert not dest.exists() and not part_of(dest).exists()


def test_announced_overlength_on_resume_keeps_the_part(
    server: LoopbackServer, tmp_path: Path
) -> None:
    def announce(h: Handler, _i: int) -> None:
        h.send_response(206)
        h.send_header("Content-Range", f"bytes 100-{len(DATA) - 1}/*")
        h.send_header("Content-Length", str(len(DATA)))  # more than the 102,300 left
        h.end_headers()

    server.behaviour = announce
    dest = tmp_path / "bundle.bin"
    part_of(dest).write_bytes(DATA[:100])
    with pytest.raises(LengthExceeded, match="announced 102400 bytes from byte 100"):
        download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert part_of(dest).read_bytes() == DATA[:100]  # nothing was accepted, nothing lost


def test_wrong_sized_full_answer_on_resume_keeps_the_part(
    server: LoopbackServer, tmp_path: Path
) -> None:
    """A 200 for a bigger object is refused before the part is truncated for the restart."""
    server.behaviour = lambda h, _i: serve(h, DATA + b"!", ranges=False)
    dest = tmp_path / "bundle.bin"
    part_of(dest).write_bytes(DATA[:100])
    with pytest.raises(LengthExceeded, match="is 102401 bytes"):
        download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert part_of(dest).read_bytes() == DATA[:100]


# --- HTTP errors ----------------------------------------------------------------------------


def test_404_fails_fast(server: LoopbackServer, tmp_path: Path) -> None:
    server.behaviour = lambda h, _i: status(h, 404)
    dest = tmp_path / "bundle.bin"
    with pytest.raises(DownloadError) as e:
        download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert str(e.value) == f"{server.url} not found (HTTP 404)"
    assert type(e.value) is DownloadError
    assert len(server.requests) == 1
    assert not part_of(dest).exists()


def test_403_fails_fast_and_hides_the_query(server: LoopbackServer, tmp_path: Path) -> None:
    server.behaviour = lambda h, _i: status(h, 403)
    with pytest.raises(DownloadError) as e:
        download(
            server.url + "?X-Amz-Signature=secret",
            tmp_path / "b",
            length=len(DATA),
            sha256=SHA,
            options=FAST,
        )
    assert str(e.value) == f"{server.url}: HTTP 403 Forbidden"
    assert len(server.requests) == 1


def test_500_then_200_is_retried(server: LoopbackServer, tmp_path: Path) -> None:
    server.behaviour = lambda h, i: status(h, 500) if i == 0 else serve(h, DATA)
    dest = tmp_path / "bundle.bin"
    download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert dest.read_bytes() == DATA
    assert len(server.requests) == 2


def test_persistent_503_gives_up_after_the_attempts(server: LoopbackServer, tmp_path: Path) -> None:
    server.behaviour = lambda h, _i: status(h, 503)
    with pytest.raises(DownloadInterrupted, match=r"HTTP 503; gave up after 3 attempts") as e:
        download(server.url, tmp_path / "b", length=len(DATA), sha256=SHA, options=FAST)
    assert server.url in str(e.value)
    assert len(server.requests) == 3


def test_connection_refused_is_an_interruption(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    with pytest.raises(DownloadInterrupted, match="cannot connect"):
        download(
            f"http://127.0.0.1:{port}/b",
            tmp_path / "b",
            length=len(DATA),
            sha256=SHA,
            options=FAST,
        )


def test_wrong_bytes_raise_hash_mismatch_and_delete_the_part(
    server: LoopbackServer, tmp_path: Path
) -> None:
    evil = bytearray(DATA)
    evil[5000] ^= 0xFF
    server.behaviour = lambda h, _i: serve(h, bytes(evil))
    dest = tmp_path / "bundle.bin"
    with pytest.raises(HashMismatch, match=f"expected {SHA}"):
        download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert not part_of(dest).exists() and not dest.exists()


def test_a_second_downloader_of_the_same_file_is_refused(
    server: LoopbackServer, tmp_path: Path
) -> None:
    dest = tmp_path / "bundle.bin"
    with part_of(dest).open("wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(DownloadError, match="being downloaded by another process"):
            download(server.url, dest, length=len(DATA), sha256=SHA, options=FAST)
    assert server.requests == []


# --- file:// URLs ---------------------------------------------------------------------------


def test_file_url_downloads_and_resumes(tmp_path: Path) -> None:
    source = tmp_path / "repo dir" / "bundle.bin"
    source.parent.mkdir()
    source.write_bytes(DATA)
    dest = tmp_path / "out" / "bundle.bin"
    dest.parent.mkdir()
    part_of(dest).write_bytes(DATA[:12_345])
    seen: list[int] = []
    download(
        source.as_uri(),
        dest,
        length=len(DATA),
        sha256=SHA,
        progress=lambda done, _total: seen.append(done),
    )
    assert dest.read_bytes() == DATA
    assert seen[0] == 12_345  # resumed, not restarted
    assert not part_of(dest).exists()


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        (DATA + b"!", LengthExceeded, "is 102401 bytes, more than the expected 102400"),
        (DATA[:-1], DownloadError, "is 102399 bytes, expected 102400"),
        (b"x" * len(DATA), HashMismatch, "expected " + SHA),
        (None, DownloadError, "not found"),
    ],
    ids=["too-long", "too-short", "wrong-bytes", "missing"],
)
def test_file_url_checks(
    tmp_path: Path, content: bytes | None, error: type[DownloadError], match: str
) -> None:
    source = tmp_path / "bundle.bin"
    if content is not None:
        source.write_bytes(content)
    dest = tmp_path / "out.bin"
    with pytest.raises(error, match=match):
        download(source.as_uri(), dest, length=len(DATA), sha256=SHA)
    assert not dest.exists() and not part_of(dest).exists()


def test_unsupported_scheme_and_bad_hash_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unsupported URL scheme 'ftp'"):
        download("ftp://example.com/b", tmp_path / "b", length=1, sha256=SHA)
    with pytest.raises(DownloadError, match="invalid sha256"):
        download("http://127.0.0.1:1/b", tmp_path / "b", length=1, sha256="abc")
    with pytest.raises(DownloadError, match="attempts"):
        DownloadOptions(attempts=0)


# --- bandwidth cap --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_throttle_paces_to_the_cap() -> None:
    clock = FakeClock()
    throttle = Throttle(1000, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        throttle.consume(500)  # data arrives instantly: each 500 bytes costs half a second
    assert clock.slept == pytest.approx([0.5] * 5)
    assert 2500 / (clock.now - 100.0) == pytest.approx(1000)


def test_throttle_does_not_slow_a_slow_link_nor_bank_idle_time() -> None:
    clock = FakeClock()
    throttle = Throttle(1000, clock=clock, sleep=clock.sleep)
    throttle.consume(500)  # sleeps 0.5 s
    clock.now += 2.0  # the next 500 bytes took 2 s to arrive: slower than the cap ...
    assert throttle.consume(500) == 0.0  # ... so no sleep is owed for them,
    assert throttle.delay(1000) == pytest.approx(1.0)  # and the idle time bought no burst.
    assert throttle.delay(1000) == pytest.approx(2.0)  # Unslept debt carries over.
    assert clock.slept == pytest.approx([0.5])


def test_capped_download_takes_at_least_the_paced_time(
    server: LoopbackServer, tmp_path: Path
) -> None:
    """A lower bound only: a loaded machine can make it slower, never faster."""
    data = DATA[:6000]
    server.behaviour = lambda h, _i: serve(h, data)
    options = DownloadOptions(max_bytes_per_s=20_000, attempts=1)
    started = time.monotonic()
    download(
        server.url,
        tmp_path / "b",
        length=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        options=options,
    )
    assert time.monotonic() - started >= 0.25  # 6000 bytes at 20 kB/s is 0.3 s


# --- the bundle cache -----------------------------------------------------------------------


def fill(path: Path, size: int, mtime: float) -> Path:
    path.write_bytes(b"\0" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_cache_evicts_least_recently_used_first(tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "cache", max_bytes=1000)
    cache.directory.mkdir()
    old = fill(cache.directory / "a", 300, 1_000)
    in_use = fill(cache.directory / "b", 300, 2_000)  # older than c, but protected
    newer = fill(cache.directory / "c", 300, 3_000)
    cache.make_room(400, keep=[in_use])
    assert not old.exists() and in_use.exists() and newer.exists()  # 600 + 400 <= 1000
    cache.make_room(600, keep=[in_use])
    assert not newer.exists() and in_use.exists()
    assert cache.usage() == 300


def test_cache_spares_a_part_another_process_is_writing(tmp_path: Path) -> None:
    cache = BundleCache(tmp_path, max_bytes=1000)
    complete = fill(tmp_path / "a", 300, 3_000)
    abandoned = fill(tmp_path / "b.part", 300, 1_000)
    busy = fill(tmp_path / "c.part", 300, 1_000)
    with busy.open("rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        cache.make_room(400)  # complete files go before partial ones, even newer ones
        assert not complete.exists() and abandoned.exists() and busy.exists()
        cache.make_room(700)
        assert not abandoned.exists() and busy.exists()
        with pytest.raises(DownloadError, match="is full"):
            cache.make_room(701)


def test_cache_fetch_downloads_into_room_and_hits_later(
    server: LoopbackServer, tmp_path: Path
) -> None:
    cache = BundleCache(tmp_path / "cache", max_bytes=len(DATA) + 500)
    cache.directory.mkdir()
    stale = fill(cache.directory / "old-bundle", 1000, 1_000)
    path = cache.fetch(
        server.url, sha256=SHA, name="ecu-a/../fw 1.bin", length=len(DATA), options=FAST
    )
    assert path == cache.path_for(SHA, "fw 1.bin") == cache.directory / f"{SHA}-fw_1.bin"
    assert path.read_bytes() == DATA and not stale.exists()
    assert cache.fetch(server.url, sha256=SHA, name="fw 1.bin", length=len(DATA)) == path
    assert len(server.requests) == 1


def test_cache_refuses_a_bundle_larger_than_itself(server: LoopbackServer, tmp_path: Path) -> None:
    cache = BundleCache(tmp_path, max_bytes=len(DATA) - 1)
    with pytest.raises(DownloadError, match="larger than the whole bundle cache"):
        cache.fetch(server.url, sha256=SHA, name="b", length=len(DATA), options=FAST)
    assert server.requests == []

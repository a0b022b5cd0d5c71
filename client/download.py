"""Fetch a bundle straight from storage or a CDN, robustly, over a flaky cellular link.

The vehicle already knows from TUF the exact length and sha256 of the bundle it wants, so the
download trusts the server for nothing but bytes:

* it never accepts more than the signed length (an endless-data attack ends at ``length + 1``
  bytes, and a ``Content-Length`` or ``Content-Range`` that promises more is refused before
  reading);
* a server that trickles bytes (slow-retrieval attack) is dropped once the average rate over a
  window falls below a floor, and every socket read has a timeout;
* the bytes go to ``<dest>.part``; only a complete file whose sha256 matches is fsynced and
  atomically renamed to ``dest``, so ``dest`` is either absent, old, or correct;
* a dropped connection resumes with ``Range: bytes=N-`` from the bytes on disk, within one call
  (with exponential backoff) and across calls and process restarts (the ``.part`` is kept).

``file://`` URLs (a repository in a local directory, a USB stick) go through the same checks.
:class:`BundleCache` keeps downloaded bundles in a size-bounded directory with LRU eviction.

Only the base dependencies are used: the standard library and urllib3 (which TUF brings).
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import random
import re
import stat
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit
from urllib.request import url2pathname

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from overdrive.errors import OverdriveError
from overdrive.http import Deadline, DeadlineExceeded, pool_manager
from overdrive.storage.local import fsync_dir
from overdrive.text import one_line

__all__ = [
    "BundleCache",
    "DownloadError",
    "DownloadInterrupted",
    "DownloadOptions",
    "HashMismatch",
    "LengthExceeded",
    "Progress",
    "Throttle",
    "download",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as ``progress(bytes_done, total)`` when a download (re)starts and after every chunk."""

_CHUNK = 1 << 16  # socket reads: small enough for timely rate checks, large enough to be cheap
_HASH_CHUNK = 1 << 20  # streaming an existing file through sha256
_MAX_BACKOFF_S = 60.0
_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "overdrive-client"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class DownloadError(OverdriveError):
    """A bundle could not be downloaded; the message (one line) names the URL and the reason."""


class LengthExceeded(DownloadError):
    """The server sent, or announced, more bytes than the signed length (endless-data attack)."""


class HashMismatch(DownloadError):
    """The complete download's sha256 differs from the signed one; the bytes were discarded."""


class DownloadInterrupted(DownloadError):
    """The transfer kept failing (drops, timeouts, 5xx); the ``.part`` file is kept to resume."""


@dataclass(frozen=True)
class DownloadOptions:
    """How patient and how greedy a download is.

    ``min_rate_bytes_per_s`` defends against a server that trickles bytes just fast enough to
    beat ``read_timeout``: when the average rate over any ``rate_window_s`` falls below it, the
    attempt is abandoned (0 disables the check). Time spent in our own bandwidth throttle does not
    count against the server. ``attempts`` is the number of requests one call makes before it
    raises :class:`DownloadInterrupted`; each retry resumes from the bytes on disk after an
    exponential, jittered backoff starting at ``backoff_s``.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    #: Overall time for one request's status line and headers: a server that trickles its
    #: headers one byte at a time beats ``read_timeout`` but not this.
    header_deadline_s: float = 30.0
    min_rate_bytes_per_s: int = 1024
    rate_window_s: float = 10.0
    max_bytes_per_s: int | None = None
    attempts: int = 5
    backoff_s: float = 1.0

    def __post_init__(self) -> None:
        if (
            min(self.connect_timeout, self.read_timeout, self.header_deadline_s) <= 0
            or self.rate_window_s <= 0
        ):
            raise DownloadError("download timeouts and the rate window must be positive")
        if self.min_rate_bytes_per_s < 0 or self.backoff_s < 0:
            raise DownloadError("download minimum rate and backoff must not be negative")
        if self.max_bytes_per_s is not None and self.max_bytes_per_s <= 0:
            raise DownloadError("download bandwidth cap must be positive (or None for no cap)")
        if self.attempts < 1:
            raise DownloadError("download attempts must be at least 1")


class Throttle:
    """Keep the average rate at or below ``bytes_per_s`` by sleeping after each chunk.

    Each chunk is given a slot of ``n / bytes_per_s`` seconds that starts when the previous slot
    ended (or, if the link was slower than the cap, when the previous call returned); the caller
    sleeps until the slot ends. A link slower than the cap is therefore never slowed further, and
    idle time (a backoff, a stalled server) buys no burst beyond the chunk already received.
    ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        bytes_per_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if bytes_per_s <= 0:
            raise ValueError("bytes_per_s must be positive")
        self.bytes_per_s = bytes_per_s
        self._clock = clock
        self._sleep = sleep
        self._ready: float | None = None  # when the previous slot (or call) ended

    def delay(self, n: int) -> float:
        """Account for ``n`` bytes just received; return how long to wait (0 if none) before
        reading on. The caller is assumed to wait that long."""
        now = self._clock()
        start = now if self._ready is None else self._ready
        finish = start + n / self.bytes_per_s
        self._ready = max(finish, now)
        return max(0.0, finish - now)

    def consume(self, n: int) -> float:
        """Account for ``n`` bytes and sleep as needed; return the seconds slept."""
        wait = self.delay(n)
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    length: int,
    sha256: str,
    options: DownloadOptions | None = None,
    progress: Progress | None = None,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``, which then has exactly ``length`` bytes
    with the given sha256.

    If ``dest`` already is that file, nothing is fetched. Otherwise the bytes land in
    ``<dest>.part`` (resumed if it exists), which is renamed over ``dest`` only once complete and
    verified. Raises :class:`HashMismatch`, or :class:`LengthExceeded` when bytes beyond
    ``length`` arrive (the part is deleted: it is garbage; an over-long announcement is refused
    before any byte is read and leaves the part alone), :class:`DownloadInterrupted` when retries
    run out (the part is kept, a later call resumes), or :class:`DownloadError` for anything not
    worth retrying (404, 403, a wrong-sized object, an unwritable destination).
    """
    opts = options or DownloadOptions()
    expected = _check_sha256(sha256)
    if length < 0:
        raise DownloadError(f"invalid expected length {length} for {_redact(url)}")
    dest = Path(dest)
    if _is_complete(dest, length, expected):
        return dest
    source = _open_source(url, opts)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {dest.parent}: {e.strerror or e}") from e
    with source, _Part.open(_part_path(dest), length) as part:
        _transfer(source, part, length, opts, progress)
        part.finish(expected, dest, source.shown)
    return dest


class BundleCache:
    """A directory of downloaded bundles that stays under ``max_bytes``.

    Files are named ``<sha256>-<name>``, so a bundle is found by its content and two targets
    with the same name never collide. Recency is the file's mtime (``atime`` is unreliable on
    ``noatime`` mounts); :meth:`fetch` refreshes it on a hit. :meth:`make_room` evicts complete
    files, least recently used first, then abandoned ``.part`` files of other bundles (never one
    another process is downloading into, never anything in ``keep``).
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes <= 0:
            raise DownloadError(f"bundle cache size must be positive, not {max_bytes}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    def path_for(self, sha256: str, name: str) -> Path:
        """Where the bundle with this hash lives; ``name`` (e.g. a TUF target path) is cosmetic."""
        digest = _check_sha256(sha256)
        safe = _UNSAFE_NAME_CHARS.sub("_", Path(name).name).lstrip(".")[:100] or "bundle"
        return self.directory / f"{digest}-{safe}"

    def usage(self) -> int:
        """Bytes currently held by the cache directory (complete and partial files)."""
        return sum(size for _path, size, _mtime in self._entries())

    def make_room(self, needed: int, *, keep: Collection[Path] = ()) -> None:
        """Evict until ``needed`` more bytes fit under ``max_bytes``; never touch ``keep`` (or
        their ``.part`` files). Raises :class:`DownloadError` if that is impossible.
        """
        if needed > self.max_bytes:
            raise DownloadError(
                f"{needed} bytes do not fit in the bundle cache {self.directory} "
                f"({self.max_bytes} bytes)"
            )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DownloadError(f"cannot create {self.directory}: {e.strerror or e}") from e
        entries = self._entries()
        used = sum(size for _path, size, _mtime in entries)
        if used + needed <= self.max_bytes:
            return
        protected = {p.name for k in keep for p in (Path(k), _part_path(Path(k)))}
        candidates = [e for e in entries if e[0].name not in protected]
        # Complete files first (oldest use first), abandoned partial downloads only after them.
        candidates.sort(key=lambda e: (e[0].name.endswith(".part"), e[2]))
        for path, size, _mtime in candidates:
            if used + needed <= self.max_bytes:
                break
            if _evict(path):
                log.info("evicted %s (%d bytes) from the bundle cache", path.name, size)
                used -= size
        if used + needed > self.max_bytes:
            raise DownloadError(
                f"bundle cache {self.directory} is full: {needed} bytes needed, "
                f"{self.max_bytes - used} free after evicting everything not in use"
            )

    def fetch(
        self,
        url: str,
        *,
        sha256: str,
        name: str,
        length: int,
        options: DownloadOptions | None = None,
        progress: Progress | None = None,
    ) -> Path:
        """Return the cached bundle, downloading it (after making room) if it is not there yet."""
        digest = _check_sha256(sha256)
        dest = self.path_for(digest, name)
        if length > self.max_bytes:
            raise DownloadError(
                f"bundle {name} is {length} bytes, larger than the whole bundle cache "
                f"{self.directory} ({self.max_bytes} bytes)"
            )
        if not _is_complete(dest, length, digest):
            try:
                have = min(_part_path(dest).stat().st_size, length)
            except FileNotFoundError:
                have = 0
            self.make_room(length - have, keep=[dest])
        path = download(url, dest, length=length, sha256=digest, options=options, progress=progress)
        try:
            os.utime(path)
        except OSError as e:  # recency is best effort; the bundle is fine
            log.warning("cannot update the mtime of %s: %s", path, e)
        return path

    def _entries(self) -> list[tuple[Path, int, float]]:
        entries = []
        try:
            children = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        for path in children:
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                entries.append((path, st.st_size, st.st_mtime))
        return entries


# --- internals -------------------------------------------------------------------------------


class _Retry(Exception):
    """An attempt failed in a way worth retrying (internal; becomes DownloadInterrupted)."""

    def __init__(self, reason: str, *, restart: bool = False, retry_after: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.restart = restart  # the bytes on disk cannot be continued: start from 0
        self.retry_after = retry_after


class _Body(Protocol):
    """One response body. ``start`` is the offset its first byte has in the object (None if the
    server did not say usably), ``size`` the bytes it announces, ``total`` the object's size."""

    start: int | None
    size: int | None
    total: int | None

    def read1(self, n: int) -> bytes:
        """At most ``n`` bytes, whatever is available (b"" at the end); raises _Retry."""
        ...

    def close(self) -> None: ...


class _Source(Protocol):
    shown: str

    def open(self, offset: int) -> _Body: ...

    def __enter__(self) -> _Source: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _transfer(
    source: _Source, part: _Part, length: int, opts: DownloadOptions, progress: Progress | None
) -> None:
    """Fill ``part`` up to ``length`` bytes, retrying with backoff; raise DownloadInterrupted."""
    throttle = Throttle(opts.max_bytes_per_s) if opts.max_bytes_per_s else None
    failures = 0
    while part.size < length:
        try:
            _attempt(source, part, length, opts, throttle, progress)
        except _Retry as e:
            if e.restart:
                part.restart()
            elif part.size == length:
                break  # every byte arrived before the failure: let the hash decide
            failures += 1
            if failures >= opts.attempts:
                kept = (
                    f"{part.size} of {length} bytes kept in {part.path}"
                    if part.size
                    else "no bytes received"
                )
                raise DownloadInterrupted(
                    f"download of {source.shown} interrupted: {e.reason}; "
                    f"gave up after {failures} attempts, {kept}"
                ) from None
            delay = min(opts.backoff_s * 2 ** (failures - 1), _MAX_BACKOFF_S)
            delay = max(delay * random.uniform(0.5, 1.0), min(e.retry_after, _MAX_BACKOFF_S))
            log.info(
                "download of %s: %s; retrying in %.1f s from byte %d",
                source.shown,
                e.reason,
                delay,
                part.size,
            )
            time.sleep(delay)


def _attempt(
    source: _Source,
    part: _Part,
    length: int,
    opts: DownloadOptions,
    throttle: Throttle | None,
    progress: Progress | None,
) -> None:
    """One request: check what the server announces, then copy at most ``length + 1`` bytes."""
    offset = part.size
    body = source.open(offset)
    try:
        start = body.start
        if start is None or start not in (0, offset):
            raise _Retry(
                f"server answered a request for bytes {offset}- with "
                f"{'no usable range' if start is None else f'bytes {start}-'}",
                restart=True,
            )
        # Judge what the server announces before touching the bytes on disk.
        if body.total is not None and body.total > length:
            raise LengthExceeded(
                f"{source.shown} is {body.total} bytes, more than the expected {length}; refused"
            )
        if body.total is not None and body.total < length:
            raise DownloadError(
                f"{source.shown} is {body.total} bytes, expected {length}: wrong or stale object"
            )
        if body.size is not None and body.size > length - start:
            raise LengthExceeded(
                f"{source.shown} announced {body.size} bytes from byte {start}, more than the "
                f"expected {length} in total; refused"
            )
        if start != offset:
            log.info("%s ignored the range request; starting over", source.shown)
            part.restart()
        _copy(source.shown, body, part, length, opts, throttle, progress)
    finally:
        body.close()


def _copy(
    shown: str,
    body: _Body,
    part: _Part,
    length: int,
    opts: DownloadOptions,
    throttle: Throttle | None,
    progress: Progress | None,
) -> None:
    chunk = _CHUNK
    if opts.max_bytes_per_s:
        chunk = min(_CHUNK, max(256, opts.max_bytes_per_s // 10))
    monitor = _RateMonitor(opts.min_rate_bytes_per_s, opts.rate_window_s)
    if progress:
        progress(part.size, length)
    while True:
        # One byte more than we want: that is how an overlong body is noticed.
        try:
            data = body.read1(min(chunk, length - part.size + 1))
        except _Retry:
            if part.size == length:
                break  # every byte is here; a stalled or dropped end is harmless, the hash decides
            raise
        if not data:
            break
        if part.size + len(data) > length:
            part.discard()
            raise LengthExceeded(
                f"{shown} sent more than the expected {length} bytes; discarded the download"
            )
        part.write(data)
        if progress:
            progress(part.size, length)
        slept = throttle.consume(len(data)) if throttle else 0.0
        if part.size < length:  # complete: too late to be too slow
            monitor.update(len(data), paused=slept)
    if part.size < length:
        raise _Retry(f"connection closed after {part.size} of {length} bytes")


class _RateMonitor:
    """Abandon an attempt whose average rate over a window of ``window_s`` is below ``min_rate``.

    Only checked when bytes arrive; a server that sends nothing at all is caught by the read
    timeout instead, so a trickle is detected within ``window_s + read_timeout``.
    """

    def __init__(self, min_rate: int, window_s: float) -> None:
        self._min_rate = min_rate
        self._window_s = window_s
        self._start = time.monotonic()
        self._bytes = 0

    def update(self, n: int, *, paused: float = 0.0) -> None:
        self._start += paused  # our own throttle's sleeps are not the server's fault
        self._bytes += n
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed < self._window_s:
            return
        rate = self._bytes / elapsed
        if rate < self._min_rate:
            raise _Retry(
                f"transfer too slow: {rate:.0f} bytes/s over {elapsed:.1f} s, "
                f"below the minimum of {self._min_rate} bytes/s"
            )
        self._start, self._bytes = now, 0


class _Part:
    """The ``.part`` file, locked against a second downloader, with a running sha256."""

    def __init__(self, path: Path, f: BinaryIO, size: int) -> None:
        self.path = path
        self._f = f
        self.size = size
        self._hash = hashlib.sha256()
        self._discarded = False

    @classmethod
    def open(cls, path: Path, length: int) -> _Part:
        """Open (creating) and lock the part, then hash what it already holds."""
        for _ in range(5):
            f = cls._lock(path)
            if f is not None:
                break
        else:
            raise DownloadError(f"cannot lock {path}: it keeps being replaced")
        try:
            part = cls(path, f, os.fstat(f.fileno()).st_size)
            if part.size > length:
                part.restart()  # cannot be a prefix of the object we want
            else:
                part._rehash()
        except BaseException:
            f.close()
            raise
        return part

    @staticmethod
    def _lock(path: Path) -> BinaryIO | None:
        """The part, open and exclusively locked; None if the file was renamed or deleted
        between open and lock (another downloader finished it), so the caller tries again."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise DownloadError(f"cannot open {path}: {e.strerror or e}") from e
        f = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return f
        except BlockingIOError:
            f.close()
            raise DownloadError(f"{path} is being downloaded by another process") from None
        except FileNotFoundError:
            pass
        except BaseException:
            f.close()
            raise
        f.close()
        return None

    def _rehash(self) -> None:
        """Hash the bytes already on disk, streamed, so a resume can continue the digest."""
        try:
            self._f.seek(0)
            done = 0
            while done < self.size:
                block = self._f.read(min(_HASH_CHUNK, self.size - done))
                if not block:
                    break
                self._hash.update(block)
                done += len(block)
            self.size = done
            self._f.seek(done)
            self._f.truncate()
        except OSError as e:
            raise DownloadError(f"cannot read {self.path}: {e.strerror or e}") from e

    def restart(self) -> None:
        """Forget the bytes on disk: the next ones start the object."""
        try:
            self._f.seek(0)
            self._f.truncate()
        except OSError as e:
            raise DownloadError(f"cannot truncate {self.path}: {e.strerror or e}") from e
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise DownloadError(f"cannot write {self.path}: {e.strerror or e}") from e
        self._hash.update(data)
        self.size += len(data)

    def discard(self) -> None:
        """Delete the file: its content is garbage."""
        self._discarded = True
        self.path.unlink(missing_ok=True)

    def finish(self, expected: str, dest: Path, shown: str) -> None:
        """Verify the hash, then fsync and atomically rename the part to ``dest``."""
        actual = self._hash.hexdigest()
        if actual != expected:
            self.discard()
            raise HashMismatch(
                f"{shown} has sha256 {actual}, expected {expected}; discarded the download"
            )
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            os.replace(self.path, dest)
            fsync_dir(dest.parent)
        except OSError as e:
            raise DownloadError(f"cannot move the download to {dest}: {e.strerror or e}") from e
        self._discarded = True  # nothing left at self.path to keep

    def __enter__(self) -> _Part:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Make kept bytes durable for a resume after a power cut; drop an empty part."""
        try:
            if not self._discarded:
                if self.size == 0:
                    self.path.unlink(missing_ok=True)
                else:
                    self._f.flush()
                    os.fsync(self._f.fileno())
        except OSError as e:
            log.warning("cannot keep %s for a resume: %s", self.path, e)
        finally:
            self._f.close()


class _HttpBody:
    def __init__(
        self,
        response: urllib3.BaseHTTPResponse,
        start: int | None,
        size: int | None,
        total: int | None,
        read_timeout: float,
    ) -> None:
        self._response = response
        self.start = start
        self.size = size
        self.total = total
        self._read_timeout = read_timeout

    def read1(self, n: int) -> bytes:
        try:
            return self._response.read1(n)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
            raise _Retry(_reason(e, self._read_timeout)) from e

    def close(self) -> None:
        # Closes the connection without draining it: the rest may be endless.
        self._response.close()


class _HttpSource:
    """HTTP(S) GETs through urllib3, with our own redirect handling and no automatic retries."""

    def __init__(self, url: str, opts: DownloadOptions) -> None:
        self.url = url
        self.shown = _redact(url)
        self._read_timeout = opts.read_timeout
        self._header_deadline_s = opts.header_deadline_s
        self._pool = pool_manager(
            num_pools=2,
            timeout=urllib3.Timeout(connect=opts.connect_timeout, read=opts.read_timeout),
            retries=False,
        )

    def __enter__(self) -> _HttpSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.clear()

    def open(self, offset: int) -> _Body:
        headers = {"Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        url = self.url
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                # The deadline covers the status line and headers; the body's pace is judged
                # by the rate monitor (a large bundle may rightly take long).
                with Deadline(self._header_deadline_s).running(self.shown):
                    response = self._pool.request(
                        "GET",
                        url,
                        headers=headers,
                        preload_content=False,
                        decode_content=False,
                        redirect=False,
                        retries=False,
                    )
            except DeadlineExceeded:
                raise _Retry(
                    f"no complete response headers within {self._header_deadline_s:g} s"
                ) from None
            except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
                raise _Retry(_reason(e, self._read_timeout)) from e
            location = response.headers.get("Location")
            if response.status in _REDIRECTS and location:
                response.close()  # not drained: a redirect body may be endless too
                url = urljoin(url, location)
                if urlsplit(url).scheme not in ("http", "https"):
                    raise DownloadError(f"{self.shown} redirects to a non-HTTP URL; refused")
                continue
            return self._body(response, offset)
        raise DownloadError(f"{self.shown}: more than {_MAX_REDIRECTS} redirects")

    def _body(self, response: urllib3.BaseHTTPResponse, offset: int) -> _Body:
        status = response.status
        if status == 200:
            size = _content_length(response)
            return _HttpBody(response, 0, size, size, self._read_timeout)
        if status == 206:
            m = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if m is None or int(m[2]) < int(m[1]):
                return _HttpBody(response, None, None, None, self._read_timeout)
            start, end = int(m[1]), int(m[2])
            total = None if m[3] == "*" else int(m[3])
            size = _content_length(response)
            size = end - start + 1 if size is None else max(size, end - start + 1)
            return _HttpBody(response, start, size, total, self._read_timeout)
        response.close()
        if status in (404, 410):
            raise DownloadError(f"{self.shown} not found (HTTP {status})")
        if status == 416 and offset:
            raise _Retry(f"HTTP 416: the server has no bytes from {offset}", restart=True)
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}", retry_after=_retry_after(response))
        reason = one_line(response.reason or "", 100)  # the mirror's words: untrusted text
        raise DownloadError(f"{self.shown}: HTTP {status} {reason}".rstrip())


class _FileBody:
    def __init__(self, f: BinaryIO, start: int, total: int) -> None:
        self._f = f
        self.start: int | None = start
        self.total: int | None = total
        self.size: int | None = max(0, total - start)

    def read1(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except OSError as e:  # a USB stick pulled out, an NFS hiccup
            raise _Retry(f"read failed: {e.strerror or e}") from e

    def close(self) -> None:
        self._f.close()


class _FileSource:
    """A ``file://`` URL: the same checks as HTTP, resuming by seeking."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise DownloadError(f"{_redact(url)}: file URLs on another host are not supported")
        self.path = Path(url2pathname(parts.path))
        self.shown = _redact(url)

    def __enter__(self) -> _FileSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass

    def open(self, offset: int) -> _Body:
        try:
            f = self.path.open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise DownloadError(f"{self.shown} not found") from e
        except OSError as e:
            raise DownloadError(f"cannot open {self.shown}: {e.strerror or e}") from e
        try:
            total = os.fstat(f.fileno()).st_size
            f.seek(offset)
        except OSError as e:
            f.close()
            raise _Retry(f"cannot read: {e.strerror or e}") from e
        return _FileBody(f, offset, total)


def _open_source(url: str, opts: DownloadOptions) -> _Source:
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return _HttpSource(url, opts)
    if scheme == "file":
        return _FileSource(url)
    raise DownloadError(f"cannot download {_redact(url)}: unsupported URL scheme {scheme!r}")


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _check_sha256(sha256: str) -> str:
    digest = sha256.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise DownloadError(f"invalid sha256 {sha256!r}: expected 64 hex digits")
    return digest


def _is_complete(path: Path, length: int, sha256: str) -> bool:
    """Whether ``path`` already is the wanted file (hashing it streamed)."""
    try:
        if not path.is_file() or path.stat().st_size != length:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(_HASH_CHUNK):
                digest.update(block)
    except OSError:
        return False
    return digest.hexdigest() == sha256


def _evict(path: Path) -> bool:
    """Delete a cache entry unless it is a ``.part`` another process holds locked."""
    try:
        if not path.name.endswith(".part"):
            path.unlink(missing_ok=True)
            return True
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        else:
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)
    except FileNotFoundError:
        return True
    except OSError as e:
        log.warning("cannot evict %s from the bundle cache: %s", path, e)
        return False


def _redact(url: str) -> str:
    """The URL for messages and logs: no credentials, query (pre-signed URLs) or fragment."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _content_length(response: urllib3.BaseHTTPResponse) -> int | None:
    value = response.headers.get("Content-Length", "").strip()
    return int(value) if value.isdigit() else None


def _retry_after(response: urllib3.BaseHTTPResponse) -> float:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else 0.0


def _reason(e: BaseException, read_timeout: float) -> str:
    """A short, one-line description of a transport error."""
    if isinstance(e, NewConnectionError):
        cause: object = e.__context__ or e
        return one_line(f"cannot connect: {cause}", 200)
    if isinstance(e, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(e, ReadTimeoutError | TimeoutError):
        return f"no data for {read_timeout:g} s (read timeout)"
    if isinstance(e, ProtocolError) and len(e.args) > 1:
        return one_line(f"connection broken: {e.args[1]!r}", 200)
    return one_line(f"connection error: {e}", 200)

"""The TUF fetcher every Overdrive TUF client uses: ``file://`` and HTTP(S), with deadlines.

A repository in a local directory (the embedded default, a USB stick, an NFS mount) is verified by
exactly the same ngclient code path as one served over HTTP(S). Over HTTP, each fetch has an
overall deadline (headers and body): ngclient bounds the *length* of what it accepts and urllib3
the gap between two reads, but a mirror that trickles one byte every few seconds defeats both and
would hold a vehicle's refresh for hours. Every transport failure becomes one of TUF's
``DownloadError`` classes, which the callers already treat as "repository unreachable".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import urllib3
from tuf.api.exceptions import DownloadError, DownloadHTTPError, SlowRetrievalError
from tuf.ngclient import FetcherInterface

from overdrive.http import Deadline, pool_manager
from overdrive.text import one_line

_CHUNK = 1 << 16
#: Overall time allowed for fetching one metadata file or target (headers and body).
DEFAULT_DEADLINE_S = 300.0
#: Time allowed to connect, and between two reads.
DEFAULT_SOCKET_TIMEOUT_S = 30.0
_MAX_REDIRECTS = 5


class LocalOrHttpFetcher(FetcherInterface):
    """``file://`` from disk (a missing file is a 404, as on a web server); else HTTP(S)."""

    def __init__(
        self,
        user_agent: str | None = "overdrive",
        *,
        deadline_s: float = DEFAULT_DEADLINE_S,
        socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
    ) -> None:
        self.deadline_s = deadline_s
        self._pool = pool_manager(
            # identity: what ngclient length-checks must be what arrives, not a decompressed bomb
            headers={"User-Agent": user_agent or "overdrive", "Accept-Encoding": "identity"},
            timeout=urllib3.Timeout(connect=socket_timeout_s, read=socket_timeout_s),
            retries=urllib3.Retry(
                total=None, connect=0, read=0, status=0, other=0, redirect=_MAX_REDIRECTS
            ),
        )

    def _fetch(self, url: str) -> Iterator[bytes]:
        parsed = urlparse(url)
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
            try:
                f = path.open("rb")
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
                raise DownloadHTTPError(f"{path} not found", 404) from e
            return _file_chunks(f)
        if parsed.scheme not in ("http", "https"):
            raise DownloadError(f"unsupported URL scheme in {url!r}")
        deadline = Deadline(self.deadline_s).start()
        try:
            with deadline.watching():
                response = self._pool.request(
                    "GET", url, preload_content=False, decode_content=False
                )
        except urllib3.exceptions.HTTPError as e:
            deadline.cancel()
            raise _transport_error(url, e, deadline) from e
        if deadline.expired:
            response.close()
            deadline.cancel()
            raise _slow(url, deadline)
        if response.status != 200:
            response.close()
            deadline.cancel()
            raise DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return _http_chunks(url, response, deadline)


def _file_chunks(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while block := f.read(_CHUNK):
            yield block


def _http_chunks(
    url: str, response: urllib3.BaseHTTPResponse, deadline: Deadline
) -> Iterator[bytes]:
    try:
        yield from response.stream(_CHUNK)
        if deadline.expired:  # a body cut short by the deadline can end like a complete one
            raise _slow(url, deadline)
    except urllib3.exceptions.HTTPError as e:
        raise _transport_error(url, e, deadline) from e
    finally:
        deadline.cancel()
        response.release_conn()


def _slow(url: str, deadline: Deadline) -> SlowRetrievalError:
    return SlowRetrievalError(f"{url}: no complete answer within {deadline.seconds:g} s")


def _transport_error(url: str, e: Exception, deadline: Deadline) -> DownloadError:
    if deadline.expired:
        return _slow(url, deadline)
    if isinstance(e, urllib3.exceptions.TimeoutError):
        return SlowRetrievalError(f"{url}: timed out ({one_line(e, 200)})")
    return DownloadError(f"{url}: {one_line(e, 200)}")

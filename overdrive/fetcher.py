"""A TUF fetcher that also reads ``file://`` URLs, so a repository in a local directory (the
embedded default, a USB stick, an NFS mount) is verified by exactly the same ngclient code path as
one served over HTTP(S).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher

_CHUNK = 1 << 16


class LocalOrHttpFetcher(FetcherInterface):
    """``file://`` from disk (a missing file is a 404, as on a web server); else urllib3."""

    def __init__(self, user_agent: str | None = "overdrive") -> None:
        self._http = Urllib3Fetcher(app_user_agent=user_agent)

    def _fetch(self, url: str) -> Iterator[bytes]:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            return self._http._fetch(url)
        path = Path(unquote(parsed.path))
        try:
            f = path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise DownloadHTTPError(f"{path} not found", 404) from e
        return _chunks(f)


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    with f:
        while block := f.read(_CHUNK):
            yield block

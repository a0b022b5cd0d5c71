"""What one server process holds: the database engine, the director, a cache of the verified
release index, and its configuration. Kept on the Flask app (``app.extensions``), never global.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from overdrive.releases import ReleaseIndex
from overdrive.repository_view import verified_targets
from overdrive.storage import NotFound, Storage, open_storage
from server.config import ServerConfig
from server.db import DirectConnections
from server.director import Director
from server.errors import Unavailable
from server.metrics import Metrics

EXTENSION = "overdrive"
log = logging.getLogger("overdrive.server")


class ReleaseCache:
    """The release index from the verified repository, re-read every ``repository_refresh`` s.

    Re-reading means a TUF refresh against storage (round trips to S3 in production), so a stale
    index is refreshed in a background thread while requests keep using the one they have
    (assignment polls never wait for it); only the first load, and ``force=True`` (a campaign
    being created needs what was just published), wait. If refreshes keep failing, the last
    verified index is served for at most :data:`MAX_STALE_REFRESHES` refresh periods; after
    that requests load it themselves and get the error (polls then offer nothing), so an
    unreachable or no-longer-verifying repository (expired, rolled back) stops rollouts.
    """

    MAX_STALE_REFRESHES = 10

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._storage: Storage | None = None
        self._index: ReleaseIndex | None = None
        self.versions: dict[str, int] = {}
        self._loaded_at = 0.0  # last successful load
        self._tried_at = 0.0  # last load attempt
        self._lock = threading.Lock()  # one load at a time
        self._flag = threading.Lock()  # guards _refreshing; never held while loading
        self._refreshing = False

    def storage(self) -> Storage:
        if self.config.storage_url is None:
            raise Unavailable("this server has no image repository configured (--storage)")
        if self._storage is None:
            self._storage = open_storage(self.config.storage_url)
        return self._storage

    def trusted_root(self, storage: Storage) -> bytes:
        if self.config.trusted_root is not None:
            return self.config.trusted_root.read_bytes()
        try:  # trust on first use: pinned in state_dir from then on
            return storage.get_bytes("metadata/1.root.json")
        except NotFound as e:
            raise Unavailable(f"no image repository at {storage.url}") from e

    def index(self, *, force: bool = False) -> ReleaseIndex:
        index = self._index
        if index is None or force:
            with self._lock:
                if self._index is None or force:
                    self._load()
                assert self._index is not None
                return self._index
        now = time.monotonic()
        refresh = self.config.repository_refresh
        if now - self._loaded_at > max(refresh, 1) * self.MAX_STALE_REFRESHES:
            with self._lock:  # too old to trust: load it here, or fail this request
                if time.monotonic() - self._loaded_at > max(refresh, 1) * self.MAX_STALE_REFRESHES:
                    self._load()
                assert self._index is not None
                return self._index
        if now - max(self._loaded_at, self._tried_at) > refresh:
            self._refresh_in_background()
        return index

    def _load(self) -> None:
        self._tried_at = time.monotonic()
        storage = self.storage()
        targets, versions = verified_targets(
            storage, self.trusted_root(storage), self.config.state_dir / "tuf"
        )
        self._index, self.versions = ReleaseIndex(targets), versions
        self._loaded_at = time.monotonic()

    def _refresh_in_background(self) -> None:
        with self._flag:
            if self._refreshing:
                return
            self._refreshing = True

        def refresh() -> None:
            try:
                with self._lock:
                    self._load()
            except Exception:  # keep serving the last verified index for now; retried later
                log.warning("refreshing the release index failed", exc_info=True)
            finally:
                self._refreshing = False

        try:
            threading.Thread(target=refresh, name="overdrive-release-refresh", daemon=True).start()
        except RuntimeError:  # no thread to be had (interpreter shutting down): try next time
            self._refreshing = False


@dataclass
class ServerContext:
    config: ServerConfig
    engine: Engine
    sessions: sessionmaker[Session]
    director: Director | None
    releases: ReleaseCache
    metrics: Metrics
    #: The poll path's own per-thread connections (PostgreSQL only; see server.poll).
    direct: DirectConnections | None = None
    started_at: float = field(default_factory=time.time)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read-only unit of work (no commit)."""
        with self.sessions() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A unit of work that commits at the end of the block, or rolls back on error."""
        with self.sessions() as session, session.begin():
            yield session

    def require_director(self) -> Director:
        if self.director is None:
            raise Unavailable("this server has no director key configured (--director-key)")
        return self.director


def context() -> ServerContext:
    ctx: ServerContext = current_app.extensions[EXTENSION]
    return ctx

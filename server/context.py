"""What one server process holds: the database engine, the director, a cache of the verified
release index, and its configuration. Kept on the Flask app (``app.extensions``), never global.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from overdrive.errors import OverdriveError
from overdrive.releases import ReleaseIndex
from overdrive.repository_view import RepositoryUnreachable, RepositoryUnverified, verified_targets
from overdrive.server.config import ServerConfig
from overdrive.server.db import DirectConnections
from overdrive.server.director import Director
from overdrive.server.errors import DATA_ERRORS, Unavailable, from_database_error
from overdrive.server.metrics import Metrics
from overdrive.storage import NotFound, Storage, open_storage
from overdrive.text import one_line

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

    Trust state is kept per repository (:meth:`trust_dir`). A repository that does not verify
    from it (re-initialised with new keys, say) is a 503 naming the directory and the fix, and
    ``/readyz`` says so (:meth:`problem`); a failed load is answered from memory for
    :data:`RETRY_FAILED_LOAD` seconds, so a broken repository is not re-read on every request.
    """

    MAX_STALE_REFRESHES = 10
    RETRY_FAILED_LOAD = 5.0

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
        self._failure: tuple[float, Unavailable] | None = None  # the last load's error, if any
        self._trust_dir: Path | None = None

    def storage(self) -> Storage:
        if self.config.storage_url is None:
            raise Unavailable("this server has no image repository configured (--storage)")
        if self._storage is None:
            try:
                self._storage = open_storage(self.config.storage_url)
            except OverdriveError as e:
                raise Unavailable(f"cannot open the image repository: {one_line(e)}") from e
        return self._storage

    def trusted_root(self, storage: Storage) -> bytes:
        """The root metadata that bootstraps :meth:`trust_dir`: ``--trusted-root``, or the
        repository's own ``1.root.json`` (trust on first use: pinned from then on)."""
        if self.config.trusted_root is not None:
            return self._read_trusted_root(self.config.trusted_root)
        try:
            return storage.get_bytes("metadata/1.root.json")
        except NotFound as e:
            raise Unavailable(f"no image repository at {storage.url}") from e
        except OverdriveError as e:
            raise Unavailable(f"cannot read the image repository at {storage.url}: {e}") from e

    @staticmethod
    def _read_trusted_root(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as e:
            raise Unavailable(f"cannot read the trusted root {path}: {e.strerror or e}") from e

    def trust_dir(self, storage: Storage) -> Path:
        """Where this repository's verified TUF metadata is pinned:
        ``STATE_DIR/repositories/KEY``, KEY a hash of the storage URL (and of the
        ``--trusted-root`` file, when one is given). Two repositories never share pinned state,
        and a new ``--trusted-root`` starts afresh from itself; the same repository keeps its
        state (and so its rollback protection) across restarts."""
        if self._trust_dir is None:
            basis = storage.url
            if self.config.trusted_root is not None:
                root = self._read_trusted_root(self.config.trusted_root)
                basis += "\ntrusted-root sha256:" + hashlib.sha256(root).hexdigest()
            key = hashlib.sha256(basis.encode()).hexdigest()[:16]
            self._trust_dir = self.config.state_dir / "repositories" / key
        return self._trust_dir

    def problem(self) -> str | None:
        """Why the release index cannot be served now (for ``/readyz``), or None. A server
        without a repository has none to fail (it serves no rollouts, by configuration)."""
        if self.config.storage_url is None:
            return None
        try:
            self.index()
        except OverdriveError as e:
            return str(e)
        except Exception as e:  # readiness must answer, whatever broke
            log.warning("checking the image repository failed", exc_info=True)
            return one_line(f"{type(e).__name__}: {e}")
        return None

    def index(self, *, force: bool = False) -> ReleaseIndex:
        index = self._index
        if index is None or force:
            with self._lock:
                if self._index is None or force:
                    self._load(retry=force)
                assert self._index is not None
                return self._index
        now = time.monotonic()
        refresh = self.config.repository_refresh
        if now - self._loaded_at > max(refresh, 1) * self.MAX_STALE_REFRESHES:
            with self._lock:  # too old to trust: load it here, or fail this request
                if time.monotonic() - self._loaded_at > max(refresh, 1) * self.MAX_STALE_REFRESHES:
                    self._load(retry=False)
                assert self._index is not None
                return self._index
        if now - max(self._loaded_at, self._tried_at) > refresh:
            self._refresh_in_background()
        return index

    def _load(self, *, retry: bool = True) -> None:
        """Verify the repository and keep its index; raise :class:`Unavailable` saying why not.
        Without ``retry``, a load that failed less than :data:`RETRY_FAILED_LOAD` s ago is not
        tried again: its error is raised again."""
        failure = self._failure
        if not retry and failure and time.monotonic() - failure[0] < self.RETRY_FAILED_LOAD:
            raise Unavailable(str(failure[1]), code=failure[1].code)
        self._tried_at = time.monotonic()
        try:
            targets, versions = self._verify()
        except Unavailable as e:
            self._failure = (time.monotonic(), e)
            raise
        self._index, self.versions = ReleaseIndex(targets), versions
        self._loaded_at = time.monotonic()
        self._failure = None

    def _verify(self) -> tuple[dict[str, Any], dict[str, int]]:
        """The verified targets and role versions, or :class:`Unavailable` naming the fix."""
        storage = self.storage()
        directory = self.trust_dir(storage)
        root = None if (directory / "root.json").exists() else self.trusted_root(storage)
        try:
            result = verified_targets(storage, root, directory)
        except RepositoryUnreachable as e:
            raise Unavailable(
                f"cannot read the image repository at {storage.url}: {_cause(e)}",
                code="repository_unavailable",
            ) from e
        except RepositoryUnverified as e:
            raise Unavailable(
                self._unverified(storage, directory, _cause(e)), code="repository_unverified"
            ) from e
        if root is not None:  # newly pinned: say which repository this state belongs to
            (directory / "repository.txt").write_text(f"{storage.url}\n")
        return result

    def _unverified(self, storage: Storage, directory: Path, error: str) -> str:
        """The 503 message for a repository that does not verify: what, where, and the fix."""
        if self.config.trusted_root is not None:
            return (
                f"the image repository at {storage.url} does not verify against the trusted root "
                f"{self.config.trusted_root} (state pinned in {directory}): {error}; if the "
                "repository was re-initialised on purpose, pass its new root.json as "
                "--trusted-root"
            )
        return (
            f"the image repository at {storage.url} does not verify against the trusted root "
            f"pinned in {directory}: {error}; if the repository was re-initialised on purpose, "
            f"remove {directory} (its new root is then pinned on first use) or pass "
            "--trusted-root with its new root.json"
        )

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


def _cause(error: Exception) -> str:
    """What python-tuf (or the storage) said, on one line: ``UnsignedMetadataError: …``."""
    cause = error.__cause__ or error
    return one_line(f"{type(cause).__name__}: {cause}", 300)


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
        """A unit of work that commits at the end of the block, or rolls back on error.

        A unique violation or a value the database cannot hold (two requests racing for the
        same rows, say) becomes the API's 409 or 400 here (:func:`overdrive.server.errors.from_database_error`),
        so the API and the dashboard both answer it as a one-line error, not a 500.
        """
        try:
            with self.sessions() as session, session.begin():
                yield session
        except DATA_ERRORS as e:
            raise from_database_error(e) from e

    def require_director(self) -> Director:
        if self.director is None:
            raise Unavailable(
                "this server has no director repository configured "
                "(--director-storage, --director-keys)"
            )
        return self.director


def context() -> ServerContext:
    ctx: ServerContext = current_app.extensions[EXTENSION]
    return ctx

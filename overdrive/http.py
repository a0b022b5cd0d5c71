"""HTTP with an overall deadline: no peer holds a request open longer than we allow.

A socket timeout bounds each read, not the exchange: a server that sends its status line and
then one header byte every few seconds never trips it, and holds the caller for as long as it
likes (a slow-retrieval attack on the headers, where the body's rate check cannot see it). A
:class:`Deadline` bounds the whole exchange instead. Connections made by :func:`pool_manager`
register with the deadline that is being watched in their thread when they send a request; when
the deadline passes, a timer shuts their sockets down, which makes the blocked read return at
once. The caller then sees an ordinary connection error, and :attr:`Deadline.expired` says why.

Only urllib3 is used (the TUF client brings it), so this works on the vehicle's base install.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from overdrive.errors import OverdriveError

__all__ = ["Deadline", "DeadlineExceeded", "pool_manager"]

_local = threading.local()


class DeadlineExceeded(OverdriveError):
    """An HTTP exchange did not complete within its overall deadline."""


class Deadline:
    """An overall time limit for one or more HTTP exchanges, enforced by a timer thread.

    :meth:`start` arms the timer; :meth:`watching` is the window in which requests sent from this
    thread put their connections under this deadline (they stay under it until :meth:`cancel`,
    so a response body read after the request returned is covered too).
    """

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("a deadline must be positive")
        self.seconds = seconds
        self._lock = threading.Lock()
        self._connections: list[HTTPConnection] = []
        self._expired = False
        self._timer: threading.Timer | None = None

    @property
    def expired(self) -> bool:
        return self._expired

    def start(self) -> Deadline:
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._connections.clear()

    @contextmanager
    def watching(self) -> Iterator[Deadline]:
        previous = getattr(_local, "deadline", None)
        _local.deadline = self
        try:
            yield self
        finally:
            _local.deadline = previous

    @contextmanager
    def running(self, what: str) -> Iterator[Deadline]:
        """Start, watch and cancel around a block: the whole block is one deadline.

        Raises :class:`DeadlineExceeded` (naming ``what``) if the deadline passed, whether the
        block then failed or not: a socket shut down mid-headers can look like a short but
        complete answer, which must not be believed.
        """
        self.start()
        try:
            with self.watching():
                yield self
        except Exception as e:
            if self._expired:
                raise self.exceeded(what) from e
            raise
        finally:
            self.cancel()
        if self._expired:
            raise self.exceeded(what)

    def exceeded(self, what: str) -> DeadlineExceeded:
        return DeadlineExceeded(f"{what}: no complete answer within {self.seconds:g} s")

    def _register(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connections.append(connection)
            expired = self._expired
        if expired:
            _shutdown(connection)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)


def _shutdown(connection: HTTPConnection) -> None:
    sock = getattr(connection, "sock", None)
    if sock is None:
        return
    # The plain socket's shutdown, also for TLS: it only has to wake the blocked read.
    with suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watched:
    """Mixin: a connection that puts itself under the thread's current deadline."""

    def _watch(self) -> None:
        deadline = getattr(_local, "deadline", None)
        if deadline is not None:
            deadline._register(self)

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self._watch()  # a connection opened after the deadline passed is shut at once

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._watch()
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Watched, HTTPConnection):
    pass


class _HTTPSConnection(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def pool_manager(**kwargs: Any) -> urllib3.PoolManager:
    """A urllib3 ``PoolManager`` whose connections obey the :class:`Deadline` being watched."""
    manager = urllib3.PoolManager(**kwargs)
    manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
    return manager

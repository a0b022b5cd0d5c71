"""Database engine and sessions: SQLite (WAL) as the embedded default, PostgreSQL in production.

Workers are stateless; everything they share lives here. SQLite gets WAL mode, a busy timeout and
foreign keys so that several threads (and the evaluator) can use one file safely.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker


class Base(DeclarativeBase):
    """Declarative base of every table."""


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` (psycopg 3 driver) and plain SQLite paths."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if "://" not in url:
        return f"sqlite:///{url}"
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # pysqlite would start transactions itself; the "begin" hook below does it instead.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in (
                "journal_mode=WAL",
                "synchronous=NORMAL",
                "foreign_keys=ON",
                "busy_timeout=30000",
            ):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Take the write lock at BEGIN: two writers never both read-then-write stale rows.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits at the end of the block or rolls back on any error."""
    with factory() as session, session.begin():
        yield session


class DirectConnections:
    """One autocommit psycopg connection per thread, for the poll path on PostgreSQL.

    The hot path runs a few prepared statements per request; going through the engine costs a
    pool checkout, a pre-ping round trip and a reset on return each time. A thread keeps its own
    connection instead (gunicorn's thread count bounds how many there are), checks it is not
    broken before use, and drops it after a connection error so the next request reconnects:
    after a database restart one request per thread fails (503, retried by the vehicle).
    """

    def __init__(self, url: str, *, synchronous_commit: bool = False) -> None:
        self.conninfo = (
            make_url(normalise_url(url))
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        # A poll's writes (counter, last seen, reported images) are restated by the vehicle's
        # next poll, so by default they need not wait for the WAL flush: that wait, not CPU,
        # is what bounds polls/s. Events and operator changes use the engine: always durable.
        options = conninfo_to_dict(self.conninfo).get("options") or ""
        if not synchronous_commit:
            options = f"{options} -c synchronous_commit=off".strip()
        self.options = str(options)
        self._local = threading.local()
        #: Called with each statement's SQL and parameters when set (tests and benchmarks).
        self.trace: Callable[[str, Any], None] | None = None

    def get(self) -> psycopg.Connection[Any]:
        """This thread's connection, (re)connecting if it has none or it broke."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self.conninfo, autocommit=True, options=self.options)
            self._local.conn = conn
        return conn

    def discard(self) -> None:
        """Drop this thread's connection (after an error): the next :meth:`get` reconnects."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

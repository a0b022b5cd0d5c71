"""Database engine and sessions: SQLite (WAL) as the embedded default, PostgreSQL in production.

Workers are stateless; everything they share lives here. SQLite gets WAL mode, a busy timeout and
foreign keys so that several threads (and the evaluator) can use one file safely.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import URL, Engine, create_engine, event, inspect, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import NullPool

from overdrive.errors import OverdriveError


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
    connection instead (the server's thread count bounds how many there are; connections of
    threads that ended are closed when the next one is opened, and :meth:`close_all` closes
    the rest), and reconnects when it broke. Callers retry a read once on a fresh connection
    after a connection failure, so a database restart costs no failed request once the
    database is back.
    """

    CONNECT_TIMEOUT_S = 5

    def __init__(self, url: str, *, synchronous_commit: bool = False) -> None:
        self.conninfo = (
            make_url(normalise_url(url))
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        # A poll's writes (counter, last seen, reported images) are restated by the vehicle's
        # next poll, so by default they need not wait for the WAL flush: that wait, not CPU,
        # is what bounds polls/s. Events and operator changes use the engine: always durable.
        # Set after connecting, not as a startup option, which PgBouncer refuses.
        self.synchronous_commit = synchronous_commit
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: dict[int, tuple[threading.Thread, psycopg.Connection[Any]]] = {}
        #: Called with each statement's SQL and parameters when set (tests and benchmarks).
        self.trace: Callable[[str, Any], None] | None = None

    def get(self) -> psycopg.Connection[Any]:
        """This thread's connection, (re)connecting if it has none or it broke."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(
                self.conninfo, autocommit=True, connect_timeout=self.CONNECT_TIMEOUT_S
            )
            if not self.synchronous_commit:
                conn.execute("SET synchronous_commit TO off")
            self._local.conn = conn
            self._register(conn)
        return conn

    def current(self) -> psycopg.Connection[Any] | None:
        """This thread's connection as it is (None if it has none), without reconnecting."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        return conn

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        current = threading.current_thread()
        with self._lock:
            ended = [k for k, (thread, _) in self._open.items() if not thread.is_alive()]
            stale = [self._open.pop(k)[1] for k in ended]
            replaced = self._open.pop(current.ident or 0, None)  # this thread's broken one
            self._open[current.ident or 0] = (current, conn)
        if replaced is not None:
            stale.append(replaced[1])
        for old in stale:
            old.close()

    def discard(self) -> None:
        """Drop this thread's connection (after an error): the next :meth:`get` reconnects."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        self._local.conn = None
        with self._lock:
            self._open.pop(threading.get_ident(), None)
        if conn is not None:
            conn.close()

    def close_all(self) -> None:
        """Close every thread's connection (at shutdown; a thread that uses it again reconnects)."""
        with self._lock:
            conns = [conn for _, conn in self._open.values()]
            self._open.clear()
        for conn in conns:
            conn.close()


# ------------------------------------------------------------------ administrative commands


class DatabaseUnavailable(OverdriveError):
    """The database named by ``--db`` cannot be used: missing, never migrated, unreachable."""


def describe_url(url: str) -> str:
    """``url`` as an error message shows it: a SQLite file as an absolute ``sqlite:///`` URL
    (so a relative path says where it was looked for), any other URL without its password."""
    path = sqlite_path(url)
    if path is not None:
        return f"sqlite:///{path}"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def sqlite_path(url: str) -> Path | None:
    """The absolute file of a SQLite URL; None for other databases and in-memory SQLite."""
    parsed = _parse(url)
    if not parsed.drivername.startswith("sqlite"):
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database).expanduser().absolute()


def _parse(url: str) -> URL:
    try:
        return make_url(normalise_url(url))
    except ArgumentError as e:
        raise DatabaseUnavailable(
            f"invalid --db URL {url!r} (expected sqlite:///FILE or postgresql://…)"
        ) from e


def check_creatable(url: str) -> None:
    """For ``server migrate``/``run``: a SQLite file can be created where ``url`` says (its
    directory exists), instead of SQLite's bare "unable to open database file"."""
    path = sqlite_path(url)
    if path is None:
        return
    if path.is_dir():
        raise DatabaseUnavailable(f"--db {describe_url(url)} is a directory, not a database file")
    if not path.parent.is_dir():
        raise DatabaseUnavailable(
            f"cannot create the database {describe_url(url)}: "
            f"directory {path.parent} does not exist"
        )


def require_migrated(url: str) -> None:
    """Refuse a database that ``server migrate`` never set up, without creating anything.

    Administrative commands (tokens, tick, …) run against the server's database; a mistyped
    ``--db`` or the wrong working directory must not silently create a fresh ``overdrive.db``
    and print a token that the real server has never heard of.
    """
    parsed = _parse(url)
    where = describe_url(url)
    fix = f"run `overdrive server migrate --db {where}` first, or pass the right --db"
    if parsed.drivername.startswith("sqlite"):
        path = sqlite_path(url)
        if path is None:
            raise DatabaseUnavailable(
                f"an in-memory SQLite database ({where}) is empty on every run: pass the "
                "server's --db"
            )
        if path.is_dir():
            raise DatabaseUnavailable(f"--db {where} is a directory, not a database file")
        if not path.parent.is_dir():
            raise DatabaseUnavailable(
                f"no Overdrive database at {where}: directory {path.parent} does not exist; "
                "pass the right --db"
            )
        if not path.exists():
            raise DatabaseUnavailable(
                f"no Overdrive database at {where} (it was never migrated); {fix}"
            )
        migrated = _sqlite_has_schema(path, where)
    else:
        migrated = _server_has_schema(url, where)
    if not migrated:
        raise DatabaseUnavailable(
            f"{where} is not an Overdrive database (it was never migrated); {fix}"
        )


def _sqlite_has_schema(path: Path, where: str) -> bool:
    """Is Alembic's version table in the SQLite file ``path``? Opened read-write without
    creating it and without pragmas, so a foreign file is left exactly as it was."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True)
        try:
            row = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise DatabaseUnavailable(f"cannot read the database {where}: {e}") from e
    return row is not None


def _server_has_schema(url: str, where: str) -> bool:
    """Is Alembic's version table in the (PostgreSQL) database at ``url``?"""
    try:
        engine = create_engine(normalise_url(url), poolclass=NullPool)
    except (ArgumentError, NoSuchModuleError) as e:
        raise DatabaseUnavailable(f"unsupported --db URL {where}: {e}") from e
    try:
        with engine.connect() as conn:
            return bool(inspect(conn).has_table("alembic_version"))
    except SQLAlchemyError as e:
        raise DatabaseUnavailable(f"cannot connect to the database {where}: {reason(e)}") from e
    finally:
        engine.dispose()


def reason(error: BaseException) -> str:
    """The first line of a database error's cause (the driver's message, not SQLAlchemy's)."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def reported(url: str) -> Iterator[None]:
    """Turn a database that cannot be opened or reached mid-command (OperationalError) into
    one line naming it, for the command line; other errors pass through unchanged."""
    try:
        yield
    except (OperationalError, psycopg.OperationalError) as e:
        raise DatabaseUnavailable(f"database {describe_url(url)}: {reason(e)}") from e

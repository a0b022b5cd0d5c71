"""Alembic environment: runs on the connection ``server.migrate`` hands over."""

from __future__ import annotations

from alembic import context

from overdrive.server import models  # noqa: F401  (registers the tables)
from overdrive.server.db import Base, make_engine

config = context.config
connection = config.attributes.get("connection")


def run(conn: object) -> None:
    context.configure(
        connection=conn,  # type: ignore[arg-type]
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite needs table rebuilds for ALTERs
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:  # plain `alembic` CLI use
    engine = make_engine(str(config.get_main_option("sqlalchemy.url")))
    with engine.begin() as conn:
        run(conn)

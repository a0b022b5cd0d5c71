"""The poll path's own PostgreSQL connections: per thread, asynchronous commit unless asked."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from server.db import DirectConnections

POSTGRES = os.environ.get("OVERDRIVE_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not POSTGRES, reason="OVERDRIVE_TEST_POSTGRES_URL not set")


@pytest.fixture
def url_with_options() -> Iterator[str]:
    """A URL that already carries libpq options (a search path), as deployments may."""
    assert POSTGRES
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.mark.parametrize(("durable", "expected"), [(False, "off"), (True, "on")])
def test_commit_mode_and_the_urls_own_options(
    url_with_options: str, durable: bool, expected: str
) -> None:
    direct = DirectConnections(url_with_options, synchronous_commit=durable)
    try:
        conn = direct.get()
        assert conn.execute("SHOW synchronous_commit").fetchone() == (expected,)
        path = conn.execute("SHOW search_path").fetchone()
        assert path is not None and path[0].startswith("t_")
        assert direct.get() is conn  # one per thread, reused
        direct.discard()
        assert direct.get() is not conn
    finally:
        direct.discard()

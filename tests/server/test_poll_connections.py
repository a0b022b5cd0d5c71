"""The poll path's own PostgreSQL connections: per thread, asynchronous commit unless asked."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from overdrive.server.db import DirectConnections
from tests.server.conftest import postgres_schema

POSTGRES = os.environ.get("OVERDRIVE_TEST_POSTGRES_URL")
pytestmark = pytest.mark.skipif(not POSTGRES, reason="OVERDRIVE_TEST_POSTGRES_URL not set")


@pytest.fixture
def url_with_options() -> Iterator[str]:
    """A URL that already carries libpq options (a search path), as deployments may."""
    with postgres_schema() as url:
        yield url


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
        assert conn.closed and direct.get() is not conn
    finally:
        direct.close_all()


def test_connections_of_ended_threads_are_closed(url_with_options: str) -> None:
    direct = DirectConnections(url_with_options)
    opened: list[Any] = []
    try:
        for _ in range(3):  # like the development server: a thread per HTTP connection
            thread = threading.Thread(target=lambda: opened.append(direct.get()))
            thread.start()
            thread.join()
        assert [c.closed for c in opened] == [True, True, False]  # closed when the next opened
        mine = direct.get()
        assert opened[2].closed  # its thread has ended too
        direct.close_all()
        assert mine.closed
    finally:
        direct.close_all()

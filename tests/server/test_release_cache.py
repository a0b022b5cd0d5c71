"""The server's release index: a stale one is refreshed in the background, never on a request."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from overdrive.errors import OverdriveError
from overdrive.releases import ReleaseIndex
from overdrive.server.config import ServerConfig
from overdrive.server.context import ReleaseCache
from tests.repo_fixtures import Published


def wait_for(condition, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "background refresh did not finish"
        time.sleep(0.01)


def cache_for(published: Published, tmp_path: Path, storage: Path) -> ReleaseCache:
    return ReleaseCache(
        ServerConfig(storage_url=str(storage), state_dir=tmp_path / "state", repository_refresh=0)
    )


def test_a_stale_index_is_served_while_it_refreshes(published: Published, tmp_path: Path) -> None:
    cache = cache_for(published, tmp_path, published.storage)
    first = cache.index()
    assert "ecu-a" in first.releases
    loaded = cache._loaded_at
    assert cache.index() is first  # stale (refresh after 0 s), but answered at once
    wait_for(lambda: cache._loaded_at > loaded and not cache._refreshing)
    assert cache.index() is not first  # the refreshed index, verified again


def loaded_then_broken(published: Published, tmp_path: Path) -> tuple[ReleaseCache, ReleaseIndex]:
    """A cache that loaded a copy of the repository (and that index), then the copy broke."""
    storage = tmp_path / "repository-copy"
    shutil.copytree(published.storage, storage)
    cache = cache_for(published, tmp_path, storage)
    index = cache.index()
    shutil.rmtree(storage / "metadata")
    return cache, index


def test_a_failed_refresh_keeps_the_last_verified_index(
    published: Published, tmp_path: Path
) -> None:
    cache, first = loaded_then_broken(published, tmp_path)
    tried = cache._tried_at
    assert cache.index() is first
    wait_for(lambda: cache._tried_at > tried and not cache._refreshing)
    assert cache.index() is first


def test_an_index_that_cannot_be_refreshed_for_too_long_is_not_served(
    published: Published, tmp_path: Path
) -> None:
    cache, _ = loaded_then_broken(published, tmp_path)
    cache.MAX_STALE_REFRESHES = 0  # any age is too old now
    with pytest.raises(OverdriveError):
        cache.index()

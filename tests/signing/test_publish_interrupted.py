"""A publish that dies after any upload leaves a repository that verifies as the old or the new.

A storage wrapper fails after the k-th write; for every k, the release is attempted, and a fresh
ngclient (trusting root v1) must verify the repository and see either the old targets or the new,
never a mix. A retry afterwards must succeed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from overdrive.keys import KeyDirectory
from overdrive.signing.release import BuildOptions, add_release
from overdrive.signing.repository import ImageRepository
from overdrive.signing.verify import verify_repository
from overdrive.storage import CachePolicy, LocalStorage, StorageError
from tests.conftest import Cli, Workspace, make_image, mutate


class InjectedFailure(StorageError):
    pass


class FailingStorage(LocalStorage):
    """Local storage whose ``fail_after``-th write (0-based) raises instead of writing."""

    def __init__(self, root: Path, fail_after: int) -> None:
        super().__init__(root)
        self.fail_after = fail_after
        self.writes = 0

    def _tick(self, key: str) -> None:
        if self.writes == self.fail_after:
            raise InjectedFailure(f"injected failure before writing {key}")
        self.writes += 1

    def put_bytes(
        self, key: str, data: bytes, *, cache: CachePolicy = CachePolicy.METADATA
    ) -> None:
        self._tick(key)
        super().put_bytes(key, data, cache=cache)

    def put_stream(
        self, key: str, stream: BinaryIO, *, cache: CachePolicy = CachePolicy.IMMUTABLE
    ) -> None:
        self._tick(key)
        super().put_stream(key, stream, cache=cache)


def visible_targets(storage: LocalStorage, trusted_root: bytes) -> set[str]:
    return {path for path, _ in verify_repository(storage, trusted_root).targets}


def release(storage: Any, ws: Workspace, image: Path, version: str) -> None:
    repo = ImageRepository.load(storage, KeyDirectory(ws.keys))
    add_release(
        repo,
        image,
        hardware_id="ecu",
        version=version,
        delta_from=["1.0"],
        options=BuildOptions(chunk_size=16 * 1024, jobs=1),
    )


def test_publish_interrupted_after_each_upload(repo: Workspace, cli: Cli, tmp_path: Path) -> None:
    v1 = make_image(tmp_path / "v1", 60_000, seed=1)
    v2 = mutate(v1, tmp_path / "v2", seed=2)
    assert (
        cli(
            "release",
            "add",
            v1,
            "--hardware-id",
            "ecu",
            "--version",
            "1.0",
            *repo.repo_args,
            "--quiet",
        ).code
        == 0
    )
    trusted = (repo.storage / "metadata" / "1.root.json").read_bytes()
    old = visible_targets(LocalStorage(repo.storage), trusted)
    pristine = tmp_path / "pristine"
    shutil.copytree(repo.storage, pristine)

    # Count the writes of a successful publish: 2 bundles + targets + snapshot + timestamp.
    counting = FailingStorage(tmp_path / "count", fail_after=10**6)
    shutil.copytree(pristine, counting.root)
    release(counting, repo, v2, "1.1")
    total = counting.writes
    assert total == 5
    new = visible_targets(counting, trusted)
    assert new > old

    for k in range(total):
        attempt = tmp_path / f"attempt-{k}"
        shutil.copytree(pristine, attempt)
        with pytest.raises(InjectedFailure):
            release(FailingStorage(attempt, fail_after=k), repo, v2, "1.1")
        seen = visible_targets(LocalStorage(attempt), trusted)
        assert seen == old, f"failure at write {k} exposed {seen - old}"
        release(LocalStorage(attempt), repo, v2, "1.1")  # the retry succeeds
        assert visible_targets(LocalStorage(attempt), trusted) == new

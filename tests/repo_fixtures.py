"""A published image repository for server and client tests: keys (root, targets, snapshot,
timestamp, and the director's director-root/-targets/-snapshot/-timestamp; unencrypted),
releases ecu-a 1.0, ecu-a 1.1 (+ delta from 1.0), ecu-b 1.0, and the director's root (its own
storage). Built once per session, copied per test."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import generate_keys, make_image, mutate, run_cli

DIRECTOR_KEYS = ("director-root", "director-targets", "director-snapshot", "director-timestamp")


@dataclass
class Published:
    """A published image repository with releases, and the director's root and keys."""

    storage: Path
    keys: Path
    director_storage: Path
    images: dict[str, dict[str, Any]]  # "ecu-a/1.0" -> {version, sha256, release_counter, path}

    @property
    def director_root(self) -> Path:
        """The director's root a vehicle is provisioned with."""
        return self.director_storage / "metadata" / "1.root.json"

    def director_config(self) -> dict[str, Any]:
        """The ``ServerConfig`` settings of a server signing with this director."""
        return {"director_storage": str(self.director_storage), "director_keys": self.keys}

    def director_args(self) -> list[str]:
        """The ``server run`` options of a server signing with this director."""
        return ["--director-storage", str(self.director_storage), "--director-keys", str(self.keys)]


def _image_ref(path: Path, version: str, counter: int) -> dict[str, Any]:
    return {
        "version": version,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "release_counter": counter,
        "path": path,
    }


@pytest.fixture(scope="session")
def published_template(tmp_path_factory: pytest.TempPathFactory) -> Published:
    root = tmp_path_factory.mktemp("published")
    os.environ.setdefault("OVERDRIVE_CACHE_DIR", str(root / "cache"))
    keys, storage = root / "keys", root / "repo"
    generate_keys(run_cli, keys, "root", "targets", "snapshot", "timestamp", *DIRECTOR_KEYS)
    assert run_cli("repo", "init", "--storage", storage, "--keys", keys).code == 0
    a10 = make_image(root / "a10.img", 120_000, seed=1)
    a11 = mutate(a10, root / "a11.img", seed=2)
    b10 = make_image(root / "b10.img", 80_000, seed=3)
    for image, hw, version, extra in (
        (a10, "ecu-a", "1.0", []),
        (a11, "ecu-a", "1.1", ["--delta-from", "1.0"]),
        (b10, "ecu-b", "1.0", []),
    ):
        result = run_cli(
            "release",
            "add",
            image,
            "--hardware-id",
            hw,
            "--version",
            version,
            "--storage",
            storage,
            "--keys",
            keys,
            "--quiet",
            "--chunk-size",
            "64KiB",
            *extra,
        )
        assert result.code == 0, result.stderr
    result = run_cli("director", "init", "--storage", root / "director", "--keys", keys)
    assert result.code == 0, result.stderr
    images = {
        "ecu-a/1.0": _image_ref(a10, "1.0", 1),
        "ecu-a/1.1": _image_ref(a11, "1.1", 2),
        "ecu-b/1.0": _image_ref(b10, "1.0", 1),
    }
    return Published(storage, keys, root / "director", images)


@pytest.fixture
def published(published_template: Published, tmp_path: Path) -> Published:
    storage = tmp_path / "repo"
    shutil.copytree(published_template.storage, storage)
    return Published(
        storage,
        published_template.keys,
        published_template.director_storage,
        published_template.images,
    )

"""A local directory as storage: the embedded default, and what a USB stick or NFS share looks like.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the target and
the directory is fsynced, so a reader (or a power cut) sees either the old or the new object.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from overdrive.storage.base import (
    CachePolicy,
    NotFound,
    Storage,
    StorageError,
    StorageUnavailable,
    check_key,
)

_READ_CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file via temp + fsync + rename + fsync(dir); on any error nothing changes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class LocalStorage(Storage):
    """Objects are files below ``root``; keys map to relative paths."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        try:
            atomic_write(self._path(key), write)
        except OSError as e:
            raise StorageError(f"cannot write {key!r} to {self.root}: {e.strerror or e}") from e

    def put_bytes(
        self, key: str, data: bytes, *, cache: CachePolicy = CachePolicy.METADATA
    ) -> None:
        self._write(key, lambda f: f.write(data))

    def put_stream(
        self, key: str, stream: BinaryIO, *, cache: CachePolicy = CachePolicy.IMMUTABLE
    ) -> None:
        self._write(key, lambda f: shutil.copyfileobj(stream, f, _READ_CHUNK))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as e:
            raise NotFound(f"{key!r} not found in {self.url}") from e
        except OSError as e:
            raise StorageError(f"cannot read {key!r} from {self.root}: {e.strerror or e}") from e

    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        try:
            f = path.open("rb")
        except FileNotFoundError as e:
            raise NotFound(f"{key!r} not found in {self.url}") from e
        except OSError as e:
            raise StorageError(f"cannot read {key!r}: {e.strerror or e}") from e
        return self._iter(f, start, end)

    @staticmethod
    def _iter(f: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
        with f:
            f.seek(start)
            remaining = None if end is None else max(0, end - start)
            while remaining is None or remaining > 0:
                n = _READ_CHUNK if remaining is None else min(_READ_CHUNK, remaining)
                block = f.read(n)
                if not block:
                    return
                if remaining is not None:
                    remaining -= len(block)
                yield block

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as e:
            raise NotFound(f"{key!r} not found in {self.url}") from e

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def public_url(self, key: str) -> str:
        return self._path(key).as_uri()

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StorageUnavailable(f"storage path {self.root} exists and is not a directory")

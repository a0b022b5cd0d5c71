"""The storage interface shared by the image repository, the server and the demo.

Keys are ``/``-separated relative paths (``metadata/1.root.json``, ``targets/ecu-a/…``). A backend
never exposes a half-written object: a put either fully replaces the object or leaves it as it was.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from enum import Enum
from typing import BinaryIO

from overdrive.errors import OverdriveError


class StorageError(OverdriveError):
    """A storage operation failed (the message says which key and why)."""


class NotFound(StorageError):
    """The requested key does not exist."""


class StorageUnavailable(StorageError):
    """The storage cannot be reached or used at all (missing bucket, bad credentials, no route)."""


class CachePolicy(Enum):
    """How long an HTTP cache (CDN) may keep an object."""

    METADATA = "metadata"  # changes on every publish: short-lived
    IMMUTABLE = "immutable"  # content-addressed: never changes under its key
    PRIVATE = "private"  # not meant for vehicles (staging area): no caching


CACHE_CONTROL = {
    CachePolicy.METADATA: "public, max-age=60",
    CachePolicy.IMMUTABLE: "public, max-age=31536000, immutable",
    CachePolicy.PRIVATE: "no-store",
}


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise :class:`StorageError`."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise StorageError(f"invalid storage key {key!r}")
    return key


class Storage(abc.ABC):
    """An object store addressed by relative keys."""

    url: str

    @abc.abstractmethod
    def put_bytes(
        self, key: str, data: bytes, *, cache: CachePolicy = CachePolicy.METADATA
    ) -> None:
        """Store ``data`` under ``key``, atomically replacing any previous object."""

    @abc.abstractmethod
    def put_stream(
        self, key: str, stream: BinaryIO, *, cache: CachePolicy = CachePolicy.IMMUTABLE
    ) -> None:
        """Store everything read from ``stream`` under ``key`` without holding it all in memory."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Return the whole object; raise :class:`NotFound` if it does not exist."""

    @abc.abstractmethod
    def open_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield the bytes ``[start, end)`` of the object in chunks (``end=None``: to the end)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """The object's length in bytes; raise :class:`NotFound` if it does not exist."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys that start with ``prefix``, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error."""

    @abc.abstractmethod
    def public_url(self, key: str) -> str:
        """The URL a vehicle uses to fetch ``key`` (``file://`` for a local directory)."""

    def check(self) -> None:
        """Raise :class:`StorageUnavailable` if the storage cannot be used at all."""
        self.list("metadata/")

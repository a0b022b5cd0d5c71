"""The Storage contract, run against every backend (LocalStorage, S3Storage on in-process moto)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from overdrive.storage import LocalStorage, NotFound, Storage, StorageError
from overdrive.storage.s3 import MIN_PART_SIZE, S3Storage

MiB = 1 << 20


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` deterministic bytes that differ at every offset (catches misplaced ranges)."""
    block = bytes((i * 7 + seed) % 251 for i in range(251))
    return (block * (n // 251 + 1))[:n]


class ShortReads(io.RawIOBase):
    """A stream that returns at most ``chunk`` bytes per read, like a pipe or socket."""

    def __init__(self, data: bytes, chunk: int = 700_001) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self._chunk, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class Boom(Exception):
    """Raised by a source stream halfway through."""


class FailingStream(io.RawIOBase):
    """Yields ``good`` bytes, then raises ``error`` (e.g. a dying network source)."""

    def __init__(self, good: int, error: BaseException) -> None:
        self._left = good
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left == 0:
            raise self._error
        n = min(len(b), self._left, 1 * MiB)
        b[:n] = b"z" * n
        self._left -= n
        return n


def leftovers(storage: Storage) -> list[str]:
    """What a failed put may have left behind: pending multipart uploads or temp files."""
    if isinstance(storage, S3Storage):
        uploads = storage.client.list_multipart_uploads(Bucket=storage.bucket)
        return [u["Key"] for u in uploads.get("Uploads", [])]
    assert isinstance(storage, LocalStorage)
    if not storage.root.exists():
        return []
    return [str(p) for p in storage.root.rglob("*") if p.name.endswith(".tmp")]


# -- put / get ------------------------------------------------------------------------------------


def test_put_and_get_bytes(backend: Storage) -> None:
    backend.put_bytes("metadata/1.root.json", b'{"signed": {}}')
    assert backend.get_bytes("metadata/1.root.json") == b'{"signed": {}}'
    backend.put_bytes("metadata/1.root.json", b"replaced")
    assert backend.get_bytes("metadata/1.root.json") == b"replaced"


def test_empty_object(backend: Storage) -> None:
    backend.put_bytes("empty", b"")
    assert backend.get_bytes("empty") == b""
    assert backend.size("empty") == 0
    assert b"".join(backend.open_range("empty")) == b""
    backend.put_stream("empty-stream", io.BytesIO(b""))
    assert backend.get_bytes("empty-stream") == b""


def test_put_stream_small(backend: Storage) -> None:
    data = pattern(100_000)
    backend.put_stream("targets/ecu-a/small.bin", io.BytesIO(data))
    assert backend.get_bytes("targets/ecu-a/small.bin") == data
    assert backend.size("targets/ecu-a/small.bin") == len(data)


@pytest.mark.parametrize("size", [MIN_PART_SIZE, 2 * MIN_PART_SIZE + 12_345])
def test_put_stream_large(backend: Storage, size: int) -> None:
    """Several parts (the last one short), fed through a stream that returns short reads."""
    data = pattern(size, seed=3)
    backend.put_stream("targets/ecu-a/large.bin", ShortReads(data))  # type: ignore[arg-type]
    assert backend.size("targets/ecu-a/large.bin") == size
    assert backend.get_bytes("targets/ecu-a/large.bin") == data
    assert leftovers(backend) == []


# -- ranges ---------------------------------------------------------------------------------------

RANGE_DATA_SIZE = 2 * MiB + 1000


@pytest.mark.parametrize(
    ("start", "end"),
    [
        (0, None),
        (0, 1),
        (0, 10),
        (5, 1000),
        (MiB - 3, 2 * MiB + 5),  # crosses chunk boundaries
        (RANGE_DATA_SIZE - 3, None),
        (RANGE_DATA_SIZE - 3, RANGE_DATA_SIZE + 100),  # end past EOF: clipped
        (RANGE_DATA_SIZE, None),  # empty at EOF
        (RANGE_DATA_SIZE + 10, None),  # past EOF
        (10, 10),  # empty range
        (10, 5),  # reversed: empty
    ],
)
def test_open_range(backend: Storage, start: int, end: int | None) -> None:
    data = pattern(RANGE_DATA_SIZE, seed=5)
    backend.put_bytes("blob", data)
    chunks = list(backend.open_range("blob", start, end))
    assert b"".join(chunks) == data[start:end]
    assert all(0 < len(c) <= MiB for c in chunks)


def test_open_range_missing_raises_at_call(backend: Storage) -> None:
    with pytest.raises(NotFound, match=r"^'nope\.bin' not found"):
        backend.open_range("nope.bin", 0, 10)
    with pytest.raises(NotFound):
        backend.open_range("nope.bin", 10, 10)


# -- exists / size / list / delete ----------------------------------------------------------------


def test_exists_size_delete(backend: Storage) -> None:
    assert not backend.exists("a/b.bin")
    backend.put_bytes("a/b.bin", b"12345")
    assert backend.exists("a/b.bin")
    assert backend.size("a/b.bin") == 5
    backend.delete("a/b.bin")
    assert not backend.exists("a/b.bin")
    backend.delete("a/b.bin")  # deleting a missing key is fine


def test_missing_key(backend: Storage) -> None:
    with pytest.raises(NotFound, match=r"^'missing\.json' not found"):
        backend.get_bytes("missing.json")
    with pytest.raises(NotFound, match=r"^'missing\.json' not found"):
        backend.size("missing.json")


def test_list(backend: Storage) -> None:
    assert backend.list() == []
    for key in ["metadata/2.root.json", "metadata/1.root.json", "targets/x", "metadataX", "m"]:
        backend.put_bytes(key, b"x")
    assert backend.list() == sorted(
        ["m", "metadata/1.root.json", "metadata/2.root.json", "metadataX", "targets/x"]
    )
    assert backend.list("metadata/") == ["metadata/1.root.json", "metadata/2.root.json"]
    assert backend.list("metadata") == [
        "metadata/1.root.json",
        "metadata/2.root.json",
        "metadataX",
    ]
    assert backend.list("nothing/") == []


@pytest.mark.parametrize("key", ["../x", "/abs", "", "a//b", "a/./b", "a/../b", "a\\b", "dir/"])
def test_invalid_keys_rejected(backend: Storage, key: str) -> None:
    with pytest.raises(StorageError, match="invalid storage key"):
        backend.put_bytes(key, b"x")
    with pytest.raises(StorageError, match="invalid storage key"):
        backend.put_stream(key, io.BytesIO(b"x"))
    with pytest.raises(StorageError, match="invalid storage key"):
        backend.get_bytes(key)
    with pytest.raises(StorageError, match="invalid storage key"):
        backend.exists(key)
    with pytest.raises(StorageError, match="invalid storage key"):
        backend.delete(key)
    with pytest.raises(StorageError, match="invalid storage key"):
        backend.public_url(key)


def test_check(backend: Storage) -> None:
    backend.check()


# -- atomicity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("good", "error", "expected"),
    [
        (2 * MIN_PART_SIZE + MiB, Boom("source died"), Boom),  # after two parts were uploaded
        (MiB, Boom("source died"), Boom),  # before the first part is complete
        (MIN_PART_SIZE + MiB, OSError(5, "Input/output error"), StorageError),
    ],
)
def test_failed_put_stream_keeps_previous_object(
    backend: Storage, good: int, error: BaseException, expected: type[BaseException]
) -> None:
    backend.put_bytes("targets/ecu-a/image.bin", b"previous")
    with pytest.raises(expected):
        backend.put_stream("targets/ecu-a/image.bin", FailingStream(good, error))  # type: ignore[arg-type]
    assert backend.get_bytes("targets/ecu-a/image.bin") == b"previous"
    assert backend.list() == ["targets/ecu-a/image.bin"]
    assert leftovers(backend) == []


def test_failed_first_put_stream_leaves_nothing(backend: Storage) -> None:
    with pytest.raises(Boom):
        backend.put_stream("new.bin", FailingStream(MIN_PART_SIZE + 1, Boom()))  # type: ignore[arg-type]
    assert not backend.exists("new.bin")
    assert leftovers(backend) == []


# -- public URLs ----------------------------------------------------------------------------------


def test_public_url_of_local(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_bytes("metadata/timestamp.json", b"{}")
    url = storage.public_url("metadata/timestamp.json")
    assert url == (tmp_path.resolve() / "metadata" / "timestamp.json").as_uri()
    assert os.path.exists(url.removeprefix("file://"))

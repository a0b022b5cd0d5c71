"""Storage backends: a local directory (the embedded default) and S3-compatible object storage.

``open_storage(url)`` picks the backend from the URL: ``s3://bucket/prefix`` for S3 (boto3, the
``signing``/``server`` extras), ``file:///abs/path`` or a plain path for a local directory.
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

from overdrive.storage.base import (
    CACHE_CONTROL,
    CachePolicy,
    NotFound,
    Storage,
    StorageError,
    StorageUnavailable,
)
from overdrive.storage.local import LocalStorage

__all__ = [
    "CACHE_CONTROL",
    "CachePolicy",
    "LocalStorage",
    "NotFound",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "open_storage",
]


def open_storage(url: str) -> Storage:
    """Return the backend for ``url``; raise :class:`StorageError` for a URL it cannot serve."""
    if not url:
        raise StorageError("no storage URL given")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"storage URL {url!r} names no bucket (expected s3://bucket/prefix)")
        try:
            from overdrive.storage.s3 import S3Storage
        except ImportError as e:  # boto3 is an extra: the vehicle install does not have it
            raise StorageError("S3 storage needs boto3: pip install 'overdrive[signing]'") from e
        return S3Storage(parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"storage URL {url!r}: file URLs must be file:///absolute/path")
        return LocalStorage(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and url[1:3] == ":\\"):
        return LocalStorage(url)
    raise StorageError(f"unsupported storage URL {url!r} (use s3://bucket/prefix or a directory)")

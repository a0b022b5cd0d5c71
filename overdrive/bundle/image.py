"""Streamed access to images: hashing and positioned reads that work on files and block devices.

Vehicles hash slots (block devices larger than the image they hold) and release tooling hashes
multi-gigabyte builds, so nothing here reads a whole image into memory: hashing streams in
fixed-size blocks, and reads are positioned (``pread``) so a source slot can be read at arbitrary
offsets without disturbing anyone else's file position.
"""

from __future__ import annotations

import hashlib
import os

from overdrive.bundle.errors import BundleError, OutOfRange

__all__ = ["IO_BLOCK", "hash_prefix", "image_sha256", "pread_exact", "pwrite_all"]

IO_BLOCK = 1 << 20


def hash_prefix(fd: int, length: int | None) -> tuple[str, int]:
    """sha256 (hex) of the first ``length`` bytes of ``fd`` (all of it if None), and bytes read.

    Fewer bytes than ``length`` are hashed only if the file is shorter; the caller compares the
    returned count.
    """
    h = hashlib.sha256()
    done = 0
    while length is None or done < length:
        want = IO_BLOCK if length is None else min(IO_BLOCK, length - done)
        block = os.pread(fd, want, done)
        if not block:
            break
        h.update(block)
        done += len(block)
    return h.hexdigest(), done


def image_sha256(path: str | os.PathLike[str], length: int | None = None) -> str:
    """The sha256 (lowercase hex) of an image file or block device, streamed.

    With ``length``, hash exactly the first ``length`` bytes: a slot is usually larger than the
    image it holds. Raises :class:`OutOfRange` if the file is shorter than ``length`` and
    :class:`BundleError` if it cannot be read.
    """
    if length is not None and length < 0:
        raise OutOfRange(f"cannot hash a negative length ({length})")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise BundleError(f"cannot read image {os.fspath(path)}: {e.strerror or e}") from e
    try:
        digest, done = hash_prefix(fd, length)
    except OSError as e:
        raise BundleError(f"cannot read image {os.fspath(path)}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if length is not None and done < length:
        raise OutOfRange(f"image {os.fspath(path)} is {done} bytes, shorter than {length}")
    return digest


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """Read exactly ``length`` bytes at ``offset`` (short reads retried); fewer only at EOF."""
    first = os.pread(fd, length, offset)
    if len(first) == length or not first:
        return first
    parts = [first]
    done = len(first)
    while done < length:
        block = os.pread(fd, length - done, offset + done)
        if not block:
            break
        parts.append(block)
        done += len(block)
    return b"".join(parts)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (short writes retried)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n

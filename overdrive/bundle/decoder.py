"""Apply a bundle the way a vehicle does: streamed, verified, bounded, resumable.

Order of operations (each step must pass before the next one runs):

1. Read and verify the header (magic, version, manifest sha256, strict manifest validation,
   file length) — see :func:`overdrive.bundle.format.read_header` — and, given the signed
   description (:class:`~overdrive.bundle.format.Expected`), that the header is what was signed:
   the manifest's length before it is read, its hash before it is parsed, hardware id and image
   and source identities before anything is written.
2. For a delta, stream-hash the first ``source.length`` bytes of the source and compare sha256 and
   length with the manifest (:class:`SourceMismatch`). Nothing has been written yet.
3. Open the target without truncating it (it may be a block device, i.e. the inactive slot). A
   block device smaller than the image is refused before any write.
4. If a progress file for this very bundle and target says chunks ``0..k-1`` are done, re-read
   and re-verify them from the target (feeding the whole-image hash) and continue after the last
   one that still verifies.
5. For each remaining chunk: read its payload (bounded by the manifest), decode it (bounded
   decompression, checked bsdiff control), check its sha256 *before* writing it, write it at its
   offset; with a progress file, fsync the target and then record the next chunk index atomically.
6. Truncate a regular-file target to the image length, fsync, and compare the whole-image sha256
   (:class:`ResultMismatch`).

Peak memory is a small multiple of the chunk size (payload + source window + decoded chunk +
bsdiff streams), independent of image, bundle and source size.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from overdrive.bundle import codec
from overdrive.bundle.errors import (
    BundleError,
    ChunkHashMismatch,
    CorruptPayload,
    OutOfRange,
    ResultMismatch,
    SourceMismatch,
    TruncatedBundle,
)
from overdrive.bundle.format import (
    BundleHeader,
    Chunk,
    Expected,
    ImageIdentity,
    Manifest,
    Op,
    read_header,
)
from overdrive.bundle.image import hash_prefix, pread_exact, pwrite_all
from overdrive.storage.local import atomic_write

__all__ = ["PROGRESS_FORMAT", "apply_bundle"]

PROGRESS_FORMAT = 1


def _fail_io(action: str, path: Path, e: OSError) -> BundleError:
    return BundleError(f"cannot {action} {path}: {e.strerror or e}")


@contextlib.contextmanager
def _opened(path: Path, flags: int, action: str, mode: int = 0o644) -> Iterator[int]:
    try:
        fd = os.open(path, flags, mode)
    except OSError as e:
        raise _fail_io(action, path, e) from e
    try:
        yield fd
    finally:
        os.close(fd)


def _fsync(fd: int) -> None:
    """fsync, tolerating files that cannot be synced (EINVAL: e.g. character devices)."""
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return True
    return stat.S_ISBLK(a.st_mode) and stat.S_ISBLK(b.st_mode) and a.st_rdev == b.st_rdev


def _verify_source(fd: int, expected: ImageIdentity, path: Path) -> None:
    """Stream-hash the source's first ``expected.length`` bytes; SourceMismatch if they differ."""
    try:
        digest, done = hash_prefix(fd, expected.length)
    except OSError as e:
        raise _fail_io("read source", path, e) from e
    if done < expected.length:
        raise SourceMismatch(
            f"source {path} is {done} bytes; the delta needs {expected.version} "
            f"({expected.length} bytes)"
        )
    if digest != expected.sha256:
        raise SourceMismatch(
            f"source {path} has sha256 {digest}; the delta needs {expected.version} "
            f"with sha256 {expected.sha256}"
        )


def _read_window(fd: int, window: tuple[tuple[int, int], ...], what: str) -> bytes:
    parts = []
    for offset, length in window:
        part = pread_exact(fd, length, offset)
        if len(part) != length:
            raise SourceMismatch(
                f"{what}: source ended while reading [{offset}, {offset + length})"
            )
        parts.append(part)
    return b"".join(parts)


def _decode_chunk(
    i: int, c: Chunk, bundle_fd: int, payload_start: int, source_fd: int | None
) -> bytes:
    """Produce chunk ``i``'s result bytes (not yet hash-checked)."""
    what = f"chunk {i}"
    payload = pread_exact(bundle_fd, c.payload_length, payload_start + c.payload_offset)
    if len(payload) != c.payload_length:
        raise TruncatedBundle(
            f"{what}: payload ends early ({len(payload)} of {c.payload_length} bytes)"
        )
    if c.op is Op.RAW:
        return payload
    if c.op is Op.ZSTD:
        return codec.decode_zstd(payload, c.result_length, what=what)
    assert source_fd is not None  # validated: source ops only in deltas, and deltas need a source
    if c.op is Op.COPY:
        assert c.source_offset is not None
        return _read_window(source_fd, ((c.source_offset, c.result_length),), what)
    window = _read_window(source_fd, c.window, what)
    if c.op is Op.ZSTD_DICT:
        return codec.decode_zstd(payload, c.result_length, what=what, dictionary=window)
    assert c.control_length is not None and c.control_size is not None
    assert c.diff_length is not None and c.diff_size is not None and c.extra_size is not None
    return codec.decode_bsdiff(
        payload,
        window=window,
        result_length=c.result_length,
        control_length=c.control_length,
        control_size=c.control_size,
        diff_length=c.diff_length,
        diff_size=c.diff_size,
        extra_size=c.extra_size,
        what=what,
    )


def _check_chunk(i: int, c: Chunk, data: bytes) -> None:
    if len(data) != c.result_length:
        raise CorruptPayload(f"chunk {i}: decoded {len(data)} bytes; expected {c.result_length}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != c.sha256:
        raise ChunkHashMismatch(
            f"chunk {i} (image bytes {c.result_offset}-{c.result_offset + c.result_length}): "
            f"sha256 is {digest}, manifest says {c.sha256}"
        )


# --------------------------------------------------------------------------------------------
# Resume


def _progress_record(header: BundleHeader, target: Path, next_chunk: int) -> dict[str, Any]:
    return {
        "format": PROGRESS_FORMAT,
        "bundle_manifest_sha256": header.manifest_sha256,
        "image_sha256": header.manifest.image.sha256,
        "target": str(target.absolute()),
        "next_chunk": next_chunk,
    }


def _save_progress(path: Path, record: dict[str, Any]) -> None:
    """Persist the progress record atomically (temp, fsync, rename, fsync dir)."""
    data = json.dumps(record, sort_keys=True).encode()
    try:
        atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise _fail_io("write progress file", path, e) from e


def _load_progress(path: Path, header: BundleHeader, target: Path) -> int:
    """The chunk index a previous run of this bundle on this target reached, else 0.

    A missing, unreadable or malformed progress file, or one written for another bundle or
    target, is ignored: the apply starts from chunk 0 (and overwrites the record).
    """
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return 0
    expected = _progress_record(header, target, 0)
    if not isinstance(record, dict) or set(record) != set(expected):
        return 0
    if any(record[k] != v for k, v in expected.items() if k != "next_chunk"):
        return 0
    n = record["next_chunk"]
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(header.manifest.chunks):
        return 0
    return n


def _verified_prefix(fd: int, manifest: Manifest, claimed: int, running: Any) -> int:
    """Re-read chunks ``0..claimed-1`` from the target; return how many still verify in a row."""
    for i, c in enumerate(manifest.chunks[:claimed]):
        data = pread_exact(fd, c.result_length, c.result_offset)
        if len(data) != c.result_length or hashlib.sha256(data).hexdigest() != c.sha256:
            return i
        running.update(data)
    return claimed


# --------------------------------------------------------------------------------------------


def apply_bundle(
    bundle: Path,
    target: Path,
    *,
    source: Path | None = None,
    progress_file: Path | None = None,
    expected: Expected | None = None,
) -> Manifest:
    """Apply ``bundle`` into ``target`` (file or block device), reading ``source`` for a delta.

    ``target`` is written in place and never truncated except, for a regular file, to the image
    length at the end. With ``progress_file``, progress is recorded after every verified chunk
    and a rerun with the same bundle and target resumes after the last verified chunk. With
    ``expected`` (what the signed target says), a bundle that is something else is refused
    (:class:`~overdrive.bundle.errors.NotAsSigned`) before a byte is written. Returns the
    manifest. Raises a :class:`BundleError` subclass on any bad input.
    """
    bundle, target = Path(bundle), Path(target)
    source = None if source is None else Path(source)
    progress_file = None if progress_file is None else Path(progress_file)
    try:
        bundle_file: BinaryIO = open(bundle, "rb", buffering=0)  # noqa: SIM115 - closed below
    except OSError as e:
        raise _fail_io("read bundle", bundle, e) from e
    with contextlib.ExitStack() as stack:
        stack.enter_context(bundle_file)
        try:
            header = read_header(bundle_file, expected)
        except OSError as e:
            raise _fail_io("read bundle", bundle, e) from e
        manifest = header.manifest
        source_fd: int | None = None
        if manifest.source is not None:
            if source is None:
                raise SourceMismatch(
                    f"bundle is a delta from {manifest.source.version} "
                    f"(sha256 {manifest.source.sha256}); no source image given"
                )
            source_fd = stack.enter_context(_opened(source, os.O_RDONLY, "read source"))
            _verify_source(source_fd, manifest.source, source)
        target_fd = stack.enter_context(_opened(target, os.O_RDWR | os.O_CREAT, "open target"))
        _check_target(target, target_fd, bundle_file.fileno(), source_fd, manifest)
        try:
            _apply(header, bundle_file.fileno(), target, target_fd, source_fd, progress_file)
        except OSError as e:
            raise BundleError(
                f"I/O error while applying {bundle} to {target}: {e.strerror or e}"
            ) from e
    return manifest


def _check_target(
    target: Path, target_fd: int, bundle_fd: int, source_fd: int | None, manifest: Manifest
) -> None:
    st = os.fstat(target_fd)
    if _same_file(st, os.fstat(bundle_fd)):
        raise BundleError(f"target {target} is the bundle itself")
    if source_fd is not None and _same_file(st, os.fstat(source_fd)):
        raise BundleError(f"target {target} is the source image; apply into the other slot")
    if not stat.S_ISREG(st.st_mode):
        size = os.lseek(target_fd, 0, os.SEEK_END)
        if stat.S_ISBLK(st.st_mode) and size < manifest.image.length:
            raise OutOfRange(
                f"target {target} holds {size} bytes; the image needs {manifest.image.length}"
            )


def _apply(
    header: BundleHeader,
    bundle_fd: int,
    target: Path,
    target_fd: int,
    source_fd: int | None,
    progress_file: Path | None,
) -> None:
    manifest = header.manifest
    running = hashlib.sha256()
    start = 0
    if progress_file is not None:
        claimed = _load_progress(progress_file, header, target)
        start = _verified_prefix(target_fd, manifest, claimed, running)
    for i in range(start, len(manifest.chunks)):
        c = manifest.chunks[i]
        data = _decode_chunk(i, c, bundle_fd, header.payload_start, source_fd)
        _check_chunk(i, c, data)
        pwrite_all(target_fd, data, c.result_offset)
        running.update(data)
        if progress_file is not None:
            _fsync(target_fd)
            _save_progress(progress_file, _progress_record(header, target, i + 1))
    if stat.S_ISREG(os.fstat(target_fd).st_mode):
        os.ftruncate(target_fd, manifest.image.length)
    _fsync(target_fd)
    if progress_file is not None and start == len(manifest.chunks):
        _save_progress(progress_file, _progress_record(header, target, start))
    digest = running.hexdigest()
    if digest != manifest.image.sha256:
        raise ResultMismatch(
            f"applied image has sha256 {digest}; the manifest says {manifest.image.sha256}"
        )

"""Build bundles: full (each chunk zstd or raw) or delta (each chunk the cheapest op that fits).

The image is cut into ``chunk_size`` chunks that are encoded independently, in parallel worker
threads (the heavy parts, numpy, zstd and bsdiff4, release the GIL; threads share one
interpreter). A worker is handed offsets, never image bytes, and reads its chunk and source window
itself, so memory stays bounded per worker (chunk + a window of at most twice the chunk + the
matcher's arrays, about ten times the chunk at the default sampling) whatever the image size. The
parent keeps only the source index and a bounded number of finished payloads, which it appends in
chunk order to an anonymous temp file next to the output; the bundle appears at ``out`` only once
complete (header + payloads written to a temp file, fsynced and renamed).

For a delta, each chunk tries, in order:

1. COPY: the chunk's bytes exist verbatim in the source (at a voted alignment, at the same
   offset, or anywhere in its window): zero payload bytes.
2. Aligned BSDIFF: a single-tuple bsdiff against the source at the best alignment (or the same
   offset), i.e. the bytewise difference, computed in linear time. In-place edits (bit flips,
   patched constants, relocated pointers) end here when it is under 1/512 of the chunk.
3. BSDIFF against the window. The streams come from :mod:`overdrive.bundle.matcher` (linear
   time: sampled k-gram anchors, diagonals, bsdiff's own extension rules), or from bsdiff4's
   suffix sort when numpy is not installed; the decoder cannot tell them apart. It is the clear
   winner for "same code, shifted addresses" changes.
4. ZSTD_DICT: zstd with the chunk's source window as a raw-content dictionary. At high levels it
   costs several seconds per chunk and rarely wins, so it is skipped when BSDIFF already shrank
   the chunk below 1/512 of its size, and otherwise run at ``level`` only if trials at levels 9
   and 12 come close enough to the BSDIFF payload (``_DICT_TRIALS``).
5. ZSTD, only when there is no window (empty source): with a window, the dictionary variant is
   never meaningfully worse.
6. RAW: always a candidate. The smallest payload wins; ties go to the cheaper op to decode.

BSDIFF candidates are first sized at zstd level 9 (a few percent of the cost of level 19, and
ranking them the same way); only the best, and any within 2% of it, is compressed at ``level``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from overdrive.bundle import codec
from overdrive.bundle.errors import BundleError
from overdrive.bundle.format import (
    MAX_CHUNK_SIZE,
    MAX_WINDOW_EXTENTS,
    MIN_CHUNK_SIZE,
    WINDOW_FACTOR,
    Chunk,
    ImageIdentity,
    Manifest,
    Op,
    encode_header,
)
from overdrive.bundle.image import image_sha256, pread_exact
from overdrive.bundle.index import SourceIndex, plan_window
from overdrive.storage.local import atomic_write

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_LEVEL", "encode_bundle", "encode_chunk"]

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
DEFAULT_LEVEL = 19
_GOOD_ENOUGH_RATIO = 512  # BSDIFF payload <= chunk/512: ZSTD_DICT cannot win anything worth it
_COPY_CANDIDATES = 3
# Candidates are first sized at this (cheap) zstd level; the final level only encodes the best.
# Measured on executables, level 9 sizes rank BSDIFF and ZSTD_DICT payloads as level 19 does to
# within ~10%, at 1/20 to 1/40 of the cost.
_ESTIMATE_LEVEL = 9
_NEAR = 1.02  # BSDIFF trials within 2% of the best estimate are all encoded for real
# ZSTD_DICT ladder: (trial level, how close to the BSDIFF size it must come to go on). Measured
# level-19/level-9 size ratios were 0.67-0.87, level-19/level-12 0.74-0.93.
_DICT_TRIALS = ((9, 1.5), (12, 1.1))
# Tie-break among equal payload sizes: the cheapest op to decode wins.
_OP_RANK = {Op.COPY: 0, Op.RAW: 1, Op.ZSTD: 2, Op.ZSTD_DICT: 3, Op.BSDIFF: 4}


@dataclass(frozen=True)
class EncodeContext:
    """What every chunk encoding needs besides its offset: shared by the worker threads."""

    image: str
    source: str | None
    source_length: int
    chunk_size: int
    level: int
    index: SourceIndex | None


def _open(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as e:
        raise BundleError(f"cannot read {what} {path}: {e.strerror or e}") from e


def _read(fd: int, length: int, offset: int, what: str) -> bytes:
    data = pread_exact(fd, length, offset)
    if len(data) != length:
        raise BundleError(f"{what} ended early (changed while encoding?) at offset {offset}")
    return data


def encode_chunk(ctx: EncodeContext, offset: int, length: int) -> tuple[Chunk, bytes]:
    """Encode the chunk ``[offset, offset+length)`` of ``ctx.image``; payload_offset is left 0."""
    image_fd = _open(ctx.image, "image")
    try:
        data = _read(image_fd, length, offset, "image")
    finally:
        os.close(image_fd)
    source_fd = _open(ctx.source, "source") if ctx.source is not None else None
    try:
        return _encode(ctx, source_fd, data, offset)
    finally:
        if source_fd is not None:
            os.close(source_fd)


def _bsdiff_chunk(
    base: Chunk, extents: tuple[tuple[int, int], ...], bs: codec.BsdiffPayload
) -> Chunk:
    return replace(
        base,
        op=Op.BSDIFF,
        window=extents,
        payload_length=len(bs.payload),
        control_length=bs.control_length,
        control_size=bs.control_size,
        diff_length=bs.diff_length,
        diff_size=bs.diff_size,
        extra_length=bs.extra_length,
        extra_size=bs.extra_size,
    )


def _encode(
    ctx: EncodeContext, source_fd: int | None, data: bytes, offset: int
) -> tuple[Chunk, bytes]:
    length = len(data)
    good_enough = max(64, length // _GOOD_ENOUGH_RATIO)
    base = Chunk(
        op=Op.RAW,
        result_offset=offset,
        result_length=length,
        sha256=hashlib.sha256(data).hexdigest(),
        payload_offset=0,
        payload_length=length,
    )
    # (chunk, payload, the window it decodes against)
    candidates: list[tuple[Chunk, bytes, bytes]] = [(base, data, b"")]
    if source_fd is None or ctx.source_length == 0:
        frame = codec.encode_zstd(data, ctx.level)
        candidates.append((replace(base, op=Op.ZSTD, payload_length=len(frame)), frame, b""))
        return _choose(candidates, data)

    alignments = ctx.index.align(data, offset) if ctx.index is not None else []
    aligned: tuple[int, bytes] | None = None
    tried: set[int] = set()
    for delta in [a.delta for a in alignments[:_COPY_CANDIDATES]] + [0]:
        so = offset + delta
        if so in tried or so < 0 or so + length > ctx.source_length:
            continue
        tried.add(so)
        old = _read(source_fd, length, so, "source")
        if old == data:
            return replace(base, op=Op.COPY, payload_length=0, source_offset=so), b""
        if aligned is None:
            aligned = (so, old)

    # BSDIFF trials: (estimated size, extents, streams, window). Each is sized at a cheap zstd
    # level first; only the best (and any within _NEAR of it) is compressed at ctx.level.
    trials: list[tuple[int, tuple[tuple[int, int], ...], codec.BsdiffStreams, bytes]] = []
    if aligned is not None:
        so, old = aligned
        streams = codec.aligned_streams(old, data)
        estimate = codec.estimate_bsdiff(streams, min(ctx.level, _ESTIMATE_LEVEL))
        if estimate <= good_enough:
            ab = codec.pack_bsdiff(streams, ctx.level)
            candidates.append((_bsdiff_chunk(base, ((so, length),), ab), ab.payload, old))
            if len(ab.payload) <= good_enough:
                return _choose(candidates, data)
        else:
            trials.append((estimate, ((so, length),), streams, old))

    extents = plan_window(
        chunk_offset=offset,
        chunk_length=length,
        source_length=ctx.source_length,
        alignments=alignments,
        budget=WINDOW_FACTOR * length,
        max_extents=MAX_WINDOW_EXTENTS,
    )
    window = b"".join(_read(source_fd, n, o, "source") for o, n in extents)
    found = _find_in_window(window, extents, data)
    if found is not None:
        return replace(base, op=Op.COPY, payload_length=0, source_offset=found), b""
    streams_or_none = codec.bsdiff_streams(window, data)
    if streams_or_none is not None:
        estimate = codec.estimate_bsdiff(streams_or_none, min(ctx.level, _ESTIMATE_LEVEL))
        trials.append((estimate, tuple(extents), streams_or_none, window))
    best = min((t[0] for t in trials), default=None)
    for estimate, ext, streams, win in trials:
        if best is not None and estimate <= best * _NEAR:
            bs = codec.pack_bsdiff(streams, ctx.level)
            candidates.append((_bsdiff_chunk(base, ext, bs), bs.payload, win))
    del trials
    bsdiff_size = min((len(c[1]) for c in candidates if c[0].op is Op.BSDIFF), default=None)
    if bsdiff_size is None or bsdiff_size > good_enough:
        dict_frame = _zstd_dict_if_smaller(data, window, ctx.level, bsdiff_size)
        if dict_frame is not None:
            chunk = replace(
                base, op=Op.ZSTD_DICT, window=tuple(extents), payload_length=len(dict_frame)
            )
            candidates.append((chunk, dict_frame, window))
    return _choose(candidates, data)


def _zstd_dict_if_smaller(
    data: bytes, window: bytes, level: int, rival: int | None
) -> bytes | None:
    """The ZSTD_DICT frame at ``level`` if cheap trials say it may beat ``rival`` bytes.

    At high levels zstd over a window-sized dictionary takes several seconds per chunk (its
    optimal parser) and rarely wins against BSDIFF, so cheaper levels go first: each trial must
    come within its margin of the rival (the most a higher level has been seen to gain) for the
    next one to run.
    """
    for trial, margin in _DICT_TRIALS:
        if rival is None or trial >= level:
            break
        if len(codec.encode_zstd_dict(data, trial, window)) > margin * rival:
            return None
    return codec.encode_zstd_dict(data, level, window)


def _choose(candidates: list[tuple[Chunk, bytes, bytes]], data: bytes) -> tuple[Chunk, bytes]:
    """The smallest candidate (ties: cheapest to decode), verified by decoding it again."""
    chunk, payload, window = min(candidates, key=lambda c: (len(c[1]), _OP_RANK[c[0].op]))
    _self_check(chunk, payload, window, data)
    return chunk, payload


def _find_in_window(window: bytes, extents: list[tuple[int, int]], data: bytes) -> int | None:
    """Source offset of ``data`` if it occurs inside one extent of the window, else None."""
    start = 0
    while (pos := window.find(data, start)) >= 0:
        base = 0
        for offset, length in extents:
            if base <= pos and pos + len(data) <= base + length:
                return offset + pos - base
            base += length
        start = pos + 1
    return None


def _self_check(chunk: Chunk, payload: bytes, window: bytes, data: bytes) -> None:
    """Decode what was just encoded; an encoder bug must never ship as a bundle."""
    what = f"encoder self-check at offset {chunk.result_offset}"
    if chunk.op is Op.ZSTD:
        decoded = codec.decode_zstd(payload, len(data), what=what)
    elif chunk.op is Op.ZSTD_DICT:
        decoded = codec.decode_zstd(payload, len(data), what=what, dictionary=window)
    elif chunk.op is Op.BSDIFF:
        assert chunk.control_length is not None and chunk.control_size is not None
        assert chunk.diff_length is not None and chunk.diff_size is not None
        assert chunk.extra_size is not None
        decoded = codec.decode_bsdiff(
            payload,
            window=window,
            result_length=len(data),
            control_length=chunk.control_length,
            control_size=chunk.control_size,
            diff_length=chunk.diff_length,
            diff_size=chunk.diff_size,
            extra_size=chunk.extra_size,
            what=what,
        )
    else:
        return
    if decoded != data:
        raise BundleError(f"{what}: {chunk.op.value} payload does not decode to the input")


def _check_label(value: str, what: str) -> None:
    if not value or len(value) > 256 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise BundleError(f"{what} must be 1-256 printable characters, got {value!r}")


def _length(path: Path, what: str) -> int:
    fd = _open(str(path), what)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _run(
    ctx: EncodeContext, jobs: list[tuple[int, int]], workers: int
) -> Iterator[tuple[Chunk, bytes]]:
    """Encode ``jobs`` in order, in-process or over worker threads, a bounded number in flight.

    Threads, not processes: the heavy parts (numpy, zstd, bsdiff4) release the GIL, and threads
    share one interpreter, so each extra worker costs only its chunk's working memory.
    """
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield encode_chunk(ctx, *job)
        return
    from concurrent.futures import ThreadPoolExecutor  # lazily: keeps the package import light

    pool = ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="encode")
    pending: deque[Future[tuple[Chunk, bytes]]] = deque()
    todo = iter(jobs)
    try:
        pending.extend(pool.submit(encode_chunk, ctx, *job) for job in islice(todo, workers + 1))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(encode_chunk, ctx, *job) for job in islice(todo, 1))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_bundle(
    image: Path,
    out: Path,
    *,
    hardware_id: str,
    version: str,
    source: Path | None = None,
    source_version: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    level: int = DEFAULT_LEVEL,
    jobs: int | None = None,
    progress: bool = False,
) -> Manifest:
    """Encode ``image`` into a bundle at ``out``: full, or a delta from ``source`` if given.

    ``level`` is the zstd level (1-22), ``jobs`` the number of worker threads (default: CPU
    count), ``progress`` shows a progress bar on stderr when it is a terminal. Returns the
    manifest written. ``out`` is replaced atomically; on any error it is left untouched.
    """
    image, out = Path(image), Path(out)
    _check_label(hardware_id, "hardware id")
    _check_label(version, "version")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise BundleError(
            f"chunk size {chunk_size} is outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]"
        )
    if not 1 <= level <= 22:
        raise BundleError(f"zstd level {level} is outside [1, 22]")
    workers = (os.cpu_count() or 1) if jobs is None else jobs
    if workers < 1:
        raise BundleError(f"jobs must be at least 1, got {workers}")
    if (source is None) != (source_version is None):
        raise BundleError("a delta needs both a source image and its version")

    image_length = _length(image, "image")
    image_hash = image_sha256(image, image_length)
    source_identity: ImageIdentity | None = None
    index: SourceIndex | None = None
    if source is not None:
        assert source_version is not None
        source = Path(source)
        _check_label(source_version, "source version")
        source_length = _length(source, "source")
        source_identity = ImageIdentity(
            source_version, image_sha256(source, source_length), source_length
        )
        fd = _open(str(source), "source")
        try:
            index = SourceIndex.build(fd, source_length)
        finally:
            os.close(fd)

    ctx = EncodeContext(
        image=str(image),
        source=None if source is None else str(source),
        source_length=0 if source_identity is None else source_identity.length,
        chunk_size=chunk_size,
        level=level,
        index=index,
    )
    jobs_list = [(o, min(chunk_size, image_length - o)) for o in range(0, image_length, chunk_size)]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        payloads = tempfile.TemporaryFile(  # noqa: SIM115 - closed by the `with` below
            dir=out.parent, prefix=f".{out.name}.", suffix=".payload"
        )
    except OSError as e:
        raise BundleError(f"cannot write bundle {out}: {e.strerror or e}") from e
    with payloads, _progressbar(progress, image_length) as advance:
        chunks: list[Chunk] = []
        offset = 0
        for chunk, payload in _run(ctx, jobs_list, workers):
            chunks.append(replace(chunk, payload_offset=offset))
            payloads.write(payload)
            offset += len(payload)
            advance(chunk.result_length)
        if image_sha256(image, image_length) != image_hash or (
            source_identity is not None
            and source is not None
            and image_sha256(source, source_identity.length) != source_identity.sha256
        ):
            raise BundleError("the image or source changed while the bundle was being encoded")
        manifest = Manifest(
            hardware_id=hardware_id,
            image=ImageIdentity(version, image_hash, image_length),
            source=source_identity,
            chunk_size=chunk_size,
            chunks=tuple(chunks),
        )
        header = encode_header(manifest)

        def write(f: BinaryIO) -> None:
            f.write(header)
            payloads.flush()
            payloads.seek(0)
            shutil.copyfileobj(payloads, f, 1 << 20)

        try:
            atomic_write(out, write)
        except OSError as e:
            raise BundleError(f"cannot write bundle {out}: {e.strerror or e}") from e
    return manifest


@contextlib.contextmanager
def _progressbar(enabled: bool, length: int) -> Iterator[Callable[[int], None]]:
    """Yield a function that advances a stderr progress bar (a no-op unless stderr is a TTY)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    import click  # only when drawing: keeps `import overdrive.bundle` light

    with click.progressbar(length=length, label="encoding", file=sys.stderr) as bar:
        yield bar.update

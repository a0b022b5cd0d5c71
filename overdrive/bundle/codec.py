"""Per-chunk payload codecs: bounded zstd, zstd with a raw-content dictionary, and bsdiff streams.

Shared by the encoder (which also decodes what it produced as a self-check) and the decoder, so
both sides agree byte for byte on what a payload means. Every decode is bounded by sizes the
manifest declared (and :mod:`overdrive.bundle.format` already capped): zstd output is produced
through a streaming reader that is never asked for more than the declared size, frames that
declare more or need a larger window are refused, and a bsdiff control stream is checked tuple by
tuple before ``bsdiff4.core.patch`` runs, so the C code never sees a read outside the source window
or a write past the chunk.

Encode side only: bsdiff streams come from :mod:`overdrive.bundle.matcher` (linear time, needs
numpy) or, without numpy, from ``bsdiff4.core.diff``; both give streams ``bsdiff4.core.patch``
consumes, so decoding never depends on which one ran. Streams and dictionary frames are compressed
with the level's zstd parameters but capped match-finder tables (less memory, same format).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import bsdiff4.core
import zstandard

from overdrive.bundle.errors import CorruptPayload, DecompressionBomb, OutOfRange
from overdrive.bundle.format import CONTROL_TUPLE_SIZE, max_control_size

__all__ = [
    "BsdiffPayload",
    "BsdiffStreams",
    "aligned_streams",
    "bsdiff_streams",
    "check_control",
    "compress_stream",
    "decode_bsdiff",
    "decode_zstd",
    "encode_aligned_bsdiff",
    "encode_bsdiff",
    "encode_zstd",
    "encode_zstd_dict",
    "estimate_bsdiff",
    "fast_matcher",
    "max_window_size",
    "pack_bsdiff",
]

_CONTROL = struct.Struct("<QQQ")
_SIGN = 1 << 63
_READ_STEP = 1 << 20
_MIN_WINDOW = 1 << 20


def max_window_size(decoded_size: int, dictionary_size: int = 0) -> int:
    """The largest zstd window (bytes) the decoder accepts for a frame of ``decoded_size``.

    A frame never needs a window larger than its content plus its dictionary; rounding up to a
    power of two matches how zstd picks window sizes. This bounds decoder memory per chunk.
    """
    need = max(_MIN_WINDOW, decoded_size + dictionary_size)
    return 1 << (need - 1).bit_length()


def _raw_dict(dictionary: bytes) -> zstandard.ZstdCompressionDict:
    return zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def encode_zstd(data: bytes, level: int, dictionary: bytes | None = None) -> bytes:
    """One zstd frame of ``data`` (content size recorded), optionally against a raw dictionary."""
    cctx = zstandard.ZstdCompressor(
        level=level,
        dict_data=_raw_dict(dictionary) if dictionary else None,
        write_content_size=True,
        write_checksum=False,
        write_dict_id=False,
    )
    return cctx.compress(data)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DICT_ID_BYTES = (0, 1, 2, 4)
_CONTENT_SIZE_BYTES = (0, 2, 4, 8)


def zstd_frame_length(data: bytes) -> int | None:
    """Length of the single zstd frame at the start of ``data`` (RFC 8878), None if malformed.

    Walks the frame header and block headers without decompressing, so trailing bytes after the
    frame (including skippable frames) can be rejected exactly.
    """
    if len(data) < 5 or data[:4] != _ZSTD_MAGIC:
        return None
    fhd = data[4]
    if fhd & 0x08:  # reserved bit
        return None
    single_segment = bool(fhd & 0x20)
    fcs_flag = fhd >> 6
    pos = 5 + (0 if single_segment else 1) + _DICT_ID_BYTES[fhd & 0x03]
    pos += 1 if fcs_flag == 0 and single_segment else _CONTENT_SIZE_BYTES[fcs_flag]
    while True:
        if pos + 3 > len(data):
            return None
        header = int.from_bytes(data[pos : pos + 3], "little")
        pos += 3
        block_type = (header >> 1) & 0x03
        if block_type == 3:  # reserved
            return None
        pos += 1 if block_type == 1 else header >> 3
        if pos > len(data):
            return None
        if header & 1:  # last block
            break
    if fhd & 0x04:  # content checksum
        pos += 4
    return pos if pos <= len(data) else None


def decode_zstd(frame: bytes, size: int, *, what: str, dictionary: bytes | None = None) -> bytes:
    """Decode one zstd frame that must produce exactly ``size`` bytes, never buffering more.

    Raises :class:`DecompressionBomb` if the frame declares or produces more than ``size`` bytes
    or needs an oversized window, :class:`CorruptPayload` if it is not a valid frame or produces
    fewer bytes.
    """
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as e:
        raise CorruptPayload(f"{what}: not a zstd frame ({e})") from None
    length = zstd_frame_length(frame)
    if length is None:
        raise CorruptPayload(f"{what}: malformed or truncated zstd frame")
    if length != len(frame):
        raise CorruptPayload(f"{what}: {len(frame) - length} bytes after the zstd frame")
    declared = params.content_size
    if declared != zstandard.CONTENTSIZE_UNKNOWN:
        if declared > size:
            raise DecompressionBomb(
                f"{what}: zstd frame declares {declared} bytes; at most {size} allowed"
            )
        if declared < size:
            raise CorruptPayload(f"{what}: zstd frame declares {declared} bytes; expected {size}")
    limit = max_window_size(size, len(dictionary or b""))
    if params.window_size > limit:
        raise DecompressionBomb(
            f"{what}: zstd frame needs a {params.window_size}-byte window; at most {limit} allowed"
        )
    dctx = zstandard.ZstdDecompressor(
        dict_data=_raw_dict(dictionary) if dictionary else None, max_window_size=limit
    )
    parts: list[bytes] = []
    done = 0
    try:
        with dctx.stream_reader(frame, read_size=_READ_STEP, closefd=False) as reader:
            while done < size:
                block = reader.read(size - done)  # never more than what is still expected
                if not block:
                    break
                parts.append(block)
                done += len(block)
            if done < size:
                raise CorruptPayload(f"{what}: zstd frame decodes to {done} bytes; expected {size}")
            if reader.read(1):
                raise DecompressionBomb(f"{what}: zstd payload decodes to more than {size} bytes")
    except zstandard.ZstdError as e:
        raise CorruptPayload(f"{what}: corrupt zstd data ({e})") from None
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _signed(v: int) -> int:
    """bsdiff's control integers are 64-bit sign-magnitude, little-endian."""
    return -(v & (_SIGN - 1)) if v & _SIGN else v


def _encode_signed(v: int) -> bytes:
    return (v if v >= 0 else (-v) | _SIGN).to_bytes(8, "little")


def check_control(
    control: bytes,
    *,
    window_length: int,
    result_length: int,
    diff_size: int,
    extra_size: int,
    what: str,
) -> None:
    """Prove a bsdiff control stream is safe and exact before ``bsdiff4.core.patch`` runs it.

    Tuple ``(x, y, z)`` adds ``x`` diff bytes to ``x`` window bytes at the old position, appends
    ``y`` extra bytes, then moves the old position by ``x + z``. Every window read must lie in
    ``[0, window_length)``, output must not pass ``result_length`` and must reach it exactly, and
    the diff/extra streams must be consumed exactly. Raises :class:`OutOfRange` or
    :class:`CorruptPayload`.
    """
    if len(control) % CONTROL_TUPLE_SIZE:
        raise CorruptPayload(
            f"{what}: control stream of {len(control)} bytes is not whole {CONTROL_TUPLE_SIZE}-byte tuples"
        )
    old = new = diff_pos = extra_pos = 0
    for i, (ux, uy, uz) in enumerate(_CONTROL.iter_unpack(control)):
        x, y, z = _signed(ux), _signed(uy), _signed(uz)
        if x < 0 or y < 0:
            raise OutOfRange(f"{what}: control tuple {i} has a negative length ({x}, {y})")
        if new + x + y > result_length:
            raise OutOfRange(
                f"{what}: control tuple {i} writes [{new}, {new + x + y}) past the "
                f"{result_length}-byte chunk"
            )
        if x and (old < 0 or old + x > window_length):
            raise OutOfRange(
                f"{what}: control tuple {i} reads [{old}, {old + x}) outside the "
                f"{window_length}-byte source window"
            )
        diff_pos += x
        extra_pos += y
        if diff_pos > diff_size or extra_pos > extra_size:
            raise OutOfRange(
                f"{what}: control tuple {i} reads past the diff ({diff_size}) or extra "
                f"({extra_size}) stream"
            )
        new += x + y
        old += x + z
    if new != result_length:
        raise CorruptPayload(
            f"{what}: control stream produces {new} bytes; the chunk is {result_length}"
        )


@dataclass(frozen=True)
class BsdiffPayload:
    """An encoded BSDIFF payload and the sizes the manifest records for it."""

    payload: bytes
    control_length: int
    control_size: int
    diff_length: int
    diff_size: int
    extra_length: int
    extra_size: int


# The bsdiff streams are compressed at the caller's level with the match-finder tables capped:
# at level 19 that cuts the compressor's memory from ~100 MiB to ~10 MiB per 4 MiB stream and
# costs well under 0.1% in size (measured on executables' diff and extra streams).
_STREAM_CHAIN_LOG = 20
_STREAM_HASH_LOG = 18
# Raw-dictionary frames are capped less: their matches reach into a window of up to two chunks.
_DICT_CHAIN_LOG = 23
_DICT_HASH_LOG = 21


def _compressor(
    level: int, *, chain_log: int, hash_log: int, dictionary: bytes | None = None
) -> zstandard.ZstdCompressor:
    base = zstandard.ZstdCompressionParameters.from_level(level)
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        write_content_size=1,
        write_checksum=0,
        write_dict_id=0,
        chain_log=min(base.chain_log, chain_log),
        hash_log=min(base.hash_log, hash_log),
    )
    return zstandard.ZstdCompressor(
        compression_params=params, dict_data=_raw_dict(dictionary) if dictionary else None
    )


def compress_stream(data: bytes, level: int) -> bytes:
    """One zstd frame of a bsdiff stream (content size recorded, no checksum, no dict id)."""
    return _compressor(level, chain_log=_STREAM_CHAIN_LOG, hash_log=_STREAM_HASH_LOG).compress(data)


def encode_zstd_dict(data: bytes, level: int, dictionary: bytes) -> bytes:
    """A ZSTD_DICT frame: :func:`encode_zstd` against a raw dictionary, match tables capped."""
    cctx = _compressor(
        level, chain_log=_DICT_CHAIN_LOG, hash_log=_DICT_HASH_LOG, dictionary=dictionary
    )
    return cctx.compress(data)


@dataclass(frozen=True)
class BsdiffStreams:
    """Uncompressed bsdiff streams (control tuples packed as in the payload) for one chunk."""

    control: bytes
    diff: bytes
    extra: bytes


@cache
def fast_matcher() -> ModuleType | None:
    """The linear-time matcher module (:mod:`overdrive.bundle.matcher`), or None without numpy."""
    try:
        from overdrive.bundle import matcher
    except ImportError:  # numpy is an encoder-side extra: vehicles never need it
        return None
    return matcher


def bsdiff_streams(window: bytes, data: bytes) -> BsdiffStreams | None:
    """bsdiff streams of ``data`` against ``window``, checked; None if not encodable.

    Uses the linear-time matcher when numpy is available, else ``bsdiff4.core.diff`` (a suffix
    sort of the window); both produce what ``bsdiff4.core.patch`` consumes. None when the control
    stream would exceed the format's per-chunk limit (such data is better served by another op).
    """
    fast = fast_matcher()
    if fast is not None and len(window) <= fast.MAX_OLD and len(data) <= fast.MAX_NEW:
        control, diff, extra = fast.diff(window, data)
    else:
        control, diff, extra = bsdiff4.core.diff(window, data)
    if len(control) > max_control_size(len(data)) or not control:
        return None
    check_control(
        control,
        window_length=len(window),
        result_length=len(data),
        diff_size=len(diff),
        extra_size=len(extra),
        what="encoder",
    )
    return BsdiffStreams(control, diff, extra)


def aligned_streams(old: bytes, new: bytes) -> BsdiffStreams:
    """One-tuple bsdiff streams: ``new`` as ``old`` (same length) plus a bytewise difference.

    This is what bsdiff itself produces for in-place edits (bit flips, patched constants,
    relocated pointers at an unchanged layout), computed in linear time without any search:
    the difference ``new - old (mod 256)`` is ``bsdiff4.core.patch`` adding ``new`` to the
    bytewise negation of ``old``. The decoder sees an ordinary BSDIFF chunk.
    """
    n = len(new)
    if len(old) != n or n == 0:
        raise ValueError("aligned bsdiff needs equal, non-empty lengths")
    control = encode_control([(n, 0, 0)])
    diff: bytes = bsdiff4.core.patch(old.translate(_NEGATE), n, control, new, b"")
    return BsdiffStreams(control, diff, b"")


def estimate_bsdiff(streams: BsdiffStreams, level: int = 9) -> int:
    """Bytes the streams take at a cheap zstd level: ranks candidates before the real encode."""
    return sum(
        len(compress_stream(s, level)) for s in (streams.control, streams.diff, streams.extra)
    )


def pack_bsdiff(streams: BsdiffStreams, level: int) -> BsdiffPayload:
    """The BSDIFF payload of ``streams``: each stream one zstd frame at ``level``."""
    frames = [compress_stream(s, level) for s in (streams.control, streams.diff, streams.extra)]
    return BsdiffPayload(
        payload=b"".join(frames),
        control_length=len(frames[0]),
        control_size=len(streams.control),
        diff_length=len(frames[1]),
        diff_size=len(streams.diff),
        extra_length=len(frames[2]),
        extra_size=len(streams.extra),
    )


def encode_bsdiff(window: bytes, data: bytes, level: int) -> BsdiffPayload | None:
    """bsdiff ``data`` against ``window``; each stream zstd-compressed. None if not encodable."""
    streams = bsdiff_streams(window, data)
    return None if streams is None else pack_bsdiff(streams, level)


_NEGATE = bytes((-i) & 0xFF for i in range(256))


def encode_aligned_bsdiff(old: bytes, new: bytes, level: int) -> BsdiffPayload:
    """A one-tuple BSDIFF payload of ``new`` against ``old`` (see :func:`aligned_streams`)."""
    return pack_bsdiff(aligned_streams(old, new), level)


def decode_bsdiff(
    payload: bytes,
    *,
    window: bytes,
    result_length: int,
    control_length: int,
    control_size: int,
    diff_length: int,
    diff_size: int,
    extra_size: int,
    what: str,
) -> bytes:
    """Rebuild a chunk from its BSDIFF payload (control, diff, extra zstd frames) and window."""
    c_end = control_length
    d_end = c_end + diff_length
    control = decode_zstd(payload[:c_end], control_size, what=f"{what} control stream")
    check_control(
        control,
        window_length=len(window),
        result_length=result_length,
        diff_size=diff_size,
        extra_size=extra_size,
        what=what,
    )
    diff = decode_zstd(payload[c_end:d_end], diff_size, what=f"{what} diff stream")
    extra = decode_zstd(payload[d_end:], extra_size, what=f"{what} extra stream")
    try:
        result: bytes = bsdiff4.core.patch(window, result_length, control, diff, extra)
    except ValueError as e:  # unreachable after check_control; kept as a second line of defence
        raise CorruptPayload(f"{what}: bsdiff patch failed ({e})") from None
    return result


def encode_control(tuples: list[tuple[int, int, int]]) -> bytes:
    """Encode control tuples in bsdiff's format (used by tests to craft hostile streams)."""
    return b"".join(_encode_signed(v) for t in tuples for v in t)

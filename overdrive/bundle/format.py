"""The on-disk bundle format: header layout, manifest model and its strict validation.

A bundle is one file::

    magic            8 bytes   b"OVDBNDL\\x00"
    format version   u16       big-endian, currently 1
    manifest length  u32       big-endian, bytes of manifest JSON that follow
    manifest         canonical JSON (ASCII, sorted keys, no whitespace)
    manifest sha256  32 bytes  sha256 of the manifest bytes
    payloads         concatenated chunk payloads, in chunk order, no gaps, nothing after

Everything a decoder needs before touching a payload is in the manifest, so :func:`read_manifest`
reads the header alone and a vehicle can check hardware id, source identity and sizes before it
writes a byte. Validation here is deliberately strict (unknown fields, non-canonical JSON, chunks
that do not tile the image exactly, payloads that are not packed back to back) because a bundle
has exactly one valid encoding of a given manifest, and because every range the decoder later uses
must be proven safe before it is used. ``docs/bundle-format.md`` is the prose version of this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, BinaryIO

from overdrive.bundle.errors import (
    BadMagic,
    BundleError,
    CorruptManifest,
    NotAsSigned,
    OutOfRange,
    TruncatedBundle,
    UnsupportedVersion,
)

__all__ = [
    "CONTROL_TUPLE_SIZE",
    "FORMAT_VERSION",
    "HASH_LENGTH",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_IMAGE_LENGTH",
    "MAX_LABEL_LENGTH",
    "MAX_MANIFEST_LENGTH",
    "MAX_WINDOW_EXTENTS",
    "MIN_CHUNK_SIZE",
    "PREFIX_LENGTH",
    "WINDOW_FACTOR",
    "BundleHeader",
    "Chunk",
    "Expected",
    "ImageIdentity",
    "Manifest",
    "Op",
    "encode_header",
    "max_compressed_length",
    "max_control_size",
    "max_manifest_length",
    "read_header",
    "read_manifest",
]

MAGIC = b"OVDBNDL\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct(">8sHI")
PREFIX_LENGTH = _PREFIX.size  # 14: magic + version + manifest length
HASH_LENGTH = 32

MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_MANIFEST_LENGTH = 64 * 1024 * 1024
MAX_IMAGE_LENGTH = 1 << 48
MAX_LABEL_LENGTH = 256
MAX_WINDOW_EXTENTS = 16
WINDOW_FACTOR = 2  # a chunk's source window is at most WINDOW_FACTOR * chunk_size bytes
CONTROL_TUPLE_SIZE = 24  # a bsdiff control tuple: three 8-byte sign-magnitude integers
_BYTES_PER_CONTROL_TUPLE = 64  # at most one control tuple per 64 result bytes (+1)
_MAX_CHUNK_ENTRY = 1536  # bytes of canonical JSON one chunk entry can take (16 window extents)

_HEX64 = re.compile(r"[0-9a-f]{64}")


class Op(StrEnum):
    """How a chunk's result bytes are produced from its payload (and the source)."""

    RAW = "raw"  # payload is the result
    ZSTD = "zstd"  # payload is one zstd frame of the result
    COPY = "copy"  # result is source[source_offset : source_offset + result_length]
    ZSTD_DICT = "zstd_dict"  # one zstd frame, the source window as raw-content dictionary
    BSDIFF = "bsdiff"  # zstd(control) + zstd(diff) + zstd(extra) against the source window


SOURCE_OPS = frozenset({Op.COPY, Op.ZSTD_DICT, Op.BSDIFF})
_WINDOW_OPS = frozenset({Op.ZSTD_DICT, Op.BSDIFF})
_BSDIFF_FIELDS = (
    "control_length",
    "control_size",
    "diff_length",
    "diff_size",
    "extra_length",
    "extra_size",
)
_COMMON_FIELDS = frozenset(
    {"op", "payload_offset", "payload_length", "result_offset", "result_length", "sha256"}
)
_OP_FIELDS: dict[Op, frozenset[str]] = {
    Op.RAW: _COMMON_FIELDS,
    Op.ZSTD: _COMMON_FIELDS,
    Op.COPY: _COMMON_FIELDS | {"source_offset"},
    Op.ZSTD_DICT: _COMMON_FIELDS | {"window"},
    Op.BSDIFF: _COMMON_FIELDS | {"window"} | set(_BSDIFF_FIELDS),
}
_MANIFEST_FIELDS = frozenset({"hardware_id", "image", "source", "chunk_size", "chunks"})
_IDENTITY_FIELDS = frozenset({"version", "sha256", "length"})


def max_compressed_length(size: int) -> int:
    """The largest zstd frame accepted for ``size`` decoded bytes.

    zstd never needs more than ``size + size/256 + 128 KiB/2048`` bytes; the slack covers frame
    headers. Bounding payload lengths keeps the decoder's memory bounded by the chunk size.
    """
    return size + (size >> 8) + 1024


def max_manifest_length(image_length: int) -> int:
    """The longest manifest a valid bundle of an ``image_length``-byte image can have.

    A bound for decoders that know the image but not the manifest (a target signed without
    ``manifest`` identity): what the format allows, at most :data:`MAX_MANIFEST_LENGTH`.
    """
    chunks = -(-image_length // MIN_CHUNK_SIZE)
    return min(MAX_MANIFEST_LENGTH, 4096 + chunks * _MAX_CHUNK_ENTRY)


def max_control_size(result_length: int) -> int:
    """The largest decoded bsdiff control stream accepted for a chunk of ``result_length`` bytes."""
    return CONTROL_TUPLE_SIZE * (result_length // _BYTES_PER_CONTROL_TUPLE + 1)


# --------------------------------------------------------------------------------------------
# Field readers: every one raises CorruptManifest for a wrong type and OutOfRange for a bad range.


def _get(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise CorruptManifest(f"manifest {where}: missing field {key!r}")
    return obj[key]


def _as_int(value: Any, where: str, lo: int = 0, hi: int = MAX_IMAGE_LENGTH) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise CorruptManifest(f"manifest {where}: expected an integer, found {_kind(value)}")
    if not lo <= value <= hi:
        raise OutOfRange(f"manifest {where}: {value} is outside [{lo}, {hi}]")
    return value


def _as_label(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise CorruptManifest(f"manifest {where}: expected a string, found {_kind(value)}")
    if not 1 <= len(value) <= MAX_LABEL_LENGTH:
        raise CorruptManifest(f"manifest {where}: must be 1-{MAX_LABEL_LENGTH} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise CorruptManifest(f"manifest {where}: contains control characters")
    return value


def _as_sha256(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise CorruptManifest(f"manifest {where}: expected 64 lowercase hex digits")
    return value


def _as_object(value: Any, where: str, fields: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise CorruptManifest(f"manifest {where}: expected an object, found {_kind(value)}")
    unknown = sorted(set(value) - fields)
    if unknown:
        raise CorruptManifest(f"manifest {where}: unknown field {unknown[0]!r}")
    missing = sorted(fields - set(value))
    if missing:
        raise CorruptManifest(f"manifest {where}: missing field {missing[0]!r}")
    return value


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageIdentity:
    """What an image is: its version label, sha256 (lowercase hex) and length in bytes."""

    version: str
    sha256: str
    length: int

    def to_dict(self) -> dict[str, Any]:
        """The manifest JSON object for this identity."""
        return {"version": self.version, "sha256": self.sha256, "length": self.length}

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> ImageIdentity:
        """Parse and validate an identity object found at ``where`` in the manifest."""
        o = _as_object(obj, where, _IDENTITY_FIELDS)
        return cls(
            version=_as_label(o["version"], f"{where}.version"),
            sha256=_as_sha256(o["sha256"], f"{where}.sha256"),
            length=_as_int(o["length"], f"{where}.length"),
        )


@dataclass(frozen=True)
class Chunk:
    """One slice of the result image and how to produce it.

    ``result_offset``/``result_length`` locate the slice in the image; ``payload_offset``/
    ``payload_length`` locate its payload relative to the start of the payload area; ``sha256``
    is the hash of the result slice. The remaining fields exist only for the ops that use them:
    ``source_offset`` for COPY, ``window`` (source extents ``(offset, length)`` concatenated in
    order) for ZSTD_DICT and BSDIFF, and the six bsdiff stream sizes for BSDIFF (``*_length`` is
    the compressed stream in the payload, ``*_size`` what it decompresses to).
    """

    op: Op
    result_offset: int
    result_length: int
    sha256: str
    payload_offset: int
    payload_length: int
    source_offset: int | None = None
    window: tuple[tuple[int, int], ...] = ()
    control_length: int | None = None
    control_size: int | None = None
    diff_length: int | None = None
    diff_size: int | None = None
    extra_length: int | None = None
    extra_size: int | None = None

    @property
    def window_length(self) -> int:
        """Total bytes of the source window (0 for ops without one)."""
        return sum(length for _, length in self.window)

    def to_dict(self) -> dict[str, Any]:
        """The manifest JSON object for this chunk (only the fields its op uses)."""
        d: dict[str, Any] = {
            "op": self.op.value,
            "result_offset": self.result_offset,
            "result_length": self.result_length,
            "sha256": self.sha256,
            "payload_offset": self.payload_offset,
            "payload_length": self.payload_length,
        }
        if self.op is Op.COPY:
            d["source_offset"] = self.source_offset
        if self.op in _WINDOW_OPS:
            d["window"] = [[offset, length] for offset, length in self.window]
        if self.op is Op.BSDIFF:
            for name in _BSDIFF_FIELDS:
                d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> Chunk:
        """Parse one chunk object; field types are checked here, ranges in Manifest.validate."""
        if not isinstance(obj, dict):
            raise CorruptManifest(f"manifest {where}: expected an object, found {_kind(obj)}")
        raw_op = _get(obj, "op", where)
        try:
            op = Op(raw_op)
        except ValueError:
            raise CorruptManifest(f"manifest {where}: unknown op {raw_op!r}") from None
        o = _as_object(obj, where, _OP_FIELDS[op])
        kwargs: dict[str, Any] = {
            "op": op,
            "result_offset": _as_int(o["result_offset"], f"{where}.result_offset"),
            "result_length": _as_int(o["result_length"], f"{where}.result_length"),
            "sha256": _as_sha256(o["sha256"], f"{where}.sha256"),
            "payload_offset": _as_int(o["payload_offset"], f"{where}.payload_offset"),
            "payload_length": _as_int(o["payload_length"], f"{where}.payload_length"),
        }
        if op is Op.COPY:
            kwargs["source_offset"] = _as_int(o["source_offset"], f"{where}.source_offset")
        if op in _WINDOW_OPS:
            kwargs["window"] = _parse_window(o["window"], f"{where}.window")
        if op is Op.BSDIFF:
            for name in _BSDIFF_FIELDS:
                kwargs[name] = _as_int(o[name], f"{where}.{name}")
        return cls(**kwargs)


def _parse_window(value: Any, where: str) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        raise CorruptManifest(f"manifest {where}: expected an array, found {_kind(value)}")
    if not 1 <= len(value) <= MAX_WINDOW_EXTENTS:
        raise OutOfRange(f"manifest {where}: {len(value)} extents, allowed 1-{MAX_WINDOW_EXTENTS}")
    extents = []
    for i, extent in enumerate(value):
        if not isinstance(extent, list) or len(extent) != 2:
            raise CorruptManifest(f"manifest {where}[{i}]: expected [offset, length]")
        extents.append(
            (_as_int(extent[0], f"{where}[{i}][0]"), _as_int(extent[1], f"{where}[{i}][1]"))
        )
    return tuple(extents)


@dataclass(frozen=True)
class Manifest:
    """Everything about a bundle except its payload bytes.

    ``source`` is ``None`` for a full bundle and the identity of the required base image for a
    delta. ``chunks`` tile ``[0, image.length)`` in order, every chunk ``chunk_size`` bytes long
    except the last, and their payloads are packed back to back from payload offset 0.
    """

    hardware_id: str
    image: ImageIdentity
    source: ImageIdentity | None
    chunk_size: int
    chunks: tuple[Chunk, ...] = field(default_factory=tuple)

    @property
    def kind(self) -> str:
        """``"full"`` or ``"delta"``."""
        return "full" if self.source is None else "delta"

    @property
    def payload_length(self) -> int:
        """Total bytes of the payload area."""
        return sum(c.payload_length for c in self.chunks)

    @property
    def sha256(self) -> str:
        """sha256 (hex) of the canonical manifest JSON: the manifest's identity."""
        return hashlib.sha256(self.to_json().encode("ascii")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict."""
        return {
            "hardware_id": self.hardware_id,
            "image": self.image.to_dict(),
            "source": None if self.source is None else self.source.to_dict(),
            "chunk_size": self.chunk_size,
            "chunks": [c.to_dict() for c in self.chunks],
        }

    def to_json(self) -> str:
        """Canonical JSON: ASCII only, keys sorted, no insignificant whitespace."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse, strictly validate and return a manifest; it must be in canonical form.

        Raises :class:`CorruptManifest` for syntax/type problems and :class:`OutOfRange` for
        offsets and lengths that are out of range.
        """
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError as e:
                raise CorruptManifest(f"manifest is not ASCII JSON (byte {e.start})") from None
        try:
            obj = json.loads(text)
        except RecursionError:
            raise CorruptManifest("manifest JSON is nested too deeply") from None
        except ValueError as e:
            raise CorruptManifest(f"manifest is not valid JSON: {e}") from None
        manifest = cls.from_dict(obj)
        if manifest.to_json() != text:
            raise CorruptManifest("manifest JSON is not in canonical form")
        return manifest

    @classmethod
    def from_dict(cls, obj: Any) -> Manifest:
        """Build a manifest from parsed JSON and validate it (see :meth:`validate`)."""
        o = _as_object(obj, "root", _MANIFEST_FIELDS)
        raw_source = o["source"]
        chunks = o["chunks"]
        if not isinstance(chunks, list):
            raise CorruptManifest(f"manifest chunks: expected an array, found {_kind(chunks)}")
        manifest = cls(
            hardware_id=_as_label(o["hardware_id"], "hardware_id"),
            image=ImageIdentity.from_dict(o["image"], "image"),
            source=None if raw_source is None else ImageIdentity.from_dict(raw_source, "source"),
            chunk_size=_as_int(o["chunk_size"], "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
            chunks=tuple(Chunk.from_dict(c, f"chunk {i}") for i, c in enumerate(chunks)),
        )
        manifest.validate()
        return manifest

    def validate(self) -> None:
        """Check every field and range; raise CorruptManifest or OutOfRange on the first problem.

        Rules: labels and hashes well-formed; chunk ``i`` covers
        ``[i*chunk_size, min((i+1)*chunk_size, image.length))``; payloads are packed in chunk
        order from offset 0; each op's payload size is within its bound; COPY reads and windows
        lie inside the source; full bundles use no source ops.
        """
        _as_label(self.hardware_id, "hardware_id")
        for where, ident in (("image", self.image), ("source", self.source)):
            if ident is not None:
                _as_label(ident.version, f"{where}.version")
                _as_sha256(ident.sha256, f"{where}.sha256")
                _as_int(ident.length, f"{where}.length")
        cs = _as_int(self.chunk_size, "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        expected_chunks = -(-self.image.length // cs)
        if len(self.chunks) != expected_chunks:
            raise OutOfRange(
                f"manifest has {len(self.chunks)} chunks; a {self.image.length}-byte image "
                f"in {cs}-byte chunks needs {expected_chunks}"
            )
        payload_offset = 0
        for i, c in enumerate(self.chunks):
            self._validate_chunk(i, c, payload_offset)
            payload_offset += c.payload_length

    def _validate_chunk(self, i: int, c: Chunk, payload_offset: int) -> None:
        where = f"chunk {i}"
        offset = i * self.chunk_size
        length = min(self.chunk_size, self.image.length - offset)
        if c.result_offset != offset or c.result_length != length:
            raise OutOfRange(
                f"{where} covers [{c.result_offset}, {c.result_offset + c.result_length}) "
                f"of the image; expected [{offset}, {offset + length})"
            )
        _as_sha256(c.sha256, f"{where}.sha256")
        if c.payload_offset != payload_offset:
            raise OutOfRange(
                f"{where} payload starts at {c.payload_offset}; expected {payload_offset} "
                "(payloads are packed in chunk order)"
            )
        if c.op in SOURCE_OPS and self.source is None:
            raise CorruptManifest(f"{where} uses op {c.op.value!r} but the bundle has no source")
        plen = c.payload_length
        if c.op is Op.RAW:
            if plen != length:
                raise OutOfRange(f"{where}: raw payload is {plen} bytes, result is {length}")
        elif c.op is Op.COPY:
            assert self.source is not None
            if plen != 0:
                raise OutOfRange(f"{where}: copy has a {plen}-byte payload; expected none")
            so = _as_int(c.source_offset, f"{where}.source_offset")
            if so + length > self.source.length:
                raise OutOfRange(
                    f"{where}: copy reads source [{so}, {so + length}) beyond the "
                    f"{self.source.length}-byte source"
                )
        elif c.op in (Op.ZSTD, Op.ZSTD_DICT) and not 1 <= plen <= max_compressed_length(length):
            raise OutOfRange(
                f"{where}: {c.op.value} payload of {plen} bytes is outside "
                f"[1, {max_compressed_length(length)}] for a {length}-byte result"
            )
        if c.op in _WINDOW_OPS:
            self._validate_window(where, c)
        if c.op is Op.BSDIFF:
            self._validate_bsdiff(where, c)

    def _validate_window(self, where: str, c: Chunk) -> None:
        assert self.source is not None
        if not 1 <= len(c.window) <= MAX_WINDOW_EXTENTS:
            raise OutOfRange(f"{where}: window has {len(c.window)} extents")
        end = 0
        for j, (offset, length) in enumerate(c.window):
            _as_int(offset, f"{where}.window[{j}][0]")
            _as_int(length, f"{where}.window[{j}][1]", 1)
            if offset < end:
                raise OutOfRange(f"{where}: window extents overlap or are not in order at {j}")
            end = offset + length
            if end > self.source.length:
                raise OutOfRange(
                    f"{where}: window extent [{offset}, {end}) is beyond the "
                    f"{self.source.length}-byte source"
                )
        limit = WINDOW_FACTOR * self.chunk_size
        if c.window_length > limit:
            raise OutOfRange(f"{where}: window of {c.window_length} bytes exceeds {limit}")

    def _validate_bsdiff(self, where: str, c: Chunk) -> None:
        length = c.result_length
        sizes = {
            name: _as_int(getattr(c, name), f"{where}.{name}", 0, MAX_IMAGE_LENGTH)
            for name in _BSDIFF_FIELDS
        }
        control_size = sizes["control_size"]
        if control_size % CONTROL_TUPLE_SIZE or not (
            CONTROL_TUPLE_SIZE <= control_size <= max_control_size(length)
        ):
            raise OutOfRange(
                f"{where}: control stream of {control_size} bytes is not a multiple of "
                f"{CONTROL_TUPLE_SIZE} in [{CONTROL_TUPLE_SIZE}, {max_control_size(length)}]"
            )
        if sizes["diff_size"] + sizes["extra_size"] != length:
            raise OutOfRange(
                f"{where}: diff ({sizes['diff_size']}) + extra ({sizes['extra_size']}) bytes "
                f"!= result length {length}"
            )
        total = 0
        for stream in ("control", "diff", "extra"):
            clen, size = sizes[f"{stream}_length"], sizes[f"{stream}_size"]
            if not 1 <= clen <= max_compressed_length(size):
                raise OutOfRange(
                    f"{where}: {stream} stream of {clen} bytes is outside "
                    f"[1, {max_compressed_length(size)}] for {size} decoded bytes"
                )
            total += clen
        if total != c.payload_length:
            raise OutOfRange(
                f"{where}: bsdiff streams total {total} bytes, payload is {c.payload_length}"
            )


# --------------------------------------------------------------------------------------------
# Header


@dataclass(frozen=True)
class BundleHeader:
    """A parsed, verified header: the manifest and where the payload area starts."""

    manifest: Manifest
    manifest_sha256: str
    payload_start: int
    file_length: int

    @property
    def manifest_length(self) -> int:
        """Bytes of manifest JSON in the header."""
        return self.payload_start - PREFIX_LENGTH - HASH_LENGTH


@dataclass(frozen=True)
class Expected:
    """What a signed description (a TUF target's ``custom``) says a bundle is.

    A decoder given one checks it against the header before it writes anything: the manifest's
    length before reading it (so a hostile header cannot make it read or parse more than the
    signed manifest), its sha256 before parsing it, then hardware id and image and source
    identities. ``manifest_sha256``/``manifest_length`` may be ``None`` for descriptions that
    predate them; the length is then bounded by :func:`max_manifest_length` of the image.
    """

    hardware_id: str
    image: ImageIdentity
    source: ImageIdentity | None = None
    manifest_sha256: str | None = None
    manifest_length: int | None = None

    @property
    def manifest_bound(self) -> int:
        if self.manifest_length is not None:
            return self.manifest_length
        return max_manifest_length(self.image.length)

    def check(self, header: BundleHeader) -> None:
        """:class:`NotAsSigned` unless the parsed header is what this description says."""
        m = header.manifest
        found = [
            ("hardware id", m.hardware_id, self.hardware_id),
            ("image", m.image, self.image),
            ("source image", m.source, self.source),
        ]
        for what, got, want in found:
            if got != want:
                raise NotAsSigned(
                    f"bundle's {what} is {_show(got)}, its signed target says {_show(want)}"
                )


def _show(value: object) -> str:
    if isinstance(value, ImageIdentity):
        return f"{value.version} ({value.length} bytes, sha256 {value.sha256[:12]}…)"
    return "none" if value is None else repr(value)


def encode_header(manifest: Manifest) -> bytes:
    """Serialize the header (prefix, manifest JSON, manifest sha256) for ``manifest``."""
    manifest.validate()
    body = manifest.to_json().encode("ascii")
    if len(body) > MAX_MANIFEST_LENGTH:
        raise BundleError(
            f"manifest is {len(body)} bytes, more than {MAX_MANIFEST_LENGTH}; use a larger chunk size"
        )
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + body + hashlib.sha256(body).digest()


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """Read ``n`` bytes, retrying short reads (raw files, pipes); fewer only at end of file."""
    parts = []
    while n > 0:
        block = f.read(n)
        if not block:
            break
        parts.append(block)
        n -= len(block)
    return b"".join(parts)


def read_header(f: BinaryIO, signed: Expected | None = None) -> BundleHeader:
    """Read and verify the header of the bundle open as ``f`` (seekable); payloads are not read.

    Checks, in order: magic, version, manifest length, manifest sha256, manifest validity, and
    that the file is exactly as long as the payloads the manifest declares. With ``signed``,
    also (each before the step it protects): the manifest length against the signed one (or its
    bound), the manifest sha256 against the signed one, and the identities (:meth:`Expected.check`).
    """
    f.seek(0, os.SEEK_END)
    file_length = f.tell()
    f.seek(0)
    prefix = _read_exact(f, PREFIX_LENGTH)
    if len(prefix) < len(MAGIC):
        if MAGIC.startswith(prefix):
            raise TruncatedBundle(f"bundle is {len(prefix)} bytes, too short for a header")
        raise BadMagic(f"not an Overdrive bundle (starts with {prefix.hex() or 'nothing'})")
    if prefix[: len(MAGIC)] != MAGIC:
        raise BadMagic(
            f"not an Overdrive bundle: magic is {prefix[: len(MAGIC)].hex()}, expected {MAGIC.hex()}"
        )
    if len(prefix) < PREFIX_LENGTH:
        raise TruncatedBundle(f"bundle is {len(prefix)} bytes, too short for a header")
    _, version, manifest_length = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(
            f"bundle format version {version} is not supported (this decoder reads {FORMAT_VERSION})"
        )
    if manifest_length == 0 or manifest_length > MAX_MANIFEST_LENGTH:
        raise CorruptManifest(
            f"manifest length {manifest_length} is outside [1, {MAX_MANIFEST_LENGTH}]"
        )
    if signed is not None:
        if signed.manifest_length is not None and manifest_length != signed.manifest_length:
            raise NotAsSigned(
                f"bundle's manifest is {manifest_length} bytes, its signed target says "
                f"{signed.manifest_length}"
            )
        if manifest_length > signed.manifest_bound:
            raise NotAsSigned(
                f"bundle's manifest is {manifest_length} bytes, more than a bundle of the signed "
                f"{signed.image.length}-byte image can need ({signed.manifest_bound})"
            )
    payload_start = PREFIX_LENGTH + manifest_length + HASH_LENGTH
    if file_length < payload_start:
        raise TruncatedBundle(f"bundle is {file_length} bytes; its header needs {payload_start}")
    body = _read_exact(f, manifest_length)
    digest = _read_exact(f, HASH_LENGTH)
    if len(body) != manifest_length or len(digest) != HASH_LENGTH:
        raise TruncatedBundle(f"bundle ends inside its header (needs {payload_start} bytes)")
    actual = hashlib.sha256(body).hexdigest()
    if actual != digest.hex():
        raise CorruptManifest(
            f"manifest sha256 mismatch: header says {digest.hex()}, manifest hashes to {actual}"
        )
    if signed is not None and signed.manifest_sha256 not in (None, actual):
        raise NotAsSigned(
            f"bundle's manifest has sha256 {actual}, its signed target says "
            f"{signed.manifest_sha256}"
        )
    manifest = Manifest.from_json(body)
    expected = payload_start + manifest.payload_length
    if file_length < expected:
        raise TruncatedBundle(
            f"bundle is {file_length} bytes; its manifest declares {expected} "
            f"({expected - file_length} missing)"
        )
    if file_length > expected:
        raise CorruptManifest(
            f"bundle is {file_length} bytes but its manifest accounts for {expected} "
            f"({file_length - expected} unexplained trailing bytes)"
        )
    header = BundleHeader(manifest, actual, payload_start, file_length)
    if signed is not None:
        signed.check(header)
    return header


def read_manifest(bundle: str | os.PathLike[str] | BinaryIO) -> Manifest:
    """Read, verify and return a bundle's manifest without reading its payloads.

    ``bundle`` is a path or a seekable binary file object (read from its start).
    """
    if isinstance(bundle, str | os.PathLike):
        try:
            with open(bundle, "rb") as f:
                return read_header(f).manifest
        except OSError as e:
            raise BundleError(f"cannot read bundle {os.fspath(bundle)}: {e.strerror or e}") from e
    return read_header(bundle).manifest

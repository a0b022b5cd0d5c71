"""Update bundles: the on-disk format and the streaming, chunked delta codec.

A bundle is one file holding a verified header (magic, version, manifest JSON, manifest sha256)
and the chunk payloads. ``encode_bundle`` builds full or delta bundles in parallel;
``apply_bundle`` streams one into a target (file or block device) with bounded memory, verifying
every chunk and the whole image, and can resume after a power cut. ``read_manifest`` reads the
header only. See ``docs/bundle-format.md`` for the byte-level specification.

Importing this package is light: no click, no worker pools until used.
"""

from __future__ import annotations

from overdrive.bundle.decoder import apply_bundle
from overdrive.bundle.encoder import encode_bundle
from overdrive.bundle.errors import (
    BadMagic,
    BundleError,
    ChunkHashMismatch,
    CorruptManifest,
    CorruptPayload,
    DecompressionBomb,
    NotAsSigned,
    OutOfRange,
    ResultMismatch,
    SourceMismatch,
    TruncatedBundle,
    UnsupportedVersion,
)
from overdrive.bundle.format import (
    FORMAT_VERSION,
    MAGIC,
    Chunk,
    Expected,
    ImageIdentity,
    Manifest,
    Op,
    read_manifest,
)
from overdrive.bundle.image import image_sha256

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "BadMagic",
    "BundleError",
    "Chunk",
    "ChunkHashMismatch",
    "CorruptManifest",
    "CorruptPayload",
    "DecompressionBomb",
    "Expected",
    "ImageIdentity",
    "Manifest",
    "NotAsSigned",
    "Op",
    "OutOfRange",
    "ResultMismatch",
    "SourceMismatch",
    "TruncatedBundle",
    "UnsupportedVersion",
    "apply_bundle",
    "encode_bundle",
    "image_sha256",
    "read_manifest",
]

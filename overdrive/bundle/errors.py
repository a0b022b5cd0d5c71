"""Errors raised while reading, writing and applying bundles.

Every failure a hostile or damaged bundle can cause is a :class:`BundleError` subclass with a
one-line message that names what is wrong (which chunk, what was expected and what was found), so a
vehicle can log it and a release engineer can act on it. Callers that only care whether a bundle is
usable catch :class:`BundleError`; tests and the install state machine can tell the kinds apart
(e.g. a :class:`SourceMismatch` means "wrong base image, fetch the full bundle", while a
:class:`ChunkHashMismatch` means "the download is damaged").
"""

from __future__ import annotations

from overdrive.errors import OverdriveError

__all__ = [
    "BadMagic",
    "BundleError",
    "ChunkHashMismatch",
    "CorruptManifest",
    "CorruptPayload",
    "DecompressionBomb",
    "NotAsSigned",
    "OutOfRange",
    "ResultMismatch",
    "SourceMismatch",
    "TruncatedBundle",
    "UnsupportedVersion",
]


class BundleError(OverdriveError):
    """A bundle cannot be read, written or applied."""


class BadMagic(BundleError):
    """The file does not start with the bundle magic: it is not an Overdrive bundle."""


class UnsupportedVersion(BundleError):
    """The bundle's format version is not one this code can read."""


class TruncatedBundle(BundleError):
    """The file ends before the header, the manifest or the payloads it declares."""


class CorruptManifest(BundleError):
    """The manifest is not valid: bad JSON, missing or ill-typed fields, or a hash mismatch."""


class CorruptPayload(BundleError):
    """A chunk's payload cannot be decoded (bad zstd frame, short output, bad control stream)."""


class ChunkHashMismatch(BundleError):
    """A decoded chunk's sha256 differs from the one the manifest declares."""


class OutOfRange(BundleError):
    """An offset or length points outside what it may address.

    Examples: chunks that do not tile the image, a payload outside the file, a source window
    outside the source, a bsdiff control stream that reads outside its window or writes past the
    chunk's declared length.
    """


class DecompressionBomb(BundleError):
    """A payload decompresses (or declares it would) to more than its declared size."""


class NotAsSigned(BundleError):
    """The bundle's header is not what its signed description says (manifest hash or length,
    hardware id, image or source identity): refused before a byte is written."""


class SourceMismatch(BundleError):
    """A delta's source image (sha256 or length) differs from the image it is applied to."""


class ResultMismatch(BundleError):
    """The whole applied image's sha256 differs from the manifest's image sha256."""

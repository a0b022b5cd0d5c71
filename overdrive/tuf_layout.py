"""Where the TUF image repository keeps things in storage, and what a bundle target's ``custom``
field says. Shared by the signing side (which writes it) and vehicles (which read it).

Storage layout (consistent snapshots)::

    metadata/N.root.json       every root version, kept forever (clients walk the chain)
    metadata/root.json         a copy of the newest root, for bootstrapping by hand
    metadata/N.targets.json    targets versions
    metadata/N.snapshot.json   snapshot versions
    metadata/timestamp.json    the one mutable file: written last, it switches clients over
    targets/HW/VERSION/SHA256.NAME   bundle files under hash-prefixed names (immutable)
    staging/ROLE.json          metadata waiting for more signatures (never read by vehicles)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from overdrive.bundle.errors import BundleError
from overdrive.bundle.format import Expected, ImageIdentity
from overdrive.errors import OverdriveError

METADATA_PREFIX = "metadata/"
TARGETS_PREFIX = "targets/"
STAGING_PREFIX = "staging/"
TOP_LEVEL_ROLES = ("root", "targets", "snapshot", "timestamp")
#: Root carries the repository's expiry policy (role → seconds), so every engineer re-signs with
#: the same periods, and the director signs each vehicle's metadata with its root's periods.
EXPIRY_FIELD = "x-overdrive-expiry-seconds"
#: Namespace of our fields inside a target's ``custom``.
CUSTOM_KEY = "overdrive"
#: A withdrawn target's ``custom`` carries ``{"reason": …, "at": ISO-UTC}`` under this key.
YANKED_KEY = "yanked"
#: The longest withdrawal reason (it is shown on dashboards and in vehicle events).
MAX_REASON_LENGTH = 500

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class LayoutError(OverdriveError):
    """A name cannot be used in the repository layout, or a ``custom`` field is malformed."""


def check_segment(what: str, value: str) -> str:
    """``value`` if it can be one path segment of a target name (hardware id, version)."""
    if not _SEGMENT.fullmatch(value) or ".." in value:
        raise LayoutError(
            f"invalid {what} {value!r}: use letters, digits and . _ + - "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return value


def metadata_key(role: str, version: int | None = None) -> str:
    """Storage key of a role's metadata file (``timestamp`` is never versioned)."""
    if role == "timestamp" or version is None:
        return f"{METADATA_PREFIX}{role}.json"
    return f"{METADATA_PREFIX}{version}.{role}.json"


def staging_key(role: str) -> str:
    return f"{STAGING_PREFIX}{role}.json"


def target_storage_key(target_path: str, sha256: str) -> str:
    """Where a target file lives: its basename prefixed with its hash, as ngclient fetches it."""
    dirname, sep, basename = target_path.rpartition("/")
    return f"{TARGETS_PREFIX}{dirname}{sep}{sha256}.{basename}"


def bundle_target_path(hardware_id: str, version: str, source_version: str | None = None) -> str:
    """The TUF target path of a full bundle, or of a delta from ``source_version``."""
    check_segment("hardware id", hardware_id)
    check_segment("version", version)
    if source_version is None:
        return f"{hardware_id}/{version}/full.bundle"
    check_segment("source version", source_version)
    return f"{hardware_id}/{version}/delta-from-{source_version}.bundle"


#: What a slot holds and a bundle produces: version, sha256, length (one definition, the bundle's).
ImageRef = ImageIdentity


def _image(data: Any, where: str) -> ImageRef:
    try:
        return ImageIdentity.from_dict(data, where)
    except BundleError as e:
        raise LayoutError(str(e)) from e


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle target's ``custom`` field carries (under the ``overdrive`` key)."""

    hardware_id: str
    version: str
    release_counter: int
    kind: str  # "full" | "delta"
    image: ImageRef
    source: ImageRef | None = None
    #: The bundle manifest's sha256 and length: a decoder authenticates the header (and so the
    #: chunk table) against these before it reads or parses more. ``None`` on older targets.
    manifest_sha256: str | None = None
    manifest_length: int | None = None

    def to_custom(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "hardware_id": self.hardware_id,
            "version": self.version,
            "release_counter": self.release_counter,
            "kind": self.kind,
            "image": self.image.to_dict(),
        }
        if self.source is not None:
            info["source"] = self.source.to_dict()
        if self.manifest_sha256 is not None:
            info["manifest"] = {"sha256": self.manifest_sha256, "length": self.manifest_length}
        return {CUSTOM_KEY: info}

    def expected(self) -> Expected:
        """What a decoder must find in this bundle's header (checked before it writes)."""
        return Expected(
            self.hardware_id, self.image, self.source, self.manifest_sha256, self.manifest_length
        )

    @classmethod
    def from_custom(cls, custom: Any, where: str = "target") -> BundleInfo | None:
        """Parse a target's ``custom``; ``None`` for targets that are not bundles."""
        if not isinstance(custom, dict) or CUSTOM_KEY not in custom:
            return None
        info = custom[CUSTOM_KEY]
        if not isinstance(info, dict):
            raise LayoutError(f"{where}: custom.{CUSTOM_KEY} must be an object")
        hw, version = info.get("hardware_id"), info.get("version")
        counter, kind = info.get("release_counter"), info.get("kind")
        if not isinstance(hw, str) or not isinstance(version, str):
            raise LayoutError(f"{where}: hardware_id and version are required")
        if not isinstance(counter, int) or isinstance(counter, bool) or counter < 1:
            raise LayoutError(f"{where}: release_counter must be a positive integer")
        if kind not in ("full", "delta"):
            raise LayoutError(f"{where}: kind must be 'full' or 'delta'")
        image = _image(info.get("image"), f"{where}: image")
        source = (
            _image(info["source"], f"{where}: source") if info.get("source") is not None else None
        )
        if (kind == "delta") != (source is not None):
            raise LayoutError(f"{where}: a delta needs a source, a full bundle has none")
        manifest_sha256, manifest_length = _manifest_ref(info.get("manifest"), where)
        return cls(hw, version, counter, kind, image, source, manifest_sha256, manifest_length)


def _manifest_ref(raw: Any, where: str) -> tuple[str | None, int | None]:
    if raw is None:
        return None, None
    sha, length = (raw.get("sha256"), raw.get("length")) if isinstance(raw, dict) else (None, None)
    if (
        not isinstance(sha, str)
        or not _HEX64.fullmatch(sha)
        or isinstance(length, bool)
        or not isinstance(length, int)
        or length < 1
    ):
        raise LayoutError(f"{where}: manifest must be {{sha256: 64 hex digits, length: bytes}}")
    return sha, length


@dataclass(frozen=True)
class Yank:
    """Why and when the release engineers withdrew a target (``overdrive release yank``).

    It sits in the target's ``custom`` beside the bundle description, not inside it: the bundle
    is unchanged (same bytes, same hashes), only its standing in the signed repository changed.
    """

    reason: str
    at: str  # ISO 8601, UTC: 2024-05-01T12:00:00Z

    def to_custom(self) -> dict[str, str]:
        return {"reason": self.reason, "at": self.at}

    @classmethod
    def from_custom(cls, custom: Any, where: str = "target") -> Yank | None:
        """The withdrawal recorded in a target's ``custom``; ``None`` if it is not withdrawn.

        Strict, because vehicles act on it: anything but ``{reason: one line, at: ISO-UTC}``
        is a :class:`LayoutError` (callers treat that as withdrawn too: fail closed).
        """
        if not isinstance(custom, dict) or YANKED_KEY not in custom:
            return None
        raw = custom[YANKED_KEY]
        reason = raw.get("reason") if isinstance(raw, dict) else None
        at = raw.get("at") if isinstance(raw, dict) else None
        if not isinstance(reason, str) or not isinstance(at, str):
            raise LayoutError(f"{where}: custom.{YANKED_KEY} must be {{reason: text, at: time}}")
        try:
            check_reason(reason)
        except LayoutError as e:
            raise LayoutError(f"{where}: custom.{YANKED_KEY}: {e}") from e
        if _utc(at) is None:
            raise LayoutError(f"{where}: custom.{YANKED_KEY}.at must be an ISO 8601 UTC time")
        return cls(reason, at)


def check_reason(reason: str) -> str:
    """``reason`` if it can explain a withdrawal: one non-blank line of printable text."""
    if not reason.strip():
        raise LayoutError("the reason must not be empty")
    if not reason.isprintable():
        raise LayoutError("the reason must be one line of printable text (no newlines)")
    if len(reason) > MAX_REASON_LENGTH:
        raise LayoutError(f"the reason must be at most {MAX_REASON_LENGTH} characters")
    return reason


def utc_stamp(moment: datetime) -> str:
    """``moment`` as the ISO 8601 UTC text a withdrawal records."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(text: str) -> datetime | None:
    """``text`` as an aware UTC time, or ``None`` if it is no ISO 8601 time with offset 0."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    offset = moment.utcoffset()
    return moment if offset is not None and not offset.total_seconds() else None

"""The bundle a secondary receives: streamed to a file through the verified length, hashed,
then described for the decoder (from the image repository's target, or — partial verification —
from its own header once its hash proved it is the one the director signed)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from overdrive.bundle import BundleError
from overdrive.bundle.format import read_header
from overdrive.client.errors import Refused
from overdrive.client.secondary.verify import VerifiedTarget
from overdrive.text import one_line
from overdrive.tuf_layout import BundleInfo, LayoutError

_CHUNK = 1 << 16

#: ``read(n)`` → at most ``n`` bytes of a bundle being staged (b"" at its end).
Reader = Callable[[int], bytes]


def receive(part: Path, read: Reader, length: int) -> str:
    """Exactly ``length`` bytes from ``read`` into ``part`` (fsynced); their sha256."""
    digest = hashlib.sha256()
    received = 0
    with part.open("wb") as f:
        while received < length:
            block = read(min(_CHUNK, length - received))
            if not block:
                raise Refused("truncated", f"the bundle ended after {received} of {length} bytes")
            block = block[: length - received]  # a reader that returns more is not believed
            f.write(block)
            digest.update(block)
            received += len(block)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest()


def file_sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def bundle_info(target: VerifiedTarget, staged: Path, hardware_id: str) -> BundleInfo:
    """What the bundle must be: the image repository's description (full), or — partial
    verification, once the bundle's sha256 matched the director's — its own header."""
    if target.custom is not None:
        try:
            info = BundleInfo.from_custom(target.custom, target.path)
        except LayoutError as e:
            raise Refused("not_a_bundle", str(e)) from e
        if info is None:
            raise Refused("not_a_bundle", f"target {target.path} is not an update bundle")
        return info
    try:
        with staged.open("rb") as f:
            header = read_header(f)
    except (OSError, BundleError) as e:
        raise Refused("bad_bundle", one_line(f"{type(e).__name__}: {e}")) from e
    m = header.manifest
    if m.hardware_id != hardware_id:
        raise Refused(
            "wrong_hardware",
            f"the bundle is for hardware id {m.hardware_id!r}, this ECU is {hardware_id!r}",
        )
    if m.image.version != target.version:
        raise Refused(
            "not_as_signed",
            f"the bundle holds version {m.image.version!r}, the director signed {target.version!r}",
        )
    return BundleInfo(
        m.hardware_id,
        m.image.version,
        target.release_counter,
        m.kind,
        m.image,
        m.source,
        header.manifest_sha256,
        header.manifest_length,
    )

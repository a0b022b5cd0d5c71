"""Install a downloaded bundle into the inactive slot: stream, verify, then make it bootable once.

The decoder (:func:`overdrive.bundle.apply_bundle`) streams chunk by chunk from the active slot
(for a delta) into the inactive slot, verifies every chunk and the whole image, and records its
progress so an interrupted install resumes after the last verified chunk. Only a fully verified
image is ever offered to the bootloader.
"""

from __future__ import annotations

from pathlib import Path

from client.errors import Refused
from overdrive.bundle import BundleError, SourceMismatch, apply_bundle
from overdrive.tuf_layout import BundleInfo

PROGRESS_FILE = "install-progress.json"


def install_bundle(
    bundle: Path,
    info: BundleInfo,
    *,
    target_slot: Path,
    active_slot: Path,
    state_dir: Path,
) -> None:
    """Write ``bundle`` into ``target_slot``; raise :class:`Refused` if the bundle is bad."""
    progress = state_dir / PROGRESS_FILE
    try:
        manifest = apply_bundle(
            bundle,
            target_slot,
            source=active_slot if info.kind == "delta" else None,
            progress_file=progress,
        )
    except SourceMismatch as e:
        raise Refused("source_mismatch", str(e)) from e
    except BundleError as e:
        raise Refused("bad_bundle", f"{type(e).__name__}: {e}") from e
    if manifest.image.sha256 != info.image.sha256 or manifest.image.length != info.image.length:
        raise Refused("bad_bundle", "bundle's image differs from what the signed target says")
    if manifest.hardware_id != info.hardware_id:
        raise Refused("wrong_hardware", f"bundle is for {manifest.hardware_id!r}")
    progress.unlink(missing_ok=True)


def clear_progress(state_dir: Path) -> None:
    (state_dir / PROGRESS_FILE).unlink(missing_ok=True)

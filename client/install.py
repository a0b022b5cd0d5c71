"""Install a downloaded bundle into the inactive slot: stream, verify, then make it bootable once.

The decoder (:func:`overdrive.bundle.apply_bundle`) streams chunk by chunk from the active slot
(for a delta) into the inactive slot, verifies every chunk and the whole image, and records its
progress so an interrupted install resumes after the last verified chunk. Before it writes a
byte it checks the bundle's header against what the signed target says (manifest hash and
length, hardware id, image and source identity, and that a block-device slot can hold the
image), so a bundle that is not what was signed costs no write at all. Only a fully verified
image is ever offered to the bootloader.
"""

from __future__ import annotations

from pathlib import Path

from overdrive.bundle import BundleError, NotAsSigned, SourceMismatch, apply_bundle
from overdrive.client.errors import Refused
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
        apply_bundle(
            bundle,
            target_slot,
            source=active_slot if info.kind == "delta" else None,
            progress_file=progress,
            expected=info.expected(),
        )
    except SourceMismatch as e:
        raise Refused("source_mismatch", str(e)) from e
    except NotAsSigned as e:
        raise Refused("not_as_signed", str(e)) from e
    except BundleError as e:
        raise Refused("bad_bundle", f"{type(e).__name__}: {e}") from e
    progress.unlink(missing_ok=True)


def clear_progress(state_dir: Path) -> None:
    (state_dir / PROGRESS_FILE).unlink(missing_ok=True)

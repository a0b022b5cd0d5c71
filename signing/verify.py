"""Verify a published repository exactly as a vehicle would.

python-tuf's ngclient, starting from a trusted root the caller supplies, refreshes against the
storage's public URLs (``file://`` for a local directory) and downloads every target, checking its
length and hash; each bundle's own manifest must then agree with what its TUF ``custom`` field says.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater

from overdrive.bundle import BundleError
from overdrive.bundle.format import read_header
from overdrive.fetcher import LocalOrHttpFetcher
from overdrive.signing.errors import SigningError
from overdrive.storage import Storage
from overdrive.tuf_layout import BundleInfo, LayoutError


class VerificationFailed(SigningError):
    """The repository does not verify; the message says where."""


@dataclass
class VerifyReport:
    versions: dict[str, int] = field(default_factory=dict)
    targets: list[tuple[str, int]] = field(default_factory=list)


def base_url(storage: Storage, prefix: str) -> str:
    """Public URL of a storage "directory" such as ``metadata/`` (with a trailing slash)."""
    return storage.public_url(f"{prefix}x")[: -len("x")]


def verify_repository(
    storage: Storage,
    trusted_root: bytes,
    *,
    on_target: Callable[[str, int], None] | None = None,
) -> VerifyReport:
    """Run the TUF client workflow and fetch every target; raise :class:`VerificationFailed`."""
    report = VerifyReport()
    with tempfile.TemporaryDirectory(prefix="overdrive-verify-") as tmp:
        meta_dir, target_dir = Path(tmp, "metadata"), Path(tmp, "targets")
        meta_dir.mkdir()
        target_dir.mkdir()
        try:
            updater = Updater(
                str(meta_dir),
                base_url(storage, "metadata/"),
                str(target_dir),
                base_url(storage, "targets/"),
                fetcher=LocalOrHttpFetcher(),
                bootstrap=trusted_root,
            )
            updater.refresh()
        except (RepositoryError, DownloadError, ValueError) as e:
            raise VerificationFailed(f"metadata: {type(e).__name__}: {e}") from e
        for role in ("root", "timestamp", "snapshot", "targets"):
            md = Metadata.from_file(str(meta_dir / f"{role}.json"))
            report.versions[role] = md.signed.version
        targets: Metadata[Targets] = Metadata.from_file(str(meta_dir / "targets.json"))
        for path in sorted(targets.signed.targets):
            info = updater.get_targetinfo(path)
            if info is None:
                raise VerificationFailed(f"target {path}: not found through TUF")
            local = target_dir / "current"
            try:
                updater.download_target(info, str(local))
            except (RepositoryError, DownloadError) as e:
                raise VerificationFailed(f"target {path}: {type(e).__name__}: {e}") from e
            check_bundle(path, info.custom, local)
            local.unlink()
            report.targets.append((path, info.length))
            if on_target:
                on_target(path, info.length)
    return report


def check_bundle(path: str, custom: object, local: Path) -> None:
    """A bundle target's manifest must say what its signed ``custom`` field says."""
    try:
        info = BundleInfo.from_custom(custom, path)
    except LayoutError as e:
        raise VerificationFailed(str(e)) from e
    if info is None:
        return
    try:
        with local.open("rb") as f:
            read_header(f, info.expected())  # the same check a vehicle makes before writing
    except OSError as e:
        raise VerificationFailed(f"target {path}: cannot read {local}: {e.strerror or e}") from e
    except BundleError as e:
        raise VerificationFailed(f"target {path}: {e}") from e

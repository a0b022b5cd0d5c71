"""Read the image repository through python-tuf's ngclient, straight from a :class:`Storage`.

The rollout server uses this to learn which bundles exist: it trusts only what verifies from its
trusted root, exactly as a vehicle would, but reads the files through the storage backend (no
public URL needed, works for S3 and local directories alike).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tuf.api.exceptions import DownloadError, DownloadHTTPError, RepositoryError
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import FetcherInterface, Updater

from overdrive.errors import OverdriveError
from overdrive.storage import NotFound, Storage, StorageError

_SCHEME = "storage:///"


class RepositoryUnverified(OverdriveError):
    """The published repository did not verify from the trusted root."""


class RepositoryUnreachable(RepositoryUnverified):
    """The repository's metadata could not be read (storage down, a file missing): nothing was
    verified, but nothing failed verification either, so pinned trust state is not to blame."""


class StorageFetcher(FetcherInterface):
    """Serves ``storage:///KEY`` URLs from a storage backend (a missing key is a 404)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def _fetch(self, url: str) -> Iterator[bytes]:
        if not url.startswith(_SCHEME):
            raise DownloadError(f"unexpected URL {url}")
        key = url[len(_SCHEME) :]
        try:
            return self.storage.open_range(key)
        except NotFound as e:
            raise DownloadHTTPError(f"{key} not found", 404) from e


def verified_targets(
    storage: Storage, trusted_root: bytes | None, metadata_dir: Path
) -> tuple[dict[str, TargetFile], dict[str, int]]:
    """Refresh top-level metadata from ``storage``; return its targets and the role versions.

    ``metadata_dir`` keeps the trusted state between calls (so rollback of metadata versions is
    detected across restarts, as on a vehicle); ``trusted_root`` bootstraps it when it holds no
    ``root.json`` yet (None: it must hold one). Raises :class:`RepositoryUnverified` when the
    metadata does not verify from that state (re-signed by other keys, rolled back, expired) and
    :class:`RepositoryUnreachable` when it cannot be read.
    """
    metadata_dir.mkdir(parents=True, exist_ok=True)
    pinned = (metadata_dir / "root.json").exists()
    if not pinned and trusted_root is None:
        raise RepositoryUnverified(f"no trusted root: {metadata_dir} holds no root.json")
    try:
        updater = Updater(
            str(metadata_dir),
            f"{_SCHEME}metadata/",
            target_base_url=f"{_SCHEME}targets/",
            fetcher=StorageFetcher(storage),
            bootstrap=None if pinned else trusted_root,
        )
        updater.refresh()
    except RepositoryError as e:
        raise RepositoryUnverified(
            f"image repository does not verify: {type(e).__name__}: {e}"
        ) from e
    except (DownloadError, StorageError, OSError) as e:
        raise RepositoryUnreachable(
            f"image repository cannot be read: {type(e).__name__}: {e}"
        ) from e
    versions = {}
    for role in ("root", "timestamp", "snapshot", "targets"):
        versions[role] = Metadata.from_file(str(metadata_dir / f"{role}.json")).signed.version
    targets: Metadata = Metadata.from_file(str(metadata_dir / "targets.json"))  # type: ignore[type-arg]
    return dict(targets.signed.targets), versions

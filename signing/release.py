"""A build becomes a release: bundles (full, plus deltas from earlier versions) as TUF targets.

The bundle codec (:mod:`overdrive.bundle`) does the encoding; this module decides what to build,
finds the earlier images the deltas need (read back from the repository's own full bundles, kept in
a local cache), assigns the release counter, and hands everything to
:meth:`~overdrive.signing.repository.ImageRepository.propose`, which publishes it or, when the targets
signatures at hand are short of the threshold, stages it for the other signers.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tuf.api.metadata import Metadata, TargetFile, Targets

from overdrive.bundle import apply_bundle, encode_bundle, image_sha256
from overdrive.bundle.format import read_header
from overdrive.signing.errors import ReleaseError
from overdrive.signing.repository import ImageRepository, Shortfall
from overdrive.tuf_layout import (
    BundleInfo,
    ImageRef,
    bundle_target_path,
    check_segment,
    target_storage_key,
)


def default_cache_dir() -> Path:
    base = os.environ.get("OVERDRIVE_CACHE_DIR") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "overdrive" if base else Path.home() / ".cache" / "overdrive"


@dataclass
class BuildOptions:
    """How bundles are encoded (see ``overdrive bundle create``)."""

    chunk_size: int = 4 * 1024 * 1024
    level: int = 19
    jobs: int | None = None
    progress: bool = False


@dataclass
class ReleaseResult:
    hardware_id: str
    version: str
    release_counter: int
    bundles: list[tuple[str, BundleInfo, int]] = field(default_factory=list)  # path, info, size
    staged: bool = False
    already: bool = False  # this exact image was already published as this version
    #: When staged: the thresholds still to be met (empty if staged with --stage-only alone).
    waiting: list[Shortfall] = field(default_factory=list)


def releases(targets: Targets) -> dict[str, dict[str, BundleInfo]]:
    """Hardware id → version → the full bundle's info, for every release in ``targets``."""
    found: dict[str, dict[str, BundleInfo]] = {}
    for path, target in targets.targets.items():
        info = BundleInfo.from_custom(target.custom, path)
        if info is not None and info.kind == "full":
            found.setdefault(info.hardware_id, {})[info.version] = info
    return found


def full_bundle(targets: Targets, hardware_id: str, version: str) -> TargetFile:
    target = targets.targets.get(bundle_target_path(hardware_id, version))
    if target is None:
        raise ReleaseError(f"no release {version} of hardware id {hardware_id} in the repository")
    return target


def recent_versions(targets: Targets, hardware_id: str, count: int) -> list[str]:
    """The ``count`` most recent versions (by release counter) of ``hardware_id``."""
    known = releases(targets).get(hardware_id, {})
    ordered = sorted(known.values(), key=lambda info: info.release_counter, reverse=True)
    return [info.version for info in ordered[:count]]


class ImageCache:
    """Earlier images, rebuilt from their full bundles in the repository and kept by hash."""

    def __init__(self, repo: ImageRepository, directory: Path) -> None:
        self.repo = repo
        self.directory = directory

    def image(self, hardware_id: str, version: str, workdir: Path) -> tuple[Path, ImageRef]:
        target = full_bundle(self.repo.targets.signed, hardware_id, version)
        info = BundleInfo.from_custom(target.custom, target.path)
        assert info is not None
        cached = self.directory / "images" / info.image.sha256
        if cached.is_file() and cached.stat().st_size == info.image.length:
            return cached, info.image
        bundle = workdir / f"source-{version}.bundle"
        key = target_storage_key(target.path, target.hashes["sha256"])
        with bundle.open("wb") as f:
            for block in self.repo.storage.open_range(key):
                f.write(block)
        with bundle.open("rb") as f:
            try:
                target.verify_length_and_hashes(f)
            except Exception as e:
                raise ReleaseError(
                    f"stored bundle {target.path} does not match its TUF target"
                ) from e
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        apply_bundle(bundle, partial)
        os.replace(partial, cached)
        bundle.unlink()
        return cached, info.image


def add_release(
    repo: ImageRepository,
    image: Path,
    *,
    hardware_id: str,
    version: str,
    delta_from: list[str],
    delta_from_recent: int = 0,
    stage_only: bool = False,
    options: BuildOptions | None = None,
    cache_dir: Path | None = None,
) -> ReleaseResult:
    """Build, sign and publish (or stage) release ``version`` of ``hardware_id`` from ``image``."""
    options = options or BuildOptions()
    try:
        check_segment("hardware id", hardware_id)
        check_segment("version", version)
    except Exception as e:
        raise ReleaseError(str(e)) from e
    if not image.exists():
        raise ReleaseError(f"image {image} does not exist")
    if image.is_dir():
        raise ReleaseError(f"image {image} is a directory, not an image file")
    if repo.load_staged():
        raise ReleaseError(
            "staged changes are waiting for signatures: 'overdrive repo publish' or "
            "'overdrive repo discard' them first"
        )
    targets = repo.targets.signed
    known = releases(targets).get(hardware_id, {})
    if version in known:
        existing = known[version]
        if (existing.image.length, existing.image.sha256) == (
            image.stat().st_size,
            image_sha256(image),
        ):
            # A re-run after a publish whose last answer was lost: it is already there.
            return ReleaseResult(hardware_id, version, existing.release_counter, already=True)
        raise ReleaseError(
            f"version {version} of hardware id {hardware_id} already exists (with another image)"
        )
    sources = list(
        dict.fromkeys(delta_from + recent_versions(targets, hardware_id, delta_from_recent))
    )
    for source in sources:
        if source not in known:
            raise ReleaseError(f"--delta-from {source}: no such release of {hardware_id}")
    repo.check_targets_change(stage_only=stage_only)  # fail before building anything, not after
    counter = max((info.release_counter for info in known.values()), default=0) + 1

    result = ReleaseResult(hardware_id, version, counter)
    new_targets: Metadata[Targets] = repo.bump(repo.targets, "targets")
    files: list[tuple[str, TargetFile, Path]] = []
    with tempfile.TemporaryDirectory(prefix="overdrive-release-") as tmp:
        work = Path(tmp)
        image_ref = ImageRef(version, image_sha256(image), image.stat().st_size)
        builds: list[tuple[Path | None, ImageRef | None]] = [(None, None)]
        cache = ImageCache(repo, cache_dir or default_cache_dir())
        for source in sources:
            builds.append(cache.image(hardware_id, source, work))
        for source_path, source_ref in builds:
            path = bundle_target_path(
                hardware_id, version, source_ref.version if source_ref else None
            )
            out = work / path.replace("/", "_")
            encode_bundle(
                image,
                out,
                hardware_id=hardware_id,
                version=version,
                source=source_path,
                source_version=source_ref.version if source_ref else None,
                chunk_size=options.chunk_size,
                level=options.level,
                jobs=options.jobs,
                progress=options.progress,
            )
            with out.open("rb") as f:
                header = read_header(f)
            info = BundleInfo(
                hardware_id,
                version,
                counter,
                "delta" if source_ref else "full",
                image_ref,
                source_ref,
                header.manifest_sha256,
                header.manifest_length,
            )
            target = TargetFile.from_file(path, str(out), ["sha256"])
            target.unrecognized_fields["custom"] = info.to_custom()
            new_targets.signed.targets[path] = target
            files.append((path, target, out))
            result.bundles.append((path, info, target.length))
        outcome = repo.propose(targets=new_targets, target_files=files, stage_only=stage_only)
    result.staged, result.waiting = outcome.staged, outcome.waiting
    return result

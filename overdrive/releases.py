"""An index of the releases in a verified TUF targets role, and the choice of bundle per vehicle.

The server offers only what this index holds (built from metadata it verified with python-tuf);
for each vehicle it picks the smallest bundle that applies to the image the vehicle runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tuf.api.metadata import TargetFile

from overdrive.tuf_layout import BundleInfo, LayoutError


@dataclass(frozen=True)
class BundleTarget:
    """One bundle target: where to fetch it, what it is."""

    path: str
    sha256: str
    length: int
    info: BundleInfo


@dataclass
class Release:
    """A version of one hardware id: its full bundle and deltas keyed by source image sha256."""

    full: BundleTarget
    deltas: dict[str, list[BundleTarget]] = field(default_factory=dict)

    def best_for(self, installed_sha256: str | None) -> BundleTarget:
        """The smallest bundle whose source is ``installed_sha256``; the full bundle otherwise."""
        candidates = [self.full, *self.deltas.get(installed_sha256 or "", [])]
        return min(candidates, key=lambda b: b.length)


class ReleaseIndex:
    """Hardware id → version → :class:`Release`, from the targets of a verified repository."""

    def __init__(self, targets: Mapping[str, TargetFile]) -> None:
        fulls: dict[tuple[str, str], BundleTarget] = {}
        deltas: list[BundleTarget] = []
        for path, target in targets.items():
            try:
                info = BundleInfo.from_custom(target.custom, path)
            except LayoutError:
                continue  # not ours to offer: a malformed entry is never assigned
            if info is None or "sha256" not in target.hashes:
                continue
            bundle = BundleTarget(path, target.hashes["sha256"], target.length, info)
            if info.kind == "full":
                fulls[(info.hardware_id, info.version)] = bundle
            else:
                deltas.append(bundle)
        self.releases: dict[str, dict[str, Release]] = {}
        for (hw, version), full in fulls.items():
            self.releases.setdefault(hw, {})[version] = Release(full)
        for delta in deltas:
            release = self.releases.get(delta.info.hardware_id, {}).get(delta.info.version)
            if release is not None and delta.info.source is not None:
                release.deltas.setdefault(delta.info.source.sha256, []).append(delta)

    def get(self, hardware_id: str, version: str) -> Release:
        release = self.releases.get(hardware_id, {}).get(version)
        if release is None:
            known = ", ".join(sorted(self.releases.get(hardware_id, {}))) or "none"
            raise LayoutError(
                f"release {version} of hardware id {hardware_id} is not in the signed "
                f"repository (known versions: {known})"
            )
        return release

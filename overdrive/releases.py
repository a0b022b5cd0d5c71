"""An index of the releases in a verified TUF targets role, and the choice of bundle per vehicle.

The server offers only what this index holds (built from metadata it verified with python-tuf);
for each vehicle it picks the smallest bundle that applies to the image the vehicle runs. A release
the release engineers withdrew (``overdrive release yank``) stays in the index, marked with its
reason, so that running campaigns can show and act on it; :meth:`ReleaseIndex.get` refuses it,
:meth:`ReleaseIndex.find` does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tuf.api.metadata import TargetFile

from overdrive.tuf_layout import BundleInfo, LayoutError, Yank


@dataclass(frozen=True)
class BundleTarget:
    """One bundle target: where to fetch it, what it is."""

    path: str
    sha256: str
    length: int
    info: BundleInfo
    #: Why the target was withdrawn (``None``: it was not).
    yanked: str | None = None


@dataclass
class Release:
    """A version of one hardware id: its full bundle and deltas keyed by source image sha256."""

    full: BundleTarget
    deltas: dict[str, list[BundleTarget]] = field(default_factory=dict)
    #: Why the release was withdrawn, if its full bundle or any delta to it was (else ``None``).
    yanked: str | None = None

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
            yanked = withdrawal_reason(target.custom, path)
            bundle = BundleTarget(path, target.hashes["sha256"], target.length, info, yanked)
            if info.kind == "full":
                fulls[(info.hardware_id, info.version)] = bundle
            else:
                deltas.append(bundle)
        self.releases: dict[str, dict[str, Release]] = {}
        for (hw, version), full in fulls.items():
            self.releases.setdefault(hw, {})[version] = Release(full, yanked=full.yanked)
        for delta in deltas:
            release = self.releases.get(delta.info.hardware_id, {}).get(delta.info.version)
            if release is not None and delta.info.source is not None:
                release.deltas.setdefault(delta.info.source.sha256, []).append(delta)
                release.yanked = release.yanked or delta.yanked

    def find(self, hardware_id: str, version: str) -> Release | None:
        """The release, withdrawn or not (``None`` if the signed repository does not hold it).

        For callers that must see withdrawn releases too: status pages, running campaigns.
        """
        return self.releases.get(hardware_id, {}).get(version)

    def get(self, hardware_id: str, version: str) -> Release:
        """The release to roll out: a :class:`LayoutError` if it is unknown or withdrawn."""
        release = self.find(hardware_id, version)
        if release is None:
            known = ", ".join(sorted(self.releases.get(hardware_id, {}))) or "none"
            raise LayoutError(
                f"release {version} of hardware id {hardware_id} is not in the signed "
                f"repository (known versions: {known})"
            )
        if release.yanked is not None:
            raise LayoutError(
                f"release {version} of hardware id {hardware_id} was withdrawn: {release.yanked}"
            )
        return release


def withdrawal_reason(custom: object, where: str) -> str | None:
    """Why a target was withdrawn, or ``None``. Never raises: a malformed withdrawal marker
    still withdraws the target (fail closed), with a reason that says it is malformed."""
    try:
        yank = Yank.from_custom(custom, where)
    except LayoutError as e:
        return f"malformed withdrawal marker ({e})"
    return yank.reason if yank is not None else None

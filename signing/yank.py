"""Withdraw a bad release: a signed targets change that marks its bundles as yanked.

``overdrive release yank HW VERSION --reason TEXT`` marks every target of the release — the full
bundle and every delta *to* that version — with ``custom["yanked"] = {"reason", "at"}``, re-signs
targets with the targets key(s) and publishes new snapshot and timestamp (or, when the targets
signatures at hand are short of the threshold or with ``--stage-only``, stages the change for the
other signers, like ``release add``). The bundle files stay where they are: vehicles
read the withdrawal from the metadata they verify, and refuse the release even when an old or
stale rollout server still assigns it; servers stop offering it. Deltas *from* the withdrawn
version stay valid: they are how the vehicles that installed it move on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from tuf.api.metadata import Metadata, TargetFile, Targets

from overdrive.signing.errors import ReleaseError
from overdrive.signing.repository import ImageRepository, Shortfall, now
from overdrive.tuf_layout import (
    YANKED_KEY,
    BundleInfo,
    LayoutError,
    Yank,
    check_reason,
    check_segment,
    utc_stamp,
)


@dataclass
class YankResult:
    """What a yank did: the targets it marked (all of the release's when ``already``)."""

    hardware_id: str
    version: str
    yank: Yank
    paths: list[str] = field(default_factory=list)
    staged: bool = False
    #: The release was already withdrawn: nothing was signed or written.
    already: bool = False
    #: When staged: the thresholds still to be met.
    waiting: list[Shortfall] = field(default_factory=list)


def release_targets(targets: Targets, hardware_id: str, version: str) -> dict[str, TargetFile]:
    """The bundle targets of release ``version`` of ``hardware_id``: its full bundle and the
    deltas to it (never the deltas *from* it, which belong to later releases)."""
    found = {}
    for path, target in targets.targets.items():
        try:
            info = BundleInfo.from_custom(target.custom, path)
        except LayoutError:
            continue  # not a bundle of ours: nothing a vehicle would install
        if info is not None and (info.hardware_id, info.version) == (hardware_id, version):
            found[path] = target
    return found


def check_yank_request(hardware_id: str, version: str, reason: str) -> str:
    """The reason to record (surrounding blanks trimmed), or a :class:`ReleaseError`."""
    try:
        check_segment("hardware id", hardware_id)
        check_segment("version", version)
    except LayoutError as e:
        raise ReleaseError(str(e)) from e
    try:
        return check_reason(reason.strip())
    except LayoutError as e:
        raise ReleaseError(f"--reason: {e}") from e


def known_versions(targets: Targets, hardware_id: str) -> str:
    """The versions of ``hardware_id`` in ``targets``, for an error message."""
    versions = set()
    for path, target in targets.targets.items():
        try:
            info = BundleInfo.from_custom(target.custom, path)
        except LayoutError:
            continue
        if info is not None and info.hardware_id == hardware_id:
            versions.add(info.version)
    return ", ".join(sorted(versions)) or "none"


def existing_yank(release: dict[str, TargetFile]) -> Yank | None:
    """The withdrawal already recorded on *every* target of the release, if it is one."""
    yanks = []
    for path, target in release.items():
        try:
            yank = Yank.from_custom(target.custom, path)
        except LayoutError:
            return None  # a malformed marker is repaired by yanking again
        if yank is None:
            return None
        yanks.append(yank)
    return yanks[0] if yanks else None


def check_nothing_staged(repo: ImageRepository, hardware_id: str, version: str) -> None:
    """Refuse while other metadata waits for signatures (it would be overtaken and go stale);
    say so plainly when what waits is this very withdrawal."""
    staged = repo.load_staged()
    if not staged:
        return
    if staged.targets is not None and existing_yank(
        release_targets(staged.targets.signed, hardware_id, version)
    ):
        raise ReleaseError(
            f"the withdrawal of {hardware_id} {version} is already staged: collect signatures "
            "with `overdrive repo sign --role targets --keys DIR`, then `overdrive repo publish`"
        )
    raise ReleaseError(
        "staged changes are waiting for signatures: 'overdrive repo publish' or "
        "'overdrive repo discard' them first"
    )


def yank_release(
    repo: ImageRepository,
    hardware_id: str,
    version: str,
    reason: str,
    *,
    stage_only: bool = False,
    at: datetime | None = None,
) -> YankResult:
    """Withdraw release ``version`` of ``hardware_id``: sign and publish (or stage) a targets
    version whose bundles of that release carry ``custom["yanked"]``. Idempotent: a release
    that is already withdrawn is left alone (``already``), whatever ``reason`` says now."""
    reason = check_yank_request(hardware_id, version, reason)
    release = release_targets(repo.targets.signed, hardware_id, version)
    if not release:
        raise ReleaseError(
            f"no release {version} of hardware id {hardware_id} in the repository "
            f"(known versions: {known_versions(repo.targets.signed, hardware_id)})"
        )
    previous = existing_yank(release)
    if previous is not None:
        return YankResult(hardware_id, version, previous, sorted(release), already=True)
    check_nothing_staged(repo, hardware_id, version)
    repo.check_targets_change(stage_only=stage_only)
    yank = Yank(reason, utc_stamp(at or now()))
    new_targets: Metadata[Targets] = repo.bump(repo.targets, "targets")
    for path in release:
        mark(new_targets.signed.targets[path], yank)
    outcome = repo.propose(targets=new_targets, stage_only=stage_only)
    return YankResult(
        hardware_id, version, yank, sorted(release), staged=outcome.staged, waiting=outcome.waiting
    )


def mark(target: TargetFile, yank: Yank) -> None:
    """Record ``yank`` in ``target``'s ``custom`` (the bundle description is left as it is)."""
    custom = target.unrecognized_fields.get("custom")
    custom = dict(custom) if isinstance(custom, dict) else {}
    custom[YANKED_KEY] = yank.to_custom()
    target.unrecognized_fields["custom"] = custom

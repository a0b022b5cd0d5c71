"""The TUF image repository as the release engineers see it: load, change, sign, stage, publish.

The published repository lives in storage (see :mod:`overdrive.tuf_layout`). Every change goes
through :meth:`ImageRepository.publish`, which uploads in the one safe order — target files, then
root, targets, snapshot, and ``timestamp.json`` last — so a vehicle polling at any moment sees the
old repository or the new one, never a mix: until the new timestamp lands, nothing refers to the new
files. Metadata that lacks signatures is *staged* under ``staging/`` (vehicles never read it) until
enough engineers have signed it.

Every change that may need several people goes through :meth:`ImageRepository.propose`: it signs
with the keys at hand and publishes when every threshold is met, or else stages the change and says
whose signatures are missing; each colleague then adds theirs with ``repo sign`` from their own key
directory, and ``repo publish`` publishes. A change of a role's keys or threshold (a new root)
must be signed by a threshold of the old root keys and of the new ones (as TUF clients require),
and new metadata of the role that changed must meet both its old and its new threshold: raising
the targets threshold takes the current targets holders' consent as well as the new ones'.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from securesystemslib.signer import Key
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
    VerificationResult,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from overdrive.durations import parse_duration
from overdrive.keys import KeyDirectory
from overdrive.root_chain import RootChainError, read_root_chain, root_versions
from overdrive.signing.errors import KeyError_, RepositoryError, ThresholdError
from overdrive.storage import CachePolicy, NotFound, Storage
from overdrive.tuf_layout import (
    EXPIRY_FIELD,
    METADATA_PREFIX,
    TOP_LEVEL_ROLES,
    metadata_key,
    staging_key,
    target_storage_key,
)

T = TypeVar("T", Root, Snapshot, Targets, Timestamp)

DEFAULT_EXPIRY: dict[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
_SERIALIZER = JSONSerializer(compact=False)


def parse_expiry(text: str | None) -> dict[str, timedelta]:
    """``root=365d,targets=90d`` → durations, defaulting the roles not named."""
    result = dict(DEFAULT_EXPIRY)
    for item in filter(None, (text or "").split(",")):
        role, sep, value = item.partition("=")
        if not sep or role.strip() not in TOP_LEVEL_ROLES:
            raise RepositoryError(
                f"invalid --expires item {item!r} (expected ROLE=DURATION, ROLE one of "
                f"{', '.join(TOP_LEVEL_ROLES)})"
            )
        result[role.strip()] = parse_duration(value)
    return result


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def to_bytes(md: Metadata[Any]) -> bytes:
    return md.to_bytes(_SERIALIZER)


def short(keyid: str) -> str:
    return keyid[:12]


@dataclass
class Staged:
    """Metadata waiting in ``staging/`` for more signatures."""

    root: Metadata[Root] | None
    targets: Metadata[Targets] | None

    def __bool__(self) -> bool:
        return self.root is not None or self.targets is not None

    def roles(self) -> list[str]:
        """The staged roles, root first."""
        return [r for r, md in (("root", self.root), ("targets", self.targets)) if md is not None]

    def get(self, role: str) -> Metadata[Any] | None:
        return self.root if role == "root" else self.targets


@dataclass(frozen=True)
class Shortfall:
    """A staged role that lacks signatures under one of the thresholds it must meet."""

    role: str  # what ``repo sign --role`` takes: root or targets
    label: str  # which threshold: "targets", "root (old keys)", "targets (new keys)"
    signed: int
    threshold: int
    message: str  # "targets: 1 of 2 signatures; 1 more needed from: bob (3f2a…)"


@dataclass
class Outcome:
    """What :meth:`ImageRepository.propose` did: published, or staged with what is missing."""

    staged: bool
    waiting: list[Shortfall] = field(default_factory=list)


class ImageRepository:
    """The published TUF repository in ``storage``, verified on load, and the keys at hand."""

    def __init__(
        self,
        storage: Storage,
        keys: KeyDirectory,
        root: Metadata[Root],
        targets: Metadata[Targets],
        snapshot: Metadata[Snapshot],
        timestamp: Metadata[Timestamp],
    ) -> None:
        self.storage = storage
        self.keys = keys
        self.root = root
        self.targets = targets
        self.snapshot = snapshot
        self.timestamp = timestamp

    # ----------------------------------------------------------------- loading

    @classmethod
    def is_initialised(cls, storage: Storage) -> bool:
        return bool(root_versions(storage)) or storage.exists(metadata_key("timestamp"))

    @classmethod
    def load(cls, storage: Storage, keys: KeyDirectory) -> ImageRepository:
        """Read and verify the published repository (signatures and the root chain, not expiry:
        an expired timestamp must still be refreshable)."""
        storage.check()
        try:
            chain = read_root_chain(storage)
        except RootChainError as e:
            raise RepositoryError(str(e)) from e
        if not chain:
            raise RepositoryError(
                f"no TUF repository at {storage.url} (create one with 'overdrive repo init')"
            )
        root = chain[-1][1]
        timestamp = cls._load_role(storage, root.signed, "timestamp", None, Timestamp)
        snapshot = cls._load_role(
            storage, root.signed, "snapshot", timestamp.signed.snapshot_meta.version, Snapshot
        )
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise RepositoryError("snapshot lists no targets.json")
        targets = cls._load_role(storage, root.signed, "targets", targets_meta.version, Targets)
        return cls(storage, keys, root, targets, snapshot, timestamp)

    @staticmethod
    def _load_role(
        storage: Storage, root: Root, role: str, version: int | None, kind: type[T]
    ) -> Metadata[T]:
        key = metadata_key(role, version)
        try:
            data = storage.get_bytes(key)
        except NotFound as e:
            raise RepositoryError(f"{key} is missing from {storage.url}") from e
        md = _parse(data, kind, key)
        if version is not None and md.signed.version != version:
            raise RepositoryError(f"{key} claims version {md.signed.version}")
        try:
            root.verify_delegate(role, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            raise RepositoryError(f"{key} fails verification: {e}") from e
        return md

    # ----------------------------------------------------------------- queries

    @property
    def expiry(self) -> dict[str, timedelta]:
        stored = self.root.signed.unrecognized_fields.get(EXPIRY_FIELD, {})
        result = dict(DEFAULT_EXPIRY)
        if isinstance(stored, dict):
            for role, seconds in stored.items():
                if role in result and isinstance(seconds, int) and seconds > 0:
                    result[role] = timedelta(seconds=seconds)
        return result

    def bundle_targets(self) -> dict[str, TargetFile]:
        return dict(self.targets.signed.targets)

    def load_staged(self) -> Staged:
        staged: dict[str, Any] = {}
        for role, kind in (("root", Root), ("targets", Targets)):
            key = staging_key(role)
            try:
                staged[role] = _parse(self.storage.get_bytes(key), kind, key)
            except NotFound:
                staged[role] = None
        return Staged(staged["root"], staged["targets"])

    def key_label(self, keyid: str) -> str:
        name = self.keys.name_of(keyid) if self.keys.path.is_dir() else None
        return f"{name} ({short(keyid)})" if name else short(keyid)

    # ----------------------------------------------------------------- signing

    def held_signers(self, role: str, root: Root | None = None) -> list[str]:
        """Key ids of ``role`` (under ``root``) that this engineer can sign with."""
        root = root or self.root.signed
        held = []
        for keyid in root.roles[role].keyids:
            if self.keys.signer(root.get_key(keyid)) is not None:
                held.append(keyid)
        return held

    def require_signers(self, role: str, root: Root | None = None) -> None:
        """Fail early, before any upload, if the keys at hand cannot meet ``role``'s threshold."""
        root = root or self.root.signed
        held = self.held_signers(role, root)
        threshold = root.roles[role].threshold
        if len(held) < threshold:
            raise ThresholdError(self.holding_message(role, root, len(held)))

    def holding_message(self, role: str, root: Root, held: int) -> str:
        """``targets needs 2 signature(s) but DIR holds 1 of its keys (alice (…), bob (…))``."""
        wanted = ", ".join(self.key_label(k) for k in root.roles[role].keyids)
        return (
            f"{role} needs {root.roles[role].threshold} signature(s) but {self.keys.path} holds "
            f"{held} of its keys ({wanted})"
        )

    def thresholds(self, role: str, new_root: Root) -> list[tuple[str, Root]]:
        """The roots whose ``role`` new metadata must satisfy, with a label for each: the
        current root, and ``new_root`` too when it changes the role's keys or threshold."""
        old = self.root.signed
        if new_root is old or old.roles[role] == new_root.roles[role]:
            return [(role, new_root)]
        return [(f"{role} (old keys)", old), (f"{role} (new keys)", new_root)]

    def sign(self, md: Metadata[Any], role: str, root: Root) -> int:
        """Add this engineer's signatures for ``role``; return how many keys signed."""
        return len(self._sign_keys(md, role, root, skip=set()))

    def sign_role(self, md: Metadata[Any], role: str, new_root: Root) -> int:
        """Sign ``md`` with every held key it needs: ``role``'s keys under the current root and
        under ``new_root`` (for root itself: the old and the new root keys, as TUF requires).
        Returns how many distinct keys signed."""
        if role == "root":
            roots = [self.root.signed, new_root]
        else:
            roots = [r for _label, r in self.thresholds(role, new_root)]
        done: set[str] = set()
        for root in roots:
            done |= self._sign_keys(md, role, root, skip=done)
        return len(done)

    def _sign_keys(self, md: Metadata[Any], role: str, root: Root, skip: set[str]) -> set[str]:
        """Sign ``md`` with each held key of ``role`` under ``root`` not in ``skip``."""
        signed = set()
        for keyid in root.roles[role].keyids:
            if keyid in skip:
                continue
            signer = self.keys.signer(root.get_key(keyid))
            if signer is None:
                continue
            try:
                md.sign(signer, append=True)
            except Exception as e:
                raise KeyError_(f"signing {role} with {self.key_label(keyid)} failed: {e}") from e
            signed.add(keyid)
        return signed

    def verification(self, md: Metadata[Any], role: str, root: Root) -> VerificationResult:
        return root.get_verification_result(role, md.signed_bytes, md.signatures)

    def missing_message(self, role: str, result: VerificationResult) -> str:
        who = ", ".join(self.key_label(k) for k in result.unsigned) or "none"
        return (
            f"{role}: {len(result.signed)} of {result.threshold} signatures; "
            f"{result.missing} more needed from: {who}"
        )

    def shortfalls(
        self, root: Metadata[Root] | None, targets: Metadata[Targets] | None
    ) -> list[Shortfall]:
        """Every threshold that staged ``root``/``targets`` do not meet yet."""
        found: list[Shortfall] = []
        if root is not None:
            result = root.signed.get_root_verification_result(
                self.root.signed, root.signed_bytes, root.signatures
            )
            for label, part in (
                ("root (old keys)", result.first),
                ("root (new keys)", result.second),
            ):
                if not part.verified:
                    found.append(self._shortfall("root", label, part))
        if targets is not None:
            new_root = root.signed if root is not None else self.root.signed
            for label, r in self.thresholds("targets", new_root):
                part = self.verification(targets, "targets", r)
                if not part.verified:
                    found.append(self._shortfall("targets", label, part))
        return found

    def _shortfall(self, role: str, label: str, result: VerificationResult) -> Shortfall:
        return Shortfall(
            role, label, len(result.signed), result.threshold, self.missing_message(label, result)
        )

    def check_targets_change(self, *, stage_only: bool) -> bool:
        """Before building a targets change (release add, yank): will it publish
        at once (the targets keys at hand meet the threshold; then the online snapshot and
        timestamp keys must be at hand too), or be staged for others to sign? Holding none of
        the targets keys is refused unless ``stage_only``: it is more likely the wrong ``--keys``
        than a change meant to wait for everybody else."""
        threshold = self.root.signed.roles["targets"].threshold
        held = len(self.held_signers("targets"))
        if stage_only:
            return False
        if held == 0:
            raise ThresholdError(
                f"{self.holding_message('targets', self.root.signed, held)}; use --stage-only "
                "to stage the change for its holders to sign"
            )
        if held < threshold:
            return False
        self.require_online(self.root.signed)
        return True

    def require_online(self, new_root: Root, *, snapshot: bool = True) -> None:
        """The online keys a publish signs with must be at hand: snapshot (unless only the
        timestamp is re-signed) and timestamp, under the current root and ``new_root``."""
        for role in ("snapshot", "timestamp") if snapshot else ("timestamp",):
            for _label, root in self.thresholds(role, new_root):
                self.require_signers(role, root)

    def propose(
        self,
        *,
        root: Metadata[Root] | None = None,
        targets: Metadata[Targets] | None = None,
        target_files: Iterable[tuple[str, TargetFile, Path]] = (),
        stage_only: bool = False,
    ) -> Outcome:
        """Sign a change with the keys at hand, then publish it if every threshold is met, or
        else stage it (target files uploaded, metadata under ``staging/``) for others to sign.
        Nothing is written when the change can neither be published nor usefully staged."""
        new_root = root.signed if root is not None else self.root.signed
        signed = self.sign_role(root, "root", new_root) if root is not None else 0
        if targets is not None:
            signed += self.sign_role(targets, "targets", new_root)
        waiting = self.shortfalls(root, targets)
        if not waiting and not stage_only:
            try:
                self.require_online(new_root)
            except ThresholdError as e:
                raise ThresholdError(
                    f"{e}; use --stage-only to stage the change for whoever holds it"
                ) from e
            self.publish(root=root, targets=targets, target_files=target_files)
            return Outcome(staged=False)
        if signed == 0 and not stage_only:
            roles = " and ".join(dict.fromkeys(s.role for s in waiting))
            raise ThresholdError(
                f"none of the keys in {self.keys.path} can sign the new {roles}; use "
                "--stage-only to stage the change for its holders to sign"
            )
        self.upload_targets(target_files)
        if root is not None:
            self.stage(root, "root")
        if targets is not None:
            self.stage(targets, "targets")
        return Outcome(staged=True, waiting=waiting)

    def check_fresh(self, staged: Staged) -> None:
        """Staged metadata that a newer publish overtook can never be published: say so."""
        for role, current in (("root", self.root), ("targets", self.targets)):
            md = staged.get(role)
            if md is not None and md.signed.version != current.signed.version + 1:
                raise RepositoryError(
                    f"staged {role} v{md.signed.version} is stale: {role} is now "
                    f"v{current.signed.version}; discard it ('overdrive repo discard') and redo it"
                )

    def describe_staged(self, staged: Staged) -> list[str]:
        """One line per staged role saying what it changes, so a colleague knows what they
        sign: keys and thresholds for root, added, removed and changed targets for targets."""
        lines = []
        if staged.root is not None:
            lines.append(f"root v{staged.root.signed.version}: {self._root_changes(staged.root)}")
        if staged.targets is not None:
            lines.append(
                f"targets v{staged.targets.signed.version}: {self._targets_changes(staged.targets)}"
            )
        return lines

    def _root_changes(self, new: Metadata[Root]) -> str:
        old, changes = self.root.signed, []
        for role in TOP_LEVEL_ROLES:
            before, after = old.roles[role], new.signed.roles[role]
            added = [k for k in after.keyids if k not in before.keyids]
            removed = [k for k in before.keyids if k not in after.keyids]
            label = self.key_label
            changes += [f"{role} key +{label(k)}" for k in added]
            changes += [f"{role} key -{label(k)}" for k in removed]
            if before.threshold != after.threshold:
                changes.append(f"{role} threshold {before.threshold} -> {after.threshold}")
        return ", ".join(changes) or "no key or threshold change"

    def _targets_changes(self, new: Metadata[Targets]) -> str:
        old, now_ = self.targets.signed.targets, new.signed.targets
        changes = [f"+{p}" for p in sorted(now_) if p not in old]
        changes += [f"-{p}" for p in sorted(old) if p not in now_]
        for path in sorted(set(old) & set(now_)):
            if old[path] != now_[path]:
                custom = now_[path].custom
                yanked = isinstance(custom, dict) and "yanked" in custom
                changes.append(f"{'withdraws' if yanked else 'changes'} {path}")
        if len(changes) > 6:
            changes = [*changes[:6], f"and {len(changes) - 6} more"]
        return ", ".join(changes) or "re-signed, no target changed"

    # -------------------------------------------------------------- new versions

    def bump(self, md: Metadata[T], role: str) -> Metadata[T]:
        """A copy of ``md`` with the next version, fresh expiry and no signatures."""
        new = copy.deepcopy(md)
        new.signed.version += 1
        new.signed.expires = now() + self.expiry[role]
        new.signatures.clear()
        return new

    def stage(self, md: Metadata[Any], role: str) -> None:
        self.storage.put_bytes(staging_key(role), to_bytes(md), cache=CachePolicy.PRIVATE)

    def upload_targets(self, target_files: Iterable[tuple[str, TargetFile, Path]]) -> None:
        """Upload target files under their hash-prefixed keys (invisible until referenced)."""
        for _path, info, local in target_files:
            key = target_storage_key(info.path, info.hashes["sha256"])
            if not self.storage.exists(key):
                with local.open("rb") as f:
                    self.storage.put_stream(key, f, cache=CachePolicy.IMMUTABLE)

    def clear_staging(self) -> None:
        for role in ("root", "targets"):
            self.storage.delete(staging_key(role))

    def publish(
        self,
        *,
        root: Metadata[Root] | None = None,
        targets: Metadata[Targets] | None = None,
        target_files: Iterable[tuple[str, TargetFile, Path]] = (),
        resign_snapshot: bool = True,
    ) -> None:
        """Publish fully signed ``root``/``targets`` (either may be None) and any new target
        files, signing fresh snapshot and timestamp with the online keys at hand.

        Order is what makes this safe: content-addressed target files first, then root, targets
        and snapshot under new versioned names (invisible until referenced), ``timestamp.json``
        last. A failure at any step leaves the published repository as it was.
        """
        new_root = root.signed if root is not None else self.root.signed
        if (
            targets is None
            and root is not None
            and not self.verification(self.targets, "targets", new_root).verified
        ):
            # The targets keys changed: the current targets must be re-signed by the new keys.
            targets = self.bump(self.targets, "targets")
            self.sign_role(targets, "targets", new_root)
        waiting = self.shortfalls(root, targets)
        if waiting:
            raise ThresholdError("; ".join(s.message for s in waiting))
        resign_snapshot = resign_snapshot or targets is not None or root is not None
        self.require_online(new_root, snapshot=resign_snapshot)

        targets_md = targets or self.targets
        targets_bytes = to_bytes(targets_md) if targets is not None else None
        snapshot_bytes: bytes | None = None
        snapshot = self.snapshot
        if resign_snapshot:
            snapshot = self.bump(self.snapshot, "snapshot")
            if targets_bytes is not None:
                snapshot.signed.meta["targets.json"] = MetaFile.from_data(
                    targets_md.signed.version, targets_bytes, ["sha256"]
                )
            self.sign_role(snapshot, "snapshot", new_root)
            snapshot_bytes = to_bytes(snapshot)
        timestamp = self.bump(self.timestamp, "timestamp")
        if snapshot_bytes is not None:
            timestamp.signed.snapshot_meta = MetaFile.from_data(
                snapshot.signed.version, snapshot_bytes, ["sha256"]
            )
        self.sign_role(timestamp, "timestamp", new_root)

        put = self.storage.put_bytes
        self.upload_targets(target_files)
        if root is not None:
            put(metadata_key("root", root.signed.version), to_bytes(root))
        if targets is not None and targets_bytes is not None:
            put(metadata_key("targets", targets.signed.version), targets_bytes)
        if snapshot_bytes is not None:
            put(metadata_key("snapshot", snapshot.signed.version), snapshot_bytes)
        put(metadata_key("timestamp"), to_bytes(timestamp))
        if root is not None:
            put(metadata_key("root"), to_bytes(root))  # convenience copy, not used by clients
            self.root = root
        self.targets, self.snapshot, self.timestamp = targets_md, snapshot, timestamp

    def refresh(self, within: timedelta | None = None) -> list[str]:
        """Re-sign what expires within ``within`` (``None``: the timestamp, always); the snapshot
        too when it would expire before the new timestamp. Returns the roles re-signed."""
        stamp = now()
        horizon = within if within is not None else timedelta(0)
        snapshot_due = self.snapshot.signed.expires - stamp <= max(
            horizon, self.expiry["timestamp"]
        )
        timestamp_due = within is None or self.timestamp.signed.expires - stamp <= within
        if snapshot_due:
            self.publish()
            return ["snapshot", "timestamp"]
        if timestamp_due:
            self.publish(resign_snapshot=False)
            return ["timestamp"]
        return []

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls,
        storage: Storage,
        keys: KeyDirectory,
        role_keys: Mapping[str, Sequence[Key]],
        thresholds: Mapping[str, int],
        expiry: Mapping[str, timedelta],
    ) -> ImageRepository:
        """Create version 1 of every role and publish it (the caller checked ``--force``)."""
        stamp = now()
        root = Root(expires=stamp + expiry["root"], consistent_snapshot=True)
        root.unrecognized_fields[EXPIRY_FIELD] = {
            role: int(expiry[role].total_seconds()) for role in TOP_LEVEL_ROLES
        }
        for role in TOP_LEVEL_ROLES:
            role_key_list = role_keys[role]
            if not role_key_list:
                raise RepositoryError(f"role {role} has no keys")
            for key in role_key_list:
                root.add_key(key, role)
            threshold = thresholds.get(role, 1)
            if not 1 <= threshold <= len(root.roles[role].keyids):
                raise RepositoryError(
                    f"{role} threshold {threshold} is impossible with "
                    f"{len(root.roles[role].keyids)} distinct key(s)"
                )
            root.roles[role].threshold = threshold
        root_md: Metadata[Root] = Metadata(root)
        targets_md: Metadata[Targets] = Metadata(Targets(expires=stamp + expiry["targets"]))
        snapshot_md: Metadata[Snapshot] = Metadata(Snapshot(expires=stamp + expiry["snapshot"]))
        timestamp_md: Metadata[Timestamp] = Metadata(Timestamp(expires=stamp + expiry["timestamp"]))
        repo = cls(storage, keys, root_md, targets_md, snapshot_md, timestamp_md)
        for role in TOP_LEVEL_ROLES:
            repo.require_signers(role, root)
        repo.sign(root_md, "root", root)
        repo.sign(targets_md, "targets", root)
        targets_bytes = to_bytes(targets_md)
        snapshot_md.signed.meta["targets.json"] = MetaFile.from_data(1, targets_bytes, ["sha256"])
        repo.sign(snapshot_md, "snapshot", root)
        snapshot_bytes = to_bytes(snapshot_md)
        timestamp_md.signed.snapshot_meta = MetaFile.from_data(1, snapshot_bytes, ["sha256"])
        repo.sign(timestamp_md, "timestamp", root)
        # Order: a half-finished init leaves no timestamp.json, so nothing looks published.
        storage.put_bytes(metadata_key("root", 1), to_bytes(root_md))
        storage.put_bytes(metadata_key("targets", 1), targets_bytes)
        storage.put_bytes(metadata_key("snapshot", 1), snapshot_bytes)
        storage.put_bytes(metadata_key("timestamp"), to_bytes(timestamp_md))
        storage.put_bytes(metadata_key("root"), to_bytes(root_md))
        return repo


def wipe(storage: Storage) -> None:
    """Remove a repository's metadata and staging area (``repo init --force``); targets stay."""
    for key in storage.list(METADATA_PREFIX) + storage.list("staging/"):
        storage.delete(key)


def _parse(data: bytes, kind: type[T], key: str) -> Metadata[T]:
    try:
        md: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError as e:
        raise RepositoryError(f"{key} is corrupted: {e}") from e
    if not isinstance(md.signed, kind):
        raise RepositoryError(f"{key} is corrupted: it holds {md.signed.type} metadata")
    return md

"""The TUF image repository as the release engineers see it: load, change, sign, stage, publish.

The published repository lives in storage (see :mod:`overdrive.tuf_layout`). Every change goes
through :meth:`ImageRepository.publish`, which uploads in the one safe order — target files, then
root, targets, snapshot, and ``timestamp.json`` last — so a vehicle polling at any moment sees the
old repository or the new one, never a mix: until the new timestamp lands, nothing refers to the new
files. Metadata that lacks signatures is *staged* under ``staging/`` (vehicles never read it) until
enough engineers have signed it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
from overdrive.storage import CachePolicy, NotFound, Storage
from overdrive.tuf_layout import (
    METADATA_PREFIX,
    TOP_LEVEL_ROLES,
    metadata_key,
    staging_key,
    target_storage_key,
)
from signing.errors import KeyError_, RepositoryError, ThresholdError
from signing.keys import KeyDirectory

T = TypeVar("T", Root, Snapshot, Targets, Timestamp)

DEFAULT_EXPIRY: dict[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
#: Root carries the repository's expiry policy, so every engineer re-signs with the same periods.
EXPIRY_FIELD = "x-overdrive-expiry-seconds"
_SERIALIZER = JSONSerializer(compact=False)
_ROOT_FILE = re.compile(r"^metadata/(\d+)\.root\.json$")


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

    @staticmethod
    def root_versions(storage: Storage) -> list[int]:
        versions = []
        for key in storage.list(METADATA_PREFIX):
            match = _ROOT_FILE.fullmatch(key)
            if match:
                versions.append(int(match.group(1)))
        return sorted(versions)

    @classmethod
    def is_initialised(cls, storage: Storage) -> bool:
        return bool(cls.root_versions(storage)) or storage.exists(metadata_key("timestamp"))

    @classmethod
    def load(cls, storage: Storage, keys: KeyDirectory) -> ImageRepository:
        """Read and verify the published repository (signatures and the root chain, not expiry:
        an expired timestamp must still be refreshable)."""
        storage.check()
        versions = cls.root_versions(storage)
        if not versions:
            raise RepositoryError(
                f"no TUF repository at {storage.url} (create one with 'overdrive repo init')"
            )
        if versions != list(range(1, versions[-1] + 1)):
            raise RepositoryError(f"root history in {storage.url} has gaps: versions {versions}")
        root: Metadata[Root] | None = None
        for version in versions:
            key = metadata_key("root", version)
            data = storage.get_bytes(key)
            new_root = _parse(data, Root, key)
            if new_root.signed.version != version:
                raise RepositoryError(f"{key} claims version {new_root.signed.version}")
            previous = root.signed if root else None
            result = new_root.signed.get_root_verification_result(
                previous, new_root.signed_bytes, new_root.signatures
            )
            if not result.verified:
                raise RepositoryError(f"{key} is not signed by a threshold of root keys")
            root = new_root
        assert root is not None
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
            wanted = ", ".join(self.key_label(k) for k in root.roles[role].keyids)
            raise ThresholdError(
                f"{role} needs {threshold} signature(s) but {self.keys.path} holds "
                f"{len(held)} of its keys ({wanted})"
            )

    def sign(self, md: Metadata[Any], role: str, root: Root) -> int:
        """Add this engineer's signatures for ``role``; return how many keys signed."""
        count = 0
        for keyid in root.roles[role].keyids:
            signer = self.keys.signer(root.get_key(keyid))
            if signer is not None:
                try:
                    md.sign(signer, append=True)
                except Exception as e:
                    raise KeyError_(
                        f"signing {role} with {self.key_label(keyid)} failed: {e}"
                    ) from e
                count += 1
        return count

    def verification(self, md: Metadata[Any], role: str, root: Root) -> VerificationResult:
        return root.get_verification_result(role, md.signed_bytes, md.signatures)

    def missing_message(self, role: str, result: VerificationResult) -> str:
        who = ", ".join(self.key_label(k) for k in result.unsigned) or "none"
        return (
            f"{role}: {len(result.signed)} of {result.threshold} signatures; "
            f"{result.missing} more needed from: {who}"
        )

    def root_missing(self, new_root: Metadata[Root]) -> list[str]:
        """What the new root still lacks: signatures by the old and by the new root keys."""
        result = new_root.signed.get_root_verification_result(
            self.root.signed, new_root.signed_bytes, new_root.signatures
        )
        missing = []
        if not result.first.verified:
            missing.append(self.missing_message("root (old keys)", result.first))
        if not result.second.verified:
            missing.append(self.missing_message("root (new keys)", result.second))
        return missing

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

    def stage_targets(
        self, targets: Metadata[Targets], target_files: Iterable[tuple[str, TargetFile, Path]]
    ) -> None:
        """Upload the files of a targets change and stage it for more signatures."""
        self.upload_targets(target_files)
        self.stage(targets, "targets")

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
        if root is not None:
            missing = self.root_missing(root)
            if missing:
                raise ThresholdError("; ".join(missing))
        if targets is not None:
            result = self.verification(targets, "targets", new_root)
            if not result.verified:
                raise ThresholdError(self.missing_message("targets", result))
        elif root is not None and not self.verification(self.targets, "targets", new_root):
            # The targets keys changed: the current targets must be re-signed by the new keys.
            targets = self.bump(self.targets, "targets")
            self.sign(targets, "targets", new_root)
            result = self.verification(targets, "targets", new_root)
            if not result.verified:
                raise ThresholdError(self.missing_message("targets (re-signed)", result))
        resign_snapshot = resign_snapshot or targets is not None or root is not None
        for role in ("snapshot", "timestamp") if resign_snapshot else ("timestamp",):
            self.require_signers(role, new_root)

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
            self.sign(snapshot, "snapshot", new_root)
            snapshot_bytes = to_bytes(snapshot)
        timestamp = self.bump(self.timestamp, "timestamp")
        if snapshot_bytes is not None:
            timestamp.signed.snapshot_meta = MetaFile.from_data(
                snapshot.signed.version, snapshot_bytes, ["sha256"]
            )
        self.sign(timestamp, "timestamp", new_root)

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

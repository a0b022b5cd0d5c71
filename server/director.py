"""The director repository's keys and signatures: every vehicle's own TUF repository.

The fleet's director has one ``root`` (offline keys, a threshold; created and rotated with
``overdrive director init|rotate``, kept in its own storage location, ``--director-storage``)
and online ``targets``, ``snapshot`` and ``timestamp`` keys held by this server
(``--director-keys DIR``: key files, or KMS keys whose URI the root records). Each vehicle gets
its own ``targets`` (what each of its ECUs is to run), ``snapshot`` and ``timestamp``, built with
python-tuf's Metadata API and signed here by :meth:`Director.sign_chain`; they are stored by
:mod:`overdrive.server.director_store` and served at ``/api/v1/director/<vehicle>/metadata/``.

The three per-vehicle roles always carry the same version number N (one *chain*): a change of
assignment, a timestamp past half its life, or a new root re-signs the whole chain as N+1. That
keeps storage and serving trivial and costs three signatures per change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from overdrive.envelope import sign_envelope
from overdrive.errors import OverdriveError
from overdrive.keys import (
    INSECURE_PERMISSIONS_ENV,
    PASSPHRASE_DIR_ENV,
    KeyDirectory,
    KeyError_,
    PassphraseSources,
)
from overdrive.root_chain import RootChainError, read_root_chain
from overdrive.storage import Storage, open_storage
from overdrive.text import one_line
from overdrive.tuf_layout import EXPIRY_FIELD
from overdrive.uptane import VEHICLE_FIELD, time_attestation

log = logging.getLogger("overdrive.server")

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
#: Validity of each per-vehicle role when the director's root does not say (``director init``
#: writes its own): short, because the server re-signs them whenever they are used.
DEFAULT_EXPIRY = {
    "targets": timedelta(days=7),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
_SERIALIZER = JSONSerializer(compact=True)


class DirectorKeyError(OverdriveError):
    """The director's root or online keys cannot be loaded, or do not meet a threshold."""


@dataclass(frozen=True)
class Chain:
    """One signed per-vehicle chain: targets, snapshot and timestamp, all version ``version``."""

    version: int
    root_version: int
    targets: bytes
    snapshot: bytes
    timestamp: bytes
    expires: datetime  # the timestamp's (the chain's earliest) expiry

    def bodies(self) -> dict[str, bytes]:
        return {"targets": self.targets, "snapshot": self.snapshot, "timestamp": self.timestamp}


class Director:
    """The director's root chain (re-read every ``refresh_s``) and its online signers."""

    def __init__(self, storage: Storage, keys: KeyDirectory, refresh_s: float = 60.0) -> None:
        self.storage = storage
        self.keys = keys
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._loaded_at = 0.0
        self._roots: list[bytes] = []
        self._root: Root | None = None
        self._signers: dict[str, list[Signer]] = {}
        self.load()

    @classmethod
    def open(cls, storage_url: str, keys_dir: Path, passphrase_env: str | None = None) -> Director:
        """The director of ``storage_url`` (its root chain) signing with keys in ``keys_dir``.

        Encrypted key files are unlocked as the signing CLI unlocks them, without a prompt:
        ``$OVERDRIVE_PASSPHRASE_<NAME>``, ``$OVERDRIVE_PASSPHRASES_DIR/<NAME>.pass``, or the
        variable ``passphrase_env`` names for every key."""
        try:
            storage = open_storage(storage_url)
        except OverdriveError as e:
            raise DirectorKeyError(f"cannot open the director storage: {one_line(e)}") from e
        folder = os.environ.get(PASSPHRASE_DIR_ENV)
        insecure = os.environ.get(INSECURE_PERMISSIONS_ENV, "") in ("1", "true", "yes")
        sources = PassphraseSources(
            env_var=passphrase_env,
            file_dir=Path(folder) if folder else None,
            allow_insecure_permissions=insecure,
            interactive=False,
        )
        if not keys_dir.is_dir():
            raise DirectorKeyError(f"director key directory {keys_dir} does not exist")
        return cls(storage, KeyDirectory(keys_dir, sources, insecure))

    # ------------------------------------------------------------------ the root chain

    def load(self) -> None:
        """Read and verify the root chain; load a threshold of signers for each online role.
        Raises :class:`DirectorKeyError` saying what is wrong (the old state stays in use)."""
        chain = self._read_roots()
        roots, root = [data for data, _md in chain], chain[-1][1].signed
        # Look at the key files afresh: a rotation's new key is added next to the old ones.
        self.keys = dataclasses.replace(self.keys, _public=None, _signers=self.keys._signers)
        signers = {role: self._role_signers(root, role) for role in ONLINE_ROLES}
        with self._lock:
            self._roots, self._root, self._signers = roots, root, signers
            self._loaded_at = time.monotonic()

    def _read_roots(self) -> list[tuple[bytes, Metadata[Root]]]:
        try:
            chain = read_root_chain(self.storage)
        except RootChainError as e:
            raise DirectorKeyError(f"director root: {e}") from e
        except OverdriveError as e:
            raise DirectorKeyError(f"cannot read the director storage: {one_line(e)}") from e
        if not chain:
            raise DirectorKeyError(
                f"no director root at {self.storage.url} (create one with 'overdrive director init')"
            )
        return chain

    def _role_signers(self, root: Root, role: str) -> list[Signer]:
        r = root.roles[role]
        signers = []
        for keyid in r.keyids:
            try:
                signer = self.keys.signer(root.keys[keyid])
            except KeyError_ as e:
                raise DirectorKeyError(f"director {role} key: {e}") from e
            if signer is not None:
                signers.append(signer)
            if len(signers) == r.threshold:
                return signers
        raise DirectorKeyError(
            f"{self.keys.path} holds {len(signers)} of the {r.threshold} director {role} "
            f"key(s) root v{root.version} requires"
        )

    def maybe_reload(self) -> None:
        """Pick up a rotated root (every ``refresh_s``); keep the current one if that fails."""
        if time.monotonic() - self._loaded_at < self.refresh_s:
            return
        self._loaded_at = time.monotonic()  # one attempt per period, whatever happens
        try:
            self.load()
        except OverdriveError as e:
            log.warning(
                "reloading the director root failed (keeping v%s): %s", self.root_version, e
            )

    @property
    def root(self) -> Root:
        assert self._root is not None
        return self._root

    @property
    def root_version(self) -> int:
        return self.root.version

    def root_bytes(self, version: int | None = None) -> bytes | None:
        """``N.root.json`` as published (``None``: the newest), or None if there is none."""
        roots = self._roots
        if version is None:
            return roots[-1]
        return roots[version - 1] if 1 <= version <= len(roots) else None

    def expiry(self, role: str) -> timedelta:
        stored = self.root.unrecognized_fields.get(EXPIRY_FIELD)
        seconds = stored.get(role) if isinstance(stored, dict) else None
        if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
            return timedelta(seconds=seconds)
        return DEFAULT_EXPIRY[role]

    def describe(self) -> dict[str, Any]:
        """Root version, expiry and each role's keys and threshold (for status and /readyz)."""
        root = self.root
        return {
            "storage": self.storage.url,
            "root_version": root.version,
            "root_expires": root.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "roles": {
                name: {
                    "keyids": list(role.keyids),
                    "threshold": role.threshold,
                    **(
                        {"expiry_seconds": int(self.expiry(name).total_seconds())}
                        if name in ONLINE_ROLES
                        else {}
                    ),
                }
                for name, role in root.roles.items()
            },
        }

    # ------------------------------------------------------------------ signing

    def _sign(self, md: Metadata[Any], role: str) -> bytes:
        for signer in self._signers[role]:
            md.sign(signer, append=True)
        return md.to_bytes(_SERIALIZER)

    def sign_chain(
        self, vehicle_id: str, targets: dict[str, TargetFile], version: int, now: datetime
    ) -> Chain:
        """Version ``version`` of ``vehicle_id``'s targets (``targets``), snapshot and timestamp."""
        now = now.astimezone(UTC).replace(microsecond=0)
        targets_md = Metadata(
            Targets(
                version=version,
                expires=now + self.expiry("targets"),
                targets=targets,
                unrecognized_fields={VEHICLE_FIELD: vehicle_id},
            )
        )
        targets_bytes = self._sign(targets_md, "targets")
        snapshot_md = Metadata(
            Snapshot(
                version=version,
                expires=now + self.expiry("snapshot"),
                meta={"targets.json": MetaFile(version=version)},
            )
        )
        snapshot_bytes = self._sign(snapshot_md, "snapshot")
        expires = now + self.expiry("timestamp")
        timestamp_md = Metadata(
            Timestamp(
                version=version,
                expires=expires,
                snapshot_meta=MetaFile.from_data(version, snapshot_bytes, ["sha256"]),
            )
        )
        timestamp_bytes = self._sign(timestamp_md, "timestamp")
        return Chain(
            version, self.root_version, targets_bytes, snapshot_bytes, timestamp_bytes, expires
        )

    def due(self, root_version: int, expires: datetime, now: datetime) -> bool:
        """Whether a stored chain must be re-signed: signed under an older root, or its
        timestamp past half its life (so a vehicle never sees it expire while in use)."""
        half = self.expiry("timestamp") / 2
        return root_version != self.root_version or expires - now < half

    def attest_time(self, nonce: str, now: datetime) -> dict[str, Any]:
        """The current time and the vehicle's ``nonce``, signed by the timestamp key(s)."""
        payload = time_attestation(nonce, now)
        envelope = sign_envelope(payload, self._signers["timestamp"][0])
        for signer in self._signers["timestamp"][1:]:
            envelope["signatures"].append(sign_envelope(payload, signer)["signatures"][0])
        return envelope

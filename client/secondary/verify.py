"""How a secondary verifies what the primary forwards: fully (both repositories, TUF's
workflow) or partially (the director's ``targets`` signature), from its own trusted roots.

The primary sends the metadata files it holds (:class:`~overdrive.client.secondary_link.
RepoFiles`); the secondary lays them out in a scratch directory as a TUF repository
(``N.root.json``, ``timestamp.json``, and each other role under its unversioned name and as
``V.<role>.json`` from its own ``signed.version``) and runs exactly the primary's code over it:

* **time**: :meth:`~overdrive.client.trust.DirectorTrust.check_time` — signed by a threshold of
  the director root's timestamp keys (following a rotation the primary sent), echoing the nonce
  of this ECU's latest version report; expiry everywhere below is judged at that time;
* **full**: python-tuf's ngclient refreshes the director repository (``STATE_DIR/director``)
  and the image repository (``STATE_DIR/tuf``) from the scratch directory — rotation, expiry,
  rollback and mix-and-match are ngclient's — then
  :func:`~overdrive.client.trust.check_director_target` and
  :func:`~overdrive.client.trust.check_target` (hardware id, release counter above the committed
  one, withdrawn, a delta's source is the active image);
* **partial**: the director root chain is walked (each root signed by its predecessor's and its
  own threshold), the director ``targets`` must be signed by that root's targets threshold, be
  unexpired, not older than the last verified, signed for this vehicle and name this ECU with
  its hardware id; its release counter must be above the committed one. The image itself is
  then checked against the target's length and sha256 when it is staged.

A missing file is a refusal here, not an outage: the primary chose what to send.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.api.metadata import Metadata, Root, Targets

from overdrive.client.errors import Refused, RepositoryUnreachable
from overdrive.client.secondary.config import SecondaryConfig
from overdrive.client.secondary.state import SecondaryState
from overdrive.client.secondary_link import RepoFiles
from overdrive.client.trust import DirectorTrust, Trust, check_director_target, check_target
from overdrive.storage.local import atomic_write
from overdrive.text import one_line
from overdrive.tuf_layout import BundleInfo
from overdrive.uptane import VEHICLE_FIELD, UptaneError, entries_for

_MAX_VERSION = 1 << 31
#: Where a verification lays out what the primary sent (removed at every start).
SCRATCH_PREFIX = ".verify-"


@dataclass(frozen=True)
class VerifiedTarget:
    """The target this ECU verified for a set: what it will accept to stage and install."""

    path: str
    length: int
    sha256: str
    release_counter: int
    version: str
    install_order: int
    #: The image repository's ``custom`` (full verification); None for partial verification,
    #: whose bundle is described by its own header once its hash matched.
    custom: dict[str, Any] | None = None

    def answer(self) -> dict[str, Any]:
        """The ``verify`` answer for it."""
        data = asdict(self)
        data.pop("custom")
        return {"status": "update", **data}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifiedTarget:
        return cls(**data)


@dataclass(frozen=True)
class Outcome:
    """What one verification established: the director version and vehicle it checked, the
    attested time, and the target for this ECU (None: nothing new for it)."""

    director_version: int
    vehicle_id: str
    moment: datetime
    target: VerifiedTarget | None


class Verifier:
    """Verification of forwarded metadata against this ECU's trusted roots."""

    def __init__(self, state_dir: Path, config: SecondaryConfig) -> None:
        self.state_dir = state_dir
        self.config = config

    def verify(
        self,
        state: SecondaryState,
        time: Any,
        director: RepoFiles,
        image_repo: RepoFiles | None,
    ) -> Outcome:
        """Raise :class:`Refused` for anything that does not verify."""
        if state.last_nonce is None:
            raise Refused(
                "replayed_time", "no version report was asked for yet: no time can be fresh"
            )
        with tempfile.TemporaryDirectory(dir=self.state_dir, prefix=SCRATCH_PREFIX) as tmp:
            scratch = Path(tmp)
            write_repository(scratch / "director", director)
            trust = DirectorTrust(self.state_dir, "file:///", self._vehicle_id(state, director))
            trust.metadata_url = (scratch / "director").as_uri() + "/"
            # ngclient works on a copy of the trusted director metadata, persisted only once it
            # proved to be this vehicle's: another vehicle's genuine chain (of a higher
            # version) must not become what this ECU trusts
            persistent = trust.metadata_dir
            trust.metadata_dir = scratch / "trusted-director"
            if persistent.is_dir():
                shutil.copytree(persistent, trust.metadata_dir)
            try:
                moment = trust.check_time(time, state.last_nonce)
            except RepositoryUnreachable as e:
                raise Refused("bad_time", f"incomplete director roots: {e}") from e
            if self.config.verification == "partial":
                return self._partial(state, trust, director, moment)
            if image_repo is None:
                raise Refused(
                    "tuf_refresh_failed",
                    "this ECU verifies fully: the image repository's metadata is required",
                )
            write_repository(scratch / "image" / "metadata", image_repo)
            return self._full(state, trust, persistent, (scratch / "image").as_uri(), moment)

    def _vehicle_id(self, state: SecondaryState, director: RepoFiles) -> str:
        """The configured or remembered vehicle; else the one the targets claim (it counts only
        once their signature verified, and is remembered from then on)."""
        pinned = self.config.vehicle_id or state.vehicle_id
        if pinned:
            return pinned
        try:
            claimed = json.loads(director.targets)["signed"][VEHICLE_FIELD]
        except (ValueError, TypeError, KeyError):
            claimed = None
        if not isinstance(claimed, str) or not claimed:
            raise Refused("wrong_vehicle", "the director's targets name no vehicle")
        return claimed

    # -- full

    def _full(
        self,
        state: SecondaryState,
        trust: DirectorTrust,
        persistent: Path,
        image_url: str,
        moment: datetime,
    ) -> Outcome:
        try:
            entries = trust.refresh(moment)
        except RepositoryUnreachable as e:
            raise Refused("director_refresh_failed", f"incomplete director metadata: {e}") from e
        _persist(trust.metadata_dir, persistent)
        version = trust.local_version() or 0
        entry = entries.get(self.config.serial)
        if entry is None:
            return Outcome(version, trust.vehicle_id, moment, None)
        images = Trust(self.state_dir, image_url)
        try:
            updater = images.refresh(moment)
            target = updater.get_targetinfo(entry.path)
        except RepositoryUnreachable as e:
            raise Refused("tuf_refresh_failed", f"incomplete image repository metadata: {e}") from e
        except (RepositoryError, DownloadError) as e:
            raise Refused(
                "tuf_refresh_failed",
                one_line(f"image repository does not verify: {type(e).__name__}: {e}"),
            ) from e
        check_director_target(entry, target, hardware_id=self.config.hardware_id)
        assert target is not None
        active = state.slots.get(state.active)
        if active is not None and _image_sha256(target.custom, target.path) == active.sha256:
            return Outcome(version, trust.vehicle_id, moment, None)  # runs it already
        info = check_target(
            target,
            hardware_id=self.config.hardware_id,
            active=active,
            committed_counter=state.committed_counter,
        )
        verified = VerifiedTarget(
            entry.path,
            target.length,
            target.hashes["sha256"],
            info.release_counter,
            info.version,
            entry.install_order,
            dict(target.custom),
        )
        return Outcome(version, trust.vehicle_id, moment, verified)

    # -- partial

    def _partial(
        self, state: SecondaryState, trust: DirectorTrust, director: RepoFiles, moment: datetime
    ) -> Outcome:
        root = self._root_chain(trust.trusted_root(), director.roots)
        if root.is_expired(moment):
            raise Refused("director_refresh_failed", "the director root has expired")
        try:
            md = Metadata[Targets].from_bytes(director.targets)
            if not isinstance(md.signed, Targets):
                raise ValueError("not targets metadata")
            root.verify_delegate("targets", md.signed_bytes, md.signatures)
        except Exception as e:
            raise Refused(
                "director_refresh_failed",
                one_line(f"director targets do not verify: {type(e).__name__}: {e}"),
            ) from e
        targets = md.signed
        if targets.is_expired(moment):
            raise Refused("director_refresh_failed", "the director targets have expired")
        if targets.version < state.director_version:
            raise Refused(
                "director_refresh_failed",
                f"director targets v{targets.version} are older than the v"
                f"{state.director_version} already verified (a replay)",
            )
        signed_for = targets.unrecognized_fields.get(VEHICLE_FIELD)
        if signed_for != trust.vehicle_id:
            raise Refused(
                "wrong_vehicle",
                f"the director's targets are signed for vehicle {one_line(str(signed_for), 80)!r}, "
                f"not {trust.vehicle_id!r}",
            )
        try:
            entries = entries_for(targets.targets)
        except UptaneError as e:
            raise Refused("malformed_director_target", str(e)) from e
        entry = entries.get(self.config.serial)
        outcome = Outcome(targets.version, trust.vehicle_id, moment, None)
        if entry is None:
            return outcome
        if entry.hardware_id != self.config.hardware_id:
            raise Refused(
                "wrong_hardware",
                f"director target {entry.path} is for hardware id {entry.hardware_id!r}, "
                f"this ECU is {self.config.hardware_id!r}",
            )
        active = state.slots.get(state.active)
        if (
            active is not None
            and active.version == entry.version
            and active.release_counter == entry.release_counter
        ):
            return outcome  # runs it already
        installed = max(state.committed_counter, active.release_counter if active else 0)
        if entry.release_counter <= installed:
            raise Refused(
                "downgrade",
                f"release counter {entry.release_counter} of {entry.version} is not above the "
                f"installed {installed}",
            )
        verified = VerifiedTarget(
            entry.path,
            entry.length,
            entry.sha256,
            entry.release_counter,
            entry.version,
            entry.install_order,
        )
        return Outcome(targets.version, trust.vehicle_id, moment, verified)

    def _root_chain(self, trusted: Root, roots: list[bytes]) -> Root:
        """Follow the root files the primary sent (each signed by the previous root's and its
        own threshold) and persist the newest, as ngclient does for full verification."""
        current, newest = trusted, None
        for raw in roots:
            try:
                md = Metadata[Root].from_bytes(raw)
                if not isinstance(md.signed, Root):
                    raise ValueError("not root metadata")
                if md.signed.version <= current.version:
                    continue
                if md.signed.version != current.version + 1:
                    raise ValueError(f"v{md.signed.version} does not follow v{current.version}")
                current.verify_delegate("root", md.signed_bytes, md.signatures)
                md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
            except Exception as e:
                raise Refused(
                    "director_refresh_failed",
                    one_line(f"director root does not verify: {type(e).__name__}: {e}"),
                ) from e
            current, newest = md.signed, raw
        if newest is not None:
            data = newest
            atomic_write(self.state_dir / "director" / "root.json", lambda f: f.write(data))
        return current


def _persist(verified: Path, persistent: Path) -> None:
    """Replace the trusted metadata in ``persistent`` by ``verified``'s, root first and
    timestamp last (any mix a crash leaves is one ngclient recovers from: it re-checks each
    file it loads against the trusted root and the timestamp)."""
    order = {"root.json": 0, "timestamp.json": 2}
    for path in sorted(verified.glob("*.json"), key=lambda p: (order.get(p.name, 1), p.name)):
        _write(persistent / path.name, path.read_bytes())


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def write_repository(directory: Path, files: RepoFiles) -> None:
    """Lay ``files`` out in ``directory`` as a TUF repository ngclient can read."""
    directory.mkdir(parents=True)
    for raw in files.roots:
        version = _version(raw)
        if version is None:
            raise Refused("director_refresh_failed", "a root file the primary sent has no version")
        (directory / f"{version}.root.json").write_bytes(raw)
    (directory / "timestamp.json").write_bytes(files.timestamp)
    roles = [("snapshot", files.snapshot), ("targets", files.targets)]
    roles += [(quote(name, safe=""), raw) for name, raw in files.delegated.items()]
    for role, raw in roles:
        if role in (".", ".."):
            raise Refused("tuf_refresh_failed", "invalid delegated role name")
        (directory / f"{role}.json").write_bytes(raw)
        version = _version(raw)
        if version is not None:
            (directory / f"{version}.{role}.json").write_bytes(raw)


def _version(raw: bytes) -> int | None:
    """``signed.version`` of a metadata file, if it has a sane one (it is verified later)."""
    try:
        version = json.loads(raw)["signed"]["version"]
    except (ValueError, TypeError, KeyError):
        return None
    if isinstance(version, bool) or not isinstance(version, int):
        return None
    return version if 0 < version < _MAX_VERSION else None


def _image_sha256(custom: Any, path: str) -> str | None:
    try:
        info = BundleInfo.from_custom(custom, path)
    except Exception:
        return None
    return info.image.sha256 if info is not None else None


def trusted_root_version(state_dir: Path, metadata_dir: str, provisioned: str) -> int:
    """The version of the root trusted now: the last verified (``STATE_DIR/<metadata_dir>/
    root.json``), else the one set up (0: none, as partial verification has no image root)."""
    path = state_dir / metadata_dir / "root.json"
    if not path.exists():
        path = state_dir / provisioned
    if not path.exists():
        return 0
    return Metadata[Root].from_bytes(path.read_bytes()).signed.version

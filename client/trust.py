"""What the vehicle trusts, and why: Uptane full verification over two TUF repositories.

Every check here happens before a byte is written to a slot:

1. **time**: the poll's time attestation echoes this poll's nonce and is signed by a threshold
   of the director's timestamp keys (from the trusted director root, following its rotations);
   that time is the reference for every expiry check below, whatever the vehicle's own clock
   says (each poll's attestation replaces the last: a time a stolen timestamp key pushed far
   ahead is undone by the next genuine one, instead of wedging the vehicle);
2. **director**: python-tuf's ngclient refreshes this vehicle's director repository
   (``STATE_DIR/director``) from the trusted director root: root rotation, expiry, rollback,
   mix-and-match between its roles; its targets must be signed for this vehicle, and name this
   ECU with its hardware id;
3. **image repository**: ngclient refreshes the image repository (``STATE_DIR/tuf``) from its
   trusted root and finds the director's target path there;
4. the director's target equals the image repository's exactly: length, every hash the
   director lists (sha256 at least), the release counter;
5. the target is for our hardware id, the release engineers have not withdrawn it
   (``custom["yanked"]``), and its release counter is above what we run (anti-rollback: the
   image repository's counter, which a compromised director cannot change);
6. a delta's source image is exactly the image in our active slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from securesystemslib.signer import Key
from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    RepositoryError,
)
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater, UpdaterConfig

from overdrive.client.errors import Refused, RepositoryUnreachable
from overdrive.client.state import SlotImage
from overdrive.envelope import EnvelopeError, verify_envelope
from overdrive.fetcher import DEFAULT_DEADLINE_S, LocalOrHttpFetcher
from overdrive.text import one_line
from overdrive.tuf_layout import BundleInfo, LayoutError, Yank, target_storage_key
from overdrive.uptane import (
    TIME_ATTESTATION,
    VEHICLE_FIELD,
    DirectorEntry,
    UptaneError,
    entries_for,
    parse_iso,
)

TRUSTED_ROOT = "trusted_root.json"
DIRECTOR_ROOT = "director_root.json"
#: Root versions walked in one go to verify a time attestation after rotations.
MAX_ROOT_STEPS = 32
MAX_ROOT_BYTES = 512_000


@dataclass
class Verified:
    """An assignment that passed every check, and where to fetch its bundle."""

    assignment: dict[str, Any]
    target: TargetFile
    info: BundleInfo
    url: str


def at_time(updater: Updater, reference: datetime | None) -> Updater:
    """Make ``updater`` judge expiry at ``reference`` (the attested time) instead of the
    system clock. ngclient keeps its reference time on its trusted metadata set, which it
    builds in its constructor; python-tuf has no public setting for it."""
    if reference is not None:
        trusted = getattr(updater, "_trusted_set", None)
        if trusted is None or not hasattr(trusted, "reference_time"):
            raise Refused(
                "tuf_refresh_failed", "this python-tuf cannot check expiry at a given time"
            )
        trusted.reference_time = reference
    return updater


class Trust:
    """The vehicle's TUF client (state in ``STATE_DIR/tuf``) over the image repository."""

    def __init__(self, state_dir: Path, repo_url: str, deadline_s: float = 300.0) -> None:
        self.state_dir = state_dir
        self.metadata_dir = state_dir / "tuf"
        self.repo_url = repo_url.rstrip("/") + "/"
        self.deadline_s = deadline_s
        self._updater: Updater | None = None

    def refresh(self, reference: datetime | None = None) -> Updater:
        """A fresh TUF view of the repository (one refresh per poll cycle), judging expiry at
        ``reference`` (default: the system clock)."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = None
        if not (self.metadata_dir / "root.json").exists():
            bootstrap = (self.state_dir / TRUSTED_ROOT).read_bytes()
        updater = make_updater(
            self.metadata_dir,
            self.repo_url + "metadata/",
            self.state_dir / "tuf-targets",
            self.repo_url + "targets/",
            bootstrap=bootstrap,
            deadline_s=self.deadline_s,
        )
        try:
            at_time(updater, reference).refresh()
        except DownloadError as e:
            _raise_for_download(e, "tuf_refresh_failed")
        except RepositoryError as e:
            raise Refused(
                "tuf_refresh_failed",
                one_line(f"image repository does not verify: {type(e).__name__}: {e}"),
            ) from e
        self._updater = updater
        return updater

    def root_version(self) -> int:
        """The version of the image repository root trusted now."""
        path = self.metadata_dir / "root.json"
        if not path.exists():
            path = self.state_dir / TRUSTED_ROOT
        return Metadata[Root].from_bytes(path.read_bytes()).signed.version

    def bundle_url(self, target: TargetFile) -> str:
        key = target_storage_key(target.path, target.hashes["sha256"])
        return self.repo_url + key


def _raise_for_download(
    error: DownloadError, reason: str, what: str = "image repository"
) -> NoReturn:
    """A length the metadata does not allow is an attack (endless data): refuse. Anything else
    (HTTP errors, timeouts, a mirror that is down) is an outage: try again later."""
    if isinstance(error, DownloadLengthMismatchError):
        raise Refused(reason, f"{what} sent too much data: {error}") from error
    raise RepositoryUnreachable(
        one_line(f"{what} unreachable: {type(error).__name__}: {error}")
    ) from error


def make_updater(
    metadata_dir: Path,
    metadata_url: str,
    target_dir: Path | None,
    target_url: str | None,
    *,
    bootstrap: bytes | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
) -> Updater:
    """The vehicle's one TUF client: python-tuf's ngclient with our fetcher (HTTP and file://).

    ``bootstrap=None`` trusts the ``root.json`` already in ``metadata_dir``. ``deadline_s``
    bounds each fetch as a whole (headers and body).
    """
    return Updater(
        str(metadata_dir),
        metadata_url,
        str(target_dir) if target_dir is not None else None,
        target_url,
        fetcher=LocalOrHttpFetcher(user_agent="overdrive-vehicle", deadline_s=deadline_s),
        config=UpdaterConfig(app_user_agent="overdrive-vehicle"),
        bootstrap=bootstrap,
    )


class DirectorTrust:
    """The vehicle's TUF client over its own director repository (state in
    ``STATE_DIR/director``), and the time it trusts."""

    def __init__(
        self, state_dir: Path, server_url: str, vehicle_id: str, deadline_s: float = 300.0
    ) -> None:
        self.state_dir = state_dir
        self.metadata_dir = state_dir / "director"
        self.vehicle_id = vehicle_id
        base = server_url.rstrip("/")
        self.metadata_url = f"{base}/api/v1/director/{vehicle_id}/metadata/"
        self.deadline_s = deadline_s

    def trusted_root(self) -> Root:
        """The director root this vehicle trusts now (its last verified, else the provisioned)."""
        path = self.metadata_dir / "root.json"
        if not path.exists():
            path = self.state_dir / DIRECTOR_ROOT
        try:
            return Metadata[Root].from_bytes(path.read_bytes()).signed
        except (OSError, DeserializationError) as e:
            raise Refused(
                "no_director_root", f"cannot read the trusted director root {path}: {e}"
            ) from e

    def local_version(self) -> int | None:
        """The version of the director targets last verified, if any."""
        try:
            return (
                Metadata[Targets].from_file(str(self.metadata_dir / "targets.json")).signed.version
            )
        except Exception:  # missing or unreadable: there is nothing verified to go by
            return None

    def check_time(self, attestation: Any, nonce: str) -> datetime:
        """The attested time: signed by the director's timestamp key(s), echoing ``nonce``. A
        root rotation since the last refresh is followed first."""
        root = self.trusted_root()
        try:
            payload = _verify_time(attestation, root)
        except Refused:
            newer = self._newest_root(root)
            if newer is root:
                raise
            payload = _verify_time(attestation, newer)
        if payload.get("nonce") != nonce:
            raise Refused("replayed_time", "the time attestation does not echo this poll's nonce")
        try:
            return parse_iso(payload.get("time"), "attested time")
        except UptaneError as e:
            raise Refused("bad_time", str(e)) from e

    def _newest_root(self, trusted: Root) -> Root:
        """Walk ``N+1.root.json`` … from the server, each signed by the previous root's and its
        own threshold (not persisted: the director refresh does that)."""
        fetcher = LocalOrHttpFetcher(user_agent="overdrive-vehicle", deadline_s=self.deadline_s)
        current = trusted
        for _ in range(MAX_ROOT_STEPS):
            url = f"{self.metadata_url}{current.version + 1}.root.json"
            try:
                data = fetcher.download_bytes(url, MAX_ROOT_BYTES)
            except DownloadHTTPError as e:
                if e.status_code in (403, 404):
                    return current
                _raise_for_download(e, "bad_time", "director")
            except DownloadError as e:
                _raise_for_download(e, "bad_time", "director")
            try:
                md = Metadata[Root].from_bytes(data)
                current.verify_delegate("root", md.signed_bytes, md.signatures)
                md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
            except Exception as e:
                raise Refused(
                    "director_refresh_failed", one_line(f"director root does not verify: {e}")
                ) from e
            if md.signed.version != current.version + 1:
                raise Refused("director_refresh_failed", "director root has the wrong version")
            current = md.signed
        return current

    def refresh(self, reference: datetime) -> dict[str, DirectorEntry]:
        """Refresh the director repository (TUF, expiry judged at ``reference``); ECU serial
        → what its verified targets say that ECU should run."""
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = None
        if not (self.metadata_dir / "root.json").exists():
            try:
                bootstrap = (self.state_dir / DIRECTOR_ROOT).read_bytes()
            except OSError as e:
                raise Refused("no_director_root", f"no trusted director root: {e.strerror}") from e
        updater = make_updater(
            self.metadata_dir,
            self.metadata_url,
            None,
            None,
            bootstrap=bootstrap,
            deadline_s=self.deadline_s,
        )
        try:
            at_time(updater, reference).refresh()
        except DownloadError as e:
            _raise_for_download(e, "director_refresh_failed", "director")
        except RepositoryError as e:
            raise Refused(
                "director_refresh_failed",
                one_line(f"director repository does not verify: {type(e).__name__}: {e}"),
            ) from e
        targets = Metadata[Targets].from_file(str(self.metadata_dir / "targets.json")).signed
        if targets.unrecognized_fields.get(VEHICLE_FIELD) != self.vehicle_id:
            raise Refused(
                "wrong_vehicle",
                "the director's targets are signed for vehicle "
                f"{one_line(str(targets.unrecognized_fields.get(VEHICLE_FIELD)), 80)!r}, "
                f"not {self.vehicle_id!r}",
            )
        try:
            return entries_for(targets.targets)
        except UptaneError as e:
            raise Refused("malformed_director_target", str(e)) from e


def _verify_time(attestation: Any, root: Root) -> dict[str, Any]:
    role = root.roles["timestamp"]
    keys: dict[str, Key] = {k: root.keys[k] for k in role.keyids if k in root.keys}
    try:
        return verify_envelope(attestation, keys, TIME_ATTESTATION, role.threshold)
    except EnvelopeError as e:
        raise Refused("bad_time", f"time attestation refused: {e}") from e


def check_director_target(
    entry: DirectorEntry, target: TargetFile | None, *, hardware_id: str
) -> None:
    """Step 4 (and the director's side of 5): the director's target for this ECU must be the
    image repository's target, exactly, for our hardware id."""
    path = entry.path
    if entry.hardware_id != hardware_id:
        raise Refused(
            "wrong_hardware",
            f"director target {path} is for hardware id {entry.hardware_id!r}, this ECU is {hardware_id!r}",
        )
    if target is None:
        raise Refused("not_in_repository", f"target {path} is not in the signed image repository")
    mismatched = target.length != entry.length or any(
        target.hashes.get(name) != value for name, value in entry.hashes.items()
    )
    if mismatched or target.hashes.get("sha256") != entry.sha256:
        raise Refused(
            "director_mismatch",
            f"director's hash/length for {path} differ from the image repository's",
        )
    try:
        info = BundleInfo.from_custom(target.custom, path)
    except LayoutError as e:
        raise Refused("malformed_target", str(e)) from e
    if info is not None and info.release_counter != entry.release_counter:
        raise Refused(
            "director_mismatch",
            f"director's release counter {entry.release_counter} for {path} differs from the "
            f"image repository's {info.release_counter}",
        )


def check_target(
    target: TargetFile,
    *,
    hardware_id: str,
    active: SlotImage | None,
    committed_counter: int,
) -> BundleInfo:
    """Steps 5–6, against what TUF verified for the target path."""
    path = target.path
    try:
        info = BundleInfo.from_custom(target.custom, path)
    except LayoutError as e:
        raise Refused("malformed_target", str(e)) from e
    if info is None:
        raise Refused("not_a_bundle", f"target {path} is not an update bundle")
    if info.hardware_id != hardware_id:
        raise Refused(
            "wrong_hardware",
            f"target {path} is for hardware id {info.hardware_id!r}, not {hardware_id!r}",
        )
    check_not_withdrawn(target, info)
    installed = max(committed_counter, active.release_counter if active else 0)
    if info.release_counter <= installed:
        raise Refused(
            "downgrade",
            f"release counter {info.release_counter} of {info.version} is not above the installed {installed}",
        )
    if info.kind == "delta":
        assert info.source is not None
        if active is None or info.source.sha256 != active.sha256:
            raise Refused(
                "source_mismatch",
                f"delta {path} is for source image {info.source.sha256[:12]}…, the active slot holds {active.sha256[:12] + '…' if active else 'nothing'}",
            )
    return info


def check_not_withdrawn(target: TargetFile, info: BundleInfo) -> None:
    """Step 4: refuse a target the release engineers withdrew (``overdrive release yank``).

    The withdrawal is in the targets metadata TUF just verified, so it holds against any
    assignment, however it came: a server with a stale release index, an old campaign, a
    replaying director. A malformed withdrawal marker is refused too (fail closed).
    """
    try:
        yank = Yank.from_custom(target.custom, target.path)
    except LayoutError as e:
        raise Refused("malformed_target", str(e)) from e
    if yank is not None:
        raise Refused(
            "withdrawn",
            one_line(
                f"release {info.version} ({target.path}) was withdrawn at {yank.at}: {yank.reason}"
            ),
        )

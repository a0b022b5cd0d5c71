"""What the vehicle trusts, and why: TUF for images, the director only through TUF.

Every check here happens before a byte is written to a slot:

1. the assignment is signed by a director key that the image repository publishes (the TUF target
   ``director/keys.json``, signed by the offline targets keys), is for this vehicle, echoes the
   nonce of our poll and has not expired;
2. python-tuf's ngclient refreshes the image repository (root rotation, expiry, rollback and
   mix-and-match protection) and finds the assigned target;
3. the director's hash and length equal the image repository's;
4. the target is for our hardware id, the release engineers have not withdrawn it
   (``custom["yanked"]``, however old the assignment), and its release counter is above what we
   run (anti-rollback);
5. a delta's source image is exactly the image in our active slot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from securesystemslib.signer import Key, SSlibKey
from tuf.api.exceptions import DownloadError, DownloadLengthMismatchError, RepositoryError
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from overdrive.client.errors import Refused, RepositoryUnreachable
from overdrive.client.state import SlotImage
from overdrive.envelope import ASSIGNMENT, EnvelopeError, verify_envelope
from overdrive.fetcher import DEFAULT_DEADLINE_S, LocalOrHttpFetcher
from overdrive.text import one_line
from overdrive.tuf_layout import (
    DIRECTOR_KEYS_TARGET,
    BundleInfo,
    LayoutError,
    Yank,
    target_storage_key,
)

TRUSTED_ROOT = "trusted_root.json"


@dataclass
class Verified:
    """An assignment that passed every check, and where to fetch its bundle."""

    assignment: dict[str, Any]
    target: TargetFile
    info: BundleInfo
    url: str


class Trust:
    """The vehicle's TUF client (state in ``STATE_DIR/tuf``) over the image repository."""

    def __init__(self, state_dir: Path, repo_url: str, deadline_s: float = 300.0) -> None:
        self.state_dir = state_dir
        self.metadata_dir = state_dir / "tuf"
        self.repo_url = repo_url.rstrip("/") + "/"
        self.deadline_s = deadline_s
        self._updater: Updater | None = None

    def refresh(self) -> Updater:
        """A fresh TUF view of the repository (one refresh per poll cycle)."""
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
            updater.refresh()
        except DownloadError as e:
            _raise_for_download(e, "tuf_refresh_failed")
        except RepositoryError as e:
            raise Refused(
                "tuf_refresh_failed",
                one_line(f"image repository does not verify: {type(e).__name__}: {e}"),
            ) from e
        self._updater = updater
        return updater

    def director_keys(self, updater: Updater) -> tuple[dict[str, Key], int]:
        info = updater.get_targetinfo(DIRECTOR_KEYS_TARGET)
        if info is None:
            raise Refused(
                "no_director_keys", f"the image repository publishes no {DIRECTOR_KEYS_TARGET}"
            )
        try:
            path = updater.download_target(info, str(self.state_dir / "director-keys.json"))
            data = json.loads(Path(path).read_bytes())
            keys: dict[str, Key] = {
                keyid: SSlibKey.from_dict(keyid, dict(raw)) for keyid, raw in data["keys"].items()
            }
            threshold = int(data.get("threshold", 1))
        except DownloadError as e:
            _raise_for_download(e, "no_director_keys")
        except RepositoryError as e:
            raise Refused("no_director_keys", f"{DIRECTOR_KEYS_TARGET} does not verify: {e}") from e
        except (ValueError, KeyError, TypeError) as e:
            raise Refused("no_director_keys", f"{DIRECTOR_KEYS_TARGET} is malformed: {e}") from e
        return keys, threshold

    def bundle_url(self, target: TargetFile) -> str:
        key = target_storage_key(target.path, target.hashes["sha256"])
        return self.repo_url + key


def _raise_for_download(error: DownloadError, reason: str) -> NoReturn:
    """A length the metadata does not allow is an attack (endless data): refuse. Anything else
    (HTTP errors, timeouts, a mirror that is down) is an outage: try again later."""
    if isinstance(error, DownloadLengthMismatchError):
        raise Refused(reason, f"image repository sent too much data: {error}") from error
    raise RepositoryUnreachable(
        one_line(f"image repository unreachable: {type(error).__name__}: {error}")
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


def check_assignment(
    envelope: Any,
    *,
    director_keys: dict[str, Key],
    threshold: int,
    vehicle_id: str,
    nonce: str,
    hardware_id: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Step 1: the director's signature, our vehicle id, our nonce, expiry, our hardware id."""
    now = now or datetime.now(UTC)
    try:
        payload = verify_envelope(envelope, director_keys, ASSIGNMENT, threshold)
    except EnvelopeError as e:
        raise Refused("bad_signature", f"assignment refused: {e}") from e
    if payload.get("vehicle_id") != vehicle_id:
        raise Refused(
            "wrong_vehicle",
            f"assignment is for vehicle {payload.get('vehicle_id')!r}, not {vehicle_id!r}",
        )
    if payload.get("nonce") != nonce:
        raise Refused(
            "replayed_assignment", "assignment does not echo this poll's nonce (replayed)"
        )
    try:
        expires = datetime.fromisoformat(str(payload["expires"]).replace("Z", "+00:00"))
    except (KeyError, ValueError) as e:
        raise Refused("malformed_assignment", "assignment has no valid expiry") from e
    if expires <= now:
        raise Refused("expired_assignment", f"assignment expired at {payload['expires']}")
    if payload.get("hardware_id") != hardware_id:
        raise Refused(
            "wrong_hardware",
            f"assignment is for hardware id {payload.get('hardware_id')!r}, this slot is {hardware_id!r}",
        )
    target = payload.get("target")
    if not isinstance(target, dict) or not {"path", "sha256", "length"} <= set(target):
        raise Refused("malformed_assignment", "assignment names no target path, sha256 and length")
    return payload


def check_target(
    payload: dict[str, Any],
    target: TargetFile | None,
    *,
    hardware_id: str,
    active: SlotImage | None,
    committed_counter: int,
) -> BundleInfo:
    """Steps 3–5, against what TUF verified for the assigned target path."""
    path = payload["target"]["path"]
    if target is None:
        raise Refused("not_in_repository", f"target {path} is not in the signed image repository")
    if (
        target.length != payload["target"]["length"]
        or target.hashes.get("sha256") != payload["target"]["sha256"]
    ):
        raise Refused(
            "director_mismatch",
            f"director's hash/length for {path} differ from the image repository's",
        )
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

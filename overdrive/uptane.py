"""Uptane's messages as Overdrive writes them: what the director says about each ECU, the
vehicle version manifest, and the director's time attestation.

Shared by the server (which signs director metadata and verifies manifests) and vehicles
(which verify director metadata and sign manifests), so that the two sides cannot disagree
about a field. Pure data and rules, no I/O.

* A vehicle's **director targets** (TUF ``targets`` metadata of its own director repository)
  list, per image to install, the image repository's target path, length and hashes, and in
  ``custom``: ``ecu_identifiers`` (ECU serial → ``{"hardware_id": …}``, aktualizr's shape),
  ``release_counter``, ``version``, ``campaign_id``, the campaign's ``maintenance_windows`` and
  ``install_order`` (the image's rank in the campaign's software set: lower installs first).
* The **vehicle version manifest** is signed by the primary and holds one **ECU version report**
  per ECU, each signed by that ECU's own key, echoing the manifest's nonce and carrying the
  ECU's own counter (both against replay) and any attack the ECU detected.
* A **time attestation** is the current time and the vehicle's nonce, signed by the director's
  timestamp key(s): the time a vehicle may trust for expiry checks (see docs/security.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tuf.api.metadata import TargetFile

from overdrive.errors import OverdriveError

VEHICLE_MANIFEST = "vehicle_version_manifest"
ECU_REPORT = "ecu_version_report"
TIME_ATTESTATION = "time_attestation"
#: Field of a vehicle's director targets naming the vehicle it is for: metadata signed for one
#: vehicle can then never be passed off to another.
VEHICLE_FIELD = "x-overdrive-vehicle-id"
#: Key of the ECU map inside a director target's ``custom``.
ECU_IDENTIFIERS = "ecu_identifiers"
#: The longest ``attacks_detected`` text an ECU report may carry.
MAX_ATTACK_TEXT = 500
#: ECU serials: one path segment, as hardware ids are.
_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class UptaneError(OverdriveError):
    """A director target, manifest or attestation is malformed."""


def check_serial(value: Any, where: str = "ECU serial") -> str:
    """``value`` if it is a valid ECU serial (letters, digits, ``. _ : -``; ≤ 128)."""
    if not isinstance(value, str) or not _SERIAL.fullmatch(value):
        raise UptaneError(
            f"invalid {where} {str(value)[:40]!r}: use letters, digits and . _ : - "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return value


@dataclass(frozen=True)
class DirectorEntry:
    """What the director says one ECU should run: an image repository target, exactly."""

    ecu_serial: str
    hardware_id: str
    path: str
    length: int
    hashes: dict[str, str]
    release_counter: int
    version: str
    campaign_id: str | None = None
    maintenance_windows: list[Any] = field(default_factory=list)
    #: Rank of this image in its software set (lower installs and trial-boots first).
    install_order: int = 0

    @property
    def sha256(self) -> str:
        return self.hashes["sha256"]


def director_target(entries: list[DirectorEntry]) -> TargetFile:
    """One director target for ``entries`` (ECUs that get the same image)."""
    first = entries[0]
    custom: dict[str, Any] = {
        ECU_IDENTIFIERS: {e.ecu_serial: {"hardware_id": e.hardware_id} for e in entries},
        "release_counter": first.release_counter,
        "version": first.version,
        "maintenance_windows": list(first.maintenance_windows),
        "install_order": first.install_order,
    }
    if first.campaign_id is not None:
        custom["campaign_id"] = first.campaign_id
    return TargetFile(first.length, dict(first.hashes), first.path, {"custom": custom})


def director_targets(entries: list[DirectorEntry]) -> dict[str, TargetFile]:
    """The director ``targets`` map for a vehicle: target path → target (ECUs grouped)."""
    by_path: dict[str, list[DirectorEntry]] = {}
    for entry in entries:
        by_path.setdefault(entry.path, []).append(entry)
    return {path: director_target(group) for path, group in sorted(by_path.items())}


def entries_for(targets: Mapping[str, TargetFile]) -> dict[str, DirectorEntry]:
    """ECU serial → what the director's (verified) ``targets`` say it should run.

    Raises :class:`UptaneError` for a target whose ``custom`` is malformed, or an ECU that two
    targets name (the director must be unambiguous; a vehicle refuses both)."""
    result: dict[str, DirectorEntry] = {}
    for path, target in targets.items():
        custom = target.custom
        ecus = custom.get(ECU_IDENTIFIERS) if isinstance(custom, dict) else None
        if not isinstance(ecus, dict) or not ecus:
            raise UptaneError(f"director target {path} names no ECU ({ECU_IDENTIFIERS})")
        counter = custom.get("release_counter")
        version = custom.get("version")
        if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
            raise UptaneError(f"director target {path} has no valid release_counter")
        if not isinstance(version, str) or not version:
            raise UptaneError(f"director target {path} has no version")
        campaign = custom.get("campaign_id")
        windows = custom.get("maintenance_windows", [])
        if campaign is not None and not isinstance(campaign, str):
            raise UptaneError(f"director target {path}: campaign_id must be a string")
        if not isinstance(windows, list):
            raise UptaneError(f"director target {path}: maintenance_windows must be a list")
        order = custom.get("install_order", 0)
        if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= 1000:
            raise UptaneError(f"director target {path}: install_order must be 0..1000")
        sha256 = target.hashes.get("sha256")
        if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
            raise UptaneError(f"director target {path} has no sha256")
        for serial, about in ecus.items():
            check_serial(serial, f"ECU serial in director target {path}")
            hardware = about.get("hardware_id") if isinstance(about, dict) else None
            if not isinstance(hardware, str) or not hardware:
                raise UptaneError(f"director target {path}: ECU {serial} has no hardware_id")
            if serial in result:
                raise UptaneError(f"ECU {serial} is named by two director targets")
            result[serial] = DirectorEntry(
                serial,
                hardware,
                path,
                target.length,
                dict(target.hashes),
                counter,
                version,
                campaign,
                windows,
                order,
            )
    return result


def installed_image(
    path: str | None, length: int, sha256: str, version: str, release_counter: int
) -> dict[str, Any]:
    """An ECU version report's ``installed_image``: what the ECU runs (its image's identity,
    and the image repository target it came from, ``None`` for a factory image)."""
    return {
        "filepath": path,
        "fileinfo": {"length": length, "hashes": {"sha256": sha256}},
        "version": version,
        "release_counter": release_counter,
    }


def ecu_report(
    *,
    ecu_serial: str,
    hardware_id: str,
    nonce: str,
    counter: int,
    image: dict[str, Any],
    attacks_detected: str = "",
    now: datetime | None = None,
) -> dict[str, Any]:
    """The payload of an ECU version report (to be signed by the ECU's own key)."""
    return {
        "_type": ECU_REPORT,
        "ecu_serial": ecu_serial,
        "hardware_id": hardware_id,
        "nonce": nonce,
        "counter": counter,
        "time": iso(now or datetime.now(UTC)),
        "installed_image": image,
        "attacks_detected": attacks_detected[:MAX_ATTACK_TEXT],
    }


def time_attestation(nonce: str, now: datetime) -> dict[str, Any]:
    """The payload of a time attestation (signed by the director's timestamp key)."""
    return {"_type": TIME_ATTESTATION, "nonce": nonce, "time": iso(now)}


def iso(moment: datetime) -> str:
    """``moment`` as ISO-8601 UTC with a ``Z``, to the second."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: Any, where: str) -> datetime:
    """An ISO-8601 time with a zone (``Z`` or an offset) as an aware datetime."""
    if not isinstance(value, str) or len(value) > 40:
        raise UptaneError(f"{where} must be an ISO-8601 time")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise UptaneError(f"{where} must be an ISO-8601 time, got {value[:40]!r}") from e
    if moment.tzinfo is None:
        raise UptaneError(f"{where} must name its time zone (e.g. a trailing Z)")
    return moment.astimezone(UTC)

"""Checking a vehicle version manifest: the primary's signature, and each ECU's own report.

The manifest (``vehicle_version_manifest``, see :mod:`overdrive.uptane`) is signed by the
vehicle's primary key. Each ECU version report in it must be signed by the key registered for
that ECU, name an ECU of this vehicle with its registered hardware id, echo the manifest's nonce
and carry a counter above the ECU's last accepted one: so the primary cannot forge a secondary's
report, nor replay an old one, and a report from another vehicle's ECU is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from securesystemslib.signer import Key

from overdrive.envelope import EnvelopeError, verify_envelope
from overdrive.server.errors import BadRequest, Conflict, Unauthorized
from overdrive.server.validation import MAX_INT32, field, identifier, text
from overdrive.server.vehicles import keys_of, vehicle_key_from_text
from overdrive.uptane import ECU_REPORT, MAX_ATTACK_TEXT, UptaneError, check_serial

#: ECUs one vehicle may have (and one manifest report).
MAX_ECUS = 64


@dataclass(frozen=True)
class EcuReport:
    """One ECU's verified version report."""

    serial: str
    hardware_id: str
    counter: int
    version: str
    sha256: str
    length: int
    release_counter: int
    attacks: str

    def image(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "release_counter": self.release_counter,
        }


def ecu_keys(vehicle_key: str, about: dict[str, Any]) -> dict[str, Key]:
    """The verification keys of one ECU: its own (``public_key``), else the vehicle's."""
    own = about.get("public_key")
    return keys_of(own) if own else vehicle_key_from_text(vehicle_key)


def check_reports(
    raw: Any,
    *,
    primary: Any,
    nonce: str,
    vehicle_key: str,
    ecus: dict[str, Any],
    counters: dict[str, Any],
) -> dict[str, EcuReport]:
    """The manifest's ``ecu_version_reports`` (serial → signed report), each checked, and its
    ``primary_ecu_serial`` (``primary``; optional) the vehicle's registered primary."""
    if not isinstance(raw, dict) or not raw:
        raise BadRequest("field 'signed.ecu_version_reports' must be an object of serial → report")
    if len(raw) > MAX_ECUS:
        raise BadRequest(f"a manifest may report at most {MAX_ECUS} ECUs, not {len(raw)}")
    reports = {}
    for serial, envelope in raw.items():
        try:
            check_serial(serial)
        except UptaneError as e:
            raise BadRequest(str(e)) from e
        about = ecus.get(serial)
        if not isinstance(about, dict):
            raise BadRequest(f"ECU {serial} is not registered to this vehicle")
        try:
            payload = verify_envelope(envelope, ecu_keys(vehicle_key, about), ECU_REPORT)
        except EnvelopeError as e:
            raise Unauthorized(f"ECU {serial}'s version report: {e}") from e
        reports[serial] = _report(serial, payload, about, nonce, counters.get(serial, 0))
    primaries = [s for s, about in ecus.items() if isinstance(about, dict) and about.get("primary")]
    if primary is not None and primary not in primaries:
        raise BadRequest("field 'signed.primary_ecu_serial' is not this vehicle's primary ECU")
    missing = [s for s in primaries if s not in reports]
    if missing:
        raise BadRequest(f"the manifest has no version report from the primary ECU {missing[0]}")
    return reports


def _report(
    serial: str, payload: dict[str, Any], about: dict[str, Any], nonce: str, last: Any
) -> EcuReport:
    where = f"ecu_version_reports.{serial}.signed."
    if payload.get("ecu_serial") != serial:
        raise Unauthorized(f"ECU {serial}'s version report is signed for another ECU")
    hardware_id = identifier(field(payload, "hardware_id", str, where=where), "hardware id")
    if hardware_id != about.get("hardware_id"):
        raise BadRequest(
            f"ECU {serial} reports hardware id {hardware_id}, registered as {about.get('hardware_id')}"
        )
    if payload.get("nonce") != nonce:
        raise Conflict(
            f"replayed version report: ECU {serial}'s does not echo this manifest's nonce"
        )
    counter = field(payload, "counter", int, where=where)
    if not 0 < counter <= MAX_INT32:
        raise BadRequest(f"field '{where}counter' must be 1..{MAX_INT32}")
    if isinstance(last, int) and counter <= last:
        raise Conflict(
            f"replayed version report: ECU {serial}'s counter {counter} is not above {last}"
        )
    image = field(payload, "installed_image", dict, where=where)
    info = field(image, "fileinfo", dict, where=f"{where}installed_image.")
    hashes = field(info, "hashes", dict, where=f"{where}installed_image.fileinfo.")
    sha = field(hashes, "sha256", str, where=f"{where}installed_image.fileinfo.hashes.")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise BadRequest(f"ECU {serial}'s installed image sha256 must be 64 hex characters")
    length = field(info, "length", int, where=f"{where}installed_image.fileinfo.")
    if not 0 <= length < 1 << 50:
        raise BadRequest(f"ECU {serial}'s installed image length is out of range")
    version = field(image, "version", str, where=f"{where}installed_image.")
    if not 0 < len(version) <= 128:
        raise BadRequest(f"ECU {serial}'s installed version must be 1..128 characters")
    text(version, f"{where}installed_image.version", limit=128)
    release_counter = field(
        image, "release_counter", int, where=f"{where}installed_image.", required=False, default=0
    )
    if not 0 <= release_counter <= MAX_INT32:
        raise BadRequest(f"ECU {serial}'s release_counter must be 0..{MAX_INT32}")
    attacks = field(payload, "attacks_detected", str, where=where, required=False, default="")
    text(attacks, f"{where}attacks_detected", limit=MAX_ATTACK_TEXT)
    return EcuReport(serial, hardware_id, counter, version, sha, length, release_counter, attacks)


def images_of(reports: dict[str, EcuReport]) -> dict[str, dict[str, Any]]:
    """Hardware id → installed image, as the vehicle's installed images are stored."""
    return {r.hardware_id: r.image() for r in reports.values()}


def ecu_status(reports: dict[str, EcuReport], at: datetime) -> dict[str, Any]:
    """What the vehicle's stored status says about its ECUs: attacks they detected."""
    attacks = {s: r.attacks for s, r in reports.items() if r.attacks}
    return {"attacks_detected": attacks, "attacks_reported_at": at.isoformat()} if attacks else {}

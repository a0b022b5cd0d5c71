"""Checking a vehicle version manifest: the primary's signature, and each ECU's own report.

The manifest (``vehicle_version_manifest``, see :mod:`overdrive.uptane`) is signed by the
vehicle's primary key. Each ECU version report in it must be signed by the key registered for
that ECU, name an ECU of this vehicle with its registered hardware id, echo the manifest's nonce
and carry a counter above the ECU's last accepted one: so the primary cannot forge a secondary's
report, nor replay an old one, and a report from another vehicle's ECU is refused.

A report under a serial this vehicle has no ECU of (a part swapped without an
``ecus/<serial>/replace``, a stray process on the car's network, another vehicle's ECU) is
*ignored*, not the whole manifest: nothing of it is stored but the fact that it came (the
vehicle's ``status.unknown_ecus``, and a metric), so one stray report cannot wedge the vehicle.

Verification is the poll's biggest CPU cost (one ed25519 verification per report; a car has
many ECUs), so the reports are checked without repeating work: each report's canonical JSON is
the plain ``json.dumps`` of its payload (the manifest holding it was canonicalised already, so
it has no float and no key that is not a string; only escapes need the reference encoder:
``vetted`` in :func:`overdrive.envelope.canonical`), and keys parse their public key once
(:class:`overdrive.server.vehicles.Ed25519Key`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from securesystemslib.signer import Key

from overdrive.envelope import EnvelopeError, verify_envelope
from overdrive.server.errors import BadRequest, Conflict, Unauthorized
from overdrive.server.validation import ID_PATTERN, MAX_INT32, identifier, text
from overdrive.server.validation import field as field_of
from overdrive.server.vehicles import iso, keys_of
from overdrive.uptane import ECU_REPORT, MAX_ATTACK_TEXT, UptaneError, check_serial

#: ECUs one vehicle may have (and one manifest report).
MAX_ECUS = 64
#: Unknown serials a vehicle's status remembers (the most recently seen).
MAX_UNKNOWN_ECUS = 16
_SHA256 = re.compile(r"[0-9a-f]{64}")


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


@dataclass(frozen=True)
class Reports:
    """A manifest's ECU version reports: the verified ones of this vehicle's ECUs (serial →
    report), and the serials it has no ECU of (→ the hardware id the report claims, unverified,
    or None), whose reports were ignored."""

    known: dict[str, EcuReport]
    unknown: dict[str, str | None] = field(default_factory=dict)


def ecu_keys(vehicle_keys: dict[str, Key], about: dict[str, Any]) -> dict[str, Key]:
    """The verification keys of one ECU: its own (``public_key``), else the vehicle's."""
    own = about.get("public_key")
    return keys_of(own) if own else vehicle_keys


def check_reports(
    raw: Any,
    *,
    primary: Any,
    nonce: str,
    vehicle_keys: dict[str, Key],
    ecus: dict[str, Any],
    counters: dict[str, Any],
) -> Reports:
    """The manifest's ``ecu_version_reports`` (serial → signed report), each checked, and its
    ``primary_ecu_serial`` (``primary``; optional) the vehicle's registered primary.

    ``raw`` must come from a manifest whose signature was verified (so canonicalised):
    see the module docstring. ``vehicle_keys`` are the vehicle's (the primary's) keys."""
    if not isinstance(raw, dict) or not raw:
        raise BadRequest("field 'signed.ecu_version_reports' must be an object of serial → report")
    if len(raw) > MAX_ECUS:
        raise BadRequest(f"a manifest may report at most {MAX_ECUS} ECUs, not {len(raw)}")
    known: dict[str, EcuReport] = {}
    unknown: dict[str, str | None] = {}
    for serial, envelope in raw.items():
        try:
            check_serial(serial)
        except UptaneError as e:
            raise BadRequest(str(e)) from e
        about = ecus.get(serial)
        if not isinstance(about, dict):
            unknown[serial] = _claimed_hardware_id(envelope)
            continue
        try:
            payload = verify_report(envelope, ecu_keys(vehicle_keys, about))
        except EnvelopeError as e:
            raise Unauthorized(f"ECU {serial}'s version report: {e}") from e
        known[serial] = _report(serial, payload, about, nonce, counters.get(serial, 0))
    primaries = [s for s, about in ecus.items() if isinstance(about, dict) and about.get("primary")]
    if not primaries:
        raise BadRequest("this vehicle has no registered primary ECU: register it again")
    if primary is not None and primary not in primaries:
        raise BadRequest("field 'signed.primary_ecu_serial' is not this vehicle's primary ECU")
    missing = [s for s in primaries if s not in known]
    if missing:
        raise BadRequest(f"the manifest has no version report from the primary ECU {missing[0]}")
    return Reports(known, unknown)


def _claimed_hardware_id(envelope: Any) -> str | None:
    """The hardware id an unknown ECU's (unverified) report names, if it is a valid one."""
    payload = envelope.get("signed") if isinstance(envelope, dict) else None
    claimed = payload.get("hardware_id") if isinstance(payload, dict) else None
    return claimed if isinstance(claimed, str) and ID_PATTERN.fullmatch(claimed) else None


def verify_report(envelope: Any, keys: Mapping[str, Key]) -> dict[str, Any]:
    """The payload of a signed ECU version report (inside a manifest canonicalised already), if
    one of ``keys`` signed it."""
    return verify_envelope(envelope, keys, ECU_REPORT, vetted=True)


def _report(
    serial: str, payload: dict[str, Any], about: dict[str, Any], nonce: str, last: Any
) -> EcuReport:
    where = f"ecu_version_reports.{serial}.signed."
    if payload.get("ecu_serial") != serial:
        raise Unauthorized(f"ECU {serial}'s version report is signed for another ECU")
    hardware_id = identifier(field_of(payload, "hardware_id", str, where=where), "hardware id")
    if hardware_id != about.get("hardware_id"):
        raise BadRequest(
            f"ECU {serial} reports hardware id {hardware_id}, registered as {about.get('hardware_id')}"
        )
    if payload.get("nonce") != nonce:
        raise Conflict(
            f"replayed version report: ECU {serial}'s does not echo this manifest's nonce"
        )
    counter = field_of(payload, "counter", int, where=where)
    if not 0 < counter <= MAX_INT32:
        raise BadRequest(f"field '{where}counter' must be 1..{MAX_INT32}")
    if isinstance(last, int) and counter <= last:
        raise Conflict(
            f"replayed version report: ECU {serial}'s counter {counter} is not above {last}"
        )
    image = field_of(payload, "installed_image", dict, where=where)
    info = field_of(image, "fileinfo", dict, where=f"{where}installed_image.")
    hashes = field_of(info, "hashes", dict, where=f"{where}installed_image.fileinfo.")
    sha = field_of(hashes, "sha256", str, where=f"{where}installed_image.fileinfo.hashes.")
    if not _SHA256.fullmatch(sha):
        raise BadRequest(f"ECU {serial}'s installed image sha256 must be 64 hex characters")
    length = field_of(info, "length", int, where=f"{where}installed_image.fileinfo.")
    if not 0 <= length < 1 << 50:
        raise BadRequest(f"ECU {serial}'s installed image length is out of range")
    version = field_of(image, "version", str, where=f"{where}installed_image.")
    if not 0 < len(version) <= 128:
        raise BadRequest(f"ECU {serial}'s installed version must be 1..128 characters")
    text(version, f"{where}installed_image.version", limit=128)
    release_counter = field_of(
        image, "release_counter", int, where=f"{where}installed_image.", required=False, default=0
    )
    if not 0 <= release_counter <= MAX_INT32:
        raise BadRequest(f"ECU {serial}'s release_counter must be 0..{MAX_INT32}")
    attacks = field_of(payload, "attacks_detected", str, where=where, required=False, default="")
    if attacks:
        text(attacks, f"{where}attacks_detected", limit=MAX_ATTACK_TEXT)
    return EcuReport(serial, hardware_id, counter, version, sha, length, release_counter, attacks)


def images_of(reports: Reports) -> dict[str, dict[str, Any]]:
    """ECU serial → the image it reports, as the vehicle's installed images are stored."""
    return {s: {"hw": r.hardware_id, **r.image()} for s, r in reports.known.items()}


def ecu_status(
    reports: Reports,
    ecus: dict[str, Any],
    stored: dict[str, Any],
    last_seen: datetime | None,
    at: datetime,
) -> dict[str, Any]:
    """What the vehicle's stored status says about its ECUs after this manifest (``stored``:
    the status before it; ``last_seen``: when the vehicle last polled before):

    * ``attacks_detected`` (serial → text) and ``attacks_reported_at``: what its ECUs detected;
    * ``unreported_ecus``: each registered ECU the manifest has no report of → the time of its
      last report (None: never); an ECU not listed reported in this manifest, at ``at``;
    * ``unknown_ecus``: serials that reported without being an ECU of the vehicle → the
      hardware id their report claims (unverified), when first and last seen (at most
      :data:`MAX_UNKNOWN_ECUS`, the most recently seen).

    Each key is there only when it has something to say: the common poll writes none."""
    now = iso(at)
    status: dict[str, Any] = {}
    attacks = {s: r.attacks for s, r in reports.known.items() if r.attacks}
    if attacks:
        status["attacks_detected"] = attacks
        status["attacks_reported_at"] = at.isoformat()
    absent = [s for s in ecus if s not in reports.known]
    if absent:
        before = _mapping(stored.get("unreported_ecus"))
        previous = iso(last_seen) if last_seen is not None else None
        # Missing before too: still its old time; else it reported in the last manifest.
        status["unreported_ecus"] = {s: before.get(s, previous) for s in absent}
    seen = {
        s: v
        for s, v in _mapping(stored.get("unknown_ecus")).items()
        if s not in ecus and isinstance(v, dict)
    }
    for serial, hardware_id in reports.unknown.items():
        first = seen.get(serial, {}).get("first_seen", now)
        seen[serial] = {"hardware_id": hardware_id, "first_seen": first, "last_seen": now}
    if seen:
        newest = sorted(seen, key=lambda s: (str(seen[s].get("last_seen")), s), reverse=True)
        status["unknown_ecus"] = {s: seen[s] for s in sorted(newest[:MAX_UNKNOWN_ECUS])}
    return status


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}

"""Test helpers: a simulated vehicle speaking the vehicle API with signed messages."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from securesystemslib.signer import CryptoSigner

from overdrive.envelope import EVENTS, sign_envelope
from overdrive.uptane import VEHICLE_MANIFEST, ecu_report, installed_image


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def public_key_of(signer: CryptoSigner) -> dict[str, Any]:
    key = signer.public_key
    return {"keyid": key.keyid, **key.to_dict()}


@dataclass
class SimEcu:
    """A secondary ECU of a :class:`SimVehicle`: its own key, counter and image."""

    serial: str
    hardware_id: str
    image: dict[str, Any]
    signer: CryptoSigner = field(default_factory=CryptoSigner.generate_ed25519)
    counter: int = 0
    kind: str | None = "secondary"

    def report(self, nonce: str, signer: CryptoSigner | None = None) -> dict[str, Any]:
        """Its next signed ECU version report (by its own key unless ``signer``)."""
        self.counter += 1
        payload = ecu_report(
            ecu_serial=self.serial,
            hardware_id=self.hardware_id,
            nonce=nonce,
            counter=self.counter,
            image=image_report(self.image),
        )
        return sign_envelope(payload, signer or self.signer)


def image_report(image: dict[str, Any]) -> dict[str, Any]:
    return installed_image(
        None,
        image.get("length", 0),
        image.get("sha256", "0" * 64),
        image.get("version", "0"),
        image.get("release_counter", 0),
    )


@dataclass
class SimVehicle:
    """A vehicle's identity and counters; ``send`` is any callable(method, path, json) → (status, body).

    ``secondaries``: its other ECUs (each with a key of its own), registered and reported
    with the primary."""

    vehicle_id: str
    hardware_id: str = "ecu-a"
    image: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    signer: CryptoSigner = field(default_factory=CryptoSigner.generate_ed25519)
    counter: int = 0
    secondaries: list[SimEcu] = field(default_factory=list)
    #: The primary ECU's serial (default ``<vehicle id>-primary``).
    primary_serial: str = ""

    @property
    def serial(self) -> str:
        return self.primary_serial or f"{self.vehicle_id}-primary"

    def public_key(self) -> dict[str, Any]:
        key = self.signer.public_key
        return {"keyid": key.keyid, **key.to_dict()}

    def registration(self, token: str) -> dict[str, Any]:
        ecus: dict[str, Any] = {self.serial: {"hardware_id": self.hardware_id, "primary": True}}
        images = {self.hardware_id: self.image}
        for ecu in self.secondaries:
            ecus[ecu.serial] = {
                "hardware_id": ecu.hardware_id,
                "primary": False,
                "public_key": public_key_of(ecu.signer),
                **({"kind": ecu.kind} if ecu.kind else {}),
            }
            images.setdefault(ecu.hardware_id, ecu.image)
        return {
            "enroll_token": token,
            "vehicle_id": self.vehicle_id,
            "public_key": self.public_key(),
            "attributes": self.attributes,
            "ecus": ecus,
            "images": images,
        }

    def manifest(
        self,
        nonce: str | None = None,
        *,
        skip: tuple[str, ...] = (),
        reports: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A signed vehicle version manifest with the report of each of this vehicle's ECUs
        but those in ``skip`` (``images`` in ``extra``: hardware id → image, reported by the
        primary instead of :attr:`image`), and ``reports`` (serial → signed report) added."""
        self.counter += 1
        nonce = nonce or uuid.uuid4().hex
        images = extra.pop("images", None) or {self.hardware_id: self.image}
        image = images.get(self.hardware_id, self.image)
        report = ecu_report(
            ecu_serial=self.serial,
            hardware_id=self.hardware_id,
            nonce=nonce,
            counter=self.counter,
            image=image_report(image),
        )
        signed = {self.serial: sign_envelope(report, self.signer)}
        for ecu in self.secondaries:
            if ecu.serial not in skip:
                signed[ecu.serial] = ecu.report(nonce)
        payload = {
            "_type": VEHICLE_MANIFEST,
            "vehicle_id": self.vehicle_id,
            "primary_ecu_serial": self.serial,
            "counter": self.counter,
            "timestamp": now_iso(),
            "nonce": nonce,
            "ecu_version_reports": {**signed, **(reports or {})},
            **extra,
        }
        return sign_envelope(payload, self.signer)

    def events(self, *events: dict[str, Any]) -> dict[str, Any]:
        batch = []
        for event in events:
            batch.append({"id": event.get("id", uuid.uuid4().hex), "at": now_iso(), **event})
        return sign_envelope(
            {"_type": EVENTS, "vehicle_id": self.vehicle_id, "events": batch}, self.signer
        )


def as_json(data: Any) -> bytes:
    return json.dumps(data).encode()

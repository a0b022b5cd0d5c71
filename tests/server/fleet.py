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


@dataclass
class SimVehicle:
    """A vehicle's identity and counters; ``send`` is any callable(method, path, json) → (status, body)."""

    vehicle_id: str
    hardware_id: str = "ecu-a"
    image: dict[str, Any] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    signer: CryptoSigner = field(default_factory=CryptoSigner.generate_ed25519)
    counter: int = 0

    @property
    def serial(self) -> str:
        return f"{self.vehicle_id}-primary"

    def public_key(self) -> dict[str, Any]:
        key = self.signer.public_key
        return {"keyid": key.keyid, **key.to_dict()}

    def registration(self, token: str) -> dict[str, Any]:
        return {
            "enroll_token": token,
            "vehicle_id": self.vehicle_id,
            "public_key": self.public_key(),
            "attributes": self.attributes,
            "ecus": {self.serial: {"hardware_id": self.hardware_id, "primary": True}},
            "images": {self.hardware_id: self.image},
        }

    def manifest(self, nonce: str | None = None, **extra: Any) -> dict[str, Any]:
        """A signed vehicle version manifest with this vehicle's one ECU report (``images``
        in ``extra``: hardware id → image, reported instead of :attr:`image`)."""
        self.counter += 1
        nonce = nonce or uuid.uuid4().hex
        images = extra.pop("images", None) or {self.hardware_id: self.image}
        image = images.get(self.hardware_id, self.image)
        report = ecu_report(
            ecu_serial=self.serial,
            hardware_id=self.hardware_id,
            nonce=nonce,
            counter=self.counter,
            image=installed_image(
                None,
                image.get("length", 0),
                image.get("sha256", "0" * 64),
                image.get("version", "0"),
                image.get("release_counter", 0),
            ),
        )
        payload = {
            "_type": VEHICLE_MANIFEST,
            "vehicle_id": self.vehicle_id,
            "primary_ecu_serial": self.serial,
            "counter": self.counter,
            "timestamp": now_iso(),
            "nonce": nonce,
            "ecu_version_reports": {self.serial: sign_envelope(report, self.signer)},
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

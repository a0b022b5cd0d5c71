"""Test helpers: a simulated vehicle speaking the vehicle API with signed messages."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from securesystemslib.signer import CryptoSigner

from overdrive.envelope import EVENTS, MANIFEST, sign_envelope


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

    def public_key(self) -> dict[str, Any]:
        key = self.signer.public_key
        return {"keyid": key.keyid, **key.to_dict()}

    def registration(self, token: str) -> dict[str, Any]:
        return {
            "enroll_token": token,
            "vehicle_id": self.vehicle_id,
            "public_key": self.public_key(),
            "attributes": self.attributes,
            "images": {self.hardware_id: self.image},
        }

    def manifest(self, nonce: str | None = None, **extra: Any) -> dict[str, Any]:
        self.counter += 1
        payload = {
            "_type": MANIFEST,
            "vehicle_id": self.vehicle_id,
            "counter": self.counter,
            "timestamp": now_iso(),
            "nonce": nonce or uuid.uuid4().hex,
            "images": {self.hardware_id: self.image},
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

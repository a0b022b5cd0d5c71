"""Talking to the rollout server: register, poll with a signed manifest, report signed events."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from securesystemslib.signer import Signer

from client.errors import ServerError
from overdrive.envelope import EVENTS, sign_envelope


class ServerApi:
    def __init__(
        self, base_url: str, vehicle_id: str, signer: Signer | None, timeout: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.vehicle_id = vehicle_id
        self.signer = signer
        self.timeout = timeout

    def _post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}/api/v1{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "overdrive-vehicle"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]["message"]
            except Exception:
                message = str(e.reason)
            raise ServerError(
                f"server answered {e.code} to {path}: {message}",
            ) from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ServerError(
                f"cannot reach server {self.base_url}: {getattr(e, 'reason', e)}"
            ) from e

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._post("/vehicles/register", body)
        return result

    def poll(self, manifest: dict[str, Any]) -> dict[str, Any]:
        assert self.signer is not None
        result: dict[str, Any] = self._post(
            f"/vehicles/{self.vehicle_id}/poll", sign_envelope(manifest, self.signer)
        )
        return result

    def send_events(self, events: list[dict[str, Any]]) -> None:
        assert self.signer is not None
        payload = {"_type": EVENTS, "vehicle_id": self.vehicle_id, "events": events}
        self._post(f"/vehicles/{self.vehicle_id}/events", sign_envelope(payload, self.signer))

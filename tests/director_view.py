"""Test helper: read a vehicle's director repository as a vehicle would (signatures checked
against the director's root with python-tuf's Metadata API), and turn what its targets list
into the assignment-like dicts older tests compare (campaign, hardware id, target)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from overdrive.uptane import VEHICLE_FIELD, entries_for

#: GET a path below the server (``/api/v1/director/...``) → (status, body bytes).
Get = Callable[[str], tuple[int, bytes]]


def director_targets(get: Get, vehicle_id: str, root: bytes | Path) -> Metadata[Targets] | None:
    """The vehicle's current director targets, verified (None: the server has none for it)."""
    trusted = Metadata[Root].from_bytes(root.read_bytes() if isinstance(root, Path) else root)
    base = f"/api/v1/director/{vehicle_id}/metadata"
    # Follow root rotations as a TUF client does.
    while True:
        status, body = get(f"{base}/{trusted.signed.version + 1}.root.json")
        if status != 200:
            break
        newer = Metadata[Root].from_bytes(body)
        trusted.signed.verify_delegate("root", newer.signed_bytes, newer.signatures)
        newer.signed.verify_delegate("root", newer.signed_bytes, newer.signatures)
        trusted = newer
    status, body = get(f"{base}/timestamp.json")
    if status == 404:
        return None
    assert status == 200, (status, body[:200])
    timestamp = Metadata[Timestamp].from_bytes(body)
    trusted.signed.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
    version = timestamp.signed.snapshot_meta.version
    status, body = get(f"{base}/{version}.snapshot.json")
    assert status == 200, (status, body[:200])
    snapshot = Metadata[Snapshot].from_bytes(body)
    trusted.signed.verify_delegate("snapshot", snapshot.signed_bytes, snapshot.signatures)
    targets_version = snapshot.signed.meta["targets.json"].version
    status, body = get(f"{base}/{targets_version}.targets.json")
    assert status == 200, (status, body[:200])
    targets = Metadata[Targets].from_bytes(body)
    trusted.signed.verify_delegate("targets", targets.signed_bytes, targets.signatures)
    assert targets.signed.unrecognized_fields.get(VEHICLE_FIELD) == vehicle_id
    return targets


def assignments(get: Get, vehicle_id: str, root: bytes | Path) -> list[dict[str, Any]]:
    """What the vehicle's director targets assign, one dict per ECU: ``vehicle_id``,
    ``ecu_serial``, ``campaign_id``, ``hardware_id``, ``version``, ``release_counter``,
    ``target`` (path, sha256, length) and ``maintenance_windows``."""
    targets = director_targets(get, vehicle_id, root)
    if targets is None:
        return []
    return [
        {
            "vehicle_id": vehicle_id,
            "ecu_serial": entry.ecu_serial,
            "campaign_id": entry.campaign_id,
            "hardware_id": entry.hardware_id,
            "version": entry.version,
            "release_counter": entry.release_counter,
            "target": {"path": entry.path, "sha256": entry.sha256, "length": entry.length},
            "maintenance_windows": entry.maintenance_windows,
        }
        for entry in entries_for(targets.signed.targets).values()
    ]


def flask_get(http: Any) -> Get:
    """A :data:`Get` over a Flask test client."""

    def get(path: str) -> tuple[int, bytes]:
        response = http.get(path)
        return response.status_code, response.data

    return get


def http_get(base_url: str) -> Get:
    """A :data:`Get` over real HTTP to ``base_url``."""
    import urllib.error
    import urllib.request

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(base_url + path, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    return get

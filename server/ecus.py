"""Replacing an ECU: a workshop swaps a part (new serial, new key, same hardware id).

An operator action (``POST /api/v1/vehicles/<vid>/ecus/<serial>/replace``, ``overdrive fleet
replace-ecu``) with an audit entry, never something a vehicle can do by itself: a report under a
serial the vehicle has no ECU of is ignored and recorded (``status.unknown_ecus``, see
:mod:`overdrive.server.manifest`), so a swapped part is not trusted until an operator says so.

In one transaction, with the vehicle's row locked:

* the ECU's entry moves to the new serial (hardware id, primary flag and kind kept) with the new
  part's key; for the primary, the new key becomes the vehicle's key (it signs manifests and
  events), and the manifest counter starts again (the new unit counts from 1);
* the installed image moves to the new serial (what the part runs is unknown until it reports;
  its first report replaces it), so campaigns keep judging the vehicle by it;
* the old serial's report counter is dropped and the new serial starts from none: the counter
  guards reports signed by one key, and a new part counts its own reports from 1 (carrying the
  old part's counter over would refuse every report of the new one, and so every manifest);
* the old serial's reports are unknown from then on (ignored, recorded in ``unknown_ecus``);
  the new serial is removed from ``unknown_ecus`` and listed as not reported yet.

The vehicle's director targets follow at its next poll (they name ECU serials).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select, update

from overdrive.server.audit import record
from overdrive.server.context import ServerContext
from overdrive.server.errors import BadRequest, Conflict, NotFoundError
from overdrive.server.fleet import vehicle_dict
from overdrive.server.models import InstalledImage, Membership, Vehicle
from overdrive.server.validation import field, identifier
from overdrive.server.vehicles import ed25519_key, public_key_text


def replace_ecu(
    ctx: ServerContext, vehicle_id: str, serial: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Replace ECU ``serial`` of ``vehicle_id`` by the part ``body`` describes: ``new_serial``,
    ``public_key`` (a TUF ed25519 key object with its key id) and, optionally, ``hardware_id``
    (which must be the old ECU's). Returns the vehicle as ``GET /vehicles/<id>`` shows it."""
    new_serial = identifier(field(body, "new_serial", str), "ECU serial")
    key = ed25519_key(field(body, "public_key", dict), "public_key")
    claimed = field(body, "hardware_id", str, required=False)
    with ctx.transaction() as session:
        vehicle = session.get(Vehicle, vehicle_id, with_for_update=True)
        if vehicle is None:
            raise NotFoundError(f"unknown vehicle {vehicle_id[:128]}")
        ecus = dict(vehicle.ecus or {})
        old = ecus.get(serial)
        if not isinstance(old, dict):
            raise NotFoundError(f"vehicle {vehicle_id} has no ECU {serial[:128]}")
        hardware_id = old.get("hardware_id")
        if claimed is not None and claimed != hardware_id:
            raise BadRequest(
                f"ECU {serial} is a {hardware_id}; its replacement must be one too, "
                f"not {identifier(claimed, 'hardware id')}"
            )
        if new_serial == serial or new_serial in ecus:
            raise Conflict(f"vehicle {vehicle_id} already has an ECU {new_serial}")
        primary = bool(old.get("primary"))
        entry = {k: v for k, v in old.items() if k != "public_key"}
        if primary:
            vehicle.public_key = public_key_text(key)
            vehicle.manifest_counter = 0
        else:
            entry["public_key"] = json.loads(public_key_text(key))
        # (in the same place: the software set keeps its order)
        vehicle.ecus = {
            (new_serial if s == serial else s): (entry if s == serial else about)
            for s, about in ecus.items()
        }
        vehicle.ecu_counters = {
            s: c for s, c in (vehicle.ecu_counters or {}).items() if s != serial
        }
        vehicle.status = _status_after(vehicle.status or {}, serial, new_serial)
        moved = session.execute(
            update(InstalledImage)
            .where(InstalledImage.vehicle_id == vehicle_id, InstalledImage.ecu_serial == serial)
            .values(ecu_serial=new_serial)
        )
        record(
            session,
            "vehicle.replace_ecu",
            f"vehicle:{vehicle_id}",
            old_serial=serial,
            new_serial=new_serial,
            hardware_id=hardware_id,
            primary=primary,
            keyid=key.keyid,
            image_moved=bool(moved.rowcount),  # type: ignore[attr-defined]
        )
        session.flush()
        images = list(
            session.scalars(select(InstalledImage).where(InstalledImage.vehicle_id == vehicle_id))
        )
        memberships = list(
            session.scalars(select(Membership).where(Membership.vehicle_id == vehicle_id))
        )
        return {**vehicle_dict(vehicle, images), "campaigns": membership_dicts(memberships)}


def _status_after(status: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The vehicle's status with ECU ``old`` replaced by ``new``: the old one's attacks go, the
    new one is known (out of ``unknown_ecus``) and has not reported yet."""
    result = dict(status)
    attacks = result.get("attacks_detected")
    if isinstance(attacks, dict) and old in attacks:
        result["attacks_detected"] = {s: t for s, t in attacks.items() if s != old}
        if not result["attacks_detected"]:
            result.pop("attacks_detected")
            result.pop("attacks_reported_at", None)
    unknown = result.get("unknown_ecus")
    if isinstance(unknown, dict) and new in unknown:
        result["unknown_ecus"] = {s: v for s, v in unknown.items() if s != new}
        if not result["unknown_ecus"]:
            result.pop("unknown_ecus")
    unreported = result.get("unreported_ecus")
    before = unreported if isinstance(unreported, dict) else {}
    result["unreported_ecus"] = {**{s: t for s, t in before.items() if s != old}, new: None}
    return result


def membership_dicts(memberships: list[Membership]) -> list[dict[str, Any]]:
    """A vehicle's campaign memberships as ``GET /vehicles/<id>`` lists them."""
    return [
        {
            "campaign_id": m.campaign_id,
            "hardware_id": m.hardware_id,
            "admitted": m.admitted,
            "status": m.status,
            "reason": m.reason,
        }
        for m in memberships
    ]

"""The fleet as operators list it: vehicles filtered by hardware id, installed version, model,
region, any attribute and campaign status; one vehicle's events. Read-only queries the API
(``GET /api/v1/vehicles``, ``GET /api/v1/vehicles/{id}/events``) and ``overdrive fleet`` share.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session, aliased

from overdrive.server.errors import BadRequest, NotFoundError
from overdrive.server.models import (
    EVENT_ORDER,
    MEMBERSHIP_STATUSES,
    Event,
    InstalledImage,
    Membership,
    Vehicle,
)
from overdrive.server.vehicles import iso

FILTERS = ("hardware_id", "version", "model", "region", "campaign", "campaign_status", "search")
"""Query parameters of ``GET /vehicles`` besides ``attr.NAME``, ``sort``, ``limit``, ``offset``."""
SORTS = {
    "id": Vehicle.id,
    "last_seen": Vehicle.last_seen_at,
    "registered": Vehicle.registered_at,
    "model": Vehicle.model,
    "region": Vehicle.region,
}
MAX_FILTER = 200
_ATTRIBUTE = re.compile(r"attr\.([A-Za-z0-9_.-]{1,64})")


def image_of(vehicle_id: Any, hardware_id: Any) -> ColumnElement[bool]:
    """Join condition for ``InstalledImage``: of the vehicle's ECUs of ``hardware_id``, the one
    furthest behind (lowest release counter, then serial), so that a vehicle with several ECUs
    of one hardware id is still one row."""
    other = aliased(InstalledImage)
    serial = (
        select(other.ecu_serial)
        .where(other.vehicle_id == vehicle_id, other.hardware_id == hardware_id)
        .order_by(other.release_counter, other.version, other.ecu_serial)
        .limit(1)
        .correlate_except(other)
        .scalar_subquery()
    )
    condition: ColumnElement[bool] = (InstalledImage.vehicle_id == vehicle_id) & (
        InstalledImage.ecu_serial == serial
    )
    return condition


def parse_filters(args: Mapping[str, str]) -> dict[str, str]:
    """The fleet filters of a query string, checked: unknown names and bad values are a 400."""
    filters: dict[str, str] = {}
    for key, value in args.items():
        if key in ("limit", "offset"):
            continue
        if key not in (*FILTERS, "sort") and not _ATTRIBUTE.fullmatch(key):
            known = ", ".join((*FILTERS, "attr.NAME", "sort", "limit", "offset"))
            raise BadRequest(f"unknown filter {key[:64]!r}; known: {known}")
        if not value:
            continue
        if len(value) > MAX_FILTER or any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise BadRequest(f"filter {key!r} must be one line of at most {MAX_FILTER} characters")
        filters[key] = value
    sort = filters.get("sort", "id").removeprefix("-")
    if sort not in SORTS:
        raise BadRequest(f"sort must be one of {', '.join(SORTS)} (prefix '-' to reverse)")
    status = filters.get("campaign_status")
    if status is not None and status not in MEMBERSHIP_STATUSES:
        raise BadRequest(f"campaign_status must be one of {', '.join(MEMBERSHIP_STATUSES)}")
    return filters


def vehicle_query(filters: Mapping[str, str]) -> Select[Vehicle]:
    """Vehicles matching every filter (an installed-version filter applies to the hardware id
    filter when both are given, else to any hardware id)."""
    query = select(Vehicle)
    if "model" in filters:
        query = query.where(Vehicle.model == filters["model"])
    if "region" in filters:
        query = query.where(Vehicle.region == filters["region"])
    if "search" in filters:
        query = query.where(Vehicle.id.contains(filters["search"], autoescape=True))
    if "hardware_id" in filters or "version" in filters:
        images = select(InstalledImage.vehicle_id)
        if "hardware_id" in filters:
            images = images.where(InstalledImage.hardware_id == filters["hardware_id"])
        if "version" in filters:
            images = images.where(InstalledImage.version == filters["version"])
        query = query.where(Vehicle.id.in_(images))
    if "campaign" in filters or "campaign_status" in filters:
        members = select(Membership.vehicle_id)
        if "campaign" in filters:
            members = members.where(Membership.campaign_id.startswith(filters["campaign"]))
        else:
            members = members.where(Membership.active.is_(True))
        if "campaign_status" in filters:
            members = members.where(Membership.status == filters["campaign_status"])
        query = query.where(Vehicle.id.in_(members))
    for key, value in filters.items():
        match = _ATTRIBUTE.fullmatch(key)
        if match:
            query = query.where(Vehicle.attributes[match.group(1)].as_string() == value)
    return query


def list_vehicles(
    session: Session, filters: Mapping[str, str], *, limit: int, offset: int
) -> dict[str, Any]:
    """One page of the filtered fleet, sorted (``sort=-last_seen``: most recent first)."""
    query = vehicle_query(filters)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    sort = filters.get("sort", "id")
    column = SORTS[sort.removeprefix("-")]
    order = column.desc() if sort.startswith("-") else column.asc()
    rows = list(session.scalars(query.order_by(order, Vehicle.id).limit(limit).offset(offset)))
    images: dict[str, list[InstalledImage]] = {}
    if rows:
        for image in session.scalars(
            select(InstalledImage).where(InstalledImage.vehicle_id.in_([v.id for v in rows]))
        ):
            images.setdefault(image.vehicle_id, []).append(image)
    return {
        "items": [vehicle_dict(v, images.get(v.id, [])) for v in rows],
        "total": total,
        "next_offset": offset + limit if offset + limit < total else None,
    }


def vehicle_dict(vehicle: Vehicle, images: list[InstalledImage]) -> dict[str, Any]:
    """A vehicle as the API shows it: its software set (``ecus``, per ECU serial) and, per
    hardware id, the image of its ECU furthest behind (``images``)."""
    status = vehicle.status or {}
    return {
        "id": vehicle.id,
        "model": vehicle.model,
        "region": vehicle.region,
        "attributes": vehicle.attributes,
        "registered_at": iso(vehicle.registered_at),
        "last_seen_at": iso(vehicle.last_seen_at) if vehicle.last_seen_at else None,
        "status": status,
        "images": {
            i.hardware_id: image_dict(i)
            for i in sorted(
                images, key=lambda i: (i.release_counter, i.version, i.ecu_serial), reverse=True
            )
        },
        "ecus": ecu_views(vehicle, images),
        "unknown_ecus": _mapping(status.get("unknown_ecus")),
    }


def image_dict(image: InstalledImage) -> dict[str, Any]:
    return {
        "version": image.version,
        "sha256": image.sha256,
        "release_counter": image.release_counter,
    }


def ecu_views(vehicle: Vehicle, images: list[InstalledImage]) -> dict[str, dict[str, Any]]:
    """The vehicle's software set: per registered ECU serial, its hardware id, whether it is
    the primary and its kind, the image it runs, when it last reported (the last manifest's
    time, or ``status.unreported_ecus``'s if that manifest had no report of it; None: never),
    what it detected (``status.attacks_detected``) and the key id its reports must be signed
    with."""
    status = vehicle.status or {}
    unreported = _mapping(status.get("unreported_ecus"))
    attacks = _mapping(status.get("attacks_detected"))
    seen = iso(vehicle.last_seen_at) if vehicle.last_seen_at else None
    by_serial = {i.ecu_serial: i for i in images}
    vehicle_keyid = _keyid(vehicle.public_key)
    views: dict[str, dict[str, Any]] = {}
    for serial, about in (vehicle.ecus or {}).items():
        if not isinstance(about, dict):
            continue
        primary = bool(about.get("primary"))
        image = by_serial.get(serial)
        own = about.get("public_key")
        views[serial] = {
            "hardware_id": about.get("hardware_id"),
            "primary": primary,
            "kind": "primary" if primary else about.get("kind"),
            "installed": image_dict(image) if image is not None else None,
            "last_report_at": unreported.get(serial, seen),
            "attacks_detected": attacks.get(serial) or None,
            "keyid": own.get("keyid") if isinstance(own, dict) else vehicle_keyid,
        }
    return views


def _keyid(public_key: str) -> str | None:
    try:
        keyid = json.loads(public_key).get("keyid")
    except (ValueError, AttributeError):
        return None
    return keyid if isinstance(keyid, str) else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def vehicle_events(session: Session, vehicle_id: str, *, limit: int, offset: int) -> dict[str, Any]:
    """A vehicle's events, most recently received first."""
    if session.get(Vehicle, vehicle_id) is None:
        raise NotFoundError(f"unknown vehicle {vehicle_id[:128]}")
    query = select(Event).where(Event.vehicle_id == vehicle_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(*EVENT_ORDER, Event.event_id).limit(limit).offset(offset))
    return {
        "items": [
            {
                "id": e.event_id,
                "type": e.type,
                "campaign_id": e.campaign_id,
                "hardware_id": e.hardware_id,
                "reason": e.reason,
                "details": e.details,
                "occurred_at": iso(e.occurred_at),
                "received_at": iso(e.received_at),
            }
            for e in rows
        ],
        "total": total,
        "next_offset": offset + limit if offset + limit < total else None,
    }

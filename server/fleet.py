"""The fleet as operators list it: vehicles filtered by hardware id, installed version, model,
region, any attribute and campaign status; one vehicle's events. Read-only queries the API
(``GET /api/v1/vehicles``, ``GET /api/v1/vehicles/{id}/events``) and ``overdrive fleet`` share.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

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
    return {
        "id": vehicle.id,
        "model": vehicle.model,
        "region": vehicle.region,
        "attributes": vehicle.attributes,
        "registered_at": iso(vehicle.registered_at),
        "last_seen_at": iso(vehicle.last_seen_at) if vehicle.last_seen_at else None,
        "status": vehicle.status,
        "images": {
            i.hardware_id: {
                "version": i.version,
                "sha256": i.sha256,
                "release_counter": i.release_counter,
            }
            for i in images
        },
    }


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

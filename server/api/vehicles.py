"""``/api/v1/vehicles``: registration, polls and events (signed by the vehicle), and the
operators' read-only view of the fleet."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from server import poll as polling
from server import vehicles
from server.auth import requires
from server.context import context
from server.errors import NotFoundError
from server.models import InstalledImage, Membership, Vehicle
from server.validation import json_body, paging

bp = Blueprint("vehicles", __name__, url_prefix="/api/v1/vehicles")


@bp.post("/register")
def register() -> ResponseReturnValue:
    return jsonify(vehicles.register(context(), json_body())), 201


@bp.post("/<vehicle_id>/poll")
def poll(vehicle_id: str) -> ResponseReturnValue:
    # Well-formed polls are answered by server.fastpath before they reach Flask; this route
    # serves the rest (and gives their errors).
    ctx = context()
    result = polling.poll(ctx, vehicle_id, json_body())
    polling.record_poll(ctx, result)
    return jsonify(result.body())


@bp.post("/<vehicle_id>/events")
def events(vehicle_id: str) -> ResponseReturnValue:
    ctx = context()
    result, types = vehicles.report_events(ctx, vehicle_id, json_body())
    for kind in types:
        ctx.metrics.events.labels(kind).inc()
    return jsonify(result)


def vehicle_dict(vehicle: Vehicle, images: list[InstalledImage]) -> dict[str, Any]:
    return {
        "id": vehicle.id,
        "attributes": vehicle.attributes,
        "registered_at": vehicles.iso(vehicle.registered_at),
        "last_seen_at": vehicles.iso(vehicle.last_seen_at) if vehicle.last_seen_at else None,
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


@bp.get("")
@requires("viewer")
def list_vehicles() -> ResponseReturnValue:
    limit, offset = paging()
    with context().session() as session:
        total = session.scalar(select(func.count()).select_from(Vehicle)) or 0
        rows = list(
            session.scalars(select(Vehicle).order_by(Vehicle.id).limit(limit).offset(offset))
        )
        ids = [v.id for v in rows]
        images: dict[str, list[InstalledImage]] = {}
        for image in session.scalars(
            select(InstalledImage).where(InstalledImage.vehicle_id.in_(ids))
        ):
            images.setdefault(image.vehicle_id, []).append(image)
    return jsonify(
        {
            "items": [vehicle_dict(v, images.get(v.id, [])) for v in rows],
            "total": total,
            "next_offset": offset + limit if offset + limit < total else None,
        }
    )


@bp.get("/<vehicle_id>")
@requires("viewer")
def get_vehicle(vehicle_id: str) -> ResponseReturnValue:
    with context().session() as session:
        vehicle = session.get(Vehicle, vehicle_id)
        if vehicle is None:
            raise NotFoundError(f"unknown vehicle {vehicle_id}")
        images = list(
            session.scalars(select(InstalledImage).where(InstalledImage.vehicle_id == vehicle_id))
        )
        memberships = list(
            session.scalars(select(Membership).where(Membership.vehicle_id == vehicle_id))
        )
    data = vehicle_dict(vehicle, images)
    data["campaigns"] = [
        {
            "campaign_id": m.campaign_id,
            "hardware_id": m.hardware_id,
            "admitted": m.admitted,
            "status": m.status,
            "reason": m.reason,
        }
        for m in memberships
    ]
    return jsonify(data)

"""``/api/v1/vehicles``: registration, polls and events (signed by the vehicle), and the
operators' read-only view of the fleet."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from overdrive.server import ecus, fleet, vehicles
from overdrive.server import poll as polling
from overdrive.server.auth import requires
from overdrive.server.context import context
from overdrive.server.errors import NotFoundError
from overdrive.server.models import InstalledImage, Membership, Vehicle
from overdrive.server.validation import json_body, paging

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


@bp.get("")
@requires("viewer")
def list_vehicles() -> ResponseReturnValue:
    """The fleet, filtered (``hardware_id``, ``version``, ``model``, ``region``,
    ``attr.NAME``, ``campaign``, ``campaign_status``, ``search``) and sorted (``sort``)."""
    from flask import request

    limit, offset = paging()
    filters = fleet.parse_filters(request.args.to_dict())
    with context().session() as session:
        return jsonify(fleet.list_vehicles(session, filters, limit=limit, offset=offset))


@bp.get("/<vehicle_id>/events")
@requires("viewer")
def vehicle_events(vehicle_id: str) -> ResponseReturnValue:
    limit, offset = paging()
    with context().session() as session:
        return jsonify(fleet.vehicle_events(session, vehicle_id, limit=limit, offset=offset))


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
    data = fleet.vehicle_dict(vehicle, images)
    data["campaigns"] = ecus.membership_dicts(memberships)
    return jsonify(data)


@bp.post("/<vehicle_id>/ecus/<ecu_serial>/replace")
@requires("operator")
def replace_ecu(vehicle_id: str, ecu_serial: str) -> ResponseReturnValue:
    """A workshop replaced ECU ``ecu_serial``: trust the new part (see server.ecus)."""
    return jsonify(ecus.replace_ecu(context(), vehicle_id, ecu_serial, json_body()))

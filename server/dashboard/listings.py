"""The fleet's vehicle list and the audit log, filtered and sorted as a :class:`ListQuery` says.

The filters only ever compare or search with bound parameters (``icontains`` escapes ``%`` and
``_``), so nothing a person types reaches the SQL as SQL; what they may type is checked first
by :mod:`overdrive.server.dashboard.forms`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from overdrive.server.dashboard.forms import ListQuery
from overdrive.server.fleet import image_of
from overdrive.server.models import AuditEntry, Campaign, InstalledImage, Membership, Vehicle

#: At most this many distinct values are offered as suggestions in a filter's list.
MAX_CHOICES = 200


# ------------------------------------------------------------------------------ vehicles


@dataclass(frozen=True)
class CampaignStatus:
    """A vehicle's membership in a running or paused campaign, as its list row shows it."""

    campaign_id: str
    campaign: str
    hardware_id: str
    status: str


def _state() -> ColumnElement[Any]:
    """The update state the vehicle last reported (``status.state`` of its manifest)."""
    column: ColumnElement[Any] = Vehicle.status["state"].as_string()
    return column


#: The sorts on one column of the vehicles table (``state`` and the image sorts are built).
VEHICLE_ORDER: dict[str, tuple[InstrumentedAttribute[Any], ...]] = {
    "id": (Vehicle.id,),
    "model": (Vehicle.model,),
    "region": (Vehicle.region,),
    "last_seen": (Vehicle.last_seen_at,),
}


def _vehicles(filters: dict[str, str]) -> Select[Vehicle]:
    query = select(Vehicle)
    if search := filters.get("q"):
        query = query.where(Vehicle.id.icontains(search, autoescape=True))
    if hw := filters.get("hw"):
        image = select(InstalledImage.vehicle_id).where(InstalledImage.hardware_id == hw)
        if version := filters.get("version"):
            image = image.where(InstalledImage.version == version)
        query = query.where(Vehicle.id.in_(image))
    if "model" in filters:
        query = query.where(Vehicle.model == filters["model"])
    if "region" in filters:
        query = query.where(Vehicle.region == filters["region"])
    if "state" in filters:
        query = query.where(_state() == filters["state"])
    if status := filters.get("status"):
        active = select(Membership.vehicle_id).where(Membership.active.is_(True))
        if status == "none":
            query = query.where(Vehicle.id.not_in(active))
        else:
            query = query.where(Vehicle.id.in_(active.where(Membership.status == status)))
    return query


def _sorted(query: Select[Vehicle], q: ListQuery) -> Select[Vehicle]:
    """Order by the chosen column (empty values last), then by id.

    Hardware id and version sort by the image of the filtered hardware id, or else of the
    vehicle's first hardware id (a vehicle may run several; of several ECUs of one, by the one
    furthest behind)."""
    columns: tuple[ColumnElement[Any] | InstrumentedAttribute[Any], ...]
    if q.sort in ("hardware_id", "version"):
        if hw := q.filters.get("hw"):
            wanted: Any = hw
        else:
            other = aliased(InstalledImage)
            wanted = (
                select(func.min(other.hardware_id))
                .where(other.vehicle_id == Vehicle.id)
                .correlate(Vehicle)
                .scalar_subquery()
            )
        query = query.outerjoin(InstalledImage, image_of(Vehicle.id, wanted))
        version = (InstalledImage.release_counter, InstalledImage.version)
        columns = (InstalledImage.hardware_id, *version) if q.sort == "hardware_id" else version
    else:
        columns = VEHICLE_ORDER[q.sort] if q.sort in VEHICLE_ORDER else (_state(),)
    order = [(c.desc() if q.descending else c.asc()).nulls_last() for c in columns]
    return query.order_by(*order, Vehicle.id)


def count_vehicles(session: Session, q: ListQuery) -> int:
    """How many vehicles match the list's filters."""
    return session.scalar(select(func.count()).select_from(_vehicles(q.filters).subquery())) or 0


def vehicle_page(
    session: Session, q: ListQuery, limit: int, offset: int
) -> tuple[list[Vehicle], dict[str, list[InstalledImage]], dict[str, list[CampaignStatus]]]:
    """A page of matching vehicles, their installed images and their active campaigns."""
    vehicles = list(session.scalars(_sorted(_vehicles(q.filters), q).limit(limit).offset(offset)))
    ids = [v.id for v in vehicles]
    images: dict[str, list[InstalledImage]] = {}
    active: dict[str, list[CampaignStatus]] = {}
    if ids:
        shown: set[tuple[str, str, str]] = set()
        for row in session.scalars(
            select(InstalledImage)
            .where(InstalledImage.vehicle_id.in_(ids))
            .order_by(InstalledImage.hardware_id, InstalledImage.release_counter)
        ):
            # Several ECUs of one hardware id on one version are one chip.
            if (row.vehicle_id, row.hardware_id, row.version) not in shown:
                shown.add((row.vehicle_id, row.hardware_id, row.version))
                images.setdefault(row.vehicle_id, []).append(row)
        for m, name in session.execute(
            select(Membership, Campaign.name)
            .join(Campaign, Campaign.id == Membership.campaign_id)
            .where(Membership.vehicle_id.in_(ids), Membership.active.is_(True))
            .order_by(Membership.hardware_id)
        ):
            active.setdefault(m.vehicle_id, []).append(
                CampaignStatus(m.campaign_id, name, m.hardware_id, m.status)
            )
    return vehicles, images, active


def _distinct(
    session: Session, column: ColumnElement[Any] | InstrumentedAttribute[Any]
) -> list[str]:
    rows = session.scalars(
        select(column).where(column.is_not(None)).distinct().order_by(column).limit(MAX_CHOICES)
    )
    return [str(value) for value in rows if value != ""]


def vehicle_choices(session: Session) -> dict[str, list[str]]:
    """The values the filters suggest: hardware ids, versions, models, regions and states."""
    return {
        "hw": _distinct(session, InstalledImage.hardware_id),
        "version": _distinct(session, InstalledImage.version),
        "model": _distinct(session, Vehicle.model),
        "region": _distinct(session, Vehicle.region),
        "state": _distinct(session, _state()),
    }


# ------------------------------------------------------------------------------ audit log


def _audit(q: ListQuery) -> Select[AuditEntry]:
    query = select(AuditEntry)
    filters = q.filters
    if "actor" in filters:
        query = query.where(AuditEntry.actor.icontains(filters["actor"], autoescape=True))
    if "action" in filters:
        query = query.where(AuditEntry.action == filters["action"])
    if "target" in filters:
        query = query.where(AuditEntry.target.icontains(filters["target"], autoescape=True))
    if "campaign" in filters:
        query = query.where(AuditEntry.target == f"campaign:{filters['campaign']}")
    if "from" in q.bounds:
        query = query.where(AuditEntry.at >= q.bounds["from"])
    if "to" in q.bounds:
        query = query.where(AuditEntry.at < q.bounds["to"])
    return query


def count_audit(session: Session, q: ListQuery) -> int:
    """How many audit log entries match the filters."""
    return session.scalar(select(func.count()).select_from(_audit(q).subquery())) or 0


def audit_page(session: Session, q: ListQuery, limit: int, offset: int) -> list[AuditEntry]:
    """A page of matching audit log entries, newest first (oldest first for ``dir=asc``)."""
    order = (
        (AuditEntry.at.desc(), AuditEntry.id.desc())
        if q.descending
        else (AuditEntry.at.asc(), AuditEntry.id.asc())
    )
    return list(session.scalars(_audit(q).order_by(*order).limit(limit).offset(offset)))


def audit_choices(session: Session) -> dict[str, list[str]]:
    """The actions and actors the audit log holds (the filters' suggestions)."""
    return {
        "action": _distinct(session, AuditEntry.action),
        "actor": _distinct(session, AuditEntry.actor),
    }

"""The vehicle side of the API: registration, message authentication and signed event reports
(polls are in :mod:`server.poll`).

A vehicle proves every message with the ed25519 key it registered. A manifest carries a counter
that must grow and a timestamp close to ours, so a replayed poll is refused; events carry their own
ids, so a re-sent batch (after a timeout, say) is stored exactly once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from securesystemslib.signer import Key, SSlibKey
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from overdrive.envelope import EVENTS, EnvelopeError, verify_envelope
from server.auth import hash_secret
from server.context import ServerContext
from server.errors import BadRequest, Conflict, NotFoundError, Unauthorized
from server.models import (
    EnrollToken,
    Event,
    InstalledImage,
    Membership,
    Vehicle,
)
from server.validation import ID_PATTERN, MAX_INT32, field, identifier

EVENT_TYPES = (
    "assigned",
    "downloading",
    "downloaded",
    "installing",
    "installed",
    "booted",
    "committed",
    "failed",
    "rolled_back",
)
FINAL = ("committed", "failed", "rolled_back")
MAX_EVENTS = 100


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything here is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_time(value: Any, label: str) -> datetime:
    if not isinstance(value, str):
        raise BadRequest(f"field '{label}' must be an ISO 8601 time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise BadRequest(f"field '{label}' is not an ISO 8601 time: {value!r}") from e
    return aware(parsed)


def iso(value: datetime) -> str:
    return aware(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_images(raw: Any, label: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise BadRequest(f"field '{label}' must be an object of hardware id → image")
    images = {}
    for hw, image in raw.items():
        identifier(hw, "hardware id")
        if not isinstance(image, dict):
            raise BadRequest(f"field '{label}.{hw}' must be an object")
        where = f"{label}.{hw}."
        sha = field(image, "sha256", str, where=where)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BadRequest(f"field '{where}sha256' must be 64 hex characters")
        version = field(image, "version", str, where=where)
        if not 0 < len(version) <= 128:
            raise BadRequest(f"field '{where}version' must be 1..128 characters")
        counter = field(image, "release_counter", int, where=where, required=False, default=0)
        if not 0 <= counter <= MAX_INT32:
            raise BadRequest(f"field '{where}release_counter' must be 0..{MAX_INT32}")
        images[hw] = {"version": version, "sha256": sha, "release_counter": counter}
    return images


def vehicle_key_from_text(public_key: str) -> dict[str, Key]:
    """The verification keys (key id → key) of a vehicle, from its stored ``public_key``."""
    key = SSlibKey.from_dict(*_split_key(json.loads(public_key)))
    return {key.keyid: key}


def _split_key(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    data = dict(data)
    return data.pop("keyid"), data


# ------------------------------------------------------------------------------ register


def register(ctx: ServerContext, body: dict[str, Any]) -> dict[str, Any]:
    token = field(body, "enroll_token", str)
    vehicle_id = identifier(field(body, "vehicle_id", str), "vehicle id")
    raw_key = field(body, "public_key", dict)
    attributes = field(body, "attributes", dict, required=False, default={})
    images = parse_images(body.get("images", {}), "images")
    try:
        keyid, key_dict = _split_key(raw_key)
        key = SSlibKey.from_dict(keyid, key_dict)
    except Exception as e:
        raise BadRequest("field 'public_key' must be a TUF key object with a keyid") from e
    if key.keytype != "ed25519":
        raise BadRequest("field 'public_key' must be an ed25519 key")
    for name, value in attributes.items():
        if not isinstance(value, str | int | float | bool):
            raise BadRequest(f"attribute {name!r} must be a string, number or boolean")
    stamp = utcnow()
    with ctx.transaction() as session:
        enroll = session.scalar(
            select(EnrollToken)
            .where(EnrollToken.token_hash == hash_secret(token))
            .with_for_update()
        )
        if enroll is None or enroll.uses_left < 1:
            raise Unauthorized("invalid or used enrollment token")
        if enroll.expires_at is not None and aware(enroll.expires_at) < stamp:
            raise Unauthorized("enrollment token has expired")
        if session.get(Vehicle, vehicle_id) is not None:
            raise Conflict(f"vehicle {vehicle_id} is already registered")
        enroll.uses_left -= 1
        enroll.used_by = vehicle_id
        session.add(
            Vehicle(
                id=vehicle_id,
                public_key=json.dumps({"keyid": key.keyid, **key.to_dict()}),
                attributes=attributes,
                model=str(attributes["model"]) if "model" in attributes else None,
                region=str(attributes["region"]) if "region" in attributes else None,
                registered_at=stamp,
                manifest_counter=0,
                status={},
            )
        )
        session.flush()
        for hw, image in images.items():
            session.add(InstalledImage(vehicle_id=vehicle_id, hardware_id=hw, **image))
    return {"vehicle_id": vehicle_id, "poll_interval": ctx.config.poll_interval}


# ------------------------------------------------------------------------------ messages


def verify_message(public_key: str, vehicle_id: str, envelope: Any, kind: str) -> dict[str, Any]:
    """The payload of a ``kind`` message if the vehicle's stored key signed it for itself."""
    try:
        payload = verify_envelope(envelope, vehicle_key_from_text(public_key), kind)
    except EnvelopeError as e:
        raise Unauthorized(f"{e} (vehicle {vehicle_id})") from e
    if payload.get("vehicle_id") != vehicle_id:
        raise Unauthorized("message is signed for another vehicle")
    return payload


def authenticate_message(
    session: Session, vehicle_id: str, envelope: Any, kind: str
) -> tuple[Vehicle, dict[str, Any]]:
    vehicle = session.get(Vehicle, vehicle_id, with_for_update=True)
    if vehicle is None:
        raise NotFoundError(f"unknown vehicle {vehicle_id}")
    return vehicle, verify_message(vehicle.public_key, vehicle_id, envelope, kind)


# ------------------------------------------------------------------------------ events


def report_events(
    ctx: ServerContext, vehicle_id: str, envelope: Any
) -> tuple[dict[str, int], list[str]]:
    """Store the new events of a signed batch; return the counts and the new events' types."""
    stamp = utcnow()
    with ctx.transaction() as session:
        _vehicle, payload = authenticate_message(session, vehicle_id, envelope, EVENTS)
        raw_events = field(payload, "events", list, where="signed.")
        if len(raw_events) > MAX_EVENTS:
            raise BadRequest(f"at most {MAX_EVENTS} events per report")
        events = [_parse_event(e, i) for i, e in enumerate(raw_events)]
        ids = [e["event_id"] for e in events]
        if len(set(ids)) != len(ids):
            raise BadRequest("duplicate event ids in one report")
        known = (
            set(
                session.scalars(
                    select(Event.event_id).where(
                        Event.vehicle_id == vehicle_id, Event.event_id.in_(ids)
                    )
                )
            )
            if ids
            else set()
        )
        new = [e for e in events if e["event_id"] not in known]
        for event in new:
            session.add(Event(vehicle_id=vehicle_id, received_at=stamp, **event))
            _apply_to_membership(session, vehicle_id, event, stamp)
    return {"accepted": len(new), "duplicates": len(events) - len(new)}, [e["type"] for e in new]


def _parse_event(raw: Any, index: int) -> dict[str, Any]:
    where = f"signed.events[{index}]."
    if not isinstance(raw, dict):
        raise BadRequest(f"'{where[:-1]}' must be an object")
    event_id = field(raw, "id", str, where=where)
    if not 8 <= len(event_id) <= 64:
        raise BadRequest(f"field '{where}id' must be 8..64 characters")
    kind = field(raw, "type", str, where=where)
    if kind not in EVENT_TYPES:
        raise BadRequest(f"field '{where}type' must be one of {', '.join(EVENT_TYPES)}")
    details = field(raw, "details", dict, where=where, required=False, default={})
    return {
        "event_id": event_id,
        "type": kind,
        "campaign_id": _optional_id(raw, "campaign_id", where, 36),
        "hardware_id": _optional_id(raw, "hardware_id", where, 128),
        "reason": field(raw, "reason", str, where=where, required=False),
        "details": details,
        "occurred_at": parse_time(raw.get("at"), f"{where}at"),
    }


def _optional_id(raw: dict[str, Any], name: str, where: str, limit: int) -> str | None:
    value = field(raw, name, str, where=where, required=False)
    if value is not None and (len(value) > limit or not ID_PATTERN.match(value)):
        raise BadRequest(f"field '{where}{name}' is not a valid id (max {limit} characters)")
    return value


def _apply_to_membership(
    session: Session, vehicle_id: str, event: dict[str, Any], stamp: datetime
) -> None:
    """Move the campaign membership forward; a final status is never overwritten."""
    if not event["campaign_id"] or not event["hardware_id"] or event["type"] == "assigned":
        return
    session.execute(
        update(Membership)
        .where(
            Membership.campaign_id == event["campaign_id"],
            Membership.vehicle_id == vehicle_id,
            Membership.hardware_id == event["hardware_id"],
            Membership.status.not_in(FINAL),
        )
        .values(status=event["type"], reason=event["reason"], updated_at=stamp)
    )

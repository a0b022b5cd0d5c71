"""The vehicle side of the API: registration, message authentication and signed event reports
(polls are in :mod:`overdrive.server.poll`).

A vehicle proves every message with the ed25519 key it registered. A manifest carries a counter
that must grow and a timestamp close to ours, so a replayed poll is refused; events carry their own
ids, so a re-sent batch (after a timeout, say) is stored exactly once.

What a vehicle may say is bounded, so that no vehicle can fill a page or a feed meant for others:

* a message for an unknown vehicle id gets exactly the 401 (and body) of a registered vehicle's
  message that does not verify, so vehicle ids cannot be enumerated;
* a manifest reports at most :data:`MAX_IMAGES` hardware ids, and registration at most
  :data:`MAX_ATTRIBUTES` short one-line attributes; strings are bounded and storable text;
* an event may name only a campaign (and hardware id) the vehicle is a member of; anything else
  refuses the batch with a 400 naming the event (the client then isolates that event);
* feeds are ordered by when the server received events; the vehicle's own ``at`` is kept as
  ``occurred_at`` only when plausible (see :func:`bound_time`).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey
from securesystemslib.exceptions import UnverifiedSignatureError, VerificationError
from securesystemslib.signer import Key, Signature, SSlibKey
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from overdrive.envelope import EVENTS, EnvelopeError, verify_envelope
from overdrive.server.auth import hash_secret
from overdrive.server.context import ServerContext
from overdrive.server.errors import BadRequest, Conflict, Unauthorized
from overdrive.server.models import (
    MEMBERSHIP_STATUSES,
    EnrollToken,
    Event,
    InstalledImage,
    Membership,
    Vehicle,
)
from overdrive.server.validation import (
    ID_PATTERN,
    MAX_INT32,
    bounded_json,
    field,
    identifier,
    shown,
    text,
)
from overdrive.text import text_problem

EVENT_TYPES = MEMBERSHIP_STATUSES[1:]
"""What a vehicle may report: every membership status but ``pending``."""
FINAL = ("committed", "failed", "rolled_back")
MAX_EVENTS = 100
#: Hardware ids one manifest (or registration) may report.
MAX_IMAGES = 64
#: Registration attributes: how many, and how long names and string values may be (model and
#: region are stored in 128-character columns).
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_NAME = 64
MAX_ATTRIBUTE_TEXT = 128
#: An event's one-line reason (the client cuts its strings to 500), and its details as JSON.
MAX_REASON = 1000
MAX_DETAILS_BYTES = 8192
#: A manifest's slot and update state (one-line strings), and all its status fields as JSON.
MAX_STATUS_TEXT = 64
MAX_STATUS_BYTES = 4096
STATUS_FIELDS = ("slot", "state", "last_result")


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
        raise BadRequest(f"field '{label}' is not an ISO 8601 time: {shown(value)}") from e
    return aware(parsed)


def iso(value: datetime) -> str:
    return aware(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_images(raw: Any, label: str) -> dict[str, dict[str, Any]]:
    """The installed images a vehicle reports (at most :data:`MAX_IMAGES`), checked."""
    if not isinstance(raw, dict):
        raise BadRequest(f"field '{label}' must be an object of hardware id → image")
    if len(raw) > MAX_IMAGES:
        raise BadRequest(
            f"field '{label}' reports {len(raw)} hardware ids; at most {MAX_IMAGES} are accepted"
        )
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
        text(version, f"{where}version", limit=128)
        counter = field(image, "release_counter", int, where=where, required=False, default=0)
        if not 0 <= counter <= MAX_INT32:
            raise BadRequest(f"field '{where}release_counter' must be 0..{MAX_INT32}")
        images[hw] = {"version": version, "sha256": sha, "release_counter": counter}
    return images


def parse_attributes(raw: dict[str, Any]) -> dict[str, Any]:
    """Registration attributes: at most :data:`MAX_ATTRIBUTES`, each a short one-line name with a
    short one-line string, a finite number or a boolean (what fleet filters and pages show)."""
    if len(raw) > MAX_ATTRIBUTES:
        raise BadRequest(
            f"field 'attributes' has {len(raw)} entries; at most {MAX_ATTRIBUTES} are accepted"
        )
    for name, value in raw.items():
        if not 0 < len(name) <= MAX_ATTRIBUTE_NAME or text_problem(name) is not None:
            raise BadRequest(
                f"attribute name {shown(name)} must be 1..{MAX_ATTRIBUTE_NAME} characters "
                "of one-line text"
            )
        label = f"attributes.{name}"
        if isinstance(value, str):
            text(value, label, limit=MAX_ATTRIBUTE_TEXT)
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"field '{label}' must be a finite number")
        elif not isinstance(value, int | float | bool):
            raise BadRequest(f"attribute {shown(name)} must be a string, number or boolean")
    return raw


def parse_status(manifest: dict[str, Any]) -> dict[str, Any]:
    """The slot, update state and last result a manifest reports, as stored on the vehicle:
    one-line strings of at most :data:`MAX_STATUS_TEXT` characters (or null), and at most
    :data:`MAX_STATUS_BYTES` of JSON in all."""
    status = {k: manifest[k] for k in STATUS_FIELDS if k in manifest}
    for name in ("slot", "state"):
        value = status.get(name)
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"field 'signed.{name}' must be a string")
        if value is not None:
            text(value, f"signed.{name}", limit=MAX_STATUS_TEXT)
    bounded_json(status, "signed.last_result", MAX_STATUS_BYTES)
    return status


def vehicle_key_from_text(public_key: str) -> dict[str, Key]:
    """The verification keys (key id → key) of a vehicle, from its stored ``public_key``."""
    return keys_of(json.loads(public_key))


def keys_of(data: dict[str, Any]) -> dict[str, Key]:
    """Key id → key for a stored TUF key object with its ``keyid`` (a vehicle's or an ECU's)."""
    keyid, keyval = data.get("keyid"), data.get("keyval")
    if (
        isinstance(keyid, str)
        and data.get("keytype") == data.get("scheme") == "ed25519"
        and isinstance(keyval, dict)
        and isinstance(keyval.get("public"), str)
        and len(data) == 4  # keyid, keytype, scheme, keyval: what registration stores
    ):
        try:
            return {keyid: Ed25519Key(keyid, "ed25519", "ed25519", {"public": keyval["public"]})}
        except ValueError:
            pass  # not a valid public key: nothing will verify (as with SSlibKey)
    key = SSlibKey.from_dict(*_split_key(data))
    return {key.keyid: key}


class Ed25519Key(SSlibKey):
    """An ed25519 TUF key that parses its public key once, when made, instead of on every
    verification (as :class:`SSlibKey` does): a poll verifies one signature per ECU report.

    The signature's key id must be this key's, and libsodium (PyNaCl) verifies the signature
    over the data: 41 µs against 65 µs for ``cryptography``'s OpenSSL on the benchmark machine,
    and a poll of an 8-ECU car verifies nine (BENCHMARKS.md). libsodium is the stricter of the
    two (it also refuses non-canonical signatures and small-order keys, which no genuine signer
    makes)."""

    def __init__(
        self,
        keyid: str,
        keytype: str,
        scheme: str,
        keyval: dict[str, Any],
        unrecognized_fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(keyid, keytype, scheme, keyval, unrecognized_fields)
        try:
            self._public = VerifyKey(bytes.fromhex(keyval["public"]))
        except (KeyError, TypeError, ValueError, CryptoError) as e:
            raise ValueError(f"key {keyid}: not an ed25519 public key") from e

    def verify_signature(self, signature: Signature, data: bytes) -> None:
        if signature.keyid != self.keyid:
            raise VerificationError(f"signature by {signature.keyid}, not key {self.keyid}")
        try:
            raw = bytes.fromhex(signature.signature)
        except (TypeError, ValueError) as e:
            raise VerificationError(f"signature by {self.keyid} is not hex") from e
        try:
            self._public.verify(data, raw)
        except (CryptoError, ValueError, TypeError) as e:  # BadSignatureError is a CryptoError
            raise UnverifiedSignatureError(f"Failed to verify signature by {self.keyid}") from e


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
    key = ed25519_key(raw_key, "public_key")
    ecus = parse_ecus(body.get("ecus"), images)
    parse_attributes(attributes)
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
                public_key=public_key_text(key),
                attributes=attributes,
                model=str(attributes["model"]) if "model" in attributes else None,
                region=str(attributes["region"]) if "region" in attributes else None,
                registered_at=stamp,
                manifest_counter=0,
                status={},
                ecus=ecus,
                ecu_counters={},
            )
        )
        session.flush()
        # Each ECU starts with its hardware id's factory image (an image no ECU has is dropped).
        for serial, ecu in ecus.items():
            hw = ecu["hardware_id"]
            session.add(
                InstalledImage(
                    vehicle_id=vehicle_id, ecu_serial=serial, hardware_id=hw, **images[hw]
                )
            )
    return {"vehicle_id": vehicle_id, "poll_interval": ctx.config.poll_interval}


def ed25519_key(raw: Any, label: str) -> SSlibKey:
    """``raw`` as an ed25519 TUF key (a key object with its ``keyid``); a 400 naming ``label``."""
    if not isinstance(raw, dict):
        raise BadRequest(f"field '{label}' must be a TUF key object with a keyid")
    try:
        keyid, key_dict = _split_key(raw)
        key = SSlibKey.from_dict(keyid, key_dict)
    except Exception as e:
        raise BadRequest(f"field '{label}' must be a TUF key object with a keyid") from e
    if key.keytype != "ed25519" or key.scheme != "ed25519":
        raise BadRequest(f"field '{label}' must be an ed25519 key")
    try:
        Ed25519Key(key.keyid, key.keytype, key.scheme, key.keyval)
    except ValueError as e:
        raise BadRequest(f"field '{label}' is not a valid ed25519 public key") from e
    return key


def public_key_text(key: SSlibKey) -> str:
    """How a vehicle's key is stored (``vehicles.public_key``): its TUF key object as JSON."""
    return json.dumps({"keyid": key.keyid, **key.to_dict()})


#: What an ECU may be (``kind`` in registration, optional): the primary, a secondary that
#: verifies for itself, or a module the primary updates over a bus (see docs/vehicles.md).
ECU_KINDS = ("primary", "secondary", "module")


def parse_ecus(raw: Any, images: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A registration's ECUs (serial → hardware id, whether it is the primary, its own key,
    optionally its kind): exactly one primary, whose key is the vehicle's; at most
    :data:`MAX_IMAGES`; a factory image in ``images`` for every ECU's hardware id."""
    if not isinstance(raw, dict) or not raw:
        raise BadRequest("field 'ecus' must be an object of ECU serial → {hardware_id, primary}")
    if len(raw) > MAX_IMAGES:
        raise BadRequest(f"field 'ecus' lists {len(raw)} ECUs; at most {MAX_IMAGES} are accepted")
    ecus: dict[str, Any] = {}
    for serial, about in raw.items():
        identifier(serial, "ECU serial")
        if not isinstance(about, dict):
            raise BadRequest(f"field 'ecus.{serial}' must be an object")
        hardware_id = identifier(
            field(about, "hardware_id", str, where=f"ecus.{serial}."), "hardware id"
        )
        primary = field(about, "primary", bool, where=f"ecus.{serial}.", required=False)
        entry: dict[str, Any] = {"hardware_id": hardware_id, "primary": bool(primary)}
        kind = field(about, "kind", str, where=f"ecus.{serial}.", required=False)
        if kind is not None:
            if kind not in ECU_KINDS or (kind == "primary") != bool(primary):
                allowed = "primary" if primary else "secondary or module"
                raise BadRequest(f"field 'ecus.{serial}.kind' must be {allowed}")
            entry["kind"] = kind
        if about.get("public_key") is not None:
            key = ed25519_key(about["public_key"], f"ecus.{serial}.public_key")
            entry["public_key"] = {"keyid": key.keyid, **key.to_dict()}
        ecus[serial] = entry
    primaries = [s for s, e in ecus.items() if e["primary"]]
    if len(primaries) != 1:
        raise BadRequest(f"field 'ecus' must name exactly one primary ECU, not {len(primaries)}")
    unreported = [e["hardware_id"] for e in ecus.values() if e["hardware_id"] not in images]
    if unreported:
        raise BadRequest(f"no factory image reported for hardware id {unreported[0]}")
    return ecus


# ------------------------------------------------------------------------------ messages


def verify_message(
    public_key: str | None, vehicle_id: str, envelope: Any, kind: str
) -> dict[str, Any]:
    """The payload of a ``kind`` message if the vehicle's stored key signed it for itself
    (``public_key`` None: no vehicle has this id, so nothing verifies; see :func:`unknown_vehicle`)."""
    keys = vehicle_key_from_text(public_key) if public_key is not None else {}
    return verify_signed(keys, vehicle_id, envelope, kind)


def verify_signed(
    keys: dict[str, Key], vehicle_id: str, envelope: Any, kind: str
) -> dict[str, Any]:
    """:func:`verify_message` with the vehicle's keys already parsed."""
    try:
        payload = verify_envelope(envelope, keys, kind)
    except EnvelopeError as e:  # the same words whether or not the vehicle exists
        raise Unauthorized(str(e)) from e
    if payload.get("vehicle_id") != vehicle_id:
        raise Unauthorized("message is signed for another vehicle")
    return payload


def authenticate_message(
    session: Session, vehicle_id: str, envelope: Any, kind: str
) -> tuple[Vehicle, dict[str, Any]]:
    vehicle = session.get(Vehicle, vehicle_id, with_for_update=True)
    if vehicle is None:
        unknown_vehicle(vehicle_id, envelope, kind)
    return vehicle, verify_message(vehicle.public_key, vehicle_id, envelope, kind)


def unknown_vehicle(vehicle_id: str, envelope: Any, kind: str) -> NoReturn:
    """Refuse a message for a vehicle id nobody registered with exactly the 401 a registered
    vehicle's message gets when it does not verify: the envelope is checked the same way, against
    no key at all, so the answer cannot tell which vehicle ids exist."""
    verify_message(None, vehicle_id, envelope, kind)  # raises: no key, no valid signature
    raise Unauthorized(f"{kind} is not signed by a trusted key")


# ------------------------------------------------------------------------------ events


def report_events(
    ctx: ServerContext, vehicle_id: str, envelope: Any
) -> tuple[dict[str, int], list[str]]:
    """Store the new events of a signed batch; return the counts and the new events' types.

    The whole batch is refused (400, naming the event) if one event is malformed or names a
    campaign the vehicle is not a member of; event times are bounded by :func:`bound_time`.
    """
    stamp = utcnow()
    with ctx.transaction() as session:
        vehicle, payload = authenticate_message(session, vehicle_id, envelope, EVENTS)
        raw_events = field(payload, "events", list, where="signed.")
        if len(raw_events) > MAX_EVENTS:
            raise BadRequest(f"at most {MAX_EVENTS} events per report")
        events = [_parse_event(e, i) for i, e in enumerate(raw_events)]
        ids = [e["event_id"] for e in events]
        if len(set(ids)) != len(ids):
            raise BadRequest("duplicate event ids in one report")
        mine = _check_memberships(session, vehicle_id, events)
        skew = timedelta(seconds=ctx.config.clock_skew)
        for event in events:
            bound_time(event, aware(vehicle.registered_at) - skew, stamp + skew, stamp)
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
            _apply_to_membership(session, vehicle_id, event, stamp, mine)
    return {"accepted": len(new), "duplicates": len(events) - len(new)}, [e["type"] for e in new]


def _parse_event(raw: Any, index: int) -> dict[str, Any]:
    where = f"signed.events[{index}]."
    if not isinstance(raw, dict):
        raise BadRequest(f"'{where[:-1]}' must be an object")
    event_id = field(raw, "id", str, where=where)
    if not 8 <= len(event_id) <= 64:
        raise BadRequest(f"field '{where}id' must be 8..64 characters")
    text(event_id, f"{where}id", limit=64)
    kind = field(raw, "type", str, where=where)
    if kind not in EVENT_TYPES:
        raise BadRequest(f"field '{where}type' must be one of {', '.join(EVENT_TYPES)}")
    details = field(raw, "details", dict, where=where, required=False, default={})
    bounded_json(details, f"{where}details", MAX_DETAILS_BYTES)
    _check_set_details(details, f"{where}details.")
    reason = field(raw, "reason", str, where=where, required=False)
    if reason is not None:
        text(reason, f"{where}reason", limit=MAX_REASON)
    return {
        "event_id": event_id,
        "type": kind,
        "campaign_id": _optional_id(raw, "campaign_id", where, 36),
        "hardware_id": _optional_id(raw, "hardware_id", where, 128),
        "reason": reason,
        "details": details,
        "occurred_at": parse_time(raw.get("at"), f"{where}at"),
    }


def _check_set_details(details: dict[str, Any], where: str) -> None:
    """The software-set fields of an event's details, if there: ``caused_by`` (the ECU whose
    install, trial or health check failed the vehicle's set: ``{"ecu_serial", "hardware_id"}``)
    and ``software_set`` (a boolean: the event finishes a whole set)."""
    if "software_set" in details and not isinstance(details["software_set"], bool):
        raise BadRequest(f"field '{where}software_set' must be a boolean")
    if "caused_by" not in details:
        return
    cause = details["caused_by"]
    if not isinstance(cause, dict):
        raise BadRequest(f"field '{where}caused_by' must be an object {{ecu_serial, hardware_id}}")
    for name in ("ecu_serial", "hardware_id"):
        value = field(cause, name, str, where=f"{where}caused_by.")
        if len(value) > 128 or not ID_PATTERN.fullmatch(value):
            raise BadRequest(f"field '{where}caused_by.{name}' is not a valid id")


def caused_by(event: dict[str, Any]) -> str | None:
    """The hardware id a failure event blames (``details.caused_by.hardware_id``), if any."""
    cause = event["details"].get("caused_by")
    return cause["hardware_id"] if isinstance(cause, dict) else None


def _optional_id(raw: dict[str, Any], name: str, where: str, limit: int) -> str | None:
    value = field(raw, name, str, where=where, required=False)
    if value is not None and (len(value) > limit or not ID_PATTERN.fullmatch(value)):
        raise BadRequest(f"field '{where}{name}' is not a valid id (max {limit} characters)")
    return value


def _check_memberships(
    session: Session, vehicle_id: str, events: list[dict[str, Any]]
) -> set[tuple[str, str]]:
    """Refuse (400, code ``not_a_member``) an event naming a campaign, or a campaign and hardware
    id, that this vehicle has no membership of: a vehicle reports only on its own updates, so no
    vehicle can write into another campaign's feed. Returns the (campaign, hardware id) pairs
    of the vehicle's memberships of the campaigns the events name."""
    campaign_ids = {e["campaign_id"] for e in events if e["campaign_id"]}
    if not campaign_ids:
        return set()
    rows = session.execute(
        select(Membership.campaign_id, Membership.hardware_id).where(
            Membership.vehicle_id == vehicle_id, Membership.campaign_id.in_(campaign_ids)
        )
    ).all()
    mine = {(campaign_id, hw) for campaign_id, hw in rows}
    campaigns = {campaign_id for campaign_id, _hw in rows}
    for index, event in enumerate(events):
        campaign_id, hw = event["campaign_id"], event["hardware_id"]
        if not campaign_id:
            continue
        if campaign_id not in campaigns or (hw and (campaign_id, hw) not in mine):
            scope = f" for hardware id {hw}" if hw and campaign_id in campaigns else ""
            raise BadRequest(
                f"signed.events[{index}]: vehicle {vehicle_id} is not a member of campaign "
                f"{campaign_id}{scope}",
                code="not_a_member",
            )
    return mine


def bound_time(
    event: dict[str, Any], earliest: datetime, latest: datetime, stamp: datetime
) -> None:
    """Keep a vehicle-supplied event time only if it is plausible, else use ``stamp``.

    A vehicle's clock is trusted only within bounds: an ``at`` later than ``latest`` (receipt
    plus the allowed clock skew) or earlier than ``earliest`` (the vehicle's registration less
    that skew) is not refused (the event's report still counts, e.g. a reset clock's
    "committed") but stored with ``occurred_at`` = the time it was received, and the time it
    claimed kept in ``details["claimed_at"]``. Feeds order by ``received_at`` anyway, so no
    date, however far off, moves an event ahead of others.
    """
    occurred: datetime = event["occurred_at"]
    if earliest <= occurred <= latest:
        return
    event["details"] = {**event["details"], "claimed_at": occurred.isoformat()}
    event["occurred_at"] = stamp


def _apply_to_membership(
    session: Session,
    vehicle_id: str,
    event: dict[str, Any],
    stamp: datetime,
    mine: set[tuple[str, str]],
) -> None:
    """Move the campaign membership forward; a final status is never overwritten.

    A failure that names the hardware id which caused it (a software set rolled back as a
    whole) records it as the membership's ``caused_by`` if the vehicle has a membership of
    the campaign for that hardware id (anything else counts as the membership's own failure:
    no vehicle can put its failure on a hardware id the campaign does not update for it)."""
    if not event["campaign_id"] or not event["hardware_id"] or event["type"] == "assigned":
        return
    cause = caused_by(event) if event["type"] in ("failed", "rolled_back") else None
    if cause is not None and (event["campaign_id"], cause) not in mine:
        cause = None
    session.execute(
        update(Membership)
        .where(
            Membership.campaign_id == event["campaign_id"],
            Membership.vehicle_id == vehicle_id,
            Membership.hardware_id == event["hardware_id"],
            Membership.status.not_in(FINAL),
        )
        .values(status=event["type"], reason=event["reason"], updated_at=stamp, caused_by=cause)
    )

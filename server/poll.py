"""A vehicle's poll: check its signed manifest, record it, and hand out signed assignments.

This is the server's hot path: a million vehicles polling every 15 minutes is ~1,100 polls/s, and
most polls have nothing to do. So it is written for few database round trips and little Python
per call, with the same guarantees as the rest of the API:

* SQLAlchemy Core statements built once at import (SQLAlchemy memoises their cache keys, so
  executing them builds nothing); no ORM objects and no unit of work.
* One ``SELECT`` reads the vehicle's key and counter, its installed images, and whether it has any
  open campaign membership at all.
* The manifest counter moves forward by compare-and-set (``UPDATE … WHERE manifest_counter <
  :counter``): that is the replay guard, so no row lock and, on PostgreSQL, no explicit
  transaction (each statement commits on its own: 2 round trips for a "nothing to do" poll).
* The assignment query runs only for a vehicle with an open membership (at any time, most of the
  fleet has none); a membership goes ``pending`` → ``assigned`` by a conditional ``UPDATE``, so
  two concurrent polls of one vehicle cannot both move it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite

from overdrive.envelope import MANIFEST, EnvelopeError, verify_envelope
from overdrive.errors import OverdriveError
from server.context import ServerContext
from server.errors import BadRequest, Conflict, NotFoundError, Unauthorized
from server.models import RUNNING, Campaign, CampaignRelease, InstalledImage, Membership, Vehicle
from server.validation import MAX_INT32, field
from server.vehicles import FINAL, iso, parse_images, parse_time, utcnow, vehicle_key_from_text

__all__ = ["PollResult", "poll"]

_OPEN = and_(
    Membership.vehicle_id == bindparam("vid"),
    Membership.active.is_(True),
    Membership.admitted.is_(True),
    Membership.status.not_in(FINAL),
)

#: The vehicle, one row per installed image (or one row of NULLs), and "has an open membership".
_READ_VEHICLE = (
    select(
        Vehicle.public_key,
        Vehicle.manifest_counter,
        InstalledImage.hardware_id,
        InstalledImage.version,
        InstalledImage.sha256,
        InstalledImage.release_counter,
        exists().where(_OPEN).label("has_work"),
    )
    .select_from(Vehicle)
    .outerjoin(InstalledImage, InstalledImage.vehicle_id == Vehicle.id)
    .where(Vehicle.id == bindparam("vid"))
)

#: Compare-and-set: zero rows means another poll already used this counter (or a later one).
_ADVANCE = (
    update(Vehicle)
    .where(Vehicle.id == bindparam("vid"), Vehicle.manifest_counter < bindparam("counter"))
    .values(
        manifest_counter=bindparam("counter"),
        last_seen_at=bindparam("now"),
        status=bindparam("status", type_=Vehicle.status.type),
    )
)

_OPEN_ASSIGNMENTS = (
    select(
        Membership.campaign_id,
        Membership.hardware_id,
        Membership.status,
        Campaign.policy,
        CampaignRelease.version,
        CampaignRelease.release_counter,
        CampaignRelease.image_sha256,
    )
    .join(Campaign, Campaign.id == Membership.campaign_id)
    .join(
        CampaignRelease,
        (CampaignRelease.campaign_id == Membership.campaign_id)
        & (CampaignRelease.hardware_id == Membership.hardware_id),
    )
    .where(_OPEN, Campaign.state == RUNNING)
)

_MARK_ASSIGNED = (
    update(Membership)
    .where(
        Membership.campaign_id == bindparam("cid"),
        Membership.vehicle_id == bindparam("vid"),
        Membership.hardware_id == bindparam("hw"),
        Membership.status == "pending",
    )
    .values(status="assigned", updated_at=bindparam("now"))
)


def _upsert_image(dialect: Any) -> Any:
    stmt = dialect.insert(InstalledImage).values(
        vehicle_id=bindparam("vid"),
        hardware_id=bindparam("hw"),
        version=bindparam("version"),
        sha256=bindparam("sha256"),
        release_counter=bindparam("release_counter"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[InstalledImage.vehicle_id, InstalledImage.hardware_id],
        set_={c: stmt.excluded[c] for c in ("version", "sha256", "release_counter")},
    )


_UPSERT_IMAGE = {"postgresql": _upsert_image(postgresql), "sqlite": _upsert_image(sqlite)}


@dataclass
class PollResult:
    assignments: list[dict[str, Any]]
    next_poll: int


@contextmanager
def _connection(ctx: ServerContext) -> Iterator[Connection]:
    """Autocommit on PostgreSQL (every statement here stands alone, so BEGIN/COMMIT would only
    add round trips); one ``BEGIN IMMEDIATE`` transaction on SQLite, where round trips are free
    and a single writer is the rule anyway."""
    if ctx.engine.dialect.name == "sqlite":
        with ctx.engine.begin() as conn:
            yield conn
    else:
        with ctx.engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")


def poll(ctx: ServerContext, vehicle_id: str, envelope: Any) -> PollResult:
    """Answer one signed poll: the director-signed assignments this vehicle should act on now."""
    stamp = utcnow()
    with _connection(ctx) as conn:
        rows = conn.execute(_READ_VEHICLE, {"vid": vehicle_id}).all()
        if not rows:
            raise NotFoundError(f"unknown vehicle {vehicle_id}")
        public_key, stored_counter = rows[0].public_key, rows[0].manifest_counter
        try:
            manifest = verify_envelope(envelope, vehicle_key_from_text(public_key), MANIFEST)
        except EnvelopeError as e:
            raise Unauthorized(f"{e} (vehicle {vehicle_id})") from e
        if manifest.get("vehicle_id") != vehicle_id:
            raise Unauthorized("message is signed for another vehicle")
        counter = field(manifest, "counter", int, where="signed.")
        if not 0 < counter <= MAX_INT32:
            raise BadRequest(f"field 'signed.counter' must be 1..{MAX_INT32}")
        if counter <= stored_counter:
            raise Conflict(f"replayed manifest: counter {counter} is not above {stored_counter}")
        sent_at = parse_time(manifest.get("timestamp"), "signed.timestamp")
        if abs((sent_at - stamp).total_seconds()) > ctx.config.clock_skew:
            raise BadRequest(
                f"manifest timestamp {iso(sent_at)} is too far from server time {iso(stamp)}"
            )
        nonce = field(manifest, "nonce", str, where="signed.")
        if not 8 <= len(nonce) <= 128:
            raise BadRequest("field 'signed.nonce' must be 8..128 characters")
        images = parse_images(manifest.get("images", {}), "signed.images")
        status = {k: manifest[k] for k in ("slot", "state", "last_result") if k in manifest}

        advanced = conn.execute(
            _ADVANCE, {"vid": vehicle_id, "counter": counter, "now": stamp, "status": status}
        )
        if advanced.rowcount != 1:  # a concurrent poll got there first
            raise Conflict(f"replayed manifest: counter {counter} is not above the stored one")
        stored = {
            r.hardware_id: (r.version, r.sha256, r.release_counter)
            for r in rows
            if r.hardware_id is not None
        }
        changed = [
            {"vid": vehicle_id, "hw": hw, **image}
            for hw, image in images.items()
            if stored.get(hw) != (image["version"], image["sha256"], image["release_counter"])
        ]
        if changed:
            conn.execute(_UPSERT_IMAGE[ctx.engine.dialect.name], changed)
        assignments = (
            _assignments(ctx, conn, vehicle_id, nonce, images, stamp) if rows[0].has_work else []
        )
    return PollResult(assignments, ctx.config.poll_interval)


def _assignments(
    ctx: ServerContext,
    conn: Connection,
    vehicle_id: str,
    nonce: str,
    images: dict[str, dict[str, Any]],
    stamp: datetime,
) -> list[dict[str, Any]]:
    assignments = []
    for row in conn.execute(_OPEN_ASSIGNMENTS, {"vid": vehicle_id}):
        installed = images.get(row.hardware_id)
        if installed is not None and installed["sha256"] == row.image_sha256:
            continue  # already there; the vehicle reports "committed" itself
        try:
            bundle = (
                ctx.releases.index()
                .get(row.hardware_id, row.version)
                .best_for(installed["sha256"] if installed else None)
            )
        except OverdriveError:
            continue  # the release vanished from the verified repository: offer nothing
        payload = {
            "_type": "assignment",
            "vehicle_id": vehicle_id,
            "nonce": nonce,
            "issued": iso(stamp),
            "expires": iso(stamp + timedelta(seconds=ctx.config.assignment_ttl)),
            "campaign_id": row.campaign_id,
            "hardware_id": row.hardware_id,
            "version": row.version,
            "release_counter": row.release_counter,
            "target": {"path": bundle.path, "sha256": bundle.sha256, "length": bundle.length},
            "kind": bundle.info.kind,
            "maintenance_windows": row.policy.get("maintenance_windows", []),
        }
        assignments.append(ctx.require_director().sign(payload))
        if row.status == "pending":
            conn.execute(
                _MARK_ASSIGNED,
                {"cid": row.campaign_id, "vid": vehicle_id, "hw": row.hardware_id, "now": stamp},
            )
    return assignments

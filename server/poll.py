"""A vehicle's poll: check its vehicle version manifest, record it, and keep its director
repository up to date (signing a new chain only when what it lists changes, see
:mod:`overdrive.server.director_store`), answering with the chain's version and a signed time.

This is the server's hot path: a million vehicles polling every 15 minutes is ~1,100 polls/s, and
most polls have nothing to do. So it is written for few database round trips and little Python
per call, with the same guarantees as the rest of the API:

* SQLAlchemy Core statements built once at import; no ORM objects and no unit of work. On
  PostgreSQL they are compiled once to SQL and run as prepared statements on a psycopg connection
  of the worker thread's own (autocommit, no pool checkout, no pre-ping, no reset on return:
  together more than a quarter of a poll's CPU through the engine), reconnecting when it broke;
  on SQLite they run through the engine in one ``BEGIN IMMEDIATE`` transaction.
* One ``SELECT`` reads one row: the vehicle's key, counters, ECUs and status, where its
  director repository stands, whether it has any open campaign membership at all and,
  aggregated into JSON columns, each ECU's installed image and the releases its open
  memberships of running campaigns offer (subqueries over bind parameters only: PostgreSQL
  evaluates each once). A car has many ECUs: one row per image would repeat the rest.
* The manifest counter moves forward by compare-and-set (``UPDATE … WHERE manifest_counter <
  :counter``): that is the replay guard, so no row lock and, on PostgreSQL, no explicit
  transaction (each statement commits on its own: 2 round trips for a "nothing to do" poll).
  On PostgreSQL, changed installed images (one per ECU) are upserted by the same statement (a
  data-modifying ``WITH``) only if the counter moved. The same ``UPDATE`` writes the status,
  with what the server derives about the ECUs (unknown serials, ECUs missing from the
  manifest; see :func:`overdrive.server.manifest.ecu_status`): no extra round trip.
* A membership goes ``pending`` → ``assigned`` by a conditional ``UPDATE``, so two concurrent
  polls of one vehicle cannot both move it.
* A new chain (three signatures and one upsert) is written only when the targets change, the
  timestamp is past half its life or the director's root changed: 3 round trips in all for a
  poll that gets a new assignment. Every poll gets a time attestation (one signature) so that
  the vehicle can check expiry against a time it trusts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Json
from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    Executable,
    Integer,
    String,
    and_,
    bindparam,
    column,
    delete,
    exists,
    func,
    literal,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import GenericFunction
from tuf.api.metadata import TargetFile

from overdrive.errors import OverdriveError
from overdrive.server import director_store
from overdrive.server.context import ServerContext
from overdrive.server.db import DirectConnections
from overdrive.server.director_store import EMPTY_DIGEST, publish, state_of
from overdrive.server.errors import BadRequest, Conflict
from overdrive.server.manifest import Reports, check_reports, ecu_status, images_of
from overdrive.server.models import (
    RUNNING,
    Campaign,
    CampaignRelease,
    DirectorRepo,
    InstalledImage,
    Membership,
    Vehicle,
)
from overdrive.server.validation import MAX_INT32, field
from overdrive.server.vehicles import (
    FINAL,
    aware,
    parse_status,
    parse_time,
    unknown_vehicle,
    utcnow,
    vehicle_key_from_text,
    verify_signed,
)
from overdrive.uptane import VEHICLE_MANIFEST, DirectorEntry, director_targets

__all__ = ["PollResult", "poll", "record_poll"]

_OPEN = and_(
    Membership.vehicle_id == bindparam("vid"),
    Membership.active.is_(True),
    Membership.admitted.is_(True),
    # Not `not_in(FINAL)`: an expanding IN is re-rendered on every execution.
    *(Membership.status != literal(status) for status in FINAL),
)


class json_rows(GenericFunction[Any]):
    """The rows of a subquery as one JSON array of arrays (``[]`` or NULL when there are none):
    ``json_agg(json_build_array(…))`` on PostgreSQL, ``json_group_array(json_array(…))`` on
    SQLite (where a JSON column's text must go through ``json()`` to stay an object)."""

    type = JSON()
    inherit_cache = True


@compiles(json_rows, "postgresql")
def _json_rows_pg(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    return f"json_agg(json_build_array({compiler.process(element.clauses, **kw)}))"


@compiles(json_rows, "sqlite")
def _json_rows_sqlite(element: json_rows, compiler: SQLCompiler, **kw: Any) -> str:
    items = [
        f"json({compiler.process(c, **kw)})"
        if isinstance(c.type, JSON)
        else compiler.process(c, **kw)
        for c in element.clauses
    ]
    return f"json_group_array(json_array({', '.join(items)}))"


def _offers() -> ColumnElement[Any]:
    """What the vehicle's open memberships of running campaigns offer, one JSON array per
    membership: ``[campaign_id, hardware_id, status, policy, version, release_counter,
    image_sha256, install_order]``."""
    return (
        select(
            json_rows(
                Membership.campaign_id,
                Membership.hardware_id,
                Membership.status,
                Campaign.policy,
                CampaignRelease.version,
                CampaignRelease.release_counter,
                CampaignRelease.image_sha256,
                CampaignRelease.install_order,
            )
        )
        .select_from(Membership)
        .join(Campaign, Campaign.id == Membership.campaign_id)
        .join(
            CampaignRelease,
            (CampaignRelease.campaign_id == Membership.campaign_id)
            & (CampaignRelease.hardware_id == Membership.hardware_id),
        )
        .where(_OPEN, Campaign.state == RUNNING)
        .scalar_subquery()
    )


def _installed() -> ColumnElement[Any]:
    """The vehicle's installed images, one JSON array per ECU: ``[ecu_serial, hardware_id,
    version, sha256, release_counter]``."""
    return (
        select(
            json_rows(
                InstalledImage.ecu_serial,
                InstalledImage.hardware_id,
                InstalledImage.version,
                InstalledImage.sha256,
                InstalledImage.release_counter,
            )
        )
        .where(InstalledImage.vehicle_id == bindparam("vid"))
        .scalar_subquery()
    )


#: The vehicle and its director repository's state (one row), "has an open membership", what
#: its memberships offer and its ECUs' installed images.
_READ_VEHICLE = (
    select(
        Vehicle.public_key,
        Vehicle.manifest_counter,
        Vehicle.ecus,
        Vehicle.ecu_counters,
        Vehicle.status,
        Vehicle.last_seen_at,
        DirectorRepo.version,
        DirectorRepo.root_version,
        DirectorRepo.digest,
        DirectorRepo.expires,
        exists().where(_OPEN).label("has_work"),
        _offers().label("offers"),
        _installed().label("installed"),
    )
    .select_from(Vehicle)
    .outerjoin(DirectorRepo, DirectorRepo.vehicle_id == Vehicle.id)
    .where(Vehicle.id == bindparam("vid"))
)

#: Compare-and-set: zero rows means another poll already used this counter (or a later one),
#: or the vehicle's key changed since it was read (its primary was replaced: see server.ecus).
_ADVANCE = (
    update(Vehicle)
    .where(
        Vehicle.id == bindparam("vid"),
        Vehicle.manifest_counter < bindparam("counter"),
        Vehicle.public_key == bindparam("key"),
    )
    .values(
        manifest_counter=bindparam("counter"),
        last_seen_at=bindparam("now"),
        status=bindparam("status", type_=Vehicle.status.type),
        ecu_counters=bindparam("ecu_counters", type_=JSON),
    )
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


#: What an upsert of an ECU's reported image sets when the ECU has a row already.
_IMAGE_UPDATE = ("hardware_id", "version", "sha256", "release_counter")


def _upsert_image(dialect: Any) -> Any:
    stmt = dialect.insert(InstalledImage).values(
        vehicle_id=bindparam("vid"),
        ecu_serial=bindparam("serial"),
        hardware_id=bindparam("hw"),
        version=bindparam("version"),
        sha256=bindparam("sha256"),
        release_counter=bindparam("release_counter"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[InstalledImage.vehicle_id, InstalledImage.ecu_serial],
        set_={c: stmt.excluded[c] for c in _IMAGE_UPDATE},
    )


_UPSERT_IMAGE = {"postgresql": _upsert_image(postgresql), "sqlite": _upsert_image(sqlite)}

#: The image row of a serial that is no ECU of the vehicle any more (see :func:`poll`).
_DELETE_IMAGE = delete(InstalledImage).where(
    InstalledImage.vehicle_id == bindparam("vid"), InstalledImage.ecu_serial == bindparam("serial")
)


def _advance_with_images() -> Executable:
    """PostgreSQL: :data:`_ADVANCE` and, only if it moved the counter, the upsert of the
    installed images in ``:images`` (a JSON array of objects), in one statement; its one row
    says how many vehicles it advanced (0 or 1)."""
    advanced = _ADVANCE.returning(Vehicle.id).cte("advanced")
    images = (
        func.json_to_recordset(bindparam("images", type_=JSON))
        .table_valued(
            column("serial", String),
            column("hw", String),
            column("version", String),
            column("sha256", String),
            column("release_counter", Integer),
        )
        .render_derived(name="image", with_types=True)
    )
    insert = postgresql.insert(InstalledImage).from_select(
        ["vehicle_id", "ecu_serial", "hardware_id", "version", "sha256", "release_counter"],
        select(
            advanced.c.id,
            images.c.serial,
            images.c.hw,
            images.c.version,
            images.c.sha256,
            images.c.release_counter,
        ).select_from(advanced.join(images, true())),
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[InstalledImage.vehicle_id, InstalledImage.ecu_serial],
        set_={c: insert.excluded[c] for c in _IMAGE_UPDATE},
    ).cte("upserted")
    return select(func.count()).select_from(advanced).add_cte(upsert)


@dataclass
class PollResult:
    #: The version of the vehicle's director chain (None: it has none yet), and how many
    #: images a chain signed by this very poll assigns.
    director_version: int | None
    time: dict[str, Any] | None
    next_poll: int
    assigned: int = 0
    #: Reports of serials that are no ECU of the vehicle (ignored, see server.manifest).
    unknown_ecus: int = 0

    def body(self) -> dict[str, Any]:
        """The answer's JSON body."""
        body: dict[str, Any] = {"next_poll_seconds": self.next_poll}
        if self.director_version is not None:
            body["director"] = {"version": self.director_version}
        if self.time is not None:
            body["time"] = self.time
        return body


def record_poll(ctx: ServerContext, result: PollResult) -> None:
    """Count an answered poll in the metrics."""
    ctx.metrics.polls.labels("assignment" if result.assigned else "nothing").inc()
    if result.assigned:
        ctx.metrics.assignments.inc(result.assigned)
    if result.unknown_ecus:
        ctx.metrics.unknown_ecu_reports.inc(result.unknown_ecus)


class _Statements(Protocol):
    """Runs the statements above by name: through the engine, or as prepared psycopg SQL."""

    def rows(self, name: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]: ...

    def count(self, name: str, params: dict[str, Any] | list[dict[str, Any]]) -> int: ...

    def advance(self, params: dict[str, Any], images: list[dict[str, Any]]) -> bool:
        """Run ``advance`` and, if it moved the counter, upsert ``images``; whether it moved."""
        ...


_STATEMENTS: dict[str, Executable] = {
    "read_vehicle": _READ_VEHICLE,
    "advance": _ADVANCE,
    "mark_assigned": _MARK_ASSIGNED,
    "upsert_image": _UPSERT_IMAGE["sqlite"],
    "delete_image": _DELETE_IMAGE,
    **director_store.STATEMENTS,
}


class _EngineStatements:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def rows(self, name: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        return self.conn.execute(_STATEMENTS[name], params).all()

    def count(self, name: str, params: dict[str, Any] | list[dict[str, Any]]) -> int:
        return self.conn.execute(_STATEMENTS[name], params).rowcount

    def advance(self, params: dict[str, Any], images: list[dict[str, Any]]) -> bool:
        if self.count("advance", params) != 1:
            return False
        if images:
            self.count("upsert_image", [{"vid": params["vid"], **image} for image in images])
        return True


def _compile_for_psycopg() -> dict[str, tuple[str, dict[str, Any]]]:
    """Each statement as PostgreSQL SQL (``%(name)s`` parameters) with its constant parameters."""
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    dialect = PGDialect_psycopg()  # type: ignore[no-untyped-call]
    statements = {
        **_STATEMENTS,
        "upsert_image": _UPSERT_IMAGE["postgresql"],
        "advance_with_images": _advance_with_images(),
        "director_upsert": director_store.UPSERT_REPO["postgresql"],
    }
    compiled = {name: stmt.compile(dialect=dialect) for name, stmt in statements.items()}
    return {
        name: (str(c), {k: v for k, v in c.params.items() if v is not None})
        for name, c in compiled.items()
    }


_PSYCOPG_SQL = _compile_for_psycopg()
_READS = frozenset({"read_vehicle", "director_state", "director_files"})
#: SQLSTATEs after which a session must be replaced: feature_not_supported (a cached plan whose
#: result type changed), read_only_sql_transaction (connected to a demoted primary).
_NEEDS_NEW_SESSION = frozenset({"0A000", "25006"})


class _PsycopgStatements:
    def __init__(self, direct: DirectConnections) -> None:
        self.direct = direct

    def _execute(
        self, name: str, params: dict[str, Any] | list[dict[str, Any]]
    ) -> psycopg.Cursor[Any]:
        """Run statement ``name`` (once per parameter set if ``params`` is a list)."""
        sql, constants = _PSYCOPG_SQL[name]
        values: dict[str, Any] | list[dict[str, Any]]
        if isinstance(params, list):
            values = [_adapt(constants, p) for p in params]
        else:
            values = _adapt(constants, params)
        if self.direct.trace is not None:
            self.direct.trace(sql, values)
        try:
            return self._send(sql, values)
        except psycopg.Error as e:
            if not self._dropped(e) or name not in _READS:
                raise  # a write may or may not have happened: the vehicle polls again
            # A stale connection (the database restarted since its last use): once more.
            return self._send(sql, values)

    def _send(self, sql: str, values: Any) -> psycopg.Cursor[Any]:
        if isinstance(values, list):
            cursor = self.direct.get().cursor()
            cursor.executemany(sql.encode(), values)
            return cursor
        return self.direct.get().execute(sql.encode(), values, prepare=True)

    def _dropped(self, error: psycopg.Error) -> bool:
        """Drop this thread's connection if ``error`` left it unusable; say whether it did.

        A broken connection (server gone, restarted), a demoted primary (read-only) and a
        prepared statement whose plan no longer fits (schema migrated underneath) all need a
        fresh session; a statement timeout or a lock conflict do not.
        """
        conn = self.direct.current()
        gone = conn is None or conn.broken or conn.closed
        if gone or error.sqlstate in _NEEDS_NEW_SESSION:
            self.direct.discard()
            return True
        return False

    def rows(self, name: str, params: dict[str, Any]) -> Sequence[Sequence[Any]]:
        return self._execute(name, params).fetchall()

    def count(self, name: str, params: dict[str, Any] | list[dict[str, Any]]) -> int:
        return self._execute(name, params).rowcount

    def advance(self, params: dict[str, Any], images: list[dict[str, Any]]) -> bool:
        if not images:
            return self.count("advance", params) == 1
        return bool(self.rows("advance_with_images", {**params, "images": images})[0][0])


def _adapt(constants: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The constants plus ``params``, JSON values wrapped for psycopg (the SQL casts to JSON)."""
    merged = {**constants, **params}
    for key, value in params.items():
        if isinstance(value, (dict, list)):
            merged[key] = Json(value)
    return merged


@contextmanager
def statements(ctx: ServerContext) -> Iterator[_Statements]:
    """The statement runner for this thread: prepared psycopg statements on PostgreSQL, one
    engine transaction (committed at the end of the block) on SQLite."""
    if ctx.direct is None:
        with ctx.engine.begin() as conn:
            yield _EngineStatements(conn)
    else:
        yield _PsycopgStatements(ctx.direct)


def poll(ctx: ServerContext, vehicle_id: str, envelope: Any) -> PollResult:
    """Answer one vehicle version manifest: the director chain's version and a signed time."""
    stamp = utcnow()
    with statements(ctx) as db:
        rows = db.rows("read_vehicle", {"vid": vehicle_id})
        if not rows:
            unknown_vehicle(vehicle_id, envelope, VEHICLE_MANIFEST)  # the 401 of a bad signature
        public_key, stored_counter, ecus, ecu_counters, stored_status, last_seen = rows[0][:6]
        repo, (has_work, offers, installed) = rows[0][6:10], rows[0][10:13]
        vehicle_keys = vehicle_key_from_text(public_key)
        manifest = verify_signed(vehicle_keys, vehicle_id, envelope, VEHICLE_MANIFEST)
        counter = field(manifest, "counter", int, where="signed.")
        if not 0 < counter <= MAX_INT32:
            raise BadRequest(f"field 'signed.counter' must be 1..{MAX_INT32}")
        if counter <= stored_counter:
            raise Conflict(f"replayed manifest: counter {counter} is not above {stored_counter}")
        # Required, but not judged: a vehicle whose clock is off (an RTC that lost power) must
        # still be able to poll, and the time attestation it gets back tells it the time.
        parse_time(manifest.get("timestamp"), "signed.timestamp")
        nonce = field(manifest, "nonce", str, where="signed.")
        if not 8 <= len(nonce) <= 128 or not nonce.isascii() or not nonce.isalnum():
            raise BadRequest("field 'signed.nonce' must be 8..128 letters and digits")
        ecus, counters = ecus or {}, ecu_counters or {}
        reports = check_reports(
            manifest.get("ecu_version_reports"),
            primary=manifest.get("primary_ecu_serial"),
            nonce=nonce,
            vehicle_keys=vehicle_keys,
            ecus=ecus,
            counters=counters,
        )
        seen = aware(last_seen) if last_seen is not None else None
        status = {
            **parse_status(manifest),
            **ecu_status(reports, ecus, stored_status or {}, seen, stamp),
        }
        new_counters = {
            s: c for s, c in {**counters, **_counters(reports)}.items() if s in ecus
        }  # (a replaced ECU's old serial is dropped)
        stored = {
            row[0]: {"hw": row[1], "version": row[2], "sha256": row[3], "release_counter": row[4]}
            for row in installed or ()
        }
        reported = images_of(reports)
        changed = [
            {"serial": serial, **image}
            for serial, image in reported.items()
            if stored.get(serial) != image
        ]
        advanced = db.advance(
            {
                "vid": vehicle_id,
                "key": public_key,
                "counter": counter,
                "now": stamp,
                "status": status,
                "ecu_counters": new_counters,
            },
            changed,
        )
        if not advanced:  # a concurrent poll got there first (or the primary was just replaced)
            raise Conflict(f"replayed manifest: counter {counter} is not above the stored one")
        # The image of a serial that is no ECU any more: a poll that read the vehicle before an
        # ECU replacement and wrote after it (PostgreSQL) upserted the old serial's image again.
        stray = [serial for serial in stored if serial not in ecus]
        if stray:
            db.count("delete_image", [{"vid": vehicle_id, "serial": s} for s in stray])
        images = {s: image for s, image in stored.items() if s in ecus} | reported
        state = state_of(repo)
        assigned = 0
        unknown = len(reports.unknown)
        if ctx.director is None:
            if has_work:
                ctx.require_director()  # 503: nothing can be assigned without one
            return PollResult(None, None, ctx.config.poll_interval, unknown_ecus=unknown)
        director = ctx.director
        director.maybe_reload()
        listed = has_work or (state is not None and state.digest != EMPTY_DIGEST)
        targets = (
            _director_targets(ctx, db, vehicle_id, ecus, images, offers or [], stamp)
            if listed
            else {}
        )
        # targets None: no verified release index now; keep what the chain lists (re-signed on GET)
        if targets is not None:
            content = director_store.digest(targets)
            new = content != (state.digest if state else EMPTY_DIGEST)
            if new or (state and director.due(state.root_version, state.expires, stamp)):
                assigned = len(targets) if new else 0  # not the same list re-signed
                state = publish(
                    director, db, vehicle_id, targets, state, stamp, content_digest=content
                )
        attestation = director.attest_time(nonce, stamp)
    return PollResult(
        state.version if state else None,
        attestation,
        ctx.config.poll_interval,
        assigned,
        unknown,
    )


def _counters(reports: Reports) -> dict[str, int]:
    return {serial: report.counter for serial, report in reports.known.items()}


def _director_targets(
    ctx: ServerContext,
    db: _Statements,
    vehicle_id: str,
    ecus: dict[str, Any],
    images: dict[str, dict[str, Any]],
    offers: list[list[Any]],
    stamp: datetime,
) -> dict[str, TargetFile] | None:
    """What the vehicle's director targets must list now: per ECU (``images``: serial → the
    image it runs), the bundle of its open campaign's release that suits the image *that ECU*
    runs (nothing for an ECU already on it), ranked by the campaign's install order; None
    when that cannot be known now (the image repository does not verify at the moment)."""
    serials: dict[str, list[str]] = {}
    for serial, about in ecus.items():
        if isinstance(about, dict) and isinstance(about.get("hardware_id"), str):
            serials.setdefault(about["hardware_id"], []).append(serial)
    if not offers:
        return {}
    try:
        index = ctx.releases.index()
    except OverdriveError:
        return None  # no verified repository to offer from right now
    entries = []
    for campaign_id, hw, status, policy, version, release_counter, sha256, order in offers:
        behind = [
            (serial, images.get(serial))
            for serial in serials.get(hw, [])
            if (images.get(serial) or {}).get("sha256") != sha256
        ]  # (an ECU already on it reports "committed" itself)
        if not behind:
            continue
        release = index.find(hw, version)
        if release is None or release.yanked is not None:
            continue  # vanished from the verified repository, or withdrawn: offer nothing
        for serial, installed in behind:
            bundle = release.best_for(installed["sha256"] if installed else None)
            entries.append(
                DirectorEntry(
                    serial,
                    hw,
                    bundle.path,
                    bundle.length,
                    {"sha256": bundle.sha256},
                    release_counter,
                    version,
                    campaign_id,
                    list(policy.get("maintenance_windows", [])),
                    order,
                )
            )
        if status == "pending":
            db.count(
                "mark_assigned", {"cid": campaign_id, "vid": vehicle_id, "hw": hw, "now": stamp}
            )
    return director_targets(entries)

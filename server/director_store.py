"""Storing and serving each vehicle's director metadata (signed by :mod:`overdrive.server.director`).

Statements are SQLAlchemy Core built once, run by the poll's statement runners
(:mod:`overdrive.server.poll`: prepared psycopg statements on PostgreSQL, the engine on SQLite),
so a poll that changes an assignment stores its chain on the connection it already holds.

A vehicle's repository is one row: the current chain's three files and the previous chain's
targets and snapshot. A new chain is written by one statement, an upsert with a compare-and-set
on ``director_repos.version`` (of two concurrent writers for one vehicle, the second gets a 409
and the vehicle polls again) that moves the current files to ``previous_*`` as it replaces them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Executable, bindparam, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from tuf.api.metadata import Metadata, TargetFile, Targets

from overdrive.envelope import canonical
from overdrive.server.director import Director
from overdrive.server.errors import Conflict
from overdrive.server.models import DirectorRepo, Vehicle
from overdrive.server.vehicles import aware

#: Digest of a director targets that lists nothing.
EMPTY_DIGEST = hashlib.sha256(b"{}").hexdigest()


class Statements(Protocol):
    """What :mod:`overdrive.server.poll`'s runners offer: statements by name."""

    def rows(self, name: str, params: dict[str, Any]) -> Any: ...

    def count(self, name: str, params: dict[str, Any] | list[dict[str, Any]]) -> int: ...


@dataclass(frozen=True)
class RepoState:
    """A vehicle's stored chain: its version, the root that signed it, what it lists."""

    version: int
    root_version: int
    digest: str
    expires: datetime


def digest(targets: dict[str, TargetFile]) -> str:
    """What a director targets lists, as a sha256 (equal content, equal digest)."""
    if not targets:
        return EMPTY_DIGEST
    return hashlib.sha256(canonical({p: t.to_dict() for p, t in targets.items()})).hexdigest()


_NEW = (
    "version",
    "root_version",
    "digest",
    "expires",
    "signed_at",
    "targets",
    "snapshot",
    "timestamp",
)


def _upsert_repo(dialect: Any) -> Any:
    stmt = dialect.insert(DirectorRepo).values(
        vehicle_id=bindparam("vid"),
        version=bindparam("version"),
        root_version=bindparam("root_version"),
        digest=bindparam("digest"),
        expires=bindparam("expires"),
        signed_at=bindparam("now"),
        targets=bindparam("targets"),
        snapshot=bindparam("snapshot"),
        timestamp=bindparam("timestamp"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[DirectorRepo.vehicle_id],
        set_={
            **{c: stmt.excluded[c] for c in _NEW},
            # the row's values before this update: the chain being replaced
            "previous_targets": DirectorRepo.targets,
            "previous_snapshot": DirectorRepo.snapshot,
        },
        where=DirectorRepo.version == bindparam("old"),
    )


UPSERT_REPO = {"postgresql": _upsert_repo(postgresql), "sqlite": _upsert_repo(sqlite)}

STATEMENTS: dict[str, Executable] = {
    "director_state": select(
        literal(1),
        DirectorRepo.version,
        DirectorRepo.root_version,
        DirectorRepo.digest,
        DirectorRepo.expires,
    )
    .select_from(Vehicle)
    .outerjoin(DirectorRepo, DirectorRepo.vehicle_id == Vehicle.id)
    .where(Vehicle.id == bindparam("vid")),
    "director_upsert": UPSERT_REPO["sqlite"],
    "director_files": select(
        DirectorRepo.version,
        DirectorRepo.targets,
        DirectorRepo.snapshot,
        DirectorRepo.timestamp,
        DirectorRepo.previous_targets,
        DirectorRepo.previous_snapshot,
    ).where(DirectorRepo.vehicle_id == bindparam("vid")),
}


def state_of(row: Any) -> RepoState | None:
    """A :class:`RepoState` from a row's (version, root_version, digest, expires), if any."""
    version, root_version, stored_digest, expires = row
    if version is None:
        return None
    return RepoState(version, root_version, stored_digest, aware(expires))


def publish(
    director: Director,
    db: Statements,
    vehicle_id: str,
    targets: dict[str, TargetFile],
    old: RepoState | None,
    now: datetime,
    *,
    content_digest: str | None = None,
) -> RepoState:
    """Sign and store the next chain of ``vehicle_id`` listing ``targets``; where it stands."""
    version = (old.version if old else 0) + 1
    chain = director.sign_chain(vehicle_id, targets, version, now)
    content_digest = content_digest or digest(targets)
    moved = db.count(
        "director_upsert",
        {
            "vid": vehicle_id,
            "version": version,
            "root_version": chain.root_version,
            "digest": content_digest,
            "expires": chain.expires,
            "now": now,
            "old": old.version if old else 0,
            **chain.bodies(),
        },
    )
    if moved != 1:
        raise Conflict("the vehicle's director metadata changed concurrently: poll again")
    return RepoState(version, chain.root_version, content_digest, chain.expires)


def stored_file(db: Statements, vehicle_id: str, role: str, version: int) -> bytes | None:
    """The stored ``role`` file of chain ``version`` (the current or the previous one)."""
    rows = db.rows("director_files", {"vid": vehicle_id})
    if not rows:
        return None
    current, targets, snapshot, timestamp, previous_targets, previous_snapshot = rows[0]
    files = {
        current: {"targets": targets, "snapshot": snapshot, "timestamp": timestamp},
        current - 1: {"targets": previous_targets, "snapshot": previous_snapshot},
    }
    body = files.get(version, {}).get(role)
    return bytes(body) if body is not None else None


def stored_targets(db: Statements, vehicle_id: str, state: RepoState) -> dict[str, TargetFile]:
    """The targets the stored chain lists (to re-sign them unchanged)."""
    body = stored_file(db, vehicle_id, "targets", state.version)
    if body is None:
        return {}
    return dict(Metadata[Targets].from_bytes(body).signed.targets)


def current(director: Director, db: Statements, vehicle_id: str, now: datetime) -> RepoState | None:
    """The vehicle's chain, signed first if it has none yet or it is due (see
    :meth:`Director.due`); None if there is no such vehicle."""
    rows = db.rows("director_state", {"vid": vehicle_id})
    if not rows:
        return None
    state = state_of(rows[0][1:])
    if state is not None and not director.due(state.root_version, state.expires, now):
        return state
    targets = stored_targets(db, vehicle_id, state) if state else {}
    return publish(director, db, vehicle_id, targets, state, now)


def metadata_file(
    director: Director, db: Statements, vehicle_id: str, name: str, now: datetime
) -> bytes | None:
    """The body of ``name`` (``timestamp.json``, ``N.snapshot.json``, ``N.targets.json``,
    ``N.root.json``, ``root.json``) of the vehicle's director repository, or None."""
    role, version = parse_name(name)
    if role == "root":
        if not db.rows("director_state", {"vid": vehicle_id}):
            return None
        return director.root_bytes(version)
    state = current(director, db, vehicle_id, now)
    if state is None:
        return None
    return stored_file(db, vehicle_id, role, state.version if role == "timestamp" else version or 0)


def parse_name(name: str) -> tuple[str, int | None]:
    """``("timestamp", None)`` for ``timestamp.json``, ``("targets", 3)`` for ``3.targets.json``;
    :class:`ValueError` for anything else (served as a 404)."""
    if name == "timestamp.json":
        return "timestamp", None
    if name == "root.json":
        return "root", None
    number, _, rest = name.partition(".")
    role = rest.removesuffix(".json")
    if (
        rest.endswith(".json")
        and role in ("root", "snapshot", "targets")
        and number.isascii()
        and number.isdigit()
        and len(number) <= 9
        and not number.startswith("0")
    ):
        return role, int(number)
    raise ValueError(name)

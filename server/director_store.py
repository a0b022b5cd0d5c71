"""Storing and serving each vehicle's director metadata (signed by :mod:`overdrive.server.director`).

Statements are SQLAlchemy Core built once, run by the poll's statement runners
(:mod:`overdrive.server.poll`: prepared psycopg statements on PostgreSQL, the engine on SQLite),
so a poll that changes an assignment stores its chain on the connection it already holds.

A new chain is written in one transaction: a compare-and-set on ``director_repos.version``
(two concurrent writers for one vehicle: the second gets a 409 and the vehicle polls again), the
three files, and the pruning of all but the current and the previous version.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Executable, bindparam, delete, insert, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from tuf.api.metadata import Metadata, TargetFile, Targets

from overdrive.envelope import canonical
from overdrive.server.director import Director
from overdrive.server.errors import Conflict
from overdrive.server.models import DirectorMetadata, DirectorRepo, Vehicle
from overdrive.server.vehicles import aware

ROLES = ("targets", "snapshot", "timestamp")
#: Digest of a director targets that lists nothing.
EMPTY_DIGEST = hashlib.sha256(b"{}").hexdigest()


class Statements(Protocol):
    """What :mod:`overdrive.server.poll`'s runners offer: statements by name, and a transaction."""

    def rows(self, name: str, params: dict[str, Any]) -> Any: ...

    def count(self, name: str, params: dict[str, Any] | list[dict[str, Any]]) -> int: ...

    def atomic(self) -> AbstractContextManager[Any]: ...


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


def _upsert_repo(dialect: Any) -> Any:
    stmt = dialect.insert(DirectorRepo).values(
        vehicle_id=bindparam("vid"),
        version=bindparam("version"),
        root_version=bindparam("root_version"),
        digest=bindparam("digest"),
        expires=bindparam("expires"),
        signed_at=bindparam("now"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[DirectorRepo.vehicle_id],
        set_={
            c: stmt.excluded[c]
            for c in ("version", "root_version", "digest", "expires", "signed_at")
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
    "director_put": insert(DirectorMetadata).values(
        vehicle_id=bindparam("vid"),
        role=bindparam("role"),
        version=bindparam("version"),
        body=bindparam("body"),
    ),
    "director_prune": delete(DirectorMetadata).where(
        DirectorMetadata.vehicle_id == bindparam("vid"),
        DirectorMetadata.version < bindparam("keep"),
    ),
    "director_file": select(DirectorMetadata.body).where(
        DirectorMetadata.vehicle_id == bindparam("vid"),
        DirectorMetadata.role == bindparam("role"),
        DirectorMetadata.version == bindparam("version"),
    ),
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
    with db.atomic():
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
            },
        )
        if moved != 1:
            raise Conflict("the vehicle's director metadata changed concurrently: poll again")
        db.count(
            "director_put",
            [
                {"vid": vehicle_id, "role": role, "version": version, "body": body}
                for role, body in chain.bodies().items()
            ],
        )
        db.count("director_prune", {"vid": vehicle_id, "keep": version - 1})
    return RepoState(version, chain.root_version, content_digest, chain.expires)


def stored_targets(db: Statements, vehicle_id: str, state: RepoState) -> dict[str, TargetFile]:
    """The targets the stored chain lists (to re-sign them unchanged)."""
    rows = db.rows(
        "director_file", {"vid": vehicle_id, "role": "targets", "version": state.version}
    )
    if not rows:
        return {}
    md = Metadata[Targets].from_bytes(bytes(rows[0][0]))
    return dict(md.signed.targets)


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
    if role == "timestamp":
        version = state.version
    rows = db.rows("director_file", {"vid": vehicle_id, "role": role, "version": version})
    return bytes(rows[0][0]) if rows else None


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

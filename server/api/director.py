"""``/api/v1/director/<vehicle>/metadata/``: each vehicle's director repository, as TUF serves it.

Any TUF client refreshes a vehicle's director repository from the director's root with this URL
as its metadata base: ``N.root.json`` (the fleet's root chain), ``timestamp.json``,
``N.snapshot.json`` and ``N.targets.json`` (consistent snapshots). Unauthenticated, like any TUF
repository: the metadata is signed, and a vehicle trusts it only as far as it verifies. A
timestamp that is past half its life is re-signed when it is asked for, so a vehicle that was
parked past every expiry finds fresh metadata when it comes back.
"""

from __future__ import annotations

from flask import Blueprint, Response
from flask.typing import ResponseReturnValue

from overdrive.server import director_store
from overdrive.server.context import context
from overdrive.server.errors import NotFoundError
from overdrive.server.poll import statements
from overdrive.server.validation import shown
from overdrive.server.vehicles import utcnow

bp = Blueprint("director", __name__, url_prefix="/api/v1/director")


@bp.get("/<vehicle_id>/metadata/<name>")
def metadata(vehicle_id: str, name: str) -> ResponseReturnValue:
    ctx = context()
    director = ctx.require_director()
    director.maybe_reload()
    try:
        director_store.parse_name(name)
    except ValueError:
        raise NotFoundError(f"no director metadata {name[:80]!r}") from None
    with statements(ctx) as db:
        body = director_store.metadata_file(director, db, vehicle_id, name, utcnow())
    if body is None:
        raise NotFoundError(f"no director metadata {name} for vehicle {shown(vehicle_id)}")
    # Per-vehicle and refreshed as it ages: caches must not keep it (timestamp.json above all).
    return Response(body, mimetype="application/json", headers={"Cache-Control": "no-store"})

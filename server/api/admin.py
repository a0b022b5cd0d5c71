"""``/api/v1/tokens``, ``/api/v1/enroll-tokens`` (admin) and ``/api/v1/audit`` (viewer)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from overdrive.server import tokens
from overdrive.server.audit import entry_dict
from overdrive.server.auth import requires
from overdrive.server.context import context
from overdrive.server.errors import BadRequest
from overdrive.server.models import AuditEntry
from overdrive.server.validation import field, json_body, paging
from overdrive.text import text_problem

bp = Blueprint("admin", __name__, url_prefix="/api/v1")
MAX_ENROLL_SECONDS = 10 * 366 * 86400  # ten years


@bp.post("/tokens")
@requires("admin")
def create_token() -> ResponseReturnValue:
    body = json_body()
    name, role = field(body, "name", str), field(body, "role", str)
    with context().transaction() as session:
        token, secret = tokens.create_api_token(session, name, role)
        data = tokens.token_dict(token)
    return jsonify({**data, "secret": secret}), 201


@bp.get("/tokens")
@requires("admin")
def list_tokens() -> ResponseReturnValue:
    with context().session() as session:
        return jsonify({"items": [tokens.token_dict(t) for t in tokens.list_api_tokens(session)]})


@bp.delete("/tokens/<int(max=2147483647):token_id>")
@requires("admin")
def revoke_token(token_id: int) -> ResponseReturnValue:
    with context().transaction() as session:
        return jsonify(tokens.token_dict(tokens.revoke_api_token(session, token_id)))


@bp.post("/enroll-tokens")
@requires("admin")
def create_enroll_token() -> ResponseReturnValue:
    body = json_body()
    expires = field(body, "expires_in_seconds", int, required=False)
    uses = field(body, "uses", int, required=False, default=1)
    if expires is not None and not 0 < expires <= MAX_ENROLL_SECONDS:
        raise BadRequest(f"field 'expires_in_seconds' must be 1..{MAX_ENROLL_SECONDS}")
    with context().transaction() as session:
        token, secret = tokens.create_enroll_token(
            session, timedelta(seconds=expires) if expires else None, uses
        )
        return jsonify({"id": token.id, "uses": uses, "secret": secret}), 201


@bp.get("/enroll-tokens")
@requires("admin")
def list_enroll_tokens() -> ResponseReturnValue:
    with context().session() as session:
        return jsonify(
            {"items": [tokens.enroll_token_dict(t) for t in tokens.list_enroll_tokens(session)]}
        )


@bp.delete("/enroll-tokens/<int(max=2147483647):token_id>")
@requires("admin")
def revoke_enroll_token(token_id: int) -> ResponseReturnValue:
    with context().transaction() as session:
        return jsonify(tokens.enroll_token_dict(tokens.revoke_enroll_token(session, token_id)))


AUDIT_FILTERS = ("actor", "action", "target", "since", "until")


@bp.get("/audit")
@requires("viewer")
def audit() -> ResponseReturnValue:
    """The audit log, newest first; ``actor``, ``action``, ``target`` (prefix, e.g.
    ``campaign:3f2a``), ``since`` and ``until`` (ISO-8601 times) filter it."""
    from flask import request

    limit, offset = paging()
    query = select(AuditEntry)
    for key in AUDIT_FILTERS:
        value = request.args.get(key)
        if not value:
            continue
        if len(value) > 200 or text_problem(value):
            raise BadRequest(f"filter {key!r} must be one line of at most 200 characters")
        if key == "actor":
            query = query.where(AuditEntry.actor == value)
        elif key == "action":
            query = query.where(AuditEntry.action == value)
        elif key == "target":
            query = query.where(AuditEntry.target.startswith(value, autoescape=True))
        else:
            moment = _moment(key, value)
            query = query.where(
                AuditEntry.at >= moment if key == "since" else AuditEntry.at < moment
            )
    with context().session() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(AuditEntry.id.desc()).limit(limit).offset(offset))
        items = [entry_dict(e) for e in rows]
    return jsonify(
        {
            "items": items,
            "total": total,
            "next_offset": offset + limit if offset + limit < total else None,
        }
    )


def _moment(key: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{key!r} must be an ISO-8601 time like 2026-12-04T14:20:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

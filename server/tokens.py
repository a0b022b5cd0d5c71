"""API tokens and enrollment tokens: created with their secret shown once, stored hashed."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from overdrive.server.audit import record
from overdrive.server.auth import ROLES, hash_secret, new_secret, now
from overdrive.server.errors import BadRequest, NotFoundError
from overdrive.server.models import ApiToken, EnrollToken
from overdrive.server.validation import identifier


def create_api_token(session: Session, name: str, role: str) -> tuple[ApiToken, str]:
    if role not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}")
    identifier(name, "token name")
    secret = new_secret("odt")
    token = ApiToken(name=name, role=role, token_hash=hash_secret(secret), created_at=now())
    session.add(token)
    session.flush()
    record(session, "token.create", f"token:{token.id}", name=name, role=role)
    return token, secret


def revoke_api_token(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFoundError(f"no API token {token_id}")
    if token.revoked_at is None:
        token.revoked_at = now()
        record(session, "token.revoke", f"token:{token.id}", name=token.name)
    return token


def list_api_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.id)))


def token_dict(token: ApiToken) -> dict[str, Any]:
    from overdrive.server.vehicles import iso

    return {
        "id": token.id,
        "name": token.name,
        "role": token.role,
        "created_at": iso(token.created_at),
        "revoked_at": iso(token.revoked_at) if token.revoked_at else None,
    }


def create_enroll_token(
    session: Session, expires_in: timedelta | None, uses: int = 1
) -> tuple[EnrollToken, str]:
    if uses < 1 or uses > 1_000_000:
        raise BadRequest("uses must be 1..1000000")
    secret = new_secret("ode")
    stamp = now()
    expires: datetime | None = stamp + expires_in if expires_in else None
    token = EnrollToken(
        token_hash=hash_secret(secret), created_at=stamp, expires_at=expires, uses_left=uses
    )
    session.add(token)
    session.flush()
    record(
        session,
        "enroll_token.create",
        f"enroll_token:{token.id}",
        uses=uses,
        expires_at=expires.isoformat() if expires else None,
    )
    return token, secret


def list_enroll_tokens(session: Session) -> list[EnrollToken]:
    return list(session.scalars(select(EnrollToken).order_by(EnrollToken.id)))


def enroll_token_dict(token: EnrollToken) -> dict[str, Any]:
    """An enrollment token as operators see it (never its secret: only the hash is stored)."""
    from overdrive.server.vehicles import aware, iso

    expired = token.expires_at is not None and aware(token.expires_at) <= now()
    return {
        "id": token.id,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at) if token.expires_at else None,
        "uses_left": token.uses_left,
        "used_by": token.used_by,
        "usable": token.uses_left > 0 and not expired,
    }


def revoke_enroll_token(session: Session, token_id: int) -> EnrollToken:
    """Use up an enrollment token now: no vehicle can register with it any more."""
    token = session.get(EnrollToken, token_id, with_for_update=True)
    if token is None:
        raise NotFoundError(f"no enrollment token {token_id}")
    token.uses_left = 0
    record(session, "enroll_token.revoke", f"enroll_token:{token.id}")
    return token

"""Operator authentication: bearer tokens with roles, stored only as sha256 hashes.

Roles are ordered: ``viewer`` reads, ``operator`` also manages campaigns, ``admin`` also manages
tokens. Vehicles never use bearer tokens: they sign their messages (see ``server/vehicles.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

from flask import g, request
from sqlalchemy import select

from overdrive.server.context import context
from overdrive.server.errors import Forbidden, Unauthorized
from overdrive.server.models import ApiToken

ROLES = ("viewer", "operator", "admin")
F = TypeVar("F", bound=Callable[..., Any])


def new_secret(prefix: str) -> str:
    """A fresh secret, shown once; its prefix says what it is (``odt_``: API, ``ode_``: enroll)."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


def bearer_secret() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return secret.strip()


def authenticate(minimum: str) -> ApiToken:
    """The token making this request, if it is valid and has at least role ``minimum``."""
    digest = hash_secret(bearer_secret())
    with context().session() as session:
        token = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        raise Unauthorized("invalid API token")
    if token.revoked_at is not None:
        raise Unauthorized("API token has been revoked")
    if ROLES.index(token.role) < ROLES.index(minimum):
        raise Forbidden(f"this needs the {minimum} role; token {token.name!r} is {token.role}")
    return token


def requires(minimum: str) -> Callable[[F], F]:
    """View decorator: authenticate and remember the actor for the audit log."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = authenticate(minimum)
            g.actor = f"{token.name} ({token.role})"
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate

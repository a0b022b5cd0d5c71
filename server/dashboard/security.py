"""Dashboard sign-in, roles and CSRF protection: server-side sessions, named by a signed cookie.

Signing in takes an API token (any role), checks it like the API does, and starts a session: a
``dashboard_sessions`` row keyed by the sha256 of a random session id (the id itself is only in
the cookie, so the table cannot be replayed as cookies). The cookie holds that id, the token's
sha256 (the same hash the ``api_tokens`` table stores; never the token itself: the cookie is
signed, not encrypted, and a stolen cookie must not become a stolen API token) and the CSRF token.

Every request checks both rows: the session must exist, not be revoked and not be past its
``expires_at`` (:data:`SESSION_HOURS` after sign-in), and the token must still be valid. So
signing out (which sets ``revoked_at``) ends the session for good, whatever copy of the cookie
anyone kept; and revoking an API token ends every session signed in with it at its next request
(the cookie names the token, and the session row is then marked revoked too). A changed role
takes effect at once, as it is read from the token. Signing in again revokes the session the
browser had; expired rows are deleted at each sign-in.

The cookie is HttpOnly and SameSite=Strict, and Secure when the request came over HTTPS (or
always, with ``OVERDRIVE_SECURE_COOKIES=1`` behind a TLS-terminating proxy). Every POST also
carries a per-session CSRF token, compared in constant time.

The signing key is Flask's ``SECRET_KEY``: taken from the app's config if set, else from
``ServerConfig.secret_key`` (if that field exists), else from ``$OVERDRIVE_SECRET_KEY``; failing
all three a random key is made for this process, with a warning, because sessions then end when
the process restarts and do not span gunicorn workers.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Flask, Request, flash, g, has_request_context, redirect, request, session, url_for
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from overdrive.server.auth import ROLES, hash_secret
from overdrive.server.context import EXTENSION, context
from overdrive.server.errors import BadRequest, Forbidden, Unauthorized
from overdrive.server.models import ApiToken, DashboardSession

log = logging.getLogger("overdrive.dashboard")

SECRET_ENV = "OVERDRIVE_SECRET_KEY"
SECURE_COOKIES_ENV = "OVERDRIVE_SECURE_COOKIES"
SESSION_HOURS = 12
COOKIE_NAME = "overdrive_session"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class User:
    """Who is signed in: the API token's name and role (its secret never leaves the form)."""

    token_id: int
    name: str
    role: str

    def can(self, minimum: str) -> bool:
        """Does this role include ``minimum`` (viewer < operator < admin)?"""
        return ROLES.index(self.role) >= ROLES.index(minimum)

    @property
    def actor(self) -> str:
        """How the audit log names this user: the same form as the API (``name (role)``)."""
        return f"{self.name} ({self.role})"


class CsrfError(Forbidden):
    """A POST without this session's CSRF token: a forged request, or an expired page."""

    code = "csrf"


# ------------------------------------------------------------------------------ app setup


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with a Secure cookie whenever the request used HTTPS.

    A request without the session cookie (every vehicle and API call) gets a fresh empty session
    without building the cookie signer: that is most of the cost of a session on the poll path.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.cookies.get(self.get_cookie_name(app)):
            return None if not app.secret_key else self.session_class()
        return super().open_session(app, request)

    def get_cookie_secure(self, app: Flask) -> bool:
        configured = bool(super().get_cookie_secure(app))
        return configured or (has_request_context() and request.is_secure)


def configure_app(app: Flask) -> None:
    """Give the app a session signing key and strict cookie settings (once, at registration)."""
    if not app.config.get("SECRET_KEY"):
        server = app.extensions.get(EXTENSION)
        configured = getattr(getattr(server, "config", None), "secret_key", None)
        key = configured or os.environ.get(SECRET_ENV, "")
        if not key:
            log.warning(
                "%s is not set: using a random dashboard session key, so dashboard sign-ins "
                "end when this process restarts and do not span gunicorn workers",
                SECRET_ENV,
            )
            key = secrets.token_urlsafe(32)
        app.config["SECRET_KEY"] = key
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    if os.environ.get(SECURE_COOKIES_ENV, "").lower() in ("1", "true", "yes"):
        app.config["SESSION_COOKIE_SECURE"] = True
    if app.config.get("SESSION_COOKIE_NAME") == "session":
        app.config["SESSION_COOKIE_NAME"] = COOKIE_NAME
    if type(app.session_interface) is SecureCookieSessionInterface:
        app.session_interface = _SessionInterface()


# ------------------------------------------------------------------------------ sessions


def current_user() -> User | None:
    """The signed-in user of this request (loaded by :func:`load_user`), or None."""
    user: User | None = g.get("dashboard_user")
    return user


def load_user() -> User | None:
    """The user of this request's session, if its row and its token are both still valid; a
    session that is not is forgotten (and its row revoked if only its token went stale)."""
    sid, digest = session.get("sid"), session.get("token")
    if not isinstance(sid, str) or not isinstance(digest, str):
        if "token" in session:  # a cookie from before server-side sessions: sign in again
            _forget("Your session has expired. Please sign in again.")
        return None
    with context().session() as db:
        row = db.get(DashboardSession, hash_secret(sid))
        token = db.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or row.revoked_at is not None:
        _forget("Your session has ended. Please sign in again.")
        return None
    if _aware(row.expires_at) <= _now():
        _forget("Your session has expired. Please sign in again.")
        return None
    if token is None or token.revoked_at is not None:
        end_session("Your API token is no longer valid. Please sign in with another one.")
        return None
    return User(token.id, token.name, token.role)


def sign_in(secret: str) -> User:
    """Validate an API token like the API does and start a fresh server-side session for it."""
    secret = secret.strip()
    if not secret:
        raise BadRequest("Paste your API token to sign in.")
    digest = hash_secret(secret)
    with context().session() as db:
        token = db.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if token is None or not hmac.compare_digest(token.token_hash, digest):
        raise Unauthorized(
            "That token is not valid. Check that you copied all of it (it starts with odt_)."
        )
    if token.revoked_at is not None:
        raise Unauthorized("That token has been revoked. Ask an admin for a new one.")
    user = User(token.id, token.name, token.role)
    previous = session.get("sid")
    sid, stamp = secrets.token_urlsafe(32), _now()
    with context().transaction() as db:
        if isinstance(previous, str):  # a new session on every sign-in: no fixation of an old one
            _revoke(db, previous, stamp)
        db.execute(delete(DashboardSession).where(DashboardSession.expires_at < stamp))
        db.add(
            DashboardSession(
                id_hash=hash_secret(sid),
                actor=user.actor[:128],
                role=user.role,
                created_at=stamp,
                expires_at=stamp + timedelta(hours=SESSION_HOURS),
            )
        )
    session.clear()
    session["sid"] = sid
    session["token"] = digest
    session["csrf"] = secrets.token_urlsafe(32)
    log.info("dashboard sign-in: %s (%s)", token.name, token.role)
    return user


def end_session(message: str | None = None) -> None:
    """Sign out: revoke this session's row (so no copy of the cookie works again), forget the
    cookie's contents (the CSRF token with them), and optionally say why."""
    sid = session.get("sid")
    if isinstance(sid, str):
        with context().transaction() as db:
            _revoke(db, sid, _now())
    _forget(message)


def _forget(message: str | None) -> None:
    """Clear the cookie's session (nothing to revoke: its row is already invalid)."""
    session.clear()
    if message:
        flash(message, "info")


def _revoke(db: Session, sid: str, stamp: datetime) -> None:
    """Mark the session named ``sid`` revoked (if it is not already)."""
    db.execute(
        update(DashboardSession)
        .where(DashboardSession.id_hash == hash_secret(sid), DashboardSession.revoked_at.is_(None))
        .values(revoked_at=stamp)
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ------------------------------------------------------------------------------ CSRF


def csrf_token() -> str:
    """This session's CSRF token, made on first use; every dashboard form posts it back."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def check_csrf() -> None:
    """Refuse a POST whose form (or ``X-CSRF-Token`` header) lacks this session's token."""
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise CsrfError(
            "This form has expired or did not come from the dashboard. "
            "Reload the page and try again."
        )


# ------------------------------------------------------------------------------ views


def wants_json() -> bool:
    """Is this one of the dashboard's own JSON endpoints (which answer errors in JSON)?"""
    return request.path.endswith(".json")


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path inside the dashboard; None for anything else (open redirect)."""
    if not target:
        return None
    parts = urlsplit(target)
    prefix = url_for("dashboard.overview")
    if parts.scheme or parts.netloc or "\\" in target or target.startswith("//"):
        return None
    return target if parts.path.startswith(prefix) else None


def requires_role(minimum: str) -> Callable[[F], F]:
    """View decorator: sign-in first (a redirect, or 401 for JSON), then at least ``minimum``."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                if wants_json():
                    raise Unauthorized("not signed in to the dashboard")
                target = request.full_path.rstrip("?") if request.method == "GET" else None
                return redirect(url_for("dashboard.sign_in", next=safe_next(target)))
            if not user.can(minimum):
                raise Forbidden(
                    f"This needs the {minimum} role; you are signed in as "
                    f"{user.name} ({user.role})."
                )
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate

"""The dashboard blueprint: its hooks (who is signed in, CSRF on every POST), security headers,
and error pages.

Errors raised by dashboard views become HTML pages with the one-line message of the domain
error (``ApiError``), never a traceback; the dashboard's own ``….json`` endpoints answer errors
in the API's JSON shape instead. Blueprint handlers win over the app's JSON handlers only for
dashboard routes, so the REST API is untouched.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from overdrive.server.dashboard import security
from overdrive.server.dashboard.formatting import HELPERS
from overdrive.server.dashboard.queries import PARTS
from overdrive.server.errors import ApiError

log = logging.getLogger("overdrive.dashboard")

bp = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
)

#: Seconds between the campaign page's count refreshes (``DASHBOARD_REFRESH_SECONDS`` overrides).
REFRESH_SECONDS = 5

# Scripts and styles only from the dashboard itself; inline style attributes carry bar widths.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)

TITLES = {
    400: "That did not work",
    401: "Please sign in",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed here",
    409: "Conflict",
    413: "Too large",
    500: "Something went wrong",
    503: "Unavailable",
}


@bp.record_once
def _setup(state: Any) -> None:
    security.configure_app(state.app)


@bp.before_request
def _before() -> None:
    """Load the signed-in user (and the audit actor), then check CSRF on every POST."""
    if request.endpoint == "dashboard.static":
        return
    user = security.load_user()
    g.dashboard_user = user
    if user is not None:
        g.actor = user.actor  # what server.audit.record writes, as server.auth.requires does
    if request.method == "POST":
        security.check_csrf()


@bp.after_request
def _headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    if request.endpoint != "dashboard.static":
        headers["Cache-Control"] = "no-store"  # pages show live state and who is signed in
    return response


@bp.context_processor
def _template_context() -> dict[str, Any]:
    return {
        **HELPERS,
        "user": security.current_user(),
        "csrf_token": security.csrf_token,
        "endpoint": request.endpoint or "",
        "parts": PARTS,
        "refresh_seconds": current_app.config.get("DASHBOARD_REFRESH_SECONDS", REFRESH_SECONDS),
    }


def error_page(status: int, message: str, code: str = "error") -> ResponseReturnValue:
    """An error as the dashboard shows it: an HTML page, or the API's JSON error shape for the
    ``.json`` endpoints (``code`` is the API's stable code, e.g. ``not_found``)."""
    if security.wants_json():
        return jsonify({"error": {"status": status, "code": code, "message": message}}), status
    title = TITLES.get(status, "Error")
    return render_template(
        "dashboard/error.html", status=status, title=title, message=message
    ), status


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> ResponseReturnValue:
    return error_page(error.status, str(error), error.code)


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> ResponseReturnValue:
    code = (error.name or "error").lower().replace(" ", "_")
    return error_page(error.code or 500, error.description or error.name, code)


@bp.errorhandler(Exception)
def _unexpected(error: Exception) -> ResponseReturnValue:
    log.exception("dashboard error on %s %s", request.method, request.path)
    message = "The server hit an unexpected error. It has been logged; please try again."
    return error_page(500, message, "internal_error")

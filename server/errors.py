"""API errors: each becomes a JSON body ``{"error": {"status", "code", "message"}}``."""

from __future__ import annotations

from typing import Any

from overdrive.errors import OverdriveError


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": {"status": status, "code": code, "message": message}}


#: Told to clients while the database is down or failing over: retry after that many seconds.
RETRY_AFTER = ("Retry-After", "2")


def database_down_body() -> dict[str, Any]:
    """The body of the 503 answered while the database is unreachable."""
    return error_body(503, "database_unavailable", "database temporarily unavailable; retry")


class ApiError(OverdriveError):
    """An error answered to the client with ``status`` (4xx) and a stable ``code``."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFoundError(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Unavailable(ApiError):
    status, code = 503, "unavailable"

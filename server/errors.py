"""API errors: each becomes a JSON body ``{"error": {"status", "code", "message"}}``."""

from __future__ import annotations

from typing import Any

import psycopg
from sqlalchemy.exc import DataError, IntegrityError

from overdrive.errors import OverdriveError
from overdrive.text import one_line


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


#: Database errors that are about the request's data, not about the database being down.
DATA_ERRORS: tuple[type[Exception], ...] = (
    IntegrityError,
    DataError,
    psycopg.IntegrityError,
    psycopg.DataError,
)


def from_database_error(error: Exception) -> ApiError:
    """The 4xx answer for a :data:`DATA_ERRORS` error, with a one-line message and no SQL.

    A unique or foreign-key violation is what two requests racing for the same rows end in (two
    overlapping campaigns started at the same moment: the database's unique index decides, and
    the loser gets this 409 instead of a 500); a value the column cannot hold is a 400.
    """
    cause = getattr(error, "orig", None) or error
    if isinstance(error, IntegrityError | psycopg.IntegrityError):
        return Conflict(
            f"conflicting change ({_constraint(cause)}): another request changed the same data "
            "at the same time, or it already exists; reload and try again",
            code="conflict",
        )
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return BadRequest(f"a value does not fit the database: {one_line(first, 200)}")


def _constraint(cause: BaseException) -> str:
    """The violated constraint's name (PostgreSQL), or the columns SQLite names."""
    diag = getattr(cause, "diag", None)
    name = getattr(diag, "constraint_name", None)
    if isinstance(name, str) and name:
        return one_line(name, 80)
    text = str(cause)
    if "constraint failed: " in text:  # SQLite: "UNIQUE constraint failed: table.column"
        return one_line(text.split("constraint failed: ", 1)[1], 80)
    return "constraint violated"

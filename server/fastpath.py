"""The vehicle poll, served below Flask: the one request the whole fleet makes all the time.

A million vehicles polling every 15 minutes is ~1,100 polls/s, and most of them have nothing to
do; Flask's per-request machinery (request and app contexts, routing, the session, the response
object) then costs about as much as the poll's own work. :class:`PollFastPath` is a WSGI
middleware that answers a *well-formed* poll (``POST /api/v1/vehicles/<id>/poll`` with a JSON
object of an acceptable size) directly with :func:`overdrive.server.poll.poll`, and hands every other
request, and every poll it would have to judge (a malformed or oversize body, an odd content
type, a NUL or a lone surrogate anywhere), to the Flask app unchanged, so errors keep exactly one
implementation.
Answers, errors (:func:`overdrive.server.errors.error_body`) and metrics are the same as the Flask route's.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from sqlalchemy.exc import OperationalError
from werkzeug.http import HTTP_STATUS_CODES

from overdrive.server.context import ServerContext
from overdrive.server.errors import (
    DATA_ERRORS,
    RETRY_AFTER,
    ApiError,
    database_down_body,
    error_body,
    from_database_error,
)
from overdrive.server.poll import poll, record_poll
from overdrive.server.validation import may_hold_nul, may_hold_surrogate

log = logging.getLogger("overdrive.server")

PREFIX = "/api/v1/vehicles/"
SUFFIX = "/poll"
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class PollFastPath:
    """WSGI middleware in front of the Flask app (see the module docstring)."""

    def __init__(self, app: WsgiApp, ctx: ServerContext) -> None:
        self.app, self.ctx = app, ctx

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        vehicle_id = self._vehicle_id(environ)
        if vehicle_id is None:
            return self.app(environ, start_response)
        length = environ.get("CONTENT_LENGTH") or ""
        if not (length.isascii() and length.isdigit() and len(length) <= 12) or not (
            0 < int(length) <= self.ctx.config.max_body_bytes
        ):
            return self.app(environ, start_response)
        body = environ["wsgi.input"].read(int(length))
        data = _json_object(body)
        if data is None:  # Flask says what is wrong with it
            environ["wsgi.input"] = io.BytesIO(body)
            return self.app(environ, start_response)
        status, payload, headers = self._poll(vehicle_id, data)
        out = json.dumps(payload, separators=(",", ":")).encode() + b"\n"
        start_response(
            status,
            [("Content-Type", "application/json"), ("Content-Length", str(len(out))), *headers],
        )
        return [out]

    @staticmethod
    def _vehicle_id(environ: dict[str, Any]) -> str | None:
        """The vehicle id if this is a plain JSON poll request, else None."""
        if environ.get("REQUEST_METHOD") != "POST":
            return None
        path: str = environ.get("PATH_INFO", "")
        if not path.startswith(PREFIX) or not path.endswith(SUFFIX):
            return None
        vehicle_id = path[len(PREFIX) : -len(SUFFIX)]
        if (
            not vehicle_id
            or not vehicle_id.isascii()  # PATH_INFO is latin-1; Flask decodes it as UTF-8
            or "/" in vehicle_id
            or "\x00" in vehicle_id
            or environ.get("QUERY_STRING")
        ):
            return None
        mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        return vehicle_id if mimetype == "application/json" else None

    def _poll(
        self, vehicle_id: str, data: dict[str, Any]
    ) -> tuple[str, dict[str, Any], list[tuple[str, str]]]:
        try:
            result = poll(self.ctx, vehicle_id, data)
        except ApiError as e:
            return _status(e.status), error_body(e.status, e.code, str(e)), []
        except DATA_ERRORS as e:  # e.g. a race on a unique key: a 409, as in the Flask app
            answer = from_database_error(e)
            return _status(answer.status), error_body(answer.status, answer.code, str(answer)), []
        except (OperationalError, psycopg.OperationalError) as e:
            log.warning("database unavailable on POST %s/poll: %s", vehicle_id, e)
            return _status(503), database_down_body(), [RETRY_AFTER]
        except Exception:
            log.exception("unhandled error on POST /api/v1/vehicles/%s/poll", vehicle_id)
            return _status(500), error_body(500, "internal_error", "internal server error"), []
        record_poll(self.ctx, result)
        return _status(200), result.body(), []


def _json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` as a JSON object, if it is plainly one (UTF-8, no NUL or lone surrogate
    anywhere), else None."""
    if may_hold_nul(body) or may_hold_surrogate(body):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _status(code: int) -> str:
    return f"{code} {HTTP_STATUS_CODES.get(code, 'Unknown').upper()}"

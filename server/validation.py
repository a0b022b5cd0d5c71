"""Small, strict readers of request JSON: every bad input becomes one precise 400."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from flask import request

from server.errors import BadRequest

T = TypeVar("T")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def json_body() -> dict[str, Any]:
    """The request's JSON object (400 for anything else)."""
    if not request.is_json:
        raise BadRequest("expected a JSON body (Content-Type: application/json)")
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("malformed JSON body")
    if not isinstance(data, dict):
        raise BadRequest("the JSON body must be an object")
    return data


def field(
    data: dict[str, Any],
    name: str,
    kind: type[T],
    *,
    where: str = "",
    required: bool = True,
    default: Any = None,
) -> T:
    """``data[name]`` if it has type ``kind``; a 400 naming the field otherwise."""
    label = f"{where}{name}"
    if name not in data or data[name] is None:
        if required:
            raise BadRequest(f"missing field '{label}'")
        return default  # type: ignore[no-any-return]
    value = data[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise BadRequest(f"field '{label}' must be an integer")
    if not isinstance(value, kind):
        raise BadRequest(f"field '{label}' must be {_article(kind)}")
    return value


def identifier(value: str, what: str) -> str:
    if not ID_PATTERN.match(value):
        raise BadRequest(f"invalid {what} {value!r}: letters, digits and . _ : - (max 128)")
    return value


def _article(kind: type) -> str:
    return {
        str: "a string",
        int: "an integer",
        dict: "an object",
        list: "a list",
        bool: "a boolean",
    }.get(kind, kind.__name__)


def paging() -> tuple[int, int]:
    """``?limit=&offset=`` with bounds (limit 1..500, default 100)."""
    try:
        limit = int(request.args.get("limit", "100"))
        offset = int(request.args.get("offset", "0"))
    except ValueError as e:
        raise BadRequest("limit and offset must be integers") from e
    if not 1 <= limit <= 500 or offset < 0:
        raise BadRequest("limit must be 1..500 and offset >= 0")
    return limit, offset

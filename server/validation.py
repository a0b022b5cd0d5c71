"""Small, strict readers of request JSON: every bad input becomes one precise 400."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from flask import request

from server.errors import BadRequest

T = TypeVar("T")
#: Integers the database stores in 32 bits; anything larger is refused before a query.
MAX_INT32 = 2**31 - 1
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def json_body() -> dict[str, Any]:
    """The request's JSON object (400 for anything else)."""
    if not request.is_json:
        raise BadRequest("expected a JSON body (Content-Type: application/json)")
    try:
        data = request.get_json(silent=True)
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    if data is None:
        raise BadRequest("malformed JSON body")
    if not isinstance(data, dict):
        raise BadRequest("the JSON body must be an object")
    if may_hold_nul(request.get_data(cache=True)) and _has_nul(data):
        raise BadRequest("the JSON body contains a NUL character")
    return data


def may_hold_nul(body: bytes) -> bool:
    """Could this JSON body decode to a NUL anywhere? UTF-8 JSON carries NUL only as the escape
    ``\\u0000``, and a UTF-16/32 body has zero bytes: without either, no walk is needed."""
    return b"\\u0000" in body or b"\x00" in body


def _has_nul(value: Any, depth: int = 0) -> bool:
    """NUL cannot be stored in PostgreSQL text (and is never meaningful here)."""
    if depth > 64:
        return False
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k, depth + 1) or _has_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v, depth + 1) for v in value)
    return False


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
    if not 1 <= limit <= 500 or not 0 <= offset <= MAX_INT32:
        raise BadRequest(f"limit must be 1..500 and offset 0..{MAX_INT32}")
    return limit, offset

"""Small, strict readers of request JSON: every bad input becomes one precise 400."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from flask import request

from overdrive.server.errors import BadRequest
from overdrive.text import text_problem

T = TypeVar("T")
#: Integers the database stores in 32 bits; anything larger is refused before a query.
MAX_INT32 = 2**31 - 1
#: An identifier (vehicle, hardware, token name …): always matched whole (``fullmatch``), and
#: anchored with ``\Z``, not ``$``, which also accepts a trailing newline.
ID_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")
#: In a UTF-8 JSON body, a lone surrogate can only come from a ``\uD800``-``\uDFFF`` escape or
#: the (invalid, but decoded by ``json``) bytes ED A0..BF; a UTF-16/32 body has zero bytes.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]|\x00")
#: How much of a refused value an error message quotes.
SHOWN = 40


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
    body = request.get_data(cache=True)
    if may_hold_nul(body) and _has_nul(data):
        raise BadRequest("the JSON body contains a NUL character")
    if may_hold_surrogate(body) and _has_surrogate(data):
        raise BadRequest("the JSON body contains a lone surrogate, which is not valid Unicode text")
    return data


def may_hold_nul(body: bytes) -> bool:
    """Could this JSON body decode to a NUL anywhere? UTF-8 JSON carries NUL only as the escape
    ``\\u0000``, and a UTF-16/32 body has zero bytes: without either, no walk is needed."""
    return b"\\u0000" in body or b"\x00" in body


def may_hold_surrogate(body: bytes) -> bool:
    """Could this JSON body decode to a lone surrogate anywhere (see ``_SURROGATE_HINT``)? Without
    one of those byte sequences no walk is needed: the poll fast path checks this per poll."""
    return _SURROGATE_HINT.search(body) is not None


def _has_surrogate(value: Any, depth: int = 0) -> bool:
    """A string (key or value) that cannot be encoded as UTF-8: not storable, not renderable.

    Every string a client sends in a JSON body is checked here, at the door, whatever field it is
    (registration attributes, event reasons, campaign names …); a valid surrogate *pair* escape
    decodes to one character and passes."""
    if depth > 64:
        return False
    if isinstance(value, str):
        return not value.isascii() and _unencodable(value)
    if isinstance(value, dict):
        return any(
            _has_surrogate(k, depth + 1) or _has_surrogate(v, depth + 1) for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_has_surrogate(v, depth + 1) for v in value)
    return False


def _unencodable(text: str) -> bool:
    """Does ``text`` hold a lone surrogate (the only str that UTF-8 cannot encode)?"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
    """``value`` if it is a whole identifier (no trailing newline); a 400 naming ``what``."""
    if not ID_PATTERN.fullmatch(value):
        raise BadRequest(f"invalid {what} {shown(value)}: letters, digits and . _ : - (max 128)")
    return value


def shown(value: str) -> str:
    """``value`` as an error message quotes it: ``repr`` (escapes every control character and
    surrogate), cut to :data:`SHOWN` characters, so a refused megabyte is not sent back."""
    if len(value) <= SHOWN:
        return repr(value)
    return repr(value[:SHOWN]) + "…"


def text(value: str, label: str, *, limit: int, multiline: bool = False) -> str:
    """``value`` if it is at most ``limit`` characters of storable text (one line unless
    ``multiline``; see :func:`overdrive.text.text_problem`); a 400 naming ``label`` otherwise."""
    if len(value) > limit:
        raise BadRequest(f"field '{label}' must be at most {limit} characters, got {len(value)}")
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        raise BadRequest(f"field '{label}' contains {problem}")
    return value


def bounded_json(value: Any, label: str, limit: int) -> Any:
    """``value`` if it serialises to at most ``limit`` bytes of JSON with only finite numbers
    (PostgreSQL's JSON has no NaN or Infinity, and ``1e999`` parses as infinity); else a 400."""
    try:
        size = len(json.dumps(value, allow_nan=False, separators=(",", ":")))
    except ValueError:
        raise BadRequest(f"field '{label}' holds a number that is not finite") from None
    except RecursionError:
        raise BadRequest(f"field '{label}' is nested too deeply") from None
    if size > limit:
        raise BadRequest(f"field '{label}' is {size} bytes of JSON; at most {limit} are accepted")
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

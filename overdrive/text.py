"""Untrusted text, made safe to store, send and print.

Text that reaches Overdrive from outside its own code — a mirror's HTTP reason phrase or error
body, a server's error message, a health check's output, an exception message that quotes any of
those — can hold anything: NUL (which PostgreSQL cannot store, so the server refuses any message
holding one), terminal escape sequences, lone surrogates (which cannot be encoded as UTF-8),
megabytes of it. One bad string stored in the vehicle's state or event queue and sent on every
poll would wedge the vehicle, so every such string passes through :func:`one_line` (or, for whole
JSON documents, :func:`clean_json`) before it is stored or sent.
"""

from __future__ import annotations

import re
from typing import Any

#: The default bound on one line of untrusted text (characters).
LINE_LIMIT = 500

# C0 and C1 controls, DEL, Unicode line/paragraph separators, bidi overrides and isolates (they
# reorder what a terminal or a web page shows), and surrogates (not encodable as UTF-8).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SPACES = re.compile(r"\s+")
# What text someone sends may not hold (see text_problem): on one line, the controls and
# separators above; in multi-line text, the same except tab, line feed and carriage return.
_NOT_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def one_line(text: object, limit: int = LINE_LIMIT) -> str:
    """``text`` as one printable line of at most ``limit`` characters.

    Control characters, surrogates and bidi controls become ``?``, except that line breaks and
    tabs become spaces; runs of whitespace collapse to one space; a longer text is cut and ends
    with ``…``. Never raises, whatever ``text`` is (non-strings are ``str()``-ed first).
    """
    if not isinstance(text, str):
        try:
            text = str(text)
        except Exception:  # a hostile __str__ must not take the caller down
            text = f"<unprintable {type(text).__name__}>"
    if len(text) > 4 * limit + 64:  # bound the work on huge input before the regexes run
        text = text[: 4 * limit + 64]
    text = _SPACES.sub(" ", text.replace("\t", " ")).strip()
    text = _UNSAFE.sub("?", text)
    if len(text) > limit:
        text = text[: max(0, limit - 1)].rstrip() + "…"
    return text


def clean_json(value: Any, limit: int = LINE_LIMIT, *, depth: int = 32) -> Any:
    """A copy of a JSON-like value with every string (keys too) passed through :func:`one_line`.

    Containers nested deeper than ``depth`` are replaced by ``None``: nothing we send is that deep,
    so such a value did not come from us.
    """
    if isinstance(value, str):
        return one_line(value, limit)
    if depth <= 0:
        return None
    if isinstance(value, dict):
        return {one_line(k, limit): clean_json(v, limit, depth=depth - 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v, limit, depth=depth - 1) for v in value]
    return value


def text_problem(text: str, *, multiline: bool = False) -> str | None:
    """Why ``text``, as someone sent it, cannot be stored and shown as it is; None if it can.

    :func:`one_line` repairs text we relay; this judges text a client *sends* (a vehicle's
    attributes, an event's reason, a name), which is refused rather than silently changed, so the
    sender learns what is wrong: a lone surrogate (not encodable as UTF-8, so not storable, and a
    500 wherever it is rendered), or a control character, separator or bidi control (line breaks
    and tabs are allowed in ``multiline`` text only). The answer names the character by code
    point, never echoes it.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"a lone surrogate (U+{ord(text[e.start]):04X}), which is not valid Unicode text"
    found = (_NOT_TEXT if multiline else _NOT_ONE_LINE).search(text)
    if found is None:
        return None
    char = found.group()
    what = "a line break" if char in "\n\r\u2028\u2029" else "a control character"
    return f"{what} (U+{ord(char):04X})"

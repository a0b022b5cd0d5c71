"""Durations as people write them on the command line: ``90s``, ``30m``, ``12h``, ``7d``, ``2w``."""

from __future__ import annotations

import re
from datetime import timedelta

from overdrive.errors import UsageError

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``12h`` → 12 hours; a clear :class:`UsageError` for anything else (zero included)."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise UsageError(f"invalid duration {text!r} (examples: 30m, 12h, 7d, 2w)")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])

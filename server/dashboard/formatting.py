"""Small presentation helpers the templates call: times, sizes, hashes, JSON, percentages.

They are handed to the templates by the blueprint's context processor (not registered as
app-wide Jinja filters), so they cannot collide with anything else in the app.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

Timeish = datetime | str | None


def as_datetime(value: Timeish) -> datetime | None:
    """A UTC datetime from a model column (SQLite's are naive) or an API ISO string."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def when(value: Timeish, seconds: bool = False) -> str:
    """``2024-05-01 12:34 UTC`` (the dashboard shows every time in UTC), optionally ``:56``."""
    moment = as_datetime(value)
    pattern = "%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC"
    return moment.astimezone(UTC).strftime(pattern) if moment else "—"


def iso(value: Timeish) -> str:
    """Machine-readable time for ``<time datetime=…>``."""
    moment = as_datetime(value)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def ago(value: Timeish, now: datetime | None = None) -> str:
    """How long ago, coarsely: ``just now``, ``4 min ago``, ``3 h ago``, ``12 days ago``."""
    moment = as_datetime(value)
    if moment is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - moment).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 45:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = round(seconds / size)
            label = f"{amount} {unit}{'s' if unit == 'day' and amount != 1 else ''}"
            return f"in {label}" if future else f"{label} ago"
    return "in 1 min" if future else "1 min ago"


def size(length: int | None) -> str:
    """Bytes for people: ``812 B``, ``117.2 KiB``, ``1.4 GiB``."""
    if length is None:
        return "—"
    amount = float(length)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{int(amount)} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TiB"  # pragma: no cover - the loop returns first


def short(digest: str | None, length: int = 12) -> str:
    """The first characters of a hash (the full one goes in a title attribute)."""
    return (digest or "")[:length]


def compact_json(value: Any, limit: int = 240) -> str:
    """One line of JSON for a details column, cut at ``limit`` characters."""
    if value in (None, {}, []):
        return ""
    text = json.dumps(value, sort_keys=True, separators=(", ", ": "), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def percent(part: int, whole: int) -> float:
    """``part`` of ``whole`` in percent, one decimal; 0 when there is no whole."""
    return round(100.0 * part / whole, 1) if whole > 0 else 0.0


def number(value: float) -> str:
    """A percentage as the live refresh writes it too: ``10``, ``12.5`` (never ``10.0``)."""
    return f"{value:g}"


def rate(fraction: float | None) -> str:
    """A failure rate (0–1, ``None`` when nothing finished) in percent: ``35%``, ``2.5%``, ``—``."""
    return "—" if fraction is None else f"{round(100.0 * fraction, 1):g}%"


#: How the group dimensions of :func:`overdrive.server.campaign_view.groups` read on the page.
DIMENSIONS = {
    "campaign": "All vehicles",
    "hardware_id": "Hardware id",
    "installed_version": "Installed version",
    "model": "Model",
    "region": "Region",
}


def dimension_label(dimension: str) -> str:
    """``hardware_id`` → ``Hardware id``; an attribute name as written, first letter upper."""
    return DIMENSIONS.get(dimension) or (dimension[:1].upper() + dimension[1:]).replace("_", " ")


def status_label(status: str) -> str:
    """A membership status or status group for people: ``rolled_back`` → ``rolled back``."""
    return STATUS_LABELS.get(status, status.replace("_", " "))


STATUS_LABELS = {
    "in_progress": "in progress",
    "finished": "finished",
    "failures": "failed or rolled back",
    "none": "in no campaign",
}


def without(mapping: dict[str, Any] | None, *keys: str) -> dict[str, Any]:
    """``mapping`` without ``keys`` (an audit entry's details once its reason is shown)."""
    return {k: v for k, v in (mapping or {}).items() if k not in keys}


HELPERS: dict[str, Any] = {
    "number": number,
    "when": when,
    "iso": iso,
    "ago": ago,
    "size": size,
    "short": short,
    "compact_json": compact_json,
    "percent": percent,
    "rate": rate,
    "dimension_label": dimension_label,
    "status_label": status_label,
    "without": without,
}

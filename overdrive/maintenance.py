"""Maintenance windows: when a vehicle may install, in its own local time.

The policy (``rollout_policies``) defines them; the server passes them along with each signed
assignment as ``{"days": ["mon", …], "start": "22:00", "end": "05:00"}``; the vehicle checks them
against its local clock. The model lives in the core so both sides share one definition.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""Day names in ``datetime.weekday()`` order."""
MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class MaintenanceWindow:
    """When a vehicle may install: from ``start`` on each of ``days`` until ``end``.

    Times are minutes after midnight in the vehicle's local time zone. When ``end <= start``
    the window crosses midnight and closes on the following day: ``mon 22:00–05:00`` covers
    Monday 23:00 and Tuesday 04:00, not Monday 04:00. ``end`` may be 1440 (``24:00``).
    """

    days: tuple[int, ...]
    """Weekdays the window opens on, 0 = Monday … 6 = Sunday, ascending."""
    start: int
    end: int

    def contains(self, weekday: int, minute: int) -> bool:
        """Is local time ``minute`` (0–1439) on ``weekday`` (0 = Monday) inside the window?"""
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        return (weekday in self.days and minute >= self.start) or (
            (weekday - 1) % 7 in self.days and minute < self.end
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": [DAYS[d] for d in self.days],
            "start": _clock(self.start),
            "end": _clock(self.end),
        }


def in_maintenance_window(windows: tuple[MaintenanceWindow, ...], local_time: datetime) -> bool:
    """May a vehicle whose local wall-clock time is ``local_time`` install now?

    No windows means any time. The vehicle evaluates this in its own time zone; the server only
    passes the windows along (``Policy.to_dict()["maintenance_windows"]``).
    """
    if not windows:
        return True
    weekday, minute = local_time.weekday(), local_time.hour * 60 + local_time.minute
    return any(window.contains(weekday, minute) for window in windows)


def _clock(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _minutes(text: Any) -> int:
    hours, _, minutes = str(text).partition(":")
    value = int(hours) * 60 + int(minutes)
    if not 0 <= value <= MINUTES_PER_DAY:
        raise ValueError(f"time {text!r} out of range")
    return value


def window_from_dict(data: dict[str, Any]) -> MaintenanceWindow:
    """The wire form (``MaintenanceWindow.to_dict()``) back to a window; ValueError if malformed."""
    days = tuple(sorted(DAYS.index(str(d)) for d in data["days"]))
    return MaintenanceWindow(days, _minutes(data["start"]), _minutes(data["end"]))


def in_windows(windows: Iterable[dict[str, Any]], local_time: datetime) -> bool:
    """:func:`in_maintenance_window` for windows in wire form. A malformed window never opens."""
    windows = list(windows)
    parsed = []
    for raw in windows:
        try:
            parsed.append(window_from_dict(raw))
        except (KeyError, ValueError, TypeError):
            continue
    if windows and not parsed:
        return False
    return in_maintenance_window(tuple(parsed), local_time)

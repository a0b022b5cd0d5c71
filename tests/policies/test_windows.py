"""Maintenance windows: days and hours in the vehicle's local time, crossing midnight allowed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from overdrive.rollout_policies import MaintenanceWindow, in_maintenance_window, parse_policy

from .strategies import PROPERTY, window_documents

MINUTES_PER_WEEK = 7 * 24 * 60


def window(**fields: Any) -> MaintenanceWindow:
    document = {"maintenance_windows": [fields], "stages": [{"share": "100%"}]}
    return parse_policy(document).maintenance_windows[0]


def at(day: int, clock: str) -> datetime:
    hours, minutes = map(int, clock.split(":"))
    return datetime(2025, 3, 3 + day, hours, minutes)  # 2025-03-03 is a Monday


def test_window_crossing_midnight_belongs_to_the_day_it_opens() -> None:
    w = (window(days=["mon"], start="22:00", end="05:00"),)
    assert in_maintenance_window(w, at(0, "22:00"))
    assert in_maintenance_window(w, at(0, "23:59"))
    assert in_maintenance_window(w, at(1, "04:59"))  # Tuesday morning
    assert not in_maintenance_window(w, at(1, "05:00"))
    assert not in_maintenance_window(w, at(0, "04:00"))  # Monday morning: Sunday's window
    assert not in_maintenance_window(w, at(1, "22:00"))


def test_sunday_night_runs_into_monday() -> None:
    w = (window(days=["sun"], start="23:00", end="02:00"),)
    assert in_maintenance_window(w, at(6, "23:30")) and in_maintenance_window(w, at(7, "01:00"))


def test_same_day_window_and_whole_day() -> None:
    w = (window(days=["sat", "sun"], start="09:00", end="17:30"),)
    assert in_maintenance_window(w, at(5, "09:00")) and not in_maintenance_window(w, at(5, "17:30"))
    assert not in_maintenance_window(w, at(4, "12:00"))
    whole = (window(start="00:00", end="24:00"),)
    assert all(in_maintenance_window(whole, at(d, "23:59")) for d in range(7))


def test_no_windows_means_any_time() -> None:
    assert in_maintenance_window((), at(2, "12:00"))


def test_midnight_end_is_written_back_as_24_00() -> None:
    assert window(start="20:00", end="24:00").to_dict()["end"] == "24:00"


def brute_force(w: MaintenanceWindow) -> set[int]:
    """Minutes of the week inside the window, by walking forward from each opening."""
    inside = set()
    length = (w.end - w.start) % 1440 or 1440
    for day in w.days:
        for offset in range(length):
            inside.add((day * 1440 + w.start + offset) % MINUTES_PER_WEEK)
    return inside


@given(window_documents(), st.integers(min_value=0, max_value=MINUTES_PER_WEEK - 1))
@PROPERTY
def test_contains_agrees_with_walking_the_week(document: dict[str, Any], minute: int) -> None:
    w = window(**document)
    expected = minute in brute_force(w)
    assert w.contains(minute // 1440, minute % 1440) == expected

"""Percentages, fractions, durations and rates: parsing and printing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overdrive.rollout_policies.units import (
    PPM,
    Ratio,
    Share,
    format_duration,
    format_ppm,
    format_rate,
    parse_duration,
    parse_fraction,
    parse_percent,
)

from .strategies import PROPERTY


@pytest.mark.parametrize(
    ("text", "ppm"),
    [
        ("10%", 100_000),
        ("0.5%", 5_000),
        ("12.3456%", 123_456),
        ("100%", PPM),
        ("0%", 0),
        (" 7% ", 70_000),
    ],
)
def test_percent_parses_to_ppm(text: str, ppm: int) -> None:
    assert parse_percent(text) == ppm


@pytest.mark.parametrize(
    "text", ["110%", "100.01%", "10", "10 %", "-1%", "1.23456%", "%", "abc", ""]
)
def test_percent_rejects(text: str) -> None:
    assert parse_percent(text) is None


@given(st.integers(min_value=0, max_value=PPM))
@PROPERTY
def test_percent_text_round_trips(ppm: int) -> None:
    assert parse_percent(format_ppm(ppm)) == ppm


def test_format_ppm_pads_for_messages() -> None:
    assert format_ppm(50_000) == "5%"
    assert format_ppm(50_000, 1) == "5.0%"
    assert format_ppm(2_500, 1) == "0.25%"


@pytest.mark.parametrize(
    ("value", "ppm"), [(0.95, 950_000), (1, PPM), (0, 0), (0.000001, 1), (0.5, 500_000)]
)
def test_fraction_parses_to_ppm(value: float, ppm: int) -> None:
    assert parse_fraction(value) == ppm


@pytest.mark.parametrize("value", [1.5, -0.1, 0.0000001, float("nan"), float("inf"), 95])
def test_fraction_rejects(value: float) -> None:
    assert parse_fraction(value) is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("0s", 0),
        ("90s", 90),
        ("2h", 7200),
        ("1d12h", 129_600),
        ("2w", 1_209_600),
        ("1h30m", 5400),
    ],
)
def test_duration_parses(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "2", "2 h", "h", "1h2d", "2hours", "-1h", "1.5h"])
def test_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


@given(st.integers(min_value=0, max_value=400 * 86_400))
@PROPERTY
def test_duration_text_round_trips(seconds: int) -> None:
    text = format_duration(timedelta(seconds=seconds))
    assert parse_duration(text) == timedelta(seconds=seconds)


def test_rate_shows_more_decimals_rather_than_equal_to_a_threshold_it_differs_from() -> None:
    assert format_rate(6, 50) == "12.0%"
    assert format_rate(101, 2000, against=50_000) == "5.05%"
    assert format_rate(1, 20, against=50_000) == "5.0%"  # exactly at the threshold
    assert format_rate(0, 0) == "n/a"


def test_ratio_comparisons_are_exact() -> None:
    five = Ratio(50_000)
    assert five.exceeded_by(6, 100) and not five.exceeded_by(5, 100)
    assert five.met_by(5, 100) and not five.met_by(4, 100)
    assert not five.exceeded_by(1, 0) and not five.met_by(1, 0)
    assert str(five.complement()) == "95%"


def test_share_of_population_rounds_percentages_up_and_caps_counts() -> None:
    assert Share.percent(10_000).of(250) == 3  # 1% of 250 = 2.5 → 3
    assert Share.percent(10_000).of(1) == 1
    assert Share.percent(10_000).of(0) == 0
    assert Share.absolute(50).of(20) == 20
    assert Share.absolute(50).join(Share.percent(100_000)).of(1000) == 100
    assert str(Share.absolute(50).join(Share.percent(100_000))) == "max(10%, 50)"

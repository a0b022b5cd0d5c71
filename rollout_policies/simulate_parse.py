"""Read the values of ``overdrive simulate``'s options: fleet mixes, rates, durations, sizes.

Each parser takes the option's text and its name, and returns the value or raises
:class:`~overdrive.rollout_policies.simulate.SimulationError` with one line naming the option, what it
expects and what it got, e.g. ``--fleet: fractions must sum to 1, they sum to 0.9``. The
options are read here rather than by click's types so every mistake is one ``error:`` line.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from overdrive.rollout_policies.simulate_model import SimulationError, Spread
from overdrive.rollout_policies.units import parse_duration

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]*)$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_HARDWARE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+-]*$")
_DIMENSION = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_NEVER = ("never", "forever")
_SPREAD_SIGNS = ("±", "+/-", "+-")


def parse_fleet(text: str, option: str = "--fleet") -> tuple[tuple[str, Fraction], ...]:
    """``ecu-a=0.9,ecu-b=0.1`` (or ``ecu-a=90%,…``) → hardware ids and exact fractions."""
    entries: list[tuple[str, Fraction]] = []
    for part in text.split(","):
        hw, sep, value = part.strip().partition("=")
        hw = hw.strip()
        if not sep or not _HARDWARE_ID.match(hw):
            raise SimulationError(
                f"{option}: expected HW=FRACTION, … like ecu-a=0.9,ecu-b=0.1, got {part.strip()!r}"
            )
        share = exact_fraction(value.strip())
        if share is None or not 0 < share <= 1:
            raise SimulationError(
                f"{option}: {hw}'s share must be a fraction above 0 and at most 1 "
                f"(0.1 or 10%), got {value.strip()!r}"
            )
        entries.append((hw, share))
    names = [hw for hw, _share in entries]
    for hw in names:
        if names.count(hw) > 1:
            raise SimulationError(f"{option}: hardware id {hw!r} is given twice")
    total = sum((share for _hw, share in entries), Fraction(0))
    if total != 1:
        raise SimulationError(
            f"{option}: fractions must sum to 1, they sum to {short_decimal(total)} ({text.strip()})"
        )
    return tuple(entries)


Mix = tuple[tuple[str, Fraction], ...]
"""Values and their exact fractions, as ``--fleet`` gives them."""


def parse_fleets(specs: tuple[str, ...]) -> tuple[Mix, tuple[tuple[str, Mix], ...]]:
    """Repeated ``--fleet``: the hardware mix (no prefix; ``ecu-a=1`` if none is given) and
    every ``DIMENSION:VALUE=FRACTION,…`` cohort."""
    hardware, cohorts = parse_fleet_options(specs)
    return hardware or (("ecu-a", Fraction(1)),), cohorts


def parse_fleet_options(specs: tuple[str, ...]) -> tuple[Mix | None, tuple[tuple[str, Mix], ...]]:
    """:func:`parse_fleets`, with ``None`` for the hardware mix when no ``--fleet`` gives one
    (a fleet file gives the hardware ids instead)."""
    hardware: tuple[tuple[str, Fraction], ...] | None = None
    cohorts: list[tuple[str, tuple[tuple[str, Fraction], ...]]] = []
    for spec in specs:
        name, sep, rest = spec.partition(":")
        if sep and "=" not in name:
            name = name.strip()
            if not _DIMENSION.fullmatch(name) or name == "hardware_id":
                raise SimulationError(
                    f"--fleet: {name!r} is not a dimension name (lower-case letters, digits, "
                    "'_', '.', '-'; hardware ids take no prefix)"
                )
            if any(name == known for known, _values in cohorts):
                raise SimulationError(f"--fleet: dimension {name!r} is given twice")
            cohorts.append((name, parse_fleet(rest, f"--fleet {name}:")))
        elif hardware is not None:
            raise SimulationError("--fleet: the hardware ids are given twice (prefix a cohort)")
        else:
            hardware = parse_fleet(spec)
    return hardware, tuple(cohorts)


def parse_rate(text: str, option: str) -> float:
    """A probability or share: ``0.02`` or ``2%``, between 0 and 1."""
    value = exact_fraction(text.strip())
    if value is None or not 0 <= value <= 1:
        raise SimulationError(
            f"{option}: expected a fraction from 0 to 1 (0.02 or 2%), got {text.strip()!r}"
        )
    return float(value)


def parse_seconds(text: str, option: str, *, minimum: int = 0) -> int:
    """A duration (``15m``, ``1h30m``, ``90s``, ``0``) in whole seconds, at least ``minimum``."""
    value = parse_duration(text)
    if value is None:
        raise SimulationError(
            f"{option}: expected a duration like 90s, 15m, 2h or 1d12h, got {text.strip()!r}"
        )
    seconds = int(value.total_seconds())
    if seconds < minimum:
        raise SimulationError(f"{option}: must be at least {minimum}s, got {text.strip()!r}")
    return seconds


def parse_optional_seconds(text: str, option: str) -> int | None:
    """:func:`parse_seconds`, or ``None`` for ``never``."""
    return None if text.strip().lower() in _NEVER else parse_seconds(text, option)


def parse_spread(text: str, option: str) -> Spread:
    """``20m±5m`` (also ``20m+-5m``): uniform from 15m to 25m; ``20m``: always 20m."""
    mean_text, spread_text = text.strip(), "0"
    for sign in _SPREAD_SIGNS:
        if sign in mean_text:
            mean_text, _sign, spread_text = mean_text.partition(sign)
            break
    mean, spread = parse_duration(mean_text), parse_duration(spread_text)
    if mean is None or spread is None:
        raise SimulationError(
            f"{option}: expected a duration with an optional ± range like 20m±5m "
            f"(or 20m+-5m), got {text.strip()!r}"
        )
    if spread > mean:
        raise SimulationError(
            f"{option}: the ± range cannot exceed the duration (it would go below 0), "
            f"got {text.strip()!r}"
        )
    return Spread(mean.total_seconds(), spread.total_seconds())


def parse_optional_spread(text: str, option: str) -> Spread | None:
    """:func:`parse_spread`, or ``None`` for ``forever``/``never``."""
    return None if text.strip().lower() in _NEVER else parse_spread(text, option)


def parse_size(text: str, option: str) -> int:
    """A size in bytes: ``200MiB``, ``1.5GiB``, ``20MB``, ``4096``."""
    match = _SIZE.match(text.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise SimulationError(
            f"{option}: expected a size like 200MiB, 1.5GiB, 20MB or 4096 (bytes), "
            f"got {text.strip()!r}"
        )
    return int(Decimal(match.group(1)) * _SIZE_UNITS[unit])


def parse_count(text: str, option: str, *, minimum: int = 1, maximum: int = 10_000_000) -> int:
    """A whole number (``100000``, ``100_000``, ``100,000``) from ``minimum`` to ``maximum``."""
    digits = text.strip().replace("_", "").replace(",", "")
    if not digits.isdigit() or not minimum <= int(digits) <= maximum:
        raise SimulationError(
            f"{option}: expected a whole number from {minimum:,} to {maximum:,}, "
            f"got {text.strip()!r}"
        )
    return int(digits)


def parse_seed(text: str, option: str = "--seed") -> int:
    """Any whole number (negative too)."""
    try:
        return int(text.strip())
    except ValueError:
        raise SimulationError(f"{option}: expected a whole number, got {text.strip()!r}") from None


def parse_start(text: str, option: str = "--start") -> datetime:
    """A local date and time, ``2025-01-06T09:00`` (no time zone: it is the vehicles' clock)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        value = None
    if value is None or value.tzinfo is not None:
        raise SimulationError(
            f"{option}: expected a local date and time without time zone like "
            f"2025-01-06T09:00, got {text.strip()!r}"
        )
    return value


def exact_fraction(text: str) -> Fraction | None:
    """``0.1`` → 1/10, ``10%`` → 1/10, exactly (no float rounding); ``None`` if not a number."""
    percent = text.endswith("%")
    try:
        value = Decimal(text.removesuffix("%").strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    fraction = Fraction(value)
    return fraction / 100 if percent else fraction


def short_decimal(value: Fraction) -> str:
    """An exact fraction as a short decimal for messages (``0.9``; ``0.333333`` if it repeats)."""
    text = f"{float(value):.6f}".rstrip("0").rstrip(".")
    return text or "0"

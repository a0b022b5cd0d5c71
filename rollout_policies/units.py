"""The value types a policy is written in: shares, ratios and durations, parsed and printed.

All arithmetic is on integers (parts per million, whole seconds) so that decisions are exact and
reproducible on every machine: ``failed / finished > 5%`` is computed as
``failed * 1_000_000 > 50_000 * finished``, never with floats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation

PPM = 1_000_000
"""Parts per million that make 100%: 1% is 10,000 ppm, and percentages carry up to 4 decimals."""

_PERCENT = re.compile(r"^(\d{1,3})(?:\.(\d{1,4}))?%$")
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_DURATION_UNITS = (("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))
_PRINTED_UNITS = (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def parse_percent(text: str) -> int | None:
    """``"12.5%"`` → 125,000 ppm; ``None`` unless it is 0–100% with at most 4 decimals."""
    match = _PERCENT.match(text.strip())
    if match is None:
        return None
    whole, decimals = match.group(1), match.group(2) or ""
    ppm = int(whole) * 10_000 + int(decimals.ljust(4, "0") or "0")
    return ppm if ppm <= PPM else None


def parse_fraction(value: float | int) -> int | None:
    """``0.95`` → 950,000 ppm; ``None`` unless it is within 0–1 with at most 6 decimals."""
    try:
        exact = Decimal(repr(value)) * PPM
    except InvalidOperation:
        return None
    if not exact.is_finite() or exact != exact.to_integral_value() or not 0 <= exact <= PPM:
        return None
    return int(exact)


def format_ppm(ppm: int, min_decimals: int = 0) -> str:
    """950,000 → ``"95%"``, 125 → ``"0.0125%"``: the shortest exact percentage.

    ``min_decimals`` pads it (``"95.0%"`` with 1) to sit next to measured rates in messages.
    """
    whole, rest = divmod(ppm, 10_000)
    decimals = f"{rest:04d}".rstrip("0").ljust(min_decimals, "0")
    return f"{whole}.{decimals}%" if decimals else f"{whole}%"


def format_rate(numerator: int, denominator: int, against: int | None = None) -> str:
    """``numerator/denominator`` as a percentage with one decimal (``"12.0%"``).

    With ``against`` (a threshold in ppm), more decimals are shown when one would print the
    measured rate equal to a threshold it actually differs from ("5.0% > max 5%" never appears).
    """
    if denominator <= 0:
        return "n/a"
    value = Decimal(numerator) * 100 / Decimal(denominator)
    text = f"{value:.1f}%"
    if against is not None and value != Decimal(against) / 10_000:
        threshold = Decimal(against) / 10_000
        for digits in (1, 2, 3, 4):
            text = f"{value:.{digits}f}%"
            if Decimal(text[:-1]) != threshold:
                break
    return text


def parse_duration(text: str) -> timedelta | None:
    """``"2h"``, ``"1d12h"``, ``"90m"``, ``"0"`` → a timedelta; ``None`` if it is not one.

    Units: ``w`` weeks, ``d`` days, ``h`` hours, ``m`` minutes, ``s`` seconds, largest first,
    each at most once. A bare ``0`` means no time at all.
    """
    text = text.strip()
    if text == "0":
        return timedelta(0)
    match = _DURATION.match(text)
    if not text or match is None:
        return None
    seconds = sum(
        int(part) * size
        for part, (_unit, size) in zip(match.groups(), _DURATION_UNITS, strict=True)
        if part is not None
    )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The canonical text of a duration: ``"1d2h"``, ``"90s"`` → ``"1m30s"``, zero → ``"0s"``."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in _PRINTED_UNITS:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class Share:
    """An amount of a population: a percentage of it, an absolute count, or the larger of both.

    A stage's ``share`` (of the eligible fleet) and ``min_finished`` (of the admitted vehicles)
    are written as one or the other. A stage's cumulative ``reach`` carries both, because a
    policy may mix kinds (``50`` vehicles, then ``10%``) and admission must never shrink.
    """

    ppm: int = 0
    """Percentage of the population, in parts per million (10,000 = 1%)."""
    count: int = 0
    """Absolute number of members."""

    @classmethod
    def percent(cls, ppm: int) -> Share:
        return cls(ppm=ppm)

    @classmethod
    def absolute(cls, count: int) -> Share:
        return cls(count=count)

    def of(self, population: int) -> int:
        """How many of ``population`` this share is: percentages round up, counts are capped."""
        by_percent = -(-self.ppm * population // PPM)
        return max(by_percent, min(self.count, population))

    def join(self, other: Share) -> Share:
        """The share that is at least as large as both, for every population size."""
        return Share(max(self.ppm, other.ppm), max(self.count, other.count))

    def to_json(self) -> str | int:
        """How the share is written in a policy document: ``"10%"`` or ``50``."""
        if self.ppm and self.count:
            return str(self)
        return format_ppm(self.ppm) if self.ppm else self.count

    def __str__(self) -> str:
        if self.ppm and self.count:
            return f"max({format_ppm(self.ppm)}, {self.count})"
        return format_ppm(self.ppm) if self.ppm else str(self.count)


@dataclass(frozen=True, slots=True, order=True)
class Ratio:
    """A fraction between 0 and 1 (a success threshold, a maximum failure rate), in ppm."""

    ppm: int

    def exceeded_by(self, numerator: int, denominator: int) -> bool:
        """``numerator / denominator > self`` (``False`` when the denominator is 0)."""
        return denominator > 0 and numerator * PPM > self.ppm * denominator

    def met_by(self, numerator: int, denominator: int) -> bool:
        """``numerator / denominator >= self`` (``False`` when the denominator is 0)."""
        return denominator > 0 and numerator * PPM >= self.ppm * denominator

    def complement(self) -> Ratio:
        """``100% - self``."""
        return Ratio(PPM - self.ppm)

    def __str__(self) -> str:
        return format_ppm(self.ppm)

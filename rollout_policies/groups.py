"""Judging every group of a campaign: a sequential test per hardware id and cohort.

A campaign-wide failure rate hides a release that breaks a small variant: 1,000 broken vehicles
of one hardware id are 1% of a 100,000-vehicle fleet, under a 2% threshold. So the engine also
judges each *group* (the campaign overall, each hardware id of its releases, and each value of
every cohort dimension the policy names) on its own counts, and halts as soon as one group's
failures are *statistically clear*, without waiting for a sample size.

The test is Wald's sequential probability ratio test (SPRT), one-sided, per group: the hypothesis
that the group fails at the acceptable rate ``p0`` against the alternative that it fails at the
rate ``p1`` worth stopping for. After ``f`` failures among ``n`` finished vehicles the evidence is
the log-likelihood ratio::

    llr = f * ln(p1 / p0) + (n - f) * ln((1 - p1) / (1 - p0))

and the group breaches when ``llr >= ln(G / alpha)``, with ``G`` the number of groups judged and
``alpha`` the policy's false-halt rate. Under ``p0`` the likelihood ratio is a martingale, so by
Ville's inequality the chance that it *ever* reaches ``G / alpha`` (at any evaluation, however
often the server looks) is at most ``alpha / G`` per group, and at most ``alpha`` for the campaign
(a union bound over the groups). A group failing below ``p0`` breaches even less often. A group
failing at ``p1`` or more is caught after a handful of failures: 100% failures breach after
``ceil(ln(G / alpha) / ln(p1 / p0))`` results.

Everything here is pure and O(groups): counts in, verdicts out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from overdrive.rollout_policies.errors import InvalidState
from overdrive.rollout_policies.units import PPM, Ratio, format_ppm, format_rate

HARDWARE_ID = "hardware_id"
"""The dimension every campaign is judged on."""
OVERALL = "campaign"
"""The dimension of the one group that holds every admitted vehicle."""


DEFAULT_ACCEPTABLE = Ratio(20_000)
DEFAULT_DETECT = Ratio(200_000)
DEFAULT_FALSE_HALT = Ratio(10_000)


@dataclass(frozen=True, slots=True)
class Judgement:
    """The policy's sequential test: which groups it judges and how strict it is."""

    cohorts: tuple[str, ...] = ()
    """Cohort dimensions judged besides hardware id: ``model``, ``region``,
    ``installed_version`` (the version a vehicle ran when the campaign started), or the name
    of any vehicle attribute."""
    acceptable_failure_rate: Ratio = DEFAULT_ACCEPTABLE
    """``p0``: a group failing at this rate or less is fine."""
    detect_failure_rate: Ratio = DEFAULT_DETECT
    """``p1``: a group failing at this rate or more is caught within a few results."""
    false_halt_rate: Ratio = DEFAULT_FALSE_HALT
    """``alpha``: the most a campaign whose every group fails at ``p0`` halts, ever."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "cohorts": list(self.cohorts),
            "acceptable_failure_rate": str(self.acceptable_failure_rate),
            "detect_failure_rate": str(self.detect_failure_rate),
            "false_halt_rate": str(self.false_halt_rate),
        }

    @property
    def dimensions(self) -> tuple[str, ...]:
        """Every dimension judged besides the campaign overall."""
        return (HARDWARE_ID, *[c for c in self.cohorts if c != HARDWARE_ID])


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """One group's counts: vehicles of one value of one dimension (cumulative, all stages)."""

    dimension: str
    value: str
    eligible: int
    admitted: int
    succeeded: int
    failures: int
    """Failed plus rolled back."""

    def __post_init__(self) -> None:
        for name in ("eligible", "admitted", "succeeded", "failures"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidState(
                    f"group {self.label}: {name} must be a count (an integer >= 0), got {value!r}"
                )
        if self.finished > self.admitted:
            raise InvalidState(
                f"group {self.label}: {self.finished} finished but only {self.admitted} admitted"
            )

    @property
    def finished(self) -> int:
        return self.succeeded + self.failures

    @property
    def label(self) -> str:
        """``hardware id 'ecu-b'``, ``region 'eu'``, ``the campaign``."""
        if self.dimension == OVERALL:
            return "the campaign"
        return f"{self.dimension.replace('_', ' ')} {self.value!r}"


@dataclass(frozen=True, slots=True)
class GroupVerdict:
    """A group's counts with what the sequential test makes of them."""

    counts: GroupCounts
    evidence: float
    """The log-likelihood ratio (negative: the results look like ``p0``)."""
    threshold: float
    """``ln(G / alpha)``: the evidence at which the group breaches."""
    halts_at: int | None
    """Failures among the group's finished vehicles at which it would breach now (``None``:
    no number of failures among so few results would be clear)."""

    @property
    def breached(self) -> bool:
        return self.evidence >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        c = self.counts
        return {
            "dimension": c.dimension,
            "value": c.value,
            "eligible": c.eligible,
            "admitted": c.admitted,
            "finished": c.finished,
            "succeeded": c.succeeded,
            "failures": c.failures,
            "failure_rate": c.failures / c.finished if c.finished else None,
            "halts_at": self.halts_at,
            "evidence": round(self.evidence, 3),
            "threshold": round(self.threshold, 3),
            "breached": self.breached,
        }


@dataclass(frozen=True, slots=True)
class _Test:
    """The SPRT's constants for one judgement and number of groups."""

    up: float
    """Evidence added by a failure: ``ln(p1 / p0)``."""
    down: float
    """Evidence removed by a success: ``ln((1 - p0) / (1 - p1))``."""
    threshold: float

    def evidence(self, failures: int, finished: int) -> float:
        return failures * self.up - (finished - failures) * self.down

    def halts_at(self, finished: int) -> int | None:
        needed = max(1, math.ceil((self.threshold + finished * self.down) / (self.up + self.down)))
        while needed <= finished and self.evidence(needed, finished) < self.threshold:
            needed += 1  # float rounding at the boundary
        return needed if needed <= finished else None


def _test(judgement: Judgement, groups: int) -> _Test:
    p0 = judgement.acceptable_failure_rate.ppm / PPM
    p1 = judgement.detect_failure_rate.ppm / PPM
    alpha = judgement.false_halt_rate.ppm / PPM
    # p0 == 0 would make one failure infinitely clear; p1 == 1 one success: keep them finite.
    p0 = min(max(p0, 1e-6), 1 - 2e-6)
    p1 = min(max(p1, p0 + 1e-6), 1 - 1e-6)
    return _Test(
        up=math.log(p1 / p0),
        down=math.log((1 - p0) / (1 - p1)),
        threshold=math.log(max(groups, 1) / alpha),
    )


def judge(judgement: Judgement, groups: tuple[GroupCounts, ...]) -> tuple[GroupVerdict, ...]:
    """The verdict on every group (same order); ``G`` counts the groups with eligible vehicles."""
    test = _test(judgement, sum(1 for g in groups if g.eligible > 0))
    return tuple(
        GroupVerdict(
            g,
            test.evidence(g.failures, g.finished),
            test.threshold,
            test.halts_at(g.finished),
        )
        for g in groups
    )


def breach_reason(verdict: GroupVerdict, judgement: Judgement) -> str:
    """One line for operators: which group, its counts, and the test that made it clear."""
    c = verdict.counts
    p0 = judgement.acceptable_failure_rate.ppm
    return (
        f"{c.label}: {c.failures} of {c.finished} finished failed "
        f"({format_rate(c.failures, c.finished, p0)}), clearly above the acceptable "
        f"{format_ppm(p0, 1)} (sequential test, false-halt rate "
        f"{format_ppm(judgement.false_halt_rate.ppm, 1)})"
    )


DEFAULT_JUDGEMENT = Judgement()

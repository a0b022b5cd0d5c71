"""Hypothesis strategies for valid policy documents, policies and campaign states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from overdrive.rollout_policies import Policy, StageState, parse_policy
from overdrive.rollout_policies.units import PPM, format_duration, format_ppm

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Settings for every property test here: enough examples, no per-example deadline (a busy CI
machine must not fail them), and set per test so other packages' Hypothesis settings are untouched."""

ppms = st.integers(min_value=1, max_value=PPM)
ratios = st.integers(min_value=0, max_value=PPM).map(format_ppm)
durations = st.integers(min_value=0, max_value=3 * 86_400).map(
    lambda s: format_duration(timedelta(seconds=s))
)


@st.composite
def policy_documents(draw: st.DrawFn, kinds: tuple[str, ...] = ("percent", "count")) -> Any:
    """A valid policy document: shares never decrease within a kind, full coverage unless
    ``allow_partial``; every optional field sometimes present."""
    count = draw(st.integers(min_value=1, max_value=6))
    allow_partial = draw(st.booleans())
    largest = {"percent": 0, "count": 0}
    stages: list[dict[str, Any]] = []
    for i in range(count):
        kind = draw(st.sampled_from(kinds))
        if kind == "percent":
            ppm = draw(st.integers(min_value=max(1, largest["percent"]), max_value=PPM))
            largest["percent"] = ppm
            share: Any = format_ppm(ppm)
        else:
            n = draw(
                st.integers(min_value=max(1, largest["count"]), max_value=largest["count"] + 5000)
            )
            largest["count"] = n
            share = n
        stage: dict[str, Any] = {"share": share}
        if draw(st.booleans()):
            stage["name"] = f"s{i}-{draw(st.text('abc%', max_size=3))}"
        if draw(st.booleans()):
            stage["soak"] = draw(durations)
        if draw(st.booleans()):
            stage["min_finished"] = draw(
                st.one_of(st.integers(min_value=1, max_value=500), ppms.map(format_ppm))
            )
        if draw(st.booleans()):
            stage["success_threshold"] = draw(ratios)
        if draw(st.booleans()):
            stage["max_failure_rate"] = draw(ratios)
        if draw(st.booleans()):
            stage["on_breach"] = draw(st.sampled_from(["pause", "abort"]))
        if draw(st.booleans()):
            stage["manual_approval"] = draw(st.booleans())
        stages.append(stage)
    if not allow_partial and largest["percent"] < PPM:
        stages.append({"share": "100%", "name": "final"})
    document: dict[str, Any] = {"stages": stages}
    if allow_partial:
        document["allow_partial"] = True
    if draw(st.booleans()):
        document["deadline"] = draw(
            st.integers(min_value=1, max_value=30 * 86_400).map(
                lambda s: format_duration(timedelta(seconds=s))
            )
        )
        if draw(st.booleans()):
            document["on_deadline"] = draw(st.sampled_from(["pause", "abort"]))
    if draw(st.booleans()):
        document["maintenance_windows"] = draw(st.lists(window_documents(), max_size=3))
    if draw(st.booleans()):
        document["name"] = draw(st.text("abcdefgh-", min_size=1, max_size=10))
    return document


@st.composite
def window_documents(draw: st.DrawFn) -> dict[str, Any]:
    days = draw(
        st.lists(
            st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
            min_size=1,
            max_size=7,
            unique=True,
        )
    )
    start = draw(st.integers(min_value=0, max_value=1439))
    end = draw(st.integers(min_value=1, max_value=1440).filter(lambda e: e % 1440 != start))
    window: dict[str, Any] = {"start": f"{start // 60:02d}:{start % 60:02d}"}
    window["end"] = f"{end // 60:02d}:{end % 60:02d}"
    if draw(st.booleans()):
        window["days"] = days
    return window


def policies(kinds: tuple[str, ...] = ("percent", "count")) -> st.SearchStrategy[Policy]:
    return policy_documents(kinds).map(lambda doc: parse_policy(doc, source="generated"))


@st.composite
def states(draw: st.DrawFn, policy: Policy) -> StageState:
    """A valid state for ``policy``: counts consistent, times around ``T0``."""
    eligible = draw(st.one_of(st.integers(0, 50), st.integers(0, 200_000)))
    admitted = draw(st.integers(0, eligible))
    succeeded = draw(st.integers(0, admitted))
    failed = draw(st.integers(0, admitted - succeeded))
    rolled_back = draw(st.integers(0, admitted - succeeded - failed))
    unfinished = admitted - succeeded - failed - rolled_back
    in_progress = draw(st.integers(0, unfinished))
    stage_offset = draw(st.integers(0, 40 * 86_400))
    elapsed = draw(st.integers(-3600, 5 * 86_400))
    return StageState(
        stage_index=draw(st.integers(0, len(policy.stages) - 1)),
        campaign_started_at=T0,
        stage_started_at=T0 + timedelta(seconds=stage_offset),
        now=T0 + timedelta(seconds=stage_offset + elapsed),
        eligible=eligible,
        admitted=admitted,
        succeeded=succeeded,
        failed=failed,
        rolled_back=rolled_back,
        in_progress=in_progress,
        installed=draw(st.integers(0, in_progress)),
        approved=draw(st.booleans()),
    )

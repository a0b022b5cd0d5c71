"""Cohort buckets and admission: deterministic, monotonic, never above the share (plus rounding)."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overdrive.rollout_policies import (
    BUCKETS,
    Policy,
    Stage,
    admission_order,
    admission_target,
    bucket,
    cutoff,
    in_cohort,
    parse_policy,
)
from overdrive.rollout_policies.units import PPM, Share

from .strategies import PROPERTY, policies

ids = st.text(min_size=0, max_size=40)
fleets = st.integers(min_value=0, max_value=2_000_000)


def test_bucket_is_the_documented_hash() -> None:
    campaign, vehicle = "c-1", "VIN123"
    digest = hashlib.sha256(
        b"overdrive-cohort-v1\0" + (3).to_bytes(4, "big") + b"c-1" + b"VIN123"
    ).digest()
    assert bucket(campaign, vehicle) == int.from_bytes(digest[:8], "big") % 10_000


def test_bucket_golden_values() -> None:
    # Frozen forever: the server persists buckets and simulations must replay identically.
    assert [bucket("campaign-a", f"vehicle-{i}") for i in range(5)] == [
        2497,
        2033,
        1629,
        8488,
        9910,
    ]
    assert (bucket("", ""), bucket("c", "ünïcode")) == (7180, 7385)


def test_length_prefix_separates_ids() -> None:
    assert bucket("ab", "c") != bucket("a", "bc")


def test_buckets_are_roughly_uniform() -> None:
    counts = Counter(bucket("uniform", f"v{i}") // 1000 for i in range(20_000))
    assert len(counts) == 10
    assert all(1_700 < n < 2_300 for n in counts.values()), counts


def test_campaigns_pick_different_canaries() -> None:
    vehicles = [f"v{i}" for i in range(2000)]
    first = set(admission_order("one", vehicles)[:20])
    second = set(admission_order("two", vehicles)[:20])
    assert len(first & second) < 5


@given(ids, ids)
@PROPERTY
def test_bucket_in_range_and_deterministic(campaign: str, vehicle: str) -> None:
    value = bucket(campaign, vehicle)
    assert 0 <= value < BUCKETS
    assert value == bucket(campaign, vehicle)


@pytest.mark.parametrize(
    ("share", "eligible", "target", "cut"),
    [
        ("1%", 1000, 10, 100),
        ("1%", 50, 1, 100),  # a non-empty fleet always gets a canary
        ("1%", 0, 0, 100),
        ("0.015%", 100_000, 15, 2),  # 1.5 buckets round up to 2
        ("100%", 7, 7, 10_000),
        (50, 1000, 50, 500),
        (50, 30, 30, 10_000),
        (3, 100_000, 3, 1),  # at least one bucket
        (50, 0, 0, 0),
    ],
)
def test_targets_and_cutoffs(share: str | int, eligible: int, target: int, cut: int) -> None:
    stage = parse_policy({"allow_partial": True, "stages": [{"share": share}]}).stages[0]
    assert admission_target(stage, eligible) == target
    assert cutoff(stage, eligible) == cut


def test_a_standalone_stage_uses_its_own_share() -> None:
    stage = Stage(name="x", share=Share.percent(100_000))
    assert admission_target(stage, 1000) == 100 and cutoff(stage, 1000) == 1000


def targets(policy: Policy, eligible: int) -> list[int]:
    return [admission_target(stage, eligible) for stage in policy.stages]


@given(policies(), fleets)
@PROPERTY
def test_targets_and_cutoffs_never_decrease_across_stages(policy: Policy, eligible: int) -> None:
    t = targets(policy, eligible)
    c = [cutoff(stage, eligible) for stage in policy.stages]
    assert t == sorted(t) and c == sorted(c)
    assert all(0 <= x <= eligible for x in t) and all(0 <= x <= BUCKETS for x in c)
    if policy.full_coverage:
        assert t[-1] == eligible and c[-1] == BUCKETS


@given(policies(), st.lists(st.text(max_size=8), max_size=60, unique=True), st.text(max_size=8))
@PROPERTY
def test_admitted_vehicles_stay_admitted_in_later_stages(
    policy: Policy, vehicles: list[str], campaign: str
) -> None:
    order = admission_order(campaign, vehicles)
    eligible = len(vehicles)
    previous_exact: set[str] = set()
    previous_hashed: set[str] = set()
    for stage in policy.stages:
        exact = set(order[: admission_target(stage, eligible)])
        hashed = {v for v in vehicles if in_cohort(campaign, v, cutoff(stage, eligible))}
        assert previous_exact <= exact and previous_hashed <= hashed
        previous_exact, previous_hashed = exact, hashed


@given(policies(), fleets, st.integers(min_value=0, max_value=100_000))
@PROPERTY
def test_growing_fleets_never_shrink_admission(policy: Policy, eligible: int, growth: int) -> None:
    for stage in policy.stages:
        assert admission_target(stage, eligible) <= admission_target(stage, eligible + growth)
        if not stage.cumulative.count:  # a percentage's buckets do not depend on the fleet
            assert cutoff(stage, eligible) == cutoff(stage, eligible + growth)


@given(policies(), fleets)
@PROPERTY
def test_shares_are_never_exceeded_by_more_than_rounding(policy: Policy, eligible: int) -> None:
    for stage in policy.stages:
        reach = stage.cumulative
        target, cut = admission_target(stage, eligible), cutoff(stage, eligible)
        # exact: at most ceil(share × eligible), and exactly that for the reach.
        assert target == max(math.ceil(reach.ppm * eligible / PPM), min(reach.count, eligible))
        # by cutoff: cutoff / 10000 <= share + 1 / 10000.
        if eligible:
            share_in_buckets = max(reach.ppm * BUCKETS / PPM, reach.count * BUCKETS / eligible)
            assert cut <= min(BUCKETS, share_in_buckets + 1)


@given(policies(kinds=("percent",)), fleets)
@PROPERTY
def test_single_kind_stages_admit_exactly_their_own_share(policy: Policy, eligible: int) -> None:
    for stage in policy.stages:
        assert admission_target(stage, eligible) == -(-stage.share.ppm * eligible // PPM)
        assert cutoff(stage, eligible) * 100 <= stage.share.ppm + 99


@given(st.lists(st.text(max_size=6), min_size=1, max_size=50, unique=True), st.text(max_size=6))
@PROPERTY
def test_admission_order_is_a_permutation_sorted_by_bucket(
    vehicles: list[str], campaign: str
) -> None:
    order = admission_order(campaign, vehicles)
    assert sorted(order) == sorted(vehicles)
    keys = [(bucket(campaign, v), v) for v in order]
    assert keys == sorted(keys)

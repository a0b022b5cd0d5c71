"""The decision engine: one example per rule and decision kind, then properties over random
policies and states."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overdrive.rollout_policies import (
    Decision,
    InvalidState,
    Policy,
    StageState,
    admission_target,
    decide,
    parse_policy,
    preset,
    required_sample,
)

from .conftest import state
from .strategies import PROPERTY, T0, policies, states

POLICY = parse_policy(
    {
        "deadline": "7d",
        "stages": [
            {
                "name": "canary-1%",
                "share": "1%",
                "soak": "2h",
                "min_finished": 10,
                "success_threshold": "90%",
                "max_failure_rate": "5%",
                "on_breach": "abort",
            },
            {"name": "half", "share": "50%", "min_finished": "50%", "manual_approval": True},
            {"name": "all", "share": "100%", "min_finished": "50%"},
        ],
    },
    source="test",
)


# ---------------------------------------------------------------------------- each decision kind


def test_advance_when_soaked_sampled_and_successful() -> None:
    d = decide(POLICY, state(hours=3, admitted=10, succeeded=10))
    assert d.kind == "advance"
    assert (d.stage_index, d.stage, d.next_stage_index) == (0, "canary-1%", 1)
    assert (d.target, d.cutoff) == (500, 5000)
    assert d.reason == (
        "stage 'canary-1%' passed (10 of 10 finished succeeded, 100.0% >= 90.0%); "
        "advancing to stage 'half' (target 500 vehicles)"
    )


def test_hold_while_soaking_says_until_when() -> None:
    d = decide(POLICY, state(hours=0.5, admitted=10, succeeded=10))
    assert d.kind == "hold" and d.waiting_for == ("soak",)
    assert d.until == T0 + timedelta(hours=2)
    assert (
        d.reason == "holding at stage 'canary-1%': soaking until 2025-03-01 14:00 UTC, 1h30m left"
    )
    assert d.target == 10 and d.next_stage_index is None


def test_hold_for_more_finished_vehicles() -> None:
    d = decide(POLICY, state(hours=3, admitted=10, succeeded=6, in_progress=4, installed=1))
    assert d.kind == "hold" and d.waiting_for == ("sample",)
    assert d.reason == (
        "holding at stage 'canary-1%': waiting for 4 more results "
        "(6 of 10 needed; 4 not finished, 4 in progress, 1 installed)"
    )


def test_hold_lists_every_unmet_condition() -> None:
    d = decide(POLICY, state(hours=1, admitted=10, succeeded=3))
    assert d.waiting_for == ("soak", "sample")
    assert "soaking until" in d.reason and "waiting for 7 more" in d.reason


def test_hold_below_the_success_threshold_while_results_can_still_raise_it() -> None:
    p = parse_policy(
        {
            "stages": [
                {"share": "10%", "success_threshold": "98%", "max_failure_rate": "5%"},
                {"share": "100%"},
            ]
        }
    )
    d = decide(p, state(admitted=100, succeeded=96, failed=2, in_progress=2))
    assert d.kind == "hold" and d.waiting_for == ("success",)
    assert d.reason == (
        "holding at stage 'stage-1': success rate 97.96% < required 98.0% "
        "(96 of 98 finished succeeded)"
    )


def test_hold_awaiting_approval() -> None:
    d = decide(POLICY, state(stage_index=1, admitted=500, succeeded=300))
    assert d.kind == "hold" and d.waiting_for == ("approval",)
    assert d.reason == "holding at stage 'half': waiting for approval to advance to stage 'all'"
    approved = decide(POLICY, state(stage_index=1, admitted=500, succeeded=300, approved=True))
    assert approved.kind == "advance" and approved.target == 1000


def test_breach_pauses_or_aborts_even_while_soaking() -> None:
    d = decide(POLICY, state(hours=0.1, admitted=10, succeeded=8, failed=1, rolled_back=1))
    assert d.kind == "abort"
    assert d.reason == "failure rate 20.0% > max 5.0% at stage 'canary-1%' (2 of 10 finished)"
    paused = decide(
        POLICY, state(stage_index=1, admitted=500, succeeded=230, failed=20, approved=True)
    )
    assert paused.kind == "pause"
    assert paused.reason == "failure rate 8.0% > max 5.0% at stage 'half' (20 of 250 finished)"


def test_the_issue_example_breach() -> None:
    p = parse_policy(
        {"stages": [{"name": "canary-1%", "share": "1%", "min_finished": 50}, {"share": "100%"}]}
    )
    d = decide(p, state(eligible=5000, admitted=50, succeeded=44, failed=6))
    assert d.kind == "pause"
    assert d.reason == "failure rate 12.0% > max 5.0% at stage 'canary-1%' (6 of 50 finished)"


def test_no_breach_before_the_minimum_sample() -> None:
    # 1 failure in 6 (17%) is over the stage's 5%, but not a sample yet, nor statistically clear.
    d = decide(POLICY, state(hours=3, admitted=10, succeeded=5, failed=1))
    assert d.kind == "hold" and d.waiting_for == ("sample",)


def test_rolled_back_counts_as_failed() -> None:
    d = decide(POLICY, state(hours=3, admitted=10, succeeded=9, rolled_back=1))
    assert d.kind == "abort" and "(1 of 10 finished)" in d.reason


def test_a_success_rate_that_cannot_improve_is_a_breach() -> None:
    p = parse_policy(
        {
            "stages": [
                {"name": "s", "share": "10%", "success_threshold": "99%", "max_failure_rate": "5%"},
                {"share": "100%"},
            ]
        }
    )
    d = decide(p, state(admitted=100, succeeded=97, failed=3))
    assert d.kind == "pause"
    assert d.reason == (
        "success rate 97.0% < required 99.0% at stage 's' (97 of 100 finished) and all 100 "
        "admitted vehicles have finished, so it cannot improve"
    )


def test_complete_when_the_last_stage_passes_and_everyone_finished() -> None:
    d = decide(POLICY, state(stage_index=2, admitted=1000, succeeded=990, failed=10))
    assert d.kind == "complete"
    assert d.reason == (
        "stage 'all' passed (990 of 1000 finished succeeded, 99.0% >= 95.0%) and all 1000 "
        "admitted vehicles have finished: campaign complete"
    )


def test_last_stage_waits_for_unfinished_and_unadmitted_vehicles() -> None:
    d = decide(POLICY, state(stage_index=2, admitted=1000, succeeded=900, in_progress=100))
    assert d.kind == "hold" and d.waiting_for == ("unfinished",)
    assert (
        d.reason
        == "holding at stage 'all': waiting for 100 admitted vehicles to finish (100 not finished, 100 in progress)"
    )
    short = decide(POLICY, state(stage_index=2, admitted=990, succeeded=990))
    assert short.kind == "hold" and short.waiting_for == ("admission",)
    assert short.reason == "holding at stage 'all': waiting for admission (990 of 1000 admitted)"


def test_approval_on_the_last_stage_gates_completion() -> None:
    p = preset("manual")
    done = state(stage_index=3, admitted=1000, succeeded=1000)
    d = decide(p, done)
    assert d.kind == "hold" and d.reason.endswith("waiting for approval to complete")
    assert decide(p, replace(done, approved=True)).kind == "complete"


def test_no_eligible_vehicles_completes() -> None:
    d = decide(POLICY, state(eligible=0, admitted=0))
    assert d.kind == "complete" and d.reason == "no eligible vehicles: nothing to roll out"


def test_deadline_pauses_instead_of_advancing() -> None:
    late = state(hours=24 * 7, stage_hours=3, admitted=10, succeeded=10)
    d = decide(POLICY, late)
    assert d.kind == "pause"
    assert d.reason == (
        "deadline passed at stage 'canary-1%': the campaign started 2025-03-01T12:00:00+00:00 "
        "and had 7d to finish"
    )
    aborting = replace(POLICY, on_deadline="abort")
    assert decide(aborting, late).kind == "abort"
    assert decide(POLICY, replace(late, now=late.now - timedelta(seconds=1))).kind == "advance"


def test_a_campaign_that_is_done_completes_even_past_its_deadline() -> None:
    d = decide(POLICY, state(hours=24 * 30, stage_index=2, admitted=1000, succeeded=1000))
    assert d.kind == "complete"


def test_a_breach_outranks_the_deadline() -> None:
    d = decide(POLICY, state(hours=24 * 30, admitted=10, failed=10))
    assert d.kind == "abort" and d.reason.startswith("failure rate 100.0%")


def test_soak_restarts_with_the_stage_and_tolerates_clock_skew() -> None:
    skewed = state(hours=3, stage_hours=-0.01, admitted=10, succeeded=10)  # stage "starts" later
    d = decide(POLICY, skewed)
    assert d.kind == "hold" and d.until is not None and d.until > skewed.now


def test_naive_times_work_too() -> None:
    naive = datetime(2025, 1, 1)
    s = StageState(
        stage_index=0,
        stage_started_at=naive,
        campaign_started_at=naive,
        now=naive + timedelta(hours=3),
        eligible=1000,
        admitted=10,
        succeeded=10,
        failed=0,
        rolled_back=0,
    )
    assert decide(POLICY, s).kind == "advance"


@pytest.mark.parametrize(
    ("admitted", "min_finished", "expected"),
    [(10, 20, 10), (100, 20, 20), (0, 20, 1), (100, "50%", 50), (3, "50%", 2), (1, "1%", 1)],
)
def test_required_sample(admitted: int, min_finished: int | str, expected: int) -> None:
    stage = parse_policy({"stages": [{"share": "100%", "min_finished": min_finished}]}).stages[0]
    assert required_sample(stage, admitted) == expected


# ---------------------------------------------------------------------------- invalid states


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"failed": -1}, "failed must be a count (an integer >= 0), got -1"),
        ({"admitted": True}, "admitted must be a count (an integer >= 0), got True"),
        ({"stage_index": -1}, "stage_index must be an integer >= 0, got -1"),
        (
            {"succeeded": 11},
            "11 finished vehicles (succeeded + failed + rolled_back) but only 10 admitted",
        ),
        (
            {"now": datetime(2025, 1, 1)},
            "stage_started_at, campaign_started_at and now mix naive and aware times",
        ),
    ],
)
def test_invalid_states_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidState) as caught:
        replace(state(), **changes)
    assert str(caught.value) == message


def test_stage_index_out_of_range() -> None:
    with pytest.raises(InvalidState, match="stage_index 3 is out of range: the policy has 3 stage"):
        decide(POLICY, state(stage_index=3))


def test_to_dicts_are_json() -> None:
    s = state(hours=1, admitted=10, succeeded=3)
    d = decide(POLICY, s)
    assert json.loads(json.dumps(d.to_dict()))["until"] == "2025-03-01T14:00:00+00:00"
    assert json.loads(json.dumps(s.to_dict()))["now"] == "2025-03-01T13:00:00+00:00"
    assert d.to_dict()["waiting_for"] == ["soak", "sample"]


# ---------------------------------------------------------------------------- properties


@st.composite
def cases(draw: st.DrawFn) -> tuple[Policy, StageState]:
    policy = draw(policies())
    return policy, draw(states(policy))


KINDS = {"advance", "hold", "pause", "abort", "complete"}


@given(cases())
@PROPERTY
def test_decide_is_total_deterministic_and_serialisable(case: tuple[Policy, StageState]) -> None:
    policy, s = case
    d = decide(policy, s)
    assert isinstance(d, Decision) and d.kind in KINDS
    assert decide(policy, s) == d
    assert d.reason and "\n" not in d.reason
    json.dumps(d.to_dict())
    assert (d.kind == "hold") == bool(d.waiting_for)
    assert (d.kind == "advance") == (d.next_stage_index == s.stage_index + 1)


@given(cases())
@PROPERTY
def test_a_failure_rate_over_the_maximum_never_advances(case: tuple[Policy, StageState]) -> None:
    policy, s = case
    stage = policy.stages[s.stage_index]
    if stage.max_failure_rate.exceeded_by(s.failures, s.finished) and s.eligible:
        d = decide(policy, s)
        assert d.kind not in ("advance", "complete")
        if s.finished >= required_sample(stage, s.admitted):
            assert d.kind == stage.on_breach and d.reason.startswith("failure rate")


@given(cases())
@PROPERTY
def test_advancing_needs_every_gate(case: tuple[Policy, StageState]) -> None:
    policy, s = case
    d = decide(policy, s)
    if d.kind != "advance":
        return
    stage = policy.stages[s.stage_index]
    assert s.stage_index < len(policy.stages) - 1
    assert s.now >= s.stage_started_at + stage.soak
    assert s.finished >= required_sample(stage, s.admitted) >= 1
    assert stage.success_threshold.met_by(s.succeeded, s.finished)
    assert not stage.max_failure_rate.exceeded_by(s.failures, s.finished)
    assert s.approved or not stage.manual_approval
    assert policy.deadline is None or s.now < s.campaign_started_at + policy.deadline
    assert d.target == admission_target(policy.stages[s.stage_index + 1], s.eligible)


@given(cases())
@PROPERTY
def test_completing_needs_everyone_finished_on_the_last_stage(
    case: tuple[Policy, StageState],
) -> None:
    policy, s = case
    d = decide(policy, s)
    if d.kind == "complete" and s.eligible:
        assert s.stage_index == len(policy.stages) - 1
        assert s.finished == s.admitted >= admission_target(policy.stages[-1], s.eligible)


@given(cases(), st.integers(min_value=1, max_value=10_000))
@PROPERTY
def test_more_failures_never_turn_a_stop_into_progress(
    case: tuple[Policy, StageState], extra: int
) -> None:
    policy, s = case
    worse = replace(
        s, admitted=s.admitted + extra, eligible=s.eligible + extra, failed=s.failed + extra
    )
    if decide(policy, s).kind in ("pause", "abort") and s.eligible:
        assert decide(policy, worse).kind in ("pause", "abort", "hold")
        assert decide(policy, worse).kind != "advance"


# ---------------------------------------------------------------------------- a small simulation


def test_canary_rolls_a_synthetic_fleet_to_completion() -> None:
    """Drive the canary preset over 20,000 vehicles with accelerated time: every admitted
    vehicle finishes an hour after admission, 0.5% fail; admission is by (bucket, id)."""
    from overdrive.rollout_policies import admission_order

    policy = preset("canary")
    vehicles = [f"VIN{i:06d}" for i in range(20_000)]
    order = admission_order("sim", vehicles)
    admitted_at: dict[str, datetime] = {}
    stage_index, stage_started, now = 0, T0, T0
    kinds = []
    for _tick in range(24 * 30):
        target = admission_target(policy.stages[stage_index], len(vehicles))
        for vehicle in order[len(admitted_at) : target]:
            admitted_at[vehicle] = now
        finished = [v for v, at in admitted_at.items() if now - at >= timedelta(hours=1)]
        failed = sum(1 for v in finished if int(v[3:]) % 200 == 0)
        s = StageState(
            stage_index=stage_index,
            stage_started_at=stage_started,
            campaign_started_at=T0,
            now=now,
            eligible=len(vehicles),
            admitted=len(admitted_at),
            succeeded=len(finished) - failed,
            failed=failed,
            rolled_back=0,
        )
        d = decide(policy, s)
        kinds.append(d.kind)
        if d.kind == "advance":
            assert d.next_stage_index is not None
            stage_index, stage_started = d.next_stage_index, now
        elif d.kind != "hold":
            break
        now += timedelta(hours=1)
    assert kinds.count("advance") == len(policy.stages) - 1 and kinds[-1] == "complete", kinds
    assert list(admitted_at) == order  # admitted in bucket order, never skipped or revoked

"""The sequential test per group (``rollout_policies.groups``) and how ``decide`` uses it."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overdrive.rollout_policies import (
    GroupCounts,
    InvalidPolicy,
    InvalidState,
    Judgement,
    StageState,
    decide,
    judge,
    parse_policy,
)
from overdrive.rollout_policies.units import Ratio
from tests.conftest import reproducible
from tests.policies.strategies import T0

DEFAULT = Judgement()
POLICY = parse_policy(
    {
        "judge": {"cohorts": ["region"]},
        "stages": [
            {"name": "all", "share": "100%", "min_finished": "100%", "max_failure_rate": "100%"}
        ],
    }
)


def group(
    failures: int, finished: int, *, value: str = "x", admitted: int | None = None
) -> GroupCounts:
    admitted = finished if admitted is None else admitted
    return GroupCounts("hardware_id", value, admitted, admitted, finished - failures, failures)


def state(groups: tuple[GroupCounts, ...], **counts: int) -> StageState:
    c = {"eligible": 1000, "admitted": 1000, "succeeded": 0, "failed": 0, "rolled_back": 0}
    c.update(counts)
    return StageState(
        stage_index=0,
        stage_started_at=T0,
        campaign_started_at=T0,
        now=T0 + timedelta(hours=1),
        eligible=c["eligible"],
        admitted=c["admitted"],
        succeeded=c["succeeded"],
        failed=c["failed"],
        rolled_back=c["rolled_back"],
        groups=groups,
    )


@reproducible(300)
@given(
    finished=st.integers(min_value=0, max_value=5000),
    groups=st.integers(min_value=1, max_value=50),
    data=st.data(),
)
def test_halts_at_is_the_fewest_failures_that_breach(
    finished: int, groups: int, data: st.DataObject
) -> None:
    padding = tuple(group(0, 0, value=f"pad-{i}", admitted=1) for i in range(groups - 1))
    failures = data.draw(st.integers(min_value=0, max_value=finished))
    verdict = judge(DEFAULT, (group(failures, finished, admitted=max(finished, 1)), *padding))[0]
    assert verdict.threshold == pytest.approx(math.log(groups / 0.01))
    if verdict.halts_at is None:
        assert not judge(DEFAULT, (group(finished, finished), *padding))[0].breached
    else:
        assert verdict.breached == (failures >= verdict.halts_at)
        fewer = judge(DEFAULT, (group(verdict.halts_at - 1, finished), *padding))[0]
        assert not fewer.breached


@reproducible(200)
@given(
    failures=st.integers(min_value=0, max_value=200),
    successes=st.integers(min_value=0, max_value=2000),
    more=st.integers(min_value=1, max_value=20),
)
def test_more_failures_never_make_a_group_look_better(
    failures: int, successes: int, more: int
) -> None:
    base = judge(DEFAULT, (group(failures, failures + successes),))[0]
    worse = judge(DEFAULT, (group(failures + more, failures + more + successes),))[0]
    better = judge(DEFAULT, (group(failures, failures + successes + more),))[0]
    assert worse.evidence > base.evidence > better.evidence


def test_a_group_failing_everywhere_breaches_after_a_handful() -> None:
    # ln(G / alpha) / ln(p1 / p0): 3 groups → ln(300) / ln(10) = 2.48 → 3 failures.
    three = (group(0, 0, value="a", admitted=1), group(0, 0, value="b", admitted=1))
    assert [judge(DEFAULT, (group(n, n), *three[:2]))[0].breached for n in (1, 2, 3)] == [
        False,
        False,
        True,
    ]
    assert judge(DEFAULT, (group(0, 0),))[0].halts_at is None
    assert judge(DEFAULT, (group(0, 3),))[0].halts_at == 3


def test_groups_without_eligible_vehicles_do_not_raise_the_bar() -> None:
    alone = judge(DEFAULT, (group(2, 2),))[0]
    empty = GroupCounts("region", "nowhere", 0, 0, 0, 0)
    assert judge(DEFAULT, (group(2, 2), empty))[0].threshold == alone.threshold


def test_the_false_halt_rate_holds_at_the_acceptable_rate() -> None:
    """Monte Carlo: groups failing at exactly p0, looked at after every result for 2,000
    results, breach at most alpha of the time (Ville's inequality; a fixed seed)."""
    judgement = Judgement(false_halt_rate=Ratio(100_000))  # 10%, to see some halts in 400 runs
    rng = random.Random(7)
    halted = 0
    runs = 400
    for _ in range(runs):
        failures = 0
        for n in range(1, 2001):
            failures += rng.random() < 0.02
            if judge(judgement, (group(failures, n),))[0].breached:
                halted += 1
                break
    assert halted / runs <= 0.10


def test_decide_names_the_breached_group_and_prefers_a_specific_one() -> None:
    groups = (
        group(0, 40, value="ecu-a"),
        group(6, 6, value="ecu-b"),
        GroupCounts("region", "EU", 46, 46, 40, 6),
    )
    d = decide(POLICY, state(groups, succeeded=40, rolled_back=6))
    assert d.kind == "pause"
    assert d.reason.startswith(
        "hardware id 'ecu-b': 6 of 6 finished failed (100.0%), clearly above"
    )
    assert d.reason.endswith("at stage 'all'")
    assert [g.counts.label for g in d.groups] == [
        "the campaign",
        "hardware id 'ecu-a'",
        "hardware id 'ecu-b'",
        "region 'EU'",
    ]
    assert [g.breached for g in d.groups][2] is True
    as_dict = d.to_dict()["groups"][2]
    assert as_dict["failure_rate"] == 1.0 and as_dict["breached"] is True


def test_no_failures_never_breach() -> None:
    groups = tuple(group(0, 500, value=f"v{i}") for i in range(10))
    assert (
        decide(POLICY, state(groups, succeeded=5000, admitted=5000, eligible=5000)).kind
        == "complete"
    )


def test_invalid_group_counts_are_refused() -> None:
    with pytest.raises(InvalidState, match="group hardware id 'x': 3 finished but only 2 admitted"):
        GroupCounts("hardware_id", "x", 2, 2, 1, 2)
    with pytest.raises(InvalidState, match="failures must be a count"):
        GroupCounts("hardware_id", "x", 2, 2, 1, -1)
    with pytest.raises(InvalidState, match="groups must be GroupCounts"):
        state(("nope",))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("judge_doc", "message"),
    [
        ({"cohorts": ["Region"]}, "judge.cohorts[0]: must be a dimension name"),
        ({"cohorts": ["region", "region"]}, "judge.cohorts: names a dimension twice"),
        ({"cohorts": "region"}, "judge.cohorts: must be a list"),
        (
            {"detect_failure_rate": "1%"},
            "judge.detect_failure_rate: must be above acceptable_failure_rate",
        ),
        ({"acceptable_failure_rate": "0%"}, "judge.detect_failure_rate: must be above acceptable"),
        ({"false_halt_rate": "60%"}, "judge.false_halt_rate: must be above 0% and at most 50%"),
        ({"false_halt_rate": 0}, "judge.false_halt_rate: must be above 0%"),
        ({"colour": "red"}, "judge.colour: unknown field"),
        ("strict", "judge: must be a mapping"),
    ],
)
def test_judge_errors(judge_doc: object, message: str) -> None:
    with pytest.raises(InvalidPolicy, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_policy({"judge": judge_doc, "stages": [{"share": "100%"}]}, source="p")


def test_judge_round_trips() -> None:
    doc = {
        "judge": {
            "cohorts": ["region", "installed_version", "trim.level"],
            "acceptable_failure_rate": "0.5%",
            "detect_failure_rate": "10%",
            "false_halt_rate": "0.1%",
        },
        "stages": [{"share": "100%"}],
    }
    policy = parse_policy(doc)
    assert policy.judge.cohorts == ("region", "installed_version", "trim.level")
    assert policy.judge.dimensions == ("hardware_id", "region", "installed_version", "trim.level")
    assert parse_policy(policy.to_dict()) == policy
    assert policy.to_dict()["judge"] == doc["judge"]

"""The policy format: what a valid document means, and one precise error for each rule."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given

from overdrive.rollout_policies import InvalidPolicy, MaintenanceWindow, Ratio, Share, parse_policy

from .strategies import PROPERTY, policies, policy_documents

BASE: dict[str, Any] = {
    "stages": [{"name": "one", "share": "10%"}, {"name": "two", "share": "100%"}]
}


def with_(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of ``base`` (BASE) with ``path`` (``stages.0.share``) set; ``...`` deletes it."""
    doc = copy.deepcopy(BASE if base is None else base)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return doc


def test_a_full_document_parses_to_the_model() -> None:
    policy = parse_policy(
        {
            "name": "careful",
            "description": "slow and watched",
            "deadline": "14d",
            "on_deadline": "abort",
            "maintenance_windows": [{"days": ["tue", "Mon"], "start": "22:00", "end": "05:00"}],
            "stages": [
                {
                    "name": "canary",
                    "share": 50,
                    "soak": "1d12h",
                    "min_finished": 20,
                    "success_threshold": 0.98,
                    "max_failure_rate": "2%",
                    "on_breach": "abort",
                    "manual_approval": True,
                },
                {"share": "100%", "min_finished": "50%"},
            ],
        },
        source="careful.yaml",
    )
    canary, rest = policy.stages
    assert policy.name == "careful" and policy.description == "slow and watched"
    assert policy.deadline == timedelta(days=14) and policy.on_deadline == "abort"
    assert policy.maintenance_windows == (MaintenanceWindow(days=(0, 1), start=1320, end=300),)
    assert canary.share == Share.absolute(50) and canary.soak == timedelta(hours=36)
    assert canary.min_finished == Share.absolute(20)
    assert canary.success_threshold == Ratio(980_000) and canary.max_failure_rate == Ratio(20_000)
    assert canary.on_breach == "abort" and canary.manual_approval
    assert rest.name == "stage-2" and rest.min_finished == Share.percent(500_000)
    assert rest.cumulative == Share(ppm=1_000_000, count=50)


def test_defaults() -> None:
    policy = parse_policy({"stages": [{"share": "100%"}]})
    (stage,) = policy.stages
    assert stage.name == "stage-1"
    assert stage.soak == timedelta(0)
    assert stage.min_finished == Share.absolute(1)
    assert stage.max_failure_rate == Ratio(50_000)
    assert stage.success_threshold == Ratio(950_000)
    assert stage.on_breach == "pause" and not stage.manual_approval
    assert policy.maintenance_windows == () and policy.deadline is None
    assert policy.on_deadline == "pause" and not policy.allow_partial
    assert policy.name is None and policy.description is None


def test_success_threshold_defaults_to_the_complement_of_the_failure_rate() -> None:
    (stage,) = parse_policy({"stages": [{"share": "100%", "max_failure_rate": "10%"}]}).stages
    assert stage.success_threshold == Ratio(900_000)


def test_a_partial_rollout_must_say_so() -> None:
    policy = parse_policy({"allow_partial": True, "stages": [{"share": "1%"}, {"share": 500}]})
    assert not policy.full_coverage
    assert parse_policy(BASE).full_coverage


def test_mixed_kinds_reach_the_larger_share_so_admission_never_shrinks() -> None:
    policy = parse_policy(
        {"stages": [{"share": 50}, {"share": "10%"}, {"share": 80}, {"share": "100%"}]}
    )
    assert [s.cumulative for s in policy.stages] == [
        Share(0, 50),
        Share(100_000, 50),
        Share(100_000, 80),
        Share(1_000_000, 80),
    ]


def test_window_end_may_be_midnight_and_days_default_to_all() -> None:
    policy = parse_policy(with_("maintenance_windows", [{"start": "00:00", "end": "24:00"}]))
    assert policy.maintenance_windows == (
        MaintenanceWindow(days=tuple(range(7)), start=0, end=1440),
    )


@given(policies())
@PROPERTY
def test_to_dict_is_json_and_parses_back_to_an_equal_policy(policy: Any) -> None:
    document = json.loads(json.dumps(policy.to_dict()))
    again = parse_policy(document, source="round trip")
    assert again == policy
    assert again.to_dict() == document


@given(policy_documents())
@PROPERTY
def test_every_generated_document_is_valid(document: Any) -> None:
    parse_policy(document, source="generated")


ERRORS: list[tuple[Any, str]] = [
    # the document
    (None, "the document is empty; a policy needs at least 'stages'"),
    ([1, 2], "must be a mapping (a policy with a 'stages' list), got a list"),
    (with_("stagse", 1), "stagse: unknown field; did you mean 'stages'?"),
    (
        with_("colour", "red"),
        "colour: unknown field; known fields: name, description, stages, maintenance_windows, "
        "deadline, on_deadline, allow_partial, judge",
    ),
    ({"name": "x"}, "stages: missing; a policy needs a list of stages"),
    (with_("stages", "10%"), "stages: must be a list of stages, got '10%'"),
    (with_("stages", []), "stages: must not be empty; a policy needs a stage"),
    (
        with_("stages", [{"share": "100%"}] * 101),
        "stages: must have at most 100 items, got 101",
    ),
    (with_("name", ""), "name: must be non-empty text, got ''"),
    (with_("name", 7), "name: must be non-empty text, got 7"),
    (with_("name", "x" * 65), "name: must be at most 64 characters, got 65"),
    (with_("name", "a\nb"), "name: must be one line of text without control characters"),
    (with_("description", "x" * 501), "description: must be at most 500 characters, got 501"),
    (with_("allow_partial", "no"), "allow_partial: must be true or false, got 'no'"),
    # deadline
    (
        with_("deadline", "two weeks"),
        "deadline: must be a duration like '2h' (units w, d, h, m, s, e.g. '1d12h', '90m'), got 'two weeks'",
    ),
    (with_("deadline", "0s"), "deadline: must be longer than zero, got '0s'"),
    (with_("deadline", "400d"), "deadline: must be at most 366d, got '400d'"),
    (
        with_("on_deadline", "pause"),
        "on_deadline: has no effect without a deadline; add one (e.g. '14d')",
    ),
    (
        with_("on_deadline", "stop", with_("deadline", "1d")),
        "on_deadline: must be 'pause' or 'abort', got 'stop'",
    ),
    # stages
    (
        with_("stages.0", "10%"),
        "stages[0]: must be a mapping (a stage with at least a 'share'), got '10%'",
    ),
    (with_("stages.0.sok", "2h"), "stages[0].sok: unknown field; did you mean 'soak'?"),
    (with_("stages.0", {1: "x", "share": "1%"}), "stages[0]: field names must be text, got 1"),
    (
        with_("stages.1.share", ...),
        "stages[1].share: missing; every stage needs a share, e.g. '10%' or 50",
    ),
    (
        with_("stages.1.share", "110%"),
        "stages[1].share: must be a percentage like '10%' or a positive count, got '110%'",
    ),
    (
        with_("stages.0.share", "0%"),
        "stages[0].share: must be a percentage like '10%' or a positive count, got '0%'",
    ),
    (
        with_("stages.0.share", 0),
        "stages[0].share: must be a percentage like '10%' or a positive count, got 0",
    ),
    (
        with_("stages.0.share", -5),
        "stages[0].share: must be a percentage like '10%' or a positive count, got -5",
    ),
    (
        with_("stages.0.share", 0.1),
        "stages[0].share: must be a percentage like '10%' or a positive count, got 0.1",
    ),
    (
        with_("stages.0.share", True),
        "stages[0].share: must be a percentage like '10%' or a positive count, got true",
    ),
    (
        with_("stages.0.share", 10**10),
        "stages[0].share: must be at most 1000000000 vehicles, got 10000000000",
    ),
    (
        with_("stages.0.min_finished", 10**10),
        "stages[0].min_finished: must be at most 1000000000 vehicles, got 10000000000",
    ),
    (
        with_("stages.0.share", "50"),
        "stages[0].share: must be a percentage like '10%' or a positive count, got '50' "
        "(write 50% for a percentage, or the number without quotes for a count)",
    ),
    (
        with_("stages", [{"share": "50%"}, {"share": "10%"}, {"share": "100%"}]),
        "stages[1].share: must not be smaller than stages[0].share ('50%'): shares never decrease, got '10%'",
    ),
    (
        with_("stages", [{"share": 100}, {"share": "10%"}, {"share": 50}, {"share": "100%"}]),
        "stages[2].share: must not be smaller than stages[0].share (100): shares never decrease, got 50",
    ),
    (
        with_("stages.1.share", "50%"),
        "stages[1].share: the last stage must reach '100%' of the eligible fleet, got '50%' "
        "(set allow_partial: true to end the campaign at this share)",
    ),
    (
        with_("stages.1.name", "one"),
        "stages[1].name: 'one' is already the name of stages[0]; stage names must be unique",
    ),
    (
        with_("stages.0.name", "stage-2", with_("stages.1.name", ...)),
        "stages[1].name: 'stage-2' is already the name of stages[0]; stage names must be unique",
    ),
    (with_("stages.0.name", ""), "stages[0].name: must be non-empty text, got ''"),
    (
        with_("stages.0.soak", "2 hours"),
        "stages[0].soak: must be a duration like '2h' (units w, d, h, m, s, e.g. '1d12h', '90m'), got '2 hours'",
    ),
    (
        with_("stages.0.soak", 7200),
        "stages[0].soak: must be a duration like '2h' (units w, d, h, m, s, e.g. '1d12h', '90m'), got 7200",
    ),
    (with_("stages.0.soak", "53w"), "stages[0].soak: must be at most 366d, got '53w'"),
    (
        with_("stages.0.min_finished", 0),
        "stages[0].min_finished: must be a positive count like 20 or a percentage of admitted "
        "vehicles like '50%', got 0",
    ),
    (
        with_("stages.0.min_finished", "0%"),
        "stages[0].min_finished: must be a positive count like 20 or a percentage of admitted "
        "vehicles like '50%', got '0%'",
    ),
    (
        with_("stages.0.min_finished", 2.5),
        "stages[0].min_finished: must be a positive count like 20 or a percentage of admitted "
        "vehicles like '50%', got 2.5",
    ),
    (
        with_("stages.0.success_threshold", 95),
        "stages[0].success_threshold: must be a percentage like '5%' or a fraction between 0 and 1, "
        "got 95 (did you mean '95%'?)",
    ),
    (
        with_("stages.0.success_threshold", "120%"),
        "stages[0].success_threshold: must be a percentage like '5%' or a fraction between 0 and 1, got '120%'",
    ),
    (
        with_("stages.0.max_failure_rate", -0.1),
        "stages[0].max_failure_rate: must be a percentage like '5%' or a fraction between 0 and 1, got -0.1",
    ),
    (
        with_("stages.0.max_failure_rate", True),
        "stages[0].max_failure_rate: must be a percentage like '5%' or a fraction between 0 and 1, got true",
    ),
    (
        with_("stages.0.on_breach", "stop"),
        "stages[0].on_breach: must be 'pause' or 'abort', got 'stop'",
    ),
    (
        with_("stages.0.manual_approval", "yes"),
        "stages[0].manual_approval: must be true or false, got 'yes'",
    ),
    # maintenance windows
    (
        with_("maintenance_windows", {"start": "22:00"}),
        "maintenance_windows: must be a list of maintenance windows, got a mapping",
    ),
    (
        with_("maintenance_windows", ["22:00-05:00"]),
        "maintenance_windows[0]: must be a mapping (a window with 'start' and 'end'), got '22:00-05:00'",
    ),
    (
        with_("maintenance_windows", [{"stat": "22:00", "end": "05:00"}]),
        "maintenance_windows[0].stat: unknown field; did you mean 'start'?",
    ),
    (
        with_("maintenance_windows", [{"end": "05:00"}]),
        "maintenance_windows[0].start: missing; a window needs a start and an end like '22:00'",
    ),
    (
        with_("maintenance_windows", [{"start": "25:00", "end": "05:00"}]),
        "maintenance_windows[0].start: must be a time of day like '22:00' (00:00 to 23:59), got '25:00'",
    ),
    (
        with_("maintenance_windows", [{"start": "24:00", "end": "05:00"}]),
        "maintenance_windows[0].start: must be a time of day like '22:00' (00:00 to 23:59), got '24:00'",
    ),
    (
        with_("maintenance_windows", [{"start": "22:00", "end": "5:00"}]),
        "maintenance_windows[0].end: must be a time of day like '22:00' (00:00 to 24:00), got '5:00'",
    ),
    (
        with_("maintenance_windows", [{"start": 1320, "end": "05:00"}]),
        "maintenance_windows[0].start: must be a time of day like '22:00' (00:00 to 23:59) in quotes, "
        "got 1320 (YAML 1.1 reads an unquoted 22:00 as the number 1320)",
    ),
    (
        with_("maintenance_windows", [{"start": "22:00", "end": "22:00"}]),
        "maintenance_windows[0]: start and end are both '22:00'; a window needs a length "
        "(start '00:00' and end '24:00' is the whole day)",
    ),
    (
        with_("maintenance_windows", [{"start": "00:00", "end": "00:00"}]),
        "maintenance_windows[0]: start and end are both '00:00'; a window needs a length "
        "(start '00:00' and end '24:00' is the whole day)",
    ),
    (
        with_("maintenance_windows", [{"days": "mon", "start": "22:00", "end": "05:00"}]),
        "maintenance_windows[0].days: must be a list of days like [mon, tue], got 'mon'",
    ),
    (
        with_("maintenance_windows", [{"days": [], "start": "22:00", "end": "05:00"}]),
        "maintenance_windows[0].days: must not be empty (leave days out for every day)",
    ),
    (
        with_(
            "maintenance_windows", [{"days": ["mon", "funday"], "start": "22:00", "end": "05:00"}]
        ),
        "maintenance_windows[0].days[1]: must be one of mon, tue, wed, thu, fri, sat, sun, got 'funday'",
    ),
    (
        with_("maintenance_windows", [{"days": ["mon", "Mon"], "start": "22:00", "end": "05:00"}]),
        "maintenance_windows[0].days[1]: 'mon' is listed twice",
    ),
]


@pytest.mark.parametrize(("document", "message"), ERRORS, ids=[m[:60] for _d, m in ERRORS])
def test_each_rule_has_a_precise_error(document: Any, message: str) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        parse_policy(document, source="canary.yaml")
    assert str(caught.value) == f"canary.yaml: {message}"
    assert "\n" not in str(caught.value)
    assert caught.value.source == "canary.yaml"


def test_the_issue_example_error() -> None:
    document = {"stages": [{"share": "1%"}, {"share": "10%"}, {"share": "110%"}]}
    with pytest.raises(InvalidPolicy) as caught:
        parse_policy(document, source="canary.yaml")
    assert str(caught.value) == (
        "canary.yaml: stages[2].share: must be a percentage like '10%' or a positive count, got '110%'"
    )
    assert caught.value.path == "stages[2].share"

"""Validate a policy document (already decoded from YAML or JSON) into a :class:`Policy`.

Every rule of the format lives here, and each violation raises :class:`InvalidPolicy` naming the
source, the field path (``stages[2].share``) and what is wrong, e.g.
``canary.yaml: stages[2].share: must be a percentage like '10%' or a positive count, got '110%'``.
Unknown fields are errors, with a "did you mean" for near misses, so a typo never silently falls
back to a default. The first problem found is reported (fields are checked in document order).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

from overdrive.maintenance import DAYS, MINUTES_PER_DAY, MaintenanceWindow
from overdrive.rollout_policies.errors import InvalidPolicy
from overdrive.rollout_policies.groups import Judgement
from overdrive.rollout_policies.model import (
    ACTIONS,
    DEFAULT_MAX_FAILURE_RATE,
    DEFAULT_MIN_FINISHED,
    Action,
    Policy,
    Stage,
)
from overdrive.rollout_policies.units import (
    PPM,
    Ratio,
    Share,
    parse_duration,
    parse_fraction,
    parse_percent,
)

POLICY_FIELDS = (
    "name",
    "description",
    "stages",
    "maintenance_windows",
    "deadline",
    "on_deadline",
    "allow_partial",
    "judge",
)
JUDGE_FIELDS = ("cohorts", "acceptable_failure_rate", "detect_failure_rate", "false_halt_rate")
MAX_COHORTS = 8
_COHORT = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
STAGE_FIELDS = (
    "name",
    "share",
    "soak",
    "min_finished",
    "success_threshold",
    "max_failure_rate",
    "on_breach",
    "manual_approval",
)
WINDOW_FIELDS = ("days", "start", "end")

MAX_STAGES = 100
MAX_WINDOWS = 50
MAX_NAME = 64
MAX_DESCRIPTION = 500
MAX_COUNT = 1_000_000_000
MAX_DURATION = timedelta(days=366)

_CLOCK = re.compile(r"^(\d{2}):(\d{2})$")
_T = TypeVar("_T")


def parse_policy(document: Any, source: str = "policy") -> Policy:
    """Validate a decoded policy document; ``source`` prefixes every error message."""
    return _Parser(source).policy(document)


def show(value: Any) -> str:
    """A value as an error message quotes it: ``'110%'``, ``7200``, ``true``, ``a list``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, problem: str) -> NoReturn:
        raise InvalidPolicy(self.source, path, problem)

    # -------------------------------------------------------------------------- structure

    def fields(self, value: Any, path: str, allowed: tuple[str, ...], what: str) -> dict[str, Any]:
        """``value`` as a mapping whose keys are all in ``allowed``."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping ({what}), got {show(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"field names must be text, got {show(key)}")
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = (
                    f"did you mean '{close[0]}'?"
                    if close
                    else f"known fields: {', '.join(allowed)}"
                )
                self.fail(_child(path, key), f"unknown field; {hint}")
        return value

    def optional(
        self,
        mapping: dict[str, Any],
        path: str,
        key: str,
        convert: Callable[[Any, str], _T],
        default: _T,
    ) -> _T:
        if key not in mapping:
            return default
        return convert(mapping[key], _child(path, key))

    def items(
        self, value: Any, path: str, what: str, limit: int, empty: str | None = None
    ) -> list[Any]:
        """``value`` as a list of at most ``limit`` items; ``empty`` is the error if it has none."""
        if not isinstance(value, list):
            self.fail(path, f"must be a list of {what}, got {show(value)}")
        if not value and empty is not None:
            self.fail(path, empty)
        if len(value) > limit:
            self.fail(path, f"must have at most {limit} items, got {len(value)}")
        return value

    # -------------------------------------------------------------------------- policy

    def policy(self, document: Any) -> Policy:
        if document is None:
            self.fail("", "the document is empty; a policy needs at least 'stages'")
        top = self.fields(document, "", POLICY_FIELDS, "a policy with a 'stages' list")
        name = self.optional(top, "", "name", self.name, None)
        description = self.optional(top, "", "description", self.description, None)
        if "stages" not in top:
            self.fail("stages", "missing; a policy needs a list of stages")
        raw_stages = self.items(
            top["stages"],
            "stages",
            "stages",
            MAX_STAGES,
            "must not be empty; a policy needs a stage",
        )
        stages = [self.stage(raw, f"stages[{i}]", i) for i, raw in enumerate(raw_stages)]
        raw_windows: list[Any] = self.optional(
            top,
            "",
            "maintenance_windows",
            lambda v, p: self.items(v, p, "maintenance windows", MAX_WINDOWS),
            [],
        )
        windows = tuple(
            self.window(raw, f"maintenance_windows[{i}]") for i, raw in enumerate(raw_windows)
        )
        deadline = self.optional(top, "", "deadline", self.positive_duration, None)
        on_deadline: Action = self.optional(top, "", "on_deadline", self.action, "pause")
        if "on_deadline" in top and deadline is None:
            self.fail("on_deadline", "has no effect without a deadline; add one (e.g. '14d')")
        allow_partial = self.optional(top, "", "allow_partial", self.boolean, False)
        self.check_stages(stages, allow_partial)
        judgement = self.optional(top, "", "judge", self.judgement, Judgement())
        return Policy(
            stages=tuple(stages),
            name=name,
            description=description,
            maintenance_windows=windows,
            deadline=deadline,
            on_deadline=on_deadline,
            allow_partial=allow_partial,
            judge=judgement,
        )

    def check_stages(self, stages: list[Stage], allow_partial: bool) -> None:
        """Rules across stages: unique names, shares that never shrink, full coverage."""
        seen: dict[str, int] = {}
        largest: dict[str, tuple[int, int]] = {}  # kind -> (size, index of the stage)
        for i, stage in enumerate(stages):
            if stage.name in seen:
                self.fail(
                    f"stages[{i}].name",
                    f"{stage.name!r} is already the name of stages[{seen[stage.name]}]; "
                    "stage names must be unique",
                )
            seen[stage.name] = i
            kind, size = (
                ("percent", stage.share.ppm) if stage.share.ppm else ("count", stage.share.count)
            )
            if kind in largest and size < largest[kind][0]:
                earlier = largest[kind][1]
                self.fail(
                    f"stages[{i}].share",
                    f"must not be smaller than stages[{earlier}].share "
                    f"({show(stages[earlier].share.to_json())}): shares never decrease, "
                    f"got {show(stage.share.to_json())}",
                )
            largest[kind] = (size, i)
        reach = Share()
        for stage in stages:
            reach = reach.join(stage.share)
        if reach.ppm < PPM and not allow_partial:
            last = len(stages) - 1
            self.fail(
                f"stages[{last}].share",
                f"the last stage must reach '100%' of the eligible fleet, got "
                f"{show(stages[last].share.to_json())} (set allow_partial: true to end the "
                "campaign at this share)",
            )

    # -------------------------------------------------------------------------- stage

    def stage(self, value: Any, path: str, index: int) -> Stage:
        raw = self.fields(value, path, STAGE_FIELDS, "a stage with at least a 'share'")
        name = self.optional(raw, path, "name", self.name, f"stage-{index + 1}")
        if "share" not in raw:
            self.fail(_child(path, "share"), "missing; every stage needs a share, e.g. '10%' or 50")
        share = self.share(raw["share"], _child(path, "share"))
        soak = self.optional(raw, path, "soak", self.duration, timedelta(0))
        min_finished = self.optional(
            raw, path, "min_finished", self.min_finished, DEFAULT_MIN_FINISHED
        )
        max_failure = self.optional(
            raw, path, "max_failure_rate", self.ratio, DEFAULT_MAX_FAILURE_RATE
        )
        success = self.optional(
            raw, path, "success_threshold", self.ratio, max_failure.complement()
        )
        on_breach: Action = self.optional(raw, path, "on_breach", self.action, "pause")
        approval = self.optional(raw, path, "manual_approval", self.boolean, False)
        return Stage(
            name=name,
            share=share,
            soak=soak,
            min_finished=min_finished,
            success_threshold=success,
            max_failure_rate=max_failure,
            on_breach=on_breach,
            manual_approval=approval,
        )

    def share(self, value: Any, path: str) -> Share:
        problem = "must be a percentage like '10%' or a positive count"
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 < value <= MAX_COUNT:
                return Share.absolute(value)
            if value > MAX_COUNT:
                self.fail(path, f"must be at most {MAX_COUNT} vehicles, got {value}")
            self.fail(path, f"{problem}, got {show(value)}")
        if isinstance(value, str):
            ppm = parse_percent(value)
            if ppm is not None and ppm > 0:
                return Share.percent(ppm)
            if value.strip().isdigit():
                self.fail(
                    path,
                    f"{problem}, got {show(value)} (write {value.strip()}% for a percentage, "
                    "or the number without quotes for a count)",
                )
        self.fail(path, f"{problem}, got {show(value)}")

    def min_finished(self, value: Any, path: str) -> Share:
        problem = "must be a positive count like 20 or a percentage of admitted vehicles like '50%'"
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 < value <= MAX_COUNT:
                return Share.absolute(value)
            if value > MAX_COUNT:
                self.fail(path, f"must be at most {MAX_COUNT} vehicles, got {value}")
        elif isinstance(value, str):
            ppm = parse_percent(value)
            if ppm is not None and ppm > 0:
                return Share.percent(ppm)
        self.fail(path, f"{problem}, got {show(value)}")

    def ratio(self, value: Any, path: str) -> Ratio:
        problem = "must be a percentage like '5%' or a fraction between 0 and 1"
        if isinstance(value, str):
            ppm = parse_percent(value)
            if ppm is not None:
                return Ratio(ppm)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            ppm = parse_fraction(value)
            if ppm is not None:
                return Ratio(ppm)
            if isinstance(value, int | float) and math.isfinite(value) and 1 < value <= 100:
                self.fail(path, f"{problem}, got {show(value)} (did you mean '{value:g}%'?)")
        self.fail(path, f"{problem}, got {show(value)}")

    def duration(self, value: Any, path: str) -> timedelta:
        problem = "must be a duration like '2h' (units w, d, h, m, s, e.g. '1d12h', '90m')"
        parsed: timedelta | None = None
        if isinstance(value, str):
            parsed = parse_duration(value)
        elif isinstance(value, int) and not isinstance(value, bool) and value == 0:
            parsed = timedelta(0)
        if parsed is None:
            self.fail(path, f"{problem}, got {show(value)}")
        if parsed > MAX_DURATION:
            self.fail(path, f"must be at most 366d, got {show(value)}")
        return parsed

    def positive_duration(self, value: Any, path: str) -> timedelta:
        parsed = self.duration(value, path)
        if not parsed:
            self.fail(path, f"must be longer than zero, got {show(value)}")
        return parsed

    def action(self, value: Any, path: str) -> Action:
        for action in ACTIONS:
            if value == action:
                return action
        self.fail(path, f"must be 'pause' or 'abort', got {show(value)}")

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {show(value)}")
        return value

    def name(self, value: Any, path: str) -> str:
        return self.text(value, path, MAX_NAME)

    def description(self, value: Any, path: str) -> str:
        return self.text(value, path, MAX_DESCRIPTION)

    def text(self, value: Any, path: str, limit: int) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"must be non-empty text, got {show(value)}")
        if len(value) > limit:
            self.fail(path, f"must be at most {limit} characters, got {len(value)}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            self.fail(path, "must be one line of text without control characters")
        return value

    # -------------------------------------------------------------------------- judgement

    def judgement(self, value: Any, path: str) -> Judgement:
        raw = self.fields(value, path, JUDGE_FIELDS, "the sequential test's settings")
        default = Judgement()
        names: list[Any] = self.optional(
            raw, path, "cohorts", lambda v, p: self.items(v, p, "names", MAX_COHORTS), []
        )
        cohorts = tuple(
            self.cohort(item, f"{_child(path, 'cohorts')}[{i}]") for i, item in enumerate(names)
        )
        if len(set(cohorts)) != len(cohorts):
            self.fail(_child(path, "cohorts"), "names a dimension twice")
        p0 = self.optional(
            raw, path, "acceptable_failure_rate", self.ratio, default.acceptable_failure_rate
        )
        p1 = self.optional(
            raw, path, "detect_failure_rate", self.ratio, default.detect_failure_rate
        )
        alpha = self.optional(raw, path, "false_halt_rate", self.ratio, default.false_halt_rate)
        if not 0 < p0.ppm < p1.ppm:
            self.fail(
                _child(path, "detect_failure_rate"),
                f"must be above acceptable_failure_rate ({p0}) and that above 0%, got {p1}",
            )
        if not 0 < alpha.ppm <= PPM // 2:
            self.fail(
                _child(path, "false_halt_rate"), f"must be above 0% and at most 50%, got {alpha}"
            )
        return Judgement(cohorts, p0, p1, alpha)

    def cohort(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not _COHORT.fullmatch(value):
            self.fail(
                path,
                "must be a dimension name (model, region, installed_version or a vehicle "
                f"attribute: lower-case letters, digits, '_', '.', '-'), got {show(value)}",
            )
        return value

    # -------------------------------------------------------------------------- windows

    def window(self, value: Any, path: str) -> MaintenanceWindow:
        raw = self.fields(value, path, WINDOW_FIELDS, "a window with 'start' and 'end'")
        days = self.optional(raw, path, "days", self.days, tuple(range(7)))
        for key in ("start", "end"):
            if key not in raw:
                self.fail(
                    _child(path, key), "missing; a window needs a start and an end like '22:00'"
                )
        start = self.clock(raw["start"], _child(path, "start"), allow_midnight_end=False)
        end = self.clock(raw["end"], _child(path, "end"), allow_midnight_end=True)
        if start == end % MINUTES_PER_DAY and end != MINUTES_PER_DAY:
            self.fail(
                path,
                f"start and end are both {show(raw['start'])}; a window needs a length "
                "(start '00:00' and end '24:00' is the whole day)",
            )
        return MaintenanceWindow(days=days, start=start, end=end)

    def days(self, value: Any, path: str) -> tuple[int, ...]:
        items = self.items(
            value,
            path,
            "days like [mon, tue]",
            7,
            "must not be empty (leave days out for every day)",
        )
        seen: set[int] = set()
        for i, item in enumerate(items):
            day = item.strip().lower() if isinstance(item, str) else ""
            if day not in DAYS:
                self.fail(_child(path, i), f"must be one of {', '.join(DAYS)}, got {show(item)}")
            number = DAYS.index(day)
            if number in seen:
                self.fail(_child(path, i), f"{day!r} is listed twice")
            seen.add(number)
        return tuple(sorted(seen))

    def clock(self, value: Any, path: str, *, allow_midnight_end: bool) -> int:
        highest = "24:00" if allow_midnight_end else "23:59"
        problem = f"must be a time of day like '22:00' (00:00 to {highest})"
        if isinstance(value, int) and not isinstance(value, bool):
            self.fail(
                path,
                f"{problem} in quotes, got {show(value)} (YAML 1.1 reads an unquoted "
                f"{value // 60}:{value % 60:02d} as the number {value})",
            )
        match = _CLOCK.match(value.strip()) if isinstance(value, str) else None
        if match is not None:
            hours, minutes = int(match.group(1)), int(match.group(2))
            total = hours * 60 + minutes
            if minutes < 60 and (
                total < MINUTES_PER_DAY or (allow_midnight_end and total == MINUTES_PER_DAY)
            ):
                return total
        self.fail(path, f"{problem}, got {show(value)}")

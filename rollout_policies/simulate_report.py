"""The text report of ``overdrive simulate``: assumptions, stage timeline and figures.

A multi-ECU fleet (``--fleet-file``) adds a table per hardware id (vehicles updated, rolled back,
and the rollbacks its ECUs caused, which the campaign judges against it) before the other groups.

Pure formatting (a :class:`~overdrive.rollout_policies.simulate.SimulationResult` in, lines of text out), so
the report can be tested and reused without a terminal. Times are simulated time since the
campaign started (``1d16h40m``); counts carry thousands separators.
"""

from __future__ import annotations

from collections.abc import Sequence

from overdrive.rollout_policies.groups import HARDWARE_ID
from overdrive.rollout_policies.simulate import (
    GroupExposure,
    SimulationConfig,
    SimulationResult,
    Spread,
)
from overdrive.rollout_policies.simulate import format_seconds as seconds
from overdrive.rollout_policies.units import format_duration

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def render(result: SimulationResult, source: str) -> str:
    """The whole report; ``source`` names where the policy came from (``preset 'canary'``)."""
    config = result.config
    lines = [*assumptions(config, source), "", *timeline(result), "", *figures(result)]
    if config.multi_ecu:
        lines += ["", *hardware(result)]
        others = [g for g in result.groups if g.dimension != HARDWARE_ID]
        if others:
            lines += ["", *groups(result, others)]
    elif len(result.groups) > 1:
        lines += ["", *groups(result)]
    return "\n".join(lines)


def hardware(result: SimulationResult) -> list[str]:
    """Per hardware id of a multi-ECU fleet: its vehicles (those with an ECU of it), how many
    were updated and rolled back, and how many of the rollbacks its ECUs caused."""
    rows = [
        (
            "HARDWARE ID",
            "VEHICLES",
            "ADMITTED",
            "STARTED",
            "UPDATED",
            "ROLLED BACK",
            "ROLLBACKS CAUSED",
            "EXPOSED",
            "JUDGED",
        )
    ]
    exposure = {g.value: g for g in result.groups if g.dimension == HARDWARE_ID}
    for hw, c in result.hardware.items():
        rows.append(
            (
                hw,
                f"{c.vehicles:,}",
                f"{c.admitted:,}",
                f"{c.started:,}",
                f"{c.succeeded:,}",
                f"{c.rolled_back:,}",
                f"{c.rollbacks_caused:,}",
                f"{exposure[hw].exposed:,}",
                "yes" if exposure[hw].judged else "no",
            )
        )
    return table(rows)


def groups(result: SimulationResult, shown: Sequence[GroupExposure] | None = None) -> list[str]:
    """Per hardware id and cohort value (or the ``shown`` ones): who got the release, who was
    harmed, and whether the policy's sequential test judged the group."""
    rows = [("GROUP", "VEHICLES", "ADMITTED", "STARTED", "ROLLED BACK", "EXPOSED", "JUDGED")]
    for g in result.groups if shown is None else shown:
        rows.append(
            (
                g.value if g.dimension == "hardware_id" else f"{g.dimension}={g.value}",
                f"{g.vehicles:,}",
                f"{g.admitted:,}",
                f"{g.started:,}",
                f"{g.rolled_back:,}",
                f"{g.exposed:,}",
                "yes" if g.judged else "no",
            )
        )
    return table(rows)


def assumptions(config: SimulationConfig, source: str) -> list[str]:
    """What was simulated: the policy, the fleet and every modelling assumption in force."""
    policy = config.policy
    deadline = f"; deadline {format_duration(policy.deadline)}" if policy.deadline else ""
    if config.multi_ecu:
        kinds = "; ".join(
            f"{m.name} {_share(float(m.share))}: {' + '.join(m.hardware_ids)}"
            for m in config.models
        )
        fleet = f"in {len(config.models)} models ({kinds}"
    else:
        fleet = "(" + ", ".join(f"{hw} {_share(float(share))}" for hw, share in config.fleet)
    for name, values in config.cohorts:
        fleet += "; " + ", ".join(f"{name} {v} {_share(float(share))}" for v, share in values)
    sets = ", one software set per vehicle (all or nothing)" if config.multi_ecu else ""
    lines = [
        f"policy: {source}: {policy.summary()}{deadline}",
        f"fleet: {config.vehicles:,} vehicles {fleet}), one campaign over all of them{sets}",
        f"release: {_release_set(config) if config.multi_ecu else _release(config)}",
        f"vehicles: poll every {seconds(config.poll_interval)} (random phase), "
        f"install in {_spread(config.install_time)}, {_offline(config)}",
        f"bundles: full {size(config.full_size)}, delta {size(config.delta_size)}, "
        f"{_share(config.delta_share)} of vehicles get a delta",
        f"evaluator: every {seconds(config.tick)}; manual approval: {_approval(config)}",
    ]
    if policy.maintenance_windows:
        lines.append(
            f"maintenance windows: {len(policy.maintenance_windows)}, in the vehicles' local "
            "time (the simulation's clock)"
        )
    lines.append(
        f"start: {config.start:%a %Y-%m-%d %H:%M} (vehicles' local time); seed {config.seed}"
    )
    return lines


def timeline(result: SimulationResult) -> list[str]:
    """One row per stage the campaign entered."""
    rows = [("STAGE", "STARTED", "ADMITTED", "TARGET", "ENDED", "BY", "FINISHED", "FAILURES")]
    for stage in result.stages:
        ended = stage.ended_at is not None
        rows.append(
            (
                stage.name,
                seconds(stage.started_at),
                f"{stage.admitted:,}",
                f"{stage.target:,}",
                seconds(stage.ended_at) if stage.ended_at is not None else "-",
                stage.ended_by or "(running)",
                f"{stage.finished:,}" if ended else "-",
                f"{stage.failures:,}" if ended else "-",
            )
        )
    return table(rows)


def figures(result: SimulationResult) -> list[str]:
    """The outcome and the figures an operator asks about."""
    n = result.eligible
    lines = [f"outcome: {_outcome(result)}"]
    lines.append(f"  reason: {result.reason}")
    bad = list(result.config.fail_on) if result.config.fail_rate else []
    committed_bad = result.exposed - result.rolled_back  # harmed without a rollback
    detail = f"{result.rolled_back:,} rolled back"
    if bad:
        detail += f" + {committed_bad:,} committed it on {', '.join(bad)}"
    lines.append(
        f"exposed (blast radius): {result.exposed:,} = {_percent(result.exposed, n)} of the fleet ({detail})"
    )
    if result.halted_at is not None:
        lines.append(
            f"  at the halt: {result.in_flight_at_halt:,} vehicles were installing (they finished "
            f"and are counted in these figures); {result.never_started:,} admitted vehicles had "
            "not picked up the assignment (they never will)"
        )
    lines.append(
        f"succeeded: {result.succeeded:,}; rolled back: {result.rolled_back:,}; "
        f"admitted: {result.admitted:,} of {n:,}"
    )
    lines.append(f"first rollback reported at: {_maybe(result.first_failure_at)}")
    lines.append(f"halted at: {_maybe(result.halted_at)}")
    lines.append(f"completed at: {_maybe(result.completed_at)}")
    lines.append(
        f"bytes shipped: {size(result.bytes_shipped)} ({result.bytes_shipped:,} bytes: "
        f"{result.full_downloads:,} full, {result.delta_downloads:,} delta)"
    )
    lines.append(f"simulation ended at: {seconds(result.ended_at)}")
    return lines


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def size(value: int) -> str:
    """Bytes in binary units: ``200 MiB``, ``55.0 GiB``."""
    amount = float(value)
    for unit in _BINARY_UNITS:
        if amount < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{amount:.0f} {unit}" if amount == int(amount) else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def _outcome(result: SimulationResult) -> str:
    stage = result.config.policy.stages[result.stage_index].name
    if result.outcome == "completed":
        return f"COMPLETED after {_maybe(result.completed_at)}"
    if result.outcome == "running":
        return f"STILL RUNNING at stage {stage!r} when the simulation stopped at {seconds(result.ended_at)}"
    return f"{result.outcome.upper()} at {_maybe(result.halted_at)} in stage {stage!r}"


def _release(config: SimulationConfig) -> str:
    if config.fail_rate == 0:
        return "good (no vehicle fails)"
    where = ", ".join(config.fail_on) if config.fail_on else "every hardware id"
    rest = "; succeeds elsewhere" if config.fail_on else ""
    return f"fails (rolls back) with probability {_share(config.fail_rate)} on {where}{rest}"


def _release_set(config: SimulationConfig) -> str:
    """Where the ECUs of a multi-ECU fleet fail: the fleet file's rates, then ``--fail-rate``."""
    models: dict[tuple[str, float], list[str]] = {}
    for model in config.models:
        for ecu in model.ecus:
            if ecu.fail_rate:
                models.setdefault((ecu.hardware_id, ecu.fail_rate), []).append(model.name)
    parts = [
        f"{_share(rate)} on {hw} in {', '.join(names)}" for (hw, rate), names in models.items()
    ]
    if config.fail_rate:
        where = ", ".join(config.fail_on) if config.fail_on else "every ECU"
        parts.append(f"{_share(config.fail_rate)} on {where}")
    if not parts:
        return "good (no ECU fails)"
    return (
        f"an ECU fails with probability {'; '.join(parts)}, rolling back every ECU of its "
        "vehicle; succeeds elsewhere"
    )


def _offline(config: SimulationConfig) -> str:
    if config.offline_rate == 0:
        return "none offline"
    back = (
        "never come back"
        if config.offline_for is None
        else f"come back after {_spread(config.offline_for)}"
    )
    return f"{_share(config.offline_rate)} offline at the start ({back})"


def _approval(config: SimulationConfig) -> str:
    gated = [stage.name for stage in config.policy.stages if stage.manual_approval]
    if not gated:
        return "none in this policy"
    names = ", ".join(repr(name) for name in gated)
    after = config.auto_approve_after
    if after is None:
        return f"{names} never approved (--auto-approve-after never)"
    if after == 0:
        return f"{names} approved as soon as each starts (default; see --auto-approve-after)"
    return f"{names} approved {seconds(after)} after each starts"


def _spread(value: Spread) -> str:
    if not value.spread:
        return seconds(value.mean)
    return f"{seconds(value.mean)}±{seconds(value.spread)} (uniform)"


def _share(value: float) -> str:
    return f"{value * 100:.4g}%"


def _percent(part: int, whole: int) -> str:
    return f"{part * 100 / whole:.3g}%" if whole else "n/a"


def _maybe(value: float | None) -> str:
    return "-" if value is None else seconds(value)

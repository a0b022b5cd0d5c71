"""``overdrive policy list|validate|show``: look at presets and check policy files.

Errors are :class:`~overdrive.rollout_policies.errors.PolicyError` s, which the root command prints as one
``error: …`` line with exit code 1.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from overdrive.maintenance import DAYS
from overdrive.rollout_policies.cohort import admission_target
from overdrive.rollout_policies.documents import POLICY_SUFFIXES, load_policy
from overdrive.rollout_policies.errors import PolicyFileError, UnknownPreset
from overdrive.rollout_policies.model import Policy, Stage
from overdrive.rollout_policies.presets import PRESETS, all_presets, preset
from overdrive.rollout_policies.units import format_duration


@click.group()
def policy() -> None:
    """List, validate and show rollout policies."""


@policy.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_presets(as_json: bool) -> None:
    """List the shipped presets (use one with 'overdrive campaign create --policy NAME')."""
    presets = all_presets()
    if as_json:
        rows = [
            {
                "name": name,
                "description": p.description,
                "stages": [stage.share.to_json() for stage in p.stages],
                "deadline": format_duration(p.deadline) if p.deadline else None,
            }
            for name, p in presets.items()
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("NAME", "STAGES", "DEADLINE", "DESCRIPTION")]
    for name, p in presets.items():
        shares = " → ".join(str(stage.share) for stage in p.stages)
        deadline = format_duration(p.deadline) if p.deadline else "-"
        table.append((name, shares, deadline, p.description or ""))
    _echo_table(table)


@policy.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def validate(file: Path) -> None:
    """Check a policy FILE (YAML or JSON); print a summary, or the first problem and exit 1."""
    loaded = load_policy(file)
    named = f" {loaded.name!r}" if loaded.name else ""
    click.echo(f"{file}: valid policy{named}: {_overview(loaded)}")


@policy.command()
@click.argument("name_or_file")
@click.option("--json", "as_json", is_flag=True, help="Print the normalised policy document.")
@click.option(
    "--yaml",
    "as_yaml",
    is_flag=True,
    help="Print the normalised policy document as YAML: a file to edit and 'policy validate'.",
)
@click.option(
    "--fleet",
    type=click.IntRange(min=0),
    metavar="N",
    help="Add a column with how many of N eligible vehicles each stage admits.",
)
def show(name_or_file: str, as_json: bool, as_yaml: bool, fleet: int | None) -> None:
    """Show a preset (by NAME) or a policy FILE as a table of its stages.

    'overdrive policy show canary --yaml > mine.yaml' starts a policy of your own from a preset.
    """
    if as_json and as_yaml:
        raise click.UsageError("--json and --yaml exclude each other")
    if (as_json or as_yaml) and fleet is not None:
        flag = "--json" if as_json else "--yaml"
        raise click.UsageError(f"--fleet adds a table column; it cannot be combined with {flag}")
    source, loaded = resolve(name_or_file)
    if as_json:
        click.echo(json.dumps(loaded.to_dict(), indent=2, ensure_ascii=False))
        return
    if as_yaml:
        click.echo(policy_yaml(loaded, source), nl=False)
        return
    title = loaded.name or Path(name_or_file).stem
    click.echo(f"{title}: {loaded.description}" if loaded.description else title)
    click.echo(f"source: {source}")
    click.echo(_overview(loaded))
    click.echo(f"maintenance windows: {_windows(loaded)}")
    click.echo(f"judged: {_judgement(loaded)}")
    click.echo("")
    header = ["#", "STAGE", "SHARE", "SOAK", "MIN FINISHED", "SUCCESS ≥", "FAILURE ≤"]
    header += ["ON BREACH", "APPROVAL"]
    if fleet is not None:
        header.append(f"VEHICLES OF {fleet}")
    table = [tuple(header)]
    for i, stage in enumerate(loaded.stages):
        table.append(_stage_row(i, stage, fleet))
    _echo_table(table)


def policy_yaml(loaded: Policy, source: str) -> str:
    """The normalised policy document as YAML (fields in document order, a comment naming its
    source), which ``policy validate`` and ``campaign create --policy`` read back as it is."""
    try:
        yaml: Any = importlib.import_module("yaml")
    except ImportError as e:
        raise PolicyFileError(
            "--yaml needs PyYAML, which is not installed (pip install 'overdrive[server]'); "
            "--json prints the same document as JSON"
        ) from e
    body = yaml.safe_dump(
        loaded.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )
    return f"# from {source}; check your edits with 'overdrive policy validate FILE'\n{body}"


def resolve(name_or_file: str) -> tuple[str, Policy]:
    """A preset name or a policy file path → (where it came from, the policy).

    An argument with a policy suffix (``.yaml``, ``.yml``, ``.json``) or a path separator is a
    file; otherwise a preset name wins over a file of the same name in the current directory.
    """
    looks_like_file = Path(name_or_file).suffix.lower() in POLICY_SUFFIXES or any(
        sep in name_or_file for sep in (os.sep, "/")
    )
    if not looks_like_file and name_or_file in PRESETS:
        return f"preset {name_or_file!r}", preset(name_or_file)
    if looks_like_file or Path(name_or_file).is_file():
        return f"file {name_or_file}", load_policy(name_or_file)
    close = difflib.get_close_matches(name_or_file, PRESETS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownPreset(
        f"{name_or_file!r} is neither a preset ({', '.join(PRESETS)}) nor a policy file{hint}"
    )


def _overview(p: Policy) -> str:
    parts = [p.summary()]
    if p.deadline is not None:
        parts.append(f"deadline {format_duration(p.deadline)} after start, then {p.on_deadline}")
    if p.maintenance_windows:
        count = len(p.maintenance_windows)
        parts.append(f"{count} maintenance window{'s' if count > 1 else ''}")
    if p.allow_partial and not p.full_coverage:
        parts.append(f"partial: ends at {p.stages[-1].cumulative} of the eligible fleet")
    return "; ".join(parts)


def _judgement(policy: Policy) -> str:
    j = policy.judge
    dimensions = ", ".join(d.replace("_", " ") for d in j.dimensions)
    return (
        f"overall, per {dimensions}; halts when a group's failures are clearly above "
        f"{j.acceptable_failure_rate} (sequential test: caught fast at {j.detect_failure_rate}, "
        f"false-halt rate {j.false_halt_rate})"
    )


def _windows(p: Policy) -> str:
    if not p.maintenance_windows:
        return "none (vehicles install whenever assigned)"
    texts = []
    for window in p.maintenance_windows:
        data = window.to_dict()
        days = "every day" if len(window.days) == len(DAYS) else ",".join(data["days"])
        texts.append(f"{days} {data['start']}–{data['end']}")
    return "; ".join(texts) + " (vehicle local time)"


def _stage_row(index: int, stage: Stage, fleet: int | None) -> tuple[str, ...]:
    row = [
        str(index + 1),
        stage.name,
        str(stage.share),
        format_duration(stage.soak) if stage.soak else "-",
        str(stage.min_finished) + ("" if stage.min_finished.count else " of admitted"),
        str(stage.success_threshold),
        str(stage.max_failure_rate),
        stage.on_breach,
        "required" if stage.manual_approval else "-",
    ]
    if fleet is not None:
        row.append(str(admission_target(stage, fleet)))
    return tuple(row)


def _echo_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        click.echo("  ".join(cells).rstrip())

"""The program output quoted in ``docs/simulate.md`` is the program's: every ``$ overdrive
simulate …`` block is run, and its quoted lines must appear in the output, in order (a line
``...`` stands for lines left out). A YAML or JSON block whose first line is ``# NAME.yaml``
(or ``.json``) is a file the commands use: each command runs in a directory holding them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click.testing
import pytest

from overdrive.rollout_policies.simulate_cli import simulate

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulate.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
FILE_BLOCK = re.compile(r"```(?:yaml|json)\n# ([\w.-]+\.(?:yaml|json))\n(.*?)```", re.S)


def examples() -> list[tuple[str, list[str]]]:
    """(command, quoted output lines) for every single-command console block with output."""
    found = []
    for block in BLOCK.findall(DOC.read_text("utf-8")):
        lines = block.rstrip("\n").split("\n")
        commands = [i for i, line in enumerate(lines) if line.startswith("$ ")]
        if len(commands) != 1 or commands[0] != 0 or len(lines) == 1:
            continue
        found.append((lines[0][2:], lines[1:]))
    return found


def files() -> dict[str, str]:
    """The files the doc shows (name → content; a JSON file's name line is not part of it)."""
    found = {}
    for name, body in FILE_BLOCK.findall(DOC.read_text("utf-8")):
        found[name] = body if name.endswith(".json") else f"# {name}\n{body}"
    return found


def test_the_doc_has_examples() -> None:
    assert len(examples()) >= 4
    assert "fleet.yaml" in files()


@pytest.mark.parametrize(("command", "quoted"), examples(), ids=lambda v: str(v)[:60])
def test_quoted_output_is_what_the_program_prints(
    command: str, quoted: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, content in files().items():
        (tmp_path / name).write_text(content, "utf-8")
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)
    assert argv[:2] == ["overdrive", "simulate"]
    result = click.testing.CliRunner().invoke(simulate, argv[2:], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    actual = result.output.rstrip("\n").split("\n")
    position = 0
    for line in quoted:
        if line == "...":
            continue
        assert line in actual[position:], f"not printed (in this order): {line!r}"
        position = actual.index(line, position) + 1

"""Shared fixtures: run the ``overdrive`` CLI in-process, key directories, small images."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click.testing
import pytest
from hypothesis import HealthCheck, settings

from overdrive.cli import main

pytest_plugins = ["tests.s3server", "tests.repo_fixtures", "tests.live_server"]


def reproducible(max_examples: int, **overrides: Any) -> settings:
    """The project's hypothesis settings for property tests: derandomised (the same examples on
    every run, so CI never flakes on a new one), no example database, no deadline."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
        **overrides,
    )


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


Cli = Callable[..., Result]


def run_cli(
    *args: str | os.PathLike[str], input: str | None = None, env: dict[str, str] | None = None
) -> Result:
    """Run ``overdrive ARGS`` in this process, exactly as the console script does."""
    runner = click.testing.CliRunner()
    with runner.isolation(input=input, env=env) as (out, err, _mixed):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return Result(code, out.getvalue().decode(), err.getvalue().decode())


@pytest.fixture
def cli() -> Cli:
    return run_cli


def make_image(path: Path, size: int, seed: int = 0) -> Path:
    """A compressible, image-like file: repeated records with some random bytes."""
    rng = random.Random(seed)
    parts = []
    total = 0
    while total < size:
        block = bytes(rng.getrandbits(8) for _ in range(64)) + b"overdrive-record " * rng.randint(
            1, 40
        )
        parts.append(block)
        total += len(block)
    path.write_bytes(b"".join(parts)[:size])
    return path


def mutate(src: Path, dst: Path, seed: int = 1, edits: int = 8) -> Path:
    """A "next version" of an image: a few local edits, as a patch release would make."""
    rng = random.Random(seed)
    data = bytearray(src.read_bytes())
    for _ in range(edits):
        at = rng.randrange(max(1, len(data)))
        data[at : at + 16] = bytes(rng.getrandbits(8) for _ in range(16))
    dst.write_bytes(bytes(data))
    return dst


@dataclass
class Workspace:
    """A key directory with one key per role and an (uninitialised) local repository."""

    root: Path
    keys: Path
    storage: Path

    @property
    def repo_args(self) -> list[str]:
        return ["--storage", str(self.storage), "--keys", str(self.keys)]


def generate_keys(cli: Cli, keys: Path, *names: str) -> None:
    for name in names:
        result = cli("keys", "generate", name, "--dir", keys, "--insecure-no-passphrase")
        assert result.code == 0, result.stderr


@pytest.fixture
def workspace(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    monkeypatch.setenv("OVERDRIVE_CACHE_DIR", str(tmp_path / "cache"))
    keys = tmp_path / "keys"
    generate_keys(cli, keys, "root", "targets", "snapshot", "timestamp")
    return Workspace(tmp_path, keys, tmp_path / "repo")


@pytest.fixture
def repo(workspace: Workspace, cli: Cli) -> Workspace:
    """``workspace`` with an initialised repository."""
    result = cli("repo", "init", *workspace.repo_args)
    assert result.code == 0, result.stderr
    return workspace


@pytest.fixture
def summary(record_property: Callable[[str, object], None]) -> Callable[[str], None]:
    """Add a line to the test run's closing summary (works under pytest-xdist too)."""
    return lambda line: record_property("summary", line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    lines = [
        value
        for report in terminalreporter.stats.get("passed", [])
        for name, value in getattr(report, "user_properties", [])
        if name == "summary"
    ]
    if lines:
        terminalreporter.write_sep("-", "summary")
        for line in sorted(lines):
            terminalreporter.write_line(line)

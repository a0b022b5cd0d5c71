"""``overdrive bundle create|inspect|apply`` through the real root CLI (error handling included)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click.testing
import pytest

from overdrive.bundle.cli import format_size, parse_size
from overdrive.cli import main

from .conftest import binary_like, evolve


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def run(*args: str | os.PathLike[str]) -> Run:
    """``overdrive ARGS`` in-process, exactly as the console script runs it."""
    runner = click.testing.CliRunner()
    with runner.isolation() as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        return Run(code, out.getvalue().decode(), err.getvalue().decode())


def assert_one_error_line(r: Run, *fragments: str) -> None:
    assert r.code == 1, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def images(tmp_path: Path, rng: random.Random) -> tuple[Path, Path, bytes]:
    old = binary_like(rng, 50_000)
    new = evolve(rng, old)
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(new)
    return tmp_path / "old.img", tmp_path / "new.img", new


def create(
    tmp_path: Path, images: tuple[Path, Path, bytes], *extra: str, delta: bool = True
) -> Run:
    old, new, _ = images
    args: list[str | Path] = ["bundle", "create", "--image", new, "--hardware-id", "ecu-a"]
    args += ["--version", "2.0"]
    if delta:
        args += ["--source", old, "--source-version", "1.0"]
    return run(
        *args,
        "--chunk-size",
        "8KiB",
        "--level",
        "3",
        "--jobs",
        "1",
        "-o",
        tmp_path / "b.ovdb",
        *extra,
    )


def test_create_inspect_apply_delta(tmp_path: Path, images: tuple[Path, Path, bytes]) -> None:
    old, _, new = images
    r = create(tmp_path, images)
    assert r.code == 0, r.stderr
    assert r.stdout.startswith("delta bundle ") and "1.0 -> 2.0" in r.stdout
    assert len(r.stdout.strip().splitlines()) == 1

    r = run("bundle", "inspect", tmp_path / "b.ovdb")
    assert r.code == 0, r.stderr
    assert "kind         delta" in r.stdout and "hardware id  ecu-a" in r.stdout
    assert "total" in r.stdout

    r = run("bundle", "inspect", tmp_path / "b.ovdb", "--json")
    assert r.code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["kind"] == "delta" and info["chunk_count"] == len(info["manifest"]["chunks"])
    assert info["file_length"] == (tmp_path / "b.ovdb").stat().st_size
    assert sum(o["count"] for o in info["ops"].values()) == info["chunk_count"]
    assert sum(o["result_bytes"] for o in info["ops"].values()) == len(new)

    r = run(
        "bundle",
        "apply",
        tmp_path / "b.ovdb",
        "--target",
        tmp_path / "out",
        "--source",
        old,
        "--progress-file",
        tmp_path / "p.json",
    )
    assert r.code == 0, r.stderr
    assert (tmp_path / "out").read_bytes() == new
    assert info["image"]["sha256"] in r.stdout


def test_create_full_quiet(tmp_path: Path, images: tuple[Path, Path, bytes]) -> None:
    r = create(tmp_path, images, "--quiet", delta=False)
    assert r.code == 0 and r.stdout == "", r
    r = run("bundle", "apply", tmp_path / "b.ovdb", "--target", tmp_path / "out")
    assert r.code == 0, r.stderr
    assert (tmp_path / "out").read_bytes() == images[2]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4MiB", 4 << 20),
        ("512KiB", 512 << 10),
        ("1M", 1 << 20),
        ("1MB", 10**6),
        ("65536", 65536),
        ("1.5k", 1536),
        (" 2 GiB ", 2 << 30),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MiB", "4 XB", "-1", "1.0001k", "4MiBs", "0x10"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(10) == "10 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(4 << 20) == "4.0 MiB"


@pytest.mark.parametrize("size", ["lots", "100", "1GiB", "1.5"])
def test_bad_chunk_size_is_a_usage_error(
    tmp_path: Path, images: tuple[Path, Path, bytes], size: str
) -> None:
    r = create(tmp_path, images, "--chunk-size", size)
    assert r.code == 2
    assert "Invalid value for '--chunk-size'" in r.stderr
    assert "Traceback" not in r.stderr


def test_source_version_required(tmp_path: Path, images: tuple[Path, Path, bytes]) -> None:
    old, new, _ = images
    r = run(
        "bundle",
        "create",
        "--image",
        new,
        "--source",
        old,
        "--hardware-id",
        "h",
        "--version",
        "2",
        "-o",
        tmp_path / "b",
    )
    assert r.code == 2 and "--source-version" in r.stderr


def test_bad_inputs_give_one_error_line(tmp_path: Path, images: tuple[Path, Path, bytes]) -> None:
    old, new, _ = images
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not a bundle")
    assert_one_error_line(run("bundle", "inspect", garbage), "not an Overdrive bundle")
    assert_one_error_line(
        run("bundle", "apply", garbage, "--target", tmp_path / "t"), "not an Overdrive bundle"
    )
    assert_one_error_line(run("bundle", "inspect", tmp_path / "missing"), "cannot read bundle")
    r = run(
        "bundle",
        "create",
        "--image",
        tmp_path / "missing",
        "--hardware-id",
        "h",
        "--version",
        "1",
        "-o",
        tmp_path / "x",
    )
    assert_one_error_line(r, "cannot read image")
    assert create(tmp_path, images).code == 0
    truncated = tmp_path / "truncated"
    truncated.write_bytes((tmp_path / "b.ovdb").read_bytes()[:-5])
    assert_one_error_line(
        run("bundle", "apply", truncated, "--target", tmp_path / "t", "--source", old), "5 missing"
    )
    assert_one_error_line(
        run("bundle", "apply", tmp_path / "b.ovdb", "--target", tmp_path / "t"), "no source image"
    )
    assert_one_error_line(
        run("bundle", "apply", tmp_path / "b.ovdb", "--target", tmp_path / "t", "--source", new),
        "the delta needs 1.0",
    )
    assert not (tmp_path / "t").exists()


def test_console_script(tmp_path: Path, images: tuple[Path, Path, bytes]) -> None:
    """The installed ``overdrive`` entry point end to end, in a subprocess."""
    exe = Path(sys.executable).parent / "overdrive"
    if not exe.exists():
        pytest.skip("overdrive console script not installed")
    old, new, data = images
    out = tmp_path / "b.ovdb"
    subprocess.run(
        [
            exe,
            "bundle",
            "create",
            "--image",
            new,
            "--source",
            old,
            "--hardware-id",
            "hw",
            "--version",
            "2",
            "--source-version",
            "1",
            "--chunk-size",
            "16KiB",
            "--level",
            "3",
            "--jobs",
            "2",
            "-o",
            out,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    subprocess.run(
        [exe, "bundle", "apply", out, "--target", tmp_path / "t", "--source", old],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (tmp_path / "t").read_bytes() == data
    bad = subprocess.run(
        [exe, "bundle", "apply", old, "--target", tmp_path / "t2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")


def test_invalid_size_is_a_one_line_overdrive_error() -> None:
    from overdrive.bundle.cli import InvalidSize
    from overdrive.errors import OverdriveError

    with pytest.raises(InvalidSize) as info:
        parse_size("lots")
    assert isinstance(info.value, ValueError) and isinstance(info.value, OverdriveError)

"""Resumable apply: a crash at any chunk, then a rerun, gives a byte-identical image."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from overdrive.bundle import apply_bundle, decoder

from .conftest import Roundtrip, binary_like, evolve, roundtrip


class PowerCut(BaseException):
    """Stands in for a power cut: nothing after it runs, no cleanup catches it."""


@pytest.fixture
def delta(tmp_path: Path, rng: random.Random) -> tuple[Roundtrip, Path, bytes]:
    old = binary_like(rng, 60_000)
    new = evolve(rng, old)
    rt = roundtrip(tmp_path, new, old, name="d")
    assert len(rt.manifest.chunks) >= 12
    return rt, tmp_path / "d.old.img", new


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    decoded: list[int] = []
    real = decoder._decode_chunk

    def spy(i: int, *args: Any) -> bytes:
        decoded.append(i)
        return real(i, *args)

    monkeypatch.setattr(decoder, "_decode_chunk", spy)
    return decoded


def crash_after_saves(monkeypatch: pytest.MonkeyPatch, saves: int) -> None:
    """Let ``saves`` progress records through, then cut power at the next one (before it lands)."""
    real = decoder._save_progress
    seen = 0

    def hook(path: Path, record: dict[str, Any]) -> None:
        nonlocal seen
        if seen == saves:
            raise PowerCut
        seen += 1
        real(path, record)

    monkeypatch.setattr(decoder, "_save_progress", hook)


@pytest.mark.parametrize("crash_at", [0, 1, 5, -1])
def test_crash_and_resume(
    tmp_path: Path, delta: tuple[Roundtrip, Path, bytes], crash_at: int
) -> None:
    rt, source, new = delta
    n = len(rt.manifest.chunks)
    crash_at = crash_at % n
    target, progress = tmp_path / "slot", tmp_path / "progress.json"
    with pytest.MonkeyPatch.context() as mp:
        crash_after_saves(mp, crash_at)
        with pytest.raises(PowerCut):
            apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    if crash_at:
        assert json.loads(progress.read_text())["next_chunk"] == crash_at
    with pytest.MonkeyPatch.context() as mp:
        decoded = count_decodes(mp)
        apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    assert decoded == list(range(crash_at, n))
    assert target.read_bytes() == new


def test_random_crash_points(tmp_path: Path, delta: tuple[Roundtrip, Path, bytes]) -> None:
    rt, source, new = delta
    n = len(rt.manifest.chunks)
    rng = random.Random(42)
    target, progress = tmp_path / "slot", tmp_path / "progress.json"
    target.write_bytes(rng.randbytes(len(new) + 999))  # a slot full of old garbage
    done = 0
    for _ in range(4):  # several consecutive power cuts, each a little further on
        crash_at = rng.randrange(0, max(1, (n - done) // 2))
        with pytest.MonkeyPatch.context() as mp:
            crash_after_saves(mp, crash_at)
            with pytest.raises(PowerCut):
                apply_bundle(rt.bundle, target, source=source, progress_file=progress)
        done += crash_at
    apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    assert target.read_bytes() == new


def test_resume_reverifies_prefix(
    tmp_path: Path, delta: tuple[Roundtrip, Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If an already-written chunk was damaged since, resume restarts from that chunk."""
    rt, source, new = delta
    target, progress = tmp_path / "slot", tmp_path / "progress.json"
    with pytest.MonkeyPatch.context() as mp:
        crash_after_saves(mp, 6)
        with pytest.raises(PowerCut):
            apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    data = bytearray(target.read_bytes())
    damaged = rt.manifest.chunks[2]
    data[damaged.result_offset + 7] ^= 0xFF
    target.write_bytes(bytes(data))
    decoded = count_decodes(monkeypatch)
    apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    assert decoded[0] == 2
    assert target.read_bytes() == new


def test_progress_for_other_bundle_is_ignored(
    tmp_path: Path, delta: tuple[Roundtrip, Path, bytes], rng: random.Random
) -> None:
    rt, source, new = delta
    other = roundtrip(tmp_path, binary_like(rng, 70_000), name="other")
    target, progress = tmp_path / "slot", tmp_path / "progress.json"
    with pytest.MonkeyPatch.context() as mp:
        crash_after_saves(mp, 8)
        with pytest.raises(PowerCut):
            apply_bundle(other.bundle, target, progress_file=progress)
    with pytest.MonkeyPatch.context() as mp:
        decoded = count_decodes(mp)
        apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    assert decoded == list(range(len(rt.manifest.chunks)))
    assert target.read_bytes() == new
    record = json.loads(progress.read_text())
    assert record["bundle_manifest_sha256"] == rt.manifest.sha256
    assert record["next_chunk"] == len(rt.manifest.chunks)


def test_progress_for_other_target_is_ignored(
    tmp_path: Path, delta: tuple[Roundtrip, Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, source, new = delta
    progress = tmp_path / "progress.json"
    with pytest.MonkeyPatch.context() as mp:
        crash_after_saves(mp, 4)
        with pytest.raises(PowerCut):
            apply_bundle(rt.bundle, tmp_path / "slot-a", source=source, progress_file=progress)
    decoded = count_decodes(monkeypatch)
    apply_bundle(rt.bundle, tmp_path / "slot-b", source=source, progress_file=progress)
    assert decoded[0] == 0
    assert (tmp_path / "slot-b").read_bytes() == new


@pytest.mark.parametrize(
    "content",
    [b"", b"not json", b"[]", b'{"next_chunk": 3}', b"{" * 10000],
)
def test_garbage_progress_file_is_ignored(
    tmp_path: Path, delta: tuple[Roundtrip, Path, bytes], content: bytes
) -> None:
    rt, source, new = delta
    progress = tmp_path / "progress.json"
    progress.write_bytes(content)
    apply_bundle(rt.bundle, tmp_path / "slot", source=source, progress_file=progress)
    assert (tmp_path / "slot").read_bytes() == new


def test_out_of_range_progress_is_ignored(
    tmp_path: Path, delta: tuple[Roundtrip, Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, source, new = delta
    target, progress = tmp_path / "slot", tmp_path / "progress.json"
    apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    record = json.loads(progress.read_text())
    for bad in (-1, len(rt.manifest.chunks) + 1, True, "3"):
        progress.write_text(json.dumps({**record, "next_chunk": bad}))
        apply_bundle(rt.bundle, target, source=source, progress_file=progress)
        assert target.read_bytes() == new


def test_rerun_after_completion_decodes_nothing(
    tmp_path: Path, delta: tuple[Roundtrip, Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, source, new = delta
    target, progress = tmp_path / "slot", tmp_path / "progress.json"
    apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    decoded = count_decodes(monkeypatch)
    apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    assert decoded == []
    assert target.read_bytes() == new


def test_killed_process_resumes(tmp_path: Path, delta: tuple[Roundtrip, Path, bytes]) -> None:
    """A real process dies abruptly (os._exit, no cleanup, unflushed state lost) mid-apply."""
    rt, source, new = delta
    target, progress = tmp_path / "slot", tmp_path / "progress.json"
    n = len(rt.manifest.chunks)
    script = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from overdrive.bundle import apply_bundle, decoder
        die_after = int(sys.argv[5])
        real = decoder._save_progress
        def hook(path, record):
            real(path, record)
            if record["next_chunk"] == die_after:
                os._exit(9)
        decoder._save_progress = hook
        apply_bundle(Path(sys.argv[1]), Path(sys.argv[2]), source=Path(sys.argv[3]),
                     progress_file=Path(sys.argv[4]))
        """
    )
    for die_after in (3, n - 2):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                str(rt.bundle),
                str(target),
                str(source),
                str(progress),
                str(die_after),
            ],
            capture_output=True,
            timeout=120,
        )
        assert proc.returncode == 9, proc.stderr.decode()
        assert json.loads(progress.read_text())["next_chunk"] == die_after
        # the next "boot" starts a fresh process; here: continue in this one
    apply_bundle(rt.bundle, target, source=source, progress_file=progress)
    assert target.read_bytes() == new

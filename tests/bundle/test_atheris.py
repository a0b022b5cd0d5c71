"""Optional coverage-guided fuzzing of apply_bundle with atheris (skipped when not installed).

A short, bounded run (a few thousand inputs seeded with valid full and delta bundles) so it fits
in the test suite; for a long campaign run ``fuzz_apply.py`` directly with a larger ``-runs`` or
``-max_total_time``.
"""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import binary_like, evolve, roundtrip

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed"
)


def test_atheris_apply_fuzz(tmp_path: Path) -> None:
    rng = random.Random(7)
    old = binary_like(rng, 5000)
    new = evolve(rng, old, inserts=2, deletes=1, moves=1, flips=8)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    (work / "source.img").write_bytes(old)
    for name, source in (("full", None), ("delta", old)):
        rt = roundtrip(tmp_path, new, source, chunk_size=1024, name=name)
        for mode in (0, 1):
            (corpus / f"{name}-{mode}").write_bytes(bytes([mode]) + rt.bundle.read_bytes())
    harness = Path(__file__).with_name("fuzz_apply.py")
    proc = subprocess.run(
        [sys.executable, str(harness), str(corpus), "-runs=3000", "-seed=1", "-rss_limit_mb=2048"],
        env={**os.environ, "OVD_FUZZ_WORK": str(work)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

"""Benchmark data model: the methods compared and the measured results."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import _data
import _measure

__all__ = [
    "BSDIFF4",
    "FULL",
    "METHODS",
    "OVERDRIVE",
    "ZSTD_PATCH",
    "ChunkOp",
    "Method",
    "PairResult",
    "Result",
]


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    delta: bool


OVERDRIVE = Method("overdrive", "Overdrive delta", True)
BSDIFF4 = Method("bsdiff4", "bsdiff4 (BSDIFF40, whole file)", True)
ZSTD_PATCH = Method("zstd", "zstd --patch-from -19 --long=31", True)
FULL = Method("full", "Overdrive full bundle", False)
METHODS = (OVERDRIVE, BSDIFF4, ZSTD_PATCH, FULL)


@dataclass
class Result:
    """All repetitions of one method on one pair."""

    method: Method
    encode_reps: int
    apply_reps: int
    size: int = 0
    sizes: set[int] = field(default_factory=set)
    encode: list[_measure.Sample] = field(default_factory=list)
    apply: list[_measure.Sample] = field(default_factory=list)
    ops: dict[str, tuple[int, int]] | None = None  # Overdrive: op -> (chunks, payload bytes)
    chunk_ops: list[str] = field(default_factory=list)  # Overdrive: each chunk's op

    def median(self, phase: str, attr: str) -> float:
        samples = self.encode if phase == "encode" else self.apply
        return float(statistics.median(getattr(s, attr) for s in samples))


@dataclass
class PairResult:
    pair: _data.Pair
    old_size: int
    new_size: int
    new_sha256: str
    results: dict[str, Result]
    skipped: dict[str, str]
    profile: list[ChunkOp] = field(default_factory=list)
    profile_error: str = ""


@dataclass(frozen=True)
class ChunkOp:
    """Diagnostic: one encoder op run alone on one chunk (see ``_runner._chunk_op``)."""

    chunk: int
    op: str
    wall_s: float
    peak_rss: int
    payload: int
    window: int

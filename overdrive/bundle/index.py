"""Where did this result chunk come from? A compact block-hash index of the source image.

Deltas only work if each result chunk is compared with the part of the source it was derived from,
and between two builds that part moves: code grows, sections are inserted, deleted or reordered.
The index samples the source every ``stride`` bytes and stores a 40-bit hash of the ``PROBE``
bytes found there, packed with the sample number into one sorted ``array('Q')`` (8 bytes per
sample, at most ~1 Mi samples whatever the source size). For a result chunk the encoder hashes
``stride`` consecutive offsets at a few dozen probe points: any region copied from the source,
at whatever shift, contains one sampled position per ``stride`` bytes, so each probe that lands in
such a region finds it. Each hit votes for an alignment ``source_offset - result_offset``; the
best-supported alignments become the chunk's source window (:func:`plan_window`).
"""

from __future__ import annotations

import hashlib
import os
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

from overdrive.bundle.image import IO_BLOCK

__all__ = ["PROBE", "Alignment", "SourceIndex", "plan_window"]

PROBE = 64  # bytes hashed at each sampled position
_MIN_STRIDE = 64
_MAX_SAMPLES = 1 << 20
_SAMPLE_BITS = 24  # low bits of a key: sample number (< 2**24 samples)
_HASH_BITS = 40
_MAX_DUPLICATES = 8  # a hash seen more often than this (zeros, padding) says nothing
_PROBE_BUDGET = 1 << 18  # hash computations per chunk, at most


def _hash(data: bytes | memoryview) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=_HASH_BITS // 8).digest(), "big")


@dataclass(frozen=True)
class Alignment:
    """A candidate shift: result byte ``r`` came from source byte ``r + delta``.

    ``votes`` is the number of probes that support it; ``first``/``last`` are the lowest and
    highest chunk-relative positions of those probes.
    """

    delta: int
    votes: int
    first: int
    last: int


class SourceIndex:
    """Sorted array of ``(hash40 << 24) | sample_number`` keys for a source image."""

    def __init__(self, length: int, stride: int, keys: array[int]) -> None:
        self.length = length
        self.stride = stride
        self.keys = keys

    @staticmethod
    def stride_for(length: int) -> int:
        """Sampling stride: at least 64 bytes, a power of two, at most 2**20 samples."""
        stride = _MIN_STRIDE
        while length // stride > _MAX_SAMPLES:
            stride *= 2
        return stride

    @classmethod
    def build(cls, fd: int, length: int) -> SourceIndex:
        """Index the first ``length`` bytes of ``fd``, reading it sequentially once."""
        stride = cls.stride_for(length)
        keys: list[int] = []
        step = max(stride, IO_BLOCK - IO_BLOCK % stride)
        offset = 0
        while offset < length:
            block = os.pread(fd, min(step + PROBE, length - offset), offset)
            if not block:
                break
            view = memoryview(block)
            for pos in range(0, min(step, len(block) - PROBE + 1), stride):
                sample = (offset + pos) // stride
                keys.append((_hash(view[pos : pos + PROBE]) << _SAMPLE_BITS) | sample)
            offset += step
        keys.sort()
        return cls(length, stride, array("Q", keys))

    def lookup(self, h: int) -> list[int]:
        """Source offsets whose sampled ``PROBE`` bytes hash to ``h`` (may be false positives)."""
        lo = h << _SAMPLE_BITS
        hi = (h + 1) << _SAMPLE_BITS
        keys = self.keys
        i = bisect_left(keys, lo)
        found: list[int] = []
        while i < len(keys) and keys[i] < hi:
            found.append((keys[i] & ((1 << _SAMPLE_BITS) - 1)) * self.stride)
            i += 1
            if len(found) > _MAX_DUPLICATES:
                break
        return found

    def align(self, data: bytes, data_offset: int) -> list[Alignment]:
        """Vote for alignments of ``data`` (a result chunk at ``data_offset``), best first."""
        n = len(data)
        if not self.keys or n < PROBE:
            return []
        stride = self.stride
        probes = max(8, min(256, _PROBE_BUDGET // stride))
        spacing = max(stride, n // probes)
        view = memoryview(data)
        votes: dict[int, list[int]] = {}
        for start in range(0, n - PROBE + 1, spacing):
            for pos in range(start, min(start + stride, n - PROBE + 1)):
                offsets = self.lookup(_hash(view[pos : pos + PROBE]))
                if offsets and len(offsets) <= _MAX_DUPLICATES:
                    for so in offsets:
                        votes.setdefault(so - (data_offset + pos), []).append(pos)
                    break
        ranked = [Alignment(d, len(ps), min(ps), max(ps)) for d, ps in votes.items()]
        ranked.sort(key=lambda a: (-a.votes, abs(a.delta)))
        return ranked


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(s for s in spans if s[1] > s[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _size(spans: list[tuple[int, int]]) -> int:
    return sum(hi - lo for lo, hi in spans)


def _trim(spans: list[tuple[int, int]], budget: int) -> list[tuple[int, int]]:
    """Cut bytes off the end of the last spans until the union fits ``budget``."""
    out = list(spans)
    excess = _size(out) - budget
    while excess > 0 and out:
        lo, hi = out.pop()
        if hi - lo > excess:
            out.append((lo, hi - excess))
            break
        excess -= hi - lo
    return out


def plan_window(
    *,
    chunk_offset: int,
    chunk_length: int,
    source_length: int,
    alignments: list[Alignment],
    budget: int,
    max_extents: int,
) -> list[tuple[int, int]]:
    """Choose the source extents ``(offset, length)`` a chunk is diffed against.

    The best-voted alignments each contribute the source range their probes map to (padded by
    the gap to the neighbouring probes), then the same-offset range as a fallback; the union is
    kept within ``budget`` bytes and ``max_extents`` extents and finally grown evenly to use the
    whole budget, since bsdiff and zstd only find what is in the window.
    """
    if source_length <= 0 or chunk_length <= 0 or budget <= 0:
        return []
    pad = max(PROBE, chunk_length // 16)
    wanted: list[tuple[int, int]] = []
    for a in alignments[:max_extents]:
        lo = chunk_offset + a.delta + max(0, a.first - pad)
        hi = chunk_offset + a.delta + min(chunk_length, a.last + PROBE + pad)
        wanted.append((max(0, lo), min(source_length, hi)))
    same_lo = min(chunk_offset, max(0, source_length - chunk_length))
    wanted.append((same_lo, min(source_length, same_lo + chunk_length)))

    chosen: list[tuple[int, int]] = []
    for lo, hi in wanted:
        if hi <= lo:
            continue
        trial = _merge([*chosen, (lo, hi)])
        if len(trial) > max_extents:
            continue
        if _size(trial) > budget:
            trial = _merge([*chosen, *_trim([(lo, hi)], budget - _size(chosen))])
        chosen = trial
        if _size(chosen) >= budget:
            break

    for _ in range(4):  # grow around what we have
        spare = budget - _size(chosen)
        if spare <= 0 or not chosen:
            break
        grow = max(1, spare // (2 * len(chosen)))
        grown = _merge((max(0, lo - grow), min(source_length, hi + grow)) for lo, hi in chosen)
        grown = _trim(grown, budget)
        if grown == chosen:
            break
        chosen = grown
    return [(lo, hi - lo) for lo, hi in chosen if hi > lo]

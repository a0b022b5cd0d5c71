"""Property: a mutated bundle either applies to exactly the right image or raises BundleError.

Never any other exception (no ValueError, KeyError, MemoryError, ZstdError, struct.error...).
Mutations are raw (bit flips, truncation, splices, which mostly die at the manifest hash) and
manifest-aware (the manifest is changed and its hash fixed up, so parsing, validation and the
payload decoders are reached).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overdrive.bundle import BundleError, apply_bundle, read_manifest
from tests.conftest import reproducible

from .conftest import (
    binary_like,
    canonical,
    evolve,
    raw_bundle,
    roundtrip,
    split_bundle,
)

FUZZ = reproducible(400)


@dataclass
class Case:
    bundle: bytes
    source: Path
    image: bytes
    work: Path


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    work = tmp_path_factory.mktemp("fuzz")
    rng = random.Random(2024)
    old = binary_like(rng, 6000)
    new = evolve(rng, old, inserts=2, deletes=1, moves=1, flips=10)
    out = []
    for name, source in (("full", None), ("delta", old)):
        rt = roundtrip(work, new, source, chunk_size=1024, name=name)
        out.append(Case(rt.bundle.read_bytes(), work / "delta.old.img", new, work))
    kinds = {c.op for case in out for c in read_manifest_bytes(case.bundle, work).chunks}
    assert len(kinds) >= 3, kinds  # the fuzz corpus covers several ops
    return out


def read_manifest_bytes(data: bytes, work: Path) -> Any:
    p = work / "probe.ovdb"
    p.write_bytes(data)
    return read_manifest(p)


def check(case: Case, data: bytes) -> None:
    bundle = case.work / "mutant.ovdb"
    target = case.work / "mutant.img"
    bundle.write_bytes(data)
    target.unlink(missing_ok=True)
    with contextlib.suppress(BundleError):
        read_manifest(bundle)
    try:
        apply_bundle(bundle, target, source=case.source)
    except BundleError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert target.read_bytes() == case.image


def manifest_span(data: bytes) -> tuple[int, int]:
    (length,) = struct.unpack(">I", data[10:14])
    return 14, 14 + length


@FUZZ
@given(
    which=st.integers(0, 1),
    flips=st.lists(st.tuples(st.integers(0), st.integers(0, 7)), min_size=1, max_size=8),
)
def test_bit_flips(cases: list[Case], which: int, flips: list[tuple[int, int]]) -> None:
    case = cases[which]
    data = bytearray(case.bundle)
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    check(case, bytes(data))


@FUZZ
@given(
    which=st.integers(0, 1),
    cut=st.integers(0),
    at=st.integers(0),
    junk=st.binary(max_size=64),
    src=st.integers(0),
    n=st.integers(0, 200),
    mode=st.sampled_from(["truncate", "insert", "replace", "splice"]),
)
def test_truncations_and_splices(
    cases: list[Case], which: int, cut: int, at: int, junk: bytes, src: int, n: int, mode: str
) -> None:
    case = cases[which]
    data = case.bundle
    at %= len(data) + 1
    if mode == "truncate":
        mutant = data[: cut % len(data)]
    elif mode == "insert":
        mutant = data[:at] + junk + data[at:]
    elif mode == "replace":
        mutant = data[:at] + junk + data[at + len(junk) :]
    else:  # copy a slice of this or the other bundle over another place
        other = cases[1 - which].bundle
        s = src % len(other)
        piece = other[s : s + n]
        mutant = data[:at] + piece + data[at + len(piece) :]
    check(case, mutant)


@FUZZ
@given(
    which=st.integers(0, 1),
    flips=st.lists(st.tuples(st.integers(0), st.integers(0, 7)), min_size=1, max_size=4),
)
def test_manifest_byte_flips_with_valid_hash(
    cases: list[Case], which: int, flips: list[tuple[int, int]]
) -> None:
    """Flip manifest bytes and fix the hash, so the JSON parser and validator see them."""
    case = cases[which]
    data = bytearray(case.bundle)
    lo, hi = manifest_span(case.bundle)
    for pos, bit in flips:
        data[lo + pos % (hi - lo)] ^= 1 << bit
    data[hi : hi + 32] = hashlib.sha256(data[lo:hi]).digest()
    check(case, bytes(data))


_VALUES = st.one_of(
    st.integers(-(2**64), 2**64),
    st.sampled_from([0, 1, -1, 23, 24, 1023, 1024, 1025, 2**31, 2**63, 2**63 - 1]),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.lists(st.integers(-5, 5000), max_size=3),
    st.lists(st.lists(st.integers(-5, 7000), min_size=2, max_size=2), max_size=3),
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@FUZZ
@given(
    which=st.integers(0, 1),
    edits=st.lists(st.tuples(st.integers(0), _VALUES, st.booleans()), min_size=1, max_size=3),
)
def test_structured_manifest_edits(
    cases: list[Case], which: int, edits: list[tuple[int, Any, bool]]
) -> None:
    """Set (or delete) random manifest fields to hostile values, re-canonicalise and re-hash."""
    case = cases[which]
    manifest, payload = split_bundle(case.bundle)
    for pick, value, delete in edits:
        paths = _paths(manifest)
        if not paths:
            break
        path = paths[pick % len(paths)]
        parent: Any = manifest
        for key in path[:-1]:
            parent = parent[key]
        if delete and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    check(case, raw_bundle(canonical(manifest), payload))


def test_fuzz_cases_are_valid(cases: list[Case]) -> None:
    for case in cases:
        check(case, case.bundle)


@FUZZ
@given(
    which=st.integers(0, 1),
    flips=st.lists(st.tuples(st.integers(0), st.integers(0, 7)), min_size=1, max_size=3),
)
def test_payload_bit_flips(cases: list[Case], which: int, flips: list[tuple[int, int]]) -> None:
    """Flip bits only in the payload area: zstd frames, bsdiff streams and raw bytes."""
    case = cases[which]
    data = bytearray(case.bundle)
    start = manifest_span(case.bundle)[1] + 32
    for pos, bit in flips:
        data[start + pos % (len(data) - start)] ^= 1 << bit
    check(case, bytes(data))

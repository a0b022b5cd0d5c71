"""The linear-time bsdiff matcher: its streams always decode, stay in bounds, and stay small."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import bsdiff4.core
import pytest
from hypothesis import given
from hypothesis import strategies as st

from overdrive.bundle import Op, codec
from overdrive.bundle.format import max_control_size
from tests.conftest import reproducible

from .conftest import binary_like, evolve, roundtrip

matcher = pytest.importorskip("overdrive.bundle.matcher")


def decode(old: bytes, new: bytes, streams: codec.BsdiffStreams) -> bytes:
    """What the real decoder (checks included) rebuilds from the streams, packed as a payload."""
    payload = codec.pack_bsdiff(streams, 3)
    return codec.decode_bsdiff(
        payload.payload,
        window=old,
        result_length=len(new),
        control_length=payload.control_length,
        control_size=payload.control_size,
        diff_length=payload.diff_length,
        diff_size=payload.diff_size,
        extra_size=payload.extra_size,
        what="test",
    )


def check(old: bytes, new: bytes) -> codec.BsdiffStreams:
    """Run the matcher, check its streams against the format's rules, and decode them."""
    control, diff, extra = matcher.diff(old, new)
    assert control and len(control) % 24 == 0
    assert len(control) <= max_control_size(len(new))
    assert len(diff) + len(extra) == len(new)
    codec.check_control(
        control,
        window_length=len(old),
        result_length=len(new),
        diff_size=len(diff),
        extra_size=len(extra),
        what="test",
    )
    assert bsdiff4.core.patch(old, len(new), control, diff, extra) == new
    streams = codec.BsdiffStreams(control, diff, extra)
    if new:
        assert decode(old, new, streams) == new
    return streams


def packed_size(streams: codec.BsdiffStreams, level: int = 19) -> int:
    return len(codec.pack_bsdiff(streams, level).payload)


def shifted(rng: random.Random, old: bytes) -> bytes:
    """Code-like change: a few insertions and deletions, and every 4-byte "pointer" after
    them moved by the net shift, as a relinked binary's relocations are."""
    new = bytearray(evolve(rng, old, inserts=3, deletes=3, moves=0, flips=0))
    for p in range(0, len(new) - 4, 64):
        value = int.from_bytes(new[p : p + 4], "little")
        new[p : p + 4] = ((value + 0x40) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(new)


CASES = {
    "random-unrelated": lambda rng: (rng.randbytes(50_000), rng.randbytes(40_000)),
    "identical": lambda rng: (b := rng.randbytes(30_000), b),
    "binary-evolved": lambda rng: (b := binary_like(rng, 200_000), evolve(rng, b)),
    "shifted-code": lambda rng: (b := binary_like(rng, 150_000), shifted(rng, b)),
    "insert-front": lambda rng: (b := rng.randbytes(60_000), rng.randbytes(777) + b),
    "delete-middle": lambda rng: (b := rng.randbytes(60_000), b[:20_000] + b[31_000:]),
    "zeros-both": lambda rng: (bytes(300_000), bytes(250_000)),
    "zeros-with-islands": lambda rng: (
        bytes(100_000) + (i := rng.randbytes(5000)) + bytes(200_000),
        bytes(150_000) + i + bytes(50_000) + rng.randbytes(100) + bytes(10_000),
    ),
    "repetitive": lambda rng: (
        b"abcdefgh" * 20_000,
        b"abcdefgh" * 9_000 + b"X" + b"abcdefgh" * 11_000,
    ),
    "period-mismatch": lambda rng: (b"0123456789abc" * 10_000, b"0123456789ab" * 11_000),
    "tiny-new": lambda rng: (rng.randbytes(10_000), b"x"),
    "empty-new": lambda rng: (rng.randbytes(1000), b""),
    "empty-old": lambda rng: (b"", rng.randbytes(5000)),
    "new-longer": lambda rng: (b := rng.randbytes(5000), b * 7 + rng.randbytes(3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matcher_round_trips(case: str, rng: random.Random) -> None:
    old, new = CASES[case](rng)
    check(old, new)


def test_identical_input_is_one_diff_of_zeros(rng: random.Random) -> None:
    data = binary_like(rng, 100_000)
    streams = check(data, data)
    assert streams.extra == b"" and streams.diff == bytes(len(data))
    assert len(streams.control) == 24


@pytest.mark.parametrize("case", ["binary-evolved", "shifted-code", "insert-front"])
def test_matcher_is_about_as_small_as_bsdiff4(case: str, rng: random.Random) -> None:
    old, new = CASES[case](rng)
    ours = packed_size(check(old, new))
    control, diff, extra = bsdiff4.core.diff(old, new)
    theirs = packed_size(codec.BsdiffStreams(control, diff, extra))
    assert ours <= 1.15 * theirs + 64, (ours, theirs)


def test_shifted_code_is_mostly_diff_not_extra(rng: random.Random) -> None:
    old = binary_like(rng, 300_000)
    new = shifted(rng, old)
    streams = check(old, new)
    assert len(streams.extra) < len(new) // 50
    assert packed_size(streams) < len(new) // 20


def test_moved_blocks_are_found(rng: random.Random) -> None:
    old = rng.randbytes(400_000)
    new = old[300_000:350_000] + old[:300_000] + old[350_000:]
    streams = check(old, new)
    assert len(streams.extra) < 1000
    assert packed_size(streams) < 2000


@pytest.mark.slow
def test_long_runs_of_one_byte_stay_linear(rng: random.Random) -> None:
    """bsdiff4's suffix sort goes quadratic on long zero runs; the matcher must not (its work
    budget bounds the comparisons; no timing assertion here: the suite would hang, not fail)."""
    old = bytes(4 << 20)
    new = bytearray(4 << 20)
    for _ in range(200):
        p = rng.randrange(len(new) - 64)
        new[p : p + 64] = rng.randbytes(64)
    check(old + b"\x01" * (4 << 20), bytes(new))
    check(bytes(new), bytes(4 << 20))


def test_control_stream_stays_within_the_format_limit(rng: random.Random) -> None:
    """Data that matches in many short, scattered pieces would need a tuple every few bytes."""
    old = rng.randbytes(200_000)
    pieces = []
    while sum(map(len, pieces)) < 100_000:
        p = rng.randrange(len(old) - 40)
        pieces.append(old[p : p + rng.randrange(13, 40)] + rng.randbytes(rng.randrange(1, 5)))
    new = b"".join(pieces)
    assert len(check(old, new).control) <= max_control_size(len(new))


def test_matcher_refuses_inputs_beyond_the_format_limits() -> None:
    with pytest.raises(ValueError):
        matcher.diff(b"", bytes(matcher.MAX_NEW + 1))


MATCHER = reproducible(300)


@st.composite
def related(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """An (old, new) pair built from shared pieces, edits, repeats and zero runs."""
    alphabet = draw(st.sampled_from([b"\x00", b"\x00\x01", b"ab", bytes(range(256))]))
    piece = st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda c, n: bytes([c]) * n, st.sampled_from(list(alphabet)), st.integers(0, 3000)
        ),
    )
    old = b"".join(draw(st.lists(piece, max_size=12)))
    ops = draw(
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 500), piece),
            max_size=10,
        )
    )
    new = bytearray(old)
    for op, at, n, data in ops:
        at = at % (len(new) + 1)
        if op == 0:
            new[at:at] = data
        elif op == 1:
            del new[at : at + n]
        elif op == 2 and old:
            src = at % len(old)
            new[at:at] = old[src : src + n]
        else:
            for i in range(at, min(len(new), at + n), 7):
                new[i] = (new[i] + 1) & 0xFF
    return old, bytes(new)


@MATCHER
@given(related())
def test_any_matcher_output_decodes_to_the_input(pair: tuple[bytes, bytes]) -> None:
    check(*pair)


@MATCHER
@given(st.binary(max_size=2000), st.binary(max_size=2000))
def test_matcher_on_arbitrary_bytes(old: bytes, new: bytes) -> None:
    check(old, new)


def test_encoder_uses_the_matcher_and_bundles_apply(tmp_path: Path, rng: random.Random) -> None:
    old = binary_like(rng, 200_000)
    new = shifted(rng, old)
    rt = roundtrip(tmp_path, new, old, chunk_size=65536, level=19)
    assert {c.op for c in rt.manifest.chunks} & {Op.BSDIFF}


def test_without_numpy_the_encoder_falls_back_to_bsdiff4(
    tmp_path: Path, rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numpy is an encoder-side extra: without it the same format comes from bsdiff4."""
    calls: list[int] = []
    real = bsdiff4.core.diff

    def counting(old: bytes, new: bytes) -> tuple[bytes, bytes, bytes]:
        calls.append(len(new))
        result: tuple[bytes, bytes, bytes] = real(old, new)
        return result

    monkeypatch.setattr(codec, "fast_matcher", lambda: None)
    monkeypatch.setattr(bsdiff4.core, "diff", counting)
    old = binary_like(rng, 100_000)
    rt = roundtrip(tmp_path, evolve(rng, old), old, chunk_size=32768)
    assert calls
    assert {c.op for c in rt.manifest.chunks} & {Op.BSDIFF, Op.ZSTD_DICT, Op.COPY}


def test_codec_imports_and_encodes_without_numpy(tmp_path: Path) -> None:
    """In a fresh interpreter where numpy cannot be imported at all."""
    script = """
import sys
sys.modules["numpy"] = None  # any `import numpy` now raises ImportError
from overdrive.bundle import codec
assert codec.fast_matcher() is None
old = bytes(range(256)) * 200
new = old[:1000] + b"inserted" + old[1000:]
payload = codec.encode_bsdiff(old, new, 3)
assert payload is not None
out = codec.decode_bsdiff(payload.payload, window=old, result_length=len(new),
    control_length=payload.control_length, control_size=payload.control_size,
    diff_length=payload.diff_length, diff_size=payload.diff_size,
    extra_size=payload.extra_size, what="t")
assert out == new
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"

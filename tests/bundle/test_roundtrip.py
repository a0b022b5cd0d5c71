"""Full and delta bundles round-trip byte for byte, and deltas are small where they should be."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from overdrive.bundle import (
    BundleError,
    Op,
    OutOfRange,
    apply_bundle,
    encode_bundle,
    image_sha256,
    read_manifest,
)
from overdrive.bundle.index import SourceIndex, plan_window

from .conftest import SMALL_CHUNK, binary_like, evolve, roundtrip, sha, text_tar


def ops(manifest: object) -> set[Op]:
    return {c.op for c in manifest.chunks}  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_full_roundtrip_sizes(tmp_path: Path, rng: random.Random, size: int) -> None:
    data = binary_like(rng, size)
    rt = roundtrip(tmp_path, data)
    m = rt.manifest
    assert m.kind == "full" and m.source is None
    assert m.image.length == size and m.image.sha256 == sha(data)
    assert len(m.chunks) == -(-size // SMALL_CHUNK)
    assert ops(m) <= {Op.RAW, Op.ZSTD}


def test_full_random_data_is_stored_raw(tmp_path: Path, rng: random.Random) -> None:
    rt = roundtrip(tmp_path, rng.randbytes(5 * SMALL_CHUNK + 3))
    assert ops(rt.manifest) == {Op.RAW}


def test_full_compressible_data_is_zstd(tmp_path: Path, rng: random.Random) -> None:
    rt = roundtrip(tmp_path, text_tar(rng), chunk_size=64 * 1024)
    assert Op.ZSTD in ops(rt.manifest)
    assert rt.size < rt.manifest.image.length / 3


@pytest.mark.parametrize("size", [0, 1, 4097, 50_000])
def test_delta_roundtrip_sizes(tmp_path: Path, rng: random.Random, size: int) -> None:
    old = binary_like(rng, size)
    new = evolve(rng, old) if size > 1 else rng.randbytes(size)
    roundtrip(tmp_path, new, old)


def test_delta_from_empty_source_and_to_empty_image(tmp_path: Path, rng: random.Random) -> None:
    data = binary_like(rng, 10_000)
    rt = roundtrip(tmp_path, data, b"", name="from-empty")
    assert rt.manifest.kind == "delta" and ops(rt.manifest) <= {Op.RAW, Op.ZSTD}
    rt = roundtrip(tmp_path, b"", data, name="to-empty")
    assert rt.manifest.chunks == ()


def test_identical_image_is_all_copy(tmp_path: Path, rng: random.Random) -> None:
    data = binary_like(rng, 40_000)
    rt = roundtrip(tmp_path, data, data)
    assert ops(rt.manifest) == {Op.COPY}
    assert rt.manifest.payload_length == 0


def test_binary_like_delta_is_small(tmp_path: Path, rng: random.Random) -> None:
    old = binary_like(rng, 300_000)
    new = evolve(rng, old, inserts=4, deletes=4, moves=2, flips=40)
    full = roundtrip(tmp_path, new, name="full", chunk_size=16384)
    delta = roundtrip(tmp_path, new, old, name="delta", chunk_size=16384)
    assert delta.size < full.size / 5
    assert ops(delta.manifest) & {Op.BSDIFF, Op.ZSTD_DICT, Op.COPY}


def test_text_tar_delta_is_tiny(tmp_path: Path) -> None:
    old = text_tar(random.Random(5))
    new = text_tar(random.Random(5), changed=3)
    assert len(old) == len(new) and old != new
    delta = roundtrip(tmp_path, new, old, chunk_size=8192)
    full = roundtrip(tmp_path, new, name="full", chunk_size=8192)
    assert delta.size < full.size / 4
    assert Op.COPY in ops(delta.manifest)


def test_moved_block_is_found_far_away(tmp_path: Path, rng: random.Random) -> None:
    """A block moved by a large, unaligned distance is still diffed against where it came from."""
    old = rng.randbytes(256 * 1024)
    block = old[200_003:240_003]
    new = old[:20_011] + block + old[20_011:200_003] + old[240_003:]
    assert len(new) == len(old)
    full = roundtrip(tmp_path, new, name="full", chunk_size=16384)
    delta = roundtrip(tmp_path, new, old, name="delta", chunk_size=16384)
    assert full.size > len(new)  # random data does not compress
    assert delta.size < full.size / 20
    assert delta.manifest.payload_length < 2000
    assert Op.COPY in ops(delta.manifest)


def test_random_data_with_scattered_edits(tmp_path: Path, rng: random.Random) -> None:
    old = rng.randbytes(120_000)
    new = bytearray(old)
    for _ in range(60):
        p = rng.randrange(len(new) - 4)
        new[p : p + 4] = rng.randbytes(4)
    delta = roundtrip(tmp_path, bytes(new), old)
    assert delta.manifest.payload_length < len(new) / 20
    assert ops(delta.manifest) & {Op.BSDIFF, Op.ZSTD_DICT}


def test_many_chunks_parallel_matches_serial(tmp_path: Path, rng: random.Random) -> None:
    old = binary_like(rng, 120_000)
    new = evolve(rng, old)
    serial = roundtrip(tmp_path, new, old, jobs=1, name="serial")
    parallel = roundtrip(tmp_path, new, old, jobs=2, name="parallel")
    assert len(serial.manifest.chunks) > 25
    assert serial.manifest == parallel.manifest
    assert serial.bundle.read_bytes() == parallel.bundle.read_bytes()


def test_read_manifest_matches_encoder(tmp_path: Path, rng: random.Random) -> None:
    rt = roundtrip(tmp_path, binary_like(rng, 9000))
    assert read_manifest(rt.bundle) == rt.manifest
    with rt.bundle.open("rb") as f:
        assert read_manifest(f) == rt.manifest


def test_target_larger_regular_file_is_truncated(tmp_path: Path, rng: random.Random) -> None:
    data = binary_like(rng, 10_000)
    rt = roundtrip(tmp_path, data)
    target = tmp_path / "slot.img"
    target.write_bytes(b"\xff" * 100_000)
    apply_bundle(rt.bundle, target)
    assert target.read_bytes() == data


def test_apply_to_character_device_does_not_truncate(tmp_path: Path, rng: random.Random) -> None:
    """A non-regular target is written in place; /dev/null stands in for a slot device."""
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    rt = roundtrip(tmp_path, binary_like(rng, 10_000))
    apply_bundle(rt.bundle, Path("/dev/null"))


def test_source_may_be_longer_than_image(tmp_path: Path, rng: random.Random) -> None:
    """A slot is larger than the image in it: only the first source.length bytes count."""
    old = binary_like(rng, 30_000)
    new = evolve(rng, old)
    rt = roundtrip(tmp_path, new, old)
    slot = tmp_path / "slot"
    slot.write_bytes(old + b"\x00garbage" * 1000)
    target = tmp_path / "out"
    apply_bundle(rt.bundle, target, source=slot)
    assert target.read_bytes() == new


def test_image_sha256(tmp_path: Path, rng: random.Random) -> None:
    data = rng.randbytes(3 * 1024 * 1024 + 5)
    p = tmp_path / "img"
    p.write_bytes(data)
    assert image_sha256(p) == sha(data)
    assert image_sha256(p, 1000) == sha(data[:1000])
    assert image_sha256(p, 0) == sha(b"")
    with pytest.raises(OutOfRange):
        image_sha256(p, len(data) + 1)
    with pytest.raises(BundleError):
        image_sha256(tmp_path / "missing")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size": 100}, "chunk size"),
        ({"chunk_size": 1 << 40}, "chunk size"),
        ({"level": 0}, "level"),
        ({"level": 23}, "level"),
        ({"jobs": 0}, "jobs"),
        ({"hardware_id": ""}, "hardware id"),
        ({"version": "a\nb"}, "version"),
        ({"source_version": "1"}, "source"),
    ],
)
def test_encode_rejects_bad_arguments(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    image = tmp_path / "img"
    image.write_bytes(b"x" * 100)
    args: dict[str, object] = {"hardware_id": "hw", "version": "1", **kwargs}
    with pytest.raises(BundleError, match=match):
        encode_bundle(image, tmp_path / "out", **args)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_encode_missing_image(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="cannot read image"):
        encode_bundle(tmp_path / "nope", tmp_path / "out", hardware_id="hw", version="1")


def test_failed_encode_leaves_previous_bundle_untouched(
    tmp_path: Path, rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overdrive.bundle import encoder

    rt = roundtrip(tmp_path, binary_like(rng, 20_000))
    before = rt.bundle.read_bytes()
    calls = 0
    real = encoder.encode_chunk

    def flaky(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("worker died")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(encoder, "encode_chunk", flaky)
    with pytest.raises(RuntimeError):
        encode_bundle(
            tmp_path / "b.new.img",
            rt.bundle,
            hardware_id="hw",
            version="9",
            chunk_size=4096,
            jobs=1,
        )
    assert rt.bundle.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_index_finds_moved_region(rng: random.Random, tmp_path: Path) -> None:
    source = rng.randbytes(200_000)
    p = tmp_path / "src"
    p.write_bytes(source)
    fd = os.open(p, os.O_RDONLY)
    try:
        index = SourceIndex.build(fd, len(source))
    finally:
        os.close(fd)
    chunk = source[123_457 : 123_457 + 8192]
    alignments = index.align(chunk, 4096)
    assert alignments[0].delta == 123_457 - 4096
    extents = plan_window(
        chunk_offset=4096,
        chunk_length=8192,
        source_length=len(source),
        alignments=alignments,
        budget=16384,
        max_extents=16,
    )
    assert sum(n for _, n in extents) == 16384
    assert any(o <= 123_457 and o + n >= 123_457 + 8192 for o, n in extents)


def test_plan_window_respects_budget_and_bounds() -> None:
    from overdrive.bundle.index import Alignment

    for source_length in (10, 5000, 1_000_000):
        for delta in (-(10**6), -50, 0, 777, 10**6):
            extents = plan_window(
                chunk_offset=4096,
                chunk_length=4096,
                source_length=source_length,
                alignments=[Alignment(delta, 3, 0, 4000), Alignment(delta + 9000, 1, 100, 100)],
                budget=8192,
                max_extents=16,
            )
            assert sum(n for _, n in extents) <= 8192
            end = 0
            for o, n in extents:
                assert o >= end and n > 0 and o + n <= source_length
                end = o + n


def test_every_op_is_used_and_round_trips(tmp_path: Path, rng: random.Random) -> None:
    """One delta whose chunks need COPY, BSDIFF, ZSTD_DICT and RAW; ZSTD comes from a full bundle."""
    cs = 16384
    same = binary_like(rng, cs)
    relocated_old = rng.randbytes(cs)
    relocated_new = bytearray(relocated_old)
    for p in range(0, cs - 4, 64):  # "same code, shifted addresses"
        v = int.from_bytes(relocated_new[p : p + 4], "little")
        relocated_new[p : p + 4] = ((v + 0x1040) & 0xFFFFFFFF).to_bytes(4, "little")
    scattered_old = rng.randbytes(cs)
    scattered_new = bytearray(scattered_old)
    for _ in range(6):
        p = rng.randrange(cs - 4)
        scattered_new[p : p + 4] = rng.randbytes(4)
    old = same + relocated_old + scattered_old
    new = same + bytes(relocated_new) + bytes(scattered_new) + rng.randbytes(cs)
    delta = roundtrip(tmp_path, new, old, chunk_size=cs, name="delta")
    assert [c.op for c in delta.manifest.chunks] == [Op.COPY, Op.BSDIFF, Op.ZSTD_DICT, Op.RAW]
    full = roundtrip(tmp_path, same, chunk_size=cs, name="full")
    assert [c.op for c in full.manifest.chunks] == [Op.ZSTD]


def test_in_place_edits_use_aligned_bsdiff(tmp_path: Path, rng: random.Random) -> None:
    """Same layout, a few changed bytes per chunk: a one-tuple bsdiff against the same offset."""
    old = rng.randbytes(8 * 16384)
    new = bytearray(old)
    for p in range(1000, len(new), 16384):
        new[p] ^= 0x5A
    rt = roundtrip(tmp_path, bytes(new), old, chunk_size=16384)
    for c in rt.manifest.chunks:
        assert c.op is Op.BSDIFF
        assert c.window == ((c.result_offset, c.result_length),)
        assert c.control_size == 24 and c.extra_size == 0
    assert rt.manifest.payload_length < 8 * 200


def test_progress_bar_only_on_a_terminal(
    tmp_path: Path, rng: random.Random, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    image = tmp_path / "img"
    image.write_bytes(binary_like(rng, 20_000))
    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        encode_bundle(
            image,
            tmp_path / "b",
            hardware_id="h",
            version="1",
            chunk_size=4096,
            jobs=1,
            progress=True,
        )
        assert ("encoding" in stream.getvalue()) is shown

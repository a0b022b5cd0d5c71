"""Hostile and damaged bundles: each failure raises its specific BundleError, before harm is done."""

from __future__ import annotations

import copy
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
import zstandard

from overdrive.bundle import (
    MAGIC,
    BadMagic,
    BundleError,
    ChunkHashMismatch,
    CorruptManifest,
    CorruptPayload,
    DecompressionBomb,
    OutOfRange,
    ResultMismatch,
    SourceMismatch,
    TruncatedBundle,
    UnsupportedVersion,
    apply_bundle,
    read_manifest,
)
from overdrive.bundle.codec import encode_control

from .conftest import binary_like, chunk_entry, identity, raw_bundle, roundtrip, sha, split_bundle

CS = 4096


def craft(
    tmp_path: Path,
    image: bytes,
    chunks: list[tuple[dict[str, Any], bytes]],
    *,
    source: bytes | None = None,
    name: str = "crafted.ovdb",
) -> Path:
    """A bundle whose chunk ``i`` covers image[i*CS:(i+1)*CS] with the given op fields/payload."""
    entries = []
    payload = b""
    for i, (fields, data) in enumerate(chunks):
        result = image[i * CS : (i + 1) * CS]
        entry = chunk_entry(fields.get("op", "raw"), result, i * CS, len(payload), len(data))
        entry.update(fields)
        entries.append(entry)
        payload += data
    manifest = {
        "hardware_id": "hw",
        "image": identity(image, "2"),
        "source": None if source is None else identity(source, "1"),
        "chunk_size": CS,
        "chunks": entries,
    }
    path = tmp_path / name
    path.write_bytes(raw_bundle(manifest, payload))
    return path


def write_source(tmp_path: Path, source: bytes) -> Path:
    path = tmp_path / "source.img"
    path.write_bytes(source)
    return path


@pytest.fixture
def valid(tmp_path: Path, rng: random.Random) -> tuple[Path, bytes]:
    data = binary_like(rng, 3 * CS + 100)
    rt = roundtrip(tmp_path, data, name="valid")
    return rt.bundle, data


@pytest.fixture
def valid_delta(tmp_path: Path, rng: random.Random) -> tuple[Path, Path, bytes]:
    old = binary_like(rng, 5 * CS)
    new = old[:CS] + rng.randbytes(100) + old[CS : 4 * CS] + b"tail"
    rt = roundtrip(tmp_path, new, old, name="vdelta")
    return rt.bundle, tmp_path / "vdelta.old.img", new


# --------------------------------------------------------------------------------------------
# Header


def test_bad_magic(tmp_path: Path, valid: tuple[Path, bytes]) -> None:
    data = bytearray(valid[0].read_bytes())
    data[0] ^= 0xFF
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    with pytest.raises(BadMagic):
        read_manifest(bad)
    with pytest.raises(BadMagic):
        apply_bundle(bad, tmp_path / "t")
    text = tmp_path / "text"
    text.write_bytes(b"hello")
    with pytest.raises(BadMagic):
        read_manifest(text)
    assert not (tmp_path / "t").exists()


def test_unsupported_version(tmp_path: Path, valid: tuple[Path, bytes]) -> None:
    manifest, payload = split_bundle(valid[0].read_bytes())
    for version in (0, 2, 65535):
        p = tmp_path / f"v{version}"
        p.write_bytes(raw_bundle(manifest, payload, version=version))
        with pytest.raises(UnsupportedVersion, match=str(version)):
            apply_bundle(p, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_truncated_at_every_cut_point(tmp_path: Path, valid: tuple[Path, bytes]) -> None:
    data = valid[0].read_bytes()
    for cut in range(len(data)):
        with pytest.raises(TruncatedBundle):
            read_manifest(io.BytesIO(data[:cut]))
    cut_file = tmp_path / "cut"
    for cut in random.Random(0).sample(range(len(data)), 40):
        cut_file.write_bytes(data[:cut])
        with pytest.raises(TruncatedBundle):
            apply_bundle(cut_file, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_trailing_bytes(tmp_path: Path, valid: tuple[Path, bytes]) -> None:
    p = tmp_path / "trailing"
    p.write_bytes(valid[0].read_bytes() + b"\x00")
    with pytest.raises(CorruptManifest, match="trailing"):
        read_manifest(p)


def test_manifest_hash_mismatch(tmp_path: Path, valid: tuple[Path, bytes]) -> None:
    manifest, payload = split_bundle(valid[0].read_bytes())
    p = tmp_path / "m"
    p.write_bytes(raw_bundle(manifest, payload, digest=b"\x00" * 32))
    with pytest.raises(CorruptManifest, match="sha256 mismatch"):
        apply_bundle(p, tmp_path / "t")
    # a changed manifest byte under the original digest
    data = bytearray(valid[0].read_bytes())
    data[20] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptManifest, match="sha256 mismatch"):
        read_manifest(p)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"a":1}',
        '{"hardware_id":"\u00e9"}'.encode(),
        b"[" * 100_000 + b"]" * 100_000,
        b'{"n":' + b"9" * 5000 + b"}",
    ],
)
def test_manifest_not_json_object(tmp_path: Path, body: bytes) -> None:
    p = tmp_path / "m"
    p.write_bytes(raw_bundle(body))
    with pytest.raises(CorruptManifest):
        read_manifest(p)


def test_manifest_not_canonical(tmp_path: Path, valid: tuple[Path, bytes]) -> None:
    manifest, payload = split_bundle(valid[0].read_bytes())
    p = tmp_path / "m"
    p.write_bytes(raw_bundle(json.dumps(manifest, indent=1).encode(), payload))
    with pytest.raises(CorruptManifest, match="canonical"):
        read_manifest(p)


def test_manifest_length_limits(tmp_path: Path) -> None:
    p = tmp_path / "m"
    p.write_bytes(MAGIC + b"\x00\x01\xff\xff\xff\xff")
    with pytest.raises(CorruptManifest, match="length"):
        read_manifest(p)
    p.write_bytes(MAGIC + b"\x00\x01\x00\x00\x10\x00" + b"{}")
    with pytest.raises(TruncatedBundle):
        read_manifest(p)


def _set(path: str, value: Any) -> Any:
    def mutate(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        obj: Any = m
        for key in parents:
            obj = obj[int(key)] if isinstance(obj, list) else obj[key]
        if value is _DELETE:
            del obj[last]
        elif isinstance(obj, list):
            obj[int(last)] = value
        else:
            obj[last] = value

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (_set("hardware_id", _DELETE), CorruptManifest),
        (_set("hardware_id", ""), CorruptManifest),
        (_set("hardware_id", "a\x00b"), CorruptManifest),
        (_set("hardware_id", 7), CorruptManifest),
        (_set("extra", 1), CorruptManifest),
        (_set("image.length", "12"), CorruptManifest),
        (_set("image.length", True), CorruptManifest),
        (_set("image.length", 1.5), CorruptManifest),
        (_set("image.length", -1), OutOfRange),
        (_set("image.length", 10**20), OutOfRange),
        (_set("image.sha256", "AB" * 32), CorruptManifest),
        (_set("image.sha256", "ab"), CorruptManifest),
        (_set("image.version", None), CorruptManifest),
        (_set("image", []), CorruptManifest),
        (_set("source", {"version": "1"}), CorruptManifest),
        (_set("chunk_size", 0), OutOfRange),
        (_set("chunk_size", 1 << 40), OutOfRange),
        (_set("chunks", {}), CorruptManifest),
        (_set("chunks.0", "x"), CorruptManifest),
        (_set("chunks.0.op", "lz4"), CorruptManifest),
        (_set("chunks.0.op", _DELETE), CorruptManifest),
        (_set("chunks.0.sha256", _DELETE), CorruptManifest),
        (_set("chunks.0.source_offset", 0), CorruptManifest),
        (_set("chunks.1.result_offset", 4095), OutOfRange),
        (_set("chunks.1.result_length", 4097), OutOfRange),
        (_set("chunks.3.result_length", 101), OutOfRange),
        (_set("chunks.1.payload_offset", 0), OutOfRange),
        (_set("image.length", 3 * CS + 99), OutOfRange),
        (_set("image.length", 5 * CS), OutOfRange),
        (lambda m: m["chunks"].pop(), OutOfRange),
        (lambda m: m["chunks"].append(copy.deepcopy(m["chunks"][-1])), OutOfRange),
        (_set("chunks.0.op", "copy"), CorruptManifest),
    ],
)
def test_manifest_validation(
    tmp_path: Path, valid: tuple[Path, bytes], mutate: Any, error: type[BundleError]
) -> None:
    manifest, payload = split_bundle(valid[0].read_bytes())
    mutate(manifest)
    p = tmp_path / "m"
    p.write_bytes(raw_bundle(manifest, payload))
    with pytest.raises(error):
        read_manifest(p)
    with pytest.raises(error):
        apply_bundle(p, tmp_path / "t")
    assert not (tmp_path / "t").exists()


# --------------------------------------------------------------------------------------------
# Op-specific ranges (manifest level)


def _delta_with(tmp_path: Path, fields: dict[str, Any], payload: bytes = b"") -> Path:
    source = bytes(range(256)) * 40  # 10240 bytes
    image = source[:CS]
    base: dict[str, Any] = (
        {"op": "copy", "source_offset": 0} if fields.get("op", "copy") == "copy" else {}
    )
    return craft(tmp_path, image, [({**base, **fields}, payload)], source=source)


@pytest.mark.parametrize(
    ("fields", "payload", "error"),
    [
        ({"source_offset": 10240 - CS + 1}, b"", OutOfRange),
        ({"source_offset": -1}, b"", OutOfRange),
        ({"op": "raw", "source_offset": 0}, b"", CorruptManifest),
        ({"op": "raw"}, b"x", OutOfRange),
        ({"op": "copy"}, b"x", OutOfRange),
        ({"op": "zstd_dict", "window": [[10000, 300]]}, b"x", OutOfRange),
        ({"op": "zstd_dict", "window": [[0, 100], [50, 100]]}, b"x", OutOfRange),
        ({"op": "zstd_dict", "window": [[100, 100], [0, 10]]}, b"x", OutOfRange),
        ({"op": "zstd_dict", "window": [[0, 0]]}, b"x", OutOfRange),
        ({"op": "zstd_dict", "window": []}, b"x", OutOfRange),
        ({"op": "zstd_dict", "window": [[0, 1]] * 17}, b"x", OutOfRange),
        ({"op": "zstd_dict", "window": [[0]]}, b"x", CorruptManifest),
        ({"op": "zstd_dict", "window": [[0, "1"]]}, b"x", CorruptManifest),
        ({"op": "zstd", "source_offset": None}, b"x", CorruptManifest),
        ({"op": "zstd"}, b"", OutOfRange),
        ({"op": "zstd"}, b"x" * 6000, OutOfRange),
    ],
)
def test_op_ranges(
    tmp_path: Path, fields: dict[str, Any], payload: bytes, error: type[BundleError]
) -> None:
    path = _delta_with(tmp_path, fields, payload)
    with pytest.raises(error):
        read_manifest(path)


def _bsdiff_fields(
    tuples: list[tuple[int, int, int]], diff: bytes, extra: bytes, window: list[list[int]]
) -> tuple[dict[str, Any], bytes]:
    control = encode_control(tuples)
    streams = [zstandard.ZstdCompressor().compress(s) for s in (control, diff, extra)]
    return (
        {
            "op": "bsdiff",
            "window": window,
            "control_length": len(streams[0]),
            "control_size": len(control),
            "diff_length": len(streams[1]),
            "diff_size": len(diff),
            "extra_length": len(streams[2]),
            "extra_size": len(extra),
        },
        b"".join(streams),
    )


def _apply_bsdiff(
    tmp_path: Path,
    tuples: list[tuple[int, int, int]],
    diff: bytes,
    extra: bytes,
    window: list[list[int]] | None = None,
) -> tuple[Path, Path]:
    source = bytes(range(256)) * 40
    image = bytes(CS)
    fields, payload = _bsdiff_fields(tuples, diff, extra, window or [[1000, 100]])
    bundle = craft(tmp_path, image, [(fields, payload)], source=source)
    return bundle, write_source(tmp_path, source)


def test_bsdiff_valid_crafted_stream_applies(tmp_path: Path) -> None:
    source = bytes(range(256)) * 40
    window = source[1000:1100]
    # result = window[0:100] + 3996 extra zero bytes; diff = result - window = zeros
    image = window + bytes(CS - 100)
    fields, payload = _bsdiff_fields(
        [(100, CS - 100, 0)], bytes(100), bytes(CS - 100), [[1000, 100]]
    )
    bundle = craft(tmp_path, image, [(fields, payload)], source=source)
    target = tmp_path / "t"
    apply_bundle(bundle, target, source=write_source(tmp_path, source))
    assert target.read_bytes() == image


@pytest.mark.parametrize(
    ("tuples", "diff_size", "error", "match"),
    [
        ([(50, CS - 50, 60)], 50, OutOfRange, None),  # a trailing seek is harmless ...
        ([(101, CS - 101, 0)], 101, OutOfRange, "outside the 100-byte source window"),
        ([(0, 10, -5), (10, CS - 20, 0)], 10, OutOfRange, "outside"),
        ([(0, 0, 95), (10, CS - 10, 0)], 10, OutOfRange, "outside"),
        ([(10, CS, 0)], 10, OutOfRange, "past the 4096-byte chunk"),
        ([(-1, CS, 0)], 0, OutOfRange, "negative"),
        ([(60, CS - 60, 0)], 50, OutOfRange, "past the diff"),
        ([(10, 10, 0)], 10, CorruptPayload, "produces 20 bytes"),
    ],
)
def test_bsdiff_hostile_control(
    tmp_path: Path,
    tuples: list[tuple[int, int, int]],
    diff_size: int,
    error: type[BundleError],
    match: str | None,
) -> None:
    if match is None:  # control case: valid stream; a trailing seek outside the window is fine
        bundle, source = _apply_bsdiff(tmp_path, tuples, bytes(diff_size), bytes(CS - diff_size))
        with pytest.raises(ChunkHashMismatch):  # the crafted image is zeros; result is not
            apply_bundle(bundle, tmp_path / "t", source=source)
        return
    bundle, source = _apply_bsdiff(tmp_path, tuples, bytes(diff_size), bytes(CS - diff_size))
    target = tmp_path / "t"
    with pytest.raises(error, match=match):
        apply_bundle(bundle, target, source=source)
    assert target.stat().st_size == 0  # nothing was written


def test_bsdiff_stream_sizes(tmp_path: Path) -> None:
    fields, payload = _bsdiff_fields(
        [(100, CS - 100, 0)], bytes(100), bytes(CS - 100), [[1000, 100]]
    )
    source = bytes(range(256)) * 40
    for change, error in (
        ({"control_size": 25}, OutOfRange),
        ({"control_size": 24 * 1000}, OutOfRange),
        ({"diff_size": 99}, OutOfRange),
        ({"control_length": fields["control_length"] + 1}, OutOfRange),
    ):
        bundle = craft(tmp_path, bytes(CS), [({**fields, **change}, payload)], source=source)
        with pytest.raises(error):
            read_manifest(bundle)
    # control stream that decodes to more than declared
    control = encode_control([(100, CS - 100, 0), (0, 0, 0)])
    zc = zstandard.ZstdCompressor(write_content_size=False).compress(control)
    streams = payload[fields["control_length"] :]
    f2 = {**fields, "control_length": len(zc)}
    bundle = craft(tmp_path, bytes(CS), [(f2, zc + streams)], source=source)
    with pytest.raises(DecompressionBomb):
        apply_bundle(bundle, tmp_path / "t", source=write_source(tmp_path, source))


# --------------------------------------------------------------------------------------------
# Payloads


def test_chunk_hash_mismatch_payload(tmp_path: Path, rng: random.Random) -> None:
    image = rng.randbytes(2 * CS)
    bundle = craft(tmp_path, image, [({}, image[:CS]), ({}, image[CS:])])
    data = bytearray(bundle.read_bytes())
    data[-10] ^= 0x40  # inside chunk 1's raw payload
    bundle.write_bytes(bytes(data))
    target = tmp_path / "t"
    with pytest.raises(ChunkHashMismatch, match=r"chunk 1 \(image bytes 4096-8192\)"):
        apply_bundle(bundle, target)
    assert target.read_bytes() == image[:CS]  # chunk 0 verified and written, chunk 1 never


def test_chunk_hash_mismatch_manifest(tmp_path: Path, valid: tuple[Path, bytes]) -> None:
    manifest, payload = split_bundle(valid[0].read_bytes())
    manifest["chunks"][2]["sha256"] = sha(b"something else")
    p = tmp_path / "m"
    p.write_bytes(raw_bundle(manifest, payload))
    with pytest.raises(ChunkHashMismatch, match="chunk 2"):
        apply_bundle(p, tmp_path / "t")


@pytest.mark.parametrize("content_size", [True, False])
def test_decompression_bomb(tmp_path: Path, content_size: bool) -> None:
    image = bytes(CS)
    bomb = zstandard.ZstdCompressor(level=19, write_content_size=content_size).compress(
        bytes(64 * 1024 * 1024)
    )
    assert len(bomb) < CS
    bundle = craft(tmp_path, image, [({"op": "zstd"}, bomb)])
    target = tmp_path / "t"
    with pytest.raises(DecompressionBomb):
        apply_bundle(bundle, target)
    assert target.stat().st_size == 0


def test_zstd_frame_needing_huge_window(tmp_path: Path) -> None:
    data = bytes(CS)
    params = zstandard.ZstdCompressionParameters.from_level(
        3, window_log=27, write_content_size=False
    )
    buf = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(buf, closefd=False) as w:
        w.write(data)  # streamed: size unknown, so the 128 MiB window is kept in the header
    frame = buf.getvalue()
    assert zstandard.get_frame_parameters(frame).window_size == 1 << 27
    bundle = craft(tmp_path, data, [({"op": "zstd"}, frame)])
    with pytest.raises(DecompressionBomb, match="window"):
        apply_bundle(bundle, tmp_path / "t")


@pytest.mark.parametrize(
    "payload",
    [
        b"not zstd at all",
        zstandard.ZstdCompressor().compress(bytes(CS - 1)),  # declares too few bytes
        zstandard.ZstdCompressor(write_content_size=False).compress(bytes(CS - 1)),  # short
        zstandard.ZstdCompressor().compress(bytes(CS))[:-3],  # cut frame
        zstandard.ZstdCompressor().compress(bytes(CS)) + b"\x00",  # trailing byte
        zstandard.ZstdCompressor().compress(bytes(CS)) + zstandard.ZstdCompressor().compress(b""),
        b"\x50\x2a\x4d\x18\x00\x00\x00\x00" + zstandard.ZstdCompressor().compress(bytes(CS)),
    ],
)
def test_corrupt_zstd_payload(tmp_path: Path, payload: bytes) -> None:
    bundle = craft(tmp_path, bytes(CS), [({"op": "zstd"}, payload)])
    with pytest.raises(CorruptPayload):
        apply_bundle(bundle, tmp_path / "t")


def test_never_writes_past_declared_length(tmp_path: Path, rng: random.Random) -> None:
    """Chunks that claim bytes beyond image.length are refused before the target is opened."""
    image = rng.randbytes(CS + 10)
    bundle = craft(tmp_path, image, [({}, image[:CS]), ({}, image[CS:])])
    manifest, payload = split_bundle(bundle.read_bytes())
    manifest["image"]["length"] = CS + 5
    bundle.write_bytes(raw_bundle(manifest, payload))
    target = tmp_path / "t"
    with pytest.raises(OutOfRange):
        apply_bundle(bundle, target)
    assert not target.exists()
    # the same bundle with a regular, larger target: truncated to exactly image.length
    good = craft(tmp_path, image, [({}, image[:CS]), ({}, image[CS:])], name="good")
    target.write_bytes(b"\xaa" * (3 * CS))
    apply_bundle(good, target)
    assert target.read_bytes() == image


# --------------------------------------------------------------------------------------------
# Source and result identity


def test_source_mismatch(tmp_path: Path, valid_delta: tuple[Path, Path, bytes]) -> None:
    bundle, source, _ = valid_delta
    target = tmp_path / "t"
    with pytest.raises(SourceMismatch, match="no source image"):
        apply_bundle(bundle, target)
    wrong = tmp_path / "wrong"
    data = bytearray(source.read_bytes())
    data[-1] ^= 1
    wrong.write_bytes(bytes(data))
    with pytest.raises(SourceMismatch, match="sha256"):
        apply_bundle(bundle, target, source=wrong)
    wrong.write_bytes(bytes(data[:-1]))
    with pytest.raises(SourceMismatch, match="bytes"):
        apply_bundle(bundle, target, source=wrong)
    assert not target.exists()
    with pytest.raises(BundleError, match="cannot read source"):
        apply_bundle(bundle, target, source=tmp_path / "missing")


def test_result_mismatch(tmp_path: Path, valid: tuple[Path, bytes]) -> None:
    manifest, payload = split_bundle(valid[0].read_bytes())
    manifest["image"]["sha256"] = sha(b"other")
    p = tmp_path / "m"
    p.write_bytes(raw_bundle(manifest, payload))
    with pytest.raises(ResultMismatch):
        apply_bundle(p, tmp_path / "t")


def test_target_cannot_be_source_or_bundle(
    tmp_path: Path, valid_delta: tuple[Path, Path, bytes]
) -> None:
    bundle, source, _ = valid_delta
    before = source.read_bytes()
    with pytest.raises(BundleError, match="source image"):
        apply_bundle(bundle, source, source=source)
    assert source.read_bytes() == before
    with pytest.raises(BundleError, match="bundle itself"):
        apply_bundle(bundle, bundle, source=source)


def test_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="cannot read bundle"):
        apply_bundle(tmp_path / "nope", tmp_path / "t")
    with pytest.raises(BundleError, match="cannot read bundle"):
        read_manifest(tmp_path / "nope")


def test_zstd_frame_length_walks_real_frames(rng: random.Random) -> None:
    from overdrive.bundle.codec import zstd_frame_length

    samples = [b"", b"a" * 1000, rng.randbytes(300_000), bytes(500_000), b"abc" * 100_000]
    for level in (-5, 1, 19):
        for data in samples:
            for checksum, content_size in ((False, True), (True, True), (False, False)):
                frame = zstandard.ZstdCompressor(
                    level=level, write_checksum=checksum, write_content_size=content_size
                ).compress(data)
                assert zstd_frame_length(frame) == len(frame)
                assert zstd_frame_length(frame[:-1]) is None
    buf = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(buf, closefd=False) as w:
        w.write(rng.randbytes(400_000))
    assert zstd_frame_length(buf.getvalue()) == len(buf.getvalue())

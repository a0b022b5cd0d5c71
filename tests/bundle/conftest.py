"""Shared helpers for bundle tests: synthetic images and hand-crafted (hostile) bundles."""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overdrive.bundle import MAGIC, Manifest, apply_bundle, encode_bundle

SMALL_CHUNK = 4096


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def raw_bundle(
    manifest: dict[str, Any] | bytes,
    payload: bytes = b"",
    *,
    magic: bytes = MAGIC,
    version: int = 1,
    digest: bytes | None = None,
) -> bytes:
    """Bytes of a bundle with exactly this manifest and payload, valid or not (no validation)."""
    body = manifest if isinstance(manifest, bytes) else canonical(manifest)
    digest = hashlib.sha256(body).digest() if digest is None else digest
    return magic + struct.pack(">HI", version, len(body)) + body + digest + payload


def split_bundle(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(manifest dict, payload area) of a valid bundle's bytes."""
    (length,) = struct.unpack(">I", data[10:14])
    return json.loads(data[14 : 14 + length]), data[14 + length + 32 :]


def identity(data: bytes, version: str = "v") -> dict[str, Any]:
    return {"version": version, "sha256": sha(data), "length": len(data)}


def chunk_entry(
    op: str,
    result: bytes,
    result_offset: int,
    payload_offset: int,
    payload_length: int,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "op": op,
        "result_offset": result_offset,
        "result_length": len(result),
        "sha256": sha(result),
        "payload_offset": payload_offset,
        "payload_length": payload_length,
        **extra,
    }


def binary_like(rng: random.Random, size: int) -> bytes:
    """Something shaped like firmware: code-ish words, string tables, zero padding."""
    out = bytearray()
    words = [rng.randbytes(4) for _ in range(64)]
    while len(out) < size:
        kind = rng.random()
        if kind < 0.5:
            out += b"".join(
                rng.choice(words) + struct.pack("<I", rng.randrange(1 << 16))
                for _ in range(rng.randrange(8, 200))
            )
        elif kind < 0.8:
            out += b"\x00".join(
                b"symbol_%d_%s" % (rng.randrange(10000), rng.choice([b"init", b"run", b"stop"]))
                for _ in range(rng.randrange(4, 40))
            )
        elif kind < 0.9:
            out += bytes(rng.randrange(16, 512))
        else:
            out += rng.randbytes(rng.randrange(16, 256))
    return bytes(out[:size])


def evolve(
    rng: random.Random,
    old: bytes,
    *,
    inserts: int = 3,
    deletes: int = 3,
    moves: int = 1,
    flips: int = 20,
) -> bytes:
    """A "next build" of ``old``: inserted, deleted and moved regions and scattered byte changes."""
    new = bytearray(old)
    for _ in range(inserts):
        p = rng.randrange(len(new) + 1)
        new[p:p] = rng.randbytes(rng.randrange(1, 300))
    for _ in range(deletes):
        if len(new) > 1000:
            p = rng.randrange(len(new) - 500)
            del new[p : p + rng.randrange(1, 500)]
    for _ in range(moves):
        if len(new) > 4000:
            n = rng.randrange(500, len(new) // 4)
            p = rng.randrange(len(new) - n)
            block = new[p : p + n]
            del new[p : p + n]
            q = rng.randrange(len(new) + 1)
            new[q:q] = block
    for _ in range(flips):
        if new:
            p = rng.randrange(len(new))
            new[p] = (new[p] + rng.randrange(1, 256)) % 256
    return bytes(new)


def text_tar(rng: random.Random, files: int = 40, changed: int = 0) -> bytes:
    """A tar of text files; with ``changed`` > 0, that many files edited slightly (same seed)."""
    buf = io.BytesIO()
    edit = random.Random(rng.random())
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(files):
            lines = [
                f"line {j} of file {i}: value={(i * 7919 + j * 104729) % 100003}\n"
                for j in range(80 + i)
            ]
            if i < changed:
                lines[edit.randrange(len(lines))] = "this line was changed in the new release\n"
            data = "".join(lines).encode()
            info = tarfile.TarInfo(f"etc/app/file{i:03d}.conf")
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Roundtrip:
    manifest: Manifest
    bundle: Path
    size: int


def roundtrip(
    tmp_path: Path,
    new: bytes,
    old: bytes | None = None,
    *,
    chunk_size: int = SMALL_CHUNK,
    jobs: int = 1,
    level: int = 3,
    name: str = "b",
) -> Roundtrip:
    """Encode ``new`` (as a delta from ``old`` if given), apply it, assert the image is identical."""
    image = tmp_path / f"{name}.new.img"
    image.write_bytes(new)
    source = None
    if old is not None:
        source = tmp_path / f"{name}.old.img"
        source.write_bytes(old)
    bundle = tmp_path / f"{name}.ovdb"
    manifest = encode_bundle(
        image,
        bundle,
        hardware_id="ecu-test",
        version="2.0",
        source=source,
        source_version=None if source is None else "1.0",
        chunk_size=chunk_size,
        level=level,
        jobs=jobs,
    )
    target = tmp_path / f"{name}.target.img"
    applied = apply_bundle(bundle, target, source=source)
    assert applied == manifest
    assert target.read_bytes() == new
    return Roundtrip(manifest, bundle, bundle.stat().st_size)


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    return random.Random(request.node.nodeid)

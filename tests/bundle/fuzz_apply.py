"""libFuzzer (atheris) harness for the bundle decoder: ``python fuzz_apply.py CORPUS -runs=N``.

Every input is written as a bundle file and applied (delta inputs against the source image in
``$OVD_FUZZ_WORK``). Any exception other than BundleError is a finding. The first input byte
selects a mode: odd means "fix up the manifest sha256 first", so the fuzzer can get past the hash
and into manifest parsing, validation and the payload decoders.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from overdrive.bundle import BundleError, apply_bundle

WORK = Path(os.environ["OVD_FUZZ_WORK"])
BUNDLE = WORK / "input.ovdb"
TARGET = WORK / "target.img"
SOURCE = WORK / "source.img"


def fix_hash(data: bytes) -> bytes:
    if len(data) < 14:
        return data
    (length,) = struct.unpack(">I", data[10:14])
    end = 14 + length
    if end + 32 > len(data):
        return data
    return data[:end] + hashlib.sha256(data[14:end]).digest() + data[end + 32 :]


def test_one_input(raw: bytes) -> None:
    if not raw:
        return
    mode, data = raw[0], raw[1:]
    if mode & 1:
        data = fix_hash(data)
    BUNDLE.write_bytes(data)
    try:
        apply_bundle(BUNDLE, TARGET, source=SOURCE)
    except BundleError as e:
        if "\n" in str(e):
            raise AssertionError(f"multi-line error message: {e!r}") from e


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

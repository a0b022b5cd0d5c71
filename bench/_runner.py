"""Child process of the delta benchmark: run one encoder or decoder, report its wall time.

Run as ``python bench/_runner.py TASK SPEC_JSON``. Each measurement gets a fresh interpreter so
that the peak RSS the parent observes (``wait4`` plus sampling of the process tree, see
``_measure.py``) belongs to this workload alone. Imports happen before the clock starts; the
wall time of the workload itself is printed as JSON on stdout (``{"wall_s": ...}``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    """Outputs are always written fresh (the bundle decoder never truncates its target first)."""
    path.unlink(missing_ok=True)


def _overdrive_encode(spec: dict[str, Any]) -> float:
    from overdrive.bundle import encode_bundle

    out = Path(spec["out"])
    _remove(out)
    source = spec.get("source")
    start = time.perf_counter()
    encode_bundle(
        Path(spec["image"]),
        out,
        hardware_id="bench-x86_64",
        version=spec["version"],
        source=None if source is None else Path(source),
        source_version=spec.get("source_version"),
        chunk_size=int(spec["chunk_size"]),
        level=int(spec["level"]),
        jobs=int(spec["jobs"]),
    )
    return time.perf_counter() - start


def _overdrive_apply(spec: dict[str, Any]) -> float:
    from overdrive.bundle import apply_bundle

    target = Path(spec["target"])
    _remove(target)
    source = spec.get("source")
    start = time.perf_counter()
    apply_bundle(Path(spec["bundle"]), target, source=None if source is None else Path(source))
    return time.perf_counter() - start


def _bsdiff4_diff(spec: dict[str, Any]) -> float:
    import bsdiff4

    _remove(Path(spec["patch"]))
    start = time.perf_counter()
    bsdiff4.file_diff(spec["old"], spec["new"], spec["patch"])
    return time.perf_counter() - start


def _bsdiff4_patch(spec: dict[str, Any]) -> float:
    import bsdiff4

    _remove(Path(spec["target"]))
    start = time.perf_counter()
    bsdiff4.file_patch(spec["old"], spec["target"], spec["patch"])
    return time.perf_counter() - start


def _chunk_op(spec: dict[str, Any]) -> float:
    """Diagnostic: one delta op of Overdrive's encoder on one chunk, as the encoder sets it up.

    Builds the source index, votes the chunk's alignments and reads its source window the way
    ``overdrive.bundle.encoder`` does, then times only ``spec["op"]``: ``none`` (setup only, the
    memory baseline), ``bsdiff`` (the BSDIFF op: the encoder's matcher + zstd of the three streams),
    ``bsdiff-core`` (``bsdiff4.core.diff`` alone, the fallback without numpy) or ``zstd_dict-N`` (zstd level N, window as dictionary).
    Uses codec internals, so it may break when they change; the benchmark then says so.
    """
    from overdrive.bundle import codec
    from overdrive.bundle.format import MAX_WINDOW_EXTENTS, WINDOW_FACTOR
    from overdrive.bundle.index import SourceIndex, plan_window

    chunk_size, index_no, op = int(spec["chunk_size"]), int(spec["chunk"]), str(spec["op"])
    src = os.open(spec["old"], os.O_RDONLY)
    img = os.open(spec["new"], os.O_RDONLY)
    try:
        length = os.fstat(src).st_size
        offset = index_no * chunk_size
        data = os.pread(img, chunk_size, offset)
        index = SourceIndex.build(src, length)
        extents = plan_window(
            chunk_offset=offset,
            chunk_length=len(data),
            source_length=length,
            alignments=index.align(data, offset),
            budget=WINDOW_FACTOR * len(data),
            max_extents=MAX_WINDOW_EXTENTS,
        )
        window = b"".join(os.pread(src, n, o) for o, n in extents)
    finally:
        os.close(src)
        os.close(img)
    del index
    start = time.perf_counter()
    size = 0
    if op == "bsdiff":
        payload = codec.encode_bsdiff(window, data, int(spec["level"]))
        size = -1 if payload is None else len(payload.payload)
    elif op == "bsdiff-core":
        import bsdiff4.core

        size = sum(len(s) for s in bsdiff4.core.diff(window, data))
    elif op.startswith("zstd_dict-"):
        size = len(codec.encode_zstd(data, int(op.split("-")[1]), window))
    elif op != "none":
        raise ValueError(f"unknown op {op}")
    wall = time.perf_counter() - start
    sys.stdout.write(json.dumps({"size": size, "window": len(window)}) + "\n")
    return wall


TASKS = {
    "overdrive-encode": _overdrive_encode,
    "overdrive-apply": _overdrive_apply,
    "bsdiff4-diff": _bsdiff4_diff,
    "bsdiff4-patch": _bsdiff4_patch,
    "chunk-op": _chunk_op,
}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in TASKS:
        print(f"usage: {argv[0]} {{{','.join(TASKS)}}} SPEC_JSON", file=sys.stderr)
        return 2
    wall = TASKS[argv[1]](json.loads(argv[2]))
    sys.stdout.write(json.dumps({"wall_s": wall, "pid": os.getpid()}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

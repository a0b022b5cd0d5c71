"""Delta benchmark: Overdrive's chunked delta against whole-file bsdiff4 and zstd --patch-from.

For each image pair (see ``_data.py``) and each method this measures, in one run on one machine:
patch size, encode wall time and peak RSS, apply wall time, throughput and peak RSS. Every
encoder and decoder runs in a fresh subprocess (``_runner.py`` for the Python ones, the zstd CLI
directly) measured by ``_measure.py``; every applied output is checked byte for byte (sha256)
against the new image. Results and the goals table are written to ``BENCHMARKS.md``.

    .venv/bin/python bench/deltas.py                 # full run (make bench-deltas)
    .venv/bin/python bench/deltas.py --quick         # smoke run: small pairs, one repetition
    .venv/bin/python bench/deltas.py --pairs ruff,numpy --reps 5 --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import pickle
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import _data
import _measure
import benchmarks_md
from _analysis import CODEC_NOTES, INPUT_NOTES, Verdict, analysis_for, evaluate_goals
from _model import (
    BSDIFF4,
    FULL,
    METHODS,
    OVERDRIVE,
    ZSTD_PATCH,
    ChunkOp,
    Method,
    PairResult,
    Result,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
RUNNER = HERE / "_runner.py"
LAST_RUN = CACHE / "last-run.pickle"
ZSTD = "/usr/bin/zstd"
MiB = 1 << 20

CHUNK_SIZE = 4 * MiB
LEVEL = 19
ALL_PAIRS = ("ruff", "numpy", "rootfs", "big")
SMALL_PAIRS = ("ruff", "numpy")


# --------------------------------------------------------------------------------------------
# Running


def _log(msg: str) -> None:
    print(msg, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def _python(task: str, spec: dict[str, object]) -> _measure.Sample:
    return _measure.run(
        [sys.executable, str(RUNNER), task, json.dumps(spec)], child_reports_wall=True
    )


def _encode(method: Method, pair: _data.Pair, patch: Path, jobs: int) -> _measure.Sample:
    if method in (OVERDRIVE, FULL):
        spec: dict[str, object] = {
            "image": str(pair.new),
            "out": str(patch),
            "version": pair.new_version,
            "chunk_size": CHUNK_SIZE,
            "level": LEVEL,
            "jobs": jobs,
        }
        if method is OVERDRIVE:
            spec |= {"source": str(pair.old), "source_version": pair.old_version}
        return _python("overdrive-encode", spec)
    if method is BSDIFF4:
        spec = {"old": str(pair.old), "new": str(pair.new), "patch": str(patch)}
        return _python("bsdiff4-diff", spec)
    patch.unlink(missing_ok=True)
    return _measure.run(
        [
            ZSTD,
            "-q",
            "-f",
            f"-{LEVEL}",
            "--long=31",
            f"--patch-from={pair.old}",
            str(pair.new),
            "-o",
            str(patch),
        ]
    )


def _apply(method: Method, pair: _data.Pair, patch: Path, out: Path) -> _measure.Sample:
    if method in (OVERDRIVE, FULL):
        spec: dict[str, object] = {"bundle": str(patch), "target": str(out)}
        if method is OVERDRIVE:
            spec["source"] = str(pair.old)
        return _python("overdrive-apply", spec)
    if method is BSDIFF4:
        return _python(
            "bsdiff4-patch", {"old": str(pair.old), "patch": str(patch), "target": str(out)}
        )
    out.unlink(missing_ok=True)
    # --long=31 on decompression also raises the window limit to 2 GiB, so --memory is not needed.
    return _measure.run(
        [
            ZSTD,
            "-q",
            "-f",
            "-d",
            "--long=31",
            f"--patch-from={pair.old}",
            str(patch),
            "-o",
            str(out),
        ]
    )


def _op_mix(bundle: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Chunks and payload bytes per op, and each chunk's op, from the bundle's manifest."""
    from overdrive.bundle import read_manifest

    mix: dict[str, tuple[int, int]] = {}
    ops: list[str] = []
    for c in read_manifest(bundle).chunks:
        n, size = mix.get(c.op.value, (0, 0))
        mix[c.op.value] = (n + 1, size + c.payload_length)
        ops.append(c.op.value)
    return mix, ops


PROFILE_OPS = ("none", "bsdiff-core", "bsdiff", f"zstd_dict-{LEVEL}", "zstd_dict-12", "zstd_dict-6")


def profile_chunks(pr: PairResult) -> None:
    """Diagnostic: run each of the encoder's delta ops alone on two of the pair's BSDIFF chunks
    (first and middle), in fresh processes, to show where encode time and memory go."""
    od = pr.results.get(OVERDRIVE.key)
    if od is None:
        return
    chunks = [i for i, op in enumerate(od.chunk_ops) if op == "bsdiff"]
    picked = sorted({chunks[0], chunks[len(chunks) // 2]}) if chunks else []
    for i in picked:
        for op in PROFILE_OPS:
            _log(f"  [{pr.pair.name}] diagnostic: chunk {i}, {op}")
            spec = {
                "old": str(pr.pair.old),
                "new": str(pr.pair.new),
                "chunk": i,
                "chunk_size": CHUNK_SIZE,
                "level": LEVEL,
                "op": op,
            }
            try:
                s = _python("chunk-op", spec)
                info = json.loads(s.output.strip().splitlines()[0])
            except (_measure.MeasureError, ValueError, IndexError, KeyError) as e:
                pr.profile_error = str(e).strip().splitlines()[-1]
                _log(f"      diagnostic unavailable: {pr.profile_error}")
                return
            pr.profile.append(
                ChunkOp(i, op, s.wall_s, s.peak_rss, int(info["size"]), int(info["window"]))
            )


def _bg(s: _measure.Sample) -> str:
    return (
        f"  [other processes used {s.background_cores:.2f} cores]"
        if s.background_cores > 0.1
        else ""
    )


def _mib(n: float) -> str:
    return f"{n / MiB:.1f}"


def _plan(pair: str, reps: int) -> dict[Method, tuple[int, int]]:
    """(encode reps, apply reps) per method for ``pair``."""
    if pair == "big":
        # The point here is Overdrive's apply memory and throughput at 1 GiB; whole-file bsdiff4
        # would need ~18 GiB for its suffix sort, and zstd -19 --patch-from takes many minutes.
        return {OVERDRIVE: (1, reps), FULL: (1, reps)}
    if pair == "rootfs":
        # Whole-file bsdiff4 and zstd -19 take minutes here: encode once, apply `reps` times.
        return {
            OVERDRIVE: (reps, reps),
            BSDIFF4: (1, reps),
            ZSTD_PATCH: (1, reps),
            FULL: (reps, reps),
        }
    return dict.fromkeys(METHODS, (reps, reps))


SKIPPED_BIG = {
    BSDIFF4.key: "skipped: whole-file bsdiff4 keeps both files plus two 8-byte-per-byte suffix "
    "arrays in memory (~18 bytes per image byte: ~18 GiB of this machine's RAM for 1 GiB), and "
    "its O(n log n) suffix sort would take several times as long as on the rootfs pair",
    ZSTD_PATCH.key: "skipped: not a goal for this pair; zstd -19 --patch-from over a 1 GiB "
    "dictionary would take many minutes",
}


def run_pair(pair: _data.Pair, reps: int, jobs: int) -> PairResult:
    work = CACHE / "work" / pair.name
    work.mkdir(parents=True, exist_ok=True)
    new_sha = _sha256(pair.new)
    plan = _plan(pair.name, reps)
    results = {m.key: Result(m, *plan[m]) for m in METHODS if m in plan}
    skipped = SKIPPED_BIG if pair.name == "big" else {}
    for rep in range(max(max(e, a) for e, a in plan.values())):
        for method in (m for m in METHODS if m in plan):
            r = results[method.key]
            patch = work / f"{method.key}.patch"
            out = work / f"{method.key}.out"
            if rep < r.encode_reps:
                _log(f"  [{pair.name}] {method.label}: encode (rep {rep + 1}/{r.encode_reps})")
                s = _encode(method, pair, patch, jobs)
                r.encode.append(s)
                r.sizes.add(patch.stat().st_size)
                r.size = patch.stat().st_size
                _log(
                    f"      {r.size:,} bytes, {s.wall_s:.2f} s, peak RSS {_mib(s.peak_rss)} MiB "
                    f"({s.processes} process(es)){_bg(s)}"
                )
                if method in (OVERDRIVE, FULL) and r.ops is None:
                    r.ops, r.chunk_ops = _op_mix(patch)
            if rep < r.apply_reps:
                _log(f"  [{pair.name}] {method.label}: apply (rep {rep + 1}/{r.apply_reps})")
                s = _apply(method, pair, patch, out)
                digest = _sha256(out)
                out.unlink()
                if digest != new_sha:
                    raise SystemExit(
                        f"{method.label} on {pair.name}: applied output sha256 {digest} "
                        f"!= new image {new_sha}"
                    )
                r.apply.append(s)
                _log(
                    f"      {s.wall_s:.2f} s, {pair.new.stat().st_size / s.wall_s / 1e6:.0f} MB/s, "
                    f"peak RSS {_mib(s.peak_rss)} MiB, output verified{_bg(s)}"
                )
    for r in results.values():
        (work / f"{r.method.key}.patch").unlink(missing_ok=True)
    return PairResult(
        pair, pair.old.stat().st_size, pair.new.stat().st_size, new_sha, results, skipped
    )


# --------------------------------------------------------------------------------------------
# Environment


def _cmd_output(argv: Sequence[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as e:
        return f"unavailable ({e})"
    return (p.stdout + p.stderr).strip()


def _machine() -> dict[str, str]:
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        info["cpu"] = (
            f"{fields.get('model name', '?')} (vendor {fields.get('vendor_id', '?')}, "
            f"family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
        )
    info["nproc"] = str(os.cpu_count())
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram"] = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    info["os"] = f"{platform.system()} {platform.release()} ({platform.machine()})"
    return info


def codec_fingerprint() -> str:
    """sha256 (first 12 hex digits) of the bundle codec's sources, to tell which codec ran."""
    h = hashlib.sha256()
    for path in sorted((REPO / "overdrive" / "bundle").glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def _versions(fingerprint: str) -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    import zstandard

    commit = _cmd_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _cmd_output(["git", "-C", str(REPO), "status", "--porcelain", "--", "overdrive"])
    zstd_cli = _cmd_output([ZSTD, "--version"]).splitlines()
    mke2fs = _cmd_output([_data.MKE2FS, "-V"]).splitlines()
    return {
        "python": platform.python_version(),
        "overdrive": f"{dist('overdrive')} (git {commit}"
        + (", with uncommitted changes under overdrive/" if dirty else "")
        + f"; codec sources `overdrive/bundle/*.py` sha256 {fingerprint}…)",
        "bsdiff4": dist("bsdiff4"),
        "zstandard": f"{dist('zstandard')} (libzstd {zstandard.ZSTD_VERSION[0]}."
        f"{zstandard.ZSTD_VERSION[1]}.{zstandard.ZSTD_VERSION[2]})",
        "zstd CLI": zstd_cli[0].strip("* ") if zstd_cli else "?",
        "mke2fs": mke2fs[0] if mke2fs else "?",
    }


# --------------------------------------------------------------------------------------------
# Report


def _fmt_s(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def _pair_table(pr: PairResult) -> list[str]:
    base = pr.results.get(BSDIFF4.key)
    lines = [
        "| method | patch bytes | patch MiB | × bsdiff4 | encode s | encode CPU s "
        "| encode peak RSS MiB | apply s | apply MB/s | apply peak RSS MiB | reps (enc/apply) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in METHODS:
        r = pr.results.get(m.key)
        if r is None:
            reason = pr.skipped.get(m.key)
            if reason:
                lines.append(f"| {m.label} | — | — | — | — | — | — | — | — | — | {reason} |")
            continue
        ratio = f"{r.size / base.size:.3f}" if base else "—"
        apply_s = r.median("apply", "wall_s")
        lines.append(
            f"| {m.label} | {r.size:,} | {_mib(r.size)} | {ratio} "
            f"| {_fmt_s(r.median('encode', 'wall_s'))} | {_fmt_s(r.median('encode', 'cpu_s'))} "
            f"| {_mib(r.median('encode', 'peak_rss'))} "
            f"| {_fmt_s(apply_s)} | {pr.new_size / apply_s / 1e6:.0f} "
            f"| {_mib(r.median('apply', 'peak_rss'))} | {r.encode_reps}/{r.apply_reps} |"
        )
    return lines


def _profile_table(pr: PairResult) -> list[str]:
    if pr.profile_error:
        return ["", f"Per-op chunk diagnostic unavailable: `{pr.profile_error}`."]
    if not pr.profile:
        return []
    lines = [
        "",
        f"Diagnostic: each delta op of the encoder run alone (at fixed zstd levels, without the "
        "encoder's cheap-level trials), in a fresh process, on single "
        f"{CHUNK_SIZE // MiB} MiB chunks of this pair (window as the encoder plans it; `none` is "
        "the setup alone: interpreter, source index, chunk and window). One process, one core:",
        "",
        "| chunk | op | wall s | peak RSS MiB | over `none` MiB | payload bytes |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    base = {c.chunk: c.peak_rss for c in pr.profile if c.op == "none"}
    for c in pr.profile:
        label = {
            "bsdiff": "BSDIFF op (matcher + zstd of 3 streams)",
            "bsdiff-core": "`bsdiff4.core.diff` alone (the fallback without numpy)",
        }
        extra = max(0, c.peak_rss - base.get(c.chunk, c.peak_rss))
        lines.append(
            f"| {c.chunk} | {label.get(c.op, c.op)}{' (window ' + _mib(c.window) + ' MiB)' if c.op == 'none' else ''} "
            f"| {c.wall_s:.2f} | {_mib(c.peak_rss)} | {_mib(extra)} "
            f"| {c.payload:,} |"
        )
    return lines


def _op_line(label: str, ops: dict[str, tuple[int, int]] | None) -> str:
    if not ops:
        return ""
    parts = [f"{op} × {n} ({size:,} B)" for op, (n, size) in sorted(ops.items())]
    return f"{label} chunks by op (payload bytes): " + ", ".join(parts) + "."


def render(
    pairs: list[PairResult],
    verdicts: list[Verdict],
    argv: Sequence[str],
    started: dt.datetime,
    elapsed: float,
    jobs: int,
    fingerprint: str,
) -> str:
    machine = _machine()
    versions = _versions(fingerprint)
    samples = [x for pr in pairs for r in pr.results.values() for x in (*r.encode, *r.apply)]
    busy = max(samples, key=lambda x: x.background_cores) if samples else None
    mean_bg = (
        sum(x.background_cores * x.wall_s for x in samples) / sum(x.wall_s for x in samples)
        if samples
        else 0.0
    )
    cmd = ".venv/bin/python bench/deltas.py" + ("".join(f" {shlex.quote(a)}" for a in argv))
    out = [
        "# Delta benchmark",
        "",
        "<!-- Generated by bench/deltas.py; do not edit by hand, re-run it. -->",
        "",
        f"Reproduce: `{cmd}`" + (" (= `make bench-deltas`)" if not argv else "") + ".",
        f"Run on {started:%Y-%m-%d %H:%M} UTC; the whole run took {elapsed / 60:.1f} min.",
        "",
        "## Machine and versions",
        "",
        f"- CPU: {machine.get('cpu', '?')}; `nproc` = {machine['nproc']}",
        f"- RAM: {machine.get('ram', '?')}; OS: {machine['os']}",
        *(f"- {k}: {v}" for k, v in versions.items()),
        "",
        "## Method",
        "",
        "- Real binaries fetched with `pip download` (manylinux x86_64, cp311) into the git-ignored "
        "`bench/.cache/`; images are built there too and reused by later runs.",
        f"- Overdrive: the Python API `encode_bundle` / `apply_bundle` (what `overdrive bundle create` / `apply` call) with the defaults: chunk size "
        f"{CHUNK_SIZE // MiB} MiB, zstd level {LEVEL}, jobs = all cores ({jobs}). The delta gets "
        "`source=OLD`; the full bundle has no source. Apply writes a fresh file and fsyncs it.",
        "- bsdiff4: `bsdiff4.file_diff` / `bsdiff4.file_patch` (whole files in memory, BSDIFF40 "
        "format, bzip2 streams), the baseline for every ratio.",
        f"- zstd: Debian's CLI, `{ZSTD} -19 --long=31 --patch-from=OLD NEW` and "
        "`zstd -d --long=31 --patch-from=OLD` (`--long=31` on decompression also lifts the "
        "window limit to 2 GiB, so `--memory=2048MB` is not needed; the CLI's default single "
        "compression worker).",
        "- Every encode and apply runs in a fresh process. Wall time: the workload alone (Python "
        "tools time themselves after their imports; the zstd CLI is timed from spawn to exit). "
        "Peak RSS: the larger of the kernel's `ru_maxrss` for the process (from `wait4`: the "
        "largest single process of its tree) and the peak of the summed RSS of all live processes "
        "of the tree, sampled every 20 ms from `/proc` (this counts the encoder's worker "
        "processes together; pages shared by forked workers are counted once per process, so "
        "this overstates rather than understates). Python tools' figures include the "
        "interpreter.",
        "- Each apply output is hashed and compared with the new image's sha256; a mismatch "
        "aborts the run. Apply MB/s = new image bytes / apply wall time (10^6 bytes per MB). "
        "Inputs are in the page cache (warm).",
        "- Figures are medians over the repetitions shown in each table's last column.",
        f"- Other processes on the machine used {mean_bg:.2f} cores on average during the "
        f"measurements (worst single measurement: {busy.background_cores if busy else 0:.2f} "
        "cores; from `/proc/stat` minus the measured processes' own CPU time)."
        + (
            " **The machine was not quiet: timings are pessimistic.**"
            if busy is not None and (mean_bg > 0.1 or busy.background_cores > 0.3)
            else ""
        ),
        "",
        "## Results",
    ]
    for pr in pairs:
        p = pr.pair
        out += [
            "",
            f"### {p.name}: {p.title}",
            "",
            f"{p.description}. Old ({p.old_version}): {pr.old_size:,} bytes; new "
            f"({p.new_version}): {pr.new_size:,} bytes; new sha256 `{pr.new_sha256[:16]}…`.",
            "",
            *_pair_table(pr),
            "",
        ]
        for key, label in ((OVERDRIVE.key, "Overdrive delta"), (FULL.key, "Full bundle")):
            r = pr.results.get(key)
            if r is not None:
                line = _op_line(label, r.ops)
                if line:
                    out.append(f"- {line}")
            if r is not None and len(r.sizes) > 1:
                out.append(f"- {label}: sizes differed between repetitions: {sorted(r.sizes)}.")
        od = pr.results.get(OVERDRIVE.key)
        if od is not None and od.encode:
            s = max(od.encode, key=lambda s: s.peak_rss)
            out.append(
                f"- Overdrive delta encode memory: largest single process "
                f"{_mib(s.process_peak_rss)} MiB, whole tree (sampled, {s.processes} processes) "
                f"{_mib(s.tree_peak_rss)} MiB."
            )
        out += _profile_table(pr)
    out += [
        "",
        "## Goals",
        "",
        "Ratios are to whole-file bsdiff4 measured in the same run. Size and encode time are "
        "totals over the ruff, numpy and rootfs pairs (the issue states the size goal over the "
        "three pairs, and the encode goals are read the same way); encode peak RSS is judged on "
        "the largest pair's peak (peaks do not add up); apply memory and throughput on the 1 GiB "
        "pair. The “each pair” rows are a stricter reading, kept to show where the encoder is "
        "weak: small images, where bsdiff4 is fast and a quarter of its memory is less than one "
        "interpreter plus one chunk's working set.",
        "",
        "| goal | target | measured | verdict |",
        "|---|---|---|---|",
        *(f"| {v.goal} | {v.target} | {v.measured} | **{v.verdict}** |" for v in verdicts),
        "",
    ]
    out += [
        "## Notes on the inputs",
        "",
        INPUT_NOTES,
        "",
        "## Notes on the codec",
        "",
        CODEC_NOTES,
        "",
    ]
    misses = [v for v in verdicts if v.verdict == "MISS"]
    if misses:
        out += ["## Misses: by how much, why, and what would close them", ""]
        for v in misses:
            out += [f"### {v.goal}", "", v.gap, "", analysis_for(v.key, pairs), ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small pairs only, one repetition")
    ap.add_argument("--pairs", help=f"comma-separated subset of {','.join(ALL_PAIRS)}")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; 1 with --quick)")
    ap.add_argument(
        "--rerender",
        action="store_true",
        help="rewrite the report from the last run's saved results (bench/.cache/last-run.pickle)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results" / "deltas.md",
        help="report (default: bench/results/deltas.md, then assembled into BENCHMARKS.md)",
    )
    args_list = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(args_list)
    names = (
        tuple(n.strip() for n in args.pairs.split(",") if n.strip())
        if args.pairs
        else (SMALL_PAIRS if args.quick else ALL_PAIRS)
    )
    unknown = [n for n in names if n not in ALL_PAIRS]
    if unknown:
        ap.error(f"unknown pair(s) {', '.join(unknown)}; choose from {', '.join(ALL_PAIRS)}")
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    if reps < 1:
        ap.error("--reps must be at least 1")
    if not Path(ZSTD).exists():
        ap.error(f"{ZSTD} not found (apt-get install zstd)")
    if any(n in ("rootfs", "big") for n in names) and not Path(_data.MKE2FS).exists():
        ap.error(f"{_data.MKE2FS} not found (apt-get install e2fsprogs)")
    jobs = os.cpu_count() or 1

    if args.rerender:
        with open(LAST_RUN, "rb") as f:
            saved = pickle.load(f)
        report = render(saved[0], evaluate_goals(saved[0]), *saved[2:])
        args.out.write_text(report)
        _log(f"wrote {args.out} from {LAST_RUN}")
        _assemble(args.out)
        return 0

    fingerprint = codec_fingerprint()
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    done: list[PairResult] = []
    for name in (n for n in ALL_PAIRS if n in names):
        _log(f"== {name}: preparing")
        pair = _data.prepare(name, CACHE, _log)
        _log(f"== {name}: {pair.old.stat().st_size:,} → {pair.new.stat().st_size:,} bytes")
        done.append(run_pair(pair, reps, jobs))
        if name == "ruff" and not args.quick:
            profile_chunks(done[-1])
    elapsed = time.perf_counter() - t0
    if codec_fingerprint() != fingerprint:
        _log("WARNING: overdrive/bundle/*.py changed during the run; the figures mix two codecs")
        fingerprint += f" at the start, {codec_fingerprint()} at the end: **the codec changed during the run, rerun**"
    verdicts = evaluate_goals(done)
    saved = (done, verdicts, args_list, started, elapsed, jobs, fingerprint)
    with open(LAST_RUN, "wb") as f:  # lets --rerender rewrite the report without rerunning
        pickle.dump(saved, f)
    report = render(*saved)
    args.out.write_text(report)
    _log(f"\nwrote {args.out} ({elapsed / 60:.1f} min)")
    _assemble(args.out)
    for v in verdicts:
        _log(f"  {v.verdict:5} {v.goal}: {v.measured} (target {v.target})")
    return 0


def _assemble(out: Path) -> None:
    """Refresh BENCHMARKS.md when the report went to its usual place."""
    if out.resolve() == (REPO / "bench" / "results" / "deltas.md").resolve():
        _log(f"wrote {benchmarks_md.assemble()}")


if __name__ == "__main__":
    sys.exit(main())

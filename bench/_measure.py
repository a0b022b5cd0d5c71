"""Measure one subprocess: wall time and peak resident memory of its whole process tree.

Two numbers are combined, because either alone can mislead:

* ``wait4`` on the child gives the kernel's exact ``ru_maxrss``: the largest peak of any single
  process in the tree (the child itself or a descendant it waited for). This is exact for a
  single-process tool (bsdiff4, the zstd CLI, a decoder) but blind to processes running at the
  same time: an encoder with two worker processes holds both workers' memory (plus the parent's)
  at once.
* A sampler thread sums the resident set (``/proc/PID/statm``) of every live process in the tree
  every 20 ms (re-discovering the tree's members every 100 ms) and keeps the peak. Pages shared between forked workers are counted once
  per process, so this over- rather than under-states a multi-process tool's footprint.

The reported peak is the larger of the two. Each sample also records how much CPU other processes
on the machine used meanwhile (``/proc/stat`` busy time minus the child's and this process's own),
since on a 2-core machine anything else running skews the timings. Only the standard library and Linux ``/proc`` are
needed (no ``/usr/bin/time``, no cgroups).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MeasureError", "Sample", "run"]

_PAGE = os.sysconf("SC_PAGE_SIZE")
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_INTERVAL_S = 0.02
_RESCAN_EVERY = 5  # samples


class MeasureError(RuntimeError):
    """The measured command failed."""


@dataclass(frozen=True)
class Sample:
    """One measured run."""

    wall_s: float
    peak_rss: int  # bytes: max(kernel per-process peak, sampled peak of the tree's summed RSS)
    process_peak_rss: int  # bytes: the kernel's ru_maxrss of the largest single process
    tree_peak_rss: int  # bytes: sampled peak of the summed RSS of all live processes in the tree
    processes: int  # most processes seen alive in the tree at one sample
    cpu_s: float  # user + system CPU seconds of the measured process tree
    background_cores: float  # average cores used by other processes during the run
    output: str = ""  # the child's stdout


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (excluding idle, iowait and steal)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return (user + nice + system + irq + softirq) / _CLK_TCK


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _parents() -> dict[int, int]:
    """pid -> parent pid for every process visible in /proc."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 2 (comm) is parenthesised and may hold spaces; ppid is the 2nd field after it.
        fields = stat[stat.rfind(b")") + 2 :].split()
        out[int(name)] = int(fields[1])
    return out


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    tree = [root]
    i = 0
    while i < len(tree):
        tree.extend(children.get(tree[i], ()))
        i += 1
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class _TreeSampler(threading.Thread):
    """Sums the RSS of the tree every ``_INTERVAL_S``; rediscovers its members every
    ``_RESCAN_EVERY`` samples (a /proc scan costs ~2 ms, reading a few statm files ~0.1 ms, and
    the benchmark must not steal CPU from what it measures on a 2-core machine)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak = 0
        self.processes = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        pids = [self.root]
        tick = 0
        while not self._stop_event.is_set():
            if tick % _RESCAN_EVERY == 0:
                pids = _tree(self.root)
            tick += 1
            sizes = [_rss(pid) for pid in pids]
            self.peak = max(self.peak, sum(sizes))
            self.processes = max(self.processes, sum(1 for size in sizes if size))
            self._stop_event.wait(_INTERVAL_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run(
    argv: Sequence[str], *, cwd: Path | None = None, child_reports_wall: bool = False
) -> Sample:
    """Run ``argv`` to completion and measure it; raise MeasureError if it fails.

    With ``child_reports_wall`` the child (``_runner.py``) prints ``{"wall_s": ...}``, timed
    after its imports; otherwise the wall time is measured here from spawn to exit.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        busy0, own0 = _busy_seconds(), _own_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        sampler = _TreeSampler(proc.pid)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            sampler.stop()
        wall = elapsed = time.perf_counter() - start
        cpu = usage.ru_utime + usage.ru_stime
        others = _busy_seconds() - busy0 - (_own_seconds() - own0) - cpu
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise MeasureError(
            f"{' '.join(argv)} exited with {proc.returncode}:\n{stderr.strip()[-4000:]}"
        )
    if child_reports_wall:
        try:
            wall = float(json.loads(stdout.strip().splitlines()[-1])["wall_s"])
        except (IndexError, KeyError, ValueError) as e:
            raise MeasureError(f"{' '.join(argv)} printed no wall time: {stdout!r}") from e
    process_peak = usage.ru_maxrss * 1024  # Linux reports KiB
    return Sample(
        wall_s=wall,
        peak_rss=max(process_peak, sampler.peak),
        process_peak_rss=process_peak,
        tree_peak_rss=sampler.peak,
        processes=sampler.processes,
        cpu_s=cpu,
        background_cores=max(0.0, others) / elapsed,
        output=stdout,
    )

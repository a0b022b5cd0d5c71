"""Shared plumbing for the VM layer: errors, the cache directory, subprocess runs, hashing, locks.

Every expected failure (a tool missing, a command exiting non-zero, a timeout) is raised as a
:class:`VmError` subclass with a one-line message, so callers can print it without a traceback.
Long tool output goes to a log file under the cache and the message names that file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = Path(os.environ.get("OVERDRIVE_VM_CACHE", str(REPO_ROOT / ".cache" / "e2e-vm")))
LOG_DIR = CACHE_ROOT / "logs"

# Host tools are in sbin on Debian; a non-login root shell may not have it on PATH.
_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class VmError(Exception):
    """Base of every expected failure in tests/vm (message is one line, no traceback needed)."""


class ToolMissing(VmError):
    """A host command the VM layer needs is not installed."""


class CommandFailed(VmError):
    """A host command exited non-zero."""


def host_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for host tools: ours, with sbin on PATH and a C locale."""
    env = dict(os.environ)
    env["PATH"] = _SBIN_PATH + ":" + env.get("PATH", "")
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def which(tool: str, package: str) -> str:
    """Return the path of ``tool`` or raise :class:`ToolMissing` naming the Debian package."""
    found = shutil.which(tool, path=host_env()["PATH"])
    if found is None:
        raise ToolMissing(f"{tool} not found: install the Debian package {package}")
    return found


# Tool → Debian package, used to give a useful message when something is missing.
TOOL_PACKAGES = {
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
    "mke2fs": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "sgdisk": "gdisk",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mtype": "mtools",
    "mmd": "mtools",
    "mdir": "mtools",
    "grub-mkimage": "grub-common",
    "grub-editenv": "grub-common",
    "qemu-system-x86_64": "qemu-system-x86",
}


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input_bytes: bytes | None = None,
    log_name: str | None = None,
    timeout: float | None = None,
    ok_codes: Sequence[int] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run a host command, capture stdout and stderr, raise :class:`CommandFailed` unless its
    exit code is in ``ok_codes``.

    ``what`` says in words what the command does (it starts the error message). When ``log_name``
    is given, both outputs are also written to ``LOG_DIR/log_name`` for post-mortems.
    """
    args = [os.fspath(c) for c in cmd]
    tool = os.path.basename(args[0])
    if os.sep not in args[0]:
        which(args[0], TOOL_PACKAGES.get(tool, tool))
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else host_env(),
            input=input_bytes,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{what}: {tool} did not finish within {timeout:.0f} s") from exc
    log_path = None
    if log_name is not None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log_path = LOG_DIR / log_name
        log_path.write_bytes(
            b"$ " + " ".join(args).encode() + b"\n" + proc.stdout + b"\n--- stderr\n" + proc.stderr
        )
    if proc.returncode not in ok_codes:
        text = (proc.stderr or proc.stdout).decode(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        where = f" (log: {log_path})" if log_path else ""
        raise CommandFailed(f"{what}: {tool} exited {proc.returncode}: {last[:300]}{where}")
    return proc


def digest(*parts: Any) -> str:
    """Return a short stable hash of JSON-serialisable ``parts`` (the cache keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: Path, limit: int | None = None, offset: int = 0) -> str:
    """Return the hex sha256 of ``path`` (from ``offset``, at most ``limit`` bytes)."""
    h = hashlib.sha256()
    remaining = limit
    with path.open("rb") as f:
        f.seek(offset)
        while remaining is None or remaining > 0:
            want = 1 << 20 if remaining is None else min(1 << 20, remaining)
            chunk = f.read(want)
            if not chunk:
                break
            h.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    if remaining:
        raise VmError(f"{path}: shorter than the {limit} bytes to hash")
    return h.hexdigest()


@contextlib.contextmanager
def cache_lock(name: str = "build") -> Iterator[None]:
    """Hold an exclusive lock on the cache so two runs never build the same artefact at once."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with (CACHE_ROOT / f".{name}.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prune(pattern: str, keep: int, *, protect: Sequence[Path] = ()) -> None:
    """Delete all but the ``keep`` newest cache entries matching ``pattern`` (never ``protect``)."""
    if not CACHE_ROOT.is_dir():
        return
    entries = sorted(CACHE_ROOT.glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    protected = {p.resolve() for p in protect}
    for old in entries[keep:]:
        if old.resolve() in protected:
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


class Stopwatch:
    """Record named phase durations (seconds) for the smoke report."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` body under ``name``."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = time.monotonic() - start


def tree_size(root: Path) -> int:
    """Return the bytes used by files under ``root`` (apparent sizes, hard links counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            total += st.st_size
    return total

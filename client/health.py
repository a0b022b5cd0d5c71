"""The health check: an integrator's command that says whether this boot is good.

It runs with a timeout, in its own process group (a check that forks cannot leave children
behind), with its output captured through a pipe of which only the last :data:`KEEP_BYTES` are
kept: a check that prints gigabytes, or NUL bytes and escape sequences, changes nothing but its
own verdict. Its last non-empty line, sanitised (:func:`overdrive.text.one_line`), is the reason
reported when it fails. Exit 0 means healthy; anything else, a timeout, or a command that cannot
start, means unhealthy.
"""

from __future__ import annotations

import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass

from overdrive.text import one_line

KEEP_BYTES = 4096
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Health:
    healthy: bool
    detail: str


def run_health_check(
    command: str, env: Mapping[str, str], timeout_s: float = DEFAULT_TIMEOUT_S
) -> Health:
    """Run ``command`` (a shell-style command line, not run through a shell)."""
    if not command.strip():
        return Health(True, "no health check configured")
    try:
        argv = shlex.split(command)
        proc = subprocess.Popen(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except (OSError, ValueError) as e:
        return Health(False, one_line(f"health check {command!r} could not run: {e}"))
    assert proc.stdout is not None
    tail = bytearray()
    deadline = time.monotonic() + timeout_s
    timed_out = False
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not sel.select(left):
                continue
            block = os.read(proc.stdout.fileno(), 65536)
            if not block:
                break
            tail += block
            del tail[:-KEEP_BYTES]
    if not timed_out:  # output closed: the check gets what is left of its time to exit
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        _kill_group(proc)
    code = proc.wait()
    proc.stdout.close()
    if timed_out:
        return Health(False, f"health check timed out after {timeout_s:g} s")
    lines = [line for line in tail.decode("utf-8", "replace").splitlines() if line.strip()]
    last = one_line(lines[-1], 300) if lines else ""
    if code == 0:
        return Health(True, last or "healthy")
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return Health(False, f"{last} ({how})" if last else how)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()

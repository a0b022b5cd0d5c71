"""Asking the system to reboot, through the integrator's configured command."""

from __future__ import annotations

import shlex
import subprocess

from overdrive.client.errors import ClientError
from overdrive.text import one_line

REBOOT_TIMEOUT_S = 120.0


class RebootFailed(ClientError):
    """The reboot command could not be run or reported a failure."""


def request_reboot(command: str) -> None:
    """Run ``command`` (e.g. ``systemctl reboot``); :class:`RebootFailed` with its complaint.

    Most reboot commands return once the reboot is scheduled; the caller must have saved
    everything before calling this.
    """
    try:
        proc = subprocess.run(
            shlex.split(command),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=REBOOT_TIMEOUT_S,
            check=False,
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise RebootFailed(f"reboot command {command!r} could not run: {one_line(e, 200)}") from e
    if proc.returncode != 0:
        said = one_line(proc.stderr.decode("utf-8", "replace") or proc.stdout.decode(), 200)
        raise RebootFailed(
            f"reboot command {command!r} failed (exit {proc.returncode}): {said or 'no message'}"
        )

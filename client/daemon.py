"""The update daemon's loop: one :meth:`~overdrive.client.vehicle.Vehicle.cycle` per turn, forever.

Nothing a server, a mirror or a bundle sends can stop it: a turn that fails for any reason — an
unreachable server, a malformed answer, an error we did not foresee — is logged as one line and
the daemon comes back at its own poll interval (with exponential backoff while the server or the
repository cannot be reached). Every log line carries the time and when the next poll is due.
Polls are jittered (±20 %) so a fleet never polls in lockstep.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from overdrive.client.vehicle import ACTION_EXIT_CODES, CycleResult, Vehicle
from overdrive.errors import OverdriveError
from overdrive.text import one_line

log = logging.getLogger(__name__)

#: Actions after which the next turn backs off exponentially (the link, not the answer, failed).
_BACKOFF = ("offline", "interrupted")
_MAX_BACKOFF_S = 3600


def next_delay(result: CycleResult, failures: int) -> int:
    """Seconds until the next turn (before jitter)."""
    if result.action in _BACKOFF and failures:
        return int(min(_MAX_BACKOFF_S, 30 * 2 ** min(failures, 7)))
    return result.next_poll


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def run_daemon(
    car: Vehicle,
    *,
    echo: Callable[[str], None],
    sleep: Callable[[float], None] = time.sleep,
    turns: int | None = None,
) -> None:
    """Run turns until killed (or ``turns`` of them, for tests)."""
    failures = 0
    done = 0
    while turns is None or done < turns:
        done += 1
        try:
            result = car.cycle()
        except OverdriveError as e:
            result = CycleResult("failed", f"error: {e}", car.config.poll_interval)
        except Exception as e:  # the daemon must outlive any one bad turn
            log.exception("unexpected error in a daemon turn")
            result = CycleResult(
                "failed", f"internal error: {type(e).__name__}: {e}", car.config.poll_interval
            )
        failures = failures + 1 if result.action in _BACKOFF else 0
        delay = next_delay(result, failures) * random.uniform(0.8, 1.2)
        now = datetime.now(UTC)
        due = now + timedelta(seconds=delay)
        echo(
            f"{_stamp(now)} {result.action}: {one_line(result.detail)}; "
            f"next poll {_stamp(due)} (in {delay:.0f} s)"
        )
        if result.reboot:
            try:
                car.reboot()
            except OverdriveError as e:
                echo(f"{_stamp(datetime.now(UTC))} error: {e}")
        if turns is None or done < turns:
            sleep(delay)


def run_once(car: Vehicle, *, echo: Callable[[str], None]) -> int:
    """One turn; its exit code (``ACTION_EXIT_CODES``). Errors propagate to the CLI."""
    result = car.cycle()
    echo(f"{result.action}: {result.detail}")
    if result.reboot:
        car.reboot()  # said first: the line must not die with the system
    return ACTION_EXIT_CODES.get(result.action, 1)

"""The on-disk event queue: every step is recorded before it is sent, and sent until acknowledged.

Each event is one file in ``STATE_DIR/events/`` written atomically, named by a sequence number so
order is kept. A flush sends them in signed batches and deletes them only after the server
acknowledged; the server stores each event id once, so a resend after a crash is harmless.
No event is lost across restarts or while offline.

One event the server refuses must not block the ones behind it (a refused batch would otherwise
be resent, and refused, forever): when the server refuses what a batch holds (400, 413, 422), it
is resent in halves until the refused events are isolated; each of those is moved to
``events/rejected/`` (kept for inspection, the oldest dropped beyond :data:`MAX_REJECTED`) and
the rest go through.
Strings are sanitised and bounded when an event is queued, so what we store is sendable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overdrive.client.errors import ServerRefused
from overdrive.storage.local import atomic_write, fsync_dir
from overdrive.text import clean_json, one_line

BATCH = 100
#: Answers that refuse what a batch holds; others (401, 404, 429 …) are about the vehicle or the
#: server and keep every event queued.
_CONTENT_REFUSALS = frozenset({400, 413, 422})
#: Refused events kept in ``events/rejected/`` for an integrator to look at.
MAX_REJECTED = 50

log = logging.getLogger(__name__)

Event = dict[str, Any]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_id(assignment: dict[str, Any] | None, kind: str, salt: str = "") -> str:
    """The id of an event about a step of ``assignment``: derived from the assignment (or, for
    an event about no assignment, from ``salt``) and the step, so the same step reported again
    after a power cut is stored once by the server."""
    payload = (assignment or {}).get("payload", {})
    basis = f"{payload.get('campaign_id')}|{payload.get('nonce')}|{kind}"
    if salt:
        basis += f"|{salt}"
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


class EventQueue:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "events"
        self.rejected = self.directory / "rejected"

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []

    def _next_seq(self) -> int:
        names = [p.name for p in self._files()]
        return max((int(n.split("-", 1)[0]) for n in names), default=0) + 1

    def add(
        self,
        kind: str,
        *,
        event_id: str | None = None,
        campaign_id: str | None = None,
        hardware_id: str | None = None,
        reason: str | None = None,
        **details: Any,
    ) -> Event:
        event: Event = {"id": event_id or uuid.uuid4().hex, "type": kind, "at": now_iso()}
        if campaign_id:
            event["campaign_id"] = campaign_id
        if hardware_id:
            event["hardware_id"] = hardware_id
        if reason:
            event["reason"] = reason
        if details:
            event["details"] = details
        return self.put(event)

    def put(self, event: Event) -> Event:
        """Queue a complete event (sanitised here); one already queued under its id is kept."""
        event = clean_json(event)
        if any(event["id"] in p.name for p in self._files()):
            return event  # already queued (the same step reported again after a crash)
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps(event, sort_keys=True).encode()
        atomic_write(
            self.directory / f"{self._next_seq():012d}-{event['id']}.json", lambda f: f.write(data)
        )
        return event

    def pending(self) -> list[tuple[Path, Event]]:
        result = []
        for path in self._files():
            try:
                result.append((path, json.loads(path.read_bytes())))
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a torn file cannot exist (atomic writes); be safe
        return result

    def flush(self, send: Callable[[list[Event]], None]) -> int:
        """Send pending events in batches; delete each batch once ``send`` returned.

        ``send`` raising :class:`ServerRefused` for a batch isolates and sets aside the refused
        events (see the module docstring); any other error propagates and keeps the rest queued.
        Returns the number of events delivered.
        """
        sent = 0
        pending = self.pending()
        for start in range(0, len(pending), BATCH):
            sent += self._deliver(pending[start : start + BATCH], send)
        return sent

    def _deliver(self, batch: list[tuple[Path, Event]], send: Callable[[list[Event]], None]) -> int:
        try:
            send([event for _path, event in batch])
        except ServerRefused as e:
            if e.status not in _CONTENT_REFUSALS:
                raise
            if len(batch) == 1:
                self._reject(batch[0][0], str(e))
                return 0
            middle = len(batch) // 2
            return self._deliver(batch[:middle], send) + self._deliver(batch[middle:], send)
        for path, _event in batch:
            os.unlink(path)
        fsync_dir(self.directory)
        return len(batch)

    def _reject(self, path: Path, why: str) -> None:
        """Move one refused event aside, with the server's reason next to it."""
        log.warning(
            "the server refused event %s: %s; set aside in %s", path.name, why, self.rejected
        )
        self.rejected.mkdir(parents=True, exist_ok=True)
        note = one_line(why).encode()
        atomic_write(self.rejected / (path.stem + ".reason"), lambda f: f.write(note))
        os.replace(path, self.rejected / path.name)
        fsync_dir(self.directory)
        kept = sorted(self.rejected.glob("*.json"))
        for old in kept[: max(0, len(kept) - MAX_REJECTED)]:
            old.unlink(missing_ok=True)
            old.with_suffix(".reason").unlink(missing_ok=True)

"""The on-disk event queue: every step is recorded before it is sent, and sent until acknowledged.

Each event is one file in ``STATE_DIR/events/`` written atomically, named by a sequence number so
order is kept. A flush sends them in signed batches and deletes them only after the server
acknowledged; the server stores each event id once, so a resend after a crash is harmless.
No event is lost across restarts or while offline.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overdrive.storage.local import atomic_write, fsync_dir

BATCH = 100


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventQueue:
    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "events"

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
    ) -> dict[str, Any]:
        event: dict[str, Any] = {"id": event_id or uuid.uuid4().hex, "type": kind, "at": now_iso()}
        if event_id and any(event_id in p.name for p in self._files()):
            return event  # already queued (the same step reported again after a crash)
        if campaign_id:
            event["campaign_id"] = campaign_id
        if hardware_id:
            event["hardware_id"] = hardware_id
        if reason:
            event["reason"] = reason
        if details:
            event["details"] = details
        self.directory.mkdir(parents=True, exist_ok=True)
        data = json.dumps(event, sort_keys=True).encode()
        atomic_write(
            self.directory / f"{self._next_seq():012d}-{event['id']}.json", lambda f: f.write(data)
        )
        return event

    def pending(self) -> list[tuple[Path, dict[str, Any]]]:
        result = []
        for path in self._files():
            try:
                result.append((path, json.loads(path.read_bytes())))
            except (OSError, ValueError):
                path.unlink(missing_ok=True)  # a torn file cannot exist (atomic writes); be safe
        return result

    def flush(self, send: Callable[[list[dict[str, Any]]], None]) -> int:
        """Send pending events in batches; delete each batch once ``send`` returned."""
        sent = 0
        pending = self.pending()
        for start in range(0, len(pending), BATCH):
            batch = pending[start : start + BATCH]
            send([event for _path, event in batch])
            for path, _event in batch:
                os.unlink(path)
            fsync_dir(self.directory)
            sent += len(batch)
        return sent

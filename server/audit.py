"""The audit log: every operator action, recorded in the same transaction as the action."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import g, has_request_context
from sqlalchemy.orm import Session

from overdrive.server.models import AuditEntry


def record(
    session: Session,
    action: str,
    target: str | None = None,
    *,
    actor: str | None = None,
    **details: Any,
) -> None:
    """Add an audit entry; ``actor`` defaults to the request's operator (``cli`` outside a
    request). Automatic transitions pass ``actor="policy"``."""
    if actor is None:
        actor = g.get("actor", "cli") if has_request_context() else "cli"
    session.add(
        AuditEntry(at=datetime.now(UTC), actor=actor, action=action, target=target, details=details)
    )


def entry_dict(entry: AuditEntry) -> dict[str, Any]:
    from overdrive.server.vehicles import iso

    return {
        "id": entry.id,
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "details": entry.details,
    }

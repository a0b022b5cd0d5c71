"""The server's tables. Every piece of rollout state lives here, so workers stay stateless.

The campaign state machine and "one active campaign per vehicle and hardware id" are enforced by
the database (a version column for compare-and-set transitions, a unique index on active
memberships), not by worker memory, so concurrent workers cannot double-advance or double-assign.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    case,
)
from sqlalchemy.orm import Mapped, mapped_column

from overdrive.server.db import Base

# Campaign states (see server/campaigns.py for the transitions).
DRAFT, RUNNING, PAUSED, COMPLETED, ABORTED = "draft", "running", "paused", "completed", "aborted"
ACTIVE_STATES = (RUNNING, PAUSED)

#: A membership's status: ``pending`` until its vehicle reports, then the vehicle's last event.
MEMBERSHIP_STATUSES = (
    "pending",
    "assigned",
    "downloading",
    "downloaded",
    "installing",
    "installed",
    "booted",
    "committed",
    "failed",
    "rolled_back",
)


class Vehicle(Base):
    __tablename__ = "vehicles"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)  # ed25519, hex of the raw 32 bytes
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model: Mapped[str | None] = mapped_column(String(128), index=True)
    region: Mapped[str | None] = mapped_column(String(128), index=True)
    manifest_counter: Mapped[int] = mapped_column(Integer, default=0)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The last manifest's slot, state and last result, and what the server derived from it:
    #: ``attacks_detected`` (serial → text), ``unreported_ecus`` (registered ECUs missing from
    #: the last manifest → their last report's time) and ``unknown_ecus`` (serials that
    #: reported without being registered → hardware id, first and last seen); see
    #: ``server.manifest.ecu_status``.
    status: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The vehicle's ECUs: serial → ``{"hardware_id": …, "primary": bool, "public_key": …,
    #: "kind": …}`` (the primary's key is the vehicle's own ``public_key``; ``kind`` is
    #: ``primary``, ``secondary`` or ``module`` when registration said; see docs/vehicles.md).
    ecus: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: Each ECU's last accepted version-report counter (serial → n): the replay guard of reports.
    ecu_counters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class InstalledImage(Base):
    """What one ECU of a vehicle runs (from its last accepted version report; at registration,
    the factory image of its hardware id). A vehicle may have several ECUs of one hardware id:
    each has its own row."""

    __tablename__ = "installed_images"

    vehicle_id: Mapped[str] = mapped_column(
        ForeignKey("vehicles.id", ondelete="CASCADE"), primary_key=True
    )
    ecu_serial: Mapped[str] = mapped_column(String(128), primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    release_counter: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_installed_hw_version", "hardware_id", "version"),)


class ApiToken(Base):
    """An operator's bearer token; only its sha256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EnrollToken(Base):
    """A one-time token a vehicle presents to register; only its sha256 is stored."""

    __tablename__ = "enroll_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    uses_left: Mapped[int] = mapped_column(Integer, default=1)
    used_by: Mapped[str | None] = mapped_column(String(128))


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), index=True)
    policy_name: Mapped[str] = mapped_column(String(200))
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    filter: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stage_index: Mapped[int] = mapped_column(Integer, default=0)
    stage_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    approved_stage: Mapped[int] = mapped_column(Integer, default=0)  # highest stage approved
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)  # why it paused/aborted/completed
    eligible_count: Mapped[int] = mapped_column(Integer, default=0)
    #: The evaluator's last decision on a running campaign: what it waits for, until when, and
    #: every judged group's counts (``rollout_policies.Decision.to_dict()`` plus ``at``).
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    #: Compare-and-set guard: every transition is UPDATE … WHERE version = :seen.
    version: Mapped[int] = mapped_column(Integer, default=0)


class CampaignRelease(Base):
    """The release a campaign installs on one hardware id (a TUF target of the repository)."""

    __tablename__ = "campaign_releases"

    campaign_id: Mapped[str] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    hardware_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(128))
    release_counter: Mapped[int] = mapped_column(Integer)
    image_sha256: Mapped[str] = mapped_column(String(64))
    image_length: Mapped[int] = mapped_column(BigInteger)
    #: Rank of this image in the campaign's software set (``install_order``; lower first).
    install_order: Mapped[int] = mapped_column(Integer, default=0)


class Membership(Base):
    """A vehicle's part in a campaign, for one hardware id: eligible, then admitted, then done."""

    __tablename__ = "memberships"

    campaign_id: Mapped[str] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    vehicle_id: Mapped[str] = mapped_column(
        ForeignKey("vehicles.id", ondelete="CASCADE"), primary_key=True
    )
    hardware_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer)
    admitted: Mapped[bool] = mapped_column(Boolean, default=False)
    admitted_stage: Mapped[int | None] = mapped_column(Integer)
    #: pending → assigned → downloading … installed → committed | failed | rolled_back
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text)
    #: The version the vehicle ran on this hardware id when the campaign started (a cohort).
    from_version: Mapped[str | None] = mapped_column(String(128))
    active: Mapped[bool | None] = mapped_column(Boolean, default=True)  # NULL once inactive
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: For a failed software set: the hardware id whose ECU caused it (the final event's
    #: ``details.caused_by.hardware_id``), when the vehicle has a membership of this campaign
    #: for it. Another hardware id's here: this membership was rolled back with its set, and
    #: is no failure of its own hardware id (see ``server.evaluator.group_counts``).
    caused_by: Mapped[str | None] = mapped_column(String(128))

    __table_args__ = (
        # At most one active campaign per vehicle and hardware id: NULLs don't collide.
        UniqueConstraint("vehicle_id", "hardware_id", "active", name="uq_membership_active"),
        Index("ix_membership_admission", "campaign_id", "admitted", "bucket", "vehicle_id"),
        Index("ix_membership_vehicle", "vehicle_id", "active"),
        Index("ix_membership_status", "campaign_id", "status"),
    )


class Event(Base):
    """A step a vehicle reported; the (vehicle, event id) key makes ingestion idempotent."""

    __tablename__ = "events"

    vehicle_id: Mapped[str] = mapped_column(
        ForeignKey("vehicles.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[str | None] = mapped_column(String(36), index=True)
    hardware_id: Mapped[str | None] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


#: The order of event feeds, newest first: by arrival, then the vehicle's own time, then the
#: step's place in an update (one batch arrives at one moment: its last step comes first).
EVENT_ORDER = (
    Event.received_at.desc(),
    Event.occurred_at.desc(),
    case(
        {kind: i for i, kind in enumerate(MEMBERSHIP_STATUSES)}, value=Event.type, else_=-1
    ).desc(),
)


class CampaignSample(Base):
    """A campaign's vehicles per state at one evaluation (the dashboard's timeline chart)."""

    __tablename__ = "campaign_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)


class DashboardSession(Base):
    """A signed-in dashboard session; only the sha256 of its id is stored, so signing out (or
    an administrator) revokes it server-side, whatever the browser keeps."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DirectorRepo(Base):
    """A vehicle's director repository: its signed chain (targets, snapshot and timestamp share
    one version), the root that signed it, a digest of what it lists (so an unchanged assignment
    is never re-signed), and the previous chain's targets and snapshot (so a vehicle in the
    middle of a refresh still finds its files). One row, written by one statement."""

    __tablename__ = "director_repos"

    vehicle_id: Mapped[str] = mapped_column(
        ForeignKey("vehicles.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer)
    root_version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    expires: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    targets: Mapped[bytes] = mapped_column(LargeBinary)
    snapshot: Mapped[bytes] = mapped_column(LargeBinary)
    timestamp: Mapped[bytes] = mapped_column(LargeBinary)
    previous_targets: Mapped[bytes | None] = mapped_column(LargeBinary)
    previous_snapshot: Mapped[bytes | None] = mapped_column(LargeBinary)


class AuditEntry(Base):
    """Every operator action, who did it and when."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


__all__ = [
    "ABORTED",
    "ACTIVE_STATES",
    "COMPLETED",
    "DRAFT",
    "EVENT_ORDER",
    "MEMBERSHIP_STATUSES",
    "PAUSED",
    "RUNNING",
    "ApiToken",
    "AuditEntry",
    "Campaign",
    "CampaignRelease",
    "CampaignSample",
    "DashboardSession",
    "DirectorRepo",
    "EnrollToken",
    "Event",
    "InstalledImage",
    "Membership",
    "Vehicle",
]

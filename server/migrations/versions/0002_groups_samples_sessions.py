"""per-group judging, campaign samples, revocable dashboard sessions

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 03:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("decision", sa.JSON(), nullable=True))
    with op.batch_alter_table("memberships") as batch:
        batch.add_column(sa.Column("from_version", sa.String(length=128), nullable=True))
    op.create_table(
        "campaign_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("campaign_id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_campaign_samples_campaign_id", "campaign_samples", ["campaign_id"])
    op.create_table(
        "dashboard_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id_hash"),
    )


def downgrade() -> None:
    op.drop_table("dashboard_sessions")
    op.drop_index("ix_campaign_samples_campaign_id", table_name="campaign_samples")
    op.drop_table("campaign_samples")
    with op.batch_alter_table("memberships") as batch:
        batch.drop_column("from_version")
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("decision")

"""the director repository: per-vehicle TUF metadata, ECUs and their report counters

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vehicles") as batch:
        batch.add_column(sa.Column("ecus", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("ecu_counters", sa.JSON(), nullable=True))
    op.create_table(
        "director_repos",
        sa.Column("vehicle_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("root_version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("targets", sa.LargeBinary(), nullable=False),
        sa.Column("snapshot", sa.LargeBinary(), nullable=False),
        sa.Column("timestamp", sa.LargeBinary(), nullable=False),
        sa.Column("previous_targets", sa.LargeBinary(), nullable=True),
        sa.Column("previous_snapshot", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(["vehicle_id"], ["vehicles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("vehicle_id"),
    )
    op.create_index("ix_director_repos_expires", "director_repos", ["expires"])


def downgrade() -> None:
    op.drop_index("ix_director_repos_expires", table_name="director_repos")
    op.drop_table("director_repos")
    with op.batch_alter_table("vehicles") as batch:
        batch.drop_column("ecu_counters")
        batch.drop_column("ecus")

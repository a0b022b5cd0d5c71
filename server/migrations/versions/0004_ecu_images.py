"""multi-ECU vehicles: installed image per ECU, software-set install order, set failures

``installed_images`` is keyed by (vehicle, ECU serial) instead of (vehicle, hardware id), with
the hardware id kept as a column: a vehicle may have several ECUs of one hardware id, each with
its own image. Each existing row becomes one row per ECU of the vehicle with that hardware id
(from ``vehicles.ecus``); a row no ECU has (a vehicle registered before ECUs were recorded) is
kept under its hardware id as the serial. Campaign releases get their rank in the software set
(``install_order``), memberships the hardware id that caused a set's failure (``caused_by``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 22:00:00
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: Vehicles read (and their images rewritten) per batch: bounded memory on a large fleet.
BATCH = 5000

_vehicles = sa.table("vehicles", sa.column("id", sa.String()), sa.column("ecus", sa.JSON()))
_IMAGE_COLUMNS = ("vehicle_id", "hardware_id", "version", "sha256", "release_counter")


def _image_table(name: str, key: str) -> sa.TableClause:
    return sa.table(name, *(sa.column(c) for c in (*_IMAGE_COLUMNS, key)))


def _create_images(name: str, key: str, pk_name: str) -> None:
    """An ``installed_images`` table (named ``name`` until renamed) keyed by (vehicle_id,
    ``key``): ``ecu_serial`` (with ``hardware_id`` a column) or, as before, ``hardware_id``.
    ``pk_name`` must not be taken: on PostgreSQL a primary key is an index, named per schema."""
    columns = [
        sa.Column("vehicle_id", sa.String(length=128), nullable=False),
        sa.Column(key, sa.String(length=128), nullable=False),
    ]
    if key == "ecu_serial":
        columns.append(sa.Column("hardware_id", sa.String(length=128), nullable=False))
    op.create_table(
        name,
        *columns,
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("release_counter", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["vehicle_id"], ["vehicles.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("vehicle_id", key, name=pk_name),
    )


def _replace_images(new_name: str) -> None:
    """Drop the old ``installed_images``, put ``new_name`` in its place, index it again."""
    op.drop_index("ix_installed_hw_version", table_name="installed_images")
    op.drop_table("installed_images")
    op.rename_table(new_name, "installed_images")
    op.create_index("ix_installed_hw_version", "installed_images", ["hardware_id", "version"])


def _batches(conn: sa.Connection) -> Iterator[dict[str, Any]]:
    """Vehicle id → its ``ecus`` (a dict, or None), ``BATCH`` vehicles at a time by id."""
    last = ""
    while True:
        rows = conn.execute(
            sa.select(_vehicles.c.id, _vehicles.c.ecus)
            .where(_vehicles.c.id > last)
            .order_by(_vehicles.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        yield {vid: ecus if isinstance(ecus, dict) else None for vid, ecus in rows}
        last = rows[-1][0]


def upgrade() -> None:
    conn = op.get_bind()
    _create_images("installed_images_ecu", "ecu_serial", "pk_installed_images_ecu")
    old = _image_table("installed_images", "hardware_id")
    new = _image_table("installed_images_ecu", "ecu_serial")
    for ecus in _batches(conn):
        rows = conn.execute(
            sa.select(*(old.c[c] for c in _IMAGE_COLUMNS)).where(old.c.vehicle_id.in_(list(ecus)))
        ).all()
        values = []
        for vid, hw, version, sha256, counter in rows:
            about = ecus.get(vid) or {}
            serials = [
                serial
                for serial, ecu in about.items()
                if isinstance(ecu, dict) and ecu.get("hardware_id") == hw
            ] or [hw]
            values += [
                {
                    "vehicle_id": vid,
                    "ecu_serial": serial,
                    "hardware_id": hw,
                    "version": version,
                    "sha256": sha256,
                    "release_counter": counter,
                }
                for serial in serials
            ]
        if values:
            conn.execute(sa.insert(new), values)
    _replace_images("installed_images_ecu")
    with op.batch_alter_table("campaign_releases") as batch:
        batch.add_column(
            sa.Column("install_order", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("memberships") as batch:
        batch.add_column(sa.Column("caused_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    conn = op.get_bind()
    with op.batch_alter_table("memberships") as batch:
        batch.drop_column("caused_by")
    with op.batch_alter_table("campaign_releases") as batch:
        batch.drop_column("install_order")
    # The primary key's name as 0001 created it (PostgreSQL's default), free again by now.
    _create_images("installed_images_hw", "hardware_id", "installed_images_pkey")
    old = _image_table("installed_images", "ecu_serial")
    new = _image_table("installed_images_hw", "hardware_id")
    # One image per hardware id again: of several ECUs of one, the one furthest behind.
    rows = conn.execute(
        sa.select(*(old.c[c] for c in _IMAGE_COLUMNS)).order_by(
            old.c.vehicle_id, old.c.hardware_id, old.c.release_counter, old.c.ecu_serial
        )
    ).all()
    seen: set[tuple[str, str]] = set()
    values: list[dict[str, Any]] = []
    for row in rows:
        if (row.vehicle_id, row.hardware_id) in seen:
            continue
        seen.add((row.vehicle_id, row.hardware_id))
        values.append(dict(row._mapping))
    for start in range(0, len(values), BATCH):
        conn.execute(sa.insert(new), values[start : start + BATCH])
    _replace_images("installed_images_hw")

"""Schema migrations with data in the tables: 0004 (installed image per ECU) up and down.

Runs on SQLite, and on PostgreSQL when ``OVERDRIVE_TEST_POSTGRES_URL`` is set (where a primary
key is an index named per schema, so a table rebuilt under the same name must not reuse it).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import inspect, text

from overdrive.server.db import make_engine
from overdrive.server.migrate import alembic_config, upgrade


def _downgrade(db_url: str, revision: str) -> None:
    from alembic import command

    engine = make_engine(db_url)
    try:
        config = alembic_config(db_url)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()


def _images(db_url: str) -> list[tuple[str, ...]]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("installed_images")}
            key = "ecu_serial" if "ecu_serial" in columns else "hardware_id"
            rows = conn.execute(
                text(
                    f"SELECT vehicle_id, {key}, hardware_id, version FROM installed_images "
                    f"ORDER BY vehicle_id, {key}"
                )
            ).all()
            return [tuple(r) for r in rows]
    finally:
        engine.dispose()


def test_0004_keys_installed_images_by_ecu_and_back(db_url: str) -> None:
    upgrade(db_url, "0003")
    engine = make_engine(db_url)
    stamp = datetime.now(UTC)
    ecus = {
        "v1": {
            "v1-p": {"hardware_id": "ecu-a", "primary": True},
            "v1-a2": {"hardware_id": "ecu-a", "primary": False},
            "v1-gw": {"hardware_id": "ecu-b", "primary": False},
        },
        "v2": None,  # registered before ECUs were recorded
    }
    images = [("v1", "ecu-a", "1.0", 1), ("v1", "ecu-b", "2.0", 3), ("v2", "ecu-a", "0.9", 0)]
    try:
        with engine.begin() as conn:
            for vid, about in ecus.items():
                conn.execute(
                    text(
                        "INSERT INTO vehicles (id, public_key, attributes, manifest_counter, "
                        "registered_at, status, ecus, ecu_counters) VALUES (:id, '{}', '{}', 0, "
                        ":at, '{}', :ecus, '{}')"
                    ),
                    {"id": vid, "at": stamp, "ecus": json.dumps(about) if about else None},
                )
            for vid, hw, version, counter in images:
                conn.execute(
                    text(
                        "INSERT INTO installed_images (vehicle_id, hardware_id, version, sha256, "
                        "release_counter) VALUES (:vid, :hw, :version, :sha, :counter)"
                    ),
                    {"vid": vid, "hw": hw, "version": version, "sha": "a" * 64, "counter": counter},
                )
    finally:
        engine.dispose()

    upgrade(db_url)
    # One row per ECU of the hardware id; a vehicle without ECUs keeps its hardware id's row.
    assert _images(db_url) == [
        ("v1", "v1-a2", "ecu-a", "1.0"),
        ("v1", "v1-gw", "ecu-b", "2.0"),
        ("v1", "v1-p", "ecu-a", "1.0"),
        ("v2", "ecu-a", "ecu-a", "0.9"),
    ]
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            inspector = inspect(conn)
            assert inspector.get_pk_constraint("installed_images")["constrained_columns"] == [
                "vehicle_id",
                "ecu_serial",
            ]
            assert "install_order" in {
                c["name"] for c in inspector.get_columns("campaign_releases")
            }
            assert "caused_by" in {c["name"] for c in inspector.get_columns("memberships")}
            # The two ECUs of one hardware id now differ.
            conn.execute(
                text(
                    "UPDATE installed_images SET version = '1.1', release_counter = 2 "
                    "WHERE ecu_serial = 'v1-a2'"
                )
            )
    finally:
        engine.dispose()

    _downgrade(db_url, "0003")
    # One image per hardware id again: the ECU furthest behind.
    assert _images(db_url) == [
        ("v1", "ecu-a", "ecu-a", "1.0"),
        ("v1", "ecu-b", "ecu-b", "2.0"),
        ("v2", "ecu-a", "ecu-a", "0.9"),
    ]
    upgrade(db_url)  # and up again (the primary key's name is free)
    assert len(_images(db_url)) == 4

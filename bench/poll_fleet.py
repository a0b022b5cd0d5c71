"""The simulated fleet of the poll benchmark: deterministic vehicle keys, the bulk load of
``vehicles`` and ``installed_images`` (COPY), and pre-signed vehicle version manifests.

Every vehicle ``i`` has its own ed25519 key, derived from a fixed seed, so any process can
re-create the private key of any vehicle cheaply (``from_private_bytes`` is ~20 µs) instead of
shipping 100,000 keys between processes. The public key is stored exactly as
``server/vehicles.py::register`` stores it: ``json.dumps({"keyid": …, **key.to_dict()})``, and
so are the vehicle's ECUs: one primary ECU, serial ``<vehicle id>-primary``, on ``ecu-a``, whose
key is the vehicle's (``ecus``; ``ecu_counters`` starts empty).

A manifest (``overdrive.uptane.VEHICLE_MANIFEST``) carries one ECU version report, signed by the
same key; both are signed here exactly as ``overdrive.envelope.sign_envelope`` signs (canonical
JSON of the payload, ed25519 over it). The nonce starts with ``v<index>n`` so that a load
generator can tell which vehicle an answer is for (the answer's time attestation echoes it).

The functions used by worker processes (:func:`public_keys`, :func:`sign_chunk`) take and return
plain data so that they work with any ``multiprocessing`` start method.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import SSlibKey

from overdrive.envelope import canonical
from overdrive.uptane import VEHICLE_MANIFEST, ecu_report, installed_image

SEED_DOMAIN = b"overdrive-bench-poll/v1/"
HARDWARE_ID = "ecu-a"
#: What a vehicle reports besides its images (as ``client/vehicle.py`` does); it is also what the
#: bulk load stores as ``vehicles.status``, so a poll does not rewrite the status column.
STATUS: dict[str, Any] = {"slot": "A", "state": "idle", "last_result": None}


def vehicle_id(index: int) -> str:
    return f"veh-{index:06d}"


def private_key(index: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(SEED_DOMAIN + str(index).encode()).digest()
    )


def public_keys(indices: Sequence[int]) -> list[tuple[str, str]]:
    """(key id, public key JSON as the server stores it) for each vehicle index."""
    result = []
    for index in indices:
        key = SSlibKey.from_crypto(private_key(index).public_key())
        result.append((key.keyid, json.dumps({"keyid": key.keyid, **key.to_dict()})))
    return result


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def serial(index: int) -> str:
    """The serial of vehicle ``index``'s primary (and only) ECU."""
    return f"{vehicle_id(index)}-primary"


def ecus(index: int) -> dict[str, Any]:
    """``vehicles.ecus`` of vehicle ``index``, as registration stores it."""
    return {serial(index): {"hardware_id": HARDWARE_ID, "primary": True}}


def nonce(index: int) -> str:
    """A fresh manifest nonce naming the vehicle (letters and digits only)."""
    return f"v{index}n{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Image:
    """An image a vehicle may report on ecu-a (1.0 of the benchmark repository, or a factory
    image that is in no repository)."""

    version: str
    sha256: str
    release_counter: int
    length: int

    def as_dict(self) -> dict[str, Any]:
        """What ``installed_images`` stores (and ``server.manifest.images_of`` compares)."""
        return {
            "version": self.version,
            "sha256": self.sha256,
            "release_counter": self.release_counter,
        }

    def installed(self) -> dict[str, Any]:
        """An ECU version report's ``installed_image``."""
        return installed_image(None, self.length, self.sha256, self.version, self.release_counter)


def sign_chunk(
    jobs: Sequence[tuple[int, str, int, int]], images: Sequence[dict[str, Any]], timestamp: str
) -> list[bytes]:
    """One request line per job (vehicle index, key id, counter, image index): ``PATH SP BODY``.

    The body is the JSON of a signed vehicle version manifest with one ECU version report
    (the primary's, reporting ``images[image index]``, an ``installed_image`` dict), both
    exactly what ``overdrive.envelope.sign_envelope`` makes.
    """
    lines = []
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    for index, keyid, counter, image in jobs:
        vid = vehicle_id(index)
        key = private_key(index)
        fresh = nonce(index)
        ecu = serial(index)
        report = ecu_report(
            ecu_serial=ecu,
            hardware_id=HARDWARE_ID,
            nonce=fresh,
            counter=counter,
            image=images[image],
            now=moment,
        )
        signed_report = {
            "signed": report,
            "signatures": [{"keyid": keyid, "sig": key.sign(canonical(report)).hex()}],
        }
        payload = {
            "_type": VEHICLE_MANIFEST,
            "vehicle_id": vid,
            "primary_ecu_serial": ecu,
            "counter": counter,
            "timestamp": timestamp,
            "nonce": fresh,
            "ecu_version_reports": {ecu: signed_report},
            **STATUS,
        }
        sig = key.sign(canonical(payload)).hex()
        body = json.dumps(
            {"signed": payload, "signatures": [{"keyid": keyid, "sig": sig}]},
            separators=(",", ":"),
        )
        lines.append(f"/api/v1/vehicles/{vid}/poll {body}".encode())
    return lines


def copy_fleet(conninfo: str, count: int, keys: Sequence[tuple[str, str]], image: Image) -> None:
    """Insert ``count`` vehicles (on ``ecu-a`` ``image``) with COPY, in one transaction."""
    import psycopg

    stamp = datetime.now(UTC)
    status = json.dumps(STATUS)
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY vehicles (id, public_key, attributes, model, region, manifest_counter,"
            " registered_at, last_seen_at, status, ecus, ecu_counters) FROM STDIN"
        ) as copy:
            for index in range(count):
                model = ("m1", "m2")[index % 2]
                region = ("EU", "US", "APAC")[index % 3]
                copy.write_row(
                    (
                        vehicle_id(index),
                        keys[index][1],
                        json.dumps({"model": model, "region": region}),
                        model,
                        region,
                        0,
                        stamp,
                        None,
                        status,
                        json.dumps(ecus(index)),
                        "{}",
                    )
                )
        with cur.copy(
            "COPY installed_images (vehicle_id, hardware_id, version, sha256, release_counter)"
            " FROM STDIN"
        ) as copy:
            for index in range(count):
                copy.write_row(
                    (
                        vehicle_id(index),
                        HARDWARE_ID,
                        image.version,
                        image.sha256,
                        image.release_counter,
                    )
                )
        conn.commit()

"""The simulated fleet of the poll benchmark: deterministic vehicle keys, the bulk load of
``vehicles`` and ``installed_images`` (COPY), and pre-signed vehicle version manifests.

Every vehicle ``i`` has its own ed25519 key, derived from a fixed seed, so any process can
re-create the private key of any vehicle cheaply (``from_private_bytes`` is ~20 µs) instead of
shipping 100,000 keys between processes. The public key is stored exactly as
``server/vehicles.py::register`` stores it: ``json.dumps({"keyid": …, **key.to_dict()})``, and
so are the vehicle's ECUs: a primary ECU, serial ``<vehicle id>-primary``, on ``ecu-a``, whose
key is the vehicle's, and with ``ecus`` > 1 secondaries ``<vehicle id>-s<k>`` on ``ecu-s<k>``
(a factory image, in no repository), each with a key of its own derived the same way
(``ecus``; ``ecu_counters`` starts empty; one ``installed_images`` row per ECU).

A manifest (``overdrive.uptane.VEHICLE_MANIFEST``) carries one ECU version report per ECU, the
primary's signed by the vehicle key and each secondary's by its own; all are signed here exactly
as ``overdrive.envelope.sign_envelope`` signs (canonical JSON of the payload, ed25519 over it).
The nonce starts with ``v<index>n`` so that a load generator can tell which vehicle an answer is
for (the answer's time attestation echoes it).

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


def private_key(index: int, ecu: int = 0) -> Ed25519PrivateKey:
    """Vehicle ``index``'s key (``ecu`` 0: the primary's), or its secondary ``ecu``'s."""
    seed = SEED_DOMAIN + str(index).encode() + (f"/s{ecu}".encode() if ecu else b"")
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest())


def _key_json(private: Ed25519PrivateKey) -> tuple[str, str]:
    key = SSlibKey.from_crypto(private.public_key())
    return key.keyid, json.dumps({"keyid": key.keyid, **key.to_dict()})


def public_keys(indices: Sequence[int], ecu_count: int = 1) -> list[tuple[str, str, list[str]]]:
    """(key id, public key JSON as the server stores it, the secondaries' key JSON) for each
    vehicle index."""
    result = []
    for index in indices:
        keyid, text = _key_json(private_key(index))
        secondaries = [_key_json(private_key(index, k))[1] for k in range(1, ecu_count)]
        result.append((keyid, text, secondaries))
    return result


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def serial(index: int, ecu: int = 0) -> str:
    """The serial of vehicle ``index``'s primary ECU (``ecu`` 0), or of its secondary ``ecu``."""
    return f"{vehicle_id(index)}-primary" if ecu == 0 else f"{vehicle_id(index)}-s{ecu}"


def secondary_hardware_id(ecu: int) -> str:
    return f"ecu-s{ecu}"


def ecus(index: int, secondary_keys: Sequence[str] = ()) -> dict[str, Any]:
    """``vehicles.ecus`` of vehicle ``index`` (its secondaries' stored keys in order), as
    registration stores it."""
    result: dict[str, Any] = {serial(index): {"hardware_id": HARDWARE_ID, "primary": True}}
    for k, key in enumerate(secondary_keys, start=1):
        result[serial(index, k)] = {
            "hardware_id": secondary_hardware_id(k),
            "primary": False,
            "public_key": json.loads(key),
            "kind": "secondary",
        }
    return result


def secondary_image(ecu: int) -> Image:
    """The factory image secondary ``ecu`` runs (in no repository: no campaign offers it)."""
    digest = hashlib.sha256(f"factory image of {secondary_hardware_id(ecu)}".encode()).hexdigest()
    return Image("0.1", digest, 0, 65_536)


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


def _signed(report: dict[str, Any], key: Ed25519PrivateKey, keyid: str) -> dict[str, Any]:
    return {
        "signed": report,
        "signatures": [{"keyid": keyid, "sig": key.sign(canonical(report)).hex()}],
    }


def sign_chunk(
    jobs: Sequence[tuple[int, str, int, int]],
    images: Sequence[dict[str, Any]],
    timestamp: str,
    ecu_count: int = 1,
) -> list[bytes]:
    """One request line per job (vehicle index, key id, counter, image index): ``PATH SP BODY``.

    The body is the JSON of a signed vehicle version manifest with ``ecu_count`` ECU version
    reports: the primary's (reporting ``images[image index]``, an ``installed_image`` dict,
    signed by the vehicle key) and each secondary's (its factory image, its own key; its
    counter is the manifest's), all exactly what ``overdrive.envelope.sign_envelope`` makes.
    """
    lines = []
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    secondary_images = [secondary_image(k).installed() for k in range(ecu_count)]
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
        reports = {ecu: _signed(report, key, keyid)}
        for k in range(1, ecu_count):
            own = private_key(index, k)
            own_keyid = SSlibKey.from_crypto(own.public_key()).keyid
            secondary = ecu_report(
                ecu_serial=serial(index, k),
                hardware_id=secondary_hardware_id(k),
                nonce=fresh,
                counter=counter,
                image=secondary_images[k],
                now=moment,
            )
            reports[serial(index, k)] = _signed(secondary, own, own_keyid)
        payload = {
            "_type": VEHICLE_MANIFEST,
            "vehicle_id": vid,
            "primary_ecu_serial": ecu,
            "counter": counter,
            "timestamp": timestamp,
            "nonce": fresh,
            "ecu_version_reports": reports,
            **STATUS,
        }
        sig = key.sign(canonical(payload)).hex()
        body = json.dumps(
            {"signed": payload, "signatures": [{"keyid": keyid, "sig": sig}]},
            separators=(",", ":"),
        )
        lines.append(f"/api/v1/vehicles/{vid}/poll {body}".encode())
    return lines


def copy_fleet(
    conninfo: str, count: int, keys: Sequence[tuple[str, str, list[str]]], image: Image
) -> None:
    """Insert ``count`` vehicles (primary on ``ecu-a`` ``image``, secondaries on their factory
    images; ``keys`` from :func:`public_keys`) with COPY, in one transaction."""
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
                        json.dumps(ecus(index, keys[index][2])),
                        "{}",
                    )
                )
        with cur.copy(
            "COPY installed_images (vehicle_id, ecu_serial, hardware_id, version, sha256,"
            " release_counter) FROM STDIN"
        ) as copy:
            for index in range(count):
                vid = vehicle_id(index)
                copy.write_row(
                    (
                        vid,
                        serial(index),
                        HARDWARE_ID,
                        image.version,
                        image.sha256,
                        image.release_counter,
                    )
                )
                for k in range(1, len(keys[index][2]) + 1):
                    other = secondary_image(k)
                    copy.write_row(
                        (
                            vid,
                            serial(index, k),
                            secondary_hardware_id(k),
                            other.version,
                            other.sha256,
                            other.release_counter,
                        )
                    )
        conn.commit()

"""The server side of the director repository: each registered vehicle's own TUF repository
(``/api/v1/director/<vehicle>/metadata/``), refreshed with plain python-tuf over real HTTP,
what a campaign makes it list, when its chain is re-signed, the poll's time attestation, and
the checks on the vehicle version manifest's ECU reports and on the registration's ECUs.

Runs on SQLite, and on PostgreSQL when ``OVERDRIVE_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from securesystemslib.signer import CryptoSigner, Key
from sqlalchemy import select, update
from tuf.api.metadata import Metadata, Root, TargetFile, Targets, Timestamp
from tuf.ngclient import Updater
from werkzeug.serving import make_server

from overdrive.envelope import EnvelopeError, sign_envelope, verify_envelope
from overdrive.server.context import ServerContext
from overdrive.server.models import DirectorRepo, InstalledImage, Vehicle
from overdrive.uptane import ECU_IDENTIFIERS, TIME_ATTESTATION, VEHICLE_FIELD, parse_iso
from tests.director_view import Get, assignments, http_get
from tests.repo_fixtures import Published
from tests.server.conftest import auth, vehicle_on
from tests.server.fleet import SimVehicle

# ------------------------------------------------------------------ helpers (shared)


def role_keys(root: bytes, role: str) -> tuple[dict[str, Key], int]:
    """The keys (key id → key) and threshold the director's ``root`` gives ``role``."""
    signed = Metadata[Root].from_bytes(root).signed
    delegation = signed.roles[role]
    return {keyid: signed.keys[keyid] for keyid in delegation.keyids}, delegation.threshold


def attested_time(answer: dict[str, Any], root: bytes, nonce: str) -> datetime:
    """The time a poll answer's attestation vouches for, after checking that it is signed by
    a threshold of the director root's timestamp keys, echoes ``nonce`` and is about now."""
    keys, threshold = role_keys(root, "timestamp")
    payload = verify_envelope(answer["time"], keys, TIME_ATTESTATION, threshold)
    assert payload["nonce"] == nonce, payload
    moment = parse_iso(payload["time"], "time")
    assert abs(moment - datetime.now(UTC)) < timedelta(minutes=1), payload
    return moment


def image_target(published: Published, path: str) -> TargetFile:
    """``path`` as the image repository's newest targets metadata lists it."""
    metadata = published.storage / "metadata"
    newest = max(int(p.name.split(".")[0]) for p in metadata.glob("*.targets.json"))
    targets = Metadata[Targets].from_file(str(metadata / f"{newest}.targets.json"))
    return targets.signed.targets[path]


# ------------------------------------------------------------------ fixtures


@dataclass
class Live:
    """The app on a loopback socket."""

    url: str
    get: Get

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())


@pytest.fixture
def live(app: Flask) -> Iterator[Live]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        yield Live(url, http_get(url))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def car(live: Live, published: Published, enroll: str) -> SimVehicle:
    vehicle = vehicle_on(published, "dir-car", model="m1")
    status, body = live.post("/api/v1/vehicles/register", vehicle.registration(enroll))
    assert status == 201, body
    return vehicle


def refresh(live: Live, published: Published, vehicle_id: str, metadata_dir: Path) -> Updater:
    """A python-tuf client's refresh of the vehicle's director repository (state kept in
    ``metadata_dir``, as a vehicle keeps it between polls), trusting the director's root."""
    metadata_dir.mkdir(parents=True, exist_ok=True)
    updater = Updater(
        str(metadata_dir),
        f"{live.url}/api/v1/director/{vehicle_id}/metadata/",
        target_dir=None,
        target_base_url=None,
        bootstrap=published.director_root.read_bytes(),
    )
    updater.refresh()
    return updater


def poll(live: Live, vehicle: SimVehicle, **extra: Any) -> tuple[str, dict[str, Any]]:
    """One accepted poll; its nonce and answer."""
    nonce = f"n{vehicle.counter + 1}x{vehicle.vehicle_id}".replace("-", "")
    status, answer = live.post(
        f"/api/v1/vehicles/{vehicle.vehicle_id}/poll", vehicle.manifest(nonce=nonce, **extra)
    )
    assert status == 200, answer
    return nonce, answer


def start_campaign(http: FlaskClient, token: str, version: str = "1.1") -> str:
    body = {"name": "director", "releases": {"ecu-a": version}, "policy": "immediate"}
    created = http.post("/api/v1/campaigns", json=body, headers=auth(token))
    assert created.status_code == 201, created.json
    started = http.post(f"/api/v1/campaigns/{created.json['id']}/start", headers=auth(token))
    assert started.status_code == 200, started.json
    return str(created.json["id"])


def timestamp_version(live: Live, vehicle_id: str) -> int:
    status, body = live.get(f"/api/v1/director/{vehicle_id}/metadata/timestamp.json")
    assert status == 200, body[:300]
    return Metadata[Timestamp].from_bytes(body).signed.version


# ------------------------------------------------------------------ the repository over TUF


def test_a_vehicles_director_repository_refreshes_with_python_tuf(
    live: Live,
    http: FlaskClient,
    ctx: ServerContext,
    car: SimVehicle,
    published: Published,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    delta = "ecu-a/1.1/delta-from-1.0.bundle"
    metadata_dir = tmp_path / "vehicle" / "director"

    # Registered, nothing assigned: a poll signs nothing; the repository lists nothing.
    _nonce, answer = poll(live, car)
    assert "director" not in answer and answer["next_poll_seconds"] == 60
    updater = refresh(live, published, car.vehicle_id, metadata_dir)
    assert updater.get_targetinfo(delta) is None
    before = Metadata[Targets].from_file(str(metadata_dir / "targets.json")).signed
    assert before.targets == {} and before.unrecognized_fields[VEHICLE_FIELD] == car.vehicle_id

    # A campaign assigns the vehicle ecu-a 1.1: the next poll signs a new chain listing the
    # delta from the 1.0 it runs, exactly as the image repository has it, for its one ECU.
    campaign_id = start_campaign(http, tokens["operator"])
    _nonce, answer = poll(live, car)
    assert answer["director"]["version"] > before.version
    updater = refresh(live, published, car.vehicle_id, metadata_dir)
    target = updater.get_targetinfo(delta)
    assert target is not None
    image = image_target(published, delta)
    assert (target.length, target.hashes) == (image.length, image.hashes)
    assert target.custom[ECU_IDENTIFIERS] == {car.serial: {"hardware_id": "ecu-a"}}
    assert target.custom["campaign_id"] == campaign_id
    assert (target.custom["version"], target.custom["release_counter"]) == ("1.1", 2)
    assert updater.get_targetinfo("ecu-a/1.1/full.bundle") is None  # the delta is smaller
    after = Metadata[Targets].from_file(str(metadata_dir / "targets.json")).signed
    assert after.version == answer["director"]["version"]
    assert after.unrecognized_fields[VEHICLE_FIELD] == car.vehicle_id
    root = ctx.require_director().root_bytes(1)
    assert root is not None and root == published.director_root.read_bytes()
    assert [a["target"]["path"] for a in assignments(live.get, car.vehicle_id, root)] == [delta]

    # Nothing changed: a second poll re-signs nothing (the same chain, the same version).
    _nonce, again = poll(live, car)
    assert again["director"] == answer["director"]
    assert timestamp_version(live, car.vehicle_id) == answer["director"]["version"]
    refresh(live, published, car.vehicle_id, metadata_dir)  # still verifies from its state

    # Installed: the vehicle reports 1.1, and the director lists nothing again (a new chain).
    installed = dict(published.images["ecu-a/1.1"])
    installed.pop("path")
    car.image = installed
    _nonce, done = poll(live, car)
    assert done["director"]["version"] > answer["director"]["version"]
    updater = refresh(live, published, car.vehicle_id, metadata_dir)
    assert updater.get_targetinfo(delta) is None


def test_the_time_attestation_is_the_directors_and_echoes_the_nonce(
    live: Live, ctx: ServerContext, car: SimVehicle, published: Published
) -> None:
    root = published.director_root.read_bytes()
    nonce, answer = poll(live, car)
    assert set(answer) == {"next_poll_seconds", "time"}, answer
    attested_time(answer, root, nonce)
    # The timestamp role's key signed it, not another director key.
    targets_keys, _threshold = role_keys(root, "targets")
    with pytest.raises(EnvelopeError):
        verify_envelope(answer["time"], targets_keys, TIME_ATTESTATION)
    # A fresh nonce each poll, a fresh attestation each poll.
    other_nonce, other = poll(live, car)
    assert other["time"]["signed"]["nonce"] == other_nonce != nonce
    attested_time(other, root, other_nonce)
    assert ctx.require_director().root_bytes(1) == root


def test_a_due_chain_is_re_signed(
    live: Live,
    http: FlaskClient,
    ctx: ServerContext,
    car: SimVehicle,
    published: Published,
    tokens: dict[str, str],
    tmp_path: Path,
) -> None:
    """The director's own expiry: a timestamp past half its life is re-signed, listing the
    same targets, when a vehicle asks for timestamp.json and when it polls."""
    start_campaign(http, tokens["operator"])
    _nonce, answer = poll(live, car)
    version = answer["director"]["version"]
    root = published.director_root.read_bytes()
    assigned = assignments(live.get, car.vehicle_id, root)
    assert len(assigned) == 1

    def age() -> None:
        soon = datetime.now(UTC) + timedelta(minutes=5)  # far less than half of a day left
        with ctx.engine.begin() as conn:
            conn.execute(
                update(DirectorRepo)
                .where(DirectorRepo.vehicle_id == car.vehicle_id)
                .values(expires=soon)
            )

    age()
    assert timestamp_version(live, car.vehicle_id) == version + 1
    assert timestamp_version(live, car.vehicle_id) == version + 1  # re-signed once, not per GET
    assert assignments(live.get, car.vehicle_id, root) == assigned
    with ctx.engine.connect() as conn:
        expires = conn.scalar(
            select(DirectorRepo.expires).where(DirectorRepo.vehicle_id == car.vehicle_id)
        )
    assert expires is not None
    if expires.tzinfo is None:  # SQLite keeps no zone
        expires = expires.replace(tzinfo=UTC)
    assert expires - datetime.now(UTC) > timedelta(hours=23)  # the director's 1-day expiry

    age()
    _nonce, answer = poll(live, car)
    assert answer["director"]["version"] == version + 2
    assert assignments(live.get, car.vehicle_id, root) == assigned
    updater = refresh(live, published, car.vehicle_id, tmp_path / "director")
    assert updater.get_targetinfo(assigned[0]["target"]["path"]) is not None


# ------------------------------------------------------------------ what is served, what is not


@pytest.mark.parametrize("name", ["timestamp.json", "1.root.json", "root.json", "1.targets.json"])
def test_metadata_of_an_unknown_vehicle_is_a_404(live: Live, car: SimVehicle, name: str) -> None:
    status, body = live.get(f"/api/v1/director/no-such-car/metadata/{name}")
    assert status == 404
    error = json.loads(body)["error"]
    assert error["status"] == 404 and error["code"] == "not_found" and error["message"]


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "..%2Fx",
        "0.targets.json",
        "a.targets.json",
        "01.targets.json",
        "-1.targets.json",
        "1.timestamp.json",
        "snapshot.json",
        "targets.json",
        "1.targets",
        "1.targets.json.bak",
        "1234567890.targets.json",
        "x",
    ],
)
def test_bad_metadata_names_are_404s(live: Live, car: SimVehicle, name: str) -> None:
    status, body = live.get(f"/api/v1/director/{car.vehicle_id}/metadata/{name}")
    assert status == 404, body[:300]
    assert json.loads(body)["error"]["status"] == 404


def test_metadata_versions_that_do_not_exist_are_404s(live: Live, car: SimVehicle) -> None:
    assert timestamp_version(live, car.vehicle_id) == 1
    for name in ("2.root.json", "2.targets.json", "2.snapshot.json", "999.targets.json"):
        status, body = live.get(f"/api/v1/director/{car.vehicle_id}/metadata/{name}")
        assert status == 404, (name, body[:300])
    status, body = live.get(f"/api/v1/director/{car.vehicle_id}/metadata/1.targets.json")
    assert status == 200
    assert Metadata[Targets].from_bytes(body).signed.unrecognized_fields[VEHICLE_FIELD] == (
        car.vehicle_id
    )


# ------------------------------------------------------------------ ECU reports in the manifest


def resigned(vehicle: SimVehicle, manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` (its payload changed by the test) signed again by the vehicle's key."""
    return sign_envelope(manifest["signed"], vehicle.signer)


def report_of(manifest: dict[str, Any], vehicle: SimVehicle) -> dict[str, Any]:
    return dict(manifest["signed"]["ecu_version_reports"][vehicle.serial]["signed"])


def with_report(
    vehicle: SimVehicle, manifest: dict[str, Any], report: dict[str, Any], signer: Any = None
) -> dict[str, Any]:
    """``manifest`` whose primary's report is ``report``, signed by ``signer`` (default: the
    vehicle's key), and the manifest re-signed by the vehicle."""
    manifest["signed"]["ecu_version_reports"][vehicle.serial] = sign_envelope(
        report, signer or vehicle.signer
    )
    return resigned(vehicle, manifest)


def refused(live: Live, vehicle: SimVehicle, manifest: dict[str, Any]) -> tuple[int, str]:
    status, body = live.post(f"/api/v1/vehicles/{vehicle.vehicle_id}/poll", manifest)
    assert set(body) == {"error"} and body["error"]["status"] == status, body
    return status, str(body["error"]["message"])


def test_an_ecu_report_signed_by_another_key_is_a_401(live: Live, car: SimVehicle) -> None:
    manifest = car.manifest()
    forged = with_report(car, manifest, report_of(manifest, car), CryptoSigner.generate_ed25519())
    status, message = refused(live, car, forged)
    assert status == 401 and car.serial in message
    poll(live, car)  # the refusal moved no counter


def test_an_ecu_report_with_a_stale_counter_is_a_409(live: Live, car: SimVehicle) -> None:
    poll(live, car)
    poll(live, car)  # the ECU's counter is now 2
    manifest = car.manifest()
    report = report_of(manifest, car)
    assert report["counter"] == 3
    for stale in (2, 1):
        report["counter"] = stale
        status, message = refused(live, car, with_report(car, manifest, report))
        assert status == 409 and "replayed version report" in message and car.serial in message
    poll(live, car)


def test_an_ecu_report_that_does_not_echo_the_nonce_is_a_409(live: Live, car: SimVehicle) -> None:
    manifest = car.manifest(nonce="thisPollsNonce1")
    report = report_of(manifest, car)
    report["nonce"] = "anEarlierNonce1"
    status, message = refused(live, car, with_report(car, manifest, report))
    assert status == 409 and "nonce" in message
    poll(live, car)


def test_an_ecu_report_of_an_unregistered_serial_is_ignored_and_recorded(
    live: Live, ctx: ServerContext, car: SimVehicle
) -> None:
    """A report under a serial the vehicle has no ECU of is ignored, not the manifest (a stray
    report must not wedge the vehicle): the vehicle's status records the serial, the metric
    counts it, nothing of the report is stored."""
    manifest = car.manifest()
    report = report_of(manifest, car)
    ghost = {**report, "ecu_serial": "ghost-ecu", "hardware_id": "ecu-z", "counter": 99}
    manifest["signed"]["ecu_version_reports"]["ghost-ecu"] = sign_envelope(ghost, car.signer)
    status, answer = live.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", resigned(car, manifest))
    assert status == 200, answer
    with ctx.session() as session:
        vehicle = session.get(Vehicle, car.vehicle_id)
        assert vehicle is not None
        assert vehicle.ecu_counters == {car.serial: report["counter"]}  # no ghost counter
        unknown = vehicle.status["unknown_ecus"]
        assert list(unknown) == ["ghost-ecu"] and unknown["ghost-ecu"]["hardware_id"] == "ecu-z"
        first_seen = unknown["ghost-ecu"]["first_seen"]
        images = session.scalars(
            select(InstalledImage.ecu_serial).where(InstalledImage.vehicle_id == car.vehicle_id)
        ).all()
        assert images == [car.serial]
    assert b"overdrive_unknown_ecu_reports_total 1.0" in ctx.metrics.render()
    # It stays recorded (first seen kept) while later polls go on without it.
    poll(live, car)
    with ctx.session() as session:
        vehicle = session.get(Vehicle, car.vehicle_id)
        assert vehicle is not None
        assert vehicle.status["unknown_ecus"]["ghost-ecu"]["first_seen"] == first_seen
    # A report of garbage under an unknown serial is ignored just the same (never verified).
    manifest = car.manifest()
    manifest["signed"]["ecu_version_reports"]["ghost-2"] = {"signed": [1], "signatures": 5}
    status, answer = live.post(f"/api/v1/vehicles/{car.vehicle_id}/poll", resigned(car, manifest))
    assert status == 200, answer
    # Reporting for an ECU of this vehicle under another serial's name is still a 401.
    manifest = car.manifest()
    report = {**report_of(manifest, car), "ecu_serial": "ghost-ecu"}
    status, _message = refused(live, car, with_report(car, manifest, report))
    assert status == 401
    # Nor may the primary's own report be left out.
    manifest = car.manifest()
    manifest["signed"]["ecu_version_reports"] = {}
    assert refused(live, car, resigned(car, manifest))[0] == 400
    manifest = car.manifest()
    manifest["signed"]["ecu_version_reports"] = {"ghost-ecu": sign_envelope(ghost, car.signer)}
    status, message = refused(live, car, resigned(car, manifest))
    assert status == 400 and "no version report from the primary ECU" in message
    poll(live, car)


# ------------------------------------------------------------------ registration's ECUs


@pytest.mark.parametrize(
    ("ecus", "message"),
    [
        (None, "ecus"),
        ({}, "ecus"),
        ([], "ecus"),
        ({"p1": {"hardware_id": "ecu-a"}}, "exactly one primary"),
        (
            {
                "p1": {"hardware_id": "ecu-a", "primary": True},
                "p2": {"hardware_id": "ecu-a", "primary": True},
            },
            "exactly one primary",
        ),
        ({"p1": {"hardware_id": "ecu-b", "primary": True}}, "ecu-b"),
        ({"../x": {"hardware_id": "ecu-a", "primary": True}}, "ECU serial"),
        ({"p1": {"primary": True}}, "hardware_id"),
        ({"p1": {"hardware_id": "ecu-a", "primary": "yes"}}, "primary"),
        ({"p1": {"hardware_id": "ecu-a", "primary": True, "public_key": {"x": 1}}}, "public_key"),
    ],
)
def test_registration_needs_ecus_with_exactly_one_primary(
    http: FlaskClient, published: Published, enroll: str, ecus: Any, message: str
) -> None:
    body = vehicle_on(published, "ecu-car").registration(enroll)
    if ecus is None:
        del body["ecus"]
    else:
        body["ecus"] = ecus
    response = http.post("/api/v1/vehicles/register", json=body)
    assert response.status_code == 400, response.json
    assert message in response.json["error"]["message"]
    assert http.get("/api/v1/director/ecu-car/metadata/timestamp.json").status_code == 404

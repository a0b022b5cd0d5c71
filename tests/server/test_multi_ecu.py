"""Multi-ECU vehicles on the server: the installed image per ECU (two ECUs of one hardware id
each tracked), the vehicle's software set in the API, director targets per ECU with the
campaign's install order, a vehicle's memberships admitted together, a rolled-back set judged
against the hardware id that caused it, unknown serials ignored and recorded, and ECU
replacement (API, audit, CLI).

Runs on SQLite, and on PostgreSQL when ``OVERDRIVE_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from securesystemslib.signer import CryptoSigner
from sqlalchemy import select

from overdrive.envelope import sign_envelope
from overdrive.server.campaigns import tick
from overdrive.server.context import ServerContext
from overdrive.server.models import InstalledImage, Membership, Vehicle
from overdrive.uptane import VEHICLE_MANIFEST, DirectorEntry, ecu_report, entries_for
from tests.conftest import Cli
from tests.director_view import director_targets, flask_get
from tests.server.conftest import Published, auth
from tests.server.fleet import SimEcu, SimVehicle, image_report, now_iso, public_key_of
from tests.server.test_campaign_cli import server_url  # noqa: F401  (a fixture)
from tests.server.test_vehicle_api import error_of


def image(published: Published, name: str) -> dict[str, Any]:
    ref = dict(published.images[name])
    ref.pop("path")
    return ref


def factory(hw: str) -> dict[str, Any]:
    """A factory image of ``hw`` that is in no repository (release counter 0)."""
    return {"version": "0.9", "sha256": hashlib.sha256(hw.encode()).hexdigest(), "length": 7}


def set_car(published: Published, vehicle_id: str, *extra: SimEcu, **attributes: Any) -> SimVehicle:
    """A vehicle with a primary on ecu-a 1.0 and a gateway (its own key) on an ecu-b factory
    image, plus ``extra`` ECUs."""
    gateway = SimEcu(f"{vehicle_id}-gw", "ecu-b", factory("ecu-b"))
    return SimVehicle(
        vehicle_id,
        image=image(published, "ecu-a/1.0"),
        attributes={"model": "m3", **attributes},
        secondaries=[gateway, *extra],
    )


def register(http: FlaskClient, enroll: str, vehicle: SimVehicle) -> None:
    response = http.post("/api/v1/vehicles/register", json=vehicle.registration(enroll))
    assert response.status_code == 201, response.json


def poll(http: FlaskClient, vehicle: SimVehicle, **options: Any) -> dict[str, Any]:
    response = http.post(
        f"/api/v1/vehicles/{vehicle.vehicle_id}/poll", json=vehicle.manifest(**options)
    )
    assert response.status_code == 200, response.json
    return dict(response.json)


def entries(http: FlaskClient, ctx: ServerContext, vehicle_id: str) -> dict[str, DirectorEntry]:
    """ECU serial → what the vehicle's verified director targets say it should run."""
    root = ctx.require_director().root_bytes(1)
    assert root is not None
    targets = director_targets(flask_get(http), vehicle_id, root)
    return entries_for(targets.signed.targets) if targets is not None else {}


def installed(ctx: ServerContext, vehicle_id: str) -> dict[str, tuple[str, str]]:
    """ECU serial → (hardware id, version) as stored."""
    with ctx.session() as session:
        rows = session.scalars(
            select(InstalledImage).where(InstalledImage.vehicle_id == vehicle_id)
        )
        return {r.ecu_serial: (r.hardware_id, r.version) for r in rows}


def vehicle_row(ctx: ServerContext, vehicle_id: str) -> Vehicle:
    with ctx.session() as session:
        vehicle = session.get(Vehicle, vehicle_id)
        assert vehicle is not None
        session.expunge(vehicle)
        return vehicle


def create(http: FlaskClient, token: str, **body: Any) -> dict[str, Any]:
    response = http.post(
        "/api/v1/campaigns",
        json={"name": "set", "policy": "immediate", **body},
        headers=auth(token),
    )
    assert response.status_code == 201, response.json
    return dict(response.json)


def start(http: FlaskClient, token: str, campaign_id: str) -> dict[str, Any]:
    response = http.post(f"/api/v1/campaigns/{campaign_id}/start", headers=auth(token))
    assert response.status_code == 200, response.json
    return dict(response.json)


# ------------------------------------------------------------------ the installed image per ECU


def test_each_ecu_is_tracked_and_shown_as_the_vehicles_software_set(
    app: Flask,
    http: FlaskClient,
    ctx: ServerContext,
    published: Published,
    enroll: str,
    tokens: dict[str, str],
) -> None:
    twin = SimEcu("twin-car-a2", "ecu-a", image(published, "ecu-a/1.0"), kind="module")
    car = set_car(published, "twin-car", twin)
    register(http, enroll, car)
    # Each ECU starts with its hardware id's factory image.
    assert installed(ctx, "twin-car") == {
        "twin-car-primary": ("ecu-a", "1.0"),
        "twin-car-gw": ("ecu-b", "0.9"),
        "twin-car-a2": ("ecu-a", "1.0"),
    }
    viewer = auth(tokens["viewer"])
    before = http.get("/api/v1/vehicles/twin-car", headers=viewer).json
    assert before["ecus"]["twin-car-primary"] == {
        "hardware_id": "ecu-a",
        "primary": True,
        "kind": "primary",
        "installed": {
            k: image(published, "ecu-a/1.0")[k] for k in ("version", "sha256", "release_counter")
        },
        "last_report_at": None,
        "attacks_detected": None,
        "keyid": car.signer.public_key.keyid,
    }
    assert before["ecus"]["twin-car-gw"]["kind"] == "secondary"
    assert before["ecus"]["twin-car-gw"]["keyid"] == car.secondaries[0].signer.public_key.keyid
    assert before["ecus"]["twin-car-a2"]["kind"] == "module"
    assert before["unknown_ecus"] == {}

    # The two ecu-a ECUs report different images: each is stored for its own serial.
    twin.image = factory("ecu-a")
    answer = poll(http, car)
    assert "time" in answer
    assert installed(ctx, "twin-car") == {
        "twin-car-primary": ("ecu-a", "1.0"),
        "twin-car-gw": ("ecu-b", "0.9"),
        "twin-car-a2": ("ecu-a", "0.9"),
    }
    after = http.get("/api/v1/vehicles/twin-car", headers=viewer).json
    assert after["ecus"]["twin-car-a2"]["installed"]["version"] == "0.9"
    assert after["ecus"]["twin-car-primary"]["last_report_at"] == after["last_seen_at"]
    assert after["images"]["ecu-a"]["version"] == "0.9"  # per hardware id: the one behind
    assert after["status"].get("unreported_ecus") is None
    # The fleet list filters by any ECU's image.
    found = http.get("/api/v1/vehicles?hardware_id=ecu-a&version=0.9", headers=viewer).json
    assert [v["id"] for v in found["items"]] == ["twin-car"]

    # An ECU missing from a manifest keeps the time of its last report; its image stands.
    reported_at = after["ecus"]["twin-car-gw"]["last_report_at"]
    poll(http, car, skip=("twin-car-gw",))
    later = http.get("/api/v1/vehicles/twin-car", headers=viewer).json
    assert later["status"]["unreported_ecus"] == {"twin-car-gw": reported_at}
    assert later["ecus"]["twin-car-gw"]["last_report_at"] == reported_at
    assert later["ecus"]["twin-car-gw"]["installed"]["version"] == "0.9"
    poll(http, car, skip=("twin-car-gw",))
    assert http.get("/api/v1/vehicles/twin-car", headers=viewer).json["status"][
        "unreported_ecus"
    ] == {"twin-car-gw": reported_at}

    # Attacks an ECU detected are shown on that ECU.
    car.counter += 1
    nonce = "attackNonce1"
    reports = {car.serial: _primary_report(car, nonce)}
    for ecu in car.secondaries:
        reports[ecu.serial] = ecu.report(nonce)
    gw = car.secondaries[0]
    gw.counter += 1
    reports[gw.serial] = _report(gw, nonce, attacks="director_mismatch: ecu-b/9.bundle")
    response = http.post("/api/v1/vehicles/twin-car/poll", json=_manifest(car, nonce, reports))
    assert response.status_code == 200, response.json
    shown = http.get("/api/v1/vehicles/twin-car", headers=viewer).json["ecus"]
    assert shown["twin-car-gw"]["attacks_detected"] == "director_mismatch: ecu-b/9.bundle"
    assert shown["twin-car-primary"]["attacks_detected"] is None

    # The dashboard's vehicle page shows the software set.
    page = _dashboard(app, tokens).get("/dashboard/vehicles/twin-car").text
    for text in ("Software set", "twin-car-a2", "twin-car-gw", "module", "director_mismatch"):
        assert text in page, text


def _dashboard(app: Flask, tokens: dict[str, str]) -> FlaskClient:
    from tests.server.test_dashboard import signed_in

    client, _csrf = signed_in(app, tokens["viewer"])
    return client


def _primary_report(car: SimVehicle, nonce: str) -> dict[str, Any]:
    payload = ecu_report(
        ecu_serial=car.serial,
        hardware_id=car.hardware_id,
        nonce=nonce,
        counter=car.counter,
        image=image_report(car.image),
    )
    return sign_envelope(payload, car.signer)


def _report(ecu: SimEcu, nonce: str, *, attacks: str = "", signer: Any = None) -> dict[str, Any]:
    payload = ecu_report(
        ecu_serial=ecu.serial,
        hardware_id=ecu.hardware_id,
        nonce=nonce,
        counter=ecu.counter,
        image=image_report(ecu.image),
        attacks_detected=attacks,
    )
    return sign_envelope(payload, signer or ecu.signer)


def _manifest(car: SimVehicle, nonce: str, reports: dict[str, Any]) -> dict[str, Any]:
    payload = {
        "_type": VEHICLE_MANIFEST,
        "vehicle_id": car.vehicle_id,
        "primary_ecu_serial": car.serial,
        "counter": car.counter,
        "timestamp": now_iso(),
        "nonce": nonce,
        "ecu_version_reports": reports,
    }
    return sign_envelope(payload, car.signer)


def test_a_secondarys_report_signed_by_the_primary_is_refused(
    http: FlaskClient, ctx: ServerContext, published: Published, enroll: str
) -> None:
    """A secondary with a key of its own: the primary cannot report for it."""
    car = set_car(published, "forge-car")
    register(http, enroll, car)
    car.counter += 1
    nonce = "forgedReport1"
    gw = car.secondaries[0]
    gw.counter += 1
    reports = {
        car.serial: _primary_report(car, nonce),
        gw.serial: _report(gw, nonce, signer=car.signer),
    }
    response = http.post("/api/v1/vehicles/forge-car/poll", json=_manifest(car, nonce, reports))
    assert response.status_code == 401
    assert "ECU forge-car-gw's version report" in error_of(response)
    assert vehicle_row(ctx, "forge-car").manifest_counter == 0  # nothing moved
    poll(http, car)


# ------------------------------------------------------------------ director targets, install order


def test_director_targets_per_ecu_in_install_order(
    http: FlaskClient,
    ctx: ServerContext,
    published: Published,
    enroll: str,
    tokens: dict[str, str],
) -> None:
    twin = SimEcu("order-car-a2", "ecu-a", factory("ecu-a"))
    car = set_car(published, "order-car", twin)
    done = SimEcu("order-car-a3", "ecu-a", image(published, "ecu-a/1.1"))
    car.secondaries.append(done)
    register(http, enroll, car)
    poll(http, car)  # the ECUs report their own images
    op = tokens["operator"]
    bad = http.post(
        "/api/v1/campaigns",
        json={
            "name": "x",
            "releases": {"ecu-a": "1.1", "ecu-b": "1.0"},
            "policy": "immediate",
            "install_order": ["ecu-a"],
        },
        headers=auth(op),
    )
    assert bad.status_code == 400 and "each hardware id of 'releases' exactly once" in error_of(bad)
    campaign = create(
        http,
        op,
        releases={"ecu-a": "1.1", "ecu-b": "1.0"},
        install_order=["ecu-b", "ecu-a"],
        filter={"vehicles": ["order-car"]},
    )
    assert campaign["install_order"] == ["ecu-b", "ecu-a"]
    assert campaign["releases"]["ecu-a"]["install_order"] == 1
    start(http, op, campaign["id"])
    poll(http, car)
    got = entries(http, ctx, "order-car")
    # Each ECU of ecu-a gets the bundle that suits the image *it* runs; the one on 1.1 nothing.
    assert set(got) == {"order-car-primary", "order-car-a2", "order-car-gw"}
    assert got["order-car-primary"].path == "ecu-a/1.1/delta-from-1.0.bundle"
    assert got["order-car-a2"].path == "ecu-a/1.1/full.bundle"
    assert got["order-car-gw"].path == "ecu-b/1.0/full.bundle"
    assert {s: e.install_order for s, e in got.items()} == {
        "order-car-gw": 0,
        "order-car-primary": 1,
        "order-car-a2": 1,
    }
    assert {e.campaign_id for e in got.values()} == {campaign["id"]}

    # Default order: that of `releases`.
    other = create(http, op, releases={"ecu-b": "1.0", "ecu-a": "1.1"})
    assert other["install_order"] == ["ecu-b", "ecu-a"]
    assert [other["releases"][hw]["install_order"] for hw in ("ecu-b", "ecu-a")] == [0, 1]


# ------------------------------------------------------------------ admission, judging


SLOW = {
    "name": "set-staged",
    "stages": [
        {"name": "canary", "share": "10%", "min_finished": 1, "max_failure_rate": "100%"},
        {"name": "all", "share": "100%", "min_finished": 1, "max_failure_rate": "100%"},
    ],
    "judge": {"acceptable_failure_rate": "1%"},
}


def test_a_vehicles_set_is_admitted_in_one_stage(
    http: FlaskClient,
    ctx: ServerContext,
    published: Published,
    enroll: str,
    tokens: dict[str, str],
) -> None:
    cars = [set_car(published, f"adm-{i:02d}") for i in range(10)]
    for car in cars:
        register(http, enroll, car)
    op = tokens["operator"]
    campaign = create(
        http, op, releases={"ecu-a": "1.1", "ecu-b": "1.0"}, policy=SLOW, filter={"model": "m3"}
    )
    started = start(http, op, campaign["id"])
    # 20 memberships (2 per vehicle); the canary's 10% is 2: one whole vehicle.
    assert started["counts"]["eligible"] == 20
    assert started["counts"]["admitted"] == 2
    with ctx.session() as session:
        rows = session.execute(
            select(Membership.vehicle_id, Membership.hardware_id, Membership.admitted).where(
                Membership.campaign_id == campaign["id"]
            )
        ).all()
    by_vehicle: dict[str, set[bool]] = {}
    for vehicle_id, _hw, admitted in rows:
        by_vehicle.setdefault(vehicle_id, set()).add(bool(admitted))
    assert all(len(states) == 1 for states in by_vehicle.values()), by_vehicle  # never split
    assert sum(True in states for states in by_vehicle.values()) == 1


def _started_set(
    http: FlaskClient,
    published: Published,
    enroll: str,
    tokens: dict[str, str],
    prefix: str,
    count: int,
) -> tuple[list[Any], str]:
    """``count`` registered two-ECU cars and a started set campaign (ecu-a 1.1, ecu-b 1.0)."""
    cars = [set_car(published, f"{prefix}-{i}") for i in range(count)]
    for car in cars:
        register(http, enroll, car)
    op = tokens["operator"]
    campaign = create(
        http,
        op,
        releases={"ecu-a": "1.1", "ecu-b": "1.0"},
        policy=_set_policy(),
        filter={"model": "m3"},
    )
    start(http, op, campaign["id"])
    return cars, str(campaign["id"])


def _set_policy(share: str = "100%") -> dict[str, Any]:
    return {
        "name": "set-judged",
        "stages": [{"name": "all", "share": share, "min_finished": 1, "max_failure_rate": "100%"}],
        "judge": {"acceptable_failure_rate": "10%"},
    }


def test_a_rolled_back_set_counts_against_the_hardware_id_that_caused_it(
    app: Flask,
    http: FlaskClient,
    ctx: ServerContext,
    published: Published,
    enroll: str,
    tokens: dict[str, str],
) -> None:
    cars, cid = _started_set(http, published, enroll, tokens, "judge", 3)
    op = tokens["operator"]
    # judge-0: the gateway's health check failed: both ECUs roll back, naming the gateway.
    # judge-1: the same, but blaming a hardware id the campaign does not update for it:
    # that cannot move the failure anywhere (each membership counts as its own failure).
    # judge-2: the set commits.
    plans = {
        "judge-0": ("rolled_back", {"ecu_serial": "judge-0-gw", "hardware_id": "ecu-b"}),
        "judge-1": ("rolled_back", {"ecu_serial": "judge-1-x", "hardware_id": "ecu-zz"}),
        "judge-2": ("committed", None),
    }
    for car in cars:
        outcome, cause = plans[car.vehicle_id]
        details = {"caused_by": cause, "software_set": True} if cause else {}
        events = [
            {"type": outcome, "campaign_id": cid, "hardware_id": hw, "details": details}
            for hw in ("ecu-b", "ecu-a")
        ]
        response = http.post(f"/api/v1/vehicles/{car.vehicle_id}/events", json=car.events(*events))
        assert response.status_code == 200, response.json
    with ctx.session() as session:
        caused = {
            (m.vehicle_id, m.hardware_id): (m.status, m.caused_by)
            for m in session.scalars(select(Membership).where(Membership.campaign_id == cid))
        }
    assert caused[("judge-0", "ecu-a")] == ("rolled_back", "ecu-b")
    assert caused[("judge-0", "ecu-b")] == ("rolled_back", "ecu-b")
    assert caused[("judge-1", "ecu-a")] == ("rolled_back", None)
    status = http.get(f"/api/v1/campaigns/{cid}", headers=auth(op)).json
    groups = {(g["dimension"], g["value"]): g for g in status["groups"]}
    # ecu-a: judge-0's rollback is ecu-b's fault, judge-1's its own, judge-2 succeeded.
    assert (
        groups[("hardware_id", "ecu-a")]["failures"],
        groups[("hardware_id", "ecu-a")]["succeeded"],
    ) == (1, 1)
    assert groups[("hardware_id", "ecu-a")]["finished"] == 2
    # ecu-b: judge-0 (its own) and judge-1.
    assert groups[("hardware_id", "ecu-b")]["failures"] == 2
    # The campaign overall counts every membership as it ended.
    assert status["counts"]["rolled_back"] == 4 and status["counts"]["committed"] == 2
    members = http.get(
        f"/api/v1/campaigns/{cid}/vehicles?status=rolled_back&hardware_id=ecu-a", headers=auth(op)
    ).json["items"]
    assert {m["vehicle_id"]: m["caused_by"] for m in members} == {
        "judge-0": "ecu-b",
        "judge-1": None,
    }
    page = _dashboard(app, tokens).get(f"/dashboard/campaigns/{cid}/vehicles?status=rolled_back")
    assert page.status_code == 200
    assert "rolled back with its software set: caused by ecu-b" in page.text
    # Every membership has finished, collateral ones too: the campaign is judged to an end,
    # never left waiting for them.
    decision = tick(ctx, now=datetime.now(UTC) + timedelta(days=1))[cid]
    assert decision in ("complete", "pause", "abort"), decision

    # Malformed set details refuse the batch (the client isolates the event).
    for details, fragment in (
        ({"caused_by": "ecu-b"}, "caused_by' must be an object"),
        ({"caused_by": {"hardware_id": "ecu-b"}}, "caused_by.ecu_serial"),
        ({"caused_by": {"hardware_id": "a\nb", "ecu_serial": "x"}}, "is not a valid id"),
        ({"software_set": "yes"}, "software_set' must be a boolean"),
    ):
        bad = cars[2].events(
            {"type": "failed", "campaign_id": cid, "hardware_id": "ecu-a", "details": details}
        )
        response = http.post(f"/api/v1/vehicles/{cars[2].vehicle_id}/events", json=bad)
        assert response.status_code == 400 and fragment in error_of(response), (
            details,
            response.json,
        )


# ------------------------------------------------------------------ unknown ECUs, replacement


def test_ecu_replacement(
    app: Flask,
    http: FlaskClient,
    ctx: ServerContext,
    published: Published,
    enroll: str,
    tokens: dict[str, str],
) -> None:
    car = set_car(published, "swap-car")
    register(http, enroll, car)
    poll(http, car)
    poll(http, car)
    old = car.secondaries[0]
    assert vehicle_row(ctx, "swap-car").ecu_counters == {"swap-car-primary": 2, "swap-car-gw": 2}

    # The workshop fits a new gateway (new serial, new key) and it reports before anyone told
    # the server: its report is ignored and recorded; the manifest goes through.
    new = SimEcu("swap-car-gw2", "ecu-b", factory("ecu-b"))
    car.secondaries = [new]
    poll(http, car)
    row = vehicle_row(ctx, "swap-car")
    assert row.ecu_counters == {"swap-car-primary": 3, "swap-car-gw": 2}
    assert set(row.status["unknown_ecus"]) == {"swap-car-gw2"}
    assert row.status["unreported_ecus"] == {
        "swap-car-gw": row.status["unreported_ecus"]["swap-car-gw"]
    }
    shown = http.get("/api/v1/vehicles/swap-car", headers=auth(tokens["viewer"])).json
    assert shown["unknown_ecus"]["swap-car-gw2"]["hardware_id"] == "ecu-b"
    page = _dashboard(app, tokens).get("/dashboard/vehicles/swap-car").text
    assert "Unknown ECUs" in page and "swap-car-gw2" in page

    path = "/api/v1/vehicles/swap-car/ecus/swap-car-gw/replace"
    body = {"new_serial": "swap-car-gw2", "public_key": public_key_of(new.signer)}
    assert http.post(path, json=body, headers=auth(tokens["viewer"])).status_code == 403
    for target, payload, status, fragment in (
        (path, {**body, "hardware_id": "ecu-a"}, 400, "must be one too"),
        (path, {**body, "public_key": {"keyid": "x"}}, 400, "public_key"),
        (path, {"public_key": body["public_key"]}, 400, "new_serial"),
        (path, {**body, "new_serial": "swap-car-primary"}, 409, "already has an ECU"),
        ("/api/v1/vehicles/swap-car/ecus/nope/replace", body, 404, "no ECU nope"),
        ("/api/v1/vehicles/nobody/ecus/swap-car-gw/replace", body, 404, "unknown vehicle"),
    ):
        response = http.post(target, json=payload, headers=auth(tokens["operator"]))
        assert response.status_code == status, (payload, response.json)
        assert fragment in error_of(response)
    response = http.post(
        path, json={**body, "hardware_id": "ecu-b"}, headers=auth(tokens["operator"])
    )
    assert response.status_code == 200, response.json
    replaced = response.json
    assert list(replaced["ecus"]) == ["swap-car-primary", "swap-car-gw2"]
    gw2 = replaced["ecus"]["swap-car-gw2"]
    assert (gw2["hardware_id"], gw2["kind"], gw2["keyid"]) == (
        "ecu-b",
        "secondary",
        new.signer.public_key.keyid,
    )
    assert gw2["installed"]["version"] == "0.9" and gw2["last_report_at"] is None
    assert replaced["unknown_ecus"] == {}
    audit = http.get(
        "/api/v1/audit?action=vehicle.replace_ecu", headers=auth(tokens["viewer"])
    ).json
    (entry,) = audit["items"]
    assert entry["target"] == "vehicle:swap-car" and entry["actor"].startswith("test-operator")
    assert (
        entry["details"]["old_serial"] == "swap-car-gw"
        and entry["details"]["new_serial"] == "swap-car-gw2"
    )
    assert installed(ctx, "swap-car") == {
        "swap-car-primary": ("ecu-a", "1.0"),
        "swap-car-gw2": ("ecu-b", "0.9"),
    }
    assert vehicle_row(ctx, "swap-car").ecu_counters == {"swap-car-primary": 3}

    # The new part's reports are accepted (its counter starts from its own, whatever the old
    # one's was), the old serial's are unknown now.
    new.counter = 0
    new.image = image(published, "ecu-b/1.0")
    car.secondaries = [new, old]
    poll(http, car)
    row = vehicle_row(ctx, "swap-car")
    assert row.ecu_counters == {"swap-car-primary": 4, "swap-car-gw2": 1}
    assert set(row.status["unknown_ecus"]) == {"swap-car-gw"}
    assert installed(ctx, "swap-car")["swap-car-gw2"] == ("ecu-b", "1.0")
    assert "unreported_ecus" not in row.status
    # The old part's key cannot sign for the new serial.
    car.counter += 1
    nonce = "oldKeyNewSerial1"
    impostor = SimEcu("swap-car-gw2", "ecu-b", factory("ecu-b"), signer=old.signer, counter=5)
    reports = {car.serial: _primary_report(car, nonce), "swap-car-gw2": impostor.report(nonce)}
    response = http.post("/api/v1/vehicles/swap-car/poll", json=_manifest(car, nonce, reports))
    assert response.status_code == 401 and "swap-car-gw2" in error_of(response)

    # Replacing the primary: the new unit's key is the vehicle's, its counter starts again.
    unit = CryptoSigner.generate_ed25519()
    response = http.post(
        "/api/v1/vehicles/swap-car/ecus/swap-car-primary/replace",
        json={"new_serial": "swap-car-tcu2", "public_key": public_key_of(unit)},
        headers=auth(tokens["operator"]),
    )
    assert response.status_code == 200, response.json
    assert response.json["ecus"]["swap-car-tcu2"]["primary"] is True
    assert response.json["ecus"]["swap-car-tcu2"]["keyid"] == unit.public_key.keyid
    stale = car.manifest()  # still the old unit's key and serial
    assert http.post("/api/v1/vehicles/swap-car/poll", json=stale).status_code == 401
    fresh = SimVehicle(
        "swap-car", image=car.image, signer=unit, secondaries=[new], primary_serial="swap-car-tcu2"
    )
    assert "time" in poll(http, fresh)
    row = vehicle_row(ctx, "swap-car")
    assert row.manifest_counter == 1 and row.ecu_counters["swap-car-tcu2"] == 1


def test_replace_ecu_command(
    cli: Cli,
    server_url: str,  # noqa: F811
    http: FlaskClient,
    published: Published,
    enroll: str,
    tokens: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    car = set_car(published, "cli-car")
    register(http, enroll, car)
    monkeypatch.setenv("OVERDRIVE_SERVER", server_url)
    monkeypatch.setenv("OVERDRIVE_TOKEN", tokens["operator"])
    new = CryptoSigner.generate_ed25519()
    key_json = tmp_path / "gw2.json"
    key_json.write_text(json.dumps(public_key_of(new)))
    done = cli("fleet", "replace-ecu", "cli-car", "cli-car-gw", "--new-serial", "cli-car-gw2",
               "--public-key", key_json, "--hardware-id", "ecu-b")  # fmt: skip
    assert done.code == 0, done.stderr
    assert "replaced ECU cli-car-gw by cli-car-gw2" in done.stdout
    assert "cli-car-gw2 ecu-b secondary 0.9" in done.stdout
    # A PEM public key works too (as `overdrive keys generate` writes one).
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    pem = tmp_path / "gw3.pub"
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    done = cli("fleet", "replace-ecu", "cli-car", "cli-car-gw2", "--new-serial", "cli-car-gw3",
               "--public-key", pem, "--json")  # fmt: skip
    assert done.code == 0, done.stderr
    assert "cli-car-gw3" in json.loads(done.stdout)["ecus"]
    # Errors: one line, non-zero exit.
    for args, fragment in (
        (["cli-car", "cli-car-gw", "--new-serial", "x1", "--public-key", key_json], "no ECU cli-car-gw"),
        (["cli-car", "cli-car-gw3", "--new-serial", "x1", "--public-key", key_json, "--hardware-id", "ecu-a"], "must be one too"),
        (["cli-car", "cli-car-gw3", "--new-serial", "x1", "--public-key", tmp_path / "none.pub"], "none.pub"),
    ):  # fmt: skip
        failed = cli("fleet", "replace-ecu", *args)
        assert failed.code != 0 and len(failed.error_lines) == 1, failed
        assert fragment in failed.stderr, (fragment, failed.stderr)
    # A software set's install order from the command line.
    created = cli("campaign", "create", "--name", "set", "--release", "ecu-a=1.1",
                  "--release", "ecu-b=1.0", "--install-order", "ecu-b,ecu-a", "--policy",
                  "immediate", "--json")  # fmt: skip
    assert created.code == 0, created.stderr
    assert json.loads(created.stdout)["install_order"] == ["ecu-b", "ecu-a"]
    shown = cli("campaign", "status", json.loads(created.stdout)["id"])
    assert "releases  ecu-b=1.0, ecu-a=1.1  (in install order)" in shown.stdout, shown.stdout
    bad = cli("campaign", "create", "--name", "set", "--release", "ecu-a=1.1",
              "--install-order", "ecu-b", "--policy", "immediate")  # fmt: skip
    assert bad.code != 0 and "install_order" in bad.stderr and len(bad.error_lines) == 1
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("not a key")
    failed = cli(
        "fleet",
        "replace-ecu",
        "cli-car",
        "cli-car-gw3",
        "--new-serial",
        "x1",
        "--public-key",
        garbage,
    )
    assert failed.code == 1 and "neither JSON" in failed.stderr and len(failed.error_lines) == 1


def test_a_stray_image_row_is_removed_by_the_next_poll(
    http: FlaskClient, ctx: ServerContext, published: Published, enroll: str
) -> None:
    """A poll that read the vehicle before an ECU replacement and wrote after it upserts the
    old serial's image again (PostgreSQL): the next poll deletes the row of a serial that is no
    ECU of the vehicle."""
    car = set_car(published, "stray-car")
    register(http, enroll, car)
    with ctx.transaction() as session:
        session.add(
            InstalledImage(
                vehicle_id="stray-car",
                ecu_serial="stray-car-old",
                hardware_id="ecu-b",
                version="0.1",
                sha256="0" * 64,
                release_counter=0,
            )
        )
    assert "stray-car-old" in installed(ctx, "stray-car")
    poll(http, car)
    assert set(installed(ctx, "stray-car")) == {"stray-car-primary", "stray-car-gw"}


def test_eligibility_and_filters_per_hardware_id_with_two_ecus_of_one(
    http: FlaskClient,
    ctx: ServerContext,
    published: Published,
    enroll: str,
    tokens: dict[str, str],
) -> None:
    """A vehicle is eligible for a hardware id once, if any of its ECUs of it is behind, with
    the version of the one furthest behind as where it came from."""
    ahead = SimEcu("elig-1-a2", "ecu-a", image(published, "ecu-a/1.1"))
    behind = SimEcu("elig-2-a2", "ecu-a", factory("ecu-a"))
    first, second = set_car(published, "elig-1", ahead), set_car(published, "elig-2", behind)
    for car in (first, second):
        register(http, enroll, car)
        poll(http, car)
    op = tokens["operator"]
    campaign = create(
        http, op, releases={"ecu-a": "1.1"}, filter={"vehicles": ["elig-1", "elig-2"]}
    )
    started = start(http, op, campaign["id"])
    assert started["counts"]["eligible"] == 2
    members = http.get(f"/api/v1/campaigns/{campaign['id']}/vehicles", headers=auth(op)).json
    assert {m["vehicle_id"]: m["from_version"] for m in members["items"]} == {
        "elig-1": "1.0",
        "elig-2": "0.9",
    }
    assert {m["vehicle_id"]: m["installed_version"] for m in members["items"]} == {
        "elig-1": "1.0",
        "elig-2": "0.9",
    }
    filtered = create(
        http,
        op,
        releases={"ecu-a": "1.1"},
        filter={"vehicles": ["elig-1", "elig-2"], "installed_version": "0.9"},
    )
    http.post(f"/api/v1/campaigns/{campaign['id']}/abort", headers=auth(op))
    assert start(http, op, filtered["id"])["counts"]["eligible"] == 1
    assert set(entries(http, ctx, "elig-2")) == set()  # (not polled since)
    poll(http, second)
    got = entries(http, ctx, "elig-2")
    assert got["elig-2-primary"].path.endswith("delta-from-1.0.bundle")
    assert got["elig-2-a2"].path.endswith("full.bundle")


def test_a_poll_verified_with_the_replaced_primarys_key_does_not_advance(
    http: FlaskClient,
    ctx: ServerContext,
    published: Published,
    enroll: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poll of the old primary that read the vehicle before the primary was replaced must not
    move the manifest counter after it (the new unit counts from 1): the counter's
    compare-and-set also compares the key. PostgreSQL only: on SQLite a poll is one
    transaction, which the replacement waits for."""
    if ctx.direct is None:
        pytest.skip("SQLite serialises the poll and the replacement")
    car = set_car(published, "race-car")
    register(http, enroll, car)
    import overdrive.server.poll as polling
    from overdrive.server.ecus import replace_ecu

    unit = CryptoSigner.generate_ed25519()
    checked = polling.check_reports

    def replace_meanwhile(*args: Any, **kwargs: Any) -> Any:
        body = {"new_serial": "race-car-tcu2", "public_key": public_key_of(unit)}
        replace_ecu(ctx, "race-car", "race-car-primary", body)
        return checked(*args, **kwargs)

    monkeypatch.setattr(polling, "check_reports", replace_meanwhile)
    response = http.post("/api/v1/vehicles/race-car/poll", json=car.manifest())
    assert response.status_code == 409, response.json
    monkeypatch.setattr(polling, "check_reports", checked)
    row = vehicle_row(ctx, "race-car")
    assert row.manifest_counter == 0 and list(row.ecus) == ["race-car-tcu2", "race-car-gw"]
    fresh = SimVehicle(
        "race-car", image=car.image, signer=unit, secondaries=car.secondaries,
        primary_serial="race-car-tcu2",
    )  # fmt: skip
    assert "time" in poll(http, fresh)


def test_a_multi_ecu_poll_costs_the_same_statements(
    http: FlaskClient, ctx: ServerContext, published: Published, enroll: str
) -> None:
    """Eight ECUs, or a stray report, cost no extra SQL: one read (the installed images
    aggregated into it), one compare-and-set (which also writes the status that records an
    unknown serial); a changed image adds its upsert (on PostgreSQL, in the same statement)."""
    from tests.server.test_scale import count_queries

    others = [SimEcu(f"eight-s{k}", f"ecu-s{k}", factory(f"ecu-s{k}")) for k in range(1, 8)]
    car = SimVehicle("eight", image=image(published, "ecu-a/1.0"), secondaries=others)
    register(http, enroll, car)
    stray = SimEcu("eight-stray", "ecu-s9", factory("ecu-s9"))
    for with_stray in (False, False, True):
        nonce = uuid.uuid4().hex
        extra = {stray.serial: stray.report(nonce)} if with_stray else None
        with count_queries(ctx) as statements:
            response = http.post(
                "/api/v1/vehicles/eight/poll", json=car.manifest(nonce, reports=extra)
            )
        assert response.status_code == 200, response.json
        assert len(statements) == 2, statements
    assert set(vehicle_row(ctx, "eight").status["unknown_ecus"]) == {"eight-stray"}
    others[0].image = image(published, "ecu-b/1.0")  # (a changed image: not ecu-s1's, no matter)
    with count_queries(ctx) as statements:
        response = http.post("/api/v1/vehicles/eight/poll", json=car.manifest())
    assert response.status_code == 200, response.json
    assert len(statements) == (2 if ctx.direct is not None else 3), statements


def test_a_breach_names_the_hardware_id_that_fails_the_sets(
    http: FlaskClient,
    ctx: ServerContext,
    published: Published,
    enroll: str,
    tokens: dict[str, str],
) -> None:
    """Every vehicle's set rolls back because of its gateway: the campaign halts on ecu-b, and
    ecu-a (rolled back with each set, never at fault) is no failing group."""
    cars, cid = _started_set(http, published, enroll, tokens, "halt", 16)
    op = tokens["operator"]
    for car in cars:
        cause = {"ecu_serial": f"{car.vehicle_id}-gw", "hardware_id": "ecu-b"}
        events = [
            {
                "type": "rolled_back",
                "campaign_id": cid,
                "hardware_id": hw,
                "reason": "health check failed on the gateway",
                "details": {"caused_by": cause, "software_set": True},
            }
            for hw in ("ecu-a", "ecu-b")
        ]
        response = http.post(f"/api/v1/vehicles/{car.vehicle_id}/events", json=car.events(*events))
        assert response.status_code == 200, response.json
    assert tick(ctx) == {cid: "pause"}
    status = http.get(f"/api/v1/campaigns/{cid}", headers=auth(op)).json
    assert "hardware id 'ecu-b'" in status["reason"], status["reason"]
    groups = {(g["dimension"], g["value"]): g for g in status["groups"]}
    assert groups[("hardware_id", "ecu-b")]["breached"] is True
    ecu_a = groups[("hardware_id", "ecu-a")]
    assert (ecu_a["failures"], ecu_a["finished"], ecu_a["breached"]) == (0, 0, False)

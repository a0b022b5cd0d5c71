"""The OpenAPI document is complete and true.

* Complete: every route of the app (``app.url_map``) but the dashboard's HTML pages is an
  operation of the document, and every operation is a route.
* True: a populated server (a running campaign with an assignment in a vehicle's director
  repository, events, a decision, a timeline, tokens, the audit log) answers every
  documented operation with a documented success status whose body matches its schema
  (``response_schema_conformance``, formats included), content type and headers;
  schemathesis checks each answer. The fuzzers (``test_api_schemathesis.py``) then check the
  errors and odd inputs, mostly against empty or unknown resources.

Runs on SQLite, and on PostgreSQL when ``OVERDRIVE_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from securesystemslib.signer import CryptoSigner

from overdrive.server.app import create_app
from overdrive.server.campaigns import tick
from overdrive.server.config import ServerConfig
from overdrive.server.context import EXTENSION
from overdrive.server.migrate import upgrade
from overdrive.server.openapi import openapi_document
from tests.director_view import assignments, http_get
from tests.fuzz.conftest import FuzzServer
from tests.server.fleet import SimVehicle

DOCUMENT = openapi_document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
#: Routes that are not the API: the dashboard's pages and Flask's static files.
NOT_API = re.compile(r"^(dashboard\.|static$)")
_CONVERTER = re.compile(r"<(?:(\w+)(?:\(([^)]*)\))?:)?(\w+)>")


def _operations_of(rule: str, methods: set[str]) -> set[str]:
    """``METHOD /path/{param}`` for a werkzeug rule (an ``any(a, b)`` segment: one path each)."""
    paths = [""]
    position = 0
    for match in _CONVERTER.finditer(rule):
        literal = rule[position : match.start()]
        converter, arguments, name = match.groups()
        if converter == "any":
            options = [option.strip() for option in arguments.split(",")]
            paths = [p + literal + option for p in paths for option in options]
        else:
            paths = [p + literal + "{" + name + "}" for p in paths]
        position = match.end()
    paths = [p + rule[position:] for p in paths]
    return {f"{m} {p}" for p in paths for m in methods - {"HEAD", "OPTIONS"}}


def test_every_route_is_documented(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'routes.db'}"
    upgrade(db)
    app = create_app(ServerConfig(db_url=db, tick_interval=0), start_ticker=False)
    try:
        routes = set()
        for rule in app.url_map.iter_rules():
            if not NOT_API.match(rule.endpoint):
                routes |= _operations_of(rule.rule, set(rule.methods or ()))
    finally:
        app.extensions[EXTENSION].engine.dispose()
    documented = {
        f"{method.upper()} {path}"
        for path, operations in DOCUMENT["paths"].items()
        for method in operations
    }
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations that are not routes"


def test_every_operation_has_an_id_a_success_answer_and_json_errors() -> None:
    """What a typed client needs: a unique operationId, one 2xx with a schema, errors as
    ``Error`` (``/readyz``'s 503 is its readiness answer)."""
    ids = []
    for path, operations in DOCUMENT["paths"].items():
        for method, operation in operations.items():
            ids.append(operation["operationId"])
            success = [s for s in operation["responses"] if s.startswith("2")]
            assert len(success) == 1, (method, path)
            assert operation["responses"][success[0]]["content"], (method, path)
            for status, response in operation["responses"].items():
                if status.startswith("2") or (path, status) == ("/readyz", "503"):
                    continue
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
    assert len(ids) == len(set(ids))
    error = DOCUMENT["components"]["schemas"]["ErrorDetail"]
    assert error["required"] == ["status", "code", "message"]
    assert DOCUMENT["components"]["schemas"]["Error"]["required"] == ["error"]


class Conformance:
    """Calls operations of the document on a live server and checks every answer."""

    def __init__(self, server: FuzzServer) -> None:
        self.server = server
        self.admin = {"Authorization": f"Bearer {server.admin}"}
        self.answered: set[str] = set()

    def __call__(
        self,
        method: str,
        path: str,
        *,
        status: int | None = None,
        public: bool = False,
        path_parameters: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """Call ``method path`` (a documented path), check the answer against the document,
        and return its JSON (or text). ``status``: the one expected (default: the 2xx)."""
        operation = SCHEMA[path][method]
        kwargs: dict[str, Any] = {"path_parameters": path_parameters, "query": query}
        if body is not None:
            kwargs.update(body=body, media_type="application/json")
        case = operation.Case(**kwargs)
        headers = {} if public else self.admin
        response = case.call(base_url=self.server.url, headers=headers)
        case.validate_response(response, checks=CHECKS, headers=headers)
        success = next(
            s for s in DOCUMENT["paths"][path][method.lower()]["responses"] if s[0] == "2"
        )
        assert response.status_code == (status or int(success)), (path, response.text[:500])
        if 200 <= response.status_code < 300:
            self.answered.add(operation.label)
        if response.headers.get("content-type", [""])[0].startswith("application/json"):
            return response.json()
        return response.text


def test_every_operation_answers_as_documented(fuzz_server_any_db: FuzzServer) -> None:
    server = fuzz_server_any_db
    call = Conformance(server)
    car = server.vehicle

    assert call("GET", "/healthz", public=True) == {"status": "ok"}
    assert call("GET", "/readyz", public=True) == {"status": "ready"}
    assert call("GET", "/api/v1/openapi.json", public=True) == DOCUMENT

    other = SimVehicle("doc-car", image=dict(car.image), attributes={"model": "m2", "trim": "x"})
    registered = call(
        "POST", "/api/v1/vehicles/register", public=True, body=other.registration(server.enroll)
    )
    assert registered["vehicle_id"] == "doc-car"

    token = call("POST", "/api/v1/tokens", body={"name": "doc-viewer", "role": "viewer"})
    assert token["secret"].startswith("odt_")
    assert any(t["id"] == token["id"] for t in call("GET", "/api/v1/tokens")["items"])
    revoked = call("DELETE", "/api/v1/tokens/{token_id}", path_parameters={"token_id": token["id"]})
    assert revoked["revoked_at"] is not None
    enroll = call("POST", "/api/v1/enroll-tokens", body={"uses": 2, "expires_in_seconds": 3600})
    assert call("GET", "/api/v1/enroll-tokens")["items"][-1]["id"] == enroll["id"]
    gone = call(
        "DELETE", "/api/v1/enroll-tokens/{token_id}", path_parameters={"token_id": enroll["id"]}
    )
    assert gone["usable"] is False

    releases = call("GET", "/api/v1/releases")
    assert [r["version"] for r in releases["hardware"]["ecu-a"]] == ["1.0", "1.1"]

    policy = {"stages": [{"name": "all", "share": "100%"}]}
    spec = {"name": "doc rollout", "releases": {"ecu-a": "1.1"}, "policy": policy}
    draft = call("POST", "/api/v1/campaigns", body={**spec, "filter": {"model": ["m2"]}})
    assert draft["state"] == "draft" and draft["groups"] == []
    deleted = call(
        "DELETE", "/api/v1/campaigns/{campaign_id}", path_parameters={"campaign_id": draft["id"]}
    )
    assert deleted == {"id": draft["id"], "deleted": True}

    created = call("POST", "/api/v1/campaigns", body=spec)
    campaign = {"campaign_id": created["id"]}
    started = call("POST", "/api/v1/campaigns/{campaign_id}/start", path_parameters=campaign)
    assert started["state"] == "running" and started["counts"]["eligible"] == 2

    answer = call(
        "POST",
        "/api/v1/vehicles/{vehicle_id}/poll",
        public=True,
        path_parameters={"vehicle_id": car.vehicle_id},
        body=car.manifest(),
    )
    # What the campaign assigns is in the vehicle's director repository (verified as a TUF
    # client would), whose files are documented answers too.
    version = answer["director"]["version"]
    root = server.ctx.require_director().root_bytes(1)
    assert root is not None
    listed = assignments(http_get(server.url), car.vehicle_id, root)
    assert [a["campaign_id"] for a in listed] == [created["id"]]
    for name in ("1.root.json", "root.json", "timestamp.json", f"{version}.snapshot.json"):
        metadata = call(
            "GET",
            "/api/v1/director/{vehicle_id}/metadata/{name}",
            public=True,
            path_parameters={"vehicle_id": car.vehicle_id, "name": name},
        )
        assert metadata["signed"]["_type"] == name.split(".")[-2]
    targets = call(
        "GET",
        "/api/v1/director/{vehicle_id}/metadata/{name}",
        public=True,
        path_parameters={"vehicle_id": car.vehicle_id, "name": f"{version}.targets.json"},
    )
    assert [t["custom"]["campaign_id"] for t in targets["signed"]["targets"].values()] == [
        created["id"]
    ]
    call(
        "GET",
        "/api/v1/director/{vehicle_id}/metadata/{name}",
        status=404,
        public=True,
        path_parameters={"vehicle_id": "no-such-car", "name": "timestamp.json"},
    )
    event = {"type": "downloading", "campaign_id": created["id"], "hardware_id": "ecu-a"}
    reported = call(
        "POST",
        "/api/v1/vehicles/{vehicle_id}/events",
        public=True,
        path_parameters={"vehicle_id": car.vehicle_id},
        body=car.events({**event, "id": uuid.uuid4().hex, "reason": "started"}),
    )
    assert reported == {"accepted": 1, "duplicates": 0}
    booted = {**event, "type": "booted"}  # a membership status the status filters do not take
    call(
        "POST",
        "/api/v1/vehicles/{vehicle_id}/events",
        public=True,
        path_parameters={"vehicle_id": other.vehicle_id},
        body=other.events(booted),
    )
    tick(server.ctx)

    status = call("GET", "/api/v1/campaigns/{campaign_id}", path_parameters=campaign)
    assert status["evaluated_at"] is not None and status["groups"]
    listed = call("GET", "/api/v1/campaigns", query={"state": "running", "limit": 5})
    assert [c["id"] for c in listed["items"]] == [created["id"]]
    members = call(
        "GET",
        "/api/v1/campaigns/{campaign_id}/vehicles",
        path_parameters=campaign,
        query={"status": "downloading", "admitted": "true", "hardware_id": "ecu-a"},
    )
    assert [m["vehicle_id"] for m in members["items"]] == [car.vehicle_id]
    assert members["items"][0]["last_event"]["type"] == "downloading"
    every_member = call("GET", "/api/v1/campaigns/{campaign_id}/vehicles", path_parameters=campaign)
    assert {m["status"] for m in every_member["items"]} == {"downloading", "booted"}
    timeline = call("GET", "/api/v1/campaigns/{campaign_id}/timeline", path_parameters=campaign)
    assert timeline["samples"]
    for action, body in (
        ("pause", {"reason": "a look at the data"}),
        ("resume", None),
        ("approve", None),
        ("abort", {"reason": "superseded"}),
    ):
        done = call(
            "POST",
            f"/api/v1/campaigns/{{campaign_id}}/{action}",
            path_parameters=campaign,
            body=body,
        )
    assert done["state"] == "aborted" and "superseded" in done["reason"]
    history = call("GET", "/api/v1/campaigns/{campaign_id}/history", path_parameters=campaign)
    assert [e["action"] for e in history["items"]][:2] == ["campaign.create", "campaign.start"]

    fleet = call("GET", "/api/v1/vehicles", query={"attr.trim": "x", "sort": "-last_seen"})
    assert [v["id"] for v in fleet["items"]] == ["doc-car"]
    assert call("GET", "/api/v1/vehicles", query={"region": "nowhere"})["total"] == 0
    vehicle = call(
        "GET", "/api/v1/vehicles/{vehicle_id}", path_parameters={"vehicle_id": car.vehicle_id}
    )
    assert vehicle["campaigns"][0]["campaign_id"] == created["id"]
    events = call(
        "GET",
        "/api/v1/vehicles/{vehicle_id}/events",
        path_parameters={"vehicle_id": car.vehicle_id},
    )
    assert events["items"][0]["reason"] == "started"
    audit = call("GET", "/api/v1/audit", query={"target": f"campaign:{created['id']}"})
    assert audit["total"] == len(history["items"])

    metrics = call("GET", "/metrics", public=True)
    assert 'overdrive_campaigns{state="aborted"} 1.0' in metrics
    assert created["id"] not in metrics and car.vehicle_id not in metrics

    # Errors are documented and shaped too.
    call(
        "GET",
        "/api/v1/campaigns/{campaign_id}",
        status=404,
        path_parameters={"campaign_id": "f00d"},
    )
    call("GET", "/api/v1/campaigns", status=400, query={"limit": 0})
    call(
        "POST",
        "/api/v1/campaigns/{campaign_id}/start",
        status=409,
        path_parameters=campaign,
    )

    # A workshop swaps a part: the other car's primary ECU, new serial and key, same hardware id.
    part = CryptoSigner.generate_ed25519()
    replaced = call(
        "POST",
        "/api/v1/vehicles/{vehicle_id}/ecus/{ecu_serial}/replace",
        path_parameters={"vehicle_id": other.vehicle_id, "ecu_serial": other.serial},
        body={
            "new_serial": f"{other.serial}-new",
            "public_key": {"keyid": part.public_key.keyid, **part.public_key.to_dict()},
        },
    )
    assert replaced["id"] == other.vehicle_id
    every = {op.ok().label for op in SCHEMA.get_all_operations()}
    assert every - call.answered == set(), "operations never answered with a 2xx here"


@pytest.mark.parametrize("value", ["yes", "1"])
def test_admitted_filter_takes_only_true_or_false(
    fuzz_server_any_db: FuzzServer, value: str
) -> None:
    """``admitted`` is documented as a boolean; other values used to mean "false"."""
    server = fuzz_server_any_db
    status, _type, body = server.request(
        "GET",
        f"/api/v1/campaigns/f00d/vehicles?admitted={value}",
        None,
        {"Authorization": f"Bearer {server.admin}"},
    )
    assert status == 400 and b"admitted must be true or false" in body

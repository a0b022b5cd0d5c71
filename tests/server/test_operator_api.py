"""Operator API basics: tokens and roles, enrollment tokens, audit, OpenAPI, health, metrics."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.server.conftest import auth
from tests.server.test_vehicle_api import error_of


def test_roles_and_token_lifecycle(http: FlaskClient, tokens: dict[str, str]) -> None:
    assert http.get("/api/v1/tokens").status_code == 401
    assert http.get("/api/v1/tokens", headers={"Authorization": "Basic abc"}).status_code == 401
    assert http.get("/api/v1/tokens", headers=auth("odt_not-a-token")).status_code == 401
    for role in ("viewer", "operator"):
        response = http.post(
            "/api/v1/tokens", json={"name": "x", "role": "viewer"}, headers=auth(tokens[role])
        )
        assert response.status_code == 403 and "needs the admin role" in error_of(response)
    created = http.post(
        "/api/v1/tokens", json={"name": "ci-bot", "role": "operator"}, headers=auth(tokens["admin"])
    )
    assert created.status_code == 201
    secret, token_id = created.json["secret"], created.json["id"]
    assert http.get("/api/v1/campaigns", headers=auth(secret)).status_code == 200
    listed = http.get("/api/v1/tokens", headers=auth(tokens["admin"])).json["items"]
    assert all("secret" not in t and "hash" not in str(t) for t in listed)
    assert (
        http.delete(f"/api/v1/tokens/{token_id}", headers=auth(tokens["admin"])).status_code == 200
    )
    revoked = http.get("/api/v1/campaigns", headers=auth(secret))
    assert revoked.status_code == 401 and "revoked" in error_of(revoked)
    assert http.delete("/api/v1/tokens/9999", headers=auth(tokens["admin"])).status_code == 404
    bad_role = http.post(
        "/api/v1/tokens", json={"name": "x", "role": "root"}, headers=auth(tokens["admin"])
    )
    assert bad_role.status_code == 400 and "role must be one of" in error_of(bad_role)
    bad_name = http.post(
        "/api/v1/tokens", json={"name": "", "role": "viewer"}, headers=auth(tokens["admin"])
    )
    assert bad_name.status_code == 400


def test_enroll_tokens(http: FlaskClient, tokens: dict[str, str]) -> None:
    assert (
        http.post("/api/v1/enroll-tokens", json={}, headers=auth(tokens["operator"])).status_code
        == 403
    )
    created = http.post(
        "/api/v1/enroll-tokens",
        json={"uses": 2, "expires_in_seconds": 3600},
        headers=auth(tokens["admin"]),
    )
    assert created.status_code == 201 and created.json["secret"].startswith("ode_")
    for body in ({"uses": 0}, {"uses": "2"}, {"expires_in_seconds": -5}):
        assert (
            http.post("/api/v1/enroll-tokens", json=body, headers=auth(tokens["admin"])).status_code
            == 400
        )


def test_audit_records_operator_actions(http: FlaskClient, tokens: dict[str, str]) -> None:
    http.post(
        "/api/v1/tokens", json={"name": "auditor", "role": "viewer"}, headers=auth(tokens["admin"])
    )
    entries = http.get("/api/v1/audit", headers=auth(tokens["viewer"])).json["items"]
    newest = entries[0]
    assert newest["action"] == "token.create" and newest["actor"] == "test-admin (admin)"
    assert newest["details"] == {"name": "auditor", "role": "viewer"}


def test_openapi_health_metrics(http: FlaskClient) -> None:
    spec = http.get("/api/v1/openapi.json").json
    assert (
        spec["openapi"].startswith("3.") and "/api/v1/vehicles/{vehicle_id}/poll" in spec["paths"]
    )
    assert http.get("/healthz").json == {"status": "ok"}
    assert http.get("/readyz").json == {"status": "ready"}
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and b"overdrive_polls" in metrics.data

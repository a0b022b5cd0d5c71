"""The OpenAPI 3.1 description of ``/api/v1`` (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

from overdrive import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_ENVELOPE = {"$ref": "#/components/schemas/SignedEnvelope"}
_CREATES = ("/vehicles/register", "/campaigns", "/tokens", "/enroll-tokens")

# (method, path, summary, minimum role or "vehicle"/"public", request schema or None, tag)
ROUTES: list[tuple[str, str, str, str, dict[str, Any] | None, str]] = [
    (
        "post",
        "/vehicles/register",
        "Register a vehicle with a one-time enrollment token",
        "public",
        {
            "type": "object",
            "required": ["enroll_token", "vehicle_id", "public_key"],
            "properties": {
                "enroll_token": {"type": "string"},
                "vehicle_id": {"type": "string"},
                "public_key": {"type": "object"},
                "attributes": {"type": "object"},
                "images": {"type": "object"},
            },
        },
        "vehicles",
    ),
    (
        "post",
        "/vehicles/{vehicle_id}/poll",
        "Poll with a signed vehicle manifest; get signed assignments",
        "vehicle",
        _ENVELOPE,
        "vehicles",
    ),
    (
        "post",
        "/vehicles/{vehicle_id}/events",
        "Report signed events (idempotent by event id)",
        "vehicle",
        _ENVELOPE,
        "vehicles",
    ),
    ("get", "/vehicles", "List vehicles (paginated)", "viewer", None, "vehicles"),
    (
        "get",
        "/vehicles/{vehicle_id}",
        "One vehicle, its images and campaigns",
        "viewer",
        None,
        "vehicles",
    ),
    (
        "post",
        "/campaigns",
        "Create a campaign (draft)",
        "operator",
        {
            "type": "object",
            "required": ["name", "releases", "policy"],
            "properties": {
                "name": {"type": "string"},
                "releases": {"type": "object", "additionalProperties": {"type": "string"}},
                "policy": {"oneOf": [{"type": "string"}, {"type": "object"}]},
                "filter": {"type": "object"},
            },
        },
        "campaigns",
    ),
    ("get", "/campaigns", "List campaigns (paginated, ?state=)", "viewer", None, "campaigns"),
    ("get", "/campaigns/{campaign_id}", "Campaign status and counts", "viewer", None, "campaigns"),
    *[
        (
            "post",
            f"/campaigns/{{campaign_id}}/{action}",
            f"{action.capitalize()} a campaign",
            "operator",
            None,
            "campaigns",
        )
        for action in ("start", "pause", "resume", "abort", "approve")
    ],
    ("get", "/releases", "Releases in the verified image repository", "viewer", None, "campaigns"),
    (
        "post",
        "/tokens",
        "Create an API token (secret shown once)",
        "admin",
        {
            "type": "object",
            "required": ["name", "role"],
            "properties": {
                "name": {"type": "string"},
                "role": {"enum": ["viewer", "operator", "admin"]},
            },
        },
        "admin",
    ),
    ("get", "/tokens", "List API tokens", "admin", None, "admin"),
    ("delete", "/tokens/{token_id}", "Revoke an API token", "admin", None, "admin"),
    (
        "post",
        "/enroll-tokens",
        "Create an enrollment token (secret shown once)",
        "admin",
        {
            "type": "object",
            "properties": {"expires_in_seconds": {"type": "integer"}, "uses": {"type": "integer"}},
        },
        "admin",
    ),
    ("get", "/audit", "The audit log, newest first (paginated)", "viewer", None, "admin"),
]


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, role, schema, tag in ROUTES:
        operation: dict[str, Any] = {
            "summary": summary,
            "tags": [tag],
            "responses": {
                ("201" if method == "post" and path in _CREATES else "200"): {"description": "OK"},
                "400": {
                    "description": "Bad input",
                    "content": {"application/json": {"schema": _ERROR}},
                },
                "401": {
                    "description": "Not authenticated",
                    "content": {"application/json": {"schema": _ERROR}},
                },
                "403": {
                    "description": "Not allowed",
                    "content": {"application/json": {"schema": _ERROR}},
                },
                "404": {
                    "description": "Unknown id",
                    "content": {"application/json": {"schema": _ERROR}},
                },
                "409": {
                    "description": "Conflict",
                    "content": {"application/json": {"schema": _ERROR}},
                },
            },
            "x-minimum-role": role,
        }
        if role not in ("public", "vehicle"):
            operation["security"] = [{"bearer": []}]
        if method in ("post", "delete"):
            operation["responses"]["405"] = {"description": "Method not allowed"}
        if schema is not None or method == "post":
            operation["responses"]["413"] = {
                "description": "Body too large",
                "content": {"application/json": {"schema": _ERROR}},
            }
        if path in ("/vehicles/{vehicle_id}/poll", "/campaigns", "/releases"):
            operation["responses"]["503"] = {
                "description": "Repository or director not configured",
                "content": {"application/json": {"schema": _ERROR}},
            }
        if schema is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            operation["parameters"] = [
                {
                    "name": p,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer" if p == "token_id" else "string"},
                }
                for p in params
            ]
        if method == "get" and path in ("/vehicles", "/campaigns", "/audit"):
            operation.setdefault("parameters", []).extend(
                {"name": n, "in": "query", "schema": {"type": "integer"}}
                for n in ("limit", "offset")
            )
        paths.setdefault(f"/api/v1{path}", {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Overdrive rollout server", "version": __version__},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "integer"},
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "SignedEnvelope": {
                    "type": "object",
                    "required": ["signed", "signatures"],
                    "properties": {
                        "signed": {"type": "object"},
                        "signatures": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "keyid": {"type": "string"},
                                    "sig": {"type": "string"},
                                },
                            },
                        },
                    },
                },
            },
        },
    }

"""Health, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from overdrive.server.context import context
from overdrive.server.openapi import openapi_document

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Alive: the process answers (nothing else is checked)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Ready: the database answers, the director repository is configured, and the image repository (if
    configured) verifies, so campaigns can be created and assignments signed; else a 503 listing
    each problem with its reason."""
    ctx = context()
    problems = []
    try:
        with ctx.session() as session:
            session.execute(text("SELECT 1"))
    except Exception as e:
        problems.append(f"database: {type(e).__name__}")
    if ctx.director is None:
        problems.append("no director repository (--director-storage, --director-keys)")
    repository = ctx.releases.problem()  # e.g. re-initialised with keys the server does not trust
    if repository is not None:
        problems.append(f"image repository: {repository}")
    if problems:
        return jsonify({"status": "not ready", "problems": problems}), 503
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Prometheus metrics of the whole server (every worker's counters, the database's gauges;
    see :mod:`overdrive.server.metrics`). Unauthenticated, so no label names a campaign or a vehicle."""
    return Response(context().metrics.render(), mimetype="text/plain; version=0.0.4")


@bp.get("/api/v1/openapi.json")
def openapi() -> ResponseReturnValue:
    """The OpenAPI document of every route but the dashboard's (:mod:`overdrive.server.openapi`)."""
    return jsonify(openapi_document())

"""The Flask app factory: configuration in, a WSGI app out; no module-level state."""

from __future__ import annotations

import logging
import secrets
import threading

import psycopg
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from overdrive.server.config import ServerConfig
from overdrive.server.context import EXTENSION, ReleaseCache, ServerContext
from overdrive.server.db import DirectConnections, make_engine, make_sessionmaker
from overdrive.server.director import Director, DirectorKeyError
from overdrive.server.errors import (
    DATA_ERRORS,
    RETRY_AFTER,
    ApiError,
    BadRequest,
    database_down_body,
    error_body,
    from_database_error,
)
from overdrive.server.metrics import (
    ENDPOINT_KEY,
    DatabaseSummary,
    Metrics,
    RequestMetrics,
    database_summary,
)

log = logging.getLogger("overdrive.server")


def open_director(config: ServerConfig) -> Director | None:
    """The director ``config`` names (None: none), or :class:`DirectorKeyError` saying why not."""
    if not (config.director_storage or config.director_keys):
        return None
    if not (config.director_storage and config.director_keys):
        raise DirectorKeyError("--director-storage and --director-keys go together")
    return Director.open(
        config.director_storage, config.director_keys, config.director_passphrase_env
    )


def create_app(
    config: ServerConfig | None = None, *, start_ticker: bool = True, serving: bool = True
) -> Flask:
    """The server app for ``config``. ``serving=False`` is for commands that build it only for
    its context (``server token create`` …): no dashboard is served, so it gets a throwaway
    session key instead of the warning that ``$OVERDRIVE_SECRET_KEY`` is not set."""
    config = config or ServerConfig.from_env()
    app = Flask("overdrive.server")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    if not serving and not config.secret_key:
        app.config["SECRET_KEY"] = secrets.token_urlsafe(32)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    engine = make_engine(config.db_url)
    director = open_director(config)
    ctx = ServerContext(
        config=config,
        engine=engine,
        sessions=make_sessionmaker(engine),
        director=director,
        releases=ReleaseCache(config),
        metrics=Metrics(lambda: _database_summary(ctx)),
        direct=(
            DirectConnections(config.db_url, synchronous_commit=config.durable_polls)
            if engine.dialect.name == "postgresql"
            else None
        ),
    )
    app.extensions[EXTENSION] = ctx

    from overdrive.server.api import admin, campaigns, meta, vehicles
    from overdrive.server.api import director as director_api
    from overdrive.server.dashboard import bp as dashboard

    for blueprint in (vehicles.bp, director_api.bp, campaigns.bp, admin.bp, meta.bp, dashboard):
        app.register_blueprint(blueprint)
    _register_error_handlers(app)

    @app.before_request
    def name_endpoint() -> None:
        # For the request metrics (server.metrics.RequestMetrics): the route, never the URL.
        request.environ[ENDPOINT_KEY] = request.endpoint or "unmatched"

    @app.before_request
    def refuse_nul() -> None:
        # NUL in a URL id or query value can never name anything (and PostgreSQL refuses it).
        if "\x00" in request.path or any("\x00" in v for v in request.args.values()):
            raise BadRequest("NUL character in the URL")

    from overdrive.server.fastpath import PollFastPath

    app.wsgi_app = RequestMetrics(  # type: ignore[method-assign]
        PollFastPath(app.wsgi_app, ctx), ctx.metrics
    )
    if start_ticker and config.tick_interval > 0:
        _start_ticker(ctx)
    return app


def _database_summary(ctx: ServerContext) -> DatabaseSummary:
    """The gauges' counts, read when /metrics is scraped."""
    with ctx.session() as session:
        return database_summary(session)


def _register_error_handlers(app: Flask) -> None:
    def body(status: int, code: str, message: str) -> ResponseReturnValue:
        return jsonify(error_body(status, code, message)), status

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> ResponseReturnValue:
        return body(error.status, error.code, str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> ResponseReturnValue:
        status = error.code or 500
        code = (error.name or "error").lower().replace(" ", "_")
        response = jsonify(error_body(status, code, error.description or error.name))
        response.status_code = status
        for name, value in error.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    def data_error(error: Exception) -> ResponseReturnValue:
        # A unique violation (two requests racing) is a 409, a value too long a 400: never a 500.
        answer = from_database_error(error)
        log.info("%s on %s %s: %s", answer.code, request.method, request.path, answer)
        return body(answer.status, answer.code, str(answer))

    for kind in DATA_ERRORS:
        app.register_error_handler(kind, data_error)

    @app.errorhandler(OperationalError)
    @app.errorhandler(psycopg.OperationalError)
    def database_unavailable(error: Exception) -> ResponseReturnValue:
        # A database restart or failover: tell clients to retry, don't log a traceback per request.
        reason = getattr(error, "orig", None) or error
        log.warning("database unavailable on %s %s: %s", request.method, request.path, reason)
        response = jsonify(database_down_body())
        response.status_code = 503
        response.headers[RETRY_AFTER[0]] = RETRY_AFTER[1]
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> ResponseReturnValue:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return body(500, "internal_error", "internal server error")


def _start_ticker(ctx: ServerContext) -> None:
    """Run the campaign evaluator every ``tick_interval`` seconds in this process."""
    from overdrive.server.campaigns import tick

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(ctx.config.tick_interval):
            try:
                tick(ctx)
            except Exception:  # the next tick retries; never kill the worker
                log.exception("campaign evaluator failed")

    threading.Thread(target=loop, name="overdrive-ticker", daemon=True).start()

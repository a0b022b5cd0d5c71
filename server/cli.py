"""``overdrive server …``: run the rollout server, migrate its database, evaluate campaigns,
and create the secrets that bootstrap it (the first admin token, vehicle enrollment tokens)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from overdrive.server.config import ServerConfig, state_dir_from
from overdrive.text import one_line

db_option = click.option(
    "--db",
    "db_url",
    envvar="OVERDRIVE_DB",
    default="sqlite:///overdrive.db",
    show_default=True,
    help="Database URL: sqlite:///FILE or postgresql://… [env OVERDRIVE_DB].",
)


@click.group()
def server() -> None:
    """Run and administer the rollout server."""


@server.command("run")
@db_option
@click.option(
    "--storage", "storage_url", envvar="OVERDRIVE_STORAGE", help="Image repository storage URL."
)
@click.option(
    "--director-storage",
    envvar="OVERDRIVE_DIRECTOR_STORAGE",
    help="Storage URL of the director's root ('overdrive director init').",
)
@click.option(
    "--director-keys",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OVERDRIVE_DIRECTOR_KEYS",
    help="Key directory with the director's online targets, snapshot and timestamp keys.",
)
@click.option(
    "--director-passphrase-env",
    metavar="VAR",
    help="Variable holding the passphrase of every director key (default: each key's own "
    "$OVERDRIVE_PASSPHRASE_<NAME>).",
)
@click.option(
    "--trusted-root",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="OVERDRIVE_TRUSTED_ROOT",
    help="Root metadata to trust (default: pin the repository's 1.root.json on first use).",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="OVERDRIVE_STATE_DIR",
    default=None,
    help="Where the server keeps its verified TUF metadata, one subdirectory per repository "
    "[env OVERDRIVE_STATE_DIR; default $XDG_STATE_HOME/overdrive/server, else "
    "~/.local/state/overdrive/server].",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="1: development server (threaded); N>1: gunicorn with N worker processes.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Threads per gunicorn worker (gthread): requests one worker serves at once.",
)
@click.option(
    "--poll-interval",
    type=click.IntRange(1),
    default=900,
    show_default=True,
    help="Seconds between vehicle polls when there is nothing to do.",
)
@click.option(
    "--durable-polls",
    is_flag=True,
    help="PostgreSQL: commit every poll synchronously (slower; by default a database crash "
    "can forget its last fraction of a second of polls, never an event).",
)
@click.option(
    "--tick-interval",
    type=click.IntRange(0),
    default=30,
    show_default=True,
    help="Seconds between campaign evaluations in-process (0: off; use 'server tick').",
)
def run(
    db_url: str,
    storage_url: str | None,
    director_storage: str | None,
    director_keys: Path | None,
    director_passphrase_env: str | None,
    trusted_root: Path | None,
    state_dir: Path | None,
    host: str,
    port: int,
    workers: int,
    threads: int,
    poll_interval: int,
    durable_polls: bool,
    tick_interval: int,
) -> None:
    """Serve the operator and vehicle APIs (migrating the database first)."""
    from overdrive.server.migrate import upgrade

    config = ServerConfig(
        db_url=db_url,
        storage_url=storage_url,
        director_storage=director_storage,
        director_keys=director_keys,
        director_passphrase_env=director_passphrase_env,
        trusted_root=trusted_root,
        state_dir=state_dir_from(state_dir),
        poll_interval=poll_interval,
        tick_interval=tick_interval,
        durable_polls=durable_polls,
    )
    from overdrive.server.db import check_creatable

    check_creatable(db_url)
    upgrade(db_url)
    from overdrive.server.app import open_director

    open_director(config)  # a director that cannot sign is one line here, not a worker's crash
    if workers == 1:
        from werkzeug.serving import run_simple

        from overdrive.server.app import create_app

        # One process counts everything itself: no shared metrics directory (see server.metrics).
        os.environ.pop(MULTIPROC_ENV, None)
        app = create_app(config)
        click.echo(
            f"overdrive server on http://{host}:{port} (development server; --workers N for gunicorn)",
            err=True,
        )
        run_simple(host, port, app, threaded=True, use_reloader=False)
        return
    serve_gunicorn(config, host, port, workers, threads)


#: ``PROMETHEUS_MULTIPROC_DIR``: where gunicorn workers keep the counters every scrape sums.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve_gunicorn(
    config: ServerConfig, host: str, port: int, workers: int, threads: int = 4
) -> None:
    """Serve with gunicorn: ``workers`` processes of ``threads`` threads each.

    The workers share a private metrics directory, created here and removed when gunicorn
    exits, so that ``/metrics`` on any worker reports the whole server's counters; when a
    worker dies, gunicorn's ``child_exit`` hook drops its live gauges (its counts stay).
    """
    import secrets
    import shutil
    import tempfile

    from gunicorn.app.base import BaseApplication

    # Workers rebuild the config from the environment; they share one session key per run.
    os.environ.setdefault("OVERDRIVE_SECRET_KEY", secrets.token_urlsafe(32))
    os.environ.update(config.to_env())
    metrics_dir = tempfile.mkdtemp(prefix="overdrive-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir  # before any worker imports prometheus_client

    class Application(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", threads)
            self.cfg.set("accesslog", None)
            self.cfg.set("timeout", 60)
            self.cfg.set("child_exit", _worker_exited)
            if "control_socket_disable" in self.cfg.settings:  # recent gunicorn versions
                # Unused, and one path per user ($HOME/.gunicorn): two servers would share it.
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            from overdrive.server.app import create_app

            return create_app(ServerConfig.from_env())

    click.echo(f"overdrive server on http://{host}:{port} (gunicorn, {workers} workers)", err=True)
    try:
        Application().run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _worker_exited(_server: Any, worker: Any) -> None:
    """gunicorn ``child_exit`` hook (in the master): forget the dead worker's live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


@server.command("migrate")
@db_option
def migrate(db_url: str) -> None:
    """Create or upgrade the database schema (Alembic; safe to run again)."""
    from overdrive.server.db import check_creatable, reported
    from overdrive.server.migrate import upgrade

    check_creatable(db_url)
    with reported(db_url):
        upgrade(db_url)
    click.echo("database schema is up to date")


def _context(db_url: str, storage_url: str | None = None) -> Any:
    """The server context for an administrative command. The database must exist and have
    been migrated (``server migrate`` or ``server run``): a wrong ``--db`` is refused rather
    than created, so that a token is never minted in a database no server reads."""
    from overdrive.server.app import create_app
    from overdrive.server.context import EXTENSION
    from overdrive.server.db import reported, require_migrated
    from overdrive.server.migrate import upgrade

    require_migrated(db_url)
    with reported(db_url):
        upgrade(db_url)  # an older schema is brought up to date, as before
    import os

    config = ServerConfig(
        db_url=db_url,
        storage_url=storage_url,
        tick_interval=0,
        state_dir=state_dir_from(os.environ.get("OVERDRIVE_STATE_DIR")),  # as `run` does
    )
    app = create_app(config, start_ticker=False, serving=False)
    return app.extensions[EXTENSION]


@server.command("tick")
@db_option
@click.option("--storage", "storage_url", envvar="OVERDRIVE_STORAGE")
def tick_command(db_url: str, storage_url: str | None) -> None:
    """Evaluate every running campaign once (for cron, when the in-process timer is off)."""
    from overdrive.server.campaigns import tick

    decisions = tick(_context(db_url, storage_url))
    if not decisions:
        click.echo("no running campaigns")
    for campaign_id, decision in decisions.items():
        click.echo(f"{campaign_id}: {decision}")


@server.group("token")
def token() -> None:
    """Operator API tokens."""


@token.command("create")
@db_option
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@click.option("--name", default=None, help="Who or what uses it (default: the role).")
@click.option("--json", "as_json", is_flag=True)
def token_create(db_url: str, role: str, name: str | None, as_json: bool) -> None:
    """Create an API token and print its secret (shown only this once)."""
    from overdrive.server.tokens import create_api_token

    ctx = _context(db_url)
    with ctx.transaction() as session:
        created, secret = create_api_token(session, name or role, role)
        token_id = created.id
    if as_json:
        click.echo(json.dumps({"id": token_id, "role": role, "secret": secret}))
    else:
        click.echo(secret)
        click.echo(
            f"token {token_id} ({role}); the secret is stored only hashed: keep it now", err=True
        )


@server.group("enroll-token")
def enroll_token() -> None:
    """Vehicle enrollment tokens."""


@enroll_token.command("create")
@db_option
@click.option("--expires", default=None, help="Validity, e.g. 24h or 7d (default: no expiry).")
@click.option(
    "--uses",
    type=click.IntRange(1, 1_000_000),
    default=1,
    show_default=True,
    help="How many vehicles may register with it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print id, secret, uses and expiry as JSON.")
def enroll_create(db_url: str, expires: str | None, uses: int, as_json: bool) -> None:
    """Create an enrollment token and print its secret (shown only this once)."""
    from overdrive.durations import parse_duration
    from overdrive.server.tokens import create_enroll_token, enroll_token_dict

    period = parse_duration(expires) if expires else None
    ctx = _context(db_url)
    with ctx.transaction() as session:
        created, secret = create_enroll_token(session, period, uses)
        described = enroll_token_dict(created)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "id": described["id"],
                    "secret": secret,
                    "uses": uses,
                    "expires_at": described["expires_at"],
                }
            )
        )
        return
    click.echo(secret)
    click.echo(f"enrollment token {described['id']} for {uses} vehicle(s)", err=True)


def _print_rows(rows: list[dict[str, Any]], columns: tuple[str, ...], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [tuple(c.upper().replace("_", " ") for c in columns)]
    table += [
        tuple("-" if row[c] is None else one_line(row[c], 60) for c in columns) for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


@token.command("list")
@db_option
@click.option("--json", "as_json", is_flag=True)
def token_list(db_url: str, as_json: bool) -> None:
    """List API tokens (never their secrets: only hashes are stored)."""
    from overdrive.server.tokens import list_api_tokens, token_dict

    with _context(db_url).session() as session:
        rows = [token_dict(t) for t in list_api_tokens(session)]
    _print_rows(rows, ("id", "name", "role", "created_at", "revoked_at"), as_json)


@token.command("revoke")
@click.argument("token_id", type=click.IntRange(1, 2**31 - 1))
@db_option
def token_revoke(token_id: int, db_url: str) -> None:
    """Revoke an API token now (and the dashboard sessions signed in with it)."""
    from overdrive.server.tokens import revoke_api_token

    with _context(db_url).transaction() as session:
        revoked = revoke_api_token(session, token_id)
        click.echo(f"revoked token {revoked.id} ({revoked.name}, {revoked.role})")


@enroll_token.command("list")
@db_option
@click.option("--json", "as_json", is_flag=True)
def enroll_list(db_url: str, as_json: bool) -> None:
    """List enrollment tokens: uses left, expiry, which vehicle used one last."""
    from overdrive.server.tokens import enroll_token_dict, list_enroll_tokens

    with _context(db_url).session() as session:
        rows = [enroll_token_dict(t) for t in list_enroll_tokens(session)]
    _print_rows(rows, ("id", "created_at", "expires_at", "uses_left", "used_by", "usable"), as_json)


@enroll_token.command("revoke")
@click.argument("token_id", type=click.IntRange(1, 2**31 - 1))
@db_option
def enroll_revoke(token_id: int, db_url: str) -> None:
    """Use up an enrollment token now: no more vehicles can register with it."""
    from overdrive.server.tokens import revoke_enroll_token

    with _context(db_url).transaction() as session:
        revoked = revoke_enroll_token(session, token_id)
        click.echo(f"revoked enrollment token {revoked.id}")


def _director_commands() -> None:
    from overdrive.server.director_cli import director_refresh, director_status

    server.add_command(director_status)
    server.add_command(director_refresh)


_director_commands()

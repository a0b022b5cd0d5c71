"""``overdrive server director-status|director-refresh``: the director repository as served.

The director's root is managed offline (``overdrive director …``); what the server holds is each
vehicle's signed chain. Chains are re-signed when they are used (a poll, or a fetch of
``timestamp.json``) and past half their life, so no cron job is needed for vehicles to keep
working; ``director-refresh`` re-signs ahead of time (after a key rotation, say, or so that a
vehicle coming back finds metadata that was signed before it asked).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from sqlalchemy import func, or_, select

from overdrive.durations import parse_duration
from overdrive.server.cli import db_option
from overdrive.server.models import DirectorRepo, Vehicle

director_options = (
    click.option(
        "--director-storage",
        envvar="OVERDRIVE_DIRECTOR_STORAGE",
        required=True,
        help="Storage URL of the director's root [env OVERDRIVE_DIRECTOR_STORAGE].",
    ),
    click.option(
        "--director-keys",
        envvar="OVERDRIVE_DIRECTOR_KEYS",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Key directory with the director's online keys [env OVERDRIVE_DIRECTOR_KEYS].",
    ),
    click.option(
        "--director-passphrase-env",
        metavar="VAR",
        help="Variable holding the passphrase of every director key (default: each key's own "
        "$OVERDRIVE_PASSPHRASE_<NAME>).",
    ),
)


def _with_director_options(command: Any) -> Any:
    for option in reversed(director_options):
        command = option(command)
    return db_option(command)


def _context(
    db_url: str, director_storage: str, director_keys: Path, passphrase_env: str | None
) -> Any:
    from overdrive.server import cli
    from overdrive.server.director import Director

    ctx = cli._context(db_url)
    ctx.director = Director.open(director_storage, director_keys, passphrase_env)
    return ctx


@click.command("director-status")
@_with_director_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def director_status(
    db_url: str,
    director_storage: str,
    director_keys: Path,
    director_passphrase_env: str | None,
    as_json: bool,
) -> None:
    """The director's root and keys, and how the vehicles' signed metadata stands."""
    from overdrive.server.vehicles import iso, utcnow

    ctx = _context(db_url, director_storage, director_keys, director_passphrase_env)
    director = ctx.require_director()
    now = utcnow()
    soon = now + director.expiry("timestamp") / 2
    with ctx.session() as session:
        vehicles = session.scalar(select(func.count()).select_from(Vehicle)) or 0
        chains = session.scalar(select(func.count()).select_from(DirectorRepo)) or 0
        expired = session.scalar(
            select(func.count()).select_from(DirectorRepo).where(DirectorRepo.expires <= now)
        )
        due = session.scalar(
            select(func.count())
            .select_from(DirectorRepo)
            .where(
                or_(
                    DirectorRepo.expires <= soon,
                    DirectorRepo.root_version != director.root_version,
                )
            )
        )
    status = {
        **director.describe(),
        "vehicles": vehicles,
        "vehicles_with_metadata": chains,
        "expired": expired or 0,
        "due_for_resigning": due or 0,
        "at": iso(now),
    }
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    click.echo(
        f"director root v{status['root_version']} ({status['storage']}), "
        f"expires {status['root_expires']}"
    )
    for role, info in status["roles"].items():
        validity = info.get("expiry_seconds")
        extra = f", per-vehicle validity {timedelta(seconds=validity)}" if validity else ""
        click.echo(f"  {role:<10} threshold {info['threshold']}/{len(info['keyids'])}{extra}")
    click.echo(
        f"{chains} of {vehicles} vehicle(s) have director metadata; {status['expired']} expired "
        f"(re-signed when next asked for), {status['due_for_resigning']} due for re-signing"
    )


@click.command("director-refresh")
@_with_director_options
@click.option(
    "--if-expiring-within",
    "within",
    default="12h",
    show_default=True,
    help="Re-sign the chains whose timestamp expires within this period (or that an older "
    "root signed).",
)
def director_refresh(
    db_url: str,
    director_storage: str,
    director_keys: Path,
    director_passphrase_env: str | None,
    within: str,
) -> None:
    """Re-sign vehicles' director metadata ahead of expiry (for cron; never required)."""
    from overdrive.server import director_store
    from overdrive.server.poll import statements
    from overdrive.server.vehicles import utcnow

    period = parse_duration(within)
    ctx = _context(db_url, director_storage, director_keys, director_passphrase_env)
    director = ctx.require_director()
    now = utcnow()
    with ctx.session() as session:
        ids = list(
            session.scalars(
                select(DirectorRepo.vehicle_id).where(
                    or_(
                        DirectorRepo.expires <= now + period,
                        DirectorRepo.root_version != director.root_version,
                    )
                )
            )
        )
    done = 0
    for vehicle_id in ids:
        with statements(ctx) as db:
            rows = db.rows("director_state", {"vid": vehicle_id})
            state = director_store.state_of(rows[0][1:]) if rows else None
            if state is None:
                continue
            targets = director_store.stored_targets(db, vehicle_id, state)
            director_store.publish(director, db, vehicle_id, targets, state, utcnow())
            done += 1
    click.echo(
        f"re-signed the director metadata of {done} vehicle(s) (root v{director.root_version})"
    )

"""The ``overdrive`` command.

Each role's commands live in its own package and are imported only when invoked, so that
``overdrive vehicle …`` on a car never imports boto3, Flask or SQLAlchemy. Every
:class:`~overdrive.errors.OverdriveError` becomes one ``error:`` line on stderr and exit code 1;
anything unexpected becomes one ``internal error:`` line (``OVERDRIVE_DEBUG=1`` shows the
traceback) and exit code 70.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from overdrive import __version__
from overdrive.errors import OverdriveError

# command name -> (module, attribute, one-line help shown in `overdrive --help`)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "keys": ("overdrive.signing.cli", "keys", "Generate and rotate signing keys."),
    "repo": (
        "overdrive.signing.cli",
        "repo",
        "Create, sign, publish, inspect and verify the TUF image repository.",
    ),
    "release": ("overdrive.signing.cli", "release", "Register a build as signed update bundles."),
    "director": (
        "overdrive.signing.director_cli",
        "director",
        "Create, rotate and co-sign the director repository's root (offline keys).",
    ),
    "bundle": ("overdrive.bundle.cli", "bundle", "Create, inspect and apply update bundles."),
    "demo": ("overdrive.demo", "demo", "Run the whole system end to end on the embedded defaults."),
    "policy": (
        "overdrive.rollout_policies.cli",
        "policy",
        "List, validate and show rollout policies.",
    ),
    "server": ("overdrive.server.cli", "server", "Run and administer the rollout server."),
    "simulate": (
        "overdrive.rollout_policies.simulate_cli",
        "simulate",
        "Dry-run a rollout policy over a synthetic fleet.",
    ),
    "vehicle": (
        "overdrive.client.cli",
        "vehicle",
        "Run a vehicle: provision, update daemon, boot, status.",
    ),
    "campaign": (
        "overdrive.server.campaign_cli",
        "campaign",
        "Create and drive rollout campaigns.",
    ),
    "fleet": (
        "overdrive.server.fleet_cli",
        "fleet",
        "List and inspect the fleet's vehicles on a server.",
    ),
}


EXTRAS = {
    "flask": "server",
    "sqlalchemy": "server",
    "alembic": "server",
    "psycopg": "server",
    "gunicorn": "server",
    "prometheus_client": "server",
    "yaml": "server",
    "boto3": "signing",
    "botocore": "signing",
    "numpy": "signing",
    "matplotlib": "simulate",
}
"""Optional dependencies a command may import only when it runs, and the extra that has them."""


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(SUBCOMMANDS) | set(super().list_commands(ctx)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return super().get_command(ctx, cmd_name)
        module_name, attr, _help = SUBCOMMANDS[cmd_name]
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            missing = e.name or str(e)
            extra = EXTRAS.get(missing.split(".")[0], "signing")
            raise click.ClickException(
                f"'overdrive {cmd_name}' needs {missing}, which is not installed "
                f"(pip install 'overdrive[{extra}]')"
            ) from e
        command: click.Command = getattr(module, attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Show help without importing every role's stack.
        rows = [(name, SUBCOMMANDS[name][2]) for name in sorted(SUBCOMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="overdrive")
def cli() -> None:
    """Overdrive: over-the-air updates for vehicle fleets."""


def main(argv: list[str] | None = None) -> Any:
    """Console-script entry point: run the CLI and turn errors into one line and an exit code."""
    try:
        return cli.main(args=argv, prog_name="overdrive", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except OverdriveError as e:
        click.echo(f"error: {first_line(str(e))}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if os.environ.get("OVERDRIVE_DEBUG"):
            raise
        extra = EXTRAS.get((getattr(e, "name", None) or "").split(".")[0])
        if isinstance(e, ModuleNotFoundError) and extra is not None:
            click.echo(
                f"error: this command needs {e.name}, which is not installed: "
                f"pip install 'overdrive[{extra}]'",
                err=True,
            )
            sys.exit(1)
        click.echo(
            f"internal error: {type(e).__name__}: {first_line(str(e))} "
            "(set OVERDRIVE_DEBUG=1 for a traceback)",
            err=True,
        )
        sys.exit(70)


def first_line(message: str) -> str:
    """The first non-empty line of ``message`` (errors are one line on a terminal)."""
    for line in message.splitlines():
        if line.strip():
            return line.strip()
    return message.strip() or "unknown error"


if __name__ == "__main__":
    main()

"""``overdrive director …``: the director repository's root of trust, managed offline.

The director is a TUF repository per vehicle, served by the rollout server; what all of them
share is the director's ``root``: its offline root keys and threshold, and the online targets,
snapshot and timestamp keys the server signs each vehicle's metadata with. That root lives in
its own storage location (never the image repository's) and is created, rotated and co-signed
with the same tools, and the same multi-person staging, as the image repository's root:

* ``director init`` creates it (default key names ``director-root``, ``director-targets``,
  ``director-snapshot``, ``director-timestamp``; per-vehicle validity
  ``targets=7d,snapshot=7d,timestamp=1d``, kept in the root for the server to use);
* ``director rotate --role R --add/--remove/--threshold`` writes the next root, signed by the
  old and the new root thresholds (staged for co-signers when the keys at hand are short);
* ``director sign`` / ``director publish`` / ``director discard`` finish or drop a staged root;
* ``director status`` shows the root's version, expiry, keys and thresholds.

Vehicles are provisioned with its ``1.root.json`` (``vehicle provision --director-root``) and
follow every rotation through the server's ``N.root.json``. The server reloads the root chain
from the storage every minute (``server run --director-storage … --director-keys …``).
"""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from typing import Any

import click

from overdrive.signing import cli as signing_cli
from overdrive.signing.repository import now

DIRECTOR_STORAGE = click.Option(
    ["--storage", "storage_url"],
    envvar="OVERDRIVE_DIRECTOR_STORAGE",
    required=True,
    help="Where the director's root lives: s3://bucket/prefix or a directory, never the "
    "image repository's [env OVERDRIVE_DIRECTOR_STORAGE].",
)
#: ``director init``'s defaults where they differ from ``repo init``'s.
INIT_DEFAULTS = {
    "root_keys": "director-root",
    "targets_keys": "director-targets",
    "snapshot_key": "director-snapshot",
    "timestamp_key": "director-timestamp",
    "expires": "root=365d,targets=7d,snapshot=7d,timestamp=1d",
}


def for_director(
    command: click.Command, name: str, text: str, defaults: dict[str, str] | None = None
) -> click.Command:
    """``command`` working on the director's storage (``$OVERDRIVE_DIRECTOR_STORAGE``, never
    ``$OVERDRIVE_STORAGE``), with ``defaults`` for some of its options."""
    params: list[click.Parameter] = []
    for param in command.params:
        if param.name == "storage_url":
            params.append(DIRECTOR_STORAGE)
            continue
        if defaults and param.name in defaults:
            param = copy.copy(param)
            param.default = defaults[param.name]
        params.append(param)
    return click.Command(
        name, callback=command.callback, params=params, help=text, short_help=text.split("\n")[0]
    )


@click.group()
def director() -> None:
    """Create, rotate and co-sign the director repository's root (offline keys)."""


director.add_command(
    for_director(
        signing_cli.repo_init,
        "init",
        "Create the director's root: offline root keys with a threshold, online keys for the "
        "server.\n\nThe root records how long the server's per-vehicle targets, snapshot and "
        "timestamp stay valid (--expires). The storage also holds fleet-wide targets, snapshot "
        "and timestamp files that nothing reads: publishing a root change re-signs them, so it "
        "needs the online snapshot and timestamp keys (root holders without them stage the "
        "change with --stage-only, and whoever holds the online keys publishes it).",
        INIT_DEFAULTS,
    )
)
director.add_command(
    for_director(
        signing_cli.keys_rotate,
        "rotate",
        "Change a director role's keys or threshold: a new root version signed by the old and "
        "the new root thresholds.\n\nPublished when the keys at hand meet every threshold; "
        "otherwise staged, and each other signer runs 'overdrive director sign' with their own "
        "--keys, then 'overdrive director publish'. The server picks the new root up within a "
        "minute and vehicles follow it on their next refresh.",
    )
)
director.add_command(for_director(signing_cli.repo_sign, "sign", "Co-sign a staged director root."))
director.add_command(
    for_director(
        signing_cli.repo_publish,
        "publish",
        "Publish a staged director root once every threshold is met (needs the online keys).",
    )
)
director.add_command(
    for_director(
        signing_cli.repo_discard,
        "discard",
        "Throw away a staged director root (the published one is untouched).",
    )
)


@director.command("status")
@click.option(
    "--storage",
    "storage_url",
    envvar="OVERDRIVE_DIRECTOR_STORAGE",
    required=True,
    help="Where the director's root lives [env OVERDRIVE_DIRECTOR_STORAGE].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def director_status(storage_url: str, as_json: bool) -> None:
    """The director root's version, expiry, and each role's keys, threshold and validity."""
    repo = signing_cli.load_repo(storage_url, None)
    root = repo.root.signed
    remaining = root.expires - now()
    status: dict[str, Any] = {
        "storage": repo.storage.url,
        "root_version": root.version,
        "root_expires": signing_cli.iso(root.expires),
        "root_expired": remaining <= timedelta(0),
        "roles": {
            role: {
                "threshold": r.threshold,
                "keyids": list(r.keyids),
                "validity_seconds": int(repo.expiry[role].total_seconds()),
            }
            for role, r in root.roles.items()
        },
        "staged": repo.load_staged().roles(),
    }
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    flag = "  EXPIRED" if status["root_expired"] else ""
    click.echo(
        f"director root v{root.version} at {repo.storage.url}, expires {status['root_expires']}{flag}"
    )
    for role, info in status["roles"].items():
        keys = ", ".join(k[:12] for k in info["keyids"])
        validity = timedelta(seconds=info["validity_seconds"])
        click.echo(
            f"  {role:<10} threshold {info['threshold']}/{len(info['keyids'])}  "
            f"valid {validity.days}d{validity.seconds // 3600}h  keys {keys}"
        )
    if status["staged"]:
        click.echo(f"staged, waiting for signatures: {', '.join(status['staged'])}")

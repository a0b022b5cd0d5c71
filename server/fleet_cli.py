"""``overdrive fleet …``: operators list and inspect vehicles over the REST API.

Same server and token options as ``overdrive campaign`` (``--server``/``--token`` or
``OVERDRIVE_SERVER``/``OVERDRIVE_TOKEN``); ``--json`` prints the API's answer.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import click

from overdrive.server.campaign_cli import call, json_option, server_option, table, token_option
from overdrive.text import one_line


@click.group()
def fleet() -> None:
    """List and inspect the fleet's vehicles on a running server."""


@fleet.command("list")
@click.option("--hardware-id", help="Vehicles with this hardware id.")
@click.option("--version", help="Running this version (of --hardware-id, or of any).")
@click.option("--model", help="Of this model.")
@click.option("--region", help="In this region.")
@click.option(
    "--attribute",
    "attributes",
    multiple=True,
    metavar="NAME=VALUE",
    help="Attribute value; repeatable.",
)
@click.option("--campaign", help="Members of this campaign (id or unique prefix).")
@click.option(
    "--campaign-status",
    help="Whose membership has this status (pending … committed, failed, rolled_back); in "
    "--campaign, or in any running or paused campaign.",
)
@click.option("--search", help="Vehicle id contains this text.")
@click.option(
    "--sort",
    default="id",
    show_default=True,
    help="id, last_seen, registered, model or region; prefix '-' to reverse.",
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 500))
@click.option("--offset", default=0, type=click.IntRange(0, 2**31 - 1))
@server_option
@token_option
@json_option
def list_command(
    attributes: tuple[str, ...],
    limit: int,
    offset: int,
    server_url: str,
    token: str,
    as_json: bool,
    **options: str | None,
) -> None:
    """List vehicles, filtered and sorted."""
    query: dict[str, str | int] = {"limit": limit, "offset": offset}
    query.update({k: v for k, v in options.items() if v is not None})
    for item in attributes:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint="--attribute")
        query[f"attr.{name}"] = value
    data = call(server_url, token, "GET", "/vehicles?" + urllib.parse.urlencode(query))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = [("VEHICLE", "MODEL", "REGION", "IMAGES", "LAST SEEN")]
    for v in data["items"]:
        images = ", ".join(f"{hw} {i['version']}" for hw, i in sorted(v["images"].items()))
        rows.append(
            (
                one_line(v["id"], 40),
                one_line(v.get("model") or "-", 24),
                one_line(v.get("region") or "-", 16),
                one_line(images or "-", 60),
                v.get("last_seen_at") or "never",
            )
        )
    table(rows)
    more = f"; next: --offset {data['next_offset']}" if data.get("next_offset") else ""
    click.echo(f"{len(data['items'])} of {data['total']} vehicles{more}")


def _vehicle_path(vehicle_id: str) -> str:
    return "/vehicles/" + urllib.parse.quote(vehicle_id, safe="")


@fleet.command("show")
@click.argument("vehicle_id")
@server_option
@token_option
@json_option
def show_command(vehicle_id: str, server_url: str, token: str, as_json: bool) -> None:
    """One vehicle: attributes, installed images, campaigns."""
    data = call(server_url, token, "GET", _vehicle_path(vehicle_id))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"vehicle {one_line(data['id'], 128)}")
    click.echo(f"  model     {one_line(data.get('model') or '-', 128)}")
    click.echo(f"  region    {one_line(data.get('region') or '-', 128)}")
    click.echo(f"  last seen {data.get('last_seen_at') or 'never'}")
    for hw, image in sorted(data["images"].items()):
        click.echo(f"  image     {one_line(hw, 128)} {one_line(image['version'], 64)}")
    for m in data.get("campaigns", []):
        reason = f" ({one_line(m['reason'], 200)})" if m.get("reason") else ""
        click.echo(
            f"  campaign  {m['campaign_id']} {one_line(m['hardware_id'], 64)} {m['status']}{reason}"
        )


@fleet.command("events")
@click.argument("vehicle_id")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--offset", default=0, type=click.IntRange(0, 2**31 - 1))
@server_option
@token_option
@json_option
def events_command(
    vehicle_id: str, limit: int, offset: int, server_url: str, token: str, as_json: bool
) -> None:
    """A vehicle's events, most recently received first."""
    query = urllib.parse.urlencode({"limit": limit, "offset": offset})
    data: Any = call(server_url, token, "GET", f"{_vehicle_path(vehicle_id)}/events?{query}")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = [("RECEIVED", "TYPE", "CAMPAIGN", "HARDWARE ID", "REASON")]
    for e in data["items"]:
        rows.append(
            (
                e["received_at"],
                one_line(e["type"], 24),
                (e.get("campaign_id") or "-")[:8],
                one_line(e.get("hardware_id") or "-", 32),
                one_line(e.get("reason") or "-", 80),
            )
        )
    table(rows)
    click.echo(f"{len(data['items'])} of {data['total']} events")

"""``overdrive fleet …``: operators list and inspect vehicles over the REST API, and replace a
vehicle's ECU after a workshop swapped the part (``replace-ecu``).

Same server and token options as ``overdrive campaign`` (``--server``/``--token`` or
``OVERDRIVE_SERVER``/``OVERDRIVE_TOKEN``); ``--json`` prints the API's answer.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any

import click

from overdrive.errors import OverdriveError
from overdrive.server.campaign_cli import call, json_option, server_option, table, token_option
from overdrive.text import one_line


class KeyFileError(OverdriveError):
    """A public key file that is neither a TUF key object (JSON) nor a PEM public key."""


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
    """One vehicle: attributes, its ECUs and their images, campaigns."""
    data = call(server_url, token, "GET", _vehicle_path(vehicle_id))
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    show_vehicle(data)


def show_vehicle(data: dict[str, Any]) -> None:
    click.echo(f"vehicle {one_line(data['id'], 128)}")
    click.echo(f"  model     {one_line(data.get('model') or '-', 128)}")
    click.echo(f"  region    {one_line(data.get('region') or '-', 128)}")
    click.echo(f"  last seen {data.get('last_seen_at') or 'never'}")
    for hw, image in sorted(data["images"].items()):
        click.echo(f"  image     {one_line(hw, 128)} {one_line(image['version'], 64)}")
    for serial, ecu in data.get("ecus", {}).items():
        image = ecu.get("installed") or {}
        kind = ecu.get("kind") or ("primary" if ecu.get("primary") else "ecu")
        attacks = (
            f" (attacks: {one_line(ecu['attacks_detected'], 120)})"
            if ecu.get("attacks_detected")
            else ""
        )
        click.echo(
            f"  ecu       {one_line(serial, 128)} {one_line(ecu.get('hardware_id') or '-', 64)} "
            f"{kind} {one_line(image.get('version') or '-', 64)} "
            f"reported {ecu.get('last_report_at') or 'never'}{attacks}"
        )
    for serial, unknown in data.get("unknown_ecus", {}).items():
        click.echo(
            f"  unknown   {one_line(serial, 128)} {one_line(unknown.get('hardware_id') or '-', 64)} "
            f"last seen {unknown.get('last_seen')} (reports ignored; replace-ecu if it is a new part)"
        )
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


@fleet.command("replace-ecu")
@click.argument("vehicle_id")
@click.argument("old_serial")
@click.option("--new-serial", required=True, help="The serial of the part fitted in its place.")
@click.option(
    "--public-key",
    "key_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The new part's public key: a TUF key object (JSON, with its keyid) or a PEM file.",
)
@click.option(
    "--hardware-id", help="The new part's hardware id (refused unless it is the old ECU's)."
)
@server_option
@token_option
@json_option
def replace_ecu_command(
    vehicle_id: str,
    old_serial: str,
    new_serial: str,
    key_file: Path,
    hardware_id: str | None,
    server_url: str,
    token: str,
    as_json: bool,
) -> None:
    """Replace ECU OLD_SERIAL of VEHICLE_ID by a new part (a workshop swapped it): the new
    serial and key are trusted from now on, the old serial's reports are not."""
    body: dict[str, Any] = {"new_serial": new_serial, "public_key": read_public_key(key_file)}
    if hardware_id is not None:
        body["hardware_id"] = hardware_id
    ecu = urllib.parse.quote(old_serial, safe="")
    data = call(server_url, token, "POST", f"{_vehicle_path(vehicle_id)}/ecus/{ecu}/replace", body)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"replaced ECU {one_line(old_serial, 128)} by {one_line(new_serial, 128)}")
    show_vehicle(data)


def read_public_key(path: Path) -> dict[str, Any]:
    """A public key file as the API takes it (a TUF key object with its key id)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror or e}") from e
    if raw.lstrip().startswith(b"-----BEGIN"):
        from overdrive.keys import public_key_from_pem

        try:
            key = public_key_from_pem(raw, str(path))
        except OverdriveError as e:
            raise KeyFileError(str(e)) from e
        return {"keyid": key.keyid, **key.to_dict()}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise KeyFileError(f"{path} is neither JSON (a TUF key object) nor a PEM public key") from e
    if not isinstance(data, dict) or not isinstance(data.get("keyid"), str):
        raise KeyFileError(f"{path}: expected a TUF key object with a keyid")
    return data

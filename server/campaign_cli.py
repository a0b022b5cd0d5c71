"""``overdrive campaign …``: the operators' command line over the REST API.

Server URL and token come from ``--server``/``--token`` or ``OVERDRIVE_SERVER``/``OVERDRIVE_TOKEN``.
Every command prints a human table, or the API's JSON with ``--json``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from overdrive.errors import OverdriveError
from overdrive.text import one_line


class ApiCallError(OverdriveError):
    """The server refused the request or could not be reached."""


server_option = click.option(
    "--server",
    "server_url",
    envvar="OVERDRIVE_SERVER",
    required=True,
    help="Rollout server URL [env OVERDRIVE_SERVER].",
)
token_option = click.option(
    "--token", envvar="OVERDRIVE_TOKEN", required=True, help="API token [env OVERDRIVE_TOKEN]."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON.")


def call(server_url: str, token: str, method: str, path: str, body: Any = None) -> Any:
    """One API request; an error becomes one line with the server's own message."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        server_url.rstrip("/") + "/api/v1" + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except Exception:
            message = e.reason
        raise ApiCallError(f"server answered {e.code}: {message}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ApiCallError(f"cannot reach {server_url}: {reason}") from e


@click.group()
def campaign() -> None:
    """Create and drive rollout campaigns on a running server."""


def parse_pairs(values: tuple[str, ...], what: str) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=what)
        result.setdefault(key, []).extend(v for v in value.split(",") if v)
    return result


@campaign.command("create")
@server_option
@token_option
@click.option("--name", required=True)
@click.option(
    "--release",
    "releases",
    multiple=True,
    required=True,
    help="HW=VERSION (repeat per hardware id).",
)
@click.option(
    "--policy", required=True, help="A preset name (see 'overdrive policy list') or a policy file."
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    help="KEY=VALUE[,VALUE]: model, region, hardware_id, vehicles, exclude, installed_version (V or A..B), or any attribute.",
)
@click.option(
    "--install-order",
    metavar="HW,HW,…",
    help="The order in which the software set's ECUs install and trial-boot (every --release "
    "hardware id once, e.g. the gateway last); default: the order of --release.",
)
@json_option
@click.option("--quiet", "-q", is_flag=True, help="Print only the new campaign's id (for scripts).")
def create(
    server_url: str,
    token: str,
    name: str,
    releases: tuple[str, ...],
    policy: str,
    filters: tuple[str, ...],
    install_order: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Create a campaign (a draft: start it with 'overdrive campaign start ID')."""
    release_map = {hw: versions[-1] for hw, versions in parse_pairs(releases, "--release").items()}
    policy_spec: Any = policy
    path = Path(policy)
    if path.suffix in (".yaml", ".yml", ".json") or path.is_file():
        policy_spec = load_policy_file(path)
    body = {
        "name": name,
        "releases": release_map,
        "policy": policy_spec,
        "filter": parse_pairs(filters, "--filter"),
    }
    if install_order is not None:
        body["install_order"] = [hw.strip() for hw in install_order.split(",") if hw.strip()]
    created = call(server_url, token, "POST", "/campaigns", body)
    if quiet:
        click.echo(created["id"])
        return
    show(created, as_json)


def load_policy_file(path: Path) -> Any:
    """Read a policy file exactly as ``overdrive policy validate`` does (the server validates it)."""
    from overdrive.rollout_policies import read_document

    return read_document(path)


def _path_id(campaign_id: str) -> str:
    """A campaign id (or the unique prefix the demo prints) as a URL path segment."""
    return urllib.parse.quote(campaign_id, safe="")


def _simple(action: str, help_text: str) -> None:
    @campaign.command(action, help=help_text)
    @click.argument("campaign_id")
    @server_option
    @token_option
    @json_option
    def command(campaign_id: str, server_url: str, token: str, as_json: bool) -> None:
        cid = _path_id(campaign_id)
        method, path = (
            ("GET", f"/campaigns/{cid}")
            if action == "status"
            else ("POST", f"/campaigns/{cid}/{action}")
        )
        show(call(server_url, token, method, path), as_json)


for _action, _help in (
    ("start", "Start a draft campaign: admit the first stage."),
    ("resume", "Resume a paused campaign."),
    ("approve", "Approve advancing to the next stage (manual gates)."),
    ("status", "Show a campaign's state, what it waits for, its counts per group."),
):
    _simple(_action, _help)


def _stopping(action: str, help_text: str) -> None:
    @campaign.command(action, help=help_text)
    @click.argument("campaign_id")
    @click.option("--reason", help="Why (stored with the campaign and in the audit log).")
    @server_option
    @token_option
    @json_option
    def command(
        campaign_id: str, reason: str | None, server_url: str, token: str, as_json: bool
    ) -> None:
        body = {"reason": reason} if reason is not None else None
        show(
            call(server_url, token, "POST", f"/campaigns/{_path_id(campaign_id)}/{action}", body),
            as_json,
        )


_stopping("pause", "Pause a running campaign (no new assignments).")
_stopping("abort", "Abort a campaign for good.")


@campaign.command("delete")
@click.argument("campaign_id")
@server_option
@token_option
@json_option
def delete_command(campaign_id: str, server_url: str, token: str, as_json: bool) -> None:
    """Delete a draft campaign (one that never started)."""
    data = call(server_url, token, "DELETE", f"/campaigns/{_path_id(campaign_id)}")
    click.echo(json.dumps(data, indent=2) if as_json else f"deleted draft campaign {data['id']}")


@campaign.command("vehicles")
@click.argument("campaign_id")
@click.option(
    "--status",
    help="pending, assigned, downloading, installing, installed, committed, failed, "
    "rolled_back; or finished, failures.",
)
@click.option("--hardware-id", help="Only this hardware id.")
@click.option("--model", help="Only this model.")
@click.option("--region", help="Only this region.")
@click.option("--group", metavar="DIMENSION=VALUE", help="Only this judged group (as in status).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 500))
@click.option("--offset", default=0, type=click.IntRange(0, 2**31 - 1))
@server_option
@token_option
@json_option
def vehicles_command(
    campaign_id: str,
    status: str | None,
    hardware_id: str | None,
    model: str | None,
    region: str | None,
    group: str | None,
    limit: int,
    offset: int,
    server_url: str,
    token: str,
    as_json: bool,
) -> None:
    """List the vehicles behind a campaign's counts (status, reason, last event, versions)."""
    query: dict[str, str | int] = {"limit": limit, "offset": offset}
    for key, value in (
        ("status", status),
        ("hardware_id", hardware_id),
        ("model", model),
        ("region", region),
    ):
        if value is not None:
            query[key] = value
    if group is not None:
        dimension, sep, value = group.partition("=")
        if not sep or not dimension:
            raise click.BadParameter(f"{group!r}: expected DIMENSION=VALUE", param_hint="--group")
        query["dimension"], query["value"] = dimension, value
    path = f"/campaigns/{_path_id(campaign_id)}/vehicles?" + urllib.parse.urlencode(query)
    data = call(server_url, token, "GET", path)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = [("VEHICLE", "HARDWARE ID", "STATUS", "FROM", "INSTALLED", "LAST EVENT", "REASON")]
    for item in data["items"]:
        event = item.get("last_event") or {}
        rows.append(
            (
                one_line(item["vehicle_id"], 40),
                one_line(item["hardware_id"], 24),
                item["status"],
                one_line(item.get("from_version") or "-", 16),
                one_line(item.get("installed_version") or "-", 16),
                f"{event.get('type', '-')} {event.get('received_at', '')}".strip(),
                one_line(item.get("reason") or "-", 60),
            )
        )
    table(rows)
    shown = len(data["items"])
    more = f"; next: --offset {data['next_offset']}" if data.get("next_offset") else ""
    click.echo(f"{shown} of {data['total']} vehicles{more}")


@campaign.command("history")
@click.argument("campaign_id")
@server_option
@token_option
@json_option
def history_command(campaign_id: str, server_url: str, token: str, as_json: bool) -> None:
    """What happened to a campaign, oldest first: who (an operator or the policy) and why."""
    data = call(server_url, token, "GET", f"/campaigns/{_path_id(campaign_id)}/history")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for entry in data["items"]:
        details = entry.get("details") or {}
        why = details.get("reason")
        click.echo(
            f"{entry['at']}  {one_line(entry['actor'], 40):<12} {entry['action']}"
            + (f": {one_line(why, 300)}" if why else "")
        )


def table(rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@campaign.command("list")
@server_option
@token_option
@click.option("--state", type=click.Choice(["draft", "running", "paused", "completed", "aborted"]))
@json_option
def list_command(server_url: str, token: str, state: str | None, as_json: bool) -> None:
    """List campaigns, newest first."""
    data = call(
        server_url, token, "GET", "/campaigns?limit=500" + (f"&state={state}" if state else "")
    )
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not data["items"]:
        click.echo("no campaigns")
    click.echo(f"{'id':<38}{'name':<24}{'state':<11}{'stage':<10}{'done/admitted':<15}")
    for item in data["items"]:
        c = item["counts"]
        click.echo(
            f"{item['id']:<38}{item['name'][:23]:<24}{item['state']:<11}"
            f"{item['stage_index'] + 1}/{item['stages']:<8}{c.get('committed', 0)}/{c.get('admitted', 0):<13}"
        )


def show(item: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(item, indent=2))
        return
    c = item["counts"]
    order = item.get("install_order") or list(item["releases"])
    releases = ", ".join(
        f"{hw}={item['releases'][hw]['version']}" for hw in order if hw in item["releases"]
    )
    click.echo(f"campaign {item['id']}  {item['name']}")
    click.echo(
        f"  state     {item['state']}" + (f"  ({item['reason']})" if item.get("reason") else "")
    )
    click.echo(
        f"  policy    {item['policy']}, stage {item['stage_index'] + 1} of {item['stages']} ({item.get('stage') or '-'})"
    )
    click.echo(f"  releases  {releases}" + ("  (in install order)" if len(order) > 1 else ""))
    click.echo(
        f"  vehicles  eligible {c.get('eligible', 0)}, admitted {c.get('admitted', 0)}, committed {c.get('committed', 0)}, "
        f"failed {c.get('failed', 0)}, rolled back {c.get('rolled_back', 0)}"
    )
    for line in item.get("waiting") or []:
        click.echo(f"  waiting   {one_line(line, 300)}")
    groups = [g for g in item.get("groups") or [] if g["dimension"] != "campaign"]
    if groups:
        acceptable = groups[0].get("acceptable_failure_rate", "?")
        click.echo(
            f"  groups    each judged on its own: a breach once its failures are clearly above "
            f"{acceptable} (HALTS AT: that many failures among its finished vehicles)"
        )
        rows = [("    GROUP", "ADMITTED", "FINISHED", "FAILURES", "RATE", "HALTS AT", "")]
        for g in item.get("groups") or []:
            label = "all" if g["dimension"] == "campaign" else f"{g['dimension']}={g['value']}"
            rate = "-" if g["failure_rate"] is None else f"{g['failure_rate']:.1%}"
            halts = "-" if g["halts_at"] is None else f"{g['halts_at']} failures"
            rows.append(
                (
                    f"    {one_line(label, 48)}",
                    str(g["admitted"]),
                    str(g["finished"]),
                    str(g["failures"]),
                    rate,
                    halts,
                    "BREACHED" if g["breached"] else "",
                )
            )
        table(rows)

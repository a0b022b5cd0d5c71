"""``overdrive campaign …``: the operators' command line over the REST API.

Server URL and token come from ``--server``/``--token`` or ``OVERDRIVE_SERVER``/``OVERDRIVE_TOKEN``.
Every command prints a human table, or the API's JSON with ``--json``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from overdrive.errors import OverdriveError


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
@json_option
def create(
    server_url: str,
    token: str,
    name: str,
    releases: tuple[str, ...],
    policy: str,
    filters: tuple[str, ...],
    as_json: bool,
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
    show(call(server_url, token, "POST", "/campaigns", body), as_json)


def load_policy_file(path: Path) -> Any:
    """Read a policy file exactly as ``overdrive policy validate`` does (the server validates it)."""
    from rollout_policies import read_document

    return read_document(path)


def _simple(action: str, help_text: str) -> None:
    @campaign.command(action, help=help_text)
    @click.argument("campaign_id")
    @server_option
    @token_option
    @json_option
    def command(campaign_id: str, server_url: str, token: str, as_json: bool) -> None:
        method, path = (
            ("GET", f"/campaigns/{campaign_id}")
            if action == "status"
            else ("POST", f"/campaigns/{campaign_id}/{action}")
        )
        show(call(server_url, token, method, path), as_json)


for _action, _help in (
    ("start", "Start a draft campaign: admit the first stage."),
    ("pause", "Pause a running campaign (no new assignments)."),
    ("resume", "Resume a paused campaign."),
    ("abort", "Abort a campaign for good."),
    ("approve", "Approve advancing to the next stage (manual gates)."),
    ("status", "Show a campaign's state, stage and counts."),
):
    _simple(_action, _help)


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
    releases = ", ".join(f"{hw}={r['version']}" for hw, r in item["releases"].items())
    click.echo(f"campaign {item['id']}  {item['name']}")
    click.echo(
        f"  state     {item['state']}" + (f"  ({item['reason']})" if item.get("reason") else "")
    )
    click.echo(
        f"  policy    {item['policy']}, stage {item['stage_index'] + 1} of {item['stages']} ({item.get('stage') or '-'})"
    )
    click.echo(f"  releases  {releases}")
    click.echo(
        f"  vehicles  eligible {c.get('eligible', 0)}, admitted {c.get('admitted', 0)}, committed {c.get('committed', 0)}, "
        f"failed {c.get('failed', 0)}, rolled back {c.get('rolled_back', 0)}"
    )

"""A typed Python client generated from the served OpenAPI document (``openapi-python-client``,
the ``dev`` extra) drives a live server on a loopback socket: the document is complete and
true enough for a generator (``--fail-on-warning``: every operation and schema generates), and
the generated models parse the server's real answers."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from werkzeug.serving import make_server

from overdrive.server.campaigns import tick
from overdrive.server.context import ServerContext
from tests.server.fleet import SimVehicle

PACKAGE = "overdrive_generated_client"


@pytest.fixture
def server_url(app: Any, fleet: list[SimVehicle]) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def generate(url: str, directory: Path) -> None:
    """Write the served document to ``directory`` and generate the client package there."""
    if importlib.util.find_spec("openapi_python_client") is None:
        pytest.skip("openapi-python-client is not installed (pip install -e '.[dev]')")
    with urllib.request.urlopen(f"{url}/api/v1/openapi.json", timeout=10) as response:
        (directory / "spec.json").write_bytes(response.read())
    # No post-generation hooks: they would run whatever ruff is on PATH over the output.
    (directory / "config.json").write_text(json.dumps({"post_hooks": []}))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(directory / "spec.json"),
            "--output-path",
            str(directory / PACKAGE),
            "--meta",
            "none",
            "--config",
            str(directory / "config.json"),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def client_package(server_url: str, tmp_path: Path) -> Iterator[ModuleType]:
    """The generated package, importable for the test's duration."""
    generate(server_url, tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_generated_client_drives_a_campaign(
    client_package: ModuleType, server_url: str, tokens: dict[str, str], ctx: ServerContext
) -> None:
    models = _module("models")
    campaigns = "api.campaigns"
    client = client_package.AuthenticatedClient(base_url=server_url, token=tokens["operator"])

    releases = _module(f"{campaigns}.list_releases").sync(client=client)
    assert isinstance(releases, models.Releases)
    ecu_a = releases.hardware["ecu-a"]
    assert [r.version for r in ecu_a] == ["1.0", "1.1"]
    assert isinstance(ecu_a[1], models.Release) and ecu_a[1].deltas[0].source_version == "1.0"

    body = models.CampaignCreate(
        name="typed rollout",
        releases=models.CampaignCreateReleases.from_dict({"ecu-a": "1.1"}),
        policy="canary",
    )
    created = _module(f"{campaigns}.create_campaign").sync(client=client, body=body)
    assert isinstance(created, models.Campaign), created
    assert created.state == models.CampaignState.DRAFT
    started = _module(f"{campaigns}.start_campaign").sync(campaign_id=created.id, client=client)
    assert isinstance(started, models.Campaign) and started.state == models.CampaignState.RUNNING
    tick(ctx)

    status = _module(f"{campaigns}.get_campaign").sync(campaign_id=created.id[:8], client=client)
    assert isinstance(status, models.Campaign)
    assert status.counts.eligible == 20 and status.counts.admitted >= 1
    assert status.waiting and status.waiting[0].startswith("soaking until")
    assert "soak" in status.waiting_for
    assert status.until is not None and status.until.tzinfo is not None
    groups = {(g.dimension, g.value): g for g in status.groups}
    assert isinstance(groups[("hardware_id", "ecu-a")], models.CampaignGroup)
    assert groups[("hardware_id", "ecu-a")].eligible == 20
    assert status.releases["ecu-a"].version == "1.1"

    members = _module(f"{campaigns}.list_campaign_vehicles").sync(
        campaign_id=created.id,
        client=client,
        admitted=False,
        status=models.ListCampaignVehiclesStatus.PENDING,
        limit=5,
    )
    assert isinstance(members, models.CampaignVehicles)
    assert members.total == 20 - status.counts.admitted and len(members.items) == 5
    assert all(isinstance(m, models.CampaignMember) and not m.admitted for m in members.items)
    assert members.next_offset == 5

    fleet = _module("api.vehicles.list_vehicles").sync(
        client=client,
        region="EU",
        attributes=models.ListVehiclesAttributes.from_dict({"attr.model": "m1"}),
        sort=models.ListVehiclesSort.ID_DESC,
    )
    assert isinstance(fleet, models.VehicleList)
    assert fleet.total == 10
    ids = [v.id for v in fleet.items]
    assert ids == sorted(ids, reverse=True) and all(v.region == "EU" for v in fleet.items)
    assert fleet.items[0].images["ecu-a"].version == "1.0"

    audit = _module("api.admin.list_audit").sync(client=client, target=f"campaign:{created.id}")
    assert isinstance(audit, models.AuditList)
    assert [e.action for e in audit.items][-2:] == ["campaign.start", "campaign.create"]
    assert audit.items[0].actor == "test-operator (operator)"

    missing = _module(f"{campaigns}.get_campaign").sync(campaign_id="f00dfeed", client=client)
    assert isinstance(missing, models.Error) and missing.error.code == "not_found"
    anonymous = client_package.Client(base_url=server_url)
    refused = _module(f"{campaigns}.list_campaigns").sync(client=anonymous)
    assert isinstance(refused, models.Error) and refused.error.status == 401

"""A vehicle refuses a withdrawn release even when a server still assigns it.

The rollout server here is real (loopback HTTP) but its release index is stale: it was loaded
before ``overdrive release yank`` ran and is not refreshed for an hour, so it keeps assigning the
release, as a lagging or misbehaving server would. The vehicle reads the image repository itself
through TUF, finds the withdrawal in the verified targets metadata and refuses: exit code 3, slot B
never written, nothing downloaded, idle on slot A, one ``failed`` event ``withdrawn: …`` reported
against the campaign.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tuf.api.metadata import TargetFile

from overdrive.client.errors import Refused
from overdrive.client.trust import check_not_withdrawn
from overdrive.keys import KeyDirectory
from overdrive.server.models import Event, Membership
from overdrive.signing.repository import ImageRepository
from overdrive.storage import LocalStorage
from overdrive.tuf_layout import YANKED_KEY, BundleInfo, ImageRef
from tests.client.conftest import Car, LiveServer, provision
from tests.conftest import Cli, Result, mutate
from tests.live_server import run_once, serve_live, start_campaign
from tests.repo_fixtures import Published

REASON = "bricks the CAN gateway on cold boot"


@pytest.fixture
def stale_server(published: Published, tmp_path: Path) -> Iterator[LiveServer]:
    """A live server that re-reads the repository only once an hour (and on campaign creation)."""
    with serve_live(published, tmp_path, repository_refresh=3600) as live:
        yield live


def yank(cli: Cli, live: LiveServer, version: str = "1.1") -> None:
    storage, keys = live.published.storage, live.published.keys
    result = cli(
        "release", "yank", "ecu-a", version, "--reason", REASON,
        "--storage", storage, "--keys", keys,
    )  # fmt: skip
    assert result.code == 0, result.stderr


def car_for(kind: str, cli: Cli, live: LiveServer, tmp_path: Path) -> Car:
    """A car on 1.0 (offered the delta from 1.0), or on an image of its own (offered the full)."""
    if kind == "delta":
        return provision(cli, live, tmp_path, "car-1")
    own = mutate(live.published.images["ecu-a/1.0"]["path"], tmp_path / "own.img", seed=9)
    return provision(cli, live, tmp_path, "car-1", factory=own, factory_version="0.9")


def vehicle(cli: Cli, car: Car) -> dict[str, Any]:
    result = cli("vehicle", "status", "--state-dir", car.state_dir, "--json")
    assert result.code == 0, result.stderr
    return dict(json.loads(result.stdout))


def assert_refused_and_stayed_put(
    cli: Cli, live: LiveServer, car: Car, run: Result, reason: str, campaign_id: str
) -> str:
    """The refusal contract of the vehicle; returns the reason the server stored."""
    slot_a = car.slot_a.read_bytes()
    assert run.code == 3, (run.code, run.stdout, run.stderr)
    assert run.stdout.startswith(f"refused: {reason}: "), run.stdout
    assert car.slot_b.read_bytes() == b"", "the inactive slot was written"
    after = vehicle(cli, car)
    assert after["state"] == "idle" and after["active_slot"] == "A", after
    assert after["slots"]["B"] is None and after["assignment"] is None, after
    assert after["last_result"]["status"] == "refused", after["last_result"]
    assert after["last_result"]["reason"] == reason, after["last_result"]
    assert after["pending_events"] == 0
    cache = car.state_dir / "cache"
    assert not cache.exists() or not any(cache.iterdir()), "the bundle was downloaded"
    with live.ctx.session() as session:
        failed = list(session.scalars(select(Event).filter_by(vehicle_id="car-1", type="failed")))
        membership = session.scalars(select(Membership).filter_by(vehicle_id="car-1")).one()
        assert len(failed) == 1, [e.reason for e in failed]
        assert failed[0].campaign_id == campaign_id
        assert membership.status == "failed"
        stored = failed[0].reason or ""
    assert stored.startswith(f"{reason}: "), stored
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 0 and boot.stdout.startswith("booted slot A"), boot.stdout
    assert car.slot_a.read_bytes() == slot_a
    return stored


@pytest.mark.parametrize("kind", ["delta", "full"])
def test_withdrawn_release_is_refused_from_a_stale_server(
    cli: Cli, stale_server: LiveServer, tmp_path: Path, kind: str
) -> None:
    car = car_for(kind, cli, stale_server, tmp_path)
    campaign = start_campaign(stale_server, "1.1")
    yank(cli, stale_server)
    run = run_once(cli, car)
    stored = assert_refused_and_stayed_put(cli, stale_server, car, run, "withdrawn", campaign)
    path = "ecu-a/1.1/delta-from-1.0.bundle" if kind == "delta" else "ecu-a/1.1/full.bundle"
    assert f"release 1.1 ({path}) was withdrawn at " in stored
    assert stored.endswith(f"Z: {REASON}"), stored
    # Not offered again: the failed membership is final.
    again = run_once(cli, car)
    assert again.code == 0 and again.stdout.startswith("nothing"), again


def test_a_malformed_withdrawal_marker_is_refused(
    cli: Cli, stale_server: LiveServer, tmp_path: Path
) -> None:
    """A marker the vehicle cannot read is no licence to install: it refuses (fail closed)."""
    car = car_for("delta", cli, stale_server, tmp_path)
    campaign = start_campaign(stale_server, "1.1")
    repo = ImageRepository.load(
        LocalStorage(stale_server.published.storage), KeyDirectory(stale_server.published.keys)
    )
    targets = repo.bump(repo.targets, "targets")
    delta = targets.signed.targets["ecu-a/1.1/delta-from-1.0.bundle"]
    delta.unrecognized_fields["custom"][YANKED_KEY] = "yes"  # genuinely signed, just malformed
    repo.sign(targets, "targets", repo.root.signed)
    repo.publish(targets=targets)
    run = run_once(cli, car)
    stored = assert_refused_and_stayed_put(
        cli, stale_server, car, run, "malformed_target", campaign
    )
    assert f"custom.{YANKED_KEY} must be" in stored, stored


def test_an_unwithdrawn_release_still_installs(
    cli: Cli, stale_server: LiveServer, tmp_path: Path
) -> None:
    """The harness itself causes no refusal: yanking 1.0 leaves the update to 1.1 alone."""
    car = car_for("delta", cli, stale_server, tmp_path)
    start_campaign(stale_server, "1.1")
    yank(cli, stale_server, "1.0")  # what the car runs: the delta from it stays valid
    run = run_once(cli, car)
    assert run.code == 0 and run.stdout.startswith("updated: installed 1.1 into slot B"), run


def bundle_target(custom_extra: dict[str, Any]) -> tuple[TargetFile, BundleInfo]:
    image = ImageRef("1.1", "a" * 64, 100)
    info = BundleInfo("ecu-a", "1.1", 2, "full", image)
    target = TargetFile(120, {"sha256": "b" * 64}, "ecu-a/1.1/full.bundle")
    target.unrecognized_fields["custom"] = {**info.to_custom(), **custom_extra}
    return target, info


def test_check_not_withdrawn() -> None:
    target, info = bundle_target({})
    check_not_withdrawn(target, info)  # not withdrawn: no refusal
    target, info = bundle_target({YANKED_KEY: {"reason": REASON, "at": "2024-05-01T12:00:00Z"}})
    with pytest.raises(Refused) as withdrawn:
        check_not_withdrawn(target, info)
    assert withdrawn.value.reason == "withdrawn"
    assert str(withdrawn.value) == (
        f"release 1.1 (ecu-a/1.1/full.bundle) was withdrawn at 2024-05-01T12:00:00Z: {REASON}"
    )
    target, info = bundle_target({YANKED_KEY: {"reason": "a\nb", "at": "2024-05-01T12:00:00Z"}})
    with pytest.raises(Refused) as malformed:
        check_not_withdrawn(target, info)
    assert malformed.value.reason == "malformed_target"

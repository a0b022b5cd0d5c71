"""Storage faults while a vehicle downloads a bundle, over real HTTP: the vehicle's repository
URL points at a fault-injecting proxy (``fault_proxy.py``) in front of moto's S3 server (the
rollout server reads S3 directly). The bundle GET answers 500s, resets the connection mid-body,
truncates the body, or corrupts it.

The vehicle retries with backoff (resuming from the bytes it has with Range requests) and
either installs exactly the released image into slot B (its sha256 is the release's), or
reports the download as interrupted/failed and stays on slot A — never a partially written or
unverified slot recorded as installed. After an interrupted turn, the next turn resumes.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from overdrive.server.context import ServerContext
from tests.conftest import Cli, make_image
from tests.faults.fault_proxy import FaultProxy, fault_proxy
from tests.faults.s3util import upload_tree
from tests.live_server import serve_live
from tests.repo_fixtures import Published
from tests.s3server import S3Env

pytestmark = pytest.mark.slow


@dataclass
class Fleet:
    """A rollout server reading the S3 repository directly, and the proxy vehicles fetch from."""

    url: str
    ctx: ServerContext
    operator: str
    enroll: str
    published: Published
    s3: S3Env
    proxy: FaultProxy

    @property
    def repo_url(self) -> str:  # the vehicle's view of the repository: through the proxy
        return f"{self.proxy.url}/{self.s3.bucket}/{self.s3.prefix}"


@pytest.fixture
def s3_fleet(published_template: Published, s3_env: S3Env, tmp_path: Path) -> Iterator[Fleet]:
    upload_tree(s3_env, published_template.storage)
    trusted = published_template.storage / "metadata" / "1.root.json"
    with (
        serve_live(
            published_template, tmp_path, storage_url=s3_env.url, trusted_root=trusted
        ) as live,
        fault_proxy(s3_env.endpoint) as proxy,
    ):
        yield Fleet(
            live.url, live.ctx, live.operator, live.enroll, published_template, s3_env, proxy
        )


def start_campaign(fleet: Fleet) -> str:
    def call(path: str, body: Any = None) -> Any:
        req = urllib.request.Request(
            f"{fleet.url}/api/v1{path}",
            data=json.dumps(body if body is not None else {}).encode(),
            method="POST",
            headers={
                "Authorization": f"Bearer {fleet.operator}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    campaign = call(
        "/campaigns", {"name": "t", "releases": {"ecu-a": "1.1"}, "policy": "immediate"}
    )
    call(f"/campaigns/{campaign['id']}/start")
    return str(campaign["id"])


@dataclass
class Car:
    state_dir: Path
    slot_a: Path
    slot_b: Path
    factory: bytes


def provision(cli: Cli, fleet: Fleet, tmp_path: Path, vehicle_id: str) -> Car:
    """A vehicle whose slot A holds a factory image of its own (version 0.9), so that the server
    assigns the full 1.1 bundle (~tens of KiB, several reads) rather than the tiny delta."""
    car_dir = tmp_path / vehicle_id
    car_dir.mkdir()
    slot_a, slot_b = car_dir / "slot-a.img", car_dir / "slot-b.img"
    make_image(slot_a, 100_000, seed=9)
    slot_b.write_bytes(b"")
    result = cli(
        "vehicle", "provision", "--state-dir", car_dir / "state", "--server", fleet.url,
        "--enroll-token", fleet.enroll, "--vehicle-id", vehicle_id, "--hardware-id", "ecu-a",
        "--slot-a", slot_a, "--slot-b", slot_b,
        "--trusted-root", fleet.published.storage / "metadata" / "1.root.json",
        "--director-root", fleet.published.director_root,
        "--repo-url", fleet.repo_url, "--factory-version", "0.9",
        "--factory-release-counter", "0", "--attr", "model=m1",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    # Download retries back off 1 s, 2 s, 4 s, 8 s by default; keep the attempts (5), make the
    # waits milliseconds.
    config = car_dir / "state" / "vehicle.toml"
    text = config.read_text()
    assert "download_backoff_s = 1.0" in text and "download_attempts = 5" in text
    config.write_text(text.replace("download_backoff_s = 1.0", "download_backoff_s = 0.01"))
    return Car(car_dir / "state", slot_a, slot_b, slot_a.read_bytes())


def status(cli: Cli, car: Car) -> dict[str, Any]:
    result = cli("vehicle", "status", "--state-dir", car.state_dir, "--json")
    assert result.code == 0, result.stderr
    return dict(json.loads(result.stdout))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_installed_release(cli: Cli, fleet: Fleet, car: Car) -> None:
    release = fleet.published.images["ecu-a/1.1"]
    after = status(cli, car)
    assert after["state"] == "installed", after
    assert after["slots"]["B"]["sha256"] == release["sha256"]
    assert sha256(car.slot_b) == release["sha256"]  # the bytes really are the release
    assert after["active_slot"] == "A"  # until the trial boot
    assert car.slot_a.read_bytes() == car.factory


def assert_still_on_slot_a(cli: Cli, car: Car, state: str) -> dict[str, Any]:
    """Nothing installed: slot B not recorded (so never booted), slot A untouched and active."""
    after = status(cli, car)
    assert after["state"] == state, after
    assert after["active_slot"] == "A" and after["slots"]["B"] is None, after
    assert after["boot"].startswith("A("), after  # the bootloader would boot A: no trial of B
    assert car.slot_a.read_bytes() == car.factory
    return after


BUNDLE = ".full.bundle"


def bundle_gets(fleet: Fleet) -> list[Any]:
    return fleet.proxy.requests("GET", BUNDLE)


@pytest.mark.parametrize(
    "faults",
    [
        ["status", "status"],  # 500, 500, then the bytes
        ["reset_mid_body"],  # connection reset after half the body: resume with Range
        ["truncate"],  # half the body, then a clean close: resume with Range
        ["truncate", "status", "reset_mid_body", "reset"],  # four failures; the 5th attempt
    ],
    ids=lambda faults: "+".join(faults),
)
def test_bundle_download_survives_faults(
    cli: Cli, s3_fleet: Fleet, tmp_path: Path, faults: list[str]
) -> None:
    car = provision(cli, s3_fleet, tmp_path, "car-1")
    start_campaign(s3_fleet)
    for fault in faults:  # one rule per fault, in order: each fires once, on the next GET
        s3_fleet.proxy.add(fault, method="GET", path_contains=BUNDLE, skip=0, times=1)
    # Rules fire in list order because each one matches until it has fired once.
    run = cli("vehicle", "run", "--state-dir", car.state_dir, "--once")
    assert run.code == 0, (run.stdout, run.stderr)
    assert run.stdout.startswith("updated: installed 1.1 into slot B"), run.stdout
    gets = bundle_gets(s3_fleet)
    assert [g.fault for g in gets] == [*faults, None]
    ranges = [g.headers.get("Range") for g in gets]
    if faults[0] in ("reset_mid_body", "truncate"):
        assert ranges[1] and ranges[1].startswith("bytes=") and ranges[1] != "bytes=0-", ranges
    assert_installed_release(cli, s3_fleet, car)


@pytest.mark.parametrize("fault", ["status", "reset", "reset_mid_body", "truncate"])
def test_bundle_download_gives_up_then_resumes(
    cli: Cli, s3_fleet: Fleet, tmp_path: Path, fault: str
) -> None:
    car = provision(cli, s3_fleet, tmp_path, "car-2")
    start_campaign(s3_fleet)
    rule = s3_fleet.proxy.add(fault, method="GET", path_contains=BUNDLE, times=None)
    run = cli("vehicle", "run", "--state-dir", car.state_dir, "--once")
    # exit 5: interrupted, try again later
    assert run.code == 5 and run.stdout.startswith("interrupted: download of "), run.stdout
    assert rule.fired == 5  # DownloadOptions.attempts
    assert_still_on_slot_a(cli, car, "downloading")
    s3_fleet.proxy.heal()
    resumed = cli("vehicle", "run", "--state-dir", car.state_dir, "--once")
    assert resumed.stdout.startswith("updated: installed 1.1 into slot B"), resumed.stdout
    assert_installed_release(cli, s3_fleet, car)
    if fault in ("reset_mid_body", "truncate"):  # the kept .part is resumed, not re-fetched
        assert bundle_gets(s3_fleet)[-1].headers.get("Range", "bytes=0-") != "bytes=0-"


def test_corrupted_bundle_is_never_installed(cli: Cli, s3_fleet: Fleet, tmp_path: Path) -> None:
    """Every transfer has its bytes flipped (same length): the hash check refuses them each
    time, the garbage is discarded, and the vehicle, after at most a few turns, reports the
    download as failed — staying on slot A throughout with nothing recorded in slot B."""
    car = provision(cli, s3_fleet, tmp_path, "car-3")
    start_campaign(s3_fleet)
    s3_fleet.proxy.add("corrupt", method="GET", path_contains=BUNDLE, times=None)
    for _turn in range(4):
        run = cli("vehicle", "run", "--state-dir", car.state_dir, "--once")
        assert not list((car.state_dir / "cache").glob("*.part"))  # the garbage was discarded
        if run.stdout.startswith("failed: "):
            break
        assert run.code == 5 and run.stdout.startswith("interrupted: "), run.stdout
        assert_still_on_slot_a(cli, car, "downloading")
    assert run.code == 3 and run.stdout.startswith("failed: download_failed: "), run.stdout
    assert "sha256" in run.stdout
    after = assert_still_on_slot_a(cli, car, "idle")
    assert after["last_result"]["status"] == "failed"


def test_one_corrupted_transfer_does_not_fail_the_campaign(
    cli: Cli, s3_fleet: Fleet, tmp_path: Path
) -> None:
    """BUG-11: a single corrupted transfer (a flaky CDN edge, a broken middlebox) makes the
    vehicle abandon the assignment and report "failed" — a final status that counts against
    the campaign's failure rate and can pause or abort a rollout — instead of retrying the
    download as it does after drops and 5xx."""
    car = provision(cli, s3_fleet, tmp_path, "car-4")
    start_campaign(s3_fleet)
    s3_fleet.proxy.add("corrupt", method="GET", path_contains=BUNDLE, times=1)
    outputs = [cli("vehicle", "run", "--state-dir", car.state_dir, "--once") for _ in range(2)]
    assert [o.code for o in outputs] == [5, 0], [o.stdout for o in outputs]
    assert outputs[-1].stdout.startswith("updated: installed 1.1 into slot B"), outputs[-1].stdout
    assert_installed_release(cli, s3_fleet, car)

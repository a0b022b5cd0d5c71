"""Freshness and time on the vehicle: a car parked past every expiry of its director and image
metadata comes back by itself, and expiry is judged by the director's attested time, not by the
vehicle's own clock (aktualizr#1185: cars stuck for good on expired metadata)."""

from __future__ import annotations

import datetime as real_datetime
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from tuf.ngclient._internal import trusted_metadata_set

from overdrive.server.campaigns import tick
from tests.conftest import Cli, make_image, mutate
from tests.live_server import provision, run_once, serve_live, start_campaign, vehicle_status
from tests.repo_fixtures import DIRECTOR_KEYS, Published, _image_ref

#: Everything online expires this fast (seconds); the car is parked for longer.
SHORT = 6


@pytest.fixture
def short_lived(cli: Cli, tmp_path: Path, published_template: Published) -> Published:
    """A repository and a director whose online metadata expires within :data:`SHORT` seconds."""
    keys = tmp_path / "keys"
    shutil.copytree(published_template.keys, keys)
    storage, director = tmp_path / "repo", tmp_path / "director"
    expires = f"timestamp={SHORT}s,snapshot={SHORT}s"
    assert cli("repo", "init", "--storage", storage, "--keys", keys, "--expires", expires).code == 0
    director_expiry = f"targets={SHORT}s,snapshot={SHORT}s,timestamp={SHORT}s"
    result = cli(
        "director", "init", "--storage", director, "--keys", keys, "--expires", director_expiry
    )
    assert result.code == 0, result.stderr
    a10 = make_image(tmp_path / "a10.img", 120_000, seed=1)
    a11 = mutate(a10, tmp_path / "a11.img", seed=2)
    a12 = mutate(a11, tmp_path / "a12.img", seed=3)
    for image, version in ((a10, "1.0"), (a11, "1.1"), (a12, "1.2")):
        added = cli(
            "release", "add", image, "--hardware-id", "ecu-a", "--version", version,
            "--storage", storage, "--keys", keys, "--quiet", "--chunk-size", "64KiB",
        )  # fmt: skip
        assert added.code == 0, added.stderr
    images = {
        "ecu-a/1.0": _image_ref(a10, "1.0", 1),
        "ecu-a/1.1": _image_ref(a11, "1.1", 2),
        "ecu-a/1.2": _image_ref(a12, "1.2", 3),
    }
    assert set(DIRECTOR_KEYS) <= {p.name for p in keys.iterdir()}
    return Published(storage, keys, director, images)


def update_and_commit(cli: Cli, car: Any, version: str) -> None:
    result = run_once(cli, car)
    assert result.code == 0 and result.stdout.startswith(f"updated: installed {version}"), result
    boot = cli("vehicle", "boot", "--state-dir", car.state_dir)
    assert boot.code == 0 and f"committed {version}" in boot.stdout, boot


def test_a_car_parked_past_every_expiry_updates_when_it_comes_back(
    cli: Cli, short_lived: Published, tmp_path: Path
) -> None:
    with serve_live(short_lived, tmp_path, repository_refresh=1) as live:
        car = provision(cli, live, tmp_path, "car-1")
        start_campaign(live, "1.1")
        update_and_commit(cli, car, "1.1")
        director_dir, image_dir = car.state_dir / "director", car.state_dir / "tuf"
        for role in ("root", "timestamp", "snapshot", "targets"):
            assert (director_dir / f"{role}.json").is_file()  # what was trusted, inspectable
        stored = json.loads((director_dir / "timestamp.json").read_bytes())
        tick(live.ctx)  # the first campaign completes

        time.sleep(SHORT + 1)  # parked: every online role of both repositories has expired
        for directory in (director_dir, image_dir):
            timestamp = json.loads((directory / "timestamp.json").read_bytes())
            assert timestamp["signed"]["expires"] < _utc_now()

        # The release engineers' cron keeps the image repository's timestamp fresh; the
        # director re-signs the car's chain itself when the car asks.
        refreshed = cli(
            "repo", "refresh", "--storage", short_lived.storage, "--keys", short_lived.keys
        )
        assert refreshed.code == 0, refreshed.stderr
        start_campaign(live, "1.2")
        update_and_commit(cli, car, "1.2")
        newer = json.loads((director_dir / "timestamp.json").read_bytes())
        assert newer["signed"]["version"] > stored["signed"]["version"]
        assert vehicle_status(cli, car.state_dir)["slots"]["B"]["version"] == "1.1"


def _utc_now() -> str:
    return real_datetime.datetime.now(real_datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _FarFuture(real_datetime.datetime):
    """A system clock that says 2099: every metadata file looks expired by it."""

    @classmethod
    def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
        return real_datetime.datetime(2099, 1, 1, tzinfo=tz or real_datetime.UTC)


def test_expiry_is_judged_by_the_attested_time_not_the_vehicle_clock(
    cli: Cli, live_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    car = provision(cli, live_server, tmp_path, "car-1")
    start_campaign(live_server)

    class _Module:
        datetime = _FarFuture
        timezone = real_datetime.timezone

    # The vehicle's clock is wrong (an RTC far in the future): python-tuf's own reference
    # time would find everything expired.
    monkeypatch.setattr(trusted_metadata_set, "datetime", _Module)
    result = run_once(cli, car)
    assert result.code == 0 and result.stdout.startswith("updated: installed 1.1"), result
    state = json.loads((car.state_dir / "state.json").read_bytes())
    trusted = real_datetime.datetime.fromisoformat(state["trusted_time"].replace("Z", "+00:00"))
    assert abs((trusted - real_datetime.datetime.now(real_datetime.UTC)).total_seconds()) < 120

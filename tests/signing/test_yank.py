"""Withdrawing a release (``overdrive release yank``): the signed targets change through the CLI on
a real repository directory, what the release index makes of it, and a real rollout server (over
loopback HTTP) that stops offering the release and refuses campaigns for it."""

from __future__ import annotations

import json
import shutil
import urllib.error
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, TargetFile

from overdrive.releases import ReleaseIndex
from overdrive.server.campaigns import tick
from overdrive.storage import LocalStorage
from overdrive.tuf_layout import YANKED_KEY, LayoutError, Yank
from tests.conftest import Cli, Result, Workspace, generate_keys, make_image, mutate
from tests.live_server import api, provision, run_once, serve_live, start_campaign
from tests.repo_fixtures import Published

REASON = "bricks the CAN gateway on cold boot"


def snapshot_of(storage_dir: Path) -> dict[str, bytes]:
    """Every stored object, to prove a refused command changed nothing."""
    storage = LocalStorage(storage_dir)
    return {key: storage.get_bytes(key) for key in storage.list()}


def trusted_root(ws: Workspace) -> Path:
    return ws.storage / "metadata" / "1.root.json"


def assert_one_error(result: Result, *needles: str) -> None:
    """Exit code 1 and exactly one ``error:`` line on stderr that names every needle."""
    assert result.code == 1, (result.stdout, result.stderr)
    assert len(result.error_lines) == 1 and result.error_lines[0].startswith("error: "), result
    for needle in needles:
        assert needle in result.error_lines[0], result.error_lines[0]


def add(
    cli: Cli, ws: Workspace, image: Path, version: str, *extra: str, hw: str = "ecu-a"
) -> Result:
    return cli(
        "release", "add", image, "--hardware-id", hw, "--version", version, *ws.repo_args,
        "--chunk-size", "64KiB", "--quiet", *extra,
    )  # fmt: skip


def yank(cli: Cli, storage: Path, keys: Path, hw: str, version: str, *extra: str) -> Result:
    return cli(
        "release", "yank", hw, version, "--storage", storage, "--keys", keys, *extra
    )  # fmt: skip


def targets_of(storage: Path) -> dict[str, TargetFile]:
    """The newest published targets (as a vehicle would end up trusting them)."""
    versions = sorted(int(p.name.split(".")[0]) for p in storage.glob("metadata/*.targets.json"))
    md: Metadata[Any] = Metadata.from_file(str(storage / f"metadata/{versions[-1]}.targets.json"))
    return dict(md.signed.targets)


def status_json(cli: Cli, storage: Path) -> dict[str, Any]:
    result = cli("repo", "status", "--storage", storage, "--json")
    assert result.code == 0, result.stderr
    return dict(json.loads(result.stdout))


@pytest.fixture
def three(repo: Workspace, cli: Cli, tmp_path: Path) -> Workspace:
    """ecu-a 1.0, 1.1 (+ delta from 1.0), 1.2 (+ deltas from 1.0 and 1.1); ecu-b 1.1."""
    a10 = make_image(tmp_path / "a10.img", 40_000, seed=1)
    a11 = mutate(a10, tmp_path / "a11.img", seed=2)
    a12 = mutate(a11, tmp_path / "a12.img", seed=3)
    for image, version, extra in (
        (a10, "1.0", ()),
        (a11, "1.1", ("--delta-from", "1.0")),
        (a12, "1.2", ("--delta-from-recent", "2")),
    ):
        result = add(cli, repo, image, version, *extra)
        assert result.code == 0, result.stderr
    b11 = make_image(tmp_path / "b11.img", 20_000, seed=4)
    assert add(cli, repo, b11, "1.1", hw="ecu-b").code == 0
    return repo


# ----------------------------------------------------------------------------- the signed change


def test_yank_marks_the_release_and_publishes_signed_metadata(three: Workspace, cli: Cli) -> None:
    before = status_json(cli, three.storage)["roles"]
    started = datetime.now(UTC).replace(microsecond=0)
    result = yank(cli, three.storage, three.keys, "ecu-a", "1.1", "--reason", f"  {REASON} ")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"withdrew ecu-a 1.1: {REASON}"
    assert "ecu-a/1.1/full.bundle" in result.stdout
    assert "ecu-a/1.1/delta-from-1.0.bundle" in result.stdout

    targets = targets_of(three.storage)
    marked = {path for path, t in targets.items() if YANKED_KEY in (t.custom or {})}
    # The full bundle and the delta *to* 1.1; not the delta *from* 1.1 (to 1.2), not ecu-b 1.1.
    assert marked == {"ecu-a/1.1/full.bundle", "ecu-a/1.1/delta-from-1.0.bundle"}
    yanked = Yank.from_custom(targets["ecu-a/1.1/full.bundle"].custom)
    assert yanked is not None and yanked.reason == REASON
    at = datetime.fromisoformat(yanked.at)
    assert yanked.at.endswith("Z") and started <= at <= datetime.now(UTC)
    assert "overdrive" in targets["ecu-a/1.1/full.bundle"].custom  # the bundle info is kept

    after = status_json(cli, three.storage)
    versions = {role: info["version"] for role, info in after["roles"].items()}
    assert versions["root"] == before["root"]["version"]
    for role in ("targets", "snapshot", "timestamp"):
        assert versions[role] == before[role]["version"] + 1, role
    # Vehicles still verify the whole repository (the bundle files are untouched).
    verify = cli("repo", "verify", "--storage", three.storage, "--root", trusted_root(three))
    assert verify.code == 0, verify.stderr
    assert "PASS:" in verify.stdout and "7 target(s) verified" in verify.stdout, verify.stdout


def test_status_shows_the_withdrawal(three: Workspace, cli: Cli) -> None:
    assert yank(cli, three.storage, three.keys, "ecu-a", "1.1", "--reason", REASON).code == 0
    data = status_json(cli, three.storage)
    by_version = {v["version"]: v for v in data["hardware"]["ecu-a"]}
    assert by_version["1.1"]["yanked"]["reason"] == REASON
    assert by_version["1.0"]["yanked"] is None and by_version["1.2"]["yanked"] is None
    assert all(b["yanked"] for b in by_version["1.1"]["bundles"])
    assert data["hardware"]["ecu-b"][0]["yanked"] is None
    text = cli("repo", "status", "--storage", three.storage)
    assert text.code == 0, text.stderr
    lines = text.stdout.splitlines()
    at = lines.index(next(line for line in lines if line.strip().startswith("1.1 ")))
    assert "WITHDRAWN since " in lines[at + 1] and lines[at + 1].endswith(f": {REASON}")
    assert sum("WITHDRAWN" in line for line in lines) == 1


def test_yanking_again_changes_nothing(three: Workspace, cli: Cli) -> None:
    assert yank(cli, three.storage, three.keys, "ecu-a", "1.1", "--reason", REASON).code == 0
    before = snapshot_of(three.storage)
    again = yank(cli, three.storage, three.keys, "ecu-a", "1.1", "--reason", "another reason")
    assert again.code == 0, again.stderr
    assert again.stdout.startswith("ecu-a 1.1 is already withdrawn (since ")
    assert f": {REASON}); nothing to do" in again.stdout
    assert snapshot_of(three.storage) == before


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("ecu-a", "9.9", "--reason", REASON), ("no release 9.9 of hardware id ecu-a", "1.0, 1.1")),
        (("ecu-z", "1.0", "--reason", REASON), ("no release 1.0 of hardware id ecu-z", "none")),
        (("ecu-a", "1.1", "--reason", ""), ("--reason", "must not be empty")),
        (("ecu-a", "1.1", "--reason", "   "), ("--reason", "must not be empty")),
        (("ecu-a", "1.1", "--reason", "first\nsecond"), ("--reason", "one line")),
        (("ecu-a", "1.1", "--reason", "tab\there"), ("--reason", "one line")),
        (("ecu-a", "1.1", "--reason", "x" * 501), ("--reason", "at most 500")),
        (("../etc", "1.1", "--reason", REASON), ("invalid hardware id",)),
        (("ecu-a", "1/1", "--reason", REASON), ("invalid version",)),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    three: Workspace, cli: Cli, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    before = snapshot_of(three.storage)
    assert_one_error(yank(cli, three.storage, three.keys, *args), *needles)
    assert snapshot_of(three.storage) == before


def test_reason_is_required(three: Workspace, cli: Cli) -> None:
    result = yank(cli, three.storage, three.keys, "ecu-a", "1.1")
    assert result.code == 2 and "Missing option '--reason'" in result.stderr
    assert "Traceback" not in result.stderr


def test_needs_the_targets_key(three: Workspace, cli: Cli, tmp_path: Path) -> None:
    online = tmp_path / "online-only"
    online.mkdir()
    for name in ("snapshot", "timestamp"):
        for suffix in ("", ".pub"):
            shutil.copy(three.keys / f"{name}{suffix}", online)
    before = snapshot_of(three.storage)
    assert_one_error(
        yank(cli, three.storage, online, "ecu-a", "1.1", "--reason", REASON),
        "targets needs 1 signature(s)",
        "--stage-only",
    )
    assert snapshot_of(three.storage) == before


def test_threshold_signing_of_a_withdrawal(workspace: Workspace, cli: Cli, tmp_path: Path) -> None:
    """targets needs alice and bob: alice stages the withdrawal, bob signs, anyone publishes."""
    ws = workspace
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    generate_keys(cli, alice, "alice")
    generate_keys(cli, bob, "bob")
    for src in (alice, bob):  # the key ceremony: everyone's key at hand once
        shutil.copy(src / src.name, ws.keys)
        shutil.copy(src / f"{src.name}.pub", ws.keys)
    init = cli(
        "repo", "init", *ws.repo_args, "--targets-keys", "alice,bob", "--targets-threshold", "2"
    )
    assert init.code == 0, init.stderr
    image = make_image(tmp_path / "img", 20_000)
    assert add(cli, ws, image, "1.0").code == 0
    for src in (alice, bob):
        (ws.keys / src.name).unlink()
    shutil.copy(bob / "bob.pub", alice)
    for online in ("snapshot", "timestamp"):
        for suffix in ("", ".pub"):
            shutil.copy(ws.keys / f"{online}{suffix}", alice)

    # Alice holds 1 of the 2 targets keys: the withdrawal is staged for Bob, not refused.
    staged = yank(cli, ws.storage, alice, "ecu-a", "1.0", "--reason", REASON)
    assert staged.code == 0, staged.stderr
    assert staged.stdout.startswith(f"staged the withdrawal of ecu-a 1.0: {REASON}")
    assert "`overdrive repo sign --role targets --keys DIR`" in staged.stdout
    status = status_json(cli, ws.storage)
    assert status["staged"] == ["targets"]
    assert status["hardware"]["ecu-a"][0]["yanked"] is None  # not yet published
    assert_one_error(
        yank(cli, ws.storage, alice, "ecu-a", "1.0", "--reason", REASON, "--stage-only"),
        "withdrawal of ecu-a 1.0 is already staged",
        "repo sign",
    )
    signed = cli("repo", "sign", "--role", "targets", "--storage", ws.storage, "--keys", bob)
    assert signed.code == 0 and "threshold met" in signed.stdout, signed
    published = cli("repo", "publish", "--storage", ws.storage, "--keys", alice)
    assert published.code == 0, published.stderr
    after = status_json(cli, ws.storage)
    assert after["staged"] == [] and after["hardware"]["ecu-a"][0]["yanked"]["reason"] == REASON
    verify = cli("repo", "verify", "--storage", ws.storage, "--root", trusted_root(ws))
    assert verify.code == 0 and "PASS:" in verify.stdout


# ----------------------------------------------------------------------------- the release index


def test_index_keeps_withdrawn_releases_but_get_refuses_them(three: Workspace, cli: Cli) -> None:
    assert yank(cli, three.storage, three.keys, "ecu-a", "1.1", "--reason", REASON).code == 0
    index = ReleaseIndex(targets_of(three.storage))
    found = index.find("ecu-a", "1.1")
    assert found is not None and found.yanked == REASON
    assert found.full.yanked == REASON and all(d.yanked for ds in found.deltas.values() for d in ds)
    with pytest.raises(
        LayoutError, match=f"^release 1.1 of hardware id ecu-a was withdrawn: {REASON}$"
    ):
        index.get("ecu-a", "1.1")
    assert index.get("ecu-a", "1.2").yanked is None  # its delta *from* 1.1 is still offered
    assert index.get("ecu-b", "1.1").yanked is None
    assert index.find("ecu-a", "9.9") is None
    with pytest.raises(LayoutError, match="not in the signed repository"):
        index.get("ecu-a", "9.9")


MALFORMED: list[Any] = [
    "yes",
    None,
    [],
    {},
    {"reason": REASON},
    {"at": "2024-05-01T12:00:00Z"},
    {"reason": 7, "at": "2024-05-01T12:00:00Z"},
    {"reason": "", "at": "2024-05-01T12:00:00Z"},
    {"reason": "two\nlines", "at": "2024-05-01T12:00:00Z"},
    {"reason": REASON, "at": "yesterday"},
    {"reason": REASON, "at": "2024-05-01T12:00:00"},  # no offset: not a UTC time
    {"reason": REASON, "at": "2024-05-01T12:00:00+02:00"},
    {"reason": REASON, "at": 1714564800},
]


@pytest.mark.parametrize("value", MALFORMED, ids=repr)
def test_a_malformed_marker_withdraws_without_crashing(three: Workspace, value: Any) -> None:
    targets = targets_of(three.storage)
    for path in ("ecu-a/1.1/full.bundle", "ecu-a/1.1/delta-from-1.0.bundle"):
        custom = dict(targets[path].custom)
        custom[YANKED_KEY] = value
        targets[path].unrecognized_fields["custom"] = custom
    with pytest.raises(LayoutError):
        Yank.from_custom(targets["ecu-a/1.1/full.bundle"].custom)
    index = ReleaseIndex(targets)  # does not raise
    found = index.find("ecu-a", "1.1")
    assert found is not None and found.yanked is not None
    assert found.yanked.startswith("malformed withdrawal marker")
    with pytest.raises(LayoutError, match="was withdrawn: malformed withdrawal marker"):
        index.get("ecu-a", "1.1")
    assert index.get("ecu-a", "1.0").yanked is None


def test_a_malformed_marker_is_repaired_by_yanking(three: Workspace, cli: Cli) -> None:
    """``repo status`` shows it as withdrawn; yanking writes a proper marker over it."""
    from overdrive.keys import KeyDirectory
    from overdrive.signing.repository import ImageRepository

    repo = ImageRepository.load(LocalStorage(three.storage), KeyDirectory(three.keys))
    targets = repo.bump(repo.targets, "targets")
    targets.signed.targets["ecu-a/1.1/full.bundle"].unrecognized_fields["custom"][YANKED_KEY] = 1
    repo.sign(targets, "targets", repo.root.signed)
    repo.publish(targets=targets)
    status = status_json(cli, three.storage)
    version = next(v for v in status["hardware"]["ecu-a"] if v["version"] == "1.1")
    assert version["yanked"]["reason"].startswith("malformed withdrawal marker")
    assert version["yanked"]["at"] is None
    fixed = yank(cli, three.storage, three.keys, "ecu-a", "1.1", "--reason", REASON)
    assert fixed.code == 0 and fixed.stdout.startswith("withdrew"), fixed
    index = ReleaseIndex(targets_of(three.storage))
    found = index.find("ecu-a", "1.1")
    assert found is not None and found.yanked == REASON


def test_yank_marker_roundtrip() -> None:
    stamp = datetime(2024, 5, 1, 12, 0, tzinfo=UTC) + timedelta(seconds=1)
    yank_ = Yank(REASON, stamp.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert Yank.from_custom({YANKED_KEY: yank_.to_custom()}) == yank_
    assert Yank.from_custom({"overdrive": {}}) is None
    assert Yank.from_custom(None) is None


# ----------------------------------------------------------------------------- a real server


def api_error(live: Any, method: str, path: str, body: Any) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as caught:
        api(live, method, path, body)
    return caught.value.code, json.loads(caught.value.read())["error"]["message"]


def test_server_refuses_campaigns_and_stops_offering(
    cli: Cli, published: Published, tmp_path: Path
) -> None:
    with serve_live(published, tmp_path) as live:
        car = provision(cli, live, tmp_path, "car-1")
        running = start_campaign(live, "1.1")  # running before the withdrawal
        result = yank(cli, published.storage, published.keys, "ecu-a", "1.1", "--reason", REASON)
        assert result.code == 0, result.stderr
        live.ctx.releases.index(force=True)  # the server's next refresh of the repository

        # The evaluator pauses the running campaign, with the withdrawal's reason, by policy.
        assert tick(live.ctx) == {running: "pause"}
        paused = api(live, "GET", f"/campaigns/{running}")
        assert paused["state"] == "paused"
        assert paused["reason"] == (
            f"release 1.1 of hardware id ecu-a was withdrawn from the image repository: {REASON}"
        )
        history = api(live, "GET", f"/campaigns/{running}/history")["items"]
        assert (history[-1]["action"], history[-1]["actor"]) == ("campaign.pause", "policy")
        resumed = api(live, "POST", f"/campaigns/{running}/resume")
        assert resumed["state"] == "running"
        assert tick(live.ctx) == {running: "pause"}  # resuming does not bring it back

        # The running campaign's vehicle is offered nothing.
        run = run_once(cli, car)
        assert run.code == 0 and run.stdout.startswith("nothing"), run
        assert car.slot_b.read_bytes() == b""

        # A new campaign for the withdrawn release is refused, naming the reason.
        body = {"name": "again", "releases": {"ecu-a": "1.1"}, "policy": "immediate"}
        code, message = api_error(live, "POST", "/campaigns", body)
        assert code == 400
        assert message == f"release 1.1 of hardware id ecu-a was withdrawn: {REASON}"
        # Other releases are unaffected.
        ok = api(live, "POST", "/campaigns", {**body, "releases": {"ecu-b": "1.0"}})
        assert ok["state"] == "draft"

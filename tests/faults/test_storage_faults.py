"""Storage faults while publishing, over real HTTP: a fault-injecting proxy
(``fault_proxy.py``) between ``overdrive release add … --storage s3://…`` and moto's S3 server
(``AWS_ENDPOINT_URL`` points at the proxy), injecting 500s and connection resets into PUTs.

* a *transient* fault on one of the publish's PUTs (500, reset before the request reaches S3,
  reset after S3 applied it) is absorbed by botocore's retries: the release is published;
* a *persistent* fault from the k-th PUT on, for every k (500 / reset): the command exits 1
  with exactly one ``error:`` line, the published repository still verifies from the trusted root
  (``overdrive repo verify``, i.e. ngclient) and shows the old targets only, and re-running the
  same command once storage is back publishes the release;
* the commit point itself (timestamp.json applied, answer lost): the command fails, the
  repository is consistent, and the re-run is expected to succeed (BUG-10: it does not).

Faults while vehicles download bundles are in ``test_download_faults.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Cli, Result, generate_keys, make_image, mutate, run_cli
from tests.faults.fault_proxy import fault_proxy
from tests.faults.s3util import upload_tree
from tests.s3server import S3Env

pytestmark = pytest.mark.slow

#: A release of 1.1 with a delta from 1.0 writes 5 objects: two bundles, then targets,
#: snapshot and timestamp.json (last: what makes the release visible).
PUBLISH_PUTS = 5


@dataclass(frozen=True)
class Pristine:
    """Keys and a local repository with release ecu 1.0, built once per module."""

    keys: Path
    storage: Path
    v2: Path  # the 1.1 image the tests publish


@dataclass
class S3Repo:
    pristine: Pristine
    s3: S3Env

    @property
    def args(self) -> list[str]:
        return ["--storage", self.s3.url, "--keys", str(self.pristine.keys)]

    @property
    def trusted_root(self) -> Path:
        return self.pristine.storage / "metadata" / "1.root.json"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    root = tmp_path_factory.mktemp("pristine")
    keys, storage = root / "keys", root / "repo"
    generate_keys(run_cli, keys, "root", "targets", "snapshot", "timestamp")
    env = {"OVERDRIVE_CACHE_DIR": str(root / "cache")}
    assert run_cli("repo", "init", "--storage", storage, "--keys", keys, env=env).code == 0
    v1 = make_image(root / "v1", 60_000, seed=1)
    added = run_cli(
        "release", "add", v1, "--hardware-id", "ecu", "--version", "1.0",
        "--storage", storage, "--keys", keys, "--quiet", env=env,
    )  # fmt: skip
    assert added.code == 0, added.stderr
    return Pristine(keys, storage, mutate(v1, root / "v2", seed=2))


@pytest.fixture
def s3_repo(
    pristine: Pristine, s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> S3Repo:
    """A fresh bucket (straight on moto) holding the pristine repository: 1.0 is published,
    1.1 is the release the tests add."""
    monkeypatch.setenv("OVERDRIVE_CACHE_DIR", str(tmp_path / "cache"))
    upload_tree(s3_env, pristine.storage)
    return S3Repo(pristine, s3_env)


def release_v2(cli: Cli, repo: S3Repo) -> Result:
    return cli(
        "release",
        "add",
        repo.pristine.v2,
        "--hardware-id",
        "ecu",
        "--version",
        "1.1",
        "--delta-from",
        "1.0",
        *repo.args,
        "--quiet",
    )


def verified_targets(cli: Cli, repo: S3Repo) -> set[str]:
    """What a fresh ngclient trusting root v1 sees (``overdrive repo verify``, straight on S3)."""
    result = cli(
        "repo",
        "verify",
        "--storage",
        repo.s3.url,
        "--root",
        repo.trusted_root,
        env={"AWS_ENDPOINT_URL": repo.s3.endpoint},
    )
    assert result.code == 0, result.stderr
    return {line.split()[1] for line in result.stdout.splitlines() if line.startswith("  ok  ")}


OLD = {"ecu/1.0/full.bundle"}
NEW = OLD | {"ecu/1.1/full.bundle", "ecu/1.1/delta-from-1.0.bundle"}


def test_publish_writes_what_the_fault_tests_expect(
    s3_repo: S3Repo, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fault_proxy(s3_repo.s3.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        result = release_v2(cli, s3_repo)
        puts = [r.path.rsplit("/", 1)[-1] for r in proxy.requests("PUT")]
    assert result.code == 0, result.stderr
    assert len(puts) == PUBLISH_PUTS and puts[-1] == "timestamp.json", puts
    assert verified_targets(cli, s3_repo) == NEW


@pytest.mark.parametrize(
    ("fault", "k"),
    [
        ("status", 0),  # a bundle upload
        ("reset", 2),  # targets metadata
        ("reset_after_upstream", PUBLISH_PUTS - 1),  # timestamp.json written, answer lost
        ("status", PUBLISH_PUTS - 1),
    ],
)
def test_transient_put_fault_is_retried(
    s3_repo: S3Repo, cli: Cli, monkeypatch: pytest.MonkeyPatch, fault: str, k: int
) -> None:
    with fault_proxy(s3_repo.s3.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        rule = proxy.add(fault, method="PUT", skip=k, times=1)
        result = release_v2(cli, s3_repo)
    assert rule.fired == 1
    assert result.code == 0, result.stderr
    assert verified_targets(cli, s3_repo) == NEW


@pytest.mark.parametrize("k", range(PUBLISH_PUTS))
@pytest.mark.parametrize("fault", ["status", "reset"])
def test_persistent_put_fault_leaves_repository_intact_and_is_retryable(
    s3_repo: S3Repo, cli: Cli, monkeypatch: pytest.MonkeyPatch, fault: str, k: int
) -> None:
    with fault_proxy(s3_repo.s3.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # a retry happens; keeps the test quick
        rule = proxy.add(fault, method="PUT", skip=k, times=None)
        failed = release_v2(cli, s3_repo)
        assert rule.fired == 2, proxy.requests("PUT")  # the PUT and botocore's retry
        assert failed.code == 1, (failed.stdout, failed.stderr)
        assert len(failed.error_lines) == 1 and failed.error_lines[0].startswith("error: "), (
            failed.stderr
        )
        assert verified_targets(cli, s3_repo) == OLD
        proxy.heal()
        again = release_v2(cli, s3_repo)
    assert again.code == 0, again.stderr
    assert verified_targets(cli, s3_repo) == NEW


def test_ambiguous_commit_failure_is_retryable(
    request: pytest.FixtureRequest, s3_repo: S3Repo, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PUT of timestamp.json reaches S3 but its answer is lost (every retry too): the
    command must fail (it cannot know), the repository is consistent (old or new), and
    re-running the same command must then succeed.

    BUG-10: the re-run fails with "version 1.1 of hardware id ecu already exists", although the
    published 1.1 is exactly the image being added: an interrupted publish is not retryable
    whenever the interruption hits the commit point."""
    with fault_proxy(s3_repo.s3.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        proxy.add("reset_after_upstream", method="PUT", path_contains="timestamp.json", times=None)
        failed = release_v2(cli, s3_repo)
        assert failed.code == 1 and len(failed.error_lines) == 1, failed.stderr
        assert verified_targets(cli, s3_repo) in (OLD, NEW)
        proxy.heal()
        again = release_v2(cli, s3_repo)
    assert again.code == 0, again.stderr
    assert verified_targets(cli, s3_repo) == NEW

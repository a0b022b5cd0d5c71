"""``overdrive vehicle tuf-client``: the TUF conformance client-under-test protocol, against a
repository we publish (served over real HTTP) — the same TUF layer the vehicle uses."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.repo_fixtures import Published


@pytest.fixture
def served(published: Published) -> Iterator[str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(published.storage))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_init_refresh_download(cli: Cli, served: str, published: Published, tmp_path: Path) -> None:
    meta, targets = tmp_path / "meta", tmp_path / "targets"
    base = ["vehicle", "tuf-client", "--metadata-dir", meta]
    assert cli(*base, "init", published.storage / "metadata" / "1.root.json").code == 0
    assert (meta / "root.json").is_file()
    url = ["--metadata-url", f"{served}/metadata"]
    refreshed = cli(*base, *url, "refresh")
    assert refreshed.code == 0, refreshed.stderr
    for role in ("timestamp", "snapshot", "targets"):
        assert (meta / f"{role}.json").is_file()  # plain, unversioned names
    names = ["ecu-a/1.1/full.bundle", "ecu-b/1.0/full.bundle"]
    download = [*base, *url, "--target-base-url", f"{served}/targets", "--target-dir", targets]
    for name in names:
        download += ["--target-name", name]
    result = cli(*download, "download")
    assert result.code == 0, result.stderr
    assert len(list(targets.iterdir())) == 2
    assert cli(*download, "download").code == 0  # cached: nothing fetched again

    missing = cli(
        *base,
        *url,
        "--target-base-url",
        f"{served}/targets",
        "--target-dir",
        targets,
        "--target-name",
        "nope",
        "download",
    )
    assert missing.code == 1 and "not in the repository" in missing.stderr
    # A tampered target fails verification: exit 1.
    stored = next((published.storage / "targets" / "ecu-a" / "1.0").glob("*.full.bundle"))
    stored.write_bytes(b"x" * stored.stat().st_size)
    tampered = cli(
        *base,
        *url,
        "--target-base-url",
        f"{served}/targets",
        "--target-dir",
        tmp_path / "t2",
        "--target-name",
        "ecu-a/1.0/full.bundle",
        "download",
    )
    assert tampered.code == 1


def test_refresh_fails_on_bad_metadata(
    cli: Cli, served: str, published: Published, tmp_path: Path
) -> None:
    meta = tmp_path / "meta"
    base = ["vehicle", "tuf-client", "--metadata-dir", meta]
    assert cli(*base, "init", published.storage / "metadata" / "1.root.json").code == 0
    (published.storage / "metadata" / "timestamp.json").write_text("{}")
    result = cli(*base, "--metadata-url", f"{served}/metadata", "refresh")
    assert result.code == 1 and result.stderr.startswith("error: refresh failed")
    assert cli(*base, "refresh").code == 1  # no --metadata-url

"""``overdrive vehicle tuf-client``: the vehicle's own TUF layer behind the public TUF conformance
suite's client-under-test protocol (theupdateframework/tuf-conformance, ``CLIENT-CLI.md``).

It goes through :func:`overdrive.client.trust.make_updater`, the same code path the vehicle uses, so the
conformance suite tests what runs in the car. Exit codes follow the protocol: 0 on full success,
1 on any failure (with one line on stderr).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote

import click
from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.ngclient import Updater

from overdrive.client.trust import make_updater


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@click.group("tuf-client", hidden=True)
@click.option("--metadata-dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--metadata-url", default=None)
@click.option("--target-name", "target_names", multiple=True)
@click.option("--target-base-url", default=None)
@click.option("--target-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.pass_context
def tuf_client(
    ctx: click.Context,
    metadata_dir: Path,
    metadata_url: str | None,
    target_names: tuple[str, ...],
    target_base_url: str | None,
    target_dir: Path | None,
) -> None:
    """TUF conformance client-under-test protocol (init, refresh, download)."""
    ctx.obj = {
        "metadata_dir": metadata_dir,
        "metadata_url": metadata_url,
        "target_names": target_names,
        "target_base_url": target_base_url,
        "target_dir": target_dir,
    }


@tuf_client.command("init")
@click.argument("trusted_root", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def init(obj: dict[str, object], trusted_root: Path) -> None:
    """Trust TRUSTED_ROOT (copied into the metadata directory; no network)."""
    metadata_dir = obj["metadata_dir"]
    assert isinstance(metadata_dir, Path)
    try:
        metadata_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trusted_root, metadata_dir / "root.json")
    except OSError as e:
        _fail(f"cannot initialise {metadata_dir}: {e}")


def _refreshed(
    obj: dict[str, object], target_dir: Path | None = None, target_url: str | None = None
) -> Updater:
    metadata_dir, metadata_url = obj["metadata_dir"], obj["metadata_url"]
    if not isinstance(metadata_url, str):
        _fail("--metadata-url is required")
    assert isinstance(metadata_dir, Path)
    try:
        updater = make_updater(metadata_dir, metadata_url.rstrip("/") + "/", target_dir, target_url)
        updater.refresh()
    except (OSError, RepositoryError, DownloadError, ValueError) as e:
        _fail(f"refresh failed: {type(e).__name__}: {e}")
    return updater


@tuf_client.command("refresh")
@click.pass_obj
def refresh(obj: dict[str, object]) -> None:
    """Run the TUF client workflow for the top-level metadata."""
    _refreshed(obj)


@tuf_client.command("download")
@click.pass_obj
def download(obj: dict[str, object]) -> None:
    """Refresh, then download and verify each --target-name into --target-dir."""
    target_dir, base_url, names = obj["target_dir"], obj["target_base_url"], obj["target_names"]
    if not isinstance(target_dir, Path) or not isinstance(base_url, str) or not names:
        _fail("download needs --target-name, --target-base-url and --target-dir")
    assert isinstance(names, tuple)
    target_dir.mkdir(parents=True, exist_ok=True)
    updater = _refreshed(obj, target_dir, base_url.rstrip("/") + "/")
    for name in names:
        try:
            info = updater.get_targetinfo(name)
            if info is None:
                _fail(f"target {name} is not in the repository")
            path = str(target_dir / quote(name, safe=""))
            if updater.find_cached_target(info, path) is None:
                updater.download_target(info, path)
        except (OSError, RepositoryError, DownloadError, ValueError) as e:
            _fail(f"target {name}: {type(e).__name__}: {e}")

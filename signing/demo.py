"""``overdrive demo``: the release engineers' flow end to end on a local directory.

keys → repository → release 1.0 → release 1.1 with a delta → status → verify, in a fresh
workspace, using the same commands a person would type. Later issues extend this into the
whole-system demo (server, fleet, rollouts).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import click

IMAGE_SIZE = 24 * 1024 * 1024


def _mke2fs() -> str | None:
    found = shutil.which("mke2fs")
    if found:
        return found
    for candidate in ("/usr/sbin/mke2fs", "/sbin/mke2fs"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def populate_rootfs(tree: Path, version: str, seed: int) -> None:
    """A small root filesystem tree: "binaries", libraries and configuration."""
    rng = random.Random(seed)
    for sub in ("bin", "lib", "etc", "usr/share/doc"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    base = random.Random(0)  # shared content across versions, as in a real patch release
    for i in range(24):
        blob = bytearray(base.randbytes(96 * 1024))
        if rng.random() < 0.25:  # this version changed the program a little
            at = rng.randrange(len(blob) - 512)
            blob[at : at + 512] = rng.randbytes(512)
        (tree / "bin" / f"app{i:02d}").write_bytes(bytes(blob))
    for i in range(8):
        (tree / "lib" / f"libcar{i}.so").write_bytes(base.randbytes(256 * 1024))
    (tree / "etc" / "os-release").write_text(f'NAME="Overdrive demo OS"\nVERSION="{version}"\n')
    notes = "".join(f"line {n}: release notes of the car software\n" for n in range(4000))
    (tree / "usr/share/doc/NOTES").write_text(notes + f"version {version}\n")


def build_image(path: Path, version: str, seed: int) -> str:
    """An ext4 image made with ``mke2fs -d`` (or a plain generated image without e2fsprogs)."""
    mke2fs = _mke2fs()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        populate_rootfs(tree, version, seed)
        if mke2fs:
            subprocess.run(
                [
                    mke2fs,
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-L",
                    "rootfs",
                    "-U",
                    "clear",
                    "-E",
                    "hash_seed=00000000-0000-0000-0000-000000000000,root_owner=0:0",
                    "-d",
                    str(tree),
                    str(path),
                    f"{IMAGE_SIZE // 1024}k",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"},
            )
            return "ext4 (mke2fs -d)"
        with path.open("wb") as out:
            for file in sorted(tree.rglob("*")):
                if file.is_file():
                    out.write(file.read_bytes())
            out.truncate(IMAGE_SIZE)
        return "generated (e2fsprogs missing)"


@click.command()
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to put keys, images and the repository (default: a new temporary directory).",
)
def demo(workspace: Path | None) -> None:
    """Run the release flow end to end on a local directory and show what was published."""
    from overdrive.cli import main

    ws = workspace or Path(tempfile.mkdtemp(prefix="overdrive-demo-"))
    if ws.exists() and any(ws.iterdir()):
        raise click.ClickException(f"workspace {ws} is not empty")
    keys, repo, images = ws / "keys", ws / "repository", ws / "images"
    images.mkdir(parents=True)
    started = time.monotonic()

    def step(title: str, *args: str | Path) -> None:
        click.secho(f"\n$ overdrive {' '.join(str(a) for a in args)}", fg="cyan", bold=True)
        click.echo(f"# {title}")
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            if e.code:
                raise click.ClickException(f"demo step failed: {title}") from e

    for role in ("root", "targets", "snapshot", "timestamp"):
        step(
            f"generate the {role} key",
            "keys",
            "generate",
            role,
            "--dir",
            keys,
            "--insecure-no-passphrase",
        )
    common: list[str | Path] = ["--storage", repo, "--keys", keys]
    step("create the TUF image repository", "repo", "init", *common)
    kind = build_image(images / "rootfs-1.0.img", "1.0", seed=1)
    build_image(images / "rootfs-1.1.img", "1.1", seed=2)
    click.echo(f"\nbuilt two {IMAGE_SIZE // 2**20} MiB root filesystem images: {kind}")
    step(
        "sign release 1.0",
        "release",
        "add",
        images / "rootfs-1.0.img",
        "--hardware-id",
        "ecu-gateway",
        "--version",
        "1.0",
        *common,
        "--quiet",
    )
    step(
        "sign release 1.1 with a delta from 1.0",
        "release",
        "add",
        images / "rootfs-1.1.img",
        "--hardware-id",
        "ecu-gateway",
        "--version",
        "1.1",
        "--delta-from",
        "1.0",
        *common,
        "--quiet",
    )
    step("what is published", "repo", "status", "--storage", repo, "--keys", keys)
    step(
        "verify it exactly as a vehicle would",
        "repo",
        "verify",
        "--storage",
        repo,
        "--root",
        repo / "metadata" / "1.root.json",
    )
    click.secho(
        f"\ndemo finished in {time.monotonic() - started:.1f} s; workspace kept at {ws}", fg="green"
    )

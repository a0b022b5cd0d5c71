"""Realistic images for the demo: ext4 root filesystems made with ``mke2fs -d`` from a generated
tree (programs, libraries, configuration), with a patch release's worth of change between
versions. Without e2fsprogs, a plain generated image of the same shape is used instead.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

#: The marker a broken image carries; the demo's health check fails when it finds it.
BROKEN_MARKER = b"OVERDRIVE_HEALTH=fail"


def mke2fs() -> str | None:
    found = shutil.which("mke2fs")
    if found:
        return found
    for candidate in ("/usr/sbin/mke2fs", "/sbin/mke2fs"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def populate_rootfs(tree: Path, hardware_id: str, version: str, *, broken: bool = False) -> None:
    """A small root filesystem tree; each version changes a few programs, as a patch release."""
    base = random.Random(hardware_id)  # shared across versions of one hardware id
    change = random.Random(f"{hardware_id}-{version}")
    for sub in ("bin", "lib", "etc", "usr/share/doc"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    for i in range(24):
        blob = bytearray(base.randbytes(96 * 1024))
        if change.random() < 0.3:
            at = change.randrange(len(blob) - 512)
            blob[at : at + 512] = change.randbytes(512)
        (tree / "bin" / f"app{i:02d}").write_bytes(bytes(blob))
    for i in range(8):
        (tree / "lib" / f"libcar{i}.so").write_bytes(base.randbytes(192 * 1024))
    (tree / "etc" / "os-release").write_text(
        f'NAME="Overdrive demo OS"\nVARIANT_ID="{hardware_id}"\nVERSION="{version}"\n'
    )
    health = BROKEN_MARKER if broken else b"OVERDRIVE_HEALTH=ok"
    (tree / "etc" / "health.conf").write_bytes(health + b"\n")
    notes = "".join(f"line {n}: release notes of the car software\n" for n in range(3000))
    (tree / "usr/share/doc/NOTES").write_text(notes + f"{hardware_id} {version}\n")


def build_image(
    path: Path, hardware_id: str, version: str, *, size: int, broken: bool = False
) -> str:
    """Write the image; return how it was made (for the demo's output)."""
    tool = mke2fs()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        populate_rootfs(tree, hardware_id, version, broken=broken)
        if tool:
            subprocess.run(
                [
                    tool,
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
                    f"{size // 1024}k",
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
            out.truncate(size)
        return "generated (e2fsprogs missing)"


HEALTH_CHECK = f'''"""The demo vehicles' health check: fail when the booted image carries the broken marker."""
import os, sys
with open(os.environ["OVERDRIVE_SLOT_PATH"], "rb") as f:
    data = f.read()
if {BROKEN_MARKER!r} in data:
    print("self-test failed: infotainment service crashed at start-up")
    sys.exit(1)
print("self-test passed")
'''

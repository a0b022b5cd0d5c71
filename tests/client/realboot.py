"""Run the shipped GRUB fragment in real GRUB under QEMU, over a given grubenv file.

GRUB (i386-pc) is started by QEMU through GRUB's ``lnxboot.img`` (no firmware or disk boot
sector needed) over a small FAT disk that holds the fragment and the environment block; after
the boot the block is copied back over the caller's file. This is "the bootloader choosing the
slot" for tests that then run ``overdrive vehicle post-boot`` on what GRUB left.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "client" / "bootscripts"
GRUB_PC = Path("/usr/lib/grub/i386-pc")
_MODULES = "biosdisk fat part_msdos loadenv test echo halt normal configfile serial terminal"


def need(tool: str, package: str) -> str:
    """The path of ``tool``, or skip the test naming the Debian package that provides it."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        pytest.skip(f"{tool} not installed (Debian package {package})")
    return path


def need_grub() -> tuple[str, str]:
    qemu = need("qemu-system-x86_64", "qemu-system-x86")
    mkimage = need("grub-mkimage", "grub-common")
    need("mcopy", "mtools")
    need("mkfs.vfat", "dosfstools")
    if not (GRUB_PC / "lnxboot.img").exists():
        pytest.skip("GRUB's i386-pc modules not installed (Debian package grub-pc-bin)")
    return qemu, mkimage


def qemu_output(argv: list[object], marker: str, timeout: float = 120) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    text = proc.stdout.decode("utf-8", "replace").replace("\r", "")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert marker in text, (proc.returncode, text[-3000:], proc.stderr[-500:])
    return text


def grub_kernel(work: Path, embedded: str) -> Path:
    """A GRUB core image with ``embedded`` as its config, bootable by QEMU's ``-kernel``."""
    _qemu, mkimage = need_grub()
    config = work / "embed.cfg"
    # GRUB's own serial terminal: plain lines (the BIOS console reaches the serial port through
    # SeaBIOS with cursor moves, and lines that scroll off the screen can be lost).
    config.write_text("serial --unit=0 --speed=115200\nterminal_output serial\n" + embedded)
    core = work / "core.img"
    subprocess.run(
        [mkimage, "-O", "i386-pc", "-o", core, "-p", "(hd0)", "-c", config, *_MODULES.split()],
        check=True,
    )
    kernel = work / "grub.lnx"
    kernel.write_bytes((GRUB_PC / "lnxboot.img").read_bytes() + core.read_bytes())
    return kernel


def fat_disk(path: Path, files: dict[str, Path], size: int = 8 << 20) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.vfat", str(path)], check=True, capture_output=True)
    for name, source in files.items():
        subprocess.run(["mcopy", "-i", path, source, f"::{name}"], check=True)
    return path


def grub_boot(env_file: Path, work: Path) -> str:
    """Boot real GRUB with the shipped fragment over ``env_file`` (updated in place); return the
    slot it chose ("" if none)."""
    qemu, _mkimage = need_grub()
    work.mkdir(parents=True, exist_ok=True)
    disk = fat_disk(work / "boot.img", {"grubenv": env_file, "overdrive.cfg": SCRIPTS / "grub.cfg"})
    kernel = grub_kernel(
        work,
        "insmod fat\nsource (hd0)/overdrive.cfg\n"
        'echo "OVD slot=$overdrive_slot"\necho "OVD END"\necho "."\nhalt\n',
    )
    out = qemu_output(
        [
            qemu,
            "-nographic",
            "-m",
            "256",
            "-no-reboot",
            "-kernel",
            kernel,
            "-drive",
            f"file={disk},format=raw,if=ide",
        ],
        "OVD END",
    )
    subprocess.run(["mcopy", "-o", "-i", disk, "::grubenv", env_file], check=True)
    found = re.search(r"OVD slot=(\w*)", out)
    assert found, out[-2000:]
    return found[1]

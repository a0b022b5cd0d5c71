"""The shipped boot scripts, run in the real bootloaders, decide exactly as choose_boot does.

``client/bootscripts/grub.cfg`` runs in GRUB (i386-pc, started by QEMU through GRUB's
``lnxboot.img``, so no firmware or disk boot sector is needed) over a FAT disk that holds one
environment block per scenario; ``client/bootscripts/boot.cmd`` is built with U-Boot's
``mkimage`` and runs in Debian's U-Boot for QEMU's arm64 ``virt`` machine, fetched over QEMU's
built-in TFTP. For every boot state over slots A/B (both orders, tries 0-3 and the largest each
script counts, good or not, any recorded slot), the test compares the slot each bootloader
chose, the tries it spent, the slot it recorded, and whether it wrote the environment at all,
with :func:`overdrive.client.bootchooser.choose_boot`.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from overdrive.client import bootchooser as bc
from tests.client.realboot import SCRIPTS, grub_kernel, need, need_grub, qemu_output

UBOOT_ARM64 = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
GRUB_BATCH = 40


@dataclass(frozen=True)
class Scenario:
    state: bc.BootState

    @property
    def expected(self) -> tuple[str, bc.BootState, bool]:
        """(chosen slot or "", state after, whether the environment is written)."""
        try:
            slot, after = bc.choose_boot(self.state)
        except bc.NoBootableSlot:
            return "", replace(self.state, booted=None), self.state.booted is not None
        spent = after.slots != self.state.slots
        return slot, after, spent or slot != self.state.booted


def scenarios(max_tries: int) -> list[Scenario]:
    """Every combination of order, good flags, recorded slot and tries 0, 1 and the most the
    script counts, then every tries value on a trial (the scripts count down value by value)."""
    out = []
    tries = (0, 1, max_tries)
    for order, ta, ga, tb, gb, booted in itertools.product(
        (("A", "B"), ("B", "A")), tries, (False, True), tries, (False, True), (None, "A", "B")
    ):
        slots = {"A": bc.SlotState("A", ta, ga), "B": bc.SlotState("B", tb, gb)}
        out.append(Scenario(bc.BootState(tuple(slots[n] for n in order), booted)))
    for first, n in itertools.product(("A", "B"), range(2, max_tries)):
        other = "B" if first == "A" else "A"
        state = bc.BootState((bc.SlotState(first, n), bc.SlotState(other, 0, True)), other)
        out.append(Scenario(state))
    return out


# ------------------------------------------------------------------------------------ GRUB


def grub_vars(state: bc.BootState) -> dict[str, str]:
    env = {"ORDER": " ".join(state.order), "BOOTED_SLOT": state.booted or ""}
    for s in state.slots:
        env[f"{s.name}_LEFT"] = str(s.tries_left)
        env[f"{s.name}_GOOD"] = "1" if s.good else "0"
    return env


def test_grub_fragment_decides_as_choose_boot(tmp_path: Path) -> None:
    qemu, _mkimage = need_grub()
    editenv = need("grub-editenv", "grub-common")
    cases = scenarios(9)
    tree = tmp_path / "tree"
    for i, case in enumerate(cases):
        env = tree / _grub_dir(i) / "grubenv"
        env.parent.mkdir(parents=True)
        subprocess.run([editenv, env, "create"], check=True)
        subprocess.run(
            [editenv, env, "set", *(f"{k}={v}" for k, v in grub_vars(case.state).items())],
            check=True,
        )
    shutil.copyfile(SCRIPTS / "grub.cfg", tree / "overdrive.cfg")
    disk = tmp_path / "disk.img"
    with disk.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.vfat", "-F", "32", str(disk)], check=True, capture_output=True)
    subprocess.run(["mcopy", "-s", "-i", disk, *tree.iterdir(), "::/"], check=True)
    # Each scenario is a $prefix with its own grubenv, the fragment sourced there; batches of
    # scenarios per GRUB run (GRUB slows down as one run sources the fragment many times).
    before = {i: _env_bytes(tree / _grub_dir(i) / "grubenv") for i in range(len(cases))}
    out = ""
    for first in range(0, len(cases), GRUB_BATCH):
        batch = range(first, min(first + GRUB_BATCH, len(cases)))
        lines = ["insmod fat"]
        for i in batch:
            lines += [
                f"set prefix=(hd0)/{_grub_dir(i)}",
                "source (hd0)/overdrive.cfg",
                f'echo "OVD {i} slot=$overdrive_slot"',
            ]
        lines += ['echo "OVD END"', 'echo "(GRUB cuts the last line short at halt)"', "halt"]
        kernel = grub_kernel(tmp_path, "\n".join(lines) + "\n")
        qemu_args = ["-nographic", "-m", "256", "-no-reboot", "-kernel", kernel]
        drive = ["-drive", f"file={disk},format=raw,if=ide"]
        out += qemu_output([qemu, *qemu_args, *drive], "OVD END")
    chosen = dict(re.findall(r"OVD (\d+) slot=(\w*)", out))
    missing = sorted(set(map(str, range(len(cases)))) - set(chosen), key=int)
    assert not missing, (missing, out[-2000:])
    back = tmp_path / "back"
    subprocess.run(["mcopy", "-s", "-i", disk, "::/", back], check=True)
    for i, case in enumerate(cases):
        slot, after, writes = case.expected
        env_file = back / _grub_dir(i) / "grubenv"
        listed = subprocess.run([editenv, env_file, "list"], capture_output=True, text=True)
        saved = dict(line.split("=", 1) for line in listed.stdout.splitlines() if "=" in line)
        assert chosen[str(i)] == slot, (case, chosen[str(i)])
        assert saved["BOOTED_SLOT"] == (slot if writes else case.state.booted or ""), case
        for s in after.slots:
            assert saved[f"{s.name}_LEFT"] == str(s.tries_left), (case, saved)
        assert (_env_bytes(env_file) != before[i]) == writes, (
            case,
            "written" if writes else "untouched",
        )


def _grub_dir(i: int) -> str:
    return f"g{i // 16}/s{i}"  # small FAT directories: GRUB scans them linearly


def _env_bytes(path: Path) -> bytes:
    return path.read_bytes()


# ------------------------------------------------------------------------------------ U-Boot


def uboot_vars(state: bc.BootState) -> dict[str, str]:
    env = {"BOOT_ORDER": " ".join(state.order), "BOOTED_SLOT": state.booted or ""}
    for s in state.slots:
        env[f"BOOT_{s.name}_LEFT"] = format(s.tries_left, "x")
        env[f"BOOT_{s.name}_GOOD"] = "1" if s.good else "0"
    return env


def selection_part() -> str:
    """The shipped script up to its board-specific part (which loads and boots a kernel)."""
    text = (SCRIPTS / "boot.cmd").read_text()
    head, sep, _board = text.partition("# ==== board")
    assert sep, "boot.cmd lost its board marker"
    return head


def test_uboot_script_builds_with_mkimage(tmp_path: Path) -> None:
    mkimage = need("mkimage", "u-boot-tools")
    out = tmp_path / "boot.scr"
    result = subprocess.run(
        [
            mkimage,
            "-A",
            "arm64",
            "-T",
            "script",
            "-C",
            "none",
            "-n",
            "overdrive",
            "-d",
            SCRIPTS / "boot.cmd",
            out,
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Script" in result.stdout and out.stat().st_size > 64


def test_uboot_script_decides_as_choose_boot(tmp_path: Path) -> None:
    mkimage = need("mkimage", "u-boot-tools")
    qemu = need("qemu-system-aarch64", "qemu-system-arm")
    if not UBOOT_ARM64.exists():
        pytest.skip("U-Boot for QEMU not installed (Debian package u-boot-qemu)")
    cases = scenarios(10)  # hex: 'a'
    selection = selection_part()
    lines = ["echo OVD START"]
    for i, case in enumerate(cases):
        for k, v in uboot_vars(case.state).items():
            lines.append(f'setenv {k} "{v}"' if v else f"setenv {k}")
        lines += [
            f"echo OVD {i} begin",
            selection,
            f'echo "OVD {i} slot=${{overdrive_slot}} A=${{BOOT_A_LEFT}} B=${{BOOT_B_LEFT}}'
            f' booted=${{BOOTED_SLOT}}"',
        ]
    lines += ["echo OVD END", "poweroff"]
    script = tmp_path / "all.cmd"
    script.write_text("\n".join(lines) + "\n")
    tftp = tmp_path / "tftp"
    tftp.mkdir()
    subprocess.run(
        [
            mkimage,
            "-A",
            "arm64",
            "-T",
            "script",
            "-C",
            "none",
            "-d",
            script,
            tftp / "boot.scr.uimg",
        ],
        check=True,
        capture_output=True,
    )
    out = qemu_output(
        [
            qemu,
            "-machine",
            "virt",
            "-cpu",
            "cortex-a57",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-bios",
            UBOOT_ARM64,
            "-netdev",
            f"user,id=n0,tftp={tftp}",
            "-device",
            "virtio-net-device,netdev=n0",
        ],
        "OVD END",
    )
    blocks = re.findall(
        r"OVD (\d+) begin(.*?)OVD \1 slot=(\w*) A=(\w*) B=(\w*) booted=(\w*)", out, re.S
    )
    assert len(blocks) == len(cases), out[-3000:]
    for (index, between, slot, a_left, b_left, booted), case in zip(blocks, cases, strict=True):
        want_slot, after, writes = case.expected
        assert slot == want_slot, (index, case)
        assert int(a_left, 16) == after.slot("A").tries_left, (index, case, a_left)
        assert int(b_left, 16) == after.slot("B").tries_left, (index, case, b_left)
        assert booted == (want_slot if writes else case.state.booted or ""), (index, case)
        assert ("Saving Environment" in between) == writes, (index, case)

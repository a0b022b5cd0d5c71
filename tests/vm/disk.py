"""Assemble the VM's GPT disk image and read it back, all on the image file (no mounting).

Layout (every partition starts on a 1 MiB boundary)::

    p1  esp     FAT32, /EFI/BOOT/BOOTX64.EFI (GRUB), /EFI/BOOT/grub.cfg, /EFI/BOOT/grubenv
    p2  slot-a  root file system A (ext4 image, exactly ``slot_size`` bytes of partition)
    p3  slot-b  root file system B (same size; an image or zeros)
    p4  data    ext4, label ``overdrive-data``, mounted rw at /var/lib/overdrive

GRUB is a standalone EFI image with its modules built in and prefix ``/EFI/BOOT``, so it reads
``grub.cfg`` and ``grubenv`` from the ESP it was loaded from. The env block is exactly 1024 bytes
on a fresh FAT (one contiguous run), so GRUB's own ``save_env`` can rewrite it in place.

The FAT side uses mtools (``-i DISK@@OFFSET``); the ext4 side extracts the partition to a scratch
file, replays its journal if a power cut left one (``e2fsck -E journal_only``) and reads it with
``debugfs``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.vm.common import (
    CACHE_ROOT,
    VmError,
    digest,
    file_sha256,
    host_env,
    run,
)

MIB = 1 << 20
SECTOR = 512
ESP_SIZE = 64 * MIB
DATA_SIZE = 64 * MIB
DATA_LABEL = "overdrive-data"
GRUB_PREFIX = "/EFI/BOOT"
GRUB_DIR = Path("/usr/lib/grub/x86_64-efi")
# Fixed GUIDs: two disks built from the same inputs are byte-identical in their tables.
DISK_GUID = "6f766572-6472-6976-652d-6469736b0000"
PART_GUIDS = {
    1: "6f766572-6472-6976-652d-657370000001",
    2: "6f766572-6472-6976-652d-736c6f740002",
    3: "6f766572-6472-6976-652d-736c6f740003",
    4: "6f766572-6472-6976-652d-646174610004",
}
DATA_UUID = "6f766572-6472-6976-652d-646174610000"
PART_NAMES = {1: "esp", 2: "slot-a", 3: "slot-b", 4: "data"}
PART_TYPES = {1: "ef00", 2: "8304", 3: "8304", 4: "8300"}
SLOTS = {"A": 2, "B": 3}

GRUB_MODULES = (
    "part_gpt",
    "fat",
    "ext2",
    "normal",
    "linux",
    "boot",
    "loadenv",
    "test",
    "echo",
    "configfile",
    "search",
    "search_fs_uuid",
    "search_label",
    "search_fs_file",
    "gzio",
    "reboot",
    "halt",
    "sleep",
    "regexp",
    "true",
    "minicmd",
    "cat",
    "ls",
    "probe",
    "efi_gop",
)


# Kernel arguments every slot boots with: read-only root, serial console, reboot 5 s after a
# panic. tsc=reliable: under TCG the kernel otherwise distrusts the TSC and falls back to the
# HPET, which makes every clock_gettime a trap into QEMU (systemd then boots far slower).
KERNEL_ARGS = "ro console=ttyS0,115200 panic=5 tsc=reliable"


def grub_boot_slot(slot: str, extra_args: str = "") -> str:
    """Return grub.cfg lines that boot slot ``"A"``/``"B"``: kernel and initrd from the slot's own
    partition, ``root=/dev/vdaN``, and ``overdrive.slot=X`` on the command line."""
    n = SLOTS[slot.upper()]
    args = f"root=/dev/vda{n} {KERNEL_ARGS} overdrive.slot={slot.upper()} {extra_args}".strip()
    return f"linux (hd0,gpt{n})/vmlinuz {args}\ninitrd (hd0,gpt{n})/initrd.img\nboot\n"


class DiskError(VmError):
    """Assembling or reading the disk image failed."""


class DiskFileNotFound(DiskError, FileNotFoundError):
    """A file asked for on the ESP or the data partition is not there."""


@dataclass(frozen=True)
class Partition:
    """One GPT partition: its number, name and byte range in the disk image."""

    number: int
    name: str
    start: int
    size: int

    @property
    def end(self) -> int:
        """The first byte after the partition."""
        return self.start + self.size


def _mtools_env() -> dict[str, str]:
    """mtools on an image file: skip its floppy-geometry sanity check."""
    return host_env({"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"})


def build_grub_efi(modules: Sequence[str] = GRUB_MODULES) -> Path:
    """Return a cached standalone GRUB EFI binary (``BOOTX64.EFI``) with ``modules`` built in."""
    kernel_img = GRUB_DIR / "kernel.img"
    if not kernel_img.exists():
        raise DiskError(f"{GRUB_DIR} missing: install the Debian package grub-efi-amd64-bin")
    st = kernel_img.stat()
    key = digest("grub", sorted(modules), GRUB_PREFIX, st.st_size, st.st_mtime_ns)
    out = CACHE_ROOT / f"grub-{key}.efi"
    if not out.exists():
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial")
        run(
            [
                "grub-mkimage",
                "-O",
                "x86_64-efi",
                "-d",
                GRUB_DIR,
                "-p",
                GRUB_PREFIX,
                "-o",
                tmp,
                *modules,
            ],
            what="building GRUB's EFI image",
        )
        tmp.rename(out)
    return out


def make_grubenv(path: Path, variables: Mapping[str, str]) -> None:
    """Write a valid 1024-byte GRUB environment block holding ``variables``."""
    path.unlink(missing_ok=True)
    run(["grub-editenv", path, "create"], what="creating the GRUB env block")
    if variables:
        pairs = [f"{k}={v}" for k, v in variables.items()]
        run(["grub-editenv", path, "set", *pairs], what="setting GRUB env variables")
    if path.stat().st_size != 1024:
        raise DiskError(f"{path}: GRUB env block is {path.stat().st_size} bytes, not 1024")


def parse_grubenv(block: bytes) -> dict[str, str]:
    """Parse a GRUB env block into a dict (what ``grub-editenv list`` prints)."""
    if len(block) != 1024 or not block.startswith(b"# GRUB Environment Block\n"):
        raise DiskError(f"not a GRUB env block ({len(block)} bytes)")
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "grubenv"
        p.write_bytes(block)
        out = run(["grub-editenv", p, "list"], what="listing the GRUB env").stdout
    env: dict[str, str] = {}
    for line in out.decode(errors="replace").splitlines():
        if "=" in line:
            k, _, v = line.partition("=")
            env[k] = v
    return env


def _copy_into(disk: Path, offset: int, src: Path, *, fresh: bool) -> int:
    """Copy ``src`` into ``disk`` at ``offset``; on a ``fresh`` (all-zero, sparse) disk skip
    zero chunks so the image stays sparse. Return the bytes copied."""
    chunk = 4 * MIB
    zero = bytes(chunk)
    copied = 0
    with src.open("rb") as s, disk.open("r+b") as d:
        while True:
            buf = s.read(chunk)
            if not buf:
                break
            if not (fresh and buf == zero[: len(buf)]):
                d.seek(offset + copied)
                d.write(buf)
            copied += len(buf)
    return copied


def _zero_range(disk: Path, offset: int, length: int) -> None:
    """Write zeros over ``length`` bytes of ``disk`` at ``offset``."""
    chunk = bytes(4 * MIB)
    with disk.open("r+b") as d:
        d.seek(offset)
        left = length
        while left > 0:
            n = min(left, len(chunk))
            d.write(chunk[:n])
            left -= n


def build_disk(
    out: Path,
    *,
    grub_cfg: str,
    slot_size: int,
    slot_a: Path,
    slot_b: Path | None = None,
    grubenv: Mapping[str, str] | None = None,
    esp_files: Mapping[str, bytes] | None = None,
    data_dir: Path | None = None,
    esp_size: int = ESP_SIZE,
    data_size: int = DATA_SIZE,
    grub_modules: Sequence[str] = GRUB_MODULES,
) -> Disk:
    """Assemble a GPT disk image at ``out`` (sparse) and return it as a :class:`Disk`.

    ``grub_cfg`` is the text of /EFI/BOOT/grub.cfg; ``grubenv`` the variables of
    /EFI/BOOT/grubenv; ``esp_files`` extra files for the ESP (path → bytes); ``slot_a`` (and
    ``slot_b``, else zeros) images of at most ``slot_size`` bytes; ``data_dir`` an optional host
    directory copied into the data file system.
    """
    for name, size in (("slot_size", slot_size), ("esp_size", esp_size), ("data", data_size)):
        if size <= 0 or size % MIB:
            raise DiskError(f"{name} {size} is not a positive multiple of 1 MiB")
    images = {"A": slot_a, "B": slot_b}
    for slot, img in images.items():
        if img is not None and img.stat().st_size > slot_size:
            raise DiskError(
                f"slot {slot} image {img.name} ({img.stat().st_size} bytes) exceeds the"
                f" {slot_size}-byte slot"
            )
    sizes = {1: esp_size, 2: slot_size, 3: slot_size, 4: data_size}
    parts: dict[int, Partition] = {}
    cursor = MIB
    for n in (1, 2, 3, 4):
        parts[n] = Partition(n, PART_NAMES[n], cursor, sizes[n])
        cursor += sizes[n]
    total = cursor + MIB  # room for the backup GPT
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    with tmp.open("wb") as f:
        f.truncate(total)
    cmd: list[str | os.PathLike[str]] = ["sgdisk", "--clear", f"--disk-guid={DISK_GUID}"]
    for n, p in parts.items():
        first = p.start // SECTOR
        last = p.end // SECTOR - 1
        cmd += [f"--new={n}:{first}:{last}", f"--typecode={n}:{PART_TYPES[n]}"]
        cmd += [f"--change-name={n}:{p.name}", f"--partition-guid={n}:{PART_GUIDS[n]}"]
    cmd.append(tmp)
    run(cmd, what="writing the GPT")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".disk-") as scratch_s:
        scratch = Path(scratch_s)
        esp = scratch / "esp.img"
        _make_esp(esp, esp_size, grub_cfg, grubenv or {}, esp_files or {}, grub_modules, scratch)
        _copy_into(tmp, parts[1].start, esp, fresh=True)
        for slot, img in images.items():
            if img is not None:
                _copy_into(tmp, parts[SLOTS[slot]].start, img, fresh=True)
        data = scratch / "data.img"
        _make_data(data, data_size, data_dir)
        _copy_into(tmp, parts[4].start, data, fresh=True)
    tmp.rename(out)
    return Disk(out, {p.name: p for p in parts.values()})


def _make_esp(
    esp: Path,
    size: int,
    grub_cfg: str,
    grubenv: Mapping[str, str],
    esp_files: Mapping[str, bytes],
    grub_modules: Sequence[str],
    scratch: Path,
) -> None:
    """Make the FAT32 ESP image: GRUB, its config, the env block (written first, so it sits in
    one contiguous run) and any extra files."""
    run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-n",
            "ESP",
            "-i",
            "4f564552",
            "--invariant",
            "-C",
            esp,
            str(size // 1024),
        ],
        what="formatting the ESP",
    )
    env = _mtools_env()
    run(["mmd", "-i", esp, "::/EFI", "::/EFI/BOOT"], what="making ESP directories", env=env)
    envfile = scratch / "grubenv"
    make_grubenv(envfile, grubenv)
    cfg = scratch / "grub.cfg"
    cfg.write_text(grub_cfg)
    files = [
        (envfile, f"{GRUB_PREFIX}/grubenv"),
        (build_grub_efi(grub_modules), f"{GRUB_PREFIX}/BOOTX64.EFI"),
        (cfg, f"{GRUB_PREFIX}/grub.cfg"),
    ]
    for i, (guest, content) in enumerate(sorted(esp_files.items())):
        src = scratch / f"extra-{i}"
        src.write_bytes(content)
        files.append((src, guest))
    for src, guest in files:
        _mtools_mkdirs(esp, guest, env)
        run(
            ["mcopy", "-o", "-i", esp, src, f"::{guest}"],
            what=f"copying {guest} to the ESP",
            env=env,
        )


def _mtools_mkdirs(image: str | Path, guest: str, env: Mapping[str, str]) -> None:
    """Create the parent directories of ``guest`` on a FAT image (ignoring existing ones)."""
    parts = [p for p in guest.split("/")[:-1] if p]
    for i in range(1, len(parts) + 1):
        d = "::/" + "/".join(parts[:i])
        run(
            ["mmd", "-D", "s", "-i", image, d],
            what="making ESP directories",
            env=env,
            ok_codes=(0, 1),
        )


def _make_data(data: Path, size: int, data_dir: Path | None) -> None:
    """Make the ext4 data file system (journaled: it is written at run time)."""
    cmd: list[str | os.PathLike[str]] = [
        "mke2fs",
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        DATA_LABEL,
        "-U",
        DATA_UUID,
        "-m",
        "0",
        "-E",
        "root_owner=0:0,nodiscard",
    ]
    if data_dir is not None:
        cmd += ["-d", data_dir]
    cmd += [data, f"{size // 1024}k"]
    run(cmd, what="making the data file system")


def _parse_sgdisk(disk: Path) -> dict[str, Partition]:
    """Read the partition table of ``disk`` with ``sgdisk -p``."""
    out = run(["sgdisk", "-p", disk], what="reading the GPT").stdout.decode(errors="replace")
    sector = SECTOR
    m = re.search(r"Sector size \(logical\): (\d+) bytes", out)
    if m:
        sector = int(m.group(1))
    parts: dict[str, Partition] = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+ \S+\s+\S+\s+(\S.*)$", line)
        if m:
            n, first, last, name = int(m[1]), int(m[2]), int(m[3]), m[4].strip()
            parts[name] = Partition(n, name, first * sector, (last - first + 1) * sector)
    if not parts:
        raise DiskError(f"{disk}: no GPT partitions found")
    return parts


class Disk:
    """A disk image built by :func:`build_disk`, with helpers that read and write it in place.

    Read it while QEMU runs only for a rough look: the guest may be half-way through a write.
    """

    def __init__(self, path: Path, partitions: Mapping[str, Partition] | None = None) -> None:
        self.path = Path(path)
        self.partitions = dict(partitions) if partitions is not None else _parse_sgdisk(path)
        for name in PART_NAMES.values():
            if name not in self.partitions:
                raise DiskError(f"{path}: no partition named {name!r}")

    @classmethod
    def open(cls, path: Path) -> Disk:
        """Open an existing disk image, reading the layout from its GPT."""
        return cls(path)

    @property
    def esp(self) -> Partition:
        """The EFI system partition."""
        return self.partitions["esp"]

    @property
    def data(self) -> Partition:
        """The data partition (ext4, overdrive-data)."""
        return self.partitions["data"]

    def slot(self, slot: str) -> Partition:
        """The partition of slot ``"A"`` or ``"B"``."""
        if slot.upper() not in SLOTS:
            raise DiskError(f"no slot {slot!r}: slots are A and B")
        return self.partitions[PART_NAMES[SLOTS[slot.upper()]]]

    # ---- ESP (FAT) -------------------------------------------------------------------------

    def _esp_image(self) -> str:
        return f"{self.path}@@{self.esp.start}"

    def read_esp_file(self, path: str) -> bytes:
        """Return the bytes of ``path`` (e.g. ``/EFI/BOOT/grubenv``) on the ESP."""
        env = _mtools_env()
        proc = run(
            ["mcopy", "-n", "-i", self._esp_image(), f"::{path}", "-"],
            what=f"reading {path} from the ESP",
            env=env,
            ok_codes=(0, 1),
        )
        if proc.returncode != 0:
            raise DiskFileNotFound(f"{path}: not on the ESP of {self.path.name}")
        return proc.stdout

    def write_esp_file(self, path: str, content: bytes) -> None:
        """Create or replace ``path`` on the ESP with ``content`` (parents are created)."""
        env = _mtools_env()
        with tempfile.NamedTemporaryFile(prefix="esp-") as f:
            f.write(content)
            f.flush()
            _mtools_mkdirs(self._esp_image(), path, env)
            run(
                ["mcopy", "-o", "-i", self._esp_image(), f.name, f"::{path}"],
                what=f"writing {path} to the ESP",
                env=env,
            )

    def list_esp(self, directory: str = "/") -> list[str]:
        """Return the names in ``directory`` on the ESP."""
        proc = run(
            ["mdir", "-b", "-i", self._esp_image(), f"::{directory}"],
            what=f"listing {directory} on the ESP",
            env=_mtools_env(),
            ok_codes=(0, 1),
        )
        if proc.returncode != 0:
            raise DiskFileNotFound(f"{directory}: not a directory on the ESP")
        names = []
        for line in proc.stdout.decode(errors="replace").splitlines():
            name = line.strip().rstrip("/").rsplit("/", 1)[-1]
            if name and name not in (".", ".."):
                names.append(name)
        return sorted(names)

    def grubenv(self) -> dict[str, str]:
        """Return GRUB's env variables from /EFI/BOOT/grubenv."""
        return parse_grubenv(self.read_esp_file(f"{GRUB_PREFIX}/grubenv"))

    def set_grubenv(self, variables: Mapping[str, str], *, replace: bool = False) -> None:
        """Set variables in /EFI/BOOT/grubenv (all others kept unless ``replace``)."""
        merged = {} if replace else self.grubenv()
        merged.update(variables)
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "grubenv"
            make_grubenv(p, merged)
            self.write_esp_file(f"{GRUB_PREFIX}/grubenv", p.read_bytes())

    # ---- slots -----------------------------------------------------------------------------

    def slot_sha256(self, slot: str, length: int | None = None) -> str:
        """Return the hex sha256 of slot ``slot``'s first ``length`` bytes (default: all)."""
        part = self.slot(slot)
        if length is not None and not 0 <= length <= part.size:
            raise DiskError(f"slot {slot}: cannot hash {length} bytes of a {part.size}-byte slot")
        return file_sha256(
            self.path, limit=part.size if length is None else length, offset=part.start
        )

    def write_slot(self, slot: str, image: Path, *, zero_rest: bool = True) -> None:
        """Write ``image`` into slot ``slot`` (and zero the rest of the partition)."""
        part = self.slot(slot)
        size = image.stat().st_size
        if size > part.size:
            raise DiskError(f"{image.name} ({size} bytes) exceeds slot {slot} ({part.size})")
        _copy_into(self.path, part.start, image, fresh=False)
        if zero_rest and size < part.size:
            _zero_range(self.path, part.start + size, part.size - size)

    def extract_slot(self, slot: str, out: Path, length: int | None = None) -> Path:
        """Copy slot ``slot``'s first ``length`` bytes (default: all) to the file ``out``."""
        part = self.slot(slot)
        left = part.size if length is None else length
        with self.path.open("rb") as s, Path(out).open("wb") as d:
            s.seek(part.start)
            while left > 0:
                buf = s.read(min(left, 4 * MIB))
                if not buf:
                    break
                d.write(buf)
                left -= len(buf)
        return Path(out)

    # ---- data partition (ext4) -------------------------------------------------------------

    @contextlib.contextmanager
    def data_fs(self) -> Iterator[DataFs]:
        """Yield a read-only view of a snapshot of the data file system (journal replayed)."""
        with tempfile.TemporaryDirectory(prefix="overdrive-data-") as tmp:
            img = Path(tmp) / "data.img"
            part = self.data
            with self.path.open("rb") as s, img.open("wb") as d:
                s.seek(part.start)
                left = part.size
                while left > 0:
                    buf = s.read(min(left, 4 * MIB))
                    d.write(buf)
                    left -= len(buf)
            # A hard reset can leave a journal to replay; 0/1 mean clean/fixed.
            run(
                ["e2fsck", "-p", "-E", "journal_only", img],
                what="replaying the data journal",
                ok_codes=(0, 1, 2),
            )
            yield DataFs(img)

    def read_data_file(self, path: str) -> bytes:
        """Return the bytes of ``path`` (relative to /var/lib/overdrive) on the data partition."""
        with self.data_fs() as fs:
            return fs.read(path)

    def list_data_dir(self, path: str = "/") -> list[str]:
        """Return the names in ``path`` (relative to /var/lib/overdrive) on the data partition."""
        with self.data_fs() as fs:
            return fs.listdir(path)


class DataFs:
    """A snapshot of the data partition readable with debugfs (paths are relative to its root,
    which the guest mounts at /var/lib/overdrive)."""

    def __init__(self, image: Path) -> None:
        self.image = image

    def _debugfs(self, request: str, what: str) -> tuple[bytes, str]:
        proc = run(["debugfs", "-R", request, self.image], what=what)
        return proc.stdout, proc.stderr.decode(errors="replace")

    @staticmethod
    def _norm(path: str) -> str:
        norm = "/" + path.removeprefix("/var/lib/overdrive").strip("/")
        if '"' in norm or "\n" in norm:
            raise DiskError(f"unsupported path {path!r}")
        return norm

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        _, err = self._debugfs(f'stat "{self._norm(path)}"', f"checking {path}")
        return "not found" not in err and "File not found" not in err

    def read(self, path: str) -> bytes:
        """Return the bytes of the file ``path``."""
        norm = self._norm(path)
        if not self.exists(norm):
            raise DiskFileNotFound(f"{norm}: not on the data partition")
        out, _ = self._debugfs(f'cat "{norm}"', f"reading {path} from the data partition")
        return out

    def listdir(self, path: str = "/") -> list[str]:
        """Return the names in the directory ``path`` (without ``.`` and ``..``)."""
        norm = self._norm(path)
        out, err = self._debugfs(f'ls -p "{norm}"', f"listing {path} on the data partition")
        if "not found" in err:
            raise DiskFileNotFound(f"{norm}: not on the data partition")
        names = []
        for line in out.decode(errors="replace").splitlines():
            # /inode/mode/uid/gid/name/size/
            fields = line.strip().split("/")
            if len(fields) >= 7 and fields[5] not in (".", ".."):
                names.append(fields[5])
        return sorted(names)

    def copy_out(self, path: str, dest: Path) -> Path:
        """Copy the file ``path`` to ``dest`` on the host."""
        Path(dest).write_bytes(self.read(path))
        return Path(dest)


def copy_disk(src: Path, dst: Path) -> Path:
    """Copy a disk image keeping it sparse (to run one built disk many times)."""
    tmp = Path(str(dst) + ".partial")
    run(["cp", "--reflink=auto", "--sparse=always", src, tmp], what=f"copying {src}")
    os.replace(tmp, dst)
    return Path(dst)


__all__ = [
    "GRUB_MODULES",
    "KERNEL_ARGS",
    "DataFs",
    "Disk",
    "DiskError",
    "DiskFileNotFound",
    "Partition",
    "build_disk",
    "build_grub_efi",
    "copy_disk",
    "grub_boot_slot",
    "make_grubenv",
    "parse_grubenv",
]

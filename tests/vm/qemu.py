"""Boot the disk image in QEMU (OVMF → GRUB → Linux) and watch its serial console.

:class:`Vm` runs one ``qemu-system-x86_64`` process: OVMF as pflash (read-only code plus a
private copy of the variable store), the disk as virtio-blk (the guest sees /dev/vda1…vda4),
user networking with a virtio NIC (the guest reaches the host's loopback at 10.0.2.2), files
injected with ``-fw_cfg`` (in the guest at
/sys/firmware/qemu_fw_cfg/by_name/opt/overdrive/NAME/raw), and a QMP monitor on a unix socket.
Guest reboots, panics (``panic=5``) and watchdog expiries reset the machine inside the same
process and come back through OVMF and GRUB; only a guest poweroff ends QEMU.

KVM is used only when a short real boot under it works (``/dev/kvm`` can exist and still fail
with "KVM internal error"); otherwise TCG. ``OVERDRIVE_VM_ACCEL=kvm|tcg`` forces a choice.
"""

from __future__ import annotations

import atexit
import codecs
import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.vm.common import VmError, which

QEMU = "qemu-system-x86_64"
OVMF_PAIRS = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
)
FW_CFG_PREFIX = "opt/overdrive/"
GUEST_FW_CFG_DIR = "/sys/firmware/qemu_fw_cfg/by_name/opt/overdrive"
HOST_FROM_GUEST = "10.0.2.2"  # QEMU user networking's alias for the host's loopback

# (kind, regex) matched against each console line; the first match names the event.
DEFAULT_EVENTS: tuple[tuple[str, str], ...] = (
    ("firmware", r"BdsDxe: (?:loading|starting) Boot\S+"),
    ("grub", r"(?i)^\s*(?:overdrive-)?grub\b.*"),
    ("kernel", r"Linux version \S+"),
    ("initrd", r"Run /init as init process"),
    ("userspace", r"Welcome to (?!GRUB).*"),
    ("multi-user", r"Reached target .*Multi-User System|OVERDRIVE-VM multi-user reached.*"),
    ("panic", r"Kernel panic - not syncing.*"),
    ("watchdog", r"(?i)watchdog.*(?:reboot|expired|did not stop).*|softdog: .*"),
    ("reboot", r"reboot: Restarting system"),
    ("poweroff", r"reboot: Power down"),
)

_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC
    r"|\x1b[()][0-9A-Za-z]"  # charset
    r"|\x1b[=>78cDEHMNOZ]"  # short escapes
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_PR_SET_PDEATHSIG = 1


class QemuError(VmError):
    """Starting or controlling QEMU failed."""


class ConsoleTimeout(QemuError):
    """The console did not show what was waited for in time (the message has its last lines)."""


@dataclass(frozen=True)
class Event:
    """A notable moment of the run: seconds since QEMU started, a kind, and the text seen."""

    t: float
    kind: str
    text: str


_accel_choice: str | None = None
_live_vms: weakref.WeakSet[Vm] = weakref.WeakSet()


def _die_with_parent() -> None:
    """preexec_fn: have the kernel kill QEMU if the Python process dies (no strays)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def ovmf_files() -> tuple[Path, Path]:
    """Return (OVMF code, OVMF vars template) from the Debian ovmf package."""
    code = os.environ.get("OVERDRIVE_VM_OVMF_CODE")
    vars_ = os.environ.get("OVERDRIVE_VM_OVMF_VARS")
    if code and vars_:
        return Path(code), Path(vars_)
    for c, v in OVMF_PAIRS:
        if os.path.exists(c) and os.path.exists(v):
            return Path(c), Path(v)
    raise QemuError("OVMF firmware not found: install the Debian package ovmf")


def probe_kvm(timeout: float = 15.0) -> tuple[bool, str]:
    """Boot OVMF briefly under KVM; return (works, reason). Works means OVMF printed its boot
    manager line on the serial console and QEMU reported no KVM error."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not usable"
    code, vars_template = ovmf_files()
    with tempfile.TemporaryDirectory(prefix="overdrive-kvm-probe-") as tmp:
        vars_copy = Path(tmp) / "vars.fd"
        shutil.copyfile(vars_template, vars_copy)
        err_path = Path(tmp) / "stderr"
        cmd = [
            which(QEMU, "qemu-system-x86"), "-accel", "kvm", "-machine", "q35", "-m", "128",
            "-no-user-config", "-nodefaults", "-display", "none", "-vga", "none",
            "-serial", "stdio",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]  # fmt: skip
        with err_path.open("wb") as err:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        assert proc.stdout is not None
        seen = b""
        deadline = time.monotonic() + timeout
        verdict = (False, f"no firmware output within {timeout:.0f} s")
        try:
            while time.monotonic() < deadline:
                errtext = err_path.read_bytes()
                if b"KVM internal error" in errtext or b"emulation failure" in errtext:
                    verdict = (False, "KVM internal error")
                    break
                if proc.poll() is not None:
                    last = errtext.decode(errors="replace").strip().splitlines()
                    verdict = (False, f"qemu exited: {last[-1] if last else proc.returncode}")
                    break
                ready, _, _ = select.select([proc.stdout], [], [], 0.2)
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 4096)
                    seen += chunk
                    if b"BdsDxe" in seen:
                        verdict = (True, "OVMF booted under KVM")
                        break
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
    return verdict


def choose_accel() -> str:
    """Return "kvm" or "tcg": the env override, else the (cached) result of :func:`probe_kvm`."""
    global _accel_choice
    forced = os.environ.get("OVERDRIVE_VM_ACCEL", "").strip().lower()
    if forced in ("kvm", "tcg"):
        return forced
    if _accel_choice is None:
        works, _reason = probe_kvm()
        _accel_choice = "kvm" if works else "tcg"
    return _accel_choice


class _Qmp:
    """A minimal QMP client: one reader thread, commands answered in order, events forwarded."""

    def __init__(self, path: Path, on_event: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        while True:
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() > deadline:
                    sock.close()
                    raise QemuError(f"QMP socket {path} did not come up") from exc
                time.sleep(0.05)
        self._sock = sock
        self._file = sock.makefile("rwb", buffering=0)
        self._on_event = on_event
        self._lock = threading.Lock()
        self._replies: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        greeting = self._file.readline()
        if b"QMP" not in greeting:
            raise QemuError("QMP socket did not greet")
        self._thread = threading.Thread(target=self._read, name="qmp-reader", daemon=True)
        self._thread.start()
        self.command("qmp_capabilities")

    def _read(self) -> None:
        try:
            for raw in self._file:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if "event" in msg:
                    self._on_event(msg)
                else:
                    with self._cond:
                        self._replies.append(msg)
                        self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def command(self, name: str, timeout: float = 10.0, **arguments: Any) -> Any:
        """Run a QMP command and return its ``return`` value."""
        with self._lock:
            msg: dict[str, Any] = {"execute": name}
            if arguments:
                msg["arguments"] = arguments
            try:
                self._file.write(json.dumps(msg).encode() + b"\n")
            except OSError as exc:
                raise QemuError(f"QMP {name}: QEMU is gone") from exc
            deadline = time.monotonic() + timeout
            with self._cond:
                while not self._replies:
                    left = deadline - time.monotonic()
                    if self._closed or left <= 0:
                        raise QemuError(f"QMP {name}: no reply")
                    self._cond.wait(left)
                reply = self._replies.pop(0)
        if "error" in reply:
            raise QemuError(f"QMP {name}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def close(self) -> None:
        """Close the socket (the reader thread ends)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()


class Vm:
    """One QEMU run of a disk image, with its serial console captured line by line.

    Use as a context manager (QEMU is killed on exit if still running) or call :meth:`start`
    and :meth:`kill`. ``fw_cfg`` maps a name to a host file or bytes, visible in the guest at
    ``/sys/firmware/qemu_fw_cfg/by_name/opt/overdrive/NAME/raw``. ``watchdog`` adds an i6300esb
    whose expiry resets the machine (the guest kernel needs its driver). The network is QEMU's
    user network: the host's loopback is 10.0.2.2 in the guest (:attr:`host_address`); nothing
    stops the guest from reaching further, so point its services at that address only.
    ``hostfwd`` adds QEMU ``hostfwd=`` rules (host → guest, e.g. ``tcp:127.0.0.1:2222-:22``).
    """

    def __init__(
        self,
        disk: Path,
        *,
        workdir: Path | None = None,
        memory_mib: int = 1024,
        smp: int = 2,
        fw_cfg: Mapping[str, Path | bytes] | None = None,
        watchdog: bool = False,
        accel: str | None = None,
        cpu: str | None = None,
        hostfwd: Sequence[str] = (),
        events: Sequence[tuple[str, str]] = (),
        extra_args: Sequence[str] = (),
        name: str = "vm",
    ) -> None:
        self.disk = Path(disk)
        if not self.disk.is_file():
            raise QemuError(f"disk image {self.disk} not found")
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"overdrive-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.memory_mib = memory_mib
        self.smp = smp
        self.fw_cfg = dict(fw_cfg or {})
        self.watchdog = watchdog
        self.accel = accel
        self.cpu = cpu
        self.hostfwd = list(hostfwd)
        self.extra_args = list(extra_args)
        self.name = name
        self.console_log = self.workdir / "console.log"
        self.qemu_log = self.workdir / "qemu.stderr"
        self._patterns = [(k, re.compile(p)) for k, p in (*events, *DEFAULT_EVENTS)]
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: _Qmp | None = None
        self._t0 = 0.0
        self._cond = threading.Condition()
        self._text = ""  # cleaned console output, all of it
        self._cursor = 0  # where the next wait_for starts searching
        self._partial = ""  # the current, unfinished console line
        self._lines: list[tuple[float, str]] = []
        self._events: list[Event] = []
        self._eof = False
        self._reader: threading.Thread | None = None
        self._log_file: Any = None

    @property
    def host_address(self) -> str:
        """The address at which the guest reaches the host's loopback services."""
        return HOST_FROM_GUEST

    # ---- lifecycle -------------------------------------------------------------------------

    def command_line(self) -> list[str]:
        """Return the QEMU command line this VM runs."""
        code, vars_template = ovmf_files()
        vars_copy = self.workdir / "OVMF_VARS.fd"
        if not vars_copy.exists():
            shutil.copyfile(vars_template, vars_copy)
        accel = self.accel or choose_accel()
        if accel == "kvm":
            accel_args = ["-accel", "kvm", "-cpu", self.cpu or "host"]
        else:
            accel_args = ["-accel", "tcg,thread=multi", "-cpu", self.cpu or "max"]
        self.accel = accel
        net = "user,id=net0"
        for fwd in self.hostfwd:
            net += f",hostfwd={fwd}"
        cmd = [
            which(QEMU, "qemu-system-x86"),
            "-name", self.name,
            "-machine", "q35",
            *accel_args,
            "-smp", str(self.smp),
            "-m", str(self.memory_mib),
            "-no-user-config", "-nodefaults",
            "-display", "none", "-vga", "none",
            "-rtc", "base=utc",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-drive", f"file={self.disk},format=raw,if=none,id=disk0,cache=writeback",
            "-device", "virtio-blk-pci,drive=disk0,bootindex=1",
            "-netdev", net,
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-device", "virtio-rng-pci",
            "-chardev", "stdio,id=serial0,signal=off",
            "-serial", "chardev:serial0",
            "-qmp", f"unix:{self._qmp_path()},server=on,wait=off",
        ]  # fmt: skip
        if self.watchdog:
            cmd += ["-device", "i6300esb", "-action", "watchdog=reset"]
        for fname, src in sorted(self.fw_cfg.items()):
            if not re.fullmatch(r"[A-Za-z0-9._-]+", fname) or len(FW_CFG_PREFIX + fname) > 55:
                raise QemuError(f"fw_cfg name {fname!r}: use [A-Za-z0-9._-], total ≤ 55 chars")
            if isinstance(src, bytes):
                path = self.workdir / f"fw_cfg-{fname}"
                path.write_bytes(src)
            else:
                path = Path(src)
                if not path.is_file():
                    raise QemuError(f"fw_cfg file {path} not found")
            cmd += ["-fw_cfg", f"name={FW_CFG_PREFIX}{fname},file={path}"]
        return cmd + self.extra_args

    def _qmp_path(self) -> Path:
        path = self.workdir / "qmp.sock"
        if len(str(path)) > 100:  # sun_path limit
            path = Path(tempfile.mkdtemp(prefix="ovd-qmp-")) / "qmp.sock"
        return path

    def start(self) -> Vm:
        """Start QEMU (the guest begins in OVMF at once)."""
        if self._proc is not None:
            raise QemuError(f"{self.name}: already started")
        cmd = self.command_line()
        qmp_path = Path(cmd[cmd.index("-qmp") + 1].split(",")[0].removeprefix("unix:"))
        qmp_path.unlink(missing_ok=True)
        (self.workdir / "qemu.cmdline").write_text(" ".join(cmd) + "\n")
        self._log_file = self.console_log.open("w", encoding="utf-8")
        with self.qemu_log.open("wb") as err:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                preexec_fn=_die_with_parent,
            )
        self._t0 = time.monotonic()
        _live_vms.add(self)
        self._event("firmware", "QEMU started (OVMF)")
        self._reader = threading.Thread(target=self._read_console, name="serial", daemon=True)
        self._reader.start()
        try:
            self._qmp = _Qmp(qmp_path, self._on_qmp_event)
        except QemuError:
            self.kill()
            raise QemuError(f"{self.name}: QEMU did not start: {self._qemu_error()}") from None
        return self

    def __enter__(self) -> Vm:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    @property
    def running(self) -> bool:
        """Whether the QEMU process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def elapsed(self) -> float:
        """Seconds since QEMU started."""
        return time.monotonic() - self._t0

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for QEMU to exit; return its exit code or None."""
        if self._proc is None:
            return None
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._finish()
        return code

    def poweroff(self, timeout: float = 90.0) -> bool:
        """Press the ACPI power button (again every 15 s) until the guest powers off; kill QEMU
        after ``timeout`` s. Return True when the guest shut down by itself."""
        if not self.running:
            self._finish()
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(QemuError):
                self.qmp("system_powerdown")
            if self.wait_exit(min(15.0, max(0.1, deadline - time.monotonic()))) is not None:
                return True
        self.kill()
        return False

    def hard_reset(self) -> None:
        """Reset the machine at once (an ignition cut: no guest shutdown, caches lost)."""
        self.qmp("system_reset")

    def kill(self) -> None:
        """Stop QEMU now (QMP quit, then SIGKILL); safe to call twice."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(QemuError):
                self.qmp("quit", timeout=3.0)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._finish()

    def _finish(self) -> None:
        """Reap QEMU's pipes and threads once it has exited."""
        if self._proc is None or self._proc.poll() is None:
            return
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        _live_vms.discard(self)

    def qmp(self, command: str, timeout: float = 10.0, **arguments: Any) -> Any:
        """Run a QMP command (e.g. ``query-status``) and return its result."""
        if self._qmp is None or not self.running:
            raise QemuError(f"{self.name}: QEMU is not running")
        return self._qmp.command(command, timeout=timeout, **arguments)

    def send(self, text: str) -> None:
        """Type ``text`` on the serial console (e.g. ``"root\\n"`` at the login prompt)."""
        if self._proc is None or self._proc.stdin is None or not self.running:
            raise QemuError(f"{self.name}: QEMU is not running")
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    # ---- console ---------------------------------------------------------------------------

    def _read_console(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            final = not chunk
            text = pending + decoder.decode(chunk, final=final)
            pending = ""
            esc = text.rfind("\x1b")
            if not final and esc != -1 and len(text) - esc < 32 and not _ANSI.match(text, esc):
                text, pending = text[:esc], text[esc:]
            self._feed(text)
            if final:
                break
        with self._cond:
            if self._partial:
                self._complete_line(self._partial)
                self._partial = ""
            self._eof = True
            self._cond.notify_all()

    def _feed(self, raw: str) -> None:
        text = _ANSI.sub("", raw).replace("\r", "")
        text = _CONTROL.sub("", text)
        if not text:
            return
        with self._cond:
            self._text += text
            parts = (self._partial + text).split("\n")
            self._partial = parts.pop()
            for line in parts:
                self._complete_line(line)
            self._cond.notify_all()

    def _complete_line(self, line: str) -> None:
        t = self.elapsed()
        self._lines.append((t, line))
        if self._log_file is not None:
            self._log_file.write(f"[{t:9.3f}] {line}\n")
            self._log_file.flush()
        for kind, pattern in self._patterns:
            m = pattern.search(line)
            if m:
                self._events.append(Event(t, kind, m.group(0).strip()))
                break

    def _event(self, kind: str, text: str) -> None:
        with self._cond:
            t = self.elapsed()
            self._events.append(Event(t, kind, text))
            if self._log_file is not None:
                self._log_file.write(f"[{t:9.3f}] ## {kind}: {text}\n")
                self._log_file.flush()

    def _on_qmp_event(self, msg: Mapping[str, Any]) -> None:
        name = str(msg.get("event"))
        data = msg.get("data", {})
        if name == "RESET":
            self._event("reset", f"machine reset ({'guest' if data.get('guest') else 'host'})")
            self._event("firmware", "OVMF restarts after reset")
        elif name in ("SHUTDOWN", "POWERDOWN", "WATCHDOG", "GUEST_PANICKED", "STOP"):
            self._event(name.lower(), f"QMP {name} {json.dumps(data, sort_keys=True)}")

    def mark(self) -> int:
        """Return the current end of the console text (pass as ``since`` to :meth:`wait_for`)."""
        with self._cond:
            return len(self._text)

    def wait_for(
        self,
        pattern: str | re.Pattern[str],
        timeout: float,
        since: int | None = None,
        partial: bool = False,
    ) -> re.Match[str]:
        """Wait until the console shows ``pattern`` (a regex, multiline) and return the match.

        Searching starts where the previous successful ``wait_for`` ended (or at ``since``, an
        offset from :meth:`mark`), so waiting twice for the same marker waits for two of them.
        Only complete lines are searched (so ``.*$`` never matches half a line) unless
        ``partial`` (for prompts that end without a newline).
        Raise :class:`ConsoleTimeout` with the last 40 console lines after ``timeout`` s, or as
        soon as QEMU exits without showing it.
        """
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            start = self._cursor if since is None else since
            while True:
                end = len(self._text) if partial else self._text.rfind("\n") + 1
                m = regex.search(self._text, start, max(start, end))
                if m:
                    self._cursor = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    why = "QEMU exited" if self._eof else f"timed out after {timeout:.0f} s"
                    raise ConsoleTimeout(
                        f"{self.name}: {why} waiting for /{regex.pattern}/"
                        f" ({self.accel}, {self.elapsed():.0f} s since start; log:"
                        f" {self.console_log}); last 40 console lines:\n" + self.tail(40)
                    )
                self._cond.wait(min(left, 1.0))

    def tail(self, n: int = 40) -> str:
        """Return the last ``n`` console lines (with their timestamps)."""
        with self._cond:
            lines = [f"[{t:8.3f}] {ln}" for t, ln in self._lines[-n:]]
            if self._partial:
                lines.append(f"[{self.elapsed():8.3f}] {self._partial}")
        return "\n".join(lines[-n:])

    @property
    def lines(self) -> list[tuple[float, str]]:
        """Every complete console line as (seconds since start, text)."""
        with self._cond:
            return list(self._lines)

    @property
    def output(self) -> str:
        """All console output so far (escape sequences removed)."""
        with self._cond:
            return self._text

    @property
    def events(self) -> list[Event]:
        """The notable events recognised so far (see ``DEFAULT_EVENTS``) and QMP events."""
        with self._cond:
            return list(self._events)

    @property
    def timeline(self) -> list[tuple[float, str]]:
        """The events as (seconds since start, "kind: text")."""
        return [(e.t, f"{e.kind}: {e.text}") for e in self.events]

    def _qemu_error(self) -> str:
        with contextlib.suppress(OSError):
            lines = [ln for ln in self.qemu_log.read_text(errors="replace").splitlines() if ln]
            if lines:
                return lines[-1]
        return "no error output"


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a QEMU behind when the Python process ends."""
    for vm in list(_live_vms):
        with contextlib.suppress(Exception):
            vm.kill()


__all__ = [
    "DEFAULT_EVENTS",
    "FW_CFG_PREFIX",
    "GUEST_FW_CFG_DIR",
    "HOST_FROM_GUEST",
    "ConsoleTimeout",
    "Event",
    "QemuError",
    "Vm",
    "choose_accel",
    "ovmf_files",
    "probe_kvm",
]

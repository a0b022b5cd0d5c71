"""Where the boot state lives: a JSON file (simulation), the U-Boot environment, or GRUB's grubenv.

Every backend implements :class:`BootEnv` (``load``/``save``/``describe``) and maps a
:class:`~overdrive.client.bootchooser.BootState` onto the variables its bootloader's script reads, so the
updater and the bootloader share one state. The variables follow RAUC's integrations so existing
boot scripts keep working; Overdrive adds one "good" flag per slot (see ``docs/boot-control.md``).

* :class:`FileBootEnv` -- a JSON file written atomically; for ``overdrive vehicle boot`` and tests.
* :class:`UBootEnv` -- ``fw_printenv``/``fw_setenv`` (libubootenv or U-Boot's own tools):
  ``BOOT_ORDER="A B"``, ``BOOT_<slot>_LEFT`` (hex, as RAUC and U-Boot's ``setexpr`` write it),
  ``BOOT_<slot>_GOOD``, ``BOOTED_SLOT``; optionally ``upgrade_available``/``bootcount``.
* :class:`GrubEnv` -- ``grub-editenv``: ``ORDER="A B"``, ``<slot>_LEFT`` (decimal, at most
  :data:`GRUB_MAX_TRIES`: GRUB's script counts down with a chain of comparisons),
  ``<slot>_GOOD``, ``BOOTED_SLOT``.

``BOOTED_SLOT`` is written by the boot scripts (``client/bootscripts/``), only when it changes:
the record of which slot the bootloader started last. The updater never writes it, except
through the simulated bootloader of the file backend.

Backends that call tools write all variables of one save in one tool run (one environment
write), skip the write when nothing changed (flash wear), and read the result back: a tool that
exits 0 but ignored a line (libubootenv skips script lines it cannot parse) is an error, not a
silently different state. Tool failures raise :class:`BootEnvError` naming the tool and what it said.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

from overdrive.client.bootchooser import BootError, BootState, SlotState, cap_tries, trial_slot
from overdrive.storage.local import atomic_write

_TOOL_TIMEOUT = 30.0
_FILE_FORMAT = "overdrive-boot-env"
_FILE_VERSION = 2  # 2 added "booted"; version 1 files are still read
_HEX = re.compile(r"(0[xX])?[0-9a-fA-F]+")
_DECIMAL = re.compile(r"[0-9]")
#: The most tries the GRUB script can count down from (one comparison per value).
GRUB_MAX_TRIES = 9
#: The boot scripts' record of the slot they started last.
BOOTED_VAR = "BOOTED_SLOT"


class BootEnvError(BootError):
    """The boot environment cannot be read or written: a tool failed, a file is missing or bad."""


class BootEnv(ABC):
    """Persistent storage of the :class:`BootState` shared with the bootloader."""

    kind: ClassVar[str]

    @abstractmethod
    def load(self) -> BootState:
        """The current state; :class:`BootEnvError` if it is missing or unreadable."""

    @abstractmethod
    def save(self, state: BootState) -> None:
        """Store ``state`` so that a power cut leaves either the old or the new state."""

    @abstractmethod
    def describe(self) -> str:
        """Where the state lives, for logs and error messages."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def open_boot_env(kind: str, **options: Any) -> BootEnv:
    """The backend ``kind`` ("file", "uboot" or "grub") built from its constructor's options."""
    backends: dict[str, type[FileBootEnv | UBootEnv | GrubEnv]] = {
        "file": FileBootEnv,
        "uboot": UBootEnv,
        "grub": GrubEnv,
    }
    cls = backends.get(kind)
    if cls is None:
        raise BootEnvError(f"unknown boot env kind {kind!r}: choose one of {', '.join(backends)}")
    try:
        return cls(**options)
    except TypeError as e:
        raise BootEnvError(f"bad options for the {kind} boot env: {e}") from None


# --- shared helpers -------------------------------------------------------------------------------


def _one_line(text: str, limit: int = 300) -> str:
    line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _run(argv: list[str]) -> str:
    """Run a bootloader tool; its stdout, or :class:`BootEnvError` naming it and its complaint."""
    tool = argv[0]
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=_TOOL_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise BootEnvError(f"{tool}: not found; install it or configure its path") from None
    except subprocess.TimeoutExpired:
        raise BootEnvError(f"{tool}: no answer after {_TOOL_TIMEOUT:.0f} s") from None
    except OSError as e:
        raise BootEnvError(f"{tool}: cannot run: {e.strerror or e}") from None
    if proc.returncode != 0:
        said = _one_line(proc.stderr) or _one_line(proc.stdout) or "no message"
        how = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit {proc.returncode}"
        )
        raise BootEnvError(f"{tool} failed ({how}): {said}")
    return proc.stdout


def _parse_listing(text: str) -> dict[str, str]:
    """``NAME=VALUE`` lines as printed by ``fw_printenv`` and ``grub-editenv list``.

    Lines without ``=`` are continuation lines of multi-line values and are skipped; only
    Overdrive's own single-line variables matter here.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name and " " not in name:
            out.setdefault(name, value)
    return out


def _flag(value: str, name: str, where: str) -> bool:
    if value not in ("0", "1"):
        raise BootEnvError(f"{where}: {name}={value!r} is not 0 or 1")
    return value == "1"


def _file_mode(path: Path, default: int) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:  # missing (first save), or unreachable: the write will say why
        return default


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    def write(f: BinaryIO) -> None:
        f.write(data)
        os.fchmod(f.fileno(), mode)

    try:
        atomic_write(path, write)
    except OSError as e:
        raise BootEnvError(f"cannot write {path}: {e.strerror or e}") from None


def _changes(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """The variables to write (an empty value means "unset", the same as a missing one)."""
    return {k: v for k, v in wanted.items() if current.get(k, "") != v}


def _check_written(
    after: Mapping[str, str], changes: Mapping[str, str], tool: str, hint: str = ""
) -> None:
    """Read-back check: a tool that exits 0 but skipped a line is an error."""
    for k, v in changes.items():
        if after.get(k, "") != v:
            got = "missing" if k not in after else repr(after[k])
            raise BootEnvError(f"{tool} reported success but {k} is {got}, not {v!r}{hint}")


def _check_slot_set(state: BootState, slots: tuple[str, ...], where: str) -> None:
    if sorted(state.order) != sorted(slots):
        raise BootEnvError(
            f"{where} is configured for slots {' '.join(slots)}, "
            f"the state has {' '.join(state.order)}"
        )


def _order_from(raw: str, var: str, slots: tuple[str, ...], where: str) -> list[str]:
    """The slot names in a ``BOOT_ORDER``/``ORDER`` value, then configured slots it omits."""
    tokens = raw.split()
    for t in tokens:
        if t not in slots:
            raise BootEnvError(
                f"{where}: {var}={raw!r} names slot {t!r}, not one of {' '.join(slots)}"
            )
        if tokens.count(t) > 1:
            raise BootEnvError(f"{where}: {var}={raw!r} lists slot {t} twice")
    # The boot scripts never start a slot missing from the order (RAUC's mark-bad removes it):
    # such a slot goes last, and the loaders read it as bad.
    return tokens + [s for s in slots if s not in tokens]


def _flag_var(env: Mapping[str, str], name: str, where: str) -> bool:
    raw = env.get(name)
    if raw is None:
        raise BootEnvError(
            f"{where} has no {name}: initialise the boot state first ('overdrive vehicle "
            "provision' writes it; a plain RAUC environment is not read, its counting differs)"
        )
    return _flag(raw, name, where)


def _booted_from(env: Mapping[str, str], slots: tuple[str, ...], where: str) -> str | None:
    """The ``BOOTED_SLOT`` record: ``None`` if absent or empty; an error if it names no slot."""
    raw = env.get(BOOTED_VAR, "")
    if not raw:
        return None
    if raw not in slots:
        raise BootEnvError(f"{where}: {BOOTED_VAR}={raw!r} is not one of {' '.join(slots)}")
    return raw


def _slots_option(slots: Iterable[str]) -> tuple[str, ...]:
    names = tuple(slots)
    try:
        BootState(tuple(SlotState(n) for n in names))
    except BootError as e:
        raise BootEnvError(f"bad slots option: {e}") from None
    return names


# --- file -----------------------------------------------------------------------------------------


class FileBootEnv(BootEnv):
    """The boot state as a small JSON file, replaced atomically on every save.

    For simulation and tests, where this file stands in for the bootloader's environment. It is
    never created implicitly: :meth:`init` writes the first state, and :meth:`load` of a missing
    file is an error (a vehicle that lost its boot state must not silently start from defaults).
    """

    kind = "file"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"file {self.path}"

    def init(self, state: BootState | None = None, *, overwrite: bool = False) -> BootState:
        """Create the file with ``state`` (default: A good, B empty); refuses to overwrite."""
        if self.path.exists() and not overwrite:
            raise BootEnvError(f"boot env {self.path} already exists")
        state = state if state is not None else BootState.initial()
        self.save(state)
        return state

    def load(self) -> BootState:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise BootEnvError(f"no boot env at {self.path}: initialise it first") from None
        except OSError as e:
            raise BootEnvError(f"cannot read boot env {self.path}: {e.strerror or e}") from None
        try:
            doc = json.loads(raw)
            return _state_from_json(doc)
        except (ValueError, BootError, KeyError, TypeError) as e:
            detail = str(e) if isinstance(e, BootError) else f"{type(e).__name__}: {e}"
            raise BootEnvError(f"boot env {self.path} is not valid: {detail}") from None

    def save(self, state: BootState) -> None:
        data = (json.dumps(_state_to_json(state), indent=2) + "\n").encode()
        _write_atomically(self.path, data, _file_mode(self.path, 0o644))


def _state_to_json(state: BootState) -> dict[str, object]:
    return {
        "format": _FILE_FORMAT,
        "version": _FILE_VERSION,
        "slots": [
            {"name": s.name, "tries_left": s.tries_left, "good": s.good} for s in state.slots
        ],
        "booted": state.booted,
    }


def _state_from_json(doc: object) -> BootState:
    if not isinstance(doc, dict) or doc.get("format") != _FILE_FORMAT:
        raise ValueError(f"not an {_FILE_FORMAT} document")
    if doc.get("version") not in (1, _FILE_VERSION):
        raise ValueError(f"unsupported version {doc.get('version')!r}")
    slots = doc["slots"]
    if not isinstance(slots, list):
        raise ValueError("'slots' must be a list")
    booted = doc.get("booted")
    if booted is not None and not isinstance(booted, str):
        raise ValueError("'booted' must be a slot name or null")
    return BootState(tuple(SlotState(s["name"], s["tries_left"], s["good"]) for s in slots), booted)


# --- U-Boot ---------------------------------------------------------------------------------------

ScriptSyntax = Literal["key=value", "key value"]


class UBootEnv(BootEnv):
    """The boot state in the U-Boot environment, via ``fw_printenv``/``fw_setenv``.

    Variables (RAUC's U-Boot integration, plus one Overdrive flag per slot and the record):

    * ``BOOT_ORDER`` -- slot names, space-separated, highest priority first;
    * ``BOOT_<slot>_LEFT`` -- tries left of a slot on trial, in hex (RAUC writes ``%x``, U-Boot's
      ``setexpr`` computes in hex);
    * ``BOOT_<slot>_GOOD`` -- ``1`` for a committed slot, else ``0``. Required: a plain RAUC
      environment (without it) is refused rather than guessed at, since RAUC's script counts
      every boot and ours does not; provisioning writes the full state;
    * ``BOOTED_SLOT`` -- the slot the boot script started last (it writes it when it changes);
    * with ``bootcount=True`` also U-Boot's bootcount feature: ``upgrade_available`` is ``1``
      while a slot is on trial, else ``0``, and ``bootcount`` is reset to ``0`` whenever
      ``upgrade_available`` is set or cleared. These two are written, never read.

    A save is one ``fw_setenv --script`` run, i.e. one environment write (with a redundant
    environment in ``fw_env.config``, a power cut leaves the old copy valid). libubootenv's script
    lines are ``key=value``; U-Boot's own ``tools/env`` fw_setenv wants ``key value``: pass
    ``script_syntax="key value"`` for it.
    """

    kind = "uboot"

    def __init__(
        self,
        config: str | os.PathLike[str] | None = None,
        fw_printenv: str = "fw_printenv",
        fw_setenv: str = "fw_setenv",
        *,
        slots: Iterable[str] = ("A", "B"),
        bootcount: bool = False,
        script_syntax: ScriptSyntax = "key=value",
    ) -> None:
        if script_syntax not in ("key=value", "key value"):
            raise BootEnvError(
                f"bad script_syntax {script_syntax!r}: use 'key=value' (libubootenv) "
                "or 'key value' (U-Boot's tools/env)"
            )
        self.config = None if config is None else Path(config)
        self.fw_printenv = fw_printenv
        self.fw_setenv = fw_setenv
        self.slots = _slots_option(slots)
        self.bootcount = bootcount
        self.script_syntax = script_syntax

    def describe(self) -> str:
        config = self.config if self.config is not None else "the default fw_env.config"
        return f"U-Boot env via {self.fw_printenv}/{self.fw_setenv} ({config})"

    def _config_args(self) -> list[str]:
        return [] if self.config is None else ["-c", str(self.config)]

    def read_vars(self) -> dict[str, str]:
        """All variables of the environment, as ``fw_printenv`` lists them."""
        return _parse_listing(_run([self.fw_printenv, *self._config_args()]))

    def load(self) -> BootState:
        return self._state_from(self.read_vars())

    def _state_from(self, env: Mapping[str, str]) -> BootState:
        where = self.describe()
        raw_order = env.get("BOOT_ORDER")
        if raw_order is None:
            raise BootEnvError(f"{where} has no BOOT_ORDER: initialise the boot state first")
        listed = raw_order.split()
        slots = []
        for name in _order_from(raw_order, "BOOT_ORDER", self.slots, where):
            left_var = f"BOOT_{name}_LEFT"
            left_raw = env.get(left_var)
            if left_raw is None:
                raise BootEnvError(f"{where} has no {left_var}: initialise the boot state first")
            if not _HEX.fullmatch(left_raw):
                raise BootEnvError(f"{where}: {left_var}={left_raw!r} is not a hex number")
            good = _flag_var(env, f"BOOT_{name}_GOOD", where)
            if name not in listed:
                slots.append(SlotState(name))  # the script never starts it: bad
            else:
                slots.append(SlotState(name, int(left_raw, 16), good))
        return BootState(tuple(slots), _booted_from(env, self.slots, where))

    def _vars_for(self, state: BootState) -> dict[str, str]:
        wanted = {"BOOT_ORDER": " ".join(state.order)}
        for s in state.slots:
            wanted[f"BOOT_{s.name}_LEFT"] = format(s.tries_left, "x")
            wanted[f"BOOT_{s.name}_GOOD"] = "1" if s.good else "0"
        wanted[BOOTED_VAR] = state.booted or ""
        if self.bootcount:
            wanted["upgrade_available"] = "0" if trial_slot(state) is None else "1"
        return wanted

    def save(self, state: BootState) -> None:
        _check_slot_set(state, self.slots, self.describe())
        current = self.read_vars()
        wanted = self._vars_for(state)
        changes = _changes(current, wanted)
        if "upgrade_available" in changes:
            changes["bootcount"] = "0"
        if not changes:
            return
        sep = "=" if self.script_syntax == "key=value" else " "
        script = "".join(f"{k}{sep}{v}\n" for k, v in changes.items())
        try:
            with tempfile.TemporaryDirectory(prefix="overdrive-fwenv-") as tmp:
                path = Path(tmp) / "script"
                path.write_text(script)
                _run([self.fw_setenv, *self._config_args(), "--script", str(path)])
        except OSError as e:
            raise BootEnvError(f"cannot write the fw_setenv script: {e.strerror or e}") from None
        _check_written(
            self.read_vars(),
            changes,
            self.fw_setenv,
            f" (script_syntax is {self.script_syntax!r}; check it matches this fw_setenv)",
        )


# --- GRUB -----------------------------------------------------------------------------------------


class GrubEnv(BootEnv):
    """The boot state in a GRUB environment block, via ``grub-editenv``.

    Variables (read and written by ``client/bootscripts/grub.cfg``):

    * ``ORDER`` -- slot names, space-separated, highest priority first;
    * ``<slot>_LEFT`` -- tries left of a slot on trial, decimal ``0`` to :data:`GRUB_MAX_TRIES`
      (GRUB's script language has no arithmetic: the script counts down with one comparison
      per value, so a state with more tries is stored capped);
    * ``<slot>_GOOD`` -- ``1`` for a committed slot, else ``0``;
    * ``BOOTED_SLOT`` -- the slot the script started last (it writes it when it changes).

    RAUC's GRUB variables (``<slot>_OK``/``<slot>_TRY``) are not used: RAUC's script spends a
    try on every boot of every slot, which is what lets power cycles roll back a committed slot.

    The file is edited on a scratch copy and then replaced atomically (temp, fsync, rename), so
    a power cut leaves the old or the new block whatever the grub-editenv version does.
    """

    kind = "grub"

    def __init__(
        self,
        env_file: str | os.PathLike[str],
        grub_editenv: str = "grub-editenv",
        *,
        slots: Iterable[str] = ("A", "B"),
    ) -> None:
        self.env_file = Path(env_file)
        self.grub_editenv = grub_editenv
        self.slots = _slots_option(slots)

    def describe(self) -> str:
        return f"GRUB env {self.env_file} via {self.grub_editenv}"

    def _list(self, path: Path) -> dict[str, str]:
        return _parse_listing(_run([self.grub_editenv, str(path), "list"]))

    def read_vars(self) -> dict[str, str]:
        """All variables of the environment block; the file must exist."""
        # grub-editenv creates a missing file on `list`: check first, a missing env is an error.
        if not self.env_file.is_file():
            raise BootEnvError(
                f"no GRUB env at {self.env_file}: "
                f"create it with '{self.grub_editenv} {self.env_file} create'"
            )
        return self._list(self.env_file)

    def load(self) -> BootState:
        env = self.read_vars()
        where = f"GRUB env {self.env_file}"
        raw_order = env.get("ORDER")
        if raw_order is None:
            raise BootEnvError(f"{where} has no ORDER: initialise the boot state first")
        listed = raw_order.split()
        slots = []
        for name in _order_from(raw_order, "ORDER", self.slots, where):
            left_var = f"{name}_LEFT"
            left_raw = env.get(left_var)
            if left_raw is None:
                raise BootEnvError(f"{where} has no {left_var}: initialise the boot state first")
            if not _DECIMAL.fullmatch(left_raw):
                raise BootEnvError(
                    f"{where}: {left_var}={left_raw!r} is not a number 0-{GRUB_MAX_TRIES}"
                )
            good = _flag_var(env, f"{name}_GOOD", where)
            if name not in listed:
                slots.append(SlotState(name))  # the script never starts it: bad
            else:
                slots.append(SlotState(name, int(left_raw), good))
        return BootState(tuple(slots), _booted_from(env, self.slots, where))

    @staticmethod
    def _vars_for(state: BootState) -> dict[str, str]:
        wanted = {"ORDER": " ".join(state.order)}
        for s in cap_tries(state, GRUB_MAX_TRIES).slots:
            wanted[f"{s.name}_LEFT"] = str(s.tries_left)
            wanted[f"{s.name}_GOOD"] = "1" if s.good else "0"
        wanted[BOOTED_VAR] = state.booted or ""
        return wanted

    def save(self, state: BootState) -> None:
        _check_slot_set(state, self.slots, f"GRUB env {self.env_file}")
        exists = self.env_file.is_file()
        current = self._list(self.env_file) if exists else {}
        changes = _changes(current, self._vars_for(state))
        if not changes:
            return
        target = Path(os.path.realpath(self.env_file))  # keep a symlinked grubenv a symlink
        try:
            with tempfile.TemporaryDirectory(prefix="overdrive-grubenv-") as tmp:
                data = self._edit_copy(Path(tmp) / "grubenv", target if exists else None, changes)
        except OSError as e:
            raise BootEnvError(f"cannot stage {self.env_file}: {e.strerror or e}") from None
        _write_atomically(target, data, _file_mode(target, 0o644))
        # grubenv usually lives on FAT (the EFI system partition), where fsyncing the directory
        # does not make the rename durable: flush the file systems, so a power cut right after
        # this save cannot bring back the old block (or a directory without either).
        os.sync()

    def _edit_copy(self, scratch: Path, source: Path | None, changes: Mapping[str, str]) -> bytes:
        """Apply ``changes`` to a copy of ``source`` (or a new block) and return its bytes."""
        if source is not None:
            scratch.write_bytes(source.read_bytes())
        else:
            _run([self.grub_editenv, str(scratch), "create"])
        _run([self.grub_editenv, str(scratch), "set", *(f"{k}={v}" for k, v in changes.items())])
        _check_written(self._list(scratch), changes, self.grub_editenv)
        return scratch.read_bytes()

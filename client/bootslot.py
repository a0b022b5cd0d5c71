"""Which slot is running: from the kernel command line, else from the bootloader's own record.

On a real device the bootloader chose the slot before Linux started, and it says which on the
kernel command line (``overdrive.slot=A``; RAUC's ``rauc.slot=A`` is accepted too), so that is
the first source. The boot scripts also record the slot they started in the boot environment
(``BOOTED_SLOT``, :attr:`~overdrive.client.bootchooser.BootState.booted`): the second source, for a
bootloader configuration that does not pass the command-line argument. The simulated bootloader
of the file backend has no kernel, so only its record counts there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from overdrive.client.bootchooser import BootState
from overdrive.client.errors import ClientError

CMDLINE = Path("/proc/cmdline")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_ARGS = ("overdrive.slot", "rauc.slot")


class UnknownBootedSlot(ClientError):
    """Neither the kernel command line nor the boot environment says which slot is running."""


@dataclass(frozen=True)
class Booted:
    """The running slot and where that was learned (for messages)."""

    slot: str
    source: str


def slot_from_cmdline(cmdline: str) -> str | None:
    """The value of the last ``overdrive.slot=`` (else ``rauc.slot=``) argument, if any."""
    found: dict[str, str] = {}
    for word in cmdline.split():
        name, sep, value = word.partition("=")
        if sep and name in _ARGS:
            found[name] = value
    for name in _ARGS:
        if name in found:
            return found[name]
    return None


def find_booted(cmdline: str | None, env: BootState, *, where: str) -> Booted:
    """The slot that booted; :class:`UnknownBootedSlot` if it cannot be told or is not a slot.

    ``cmdline`` is ``None`` where there is no kernel to ask (the simulated bootloader).
    """
    if cmdline is not None:
        slot = slot_from_cmdline(cmdline)
        if slot is not None:
            if slot not in env.order:
                raise UnknownBootedSlot(
                    f"the kernel command line says slot {slot!r}, which is not one of "
                    f"{' '.join(env.order)}: a rescue system does not run post-boot"
                )
            return Booted(slot, "kernel command line")
    if env.booted is not None:
        return Booted(env.booted, f"the boot environment's record ({where})")
    raise UnknownBootedSlot(
        "cannot tell which slot is running: put overdrive.slot=<slot> on the kernel command "
        f"line, or use Overdrive's boot script, which records it in {where}"
    )


def read_text(path: Path, what: str, limit: int = 1 << 16) -> str:
    """A small system file (the command line, the boot id) as text; ClientError if unreadable."""
    try:
        with path.open("rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError as e:
        raise ClientError(f"cannot read the {what} from {path}: {e.strerror or e}") from e

"""Which A/B slot to boot: the bootloader's decision and the updater's marks, as pure functions.

The semantics follow RAUC's bootchooser with U-Boot's ``BOOT_ORDER``/``BOOT_x_LEFT`` scheme, so the
same rules can run in a real bootloader script (see ``docs/boot-control.md``) and here, in Python,
for the simulated bootloader (``overdrive vehicle boot``) and for the updater's own bookkeeping:

* **boot order** -- every slot, highest priority first;
* **tries left** per slot -- how many more times the bootloader may start it without the updater
  confirming it; each boot of a slot costs one try;
* **good** per slot -- the slot holds a committed image that booted healthy once: the fallback.

Lifecycle of an update into the inactive slot ``B`` while ``A`` is good:

1. :func:`mark_bad` (B) before writing into it, so a half-written slot is never booted;
2. :func:`mark_try_once` (B) once the image is written and verified: B goes first in the order
   with one try and is not good;
3. the bootloader runs :func:`choose_boot`: B has a try, so it boots B and spends the try;
4. healthy: :func:`mark_good` (B) -- commit. Unhealthy: :func:`mark_bad` (B) and reboot, which
   boots A. A crash or hang before either: the next :func:`choose_boot` finds B without tries
   and boots A, the updater sees that the slot under trial (:func:`trial_slot`) is not the one
   that booted and marks it bad.

A slot is never started more often than it has tries, so a bad image cannot boot-loop. When no
slot has tries left (a good slot whose tries ran out because nobody re-confirmed it), the
bootloader falls back to the first good slot in the order rather than to nothing.

U-Boot's bootcount feature (``upgrade_available``/``bootcount``/``bootlimit``) is the same idea
with a single counter; its ``upgrade_available`` flag corresponds to ``trial_slot(state) is not
None`` here. This module does no I/O: ``client.bootenv`` loads and saves a :class:`BootState`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from overdrive.errors import OverdriveError

DEFAULT_TRIES = 3
"""Tries a slot gets when it is committed (RAUC's and U-Boot's usual default)."""

TRY_ONCE = 1
"""Tries a freshly installed slot gets: one boot, then it must be committed or it is skipped."""

_SLOT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class BootError(OverdriveError):
    """Boot control was asked to do something impossible or given an invalid boot state."""


class NoBootableSlot(BootError):
    """No slot has tries left and none is good: the bootloader has nothing it may start."""


@dataclass(frozen=True)
class SlotState:
    """One slot as the bootloader sees it.

    ``name`` is the slot's boot name ("A", "B"); it becomes part of bootloader variable names,
    so it is a letter followed by letters, digits or underscores.
    """

    name: str
    tries_left: int = 0
    good: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _SLOT_NAME.fullmatch(self.name):
            raise BootError(
                f"invalid slot name {self.name!r}: use a letter followed by letters, digits or _"
            )
        tries = self.tries_left
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 0:
            raise BootError(f"slot {self.name}: tries left must be an integer >= 0, not {tries!r}")
        if not isinstance(self.good, bool):
            raise BootError(f"slot {self.name}: good must be true or false, not {self.good!r}")


@dataclass(frozen=True)
class BootState:
    """All slots, in boot order (highest priority first); immutable and comparable.

    The order of :attr:`slots` *is* the boot order, so there is nothing to keep in sync.
    """

    slots: tuple[SlotState, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.slots, tuple):
            object.__setattr__(self, "slots", tuple(self.slots))
        if not self.slots:
            raise BootError("a boot state needs at least one slot")
        for s in self.slots:
            if not isinstance(s, SlotState):
                raise BootError(f"a boot state holds SlotState items, not {type(s).__name__}")
        names = [s.name for s in self.slots]
        for name in names:
            if names.count(name) > 1:
                raise BootError(f"slot {name} appears twice in the boot order")

    @classmethod
    def initial(
        cls,
        slots: Iterable[str] = ("A", "B"),
        *,
        good: str | None = "A",
        tries: int = DEFAULT_TRIES,
    ) -> BootState:
        """A factory-fresh state: ``good`` is committed with ``tries`` and first, the rest empty.

        ``good=None`` describes a device where no slot has been confirmed yet (nothing to fall
        back to).
        """
        names = list(slots)
        if good is not None:
            if good not in names:
                raise BootError(f"good slot {good} is not one of {' '.join(names)}")
            names.remove(good)
            names.insert(0, good)
        return cls(tuple(SlotState(n, tries if n == good else 0, n == good) for n in names))

    @property
    def order(self) -> tuple[str, ...]:
        """Slot names, highest boot priority first."""
        return tuple(s.name for s in self.slots)

    def slot(self, name: str) -> SlotState:
        """The state of slot ``name``; :class:`BootError` if there is no such slot."""
        for s in self.slots:
            if s.name == name:
                return s
        raise BootError(f"no slot {name!r} (slots: {' '.join(self.order)})")

    def good_slots(self) -> tuple[str, ...]:
        """Names of the good slots, in boot order."""
        return tuple(s.name for s in self.slots if s.good)

    def describe(self) -> str:
        """One line for logs and ``status`` output, e.g. ``B(tries=1) A(tries=3,good)``."""
        return " ".join(
            f"{s.name}(tries={s.tries_left}{',good' if s.good else ''})" for s in self.slots
        )

    def _with(self, new: SlotState) -> BootState:
        return BootState(tuple(new if s.name == new.name else s for s in self.slots))


def _check_tries(tries: int, what: str) -> None:
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise BootError(f"{what}: tries must be an integer >= 1, not {tries!r}")


def mark_try_once(state: BootState, slot: str, *, tries: int = TRY_ONCE) -> BootState:
    """After installing into ``slot``: boot it next, ``tries`` times at most, not yet good.

    ``slot`` moves to the front of the order. Any other slot that was waiting for a trial (not
    good, tries left) loses its tries: only one trial runs at a time. Good slots other than
    ``slot`` keep their mark, so there is always something to fall back to; trying the only good
    slot is refused, because its image is the one being overwritten.
    """
    _check_tries(tries, f"try slot {slot}")
    target = state.slot(slot)
    if target.good and state.good_slots() == (slot,):
        raise BootError(
            f"refusing to try slot {slot}: it is the only good slot; install into another slot"
        )
    rest = tuple(
        s if s.good or s.tries_left == 0 else replace(s, tries_left=0)
        for s in state.slots
        if s.name != slot
    )
    return BootState((SlotState(slot, tries, False), *rest))


def choose_boot(state: BootState) -> tuple[str, BootState]:
    """The bootloader's decision: which slot to start now, and the state to save before that.

    The first slot in the order with tries left is chosen and loses one try. If no slot has
    tries left, the first good slot is chosen and nothing changes (no try is spent on it).
    :class:`NoBootableSlot` if no slot has tries and none is good. Deterministic.
    """
    for s in state.slots:
        if s.tries_left > 0:
            return s.name, state._with(replace(s, tries_left=s.tries_left - 1))
    for s in state.slots:
        if s.good:
            return s.name, state
    raise NoBootableSlot(
        f"no bootable slot: none of {' '.join(state.order)} has tries left or is marked good"
    )


def next_boot(state: BootState) -> str:
    """The slot :func:`choose_boot` would start, without spending a try."""
    return choose_boot(state)[0]


def mark_good(state: BootState, slot: str, *, tries: int = DEFAULT_TRIES) -> BootState:
    """Commit ``slot`` after a healthy boot: good, tries reset to ``tries``; order unchanged.

    A committed trial slot is already first. Committing the running fallback slot while another
    slot waits for its trial leaves that trial in place (as RAUC's ``mark-good`` does); calling
    this on every healthy boot keeps the running slot's tries topped up.
    """
    _check_tries(tries, f"mark slot {slot} good")
    return state._with(replace(state.slot(slot), tries_left=tries, good=True))


def mark_bad(state: BootState, slot: str) -> BootState:
    """``slot`` must not be booted: no tries, not good, last in the order.

    Marking the last good slot bad is allowed (it is a fact the updater learned), and leaves the
    device with :class:`NoBootableSlot` unless another slot is tried or committed.
    """
    target = state.slot(slot)
    rest = tuple(s for s in state.slots if s.name != slot)
    return BootState((*rest, replace(target, tries_left=0, good=False)))


def active_good_slot(state: BootState) -> str | None:
    """The committed slot of highest priority: what a failed trial falls back to; None if none."""
    good = state.good_slots()
    return good[0] if good else None


def trial_slot(state: BootState) -> str | None:
    """The slot under trial: first in the order and not (yet) good; None when nothing is on trial.

    It stays the trial slot after its boot has spent its tries, until :func:`mark_good` or
    :func:`mark_bad`. If the slot that actually booted differs, the trial failed. This is U-Boot's
    ``upgrade_available``.
    """
    first = state.slots[0]
    return None if first.good else first.name


def other_slot(state: BootState, slot: str) -> str:
    """In an A/B pair, the slot that is not ``slot`` (where the next update is installed)."""
    state.slot(slot)
    if len(state.slots) != 2:
        raise BootError(
            f"'other slot' needs exactly two slots, this state has {' '.join(state.order)}"
        )
    return next(s.name for s in state.slots if s.name != slot)


def cap_tries(state: BootState, limit: int) -> BootState:
    """The same state with every slot's tries capped at ``limit``.

    For bootloaders that cannot count (GRUB's one-shot ``x_TRY`` flag can only say 0 or 1).
    """
    if limit < 0:
        raise BootError(f"tries limit must be >= 0, not {limit}")
    return BootState(tuple(replace(s, tries_left=min(s.tries_left, limit)) for s in state.slots))

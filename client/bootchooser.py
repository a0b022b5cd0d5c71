"""Which A/B slot to boot: the bootloader's decision and the updater's marks, as pure functions.

The same rules run in the real bootloaders' scripts (``client/bootscripts/``, see
``docs/boot-control.md``), here in Python for the simulated bootloader (``overdrive vehicle
boot``), and in the updater's own bookkeeping. The variables are RAUC's (``BOOT_ORDER``,
``BOOT_x_LEFT``), the semantics differ on one point that matters in a car:

* **boot order** -- every slot, highest priority first;
* **good** per slot -- the slot holds a committed image that came up healthy;
* **tries left** per slot -- only for a slot *on trial*: how many more times the bootloader may
  start it before the updater commits it. Tries are spent on a trial and nowhere else.

RAUC's scripts spend a try on every boot and rely on ``mark-good`` to refill it, so a few quick
power cycles of a healthy, committed slot (an ignition switched off before init ran) used up its
tries and fell back to the older version (rauc#490). Here the bootloader never counts a committed
slot's boots: switching the ignition off mid-boot any number of times cannot roll back a
committed slot. A committed slot that later fails is demoted by the updater only on evidence —
its health check failing on several boots in a row (see :mod:`overdrive.client.postboot`).

The bootloader's decision (:func:`choose_boot`):

1. if the first slot in the order is on trial (not good) and has tries left, boot it and spend a
   try;
2. otherwise boot the first good slot in the order, spending nothing;
3. otherwise nothing is bootable (:class:`NoBootableSlot`): the bootloader's rescue path.

It records the slot it started (:attr:`BootState.booted`), so that init can tell a trial boot
from a fallback even when the kernel command line does not say. Lifecycle of an update into the
inactive slot ``B`` while ``A`` is good:

1. :func:`mark_bad` (B) before writing into it, so a half-written slot is never booted;
2. :func:`mark_trial` (B) once the image is written and verified: B first, N tries, not good;
3. the bootloader boots B and spends a try; an ignition cut before init costs one try, no more;
4. healthy: :func:`mark_good` (B), committed. Unhealthy: :func:`mark_bad` (B) and reboot, which
   boots A. A crash or hang on every try: once B has no tries left the bootloader boots A, and the
   updater sees the trial slot is not the one that booted.

This module does no I/O: ``client.bootenv`` loads and saves a :class:`BootState`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from overdrive.errors import OverdriveError

DEFAULT_TRIAL_TRIES = 3
"""Boots a freshly installed slot gets before it must be committed: enough that an ignition cut
during the first boot does not roll back a good update, few enough that a broken image is
abandoned quickly."""

_SLOT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class BootError(OverdriveError):
    """Boot control was asked to do something impossible or given an invalid boot state."""


class NoBootableSlot(BootError):
    """No slot is on trial with tries left and none is good: nothing the bootloader may start."""


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
    """All slots, in boot order (highest priority first), and the slot last booted.

    The order of :attr:`slots` *is* the boot order, so there is nothing to keep in sync.
    :attr:`booted` is the bootloader's record of the slot it started last (``None`` when it keeps
    none); immutable and comparable.
    """

    slots: tuple[SlotState, ...]
    booted: str | None = None

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
        if self.booted is not None and self.booted not in names:
            raise BootError(f"booted slot {self.booted!r} is not one of {' '.join(names)}")

    @classmethod
    def initial(
        cls,
        slots: Iterable[str] = ("A", "B"),
        *,
        good: str | None = "A",
        booted: str | None = None,
    ) -> BootState:
        """A factory-fresh state: ``good`` is committed and first, the rest empty.

        ``good=None`` describes a device where no slot has been confirmed yet (nothing to boot
        until a slot is tried or committed).
        """
        names = list(slots)
        if good is not None:
            if good not in names:
                raise BootError(f"good slot {good} is not one of {' '.join(names)}")
            names.remove(good)
            names.insert(0, good)
        return cls(tuple(SlotState(n, 0, n == good) for n in names), booted)

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
        """One line for logs and ``status`` output, e.g. ``B(tries=1) A(good) booted=A``."""
        parts = []
        for s in self.slots:
            marks = [f"tries={s.tries_left}"] if s.tries_left or not s.good else []
            marks += ["good"] if s.good else []
            parts.append(f"{s.name}({','.join(marks)})")
        return " ".join(parts) + (f" booted={self.booted}" if self.booted else "")

    def _with(self, new: SlotState) -> BootState:
        return replace(self, slots=tuple(new if s.name == new.name else s for s in self.slots))


def _check_tries(tries: int, what: str) -> None:
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise BootError(f"{what}: tries must be an integer >= 1, not {tries!r}")


def mark_trial(state: BootState, slot: str, *, tries: int = DEFAULT_TRIAL_TRIES) -> BootState:
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
    return replace(state, slots=(SlotState(slot, tries, False), *rest))


def choose_boot(state: BootState) -> tuple[str, BootState]:
    """The bootloader's decision: which slot to start now, and the state to save before that.

    The first slot in the order, if it is on trial with tries left, is chosen and loses one try.
    Otherwise the first good slot is chosen and no try is spent. Either way the chosen slot is
    recorded as :attr:`BootState.booted`. :class:`NoBootableSlot` if neither exists.
    Deterministic; it changes at most one slot's tries and the record.
    """
    first = state.slots[0]
    if not first.good and first.tries_left > 0:
        spent = state._with(replace(first, tries_left=first.tries_left - 1))
        return first.name, replace(spent, booted=first.name)
    for s in state.slots:
        if s.good:
            return s.name, replace(state, booted=s.name)
    raise NoBootableSlot(
        f"no bootable slot: none of {' '.join(state.order)} is good or on trial with tries left"
    )


def next_boot(state: BootState) -> str:
    """The slot :func:`choose_boot` would start, without spending a try."""
    return choose_boot(state)[0]


def mark_good(state: BootState, slot: str) -> BootState:
    """Commit ``slot`` after a healthy boot: good, no tries (a committed slot needs none).

    The order is unchanged: a committed trial slot is already first, and committing the running
    fallback slot while another slot waits for its trial leaves that trial in place (as RAUC's
    ``mark-good`` does). Idempotent, so it can run on every healthy boot.
    """
    return state._with(replace(state.slot(slot), tries_left=0, good=True))


def mark_bad(state: BootState, slot: str) -> BootState:
    """``slot`` must not be booted: no tries, not good, last in the order.

    Marking the last good slot bad is allowed (it is a fact the updater learned), and leaves the
    device with :class:`NoBootableSlot` unless another slot is tried or committed.
    """
    target = state.slot(slot)
    rest = tuple(s for s in state.slots if s.name != slot)
    return replace(state, slots=(*rest, replace(target, tries_left=0, good=False)))


def active_good_slot(state: BootState) -> str | None:
    """The committed slot of highest priority: what a failed trial falls back to; None if none."""
    good = state.good_slots()
    return good[0] if good else None


def trial_slot(state: BootState) -> str | None:
    """The slot under trial: first in the order and not (yet) good; None when nothing is on trial.

    It stays the trial slot after its boots have spent its tries, until :func:`mark_good` or
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
    """The same state with every slot's tries capped at ``limit`` (for a bootloader that can
    count only so far: the GRUB script counts down from 9)."""
    if limit < 0:
        raise BootError(f"tries limit must be >= 0, not {limit}")
    return replace(
        state,
        slots=tuple(replace(s, tries_left=min(s.tries_left, limit)) for s in state.slots),
    )

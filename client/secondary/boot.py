"""A secondary's boot environment (``STATE_DIR/bootenv.json``, the simulated bootloader's)
kept in line with its state, as pure functions over :class:`~overdrive.client.bootchooser.
BootState`.

The order of writes is what keeps a crash safe: a slot is made *unbootable* before the state
forgets its image (:func:`without`, boot env first), and made *bootable* only after the state
records the image (:func:`on_trial`, committing: state first). :func:`settled` is what a start
(or a repeated step) applies, whatever a crash interrupted.
"""

from __future__ import annotations

from dataclasses import replace

from overdrive.client import bootchooser as bc
from overdrive.client.secondary.state import COMMITTED, TRIAL, SecondaryState


def settled(env: bc.BootState, state: SecondaryState) -> bc.BootState:
    """``env`` as ``state`` says it must be: a slot recorded empty is bad, the committed slot of
    a committed set is good, and outside a trial the committed slot is the one running."""
    new = env
    for slot, image in state.slots.items():
        found = new.slot(slot)
        if image is None and (found.good or found.tries_left):
            new = bc.mark_bad(new, slot)
    if state.stage == COMMITTED and not new.slot(state.active).good:
        new = bc.mark_good(new, state.active)
    if state.stage != TRIAL and new.booted != state.active:
        new = replace(new, booted=state.active)
    return new


def without(env: bc.BootState, slot: str, booted: str | None = None) -> bc.BootState:
    """``slot`` never to be started (before its image is rolled back or overwritten), and the
    slot running now if that changes."""
    new = bc.mark_bad(env, slot)
    return replace(new, booted=booted) if booted is not None else new


def on_trial(env: bc.BootState, slot: str) -> bc.BootState:
    """The simulated trial boot: ``slot`` on trial with one try, and started (the try spent)."""
    _, started = bc.choose_boot(bc.mark_trial(env, slot, tries=1))
    return started

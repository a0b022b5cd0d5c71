"""What to do after a boot, decided without I/O: commit, roll back, count, or nothing.

:func:`decide` gets what init knows after the bootloader started a slot — the vehicle's saved
update state, the boot environment, which slot booted in which boot — and a health-check
callback, and returns a :class:`Plan`: the new state and boot environment to save (in a stated
order), whether to reboot, and the outcome with its message. :mod:`overdrive.client.boot` carries the plan
out; tests drive this function exhaustively.

Cases, in the order they are checked:

* **already handled**: post-boot finished for this boot id before; nothing changes.
* **reconcile**: a slot the bootloader may start but that holds no verified image (a power cut
  between two writes, or an environment edited behind our back) is marked bad first, always.
* **unverified**: the slot that booted holds no verified image: mark it bad, reboot into the
  verified one. Never run, and never update from, software we did not verify.
* **trial boot**: the slot under trial booted: health check, then commit (mark good, report
  ``committed``) or mark it bad, report ``rolled_back`` and reboot.
* **fell back**: a trial was pending but the other slot booted: the bootloader gave up on it
  (its tries ran out: it crashed, hung or lost power on every try). Record the rollback.
* **routine boot** of the committed slot: health check. Healthy refreshes the slot (good, the
  unhealthy count back to 0). Unhealthy counts one; after ``late_fallback_boots`` unhealthy boots
  in a row, fall back to the other slot if it still holds a good image (report ``rolled_back``).

Ignition cycles: a boot cut before post-boot ran leaves no trace here (no boot id recorded), and
the bootloader never spends tries on a committed slot, so no number of cuts rolls it back. Only
completed, failed health checks count against a committed slot.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from overdrive.client import bootchooser as bc
from overdrive.client.events import event_id
from overdrive.client.health import Health
from overdrive.client.state import INSTALLED, SlotImage, VehicleState

#: ``(slot, trial)`` → the health check's verdict for this boot of ``slot``.
HealthCheck = Callable[[str, bool], Health]


class Outcome(StrEnum):
    HEALTHY = "healthy"  # a routine boot of the committed slot, healthy (or nothing to check)
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    UNHEALTHY = "unhealthy"  # the committed slot failed its check; counted, no fallback (yet)
    ALREADY = "already_handled"


@dataclass
class Plan:
    """What post-boot does for one boot. ``env_first``: save the boot environment before the
    state (a commit: the bootloader must keep the slot before we say so), else after."""

    outcome: Outcome
    message: str
    state: VehicleState
    env: bc.BootState
    env_first: bool = False
    reboot: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BootView:
    """What is known after a boot."""

    state: VehicleState
    env: bc.BootState
    booted: str
    boot_id: str
    late_fallback_boots: int
    at: str  # the time to record (ISO 8601)


def final_event(
    state: VehicleState,
    kind: str,
    at: str,
    hardware_id: str,
    reason: str | None = None,
    salt: str = "",
    **details: Any,
) -> dict[str, Any]:
    """A final event about the current assignment (or about no campaign, when there is none),
    to put in the state's outbox."""
    assignment = state.assignment
    payload = (assignment or {}).get("payload", {})
    event: dict[str, Any] = {
        "id": event_id(assignment, kind, salt),
        "type": kind,
        "at": at,
        "hardware_id": payload.get("hardware_id") or hardware_id,
        "details": {"version": payload.get("version"), **details},
    }
    if payload.get("campaign_id"):
        event["campaign_id"] = payload["campaign_id"]
    if reason:
        event["reason"] = reason
    return event


def _bootable(env: bc.BootState, slot: str) -> bool:
    s = env.slot(slot)
    return s.good or s.tries_left > 0


def _trial_target(state: VehicleState) -> str | None:
    if state.state == INSTALLED and state.assignment:
        target = state.assignment.get("target_slot")
        return target if isinstance(target, str) else None
    return None


def reconcile(state: VehicleState, env: bc.BootState) -> tuple[bc.BootState, list[str]]:
    """Bring the boot environment back in line with the state: every slot the bootloader may
    start holds a verified image, and the committed slot is good (so there is always a
    fallback). Both can only differ after a power cut between two writes, or an edit."""
    notes = []
    for s in env.slots:
        if state.image(s.name) is None and _bootable(env, s.name):
            env = bc.mark_bad(env, s.name)
            notes.append(f"slot {s.name} holds no verified image: marked it bad")
    active = state.active
    if active in env.order and state.image(active) is not None and not env.slot(active).good:
        env = bc.mark_good(env, active)
        notes.append(f"slot {active} holds the committed image: marked it good")
    return env, notes


def decide(view: BootView, health: HealthCheck) -> Plan:
    """The plan for this boot (see the module docstring for the cases)."""
    state = copy.deepcopy(view.state)
    last = state.last_boot or {}
    if last.get("boot_id") == view.boot_id:
        env, notes = reconcile(state, view.env)
        message = f"already handled this boot: {last.get('message', last.get('outcome'))}"
        return Plan(Outcome.ALREADY, message, state, env, notes=notes)
    booted = view.booted
    target = _trial_target(state)
    image = state.image(booted)
    env, notes = reconcile(state, view.env)
    if image is None:
        plan = _unverified(view, state, env)
    elif target == booted:
        plan = _trial(view, state, env, health)
    else:
        fell_back = None
        if target is not None and _trial_abandoned(env, target):
            fell_back = _fell_back(view, state, env, target)
            state, env = fell_back.state, fell_back.env
        if booted != state.active:  # a verified slot, but not the one we ran: believe the boot
            notes.append(f"running slot {booted} although slot {state.active} was committed")
            state.active = booted
        plan = _routine(view, state, env, health)
        if fell_back is not None:  # the rollback is what this boot is about
            plan.outcome = Outcome.ROLLED_BACK
            plan.message = f"{fell_back.message}; {plan.message}"
    plan.env, after = reconcile(plan.state, plan.env)  # what this plan leaves is consistent too
    plan.notes[:0] = notes + after
    plan.state.last_boot = {
        "boot_id": view.boot_id,
        "slot": booted,
        "outcome": plan.outcome.value,
        "message": plan.message,
        "at": view.at,
    }
    return plan


def _trial_abandoned(env: bc.BootState, target: str) -> bool:
    """A pending trial the bootloader gave up on: still first and not good, but out of tries,
    or with tries it was not given the chance to use. A target that is not first was never
    offered to the bootloader (the daemon re-requests the trial), so it is not a failure."""
    return bc.trial_slot(env) == target


def _unverified(view: BootView, state: VehicleState, env: bc.BootState) -> Plan:
    booted = view.booted
    env = bc.mark_bad(env, booted) if _bootable(env, booted) else env
    fallback = state.active if state.image(state.active) is not None else None
    if fallback is not None and fallback != booted:
        env = bc.mark_good(env, fallback)
    reason = f"unverified_slot: slot {booted} holds no image this vehicle verified"
    state.outbox.append(
        final_event(state, "failed", view.at, _hardware(state), reason, salt=view.boot_id)
    )
    reboot = fallback is not None and fallback != booted
    return Plan(Outcome.ROLLED_BACK, f"{reason}; marked it bad", state, env, reboot=reboot)


def _hardware(state: VehicleState) -> str:
    for image in state.slots.values():
        if image is not None:
            return image.hardware_id
    return ""


def _trial(view: BootView, state: VehicleState, env: bc.BootState, health: HealthCheck) -> Plan:
    slot = view.booted
    image = state.image(slot)
    assert image is not None
    verdict = health(slot, True)
    if verdict.healthy:
        env = bc.mark_good(env, slot)
        state.outbox.append(final_event(state, "booted", view.at, image.hardware_id, slot=slot))
        state.outbox.append(final_event(state, "committed", view.at, image.hardware_id, slot=slot))
        state.active, state.state, state.assignment = slot, "idle", None
        state.committed_counter = max(state.committed_counter, image.release_counter)
        state.unhealthy_boots = 0
        state.last_result = {"status": "committed", "version": image.version, "at": view.at}
        message = f"committed {image.version} in slot {slot}"
        return Plan(Outcome.COMMITTED, message, state, env, env_first=True)
    reason = f"health check failed: {verdict.detail}"
    return _roll_back(view, state, env, slot, image, reason, reboot=True)


def _roll_back(
    view: BootView,
    state: VehicleState,
    env: bc.BootState,
    slot: str,
    image: SlotImage | None,
    reason: str,
    *,
    reboot: bool,
) -> Plan:
    """Give up on the trial of ``slot``: forget its image, mark it bad, report the rollback."""
    _give_up(view, state, slot, image, reason)
    state.state, state.assignment = "idle", None
    env = bc.mark_bad(env, slot)
    fallback = bc.active_good_slot(env)
    message = f"rolled back slot {slot}: {reason}"
    return Plan(Outcome.ROLLED_BACK, message, state, env, reboot=reboot and fallback is not None)


def _give_up(
    view: BootView,
    state: VehicleState,
    slot: str,
    image: SlotImage | None,
    reason: str,
    salt: str = "",
) -> None:
    """Report ``slot`` rolled back, forget its image and say why in the last result."""
    hardware = image.hardware_id if image else _hardware(state)
    state.outbox.append(
        final_event(state, "rolled_back", view.at, hardware, reason, salt=salt, slot=slot)
    )
    state.slots[slot] = None
    state.last_result = {
        "status": "rolled_back",
        "version": image.version if image else None,
        "reason": reason,
        "at": view.at,
    }


def _fell_back(view: BootView, state: VehicleState, env: bc.BootState, target: str) -> Plan:
    left = env.slot(target).tries_left
    why = (
        "boot attempts exhausted: the new slot never came up healthy (the bootloader fell back)"
        if left == 0
        else f"the bootloader did not start slot {target} although it had {left} tries left "
        "(check the boot script)"
    )
    return _roll_back(view, state, env, target, state.image(target), why, reboot=False)


def _routine(view: BootView, state: VehicleState, env: bc.BootState, health: HealthCheck) -> Plan:
    slot = view.booted
    image = state.image(slot)
    assert image is not None
    verdict = health(slot, False)
    if verdict.healthy:
        state.unhealthy_boots = 0
        env = bc.mark_good(env, slot)
        message = f"booted slot {slot} ({image.version}): healthy"
        return Plan(Outcome.HEALTHY, message, state, env)
    state.unhealthy_boots += 1
    count, limit = state.unhealthy_boots, view.late_fallback_boots
    other = next((s for s in env.order if s != slot), None)
    can_fall_back = other is not None and state.image(other) is not None and env.slot(other).good
    detail = f"health check failed on {count} boot{'s' if count > 1 else ''} in a row"
    if limit and count >= limit and can_fall_back:
        assert other is not None
        reason = f"late_fallback: slot {slot} ({image.version}) {detail}: {verdict.detail}"
        _give_up(view, state, slot, image, reason, salt=view.boot_id)
        state.active = other
        state.unhealthy_boots = 0
        env = bc.mark_bad(env, slot)
        return Plan(Outcome.ROLLED_BACK, reason, state, env, reboot=True)
    if not limit:
        tail = "late fallback is off"
    elif not can_fall_back:
        tail = "the other slot holds no good image to fall back to"
    else:
        tail = f"falls back after {limit}"
    message = f"slot {slot} ({image.version}) unhealthy: {verdict.detail}; {detail} ({tail})"
    return Plan(Outcome.UNHEALTHY, message, state, env)

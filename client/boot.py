"""Boot time on the vehicle: ``post-boot`` (run by init on a real device) and the simulator.

:func:`post_boot` finds the slot that booted (:mod:`overdrive.client.bootslot`), lets
:func:`overdrive.client.postboot.decide` say what this boot means, and carries the plan out: the boot
environment and the state are saved in the order that keeps a power cut harmless, the final
events go from the state's outbox to the event queue, events are sent when the server answers,
and a reboot is requested when the plan needs one. It is idempotent per boot (the kernel's boot
id): a second run in the same boot changes nothing.

:func:`simulate_boot` stands in for the bootloader and init together (``overdrive vehicle
boot``, for tests and the demo): it applies the bootloader's rule to the boot environment, then
runs post-boot, and "reboots" when post-boot asks for it.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from overdrive.client import bootchooser as bc
from overdrive.client.bootslot import BOOT_ID, find_booted, read_text
from overdrive.client.events import now_iso
from overdrive.client.health import Health, run_health_check
from overdrive.client.postboot import BootView, Outcome, Plan, decide
from overdrive.client.reboot import RebootFailed
from overdrive.client.state import VehicleState
from overdrive.client.vehicle import Vehicle
from overdrive.text import one_line

#: post-boot's (and the simulator's) exit codes, by outcome (see docs/vehicles.md).
OUTCOME_EXIT_CODES = {
    Outcome.HEALTHY: 0,
    Outcome.COMMITTED: 0,
    Outcome.ROLLED_BACK: 4,
    Outcome.UNHEALTHY: 6,
}
#: Reboots the simulator follows within one call (a rollback, then the fallback's own boot).
_SIMULATED_REBOOTS = 3


@dataclass(frozen=True)
class BootResult:
    outcome: Outcome
    message: str
    #: The outcome this boot had when post-boot first handled it (for an "already handled" run).
    recorded: Outcome | None = None
    #: A reboot is needed and was not requested (``reboot=False``).
    reboot_needed: bool = False

    @property
    def exit_code(self) -> int:
        outcome = self.recorded or self.outcome
        return OUTCOME_EXIT_CODES.get(outcome, 0)


def current_boot_id() -> str:
    return one_line(read_text(BOOT_ID, "boot id"), 64)


def post_boot(
    car: Vehicle, *, boot_id: str, cmdline: str | None, reboot: bool = True
) -> BootResult:
    """Handle this boot (see the module docstring). ``reboot=False`` only reports that one is
    needed. :class:`~overdrive.client.reboot.RebootFailed` if the reboot command fails (after everything
    was saved)."""
    state = car.store.load()
    if state.outbox:  # final events a power cut left there
        car.save_with_outbox(state)
    env = car.boot_env.load()
    booted = find_booted(cmdline, env, where=car.boot_env.describe())
    view = BootView(
        state=state,
        env=env,
        booted=booted.slot,
        boot_id=boot_id,
        late_fallback_boots=car.config.late_fallback_boots,
        at=now_iso(),
    )
    plan = decide(view, lambda slot, trial: _health(car, state, slot, trial))
    _carry_out(car, state, env, plan)
    recorded = None
    if plan.outcome is Outcome.ALREADY:
        recorded = Outcome((state.last_boot or {}).get("outcome", Outcome.HEALTHY))
    message = _with_notes(plan)
    if not plan.reboot:
        return BootResult(plan.outcome, message, recorded)
    message += f"; rebooting into slot {bc.next_boot(plan.env)}"
    if not reboot:
        return BootResult(plan.outcome, f"{message} (reboot needed)", recorded, True)
    try:
        car.reboot()
    except RebootFailed as e:
        raise RebootFailed(f"{message}; but {e}") from e
    return BootResult(plan.outcome, message, recorded)


def _carry_out(car: Vehicle, state: VehicleState, before: bc.BootState, plan: Plan) -> None:
    """Save the plan in the order that keeps a power cut harmless, then queue and send; what
    did not change is not written."""
    if plan.env_first and plan.env != before:
        car.boot_env.save(plan.env)
    if plan.state != state:
        car.save_with_outbox(plan.state)
    if not plan.env_first and plan.env != before:
        car.boot_env.save(plan.env)
    car.flush_events()


def _with_notes(plan: Plan) -> str:
    return "; ".join([plan.message, *plan.notes])


def _health(car: Vehicle, state: VehicleState, slot: str, trial: bool) -> Health:
    image = state.image(slot)
    env = {
        **os.environ,
        "OVERDRIVE_SLOT": slot,
        "OVERDRIVE_SLOT_PATH": str(car.config.slot_path(slot)),
        "OVERDRIVE_VERSION": image.version if image else "",
        "OVERDRIVE_TRIAL": "1" if trial else "0",
        "OVERDRIVE_STATE_DIR": str(car.state_dir),
    }
    return run_health_check(car.config.health_check, env, car.config.health_timeout_s)


def simulate_boot(car: Vehicle, *, crash: bool = False) -> BootResult:
    """Boot like the bootloader and init would: choose the slot (spending a trial's try),
    record it, then run post-boot; follow the reboots post-boot asks for. ``crash`` simulates a
    boot that dies before init runs post-boot (a crash, a hang, or the ignition switched off)."""
    result: BootResult | None = None
    for _ in range(_SIMULATED_REBOOTS):
        slot, env = bc.choose_boot(car.boot_env.load())
        car.boot_env.save(env)
        if crash:
            return BootResult(Outcome.HEALTHY, f"booted slot {slot} and crashed before post-boot")
        boot = post_boot(car, boot_id=uuid.uuid4().hex, cmdline=None, reboot=False)
        message = boot.message.removesuffix(" (reboot needed)")
        if result is None:
            result = BootResult(boot.outcome, message, boot.recorded)
        else:  # the first boot's outcome is what this simulated boot was about
            result = BootResult(result.outcome, f"{result.message}; then {message}")
        if not boot.reboot_needed:
            return result
    assert result is not None
    return result

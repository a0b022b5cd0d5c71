"""The post-boot decision (client.postboot.decide), driven exhaustively: every combination of
update state, boot environment, booted slot and health verdict, and whole sequences of boots
with ignition cuts, health failures and trials.

The properties are the promises docs/boot-control.md makes to an integrator:

- software we did not verify is never left running, nor offered to the bootloader;
- a committed slot is never rolled back by boots cut short (ignition cycles), only by
  ``late_fallback_boots`` completed, failed health checks in a row, and only onto a good image;
- a trial is committed only after a healthy trial boot, and rolled back otherwise;
- the vehicle always keeps a bootable, verified slot;
- one final event per decision, and a second run in the same boot changes nothing.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from overdrive.client import bootchooser as bc
from overdrive.client.health import Health
from overdrive.client.postboot import BootView, Outcome, decide
from overdrive.client.state import IDLE, INSTALLED, SlotImage, VehicleState
from tests.conftest import reproducible

SLOTS = ("A", "B")
EXAMPLES = reproducible(400)


def image(version: str, counter: int) -> SlotImage:
    return SlotImage("ecu-a", version, f"{counter:064x}", 1000 + counter, counter)


def healthy(_slot: str, _trial: bool) -> Health:
    return Health(True, "ok")


def unhealthy(_slot: str, _trial: bool) -> Health:
    return Health(False, "service down")


def view(
    state: VehicleState, env: bc.BootState, booted: str, boot_id: str = "b1", late: int = 3
) -> BootView:
    return BootView(state, env, booted, boot_id, late, "2026-12-03T12:00:00Z")


def assignment(target: str) -> dict[str, object]:
    return {
        "payload": {"campaign_id": "c1", "nonce": "n1", "version": "1.1"},
        "target_slot": target,
    }


def bootable(env: bc.BootState, slot: str) -> bool:
    s = env.slot(slot)
    return s.good or s.tries_left > 0


# --------------------------------------------------------------------------- strategies


@st.composite
def situations(draw: st.DrawFn) -> tuple[VehicleState, bc.BootState, str, bool]:
    """Any state, any boot environment over A/B, any booted slot, any health verdict."""
    images = {
        s: draw(st.none() | st.builds(image, st.just(f"v-{s}"), st.integers(1, 5))) for s in SLOTS
    }
    active = draw(st.sampled_from(SLOTS))
    state = VehicleState(slots=images, active=active)
    state.unhealthy_boots = draw(st.integers(0, 4))
    if draw(st.booleans()):  # an install never targets the committed slot
        target = "B" if active == "A" else "A"
        state.state = INSTALLED
        state.assignment = assignment(target)
    order = draw(st.permutations(SLOTS))
    env = bc.BootState(
        tuple(bc.SlotState(n, draw(st.integers(0, 3)), draw(st.booleans())) for n in order)
    )
    booted = draw(st.sampled_from(SLOTS))
    return state, env, booted, draw(st.booleans())


def committed(slot: str = "B", late: int = 3) -> tuple[VehicleState, bc.BootState]:
    """B committed (1.1), A still holding the good 1.0 it replaced."""
    state = VehicleState(slots={"A": image("1.0", 1), "B": image("1.1", 2)}, active=slot)
    env = bc.mark_good(bc.mark_good(bc.BootState.initial(), "A"), "B")
    env = bc.BootState((env.slot(slot), env.slot("A" if slot == "B" else "B")))
    return state, env


# --------------------------------------------------------------------------- any situation


@EXAMPLES
@given(situations())
def test_nothing_unverified_stays_bootable_or_running(
    situation: tuple[VehicleState, bc.BootState, str, bool],
) -> None:
    state, env, booted, ok = situation
    plan = decide(view(state, env, booted), healthy if ok else unhealthy)
    for s in SLOTS:
        if bootable(plan.env, s):
            assert plan.state.image(s) is not None, (s, plan)
    if state.image(booted) is None:  # running something we never verified
        assert plan.outcome is Outcome.ROLLED_BACK
        assert not bootable(plan.env, booted)
        other = "A" if booted == "B" else "B"
        assert plan.reboot == (state.image(state.active) is not None and state.active != booted)
        assert plan.state.outbox and plan.state.outbox[-1]["type"] == "failed"
        del other


@EXAMPLES
@given(situations())
def test_a_second_run_in_the_same_boot_changes_nothing(
    situation: tuple[VehicleState, bc.BootState, str, bool],
) -> None:
    state, env, booted, ok = situation
    health = healthy if ok else unhealthy
    first = decide(view(state, env, booted), health)
    state_after = copy.deepcopy(first.state)
    state_after.outbox = []  # the driver moved them to the event queue

    def no_check(_slot: str, _trial: bool) -> Health:
        raise AssertionError("the health check ran twice in one boot")

    second = decide(view(state_after, first.env, booted), no_check)
    assert second.outcome is Outcome.ALREADY
    assert second.env == first.env
    assert second.state == state_after
    assert not second.reboot


@EXAMPLES
@given(situations())
def test_every_decision_is_reported_once(
    situation: tuple[VehicleState, bc.BootState, str, bool],
) -> None:
    state, env, booted, ok = situation
    plan = decide(view(state, env, booted), healthy if ok else unhealthy)
    kinds = [e["type"] for e in plan.state.outbox]
    if plan.outcome is Outcome.COMMITTED:
        assert kinds == ["booted", "committed"]
    elif plan.outcome is Outcome.ROLLED_BACK:
        assert kinds.count("rolled_back") + kinds.count("failed") >= 1
    else:
        assert kinds == []
    assert len({e["id"] for e in plan.state.outbox}) == len(kinds)


@EXAMPLES
@given(situations())
def test_a_good_verified_fallback_is_never_lost(
    situation: tuple[VehicleState, bc.BootState, str, bool],
) -> None:
    """If some slot was good and verified before, some slot is bootable and verified after."""
    state, env, booted, ok = situation
    before = [s for s in SLOTS if env.slot(s).good and state.image(s) is not None]
    plan = decide(view(state, env, booted), healthy if ok else unhealthy)
    if before:
        after = [s for s in SLOTS if bootable(plan.env, s) and plan.state.image(s) is not None]
        assert after, plan


# --------------------------------------------------------------------------- trials


def trial(target: str = "B", tries: int = 3) -> tuple[VehicleState, bc.BootState]:
    state = VehicleState(slots={"A": image("1.0", 1), "B": image("1.1", 2)}, active="A")
    state.state, state.assignment = INSTALLED, assignment(target)
    env = bc.mark_trial(bc.BootState.initial(), target, tries=tries)
    return state, env


def test_healthy_trial_commits() -> None:
    state, env = trial()
    _slot, env = bc.choose_boot(env)
    plan = decide(view(state, env, "B"), healthy)
    assert plan.outcome is Outcome.COMMITTED and plan.env_first
    assert plan.env.slot("B").good and plan.state.active == "B" and plan.state.state == IDLE
    assert plan.state.committed_counter == 2
    assert [e["type"] for e in plan.state.outbox] == ["booted", "committed"]
    assert plan.state.outbox[-1]["campaign_id"] == "c1"


def test_unhealthy_trial_rolls_back_and_reboots() -> None:
    state, env = trial()
    _slot, env = bc.choose_boot(env)
    plan = decide(view(state, env, "B"), unhealthy)
    assert plan.outcome is Outcome.ROLLED_BACK and plan.reboot and not plan.env_first
    assert bc.next_boot(plan.env) == "A" and plan.state.image("B") is None
    event = plan.state.outbox[-1]
    assert event["type"] == "rolled_back" and event["reason"] == "health check failed: service down"


def test_trial_the_bootloader_gave_up_on_is_recorded() -> None:
    state, env = trial(tries=1)
    _slot, env = bc.choose_boot(env)  # B's only try: the boot dies before post-boot
    slot, env = bc.choose_boot(env)
    assert slot == "A"
    plan = decide(view(state, env, "A"), healthy)
    assert plan.outcome is Outcome.ROLLED_BACK and not plan.reboot
    assert "boot attempts exhausted" in plan.message
    assert plan.state.image("B") is None and not bootable(plan.env, "B")


def test_trial_not_yet_offered_to_the_bootloader_is_not_a_failure() -> None:
    """A power cut between saving 'installed' and requesting the trial: B is still marked bad
    (last in the order); the daemon requests the trial again, nothing is rolled back."""
    state, _env = trial()
    env = bc.mark_bad(bc.BootState.initial(booted="A"), "B")
    plan = decide(view(state, env, "A"), healthy)
    assert plan.outcome is Outcome.HEALTHY and plan.state.state == INSTALLED
    assert plan.state.outbox == []


def test_ignition_cut_during_a_trial_costs_one_try_only() -> None:
    state, env = trial(tries=3)
    for _cut in range(2):
        slot, env = bc.choose_boot(env)  # boots B, power goes before post-boot
        assert slot == "B"
    slot, env = bc.choose_boot(env)
    assert slot == "B"
    assert decide(view(state, env, "B"), healthy).outcome is Outcome.COMMITTED


# --------------------------------------------------------------------------- committed slots


@reproducible(200)
@given(st.lists(st.sampled_from(["cut", "healthy", "unhealthy"]), min_size=1, max_size=40))
def test_ignition_cycles_never_roll_back_a_committed_slot(events: list[str]) -> None:
    """Any sequence of boots cut short and healthy boots, with fewer than late_fallback_boots
    unhealthy boots in a row, keeps running the committed 1.1."""
    state, env = committed()
    streak = 0
    for n, event in enumerate(events):
        slot, env = bc.choose_boot(env)
        assert slot == "B"
        if event == "cut":
            continue
        streak = streak + 1 if event == "unhealthy" else 0
        if streak >= 3:
            streak = 2  # keep below the limit: replace by a healthy boot
            event = "healthy"
        plan = decide(
            view(state, env, slot, boot_id=f"boot-{n}"),
            healthy if event == "healthy" else unhealthy,
        )
        assert plan.outcome in (Outcome.HEALTHY, Outcome.UNHEALTHY), plan.message
        state, env = plan.state, plan.env
        state.outbox = []
    assert state.active == "B" and env.slot("B").good


def test_late_failure_falls_back_after_n_unhealthy_boots() -> None:
    state, env = committed()
    for n in range(2):
        plan = decide(view(state, env, "B", boot_id=f"b{n}"), unhealthy)
        assert plan.outcome is Outcome.UNHEALTHY and not plan.reboot
        assert f"{n + 1} boot" in plan.message
        state, env = plan.state, plan.env
    plan = decide(view(state, env, "B", boot_id="b2"), unhealthy)
    assert plan.outcome is Outcome.ROLLED_BACK and plan.reboot
    assert bc.next_boot(plan.env) == "A" and plan.state.active == "A"
    assert plan.state.image("B") is None
    event = plan.state.outbox[-1]
    assert event["type"] == "rolled_back" and event["reason"].startswith("late_fallback: ")
    assert "campaign_id" not in event  # not about any campaign: the car's own decision


def test_a_healthy_boot_resets_the_count() -> None:
    state, env = committed()
    for n, health in enumerate([unhealthy, unhealthy, healthy, unhealthy, unhealthy]):
        plan = decide(view(state, env, "B", boot_id=f"b{n}"), health)
        assert plan.outcome is not Outcome.ROLLED_BACK
        state, env = plan.state, plan.env
    assert state.unhealthy_boots == 2


@pytest.mark.parametrize(
    ("late", "other_good", "expected"),
    [(0, True, "late fallback is off"), (3, False, "no good image to fall back to")],
)
def test_no_fallback_when_off_or_nothing_to_fall_back_to(
    late: int, other_good: bool, expected: str
) -> None:
    state, env = committed()
    if not other_good:
        env = bc.mark_bad(env, "A")
    for n in range(5):
        plan = decide(view(state, env, "B", boot_id=f"b{n}", late=late), unhealthy)
        assert plan.outcome is Outcome.UNHEALTHY and expected in plan.message
        state, env = plan.state, plan.env


def test_unverified_slot_booted_is_marked_bad_and_left() -> None:
    """The boot environment was edited to boot B, which holds nothing we verified."""
    state = VehicleState(slots={"A": image("1.0", 1), "B": None}, active="A")
    env = bc.BootState((bc.SlotState("B", 0, True), bc.SlotState("A", 0, True)), booted="B")
    plan = decide(view(state, env, "B"), healthy)
    assert plan.outcome is Outcome.ROLLED_BACK and plan.reboot
    assert bc.next_boot(plan.env) == "A" and not bootable(plan.env, "B")
    assert plan.state.outbox[-1]["reason"].startswith("unverified_slot: ")


def test_a_cut_between_the_rollback_writes_is_repaired_next_boot() -> None:
    """The trial failed its health check; the state was saved (B forgotten) but the power went
    before the boot environment's write, so B still has tries: the bootloader boots it again,
    and post-boot marks it bad and reboots into A."""
    state, env = trial(tries=3)
    _slot, env = bc.choose_boot(env)
    plan = decide(view(state, env, "B"), unhealthy)
    slot, env = bc.choose_boot(env)  # the old environment: the cut came before its write
    assert slot == "B"
    again = decide(view(plan.state, env, "B", boot_id="b2"), healthy)
    assert again.outcome is Outcome.ROLLED_BACK and again.reboot
    assert bc.next_boot(again.env) == "A"


def test_reconcile_marks_an_offered_slot_without_a_verified_image_bad() -> None:
    state = VehicleState(slots={"A": image("1.0", 1), "B": None}, active="A")
    env = bc.BootState((bc.SlotState("A", 0, True), bc.SlotState("B", 2, False)), booted="A")
    plan = decide(view(state, env, "A"), healthy)
    assert plan.outcome is Outcome.HEALTHY and not bootable(plan.env, "B")
    assert "slot B holds no verified image: marked it bad" in plan.notes

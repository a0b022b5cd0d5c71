"""The boot decision logic: concrete update scenarios, then properties over all (reachable) states."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from client.bootchooser import (
    DEFAULT_TRIES,
    TRY_ONCE,
    BootError,
    BootState,
    NoBootableSlot,
    SlotState,
    active_good_slot,
    cap_tries,
    choose_boot,
    mark_bad,
    mark_good,
    mark_try_once,
    next_boot,
    other_slot,
    trial_slot,
)
from overdrive.errors import OverdriveError

# --- the model ------------------------------------------------------------------------------------


def test_initial_state_is_a_good_and_b_empty() -> None:
    state = BootState.initial()
    assert state.order == ("A", "B")
    assert state.slot("A") == SlotState("A", DEFAULT_TRIES, True)
    assert state.slot("B") == SlotState("B", 0, False)
    assert active_good_slot(state) == "A"
    assert trial_slot(state) is None
    assert state.describe() == "A(tries=3,good) B(tries=0)"


def test_initial_puts_the_good_slot_first_and_may_have_none() -> None:
    assert BootState.initial(("A", "B"), good="B").order == ("B", "A")
    fresh = BootState.initial(good=None)
    assert fresh.good_slots() == ()
    assert all(s.tries_left == 0 for s in fresh.slots)
    with pytest.raises(BootError, match="good slot C is not one of A B"):
        BootState.initial(good="C")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SlotState(""), "invalid slot name"),
        (lambda: SlotState("A B"), "invalid slot name"),
        (lambda: SlotState("1"), "invalid slot name"),
        (lambda: SlotState("A=1"), "invalid slot name"),
        (lambda: SlotState("A", -1), "tries left must be an integer >= 0"),
        (lambda: SlotState("A", True), "tries left must be an integer >= 0"),
        (lambda: SlotState("A", 1, 1), "good must be true or false"),  # type: ignore[arg-type]
        (lambda: BootState(()), "at least one slot"),
        (lambda: BootState((("A", 1, True),)), "holds SlotState items, not tuple"),  # type: ignore[arg-type]
        (lambda: BootState((SlotState("A"), SlotState("A"))), "slot A appears twice"),
    ],
)
def test_invalid_states_are_refused_with_a_boot_error(
    make: Callable[[], object], message: str
) -> None:
    with pytest.raises(BootError, match=message) as info:
        make()
    assert isinstance(info.value, OverdriveError)
    assert "\n" not in str(info.value)


def test_state_is_immutable_hashable_and_coerces_lists() -> None:
    state = BootState([SlotState("A", 1, True), SlotState("B")])  # type: ignore[arg-type]
    assert isinstance(state.slots, tuple)
    assert hash(state) == hash(BootState((SlotState("A", 1, True), SlotState("B"))))
    with pytest.raises(AttributeError):
        state.slots = ()  # type: ignore[misc]


def test_unknown_slot_is_a_boot_error() -> None:
    state = BootState.initial()
    for op in (mark_good, mark_bad, mark_try_once, other_slot):
        with pytest.raises(BootError, match="no slot 'C'"):
            op(state, "C")


# --- the three update scenarios -------------------------------------------------------------------


def install(state: BootState, slot: str) -> BootState:
    """What the updater does around writing an image: invalidate first, try once after."""
    state = mark_bad(state, slot)
    assert next_boot(state) != slot  # a power cut mid-write boots the old slot
    return mark_try_once(state, slot)


def test_healthy_update_is_committed() -> None:
    state = install(BootState.initial(), "B")
    assert trial_slot(state) == "B"
    booted, state = choose_boot(state)
    assert booted == "B"
    assert state.slot("B").tries_left == 0
    state = mark_good(state, booted)
    assert trial_slot(state) is None
    assert state.order == ("B", "A")
    assert state.slot("B") == SlotState("B", DEFAULT_TRIES, True)
    assert state.slot("A").good  # the old image stays a fallback until it is overwritten
    assert next_boot(state) == "B"
    # the next update goes into A
    assert other_slot(state, booted) == "A"


def test_unhealthy_update_is_marked_bad_and_the_old_slot_boots() -> None:
    state = install(BootState.initial(), "B")
    booted, state = choose_boot(state)
    assert booted == "B"
    state = mark_bad(state, "B")
    assert trial_slot(state) is None
    assert state.order == ("A", "B")
    booted, state = choose_boot(state)
    assert booted == "A"
    assert active_good_slot(state) == "A"


def test_boot_loop_without_commit_exhausts_the_try_and_returns_to_the_old_slot() -> None:
    state = install(BootState.initial(), "B")
    boots = []
    for _ in range(10):  # crash before the health check, again and again
        booted, state = choose_boot(state)
        boots.append(booted)
    assert boots[0] == "B"
    assert boots[1:] == ["A"] * 9
    # the updater, now running A, sees the trial slot B is not what booted: B failed
    assert trial_slot(state) == "B"
    state = mark_bad(state, "B")
    assert trial_slot(state) is None
    assert next_boot(state) == "A"


def test_good_slot_whose_tries_ran_out_is_still_booted() -> None:
    state = BootState.initial()
    for _ in range(DEFAULT_TRIES):
        assert choose_boot(state)[0] == "A"
        state = choose_boot(state)[1]
    assert state.slot("A").tries_left == 0
    booted, after = choose_boot(state)
    assert (booted, after) == ("A", state)  # fallback: no try spent, nothing changes
    assert mark_good(state, "A").slot("A").tries_left == DEFAULT_TRIES


def test_trial_with_exhausted_fallback_still_falls_back() -> None:
    state = BootState((SlotState("A", 0, True), SlotState("B")))
    state = mark_try_once(state, "B")
    assert choose_boot(state)[0] == "B"
    assert choose_boot(choose_boot(state)[1])[0] == "A"


def test_nothing_bootable_raises_no_bootable_slot() -> None:
    state = BootState.initial(good=None)
    with pytest.raises(NoBootableSlot, match="no bootable slot: none of A B"):
        choose_boot(state)
    state = mark_bad(BootState.initial(), "A")
    with pytest.raises(NoBootableSlot):
        next_boot(state)


def test_first_flash_of_a_fresh_device_is_a_trial() -> None:
    state = mark_try_once(BootState.initial(good=None), "A")
    assert trial_slot(state) == "A"
    booted, state = choose_boot(state)
    state = mark_good(state, booted)
    assert active_good_slot(state) == "A"
    assert trial_slot(state) is None


# --- the marks in detail --------------------------------------------------------------------------


def test_try_once_refuses_the_only_good_slot() -> None:
    with pytest.raises(BootError, match="refusing to try slot A: it is the only good slot"):
        mark_try_once(BootState.initial(), "A")


def test_try_once_of_a_good_slot_is_fine_when_another_is_good() -> None:
    state = mark_good(BootState.initial(), "B")
    state = mark_try_once(state, "A")
    assert state.slot("A") == SlotState("A", TRY_ONCE, False)
    assert state.good_slots() == ("B",)


def test_try_once_supersedes_an_earlier_trial() -> None:
    state = BootState.initial(("A", "B", "C"))
    state = mark_try_once(state, "B")
    state = mark_try_once(state, "C")
    assert state.order == ("C", "B", "A")
    assert state.slot("B").tries_left == 0
    assert [choose_boot(state)[0], next_boot(choose_boot(state)[1])] == ["C", "A"]


def test_try_once_and_good_take_a_tries_count() -> None:
    state = mark_try_once(BootState.initial(), "B", tries=3)
    assert state.slot("B").tries_left == 3
    assert mark_good(state, "B", tries=7).slot("B").tries_left == 7
    for bad in (0, -1, True):
        with pytest.raises(BootError, match="tries must be an integer >= 1"):
            mark_try_once(BootState.initial(), "B", tries=bad)
        with pytest.raises(BootError, match="tries must be an integer >= 1"):
            mark_good(BootState.initial(), "B", tries=bad)


def test_mark_good_keeps_a_pending_trial() -> None:
    state = mark_try_once(BootState.initial(), "B")
    state = mark_good(state, "A")  # the running A confirms itself before the reboot
    assert trial_slot(state) == "B"
    assert next_boot(state) == "B"


def test_other_slot_needs_an_ab_pair() -> None:
    assert other_slot(BootState.initial(), "A") == "B"
    assert other_slot(BootState.initial(), "B") == "A"
    with pytest.raises(BootError, match="exactly two slots"):
        other_slot(BootState.initial(("A", "B", "C")), "A")


def test_cap_tries() -> None:
    state = mark_try_once(BootState.initial(), "B")
    capped = cap_tries(state, 1)
    assert [s.tries_left for s in capped.slots] == [1, 1]
    assert capped.order == state.order
    assert cap_tries(capped, 1) == capped
    with pytest.raises(BootError):
        cap_tries(state, -1)


# --- properties -----------------------------------------------------------------------------------

NAMES = ("A", "B", "C", "D")


@st.composite
def any_state(draw: st.DrawFn) -> BootState:
    """Any valid state, reachable or not: 1-4 slots in any order, any tries and marks."""
    names = draw(st.permutations(NAMES))[: draw(st.integers(1, len(NAMES)))]
    return BootState(
        tuple(SlotState(n, draw(st.integers(0, 5)), draw(st.booleans())) for n in names)
    )


@st.composite
def reachable_state(draw: st.DrawFn) -> BootState:
    """A state the updater and bootloader can produce from a factory state."""
    n = draw(st.integers(2, 3))
    state = BootState.initial(NAMES[:n], good=draw(st.sampled_from((*NAMES[:n], None))))
    for _ in range(draw(st.integers(0, 12))):
        op = draw(st.sampled_from(("try", "boot", "good", "bad")))
        slot = draw(st.sampled_from(state.order))
        try:
            if op == "try":
                state = mark_try_once(state, slot)
            elif op == "boot":
                state = choose_boot(state)[1]
            elif op == "good":
                state = mark_good(state, slot)
            else:
                state = mark_bad(state, slot)
        except BootError:
            pass
    return state


@given(any_state())
def test_choose_boot_is_deterministic(state: BootState) -> None:
    copy = BootState(tuple(SlotState(s.name, s.tries_left, s.good) for s in state.slots))
    try:
        first = choose_boot(state)
    except NoBootableSlot:
        with pytest.raises(NoBootableSlot):
            choose_boot(copy)
        return
    assert choose_boot(copy) == first


@given(any_state())
def test_choose_boot_spends_one_try_or_falls_back_to_a_good_slot(state: BootState) -> None:
    if not state.good_slots() and all(s.tries_left == 0 for s in state.slots):
        with pytest.raises(NoBootableSlot):
            choose_boot(state)
        return
    booted, after = choose_boot(state)
    assert after.order == state.order
    assert after.good_slots() == state.good_slots()
    before_tries = sum(s.tries_left for s in state.slots)
    after_tries = sum(s.tries_left for s in after.slots)
    if before_tries:
        assert after_tries == before_tries - 1
        assert after.slot(booted).tries_left == state.slot(booted).tries_left - 1
        assert booted == next(s.name for s in state.slots if s.tries_left)
    else:
        assert after == state
        assert booted == state.good_slots()[0]


@given(any_state())
def test_boots_without_commit_never_loop_on_an_uncommitted_slot(state: BootState) -> None:
    """However many reboots happen without a commit, an uncommitted slot is started at most as
    often as it had tries; after that only good slots boot, or nothing does."""
    budget = {s.name: s.tries_left for s in state.slots}
    total = sum(budget.values())
    started: dict[str, int] = dict.fromkeys(state.order, 0)
    current = state
    for _ in range(total + 5):
        try:
            booted, current = choose_boot(current)
        except NoBootableSlot:
            assert not state.good_slots()
            break
        started[booted] += 1
    for s in state.slots:
        if not s.good:
            assert started[s.name] <= budget[s.name]
    # once the tries are spent, the state is a fixed point booting the first good slot
    if state.good_slots():
        assert choose_boot(current) == (state.good_slots()[0], current)


@given(reachable_state(), st.data())
def test_failed_trial_is_followed_by_the_previous_good_slot(
    state: BootState, data: st.DataObject
) -> None:
    good_before = set(state.good_slots())
    candidates = [n for n in state.order if state.good_slots() != (n,)]
    if not good_before or not candidates:
        return
    slot = data.draw(st.sampled_from(candidates))
    tried = mark_try_once(state, slot)
    booted, after_trial = choose_boot(tried)
    assert booted == slot
    # no commit (crash, hang, or explicit mark_bad): the next boot is a previously good slot
    for after in (after_trial, mark_bad(after_trial, slot)):
        fallback, _ = choose_boot(after)
        assert fallback != slot
        assert fallback in good_before


@given(reachable_state(), st.data())
def test_try_once_never_loses_another_good_slot(state: BootState, data: st.DataObject) -> None:
    slot = data.draw(st.sampled_from(state.order))
    good = state.good_slots()
    if good == (slot,):
        with pytest.raises(BootError, match="only good slot"):
            mark_try_once(state, slot)
        return
    after = mark_try_once(state, slot)
    assert set(after.good_slots()) == set(good) - {slot}
    assert after.order[0] == slot
    assert after.slot(slot) == SlotState(slot, TRY_ONCE, False)
    assert trial_slot(after) == slot
    assert [n for n in after.order if n != slot] == [n for n in state.order if n != slot]


@given(any_state(), st.data())
def test_mark_good_and_mark_bad_touch_only_their_slot(
    state: BootState, data: st.DataObject
) -> None:
    slot = data.draw(st.sampled_from(state.order))
    good = mark_good(state, slot)
    assert good.order == state.order
    assert good.slot(slot) == SlotState(slot, DEFAULT_TRIES, True)
    bad = mark_bad(state, slot)
    assert bad.order == (*(n for n in state.order if n != slot), slot)
    assert bad.slot(slot) == SlotState(slot, 0, False)
    for other in state.slots:
        if other.name != slot:
            assert good.slot(other.name) == other == bad.slot(other.name)


@given(reachable_state())
def test_reachable_states_have_at_most_one_pending_trial_and_it_is_first(
    state: BootState,
) -> None:
    pending = [i for i, s in enumerate(state.slots) if not s.good and s.tries_left > 0]
    assert pending in ([], [0])


class VehicleMachine(RuleBasedStateMachine):
    """A vehicle that installs, reboots, crashes and health-checks in any order, with the
    updater's rules: install only when nothing is on trial, commit a healthy boot, mark a
    failed trial bad. The vehicle must always have a bootable, good slot."""

    def __init__(self) -> None:
        super().__init__()
        self.state = BootState.initial()
        self.booted: str | None = None
        self.uncommitted_boots = 0

    @precondition(lambda self: self.booted is not None and trial_slot(self.state) is None)
    @rule()
    def install_and_try(self) -> None:
        assert self.booted is not None
        target = other_slot(self.state, self.booted)
        self.state = mark_try_once(mark_bad(self.state, target), target)
        self.uncommitted_boots = 0

    @rule()
    def boot(self) -> None:  # a reboot, a crash or a power cut: all the same to the bootloader
        self.booted, self.state = choose_boot(self.state)
        if self.state.slot(self.booted).good:
            self.uncommitted_boots = 0
        else:
            self.uncommitted_boots += 1
        trial = trial_slot(self.state)
        if trial is not None and trial != self.booted:
            self.state = mark_bad(self.state, trial)

    @precondition(lambda self: self.booted is not None)
    @rule()
    def healthy(self) -> None:
        assert self.booted is not None
        self.state = mark_good(self.state, self.booted)
        self.uncommitted_boots = 0

    @precondition(lambda self: self.booted is not None and trial_slot(self.state) == self.booted)
    @rule()
    def unhealthy(self) -> None:
        assert self.booted is not None
        self.state = mark_bad(self.state, self.booted)
        self.booted = None  # the updater reboots

    @invariant()
    def always_bootable_with_a_good_slot(self) -> None:
        assert self.state.good_slots()
        next_boot(self.state)

    @invariant()
    def never_loops_on_an_uncommitted_slot(self) -> None:
        assert self.uncommitted_boots <= TRY_ONCE

    @invariant()
    def running_uncommitted_slot_is_the_trial(self) -> None:
        if self.booted is not None and not self.state.slot(self.booted).good:
            assert trial_slot(self.state) == self.booted


TestVehicleMachine = VehicleMachine.TestCase
TestVehicleMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)

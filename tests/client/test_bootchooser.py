"""The boot decision logic: concrete update scenarios, then properties over all (reachable) states.

The reachable states (from a factory state, by any sequence of boots and marks) are few enough to
enumerate: the key properties are checked on every one of them, and with hypothesis on any state
and on random sequences of boots and marks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from overdrive.client.bootchooser import (
    DEFAULT_TRIAL_TRIES,
    BootError,
    BootState,
    NoBootableSlot,
    SlotState,
    active_good_slot,
    cap_tries,
    choose_boot,
    mark_bad,
    mark_good,
    mark_trial,
    next_boot,
    other_slot,
    trial_slot,
)
from overdrive.errors import OverdriveError
from tests.conftest import reproducible

PROPERTY = reproducible(300)

# --- the model ------------------------------------------------------------------------------------


def test_initial_state_is_a_good_and_b_empty() -> None:
    state = BootState.initial()
    assert state.order == ("A", "B")
    assert state.slot("A") == SlotState("A", 0, True)  # a committed slot has no tries: none needed
    assert state.slot("B") == SlotState("B", 0, False)
    assert state.booted is None
    assert active_good_slot(state) == "A"
    assert trial_slot(state) is None
    assert state.describe() == "A(good) B(tries=0)"


def test_initial_puts_the_good_slot_first_and_may_have_none() -> None:
    assert BootState.initial(("A", "B"), good="B").order == ("B", "A")
    fresh = BootState.initial(good=None)
    assert fresh.good_slots() == ()
    assert all(s.tries_left == 0 for s in fresh.slots)
    with pytest.raises(BootError, match="good slot C is not one of A B"):
        BootState.initial(good="C")


def test_initial_may_record_the_booted_slot() -> None:
    assert BootState.initial(booted="A").booted == "A"
    assert BootState.initial(booted="A").describe() == "A(good) B(tries=0) booted=A"
    with pytest.raises(BootError, match="booted slot 'C' is not one of A B"):
        BootState.initial(booted="C")


def test_describe() -> None:
    state = mark_trial(BootState.initial(), "B")
    assert state.describe() == "B(tries=3) A(good)"
    assert choose_boot(state)[1].describe() == "B(tries=2) A(good) booted=B"
    # tries on a good slot (not reachable, but a plain RAUC environment loads like that) show
    assert BootState((SlotState("A", 2, True),)).describe() == "A(tries=2,good)"


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
        (lambda: BootState((SlotState("A"),), "B"), "booted slot 'B' is not one of A"),
        (lambda: BootState((SlotState("A"),), ""), "booted slot '' is not one of A"),
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
    state = BootState([SlotState("A", 0, True), SlotState("B")], "A")  # type: ignore[arg-type]
    assert isinstance(state.slots, tuple)
    assert hash(state) == hash(BootState((SlotState("A", 0, True), SlotState("B")), "A"))
    assert state != BootState((SlotState("A", 0, True), SlotState("B")))  # booted counts
    with pytest.raises(AttributeError):
        state.slots = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        state.booted = "B"  # type: ignore[misc]


def test_unknown_slot_is_a_boot_error() -> None:
    state = BootState.initial()
    for op in (mark_good, mark_bad, mark_trial, other_slot):
        with pytest.raises(BootError, match="no slot 'C'"):
            op(state, "C")


# --- the update scenarios -------------------------------------------------------------------------


def install(state: BootState, slot: str, tries: int = DEFAULT_TRIAL_TRIES) -> BootState:
    """What the updater does around writing an image: invalidate first, put on trial after."""
    state = mark_bad(state, slot)
    assert next_boot(state) != slot  # a power cut mid-write boots the old slot
    return mark_trial(state, slot, tries=tries)


def boots(state: BootState, n: int) -> tuple[list[str], BootState]:
    """``n`` bootloader runs with nothing else in between (ignition cuts, crashes before init)."""
    started = []
    for _ in range(n):
        booted, state = choose_boot(state)
        started.append(booted)
    return started, state


def test_healthy_update_is_committed() -> None:
    state = install(BootState.initial(), "B")
    assert trial_slot(state) == "B"
    assert state.slot("B") == SlotState("B", DEFAULT_TRIAL_TRIES, False)
    booted, state = choose_boot(state)
    assert booted == "B"
    assert state.booted == "B"
    assert state.slot("B").tries_left == DEFAULT_TRIAL_TRIES - 1
    state = mark_good(state, booted)
    assert trial_slot(state) is None
    assert state.order == ("B", "A")
    assert state.slot("B") == SlotState("B", 0, True)
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
    assert state.slot("B") == SlotState("B", 0, False)
    booted, state = choose_boot(state)
    assert booted == "A"
    assert state.booted == "A"
    assert active_good_slot(state) == "A"


def test_boot_loop_without_commit_exhausts_the_tries_and_returns_to_the_old_slot() -> None:
    state = install(BootState.initial(), "B")
    started, state = boots(state, 10)  # crash before the health check, again and again
    assert started == ["B"] * DEFAULT_TRIAL_TRIES + ["A"] * (10 - DEFAULT_TRIAL_TRIES)
    assert state.slot("B").tries_left == 0
    assert state.booted == "A"
    # the updater, now running A, sees the trial slot B is not what booted: B failed
    assert trial_slot(state) == "B"
    state = mark_bad(state, "B")
    assert trial_slot(state) is None
    assert next_boot(state) == "A"


def test_ignition_cut_during_a_trial_costs_one_try_not_the_update() -> None:
    state = install(BootState.initial(), "B")
    started, state = boots(state, DEFAULT_TRIAL_TRIES - 1)  # the ignition goes off before init
    assert started == ["B"] * (DEFAULT_TRIAL_TRIES - 1)
    booted, state = choose_boot(state)  # the last try comes up healthy
    assert booted == "B"
    state = mark_good(state, booted)
    assert trial_slot(state) is None
    assert boots(state, 20)[0] == ["B"] * 20


def test_committed_slot_survives_any_number_of_ignition_cuts() -> None:
    """RAUC's scripts spend a try on every boot, so a few quick power cycles of a committed slot
    fell back to the older version (rauc#490). A committed slot is never counted here."""
    booted, state = choose_boot(install(BootState.initial(), "B"))
    state = mark_good(state, booted)
    started, after = boots(state, 100)
    assert started == ["B"] * 100
    assert after == state  # nothing spent: the record already says B
    # and the same from a factory state, whose first boot only records the booted slot
    started, after = boots(BootState.initial(), 100)
    assert started == ["A"] * 100
    assert after == BootState.initial(booted="A")


def test_good_slot_is_never_counted() -> None:
    # tries on a good slot (a plain RAUC environment loads like that) are not spent either
    state = BootState((SlotState("A", 2, True), SlotState("B")))
    booted, after = choose_boot(state)
    assert (booted, after) == ("A", replace(state, booted="A"))
    assert mark_good(state, "A").slot("A").tries_left == 0


def test_only_the_first_slot_is_ever_tried() -> None:
    # a non-first slot that is not good is not booted, whatever its tries
    state = BootState((SlotState("A", 0, True), SlotState("B", 2, False)))
    assert choose_boot(state) == ("A", replace(state, booted="A"))
    state = BootState((SlotState("C", 0, False), SlotState("B", 2, False), SlotState("A", 0, True)))
    assert choose_boot(state) == ("A", replace(state, booted="A"))
    with pytest.raises(NoBootableSlot):
        choose_boot(BootState((SlotState("A", 0, False), SlotState("B", 2, False))))


def test_trial_with_exhausted_fallback_still_falls_back() -> None:
    state = BootState((SlotState("A", 0, True), SlotState("B")))
    state = mark_trial(state, "B", tries=1)
    assert boots(state, 3)[0] == ["B", "A", "A"]


def test_nothing_bootable_raises_no_bootable_slot() -> None:
    state = BootState.initial(good=None)
    with pytest.raises(NoBootableSlot, match="no bootable slot: none of A B is good or on trial"):
        choose_boot(state)
    state = mark_bad(BootState.initial(), "A")
    with pytest.raises(NoBootableSlot):
        next_boot(state)
    assert issubclass(NoBootableSlot, BootError)


def test_first_flash_of_a_fresh_device_is_a_trial() -> None:
    state = mark_trial(BootState.initial(good=None), "A")
    assert trial_slot(state) == "A"
    booted, state = choose_boot(state)
    state = mark_good(state, booted)
    assert active_good_slot(state) == "A"
    assert trial_slot(state) is None


def test_failed_first_flash_leaves_nothing_bootable() -> None:
    state = mark_trial(BootState.initial(good=None), "A", tries=2)
    assert boots(state, 2)[0] == ["A", "A"]
    with pytest.raises(NoBootableSlot):
        boots(state, 3)


def test_next_boot_spends_nothing() -> None:
    state = install(BootState.initial(), "B")
    assert next_boot(state) == "B"
    assert next_boot(state) == "B"
    assert state.slot("B").tries_left == DEFAULT_TRIAL_TRIES
    assert state.booted is None


# --- the marks in detail --------------------------------------------------------------------------


def test_mark_trial_refuses_the_only_good_slot() -> None:
    with pytest.raises(BootError, match="refusing to try slot A: it is the only good slot"):
        mark_trial(BootState.initial(), "A")


def test_mark_trial_of_a_good_slot_is_fine_when_another_is_good() -> None:
    state = mark_good(BootState.initial(), "B")
    state = mark_trial(state, "A")
    assert state.slot("A") == SlotState("A", DEFAULT_TRIAL_TRIES, False)
    assert state.good_slots() == ("B",)


def test_mark_trial_supersedes_an_earlier_trial() -> None:
    state = BootState.initial(("A", "B", "C"))
    state = mark_trial(state, "B")
    state = mark_trial(state, "C")
    assert state.order == ("C", "B", "A")
    assert state.slot("B").tries_left == 0
    started, _ = boots(state, DEFAULT_TRIAL_TRIES + 2)
    assert started == ["C"] * DEFAULT_TRIAL_TRIES + ["A", "A"]


def test_mark_trial_takes_a_tries_count() -> None:
    assert DEFAULT_TRIAL_TRIES == 3
    assert mark_trial(BootState.initial(), "B").slot("B").tries_left == DEFAULT_TRIAL_TRIES
    assert mark_trial(BootState.initial(), "B", tries=7).slot("B").tries_left == 7
    for bad in (0, -1, True, 1.0):
        with pytest.raises(BootError, match="try slot B: tries must be an integer >= 1"):
            mark_trial(BootState.initial(), "B", tries=bad)  # type: ignore[arg-type]


def test_mark_good_clears_the_tries_and_is_idempotent() -> None:
    state = choose_boot(install(BootState.initial(), "B"))[1]
    good = mark_good(state, "B")
    assert good.slot("B") == SlotState("B", 0, True)
    assert good.order == state.order
    assert good.booted == "B"
    assert mark_good(good, "B") == good


def test_mark_good_keeps_a_pending_trial() -> None:
    state = mark_trial(BootState.initial(), "B")
    state = mark_good(state, "A")  # the running A confirms itself before the reboot
    assert trial_slot(state) == "B"
    assert next_boot(state) == "B"
    assert state.slot("B").tries_left == DEFAULT_TRIAL_TRIES


def test_marks_keep_the_booted_record() -> None:
    state = BootState.initial(booted="A")
    assert mark_trial(state, "B").booted == "A"
    assert mark_good(state, "B").booted == "A"
    assert mark_bad(state, "A").booted == "A"  # a fact about the last boot, not about A's image
    assert cap_tries(state, 1).booted == "A"


def test_other_slot_needs_an_ab_pair() -> None:
    assert other_slot(BootState.initial(), "A") == "B"
    assert other_slot(BootState.initial(), "B") == "A"
    with pytest.raises(BootError, match="exactly two slots"):
        other_slot(BootState.initial(("A", "B", "C")), "A")


def test_cap_tries() -> None:
    state = mark_trial(BootState.initial(), "B", tries=12)
    capped = cap_tries(state, 9)
    assert [s.tries_left for s in capped.slots] == [9, 0]
    assert capped.order == state.order
    assert cap_tries(capped, 9) == capped
    assert cap_tries(state, 0).slot("B").tries_left == 0
    with pytest.raises(BootError):
        cap_tries(state, -1)


# --- reachable states, enumerated -----------------------------------------------------------------

NAMES = ("A", "B", "C", "D")
TRIAL_TRIES = (1, 2, DEFAULT_TRIAL_TRIES)


def successors(state: BootState) -> list[BootState]:
    """Every state one bootloader run or one mark (with any allowed argument) away."""
    out = []
    with contextlib.suppress(NoBootableSlot):
        out.append(choose_boot(state)[1])
    for slot in state.order:
        for tries in TRIAL_TRIES:
            with contextlib.suppress(BootError):  # refused: the only good slot
                out.append(mark_trial(state, slot, tries=tries))
        out += [mark_good(state, slot), mark_bad(state, slot)]
    return out


def reachable_states() -> tuple[BootState, ...]:
    """All states reachable from a factory state of two or three slots: a few hundred."""
    seen: set[BootState] = set()
    for n in (2, 3):
        todo = [BootState.initial(NAMES[:n], good=g) for g in (*NAMES[:n], None)]
        while todo:
            state = todo.pop()
            if state not in seen:
                seen.add(state)
                todo.extend(successors(state))
    return tuple(sorted(seen, key=lambda s: (len(s.slots), s.describe())))


REACHABLE = reachable_states()


def pending_trial(state: BootState) -> str | None:
    """The slot the next bootloader run will spend a try on, if any."""
    first = state.slots[0]
    return first.name if not first.good and first.tries_left > 0 else None


def test_the_enumeration_covers_the_interesting_states() -> None:
    assert 100 < len(REACHABLE) < 2000
    assert all(len(s.slots) in (2, 3) for s in REACHABLE)
    assert any(pending_trial(s) for s in REACHABLE)
    assert any(not s.good_slots() for s in REACHABLE)
    assert any(len(s.good_slots()) == 3 for s in REACHABLE)
    assert {s.booted for s in REACHABLE} == {None, "A", "B", "C"}
    assert {s.slots[0].tries_left for s in REACHABLE} == {0, *TRIAL_TRIES}


def test_reachable_states_have_tries_only_on_a_pending_trial_and_it_is_first() -> None:
    for state in REACHABLE:
        with_tries = [i for i, s in enumerate(state.slots) if s.tries_left > 0]
        assert with_tries in ([], [0]), state.describe()
        if with_tries:
            assert not state.slots[0].good, state.describe()


def test_ignition_cycles_never_roll_back_a_committed_slot_in_any_reachable_state() -> None:
    """From every reachable state with a committed slot and no pending trial, any number of
    bootloader runs with nothing in between boot that slot and spend nothing."""
    checked = 0
    for state in REACHABLE:
        if pending_trial(state) is not None or not state.good_slots():
            continue
        committed = state.good_slots()[0]
        started, after = boots(state, 12)
        assert started == [committed] * 12, state.describe()
        assert after == replace(state, booted=committed), state.describe()
        checked += 1
    assert checked > 50


def test_a_trial_boots_at_most_its_tries_in_any_reachable_state() -> None:
    """A trial slot with N tries is started N times, then the first good slot for good; with no
    good slot, nothing is bootable once the tries are spent."""
    for state in REACHABLE:
        trial = pending_trial(state)
        if trial is None:
            continue
        tries = state.slot(trial).tries_left
        started, after = boots(state, tries)
        assert started == [trial] * tries, state.describe()
        assert after.slot(trial).tries_left == 0
        if state.good_slots():
            fallback = state.good_slots()[0]
            assert boots(after, 5)[0] == [fallback] * 5, state.describe()
        else:
            with pytest.raises(NoBootableSlot):
                choose_boot(after)


def test_mark_trial_never_removes_the_last_good_slot_in_any_reachable_state() -> None:
    for state in REACHABLE:
        good = state.good_slots()
        for slot in state.order:
            if good == (slot,):
                with pytest.raises(BootError, match="only good slot"):
                    mark_trial(state, slot)
                continue
            after = mark_trial(state, slot)
            assert set(after.good_slots()) == set(good) - {slot}, state.describe()
            assert bool(after.good_slots()) == bool(good)
            assert next_boot(after) == slot
            assert after.slot(slot) == SlotState(slot, DEFAULT_TRIAL_TRIES, False)
            assert trial_slot(after) == slot


def test_choose_boot_changes_at_most_one_try_in_any_reachable_state() -> None:
    for state in REACHABLE:
        check_one_boot(state)


# --- properties over any state --------------------------------------------------------------------


def check_one_boot(state: BootState) -> None:
    """One bootloader run: the decision rules, and everything it must leave alone."""
    trial = pending_trial(state)
    good = state.good_slots()
    if trial is None and not good:
        with pytest.raises(NoBootableSlot):
            choose_boot(state)
        return
    booted, after = choose_boot(state)
    assert after.booted == booted
    assert after.order == state.order
    assert after.good_slots() == good
    changed = [s.name for s, t in zip(state.slots, after.slots, strict=True) if s != t]
    if trial is not None:
        assert booted == trial == state.order[0]
        assert changed == [trial]
        assert after.slot(trial).tries_left == state.slot(trial).tries_left - 1
    else:
        assert booted == good[0]
        assert changed == []
        assert after == replace(state, booted=booted)


@st.composite
def any_state(draw: st.DrawFn) -> BootState:
    """Any valid state, reachable or not: 1-4 slots in any order, any tries, marks and record."""
    names = draw(st.permutations(NAMES))[: draw(st.integers(1, len(NAMES)))]
    slots = tuple(SlotState(n, draw(st.integers(0, 5)), draw(st.booleans())) for n in names)
    return BootState(slots, draw(st.sampled_from((None, *names))))


@PROPERTY
@given(any_state())
def test_choose_boot_is_deterministic(state: BootState) -> None:
    copy = BootState(
        tuple(SlotState(s.name, s.tries_left, s.good) for s in state.slots), state.booted
    )
    try:
        first = choose_boot(state)
    except NoBootableSlot:
        with pytest.raises(NoBootableSlot):
            choose_boot(copy)
        return
    assert choose_boot(copy) == first
    assert choose_boot(state) == first


@PROPERTY
@given(any_state())
def test_choose_boot_spends_a_try_on_the_first_slot_only_or_boots_a_good_slot(
    state: BootState,
) -> None:
    check_one_boot(state)


@PROPERTY
@given(any_state(), st.integers(1, 30))
def test_ignition_cycles_never_roll_back_a_committed_slot(state: BootState, cuts: int) -> None:
    """Whatever the state, once no trial is pending, every further run boots the first good slot
    and spends nothing: switching the ignition off mid-boot can never roll it back."""
    if pending_trial(state) is not None or not state.good_slots():
        return
    committed = state.good_slots()[0]
    started, after = boots(state, cuts)
    assert started == [committed] * cuts
    assert after.slots == state.slots


@PROPERTY
@given(any_state())
def test_boots_without_commit_never_loop_on_an_uncommitted_slot(state: BootState) -> None:
    """However many reboots happen without a mark, the trial slot is started at most as often as
    it had tries, any other uncommitted slot never; after that only the first good slot boots, or
    nothing does."""
    budget = {s.name: 0 for s in state.slots}
    trial = pending_trial(state)
    if trial is not None:
        budget[trial] = state.slot(trial).tries_left
    started: dict[str, int] = dict.fromkeys(state.order, 0)
    current = state
    for _ in range(sum(s.tries_left for s in state.slots) + 5):
        try:
            booted, current = choose_boot(current)
        except NoBootableSlot:
            assert not state.good_slots()
            break
        started[booted] += 1
    for s in state.slots:
        if not s.good:
            assert started[s.name] <= budget[s.name]
    if trial is not None:
        assert started[trial] == budget[trial]
    # once the tries are spent, the state is a fixed point booting the first good slot
    if state.good_slots():
        assert choose_boot(current) == (state.good_slots()[0], current)


@st.composite
def reachable_state(draw: st.DrawFn) -> BootState:
    """A state the updater and bootloader can produce from a factory state."""
    return draw(st.sampled_from(REACHABLE))


@PROPERTY
@given(reachable_state(), st.data())
def test_failed_trial_is_followed_by_the_previous_good_slot(
    state: BootState, data: st.DataObject
) -> None:
    good_before = set(state.good_slots())
    candidates = [n for n in state.order if state.good_slots() != (n,)]
    if not good_before or not candidates:
        return
    slot = data.draw(st.sampled_from(candidates))
    tries = data.draw(st.integers(1, 5))
    tried = mark_trial(state, slot, tries=tries)
    started, after_trial = boots(tried, data.draw(st.integers(1, tries)))
    assert set(started) == {slot}
    # no commit (crash, hang, or explicit mark_bad): the next boot is a previously good slot
    for after in (boots(after_trial, tries)[1], mark_bad(after_trial, slot)):
        fallback, _ = choose_boot(after)
        assert fallback != slot
        assert fallback in good_before


@PROPERTY
@given(any_state(), st.data())
def test_mark_good_and_mark_bad_touch_only_their_slot(
    state: BootState, data: st.DataObject
) -> None:
    slot = data.draw(st.sampled_from(state.order))
    good = mark_good(state, slot)
    assert good.order == state.order
    assert good.slot(slot) == SlotState(slot, 0, True)
    assert good.booted == state.booted
    bad = mark_bad(state, slot)
    assert bad.order == (*(n for n in state.order if n != slot), slot)
    assert bad.slot(slot) == SlotState(slot, 0, False)
    assert bad.booted == state.booted
    for other in state.slots:
        if other.name != slot:
            assert good.slot(other.name) == other == bad.slot(other.name)


@PROPERTY
@given(any_state(), st.data())
def test_mark_trial_never_removes_the_last_good_slot(state: BootState, data: st.DataObject) -> None:
    slot = data.draw(st.sampled_from(state.order))
    tries = data.draw(st.integers(1, 20))
    good = state.good_slots()
    if good == (slot,):
        with pytest.raises(BootError, match="only good slot"):
            mark_trial(state, slot, tries=tries)
        return
    after = mark_trial(state, slot, tries=tries)
    assert set(after.good_slots()) == set(good) - {slot}
    assert after.order[0] == slot
    assert after.slot(slot) == SlotState(slot, tries, False)
    assert after.booted == state.booted
    assert [n for n in after.order if n != slot] == [n for n in state.order if n != slot]
    # only one trial at a time: no other slot is left waiting with tries
    assert all(s.good or s.tries_left == 0 for s in after.slots[1:])


class VehicleMachine(RuleBasedStateMachine):
    """A vehicle that installs, reboots, crashes, loses power mid-boot and health-checks in any
    order, with the updater's rules: install only when nothing is on trial, commit a healthy
    boot, mark a failed trial bad. The vehicle must always have a bootable, good slot, and
    power cycles must never roll back the committed slot."""

    def __init__(self) -> None:
        super().__init__()
        self.state = BootState.initial()
        self.committed = "A"  # the slot the updater last committed
        self.running: str | None = None  # the slot whose init and updater are running
        self.trial_tries = 0
        self.uncommitted_boots = 0

    def _bootloader(self) -> str:
        booted, self.state = choose_boot(self.state)
        assert self.state.booted == booted
        if self.state.slot(booted).good:
            assert booted == self.committed  # never a rollback, never an older good slot
            self.uncommitted_boots = 0
        else:
            self.uncommitted_boots += 1
        return booted

    @precondition(lambda self: self.running is not None and trial_slot(self.state) is None)
    @rule(tries=st.integers(1, 5))
    def install_and_try(self, tries: int) -> None:
        assert self.running is not None
        target = other_slot(self.state, self.running)
        self.state = mark_trial(mark_bad(self.state, target), target, tries=tries)
        self.trial_tries = tries
        self.uncommitted_boots = 0

    @rule()
    def boot(self) -> None:  # a reboot or a crash: init runs, the updater checks the trial
        self.running = self._bootloader()
        trial = trial_slot(self.state)
        if trial is not None and trial != self.running:
            self.state = mark_bad(self.state, trial)

    @rule()
    def ignition_cut(self) -> None:  # the bootloader ran, the power went before init
        self._bootloader()
        self.running = None

    @precondition(lambda self: self.running is not None)
    @rule()
    def healthy(self) -> None:
        assert self.running is not None
        self.state = mark_good(self.state, self.running)
        self.committed = self.running
        self.uncommitted_boots = 0

    @precondition(lambda self: self.running is not None and trial_slot(self.state) == self.running)
    @rule()
    def unhealthy(self) -> None:
        assert self.running is not None
        self.state = mark_bad(self.state, self.running)
        self.running = None  # the updater reboots

    @invariant()
    def always_bootable_with_a_good_slot(self) -> None:
        assert self.state.good_slots()
        next_boot(self.state)

    @invariant()
    def the_committed_slot_is_the_fallback(self) -> None:
        assert active_good_slot(self.state) == self.committed
        if pending_trial(self.state) is None:
            assert next_boot(self.state) == self.committed

    @invariant()
    def never_loops_on_an_uncommitted_slot(self) -> None:
        assert self.uncommitted_boots <= self.trial_tries

    @invariant()
    def running_uncommitted_slot_is_the_trial(self) -> None:
        if self.running is not None and not self.state.slot(self.running).good:
            assert trial_slot(self.state) == self.running


TestVehicleMachine = VehicleMachine.TestCase
TestVehicleMachine.settings = reproducible(100, stateful_step_count=40)

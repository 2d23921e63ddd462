"""Deterministic tests of the timing wheel: no clock, no threads, no sleeping.

The wheel holds *filings* ``(tick, key, tag)`` and hands keys and tags back
once their tick has come. It has no `remove`: a filing that went stale stays
until it comes out, and the caller drops it then by its tag (or `purge`s the
stale ones in one pass). These tests do what the bucket does: they mark keys
stale in a model, drop their filings when they come out, and purge now and
then with a predicate built on the model.

The wheel is compared with plain models (a heap of filings, in the state
machine and in the seeded stress test) on deliberately tiny wheels, where
cascades and ticks beyond the top level happen on almost every step.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from wheelbucket.wheel import TimingWheel

MS_PER_DAY = 86_400_000
MS_PER_YEAR = 365 * MS_PER_DAY

NOTHING: tuple[list[Any], list[int]] = ([], [])


class CountingWheel(TimingWheel[Any]):
    """A `TimingWheel` that counts how often each filing cascades.

    A cascade is an `add` made by `advance` (it files the filings it takes
    out again with ``self.add``), counted by ``(key, tag)``: give each filing
    its own pair to count them one by one. A filing moves down a level at
    most ``levels - 1`` times.
    """

    __slots__ = ("_advancing", "cascades")

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self._advancing = False
        self.cascades: Counter[tuple[Any, int]] = Counter()

    def advance(self, now: int) -> tuple[list[Any], list[int]]:
        self._advancing = True
        try:
            return super().advance(now)
        finally:
            self._advancing = False

    def add(self, tick: int, key: Any, tag: int = 0) -> None:
        if self._advancing:
            self.cascades[key, tag] += 1
        super().add(tick, key, tag)


def slot_key(bits: int, levels: int, now: int, tick: int) -> int:
    """The documented slot of a filing at `tick` added at `now` (wheel.py, "Layout")."""
    if tick <= now:
        return now
    shift = min(((now ^ tick).bit_length() - 1) // bits * bits, (levels - 1) * bits)
    return tick >> shift << shift


# -- basics ------------------------------------------------------------------


def test_new_wheel_is_empty() -> None:
    wheel: TimingWheel[str] = TimingWheel(now=42)
    assert len(wheel) == 0
    assert wheel.now == 42
    assert wheel.next_tick() is None
    assert list(wheel.filings()) == []
    assert wheel.advance(10**9) == NOTHING
    assert wheel.now == 10**9
    wheel._check()


def test_add_files_a_filing_and_advance_to_its_tick_hands_key_and_tag_back() -> None:
    wheel: TimingWheel[str] = TimingWheel()
    wheel.add(100, "a", 7)
    wheel.add(100, "b")  # tag defaults to 0
    assert len(wheel) == 2
    assert list(wheel.filings()) == [(100, "a", 7), (100, "b", 0)]
    wheel._check()
    assert wheel.advance(99) == NOTHING
    wheel._check()
    assert wheel.advance(100) == (["a", "b"], [7, 0])
    assert len(wheel) == 0
    assert wheel.next_tick() is None
    wheel._check()


def test_keys_are_handed_back_as_they_are() -> None:
    wheel: TimingWheel[Any] = TimingWheel(bits=1, levels=2)
    key = ("task", 1)
    wheel.add(5, key, 3)
    wheel.add(5, key, 3)  # the same key, even the same tag, any number of times
    keys, tags = wheel.advance(5)
    assert keys == [key, key]
    assert all(k is key for k in keys)
    assert tags == [3, 3]


def test_advance_past_a_tick_hands_it_out_late_rather_than_never() -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=2, levels=2)
    wheel.add(5, "a")
    assert wheel.advance(10**6) == (["a"], [0])
    wheel._check()


def test_a_slot_whose_key_is_now_still_cascades_its_later_ticks() -> None:
    # bits=1, levels=2: tick 3 from now 0 goes in the level-1 slot keyed 2.
    # Advancing to exactly 2 takes that slot out; tick 3 must cascade, not fire.
    wheel = CountingWheel(bits=1, levels=2)
    wheel.add(3, "a")
    assert wheel.next_tick() == 2
    assert wheel.advance(2) == NOTHING
    wheel._check()
    assert wheel.cascades["a", 0] == 1
    assert wheel.next_tick() == 3
    assert wheel.advance(3) == (["a"], [0])


@pytest.mark.parametrize(("bits", "levels"), [(1, 1), (1, 2), (1, 3), (2, 3), (6, 6)])
def test_filings_come_out_at_their_tick_never_before(bits: int, levels: int) -> None:
    wheel: TimingWheel[int] = TimingWheel(bits=bits, levels=levels)
    ticks = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 255, 256, 257, 300]
    for i, tick in enumerate(ticks):
        wheel.add(tick, i, tick)
    left = dict(enumerate(ticks))
    for now in range(1, 301):
        keys, tags = wheel.advance(now)
        for key, tag in zip(keys, tags, strict=True):
            assert tag == now, f"filing {key} at {tag} came out at {now}"
            del left[key]
        wheel._check()
    assert left == {}


def test_ticks_are_exact_and_rounding_a_deadline_up_is_the_callers_job() -> None:
    # The wheel never rounds: a filing at tick t comes out at the first
    # advance with now >= t. A caller with finer deadlines (the bucket: ns
    # deadlines, 1 ms ticks) files at the ceiling and advances to the floor,
    # so nothing fires early.
    tick_ns = 1_000_000
    due_ns = 10_500_000
    wheel: TimingWheel[str] = TimingWheel(bits=1, levels=3)
    wheel.add(-(-due_ns // tick_ns), "t")
    for now_ns in (9_999_999, 10_000_000, 10_499_999, 10_500_000, 10_999_999):
        assert wheel.advance(now_ns // tick_ns) == NOTHING
    assert wheel.advance(11_000_000 // tick_ns) == (["t"], [0])
    assert due_ns <= 11_000_000


@pytest.mark.parametrize("offset", [0, -1, -1000])
def test_tick_at_or_before_now_is_due_at_the_next_advance(offset: int) -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=2, levels=3, now=5000)
    wheel.add(5000 + offset, "late", 1)
    wheel._check()
    assert wheel.next_tick() == 5000
    # Time need not move: advancing to the same tick hands it out.
    assert wheel.advance(5000) == (["late"], [1])
    assert len(wheel) == 0
    wheel._check()


def test_past_tick_added_after_a_future_one_does_not_disturb_it() -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=1, levels=2, now=10)
    wheel.add(11, "future")
    wheel.add(3, "past")
    wheel._check()
    assert wheel.advance(10) == (["past"], [0])
    wheel._check()
    assert wheel.advance(11) == (["future"], [0])


def test_stale_filings_come_out_and_the_caller_drops_them_by_tag() -> None:
    # The bucket's lazy deletion: a filing whose tag is not the key's current
    # generation is stale; it comes out at its tick like any other.
    wheel = CountingWheel(bits=1, levels=2)
    current = {"keep": 1, "moved": 1}
    wheel.add(13, "keep", 1)
    wheel.add(13, "moved", 1)
    assert wheel.advance(12) == NOTHING  # their slot (key 12) cascades them to 13
    assert wheel.cascades["moved", 1] == 1
    current["moved"] = 2  # its timer moved: file it again, in its new generation
    wheel.add(20, "moved", 2)
    assert len(wheel) == 3  # the stale filing still counts
    wheel._check()
    keys, tags = wheel.advance(13)
    assert (keys, tags) == (["keep", "moved"], [1, 1])
    fired = [k for k, t in zip(keys, tags, strict=True) if current[k] == t]
    assert fired == ["keep"]
    assert wheel.advance(20) == (["moved"], [2])


# -- errors --------------------------------------------------------------------


def test_time_going_backwards_raises_value_error_and_changes_nothing() -> None:
    wheel: TimingWheel[str] = TimingWheel(now=100)
    wheel.add(150, "a")
    with pytest.raises(ValueError, match="backwards"):
        wheel.advance(99)
    assert wheel.now == 100
    assert len(wheel) == 1
    wheel._check()
    assert wheel.advance(150) == (["a"], [0])


def test_add_many_with_lengths_that_differ_raises_and_files_nothing() -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=2, levels=3)
    wheel.add(9, "before")
    before = list(wheel.filings())
    for keys, tags in [(["a", "b"], [1]), (["a"], [1, 2]), ([], [1]), (["a"], [])]:
        with pytest.raises(ValueError, match="tags"):
            wheel.add_many(7, keys, tags)
        assert list(wheel.filings()) == before
        assert len(wheel) == 1
        assert wheel.next_tick() == slot_key(2, 3, 0, 9)
        wheel._check()
    assert wheel.advance(9) == (["before"], [0])


@pytest.mark.parametrize("bits", [0, 17, -1, True, 1.5, "6", None])
def test_constructor_rejects_bad_bits(bits: object) -> None:
    with pytest.raises(ValueError, match="bits"):
        TimingWheel(bits=bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("levels", [0, 65, -3, False, 2.0, "6", None])
def test_constructor_rejects_bad_levels(levels: object) -> None:
    with pytest.raises(ValueError, match="levels"):
        TimingWheel(levels=levels)  # type: ignore[arg-type]


@pytest.mark.parametrize(("bits", "levels"), [(1, 1), (16, 1), (1, 64), (16, 64), (6, 6)])
def test_constructor_accepts_the_bounds(bits: int, levels: int) -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=bits, levels=levels)
    wheel.add(2**200, "a")
    wheel._check()
    assert wheel.advance(2**200 - 1) == NOTHING
    wheel._check()
    assert wheel.advance(2**200) == (["a"], [0])
    wheel._check()


# -- add_many ------------------------------------------------------------------


def test_add_many_files_in_order_like_repeated_add() -> None:
    wheel: TimingWheel[Any] = TimingWheel(bits=2, levels=3)
    wheel.add(40, "before", 9)
    wheel.add_many(40, [0, 1, 2, 1], [10, 11, 12, 13])
    wheel.add_many(40, [], [])
    wheel.add_many(40, (3,), (14,))  # any sequences
    wheel._check()
    assert len(wheel) == 6
    assert wheel.advance(39) == NOTHING
    assert wheel.advance(40) == (["before", 0, 1, 2, 1, 3], [9, 10, 11, 12, 13, 14])
    wheel._check()


def test_add_many_of_nothing_occupies_no_slot() -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=1, levels=2)
    wheel.add_many(5, [], [])
    wheel.add_many(-5, (), ())
    assert len(wheel) == 0
    assert wheel.next_tick() is None
    wheel._check()


# A script for two wheels: ("add", offset, n) files n filings at now + offset,
# ("step", step) advances by step.
SCRIPT = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.one_of(st.integers(-5, 40), st.integers(0, 2**20)),
            st.integers(0, 4),
        ),
        st.tuples(st.just("step"), st.one_of(st.integers(0, 9), st.integers(0, 2**21))),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(1, 3), levels=st.integers(1, 3), script=SCRIPT)
def test_add_many_is_repeated_add(bits: int, levels: int, script: list[tuple[Any, ...]]) -> None:
    one_by_one: TimingWheel[str] = TimingWheel(bits=bits, levels=levels)
    batched: TimingWheel[str] = TimingWheel(bits=bits, levels=levels)
    serial = 0
    for op in script:
        if op[0] == "add":
            tick = one_by_one.now + op[1]
            keys = [f"k{serial + i}" for i in range(op[2])]
            tags = list(range(serial, serial + op[2]))
            serial += op[2]
            for key, tag in zip(keys, tags, strict=True):
                one_by_one.add(tick, key, tag)
            batched.add_many(tick, keys, tags)
        else:
            now = one_by_one.now + op[1]
            assert one_by_one.advance(now) == batched.advance(now)
        assert list(one_by_one.filings()) == list(batched.filings())
        assert len(one_by_one) == len(batched)
        assert one_by_one.next_tick() == batched.next_tick()
        batched._check()


# -- layout and cascades -----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    bits=st.integers(1, 16),
    levels=st.integers(1, 64),
    now=st.integers(-(2**70), 2**70),
    offset=st.one_of(st.integers(-(2**10), 2**10), st.integers(1, 2**127)),
)
def test_a_filing_goes_in_the_slot_the_layout_names(
    bits: int, levels: int, now: int, offset: int
) -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=bits, levels=levels, now=now)
    wheel.add(now + offset, "a")
    assert wheel.next_tick() == slot_key(bits, levels, now, now + offset)
    wheel._check()


def test_a_tick_more_than_2_to_the_128_away_goes_in_the_level_the_layout_names() -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=3, levels=64)
    tick = 2**130 + 2**127
    wheel.add(tick, "a")
    assert wheel.next_tick() == slot_key(3, 64, 0, tick) == 2**130


def test_cascades_across_two_levels_of_a_tiny_wheel() -> None:
    # bits=1, levels=2: level 0 slots are 1 tick wide, level 1 slots 2 ticks
    # wide, and anything further rides in level 1 slots with keys further out.
    wheel = CountingWheel(bits=1, levels=2)
    wheel.add(13, "a")  # 0 ^ 13 has 4 bits: top level, slot 12
    wheel.add(12, "b")  # the same slot
    wheel.add(1, "c")  # level 0, slot 1
    assert wheel.next_tick() == 1
    assert wheel.advance(1) == (["c"], [0])
    assert wheel.next_tick() == 12
    assert wheel.advance(11) == NOTHING
    assert wheel.advance(12) == (["b"], [0])  # "a" moved down to slot 13
    assert wheel.cascades == {("a", 0): 1}
    wheel._check()
    assert wheel.next_tick() == 13
    assert wheel.advance(13) == (["a"], [0])
    assert wheel.cascades == {("a", 0): 1}


def test_a_filing_cascades_once_per_level_below_its_first() -> None:
    # bits=1, levels=4: tick 15 from now 0 starts in level 3 (slot 8) and
    # moves down through 12 and 14 to 15.
    wheel = CountingWheel(bits=1, levels=4)
    wheel.add(15, "a")
    seen = []
    while (tick := wheel.next_tick()) is not None:
        seen.append(tick)
        out = wheel.advance(tick)
        wheel._check()
        assert out == ((["a"], [0]) if tick == 15 else NOTHING)
    assert seen == [8, 12, 14, 15]
    assert wheel.cascades["a", 0] == 3


@pytest.mark.parametrize(
    "tick",
    [
        MS_PER_DAY,
        12 * MS_PER_DAY,
        30 * MS_PER_DAY,
        MS_PER_YEAR,
        10 * MS_PER_YEAR,
        1000 * MS_PER_YEAR,
        2**64 + 12345,
    ],
)
def test_far_ticks_come_out_exactly_with_bounded_cascades(tick: int) -> None:
    # Default wheel, 1 ms ticks: days and years away.
    wheel = CountingWheel(now=123_456)
    wheel.add(tick, "far")
    wakeups = 0
    while (nxt := wheel.next_tick()) is not None:
        assert nxt <= tick
        wakeups += 1
        assert wheel.advance(nxt - 1) == NOTHING
        out = wheel.advance(nxt)
        wheel._check()
        assert out == ((["far"], [0]) if nxt == tick else NOTHING)
    # It moves down at most once per level below its first one, and the
    # wheel wakes up once per slot it sat in: never per empty slot.
    moves = wheel.cascades["far", 0]
    # (A count of 0 would mean CountingWheel no longer sees the cascades.)
    assert 1 <= moves <= 5
    assert wakeups == moves + 1


def test_far_ticks_need_no_overflow_list_on_a_tiny_wheel() -> None:
    # 2 levels x 2 slots span 4 ticks; everything here is far beyond that.
    wheel = CountingWheel(bits=1, levels=2)
    rng = random.Random(7)
    left = {i: rng.randrange(10, 10**12) for i in range(200)}
    for i, tick in left.items():
        wheel.add(tick, i, tick)
    wheel._check()
    for now in sorted({*left.values(), *(t - 1 for t in left.values())}):
        keys, tags = wheel.advance(now)
        for key, tag in zip(keys, tags, strict=True):
            assert left.pop(key) == tag == now
    assert left == {}
    assert len(wheel) == 0
    assert 0 < max(wheel.cascades.values()) <= 1


def test_jumping_over_many_slots_at_once_hands_out_everything_due() -> None:
    wheel: TimingWheel[int] = TimingWheel(bits=2, levels=3)
    ticks = range(0, 5000, 7)
    for tick in ticks:
        wheel.add(tick, tick)
    keys = wheel.advance(2500)[0]
    wheel._check()
    assert sorted(keys) == list(range(0, 2501, 7))
    assert len(wheel) == len(ticks) - len(keys)
    # In slot order: earliest slot first, so the past tick 0 (slot 0) leads.
    assert keys[0] == 0


# -- order ---------------------------------------------------------------------


def test_filings_of_one_slot_come_out_in_the_order_they_went_in() -> None:
    wheel: TimingWheel[int] = TimingWheel(bits=2, levels=3)
    for i in range(50):
        wheel.add(1000, i, 50 - i)
    assert wheel.advance(1000) == (list(range(50)), [50 - i for i in range(50)])


def test_same_tick_filings_keep_their_order_through_cascades() -> None:
    # Tick 1023 = 0b1111111111 lies in a different slot at every level, so
    # filings added at these "now"s start at different levels and the early
    # ones cascade (1016 -> 1020 -> 1022 -> 1023) among the later ones.
    wheel = CountingWheel(bits=1, levels=4)
    serial = 0
    for now in [0, 500, 1000, 1016, 1017, 1019, 1020, 1021, 1022]:
        assert wheel.advance(now) == NOTHING
        for _ in range(3):
            wheel.add(1023, serial, serial)
            serial += 1
        wheel._check()
    assert wheel.cascades[0, 0] == 3
    assert wheel.advance(1023) == (list(range(serial)), list(range(serial)))


def test_past_filings_come_out_in_the_order_they_went_in() -> None:
    wheel: TimingWheel[int] = TimingWheel(now=50)
    for i in range(10):
        wheel.add(50 - i, i)
    assert wheel.advance(50)[0] == list(range(10))


# -- next_tick -----------------------------------------------------------------


def test_next_tick_is_none_only_when_empty() -> None:
    wheel: TimingWheel[str] = TimingWheel()
    assert wheel.next_tick() is None
    wheel.add(10, "a")
    assert wheel.next_tick() is not None
    wheel.advance(10)
    assert wheel.next_tick() is None
    wheel.add(20, "a")
    wheel.purge(lambda key, tag: False)
    assert wheel.next_tick() is None
    wheel.add(30, "a")
    wheel.clear()
    assert wheel.next_tick() is None


@pytest.mark.parametrize(("bits", "levels"), [(1, 1), (1, 3), (2, 3), (6, 6)])
def test_next_tick_is_never_later_than_the_earliest_tick(bits: int, levels: int) -> None:
    # Stale filings count: they are in the wheel until they come out.
    rng = random.Random(bits * 100 + levels)
    wheel: TimingWheel[int] = TimingWheel(bits=bits, levels=levels)
    filed: dict[int, int] = {}  # tag -> tick
    for i in range(2000):
        filed[i] = wheel.now + rng.choice([-3, 0, 1, 2, 3, 50, 4000, 10**7])
        wheel.add(filed[i], i % 7, i)
        if rng.random() < 0.2:
            for tag in wheel.advance(wheel.now + rng.randrange(100))[1]:
                assert filed.pop(tag) <= wheel.now
        tick = wheel.next_tick()
        if filed:
            assert tick is not None
            assert wheel.now <= tick <= max(wheel.now, min(filed.values()))
        else:
            assert tick is None
    wheel._check()


def test_next_tick_skips_empty_slots() -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=2, levels=3)
    wheel.add(10**9, "a")
    tick = wheel.next_tick()
    assert tick is not None
    # The slot holding it is in the top level, far past "now", not tick 1.
    assert 10**9 - 2 ** (2 * 2) < tick <= 10**9


# -- clear, purge, len, filings ------------------------------------------------------


def test_clear_hands_back_every_filing_and_empties_the_wheel() -> None:
    wheel: TimingWheel[int] = TimingWheel(bits=1, levels=2, now=10)
    for i in range(30):
        wheel.add(10 + i * i - 5, i, 100 + i)
    keys, tags = wheel.clear()
    assert sorted(keys) == list(range(30))
    assert [t - 100 for t in tags] == keys  # each tag beside its key
    assert len(wheel) == 0
    assert wheel.next_tick() is None
    assert wheel.now == 10
    assert list(wheel.filings()) == []
    wheel._check()
    assert wheel.clear() == NOTHING
    assert wheel.advance(10**6) == NOTHING
    wheel.add(10**6 + 1, 0)
    assert wheel.advance(10**6 + 1) == ([0], [0])


def test_purge_drops_exactly_what_keep_refuses_and_keeps_the_order() -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=1, levels=3)
    for tag in range(40):
        wheel.add([3, 3, 9, 100, -1][tag % 5], "abcd"[tag % 4], tag)
    before = list(wheel.filings())
    calls: list[tuple[str, int]] = []

    def keep(key: str, tag: int) -> bool:
        calls.append((key, tag))
        return key != "b" and tag % 3 != 0

    dropped = wheel.purge(keep)
    after = list(wheel.filings())
    assert sorted(calls) == sorted((k, t) for _, k, t in before)
    assert after == [f for f in before if keep(f[1], f[2])]
    assert dropped == len(before) - len(after) > 0
    assert len(wheel) == len(after)
    wheel._check()
    assert wheel.purge(lambda key, tag: True) == 0
    assert list(wheel.filings()) == after
    tags = wheel.advance(9)[1]
    assert sorted(tags) == sorted(t for tick, _, t in after if tick <= 9)
    assert wheel.purge(lambda key, tag: False) == len(after) - len(tags)
    assert len(wheel) == 0
    assert wheel.next_tick() is None
    wheel._check()


def test_purge_forgets_the_slots_it_empties() -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=2, levels=3)
    wheel.add(5, "stale")
    wheel.add(50, "live")
    assert wheel.next_tick() == slot_key(2, 3, 0, 5) == 4
    assert wheel.purge(lambda key, tag: key == "live") == 1
    wheel._check()
    assert wheel.next_tick() == slot_key(2, 3, 0, 50) == 48
    assert wheel.purge(lambda key, tag: key == "live") == 0
    assert wheel.next_tick() == 48


def test_len_counts_adds_stale_filings_expiries_and_purges() -> None:
    wheel: TimingWheel[int] = TimingWheel(bits=2, levels=2)
    for n in range(1, 11):
        wheel.add(n, n, 0)
        assert len(wheel) == n
    wheel.add_many(3, [1, 2], [1, 1])
    assert len(wheel) == 12
    wheel.advance(4)
    assert len(wheel) == 6
    assert wheel.purge(lambda key, tag: key % 2 == 0) == 3
    assert len(wheel) == 3
    wheel.clear()
    assert len(wheel) == 0


def test_filings_lists_every_filing_slot_by_slot() -> None:
    wheel: TimingWheel[str] = TimingWheel(bits=1, levels=2, now=4)
    wheel.add(5, "a", 1)
    wheel.add(2, "b", 2)
    wheel.add(40, "c", 3)
    wheel.add(5, "d", 4)
    filings = list(wheel.filings())
    assert sorted(filings) == [(2, "b", 2), (5, "a", 1), (5, "d", 4), (40, "c", 3)]
    assert filings.index((5, "a", 1)) < filings.index((5, "d", 4))


def test_two_wheels_share_no_state() -> None:
    w1: TimingWheel[str] = TimingWheel(bits=1, levels=2)
    w2: TimingWheel[str] = TimingWheel(bits=1, levels=2)
    w1.add(8, "a")
    w2.add(8, "b")
    assert w1.advance(8) == (["a"], [0])
    assert len(w2) == 1
    assert w2.advance(8) == (["b"], [0])


# -- model-based: hypothesis state machine ----------------------------------------

KEYS = st.sampled_from("abcde")
ADD_OFFSETS = st.one_of(
    st.integers(-20, 0),  # at or before now: due on the next advance
    st.integers(1, 20),
    st.integers(1, 2**12),
    st.integers(2**12, 2**40),  # far beyond the top level of a tiny wheel
    st.integers(2**127, 2**131),  # past the wheel's 128-bit lookup table
)
ADVANCE_STEPS = st.one_of(
    st.just(0),
    st.integers(1, 8),
    st.integers(1, 300),
    st.integers(2**10, 2**42),
)


class WheelMachine(RuleBasedStateMachine):
    """The wheel against a heap of filings, with lazy deletion as the bucket does it.

    Every filing gets its own tag (a serial), so ``tag`` names a filing. Keys
    come from a small pool and are filed again and again. "Killing" a key
    makes its filings so far stale (like a task that ended or whose timer
    moved); filings of it made later are live again. The model keeps every
    filing still in the wheel, stale or not, until it comes out or is purged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.wheel: CountingWheel
        self.levels = 0
        self.filed: dict[int, tuple[int, str]] = {}  # tag -> (tick, key), in the wheel
        # (tick, tag) of every filing; rows of filings that left otherwise are skipped.
        self.heap: list[tuple[int, int]] = []
        self.killed: dict[str, int] = {}  # key -> last serial before it was killed
        self.serial = 0
        self.fired = self.dropped = 0

    def live(self, key: str, tag: int) -> bool:
        """The bucket's test of a filing that came out: is it still current?"""
        return tag > self.killed.get(key, 0)

    @initialize(
        bits=st.integers(1, 3),
        levels=st.integers(1, 3),
        start=st.one_of(st.integers(-50, 50), st.integers(0, 2**45)),
    )
    def make_wheel(self, bits: int, levels: int, start: int) -> None:
        self.wheel = CountingWheel(bits=bits, levels=levels, now=start)
        self.levels = levels

    def _filing(self, tick: int, key: str) -> int:
        self.serial += 1
        self.filed[self.serial] = (tick, key)
        heapq.heappush(self.heap, (tick, self.serial))
        return self.serial

    @rule(offset=ADD_OFFSETS, key=KEYS)
    def add(self, offset: int, key: str) -> None:
        tick = self.wheel.now + offset
        self.wheel.add(tick, key, self._filing(tick, key))

    @rule(offset=ADD_OFFSETS, keys=st.lists(KEYS, max_size=6))
    def add_many(self, offset: int, keys: list[str]) -> None:
        tick = self.wheel.now + offset
        self.wheel.add_many(tick, keys, [self._filing(tick, key) for key in keys])

    @rule(offset=ADD_OFFSETS, keys=st.lists(KEYS, max_size=4), extra=st.sampled_from([-1, 1, 3]))
    def add_many_with_lengths_that_differ_is_refused(
        self, offset: int, keys: list[str], extra: int
    ) -> None:
        wheel = self.wheel
        n = len(keys) + extra if len(keys) + extra >= 0 else len(keys) + 1
        tags = list(range(1000, 1000 + n))
        before = list(wheel.filings())
        with pytest.raises(ValueError, match="tags"):
            wheel.add_many(wheel.now + offset, keys, tags)
        assert list(wheel.filings()) == before

    def _advance(self, now: int) -> None:
        wheel, heap = self.wheel, self.heap
        due = []
        while heap and heap[0][0] <= now:
            tag = heapq.heappop(heap)[1]
            if tag in self.filed:
                due.append(tag)
        keys, tags = wheel.advance(now)
        assert wheel.now == now
        assert len(keys) == len(tags)
        # Everything due comes out, exactly once, and nothing else: nothing
        # early, and nothing later than the first advance to or past its tick.
        assert Counter(tags) == Counter(due), "wheel and model disagree on what is due"
        by_tick: defaultdict[int, list[int]] = defaultdict(list)
        for key, tag in zip(keys, tags, strict=True):
            tick, filed_key = self.filed.pop(tag)
            assert key == filed_key, f"filing {tag} came out as {key!r}"
            assert tick <= now
            by_tick[tick].append(tag)
            # It moved down at most once per level below the top.
            assert wheel.cascades.pop((key, tag), 0) <= self.levels - 1
            # The caller drops the stale ones; the rest fire.
            if self.live(key, tag):
                self.fired += 1
            else:
                self.dropped += 1
        # Filings of one tick come out in the order they were filed, cascades
        # or not (they cascade into a slot before a later one can be filed there).
        for same in by_tick.values():
            assert same == sorted(same)

    @rule(step=ADVANCE_STEPS)
    def advance(self, step: int) -> None:
        self._advance(self.wheel.now + step)

    @precondition(lambda self: self.filed)
    @rule(data=st.data(), delta=st.integers(-2, 1))
    def advance_around_a_tick(self, data: st.DataObject, delta: int) -> None:
        tick = data.draw(st.sampled_from(sorted(t for t, _ in self.filed.values())))
        self._advance(max(self.wheel.now, tick + delta))

    @precondition(lambda self: self.filed)
    @rule(delta=st.integers(-1, 0))
    def advance_to_next_tick(self, delta: int) -> None:
        tick = self.wheel.next_tick()
        assert tick is not None
        self._advance(max(self.wheel.now, tick + delta))

    @rule(back=st.integers(1, 2**40))
    def going_backwards_is_refused(self, back: int) -> None:
        now = self.wheel.now
        with pytest.raises(ValueError, match="backwards"):
            self.wheel.advance(now - back)
        assert self.wheel.now == now

    @rule(key=KEYS)
    def kill(self, key: str) -> None:
        self.killed[key] = self.serial

    @rule()
    def purge(self) -> None:
        wheel = self.wheel
        before = list(wheel.filings())
        stale = [tag for tag, (_, key) in self.filed.items() if not self.live(key, tag)]
        assert wheel.purge(self.live) == len(stale)
        assert list(wheel.filings()) == [f for f in before if self.live(f[1], f[2])]
        for tag in stale:
            _, key = self.filed.pop(tag)
            wheel.cascades.pop((key, tag), None)

    @rule()
    def clear(self) -> None:
        keys, tags = self.wheel.clear()
        assert sorted(tags) == sorted(self.filed)
        assert keys == [self.filed[tag][1] for tag in tags]
        self.filed.clear()
        self.heap.clear()
        self.wheel.cascades.clear()

    @invariant()
    def agrees_with_model(self) -> None:
        wheel = self.wheel
        wheel._check()
        # Stale filings count until they come out or are purged.
        assert len(wheel) == len(self.filed)
        filings = {tag: (tick, key) for tick, key, tag in wheel.filings()}
        assert len(filings) == len(self.filed)
        assert filings == self.filed
        assert all(n <= self.levels - 1 for n in wheel.cascades.values())
        tick = wheel.next_tick()
        if not self.filed:
            assert tick is None
            return
        assert tick is not None
        # Nothing is due before now, so a past tick is due "now".
        earliest = min(t for t, _ in self.filed.values())
        assert wheel.now <= tick <= max(wheel.now, earliest)

    @invariant()
    def index_stays_small(self) -> None:
        # Below the top level, every occupied slot lies in the block of "now"
        # one level up, so each level holds fewer than 2**bits of them; only
        # the top level grows, by one slot per top-level span that holds a
        # tick. Plus the slot of filings already due.
        wheel = self.wheel
        bits, levels = wheel._bits, wheel._levels
        top = (levels - 1) * bits
        spans = {tick >> top for tick, _ in self.filed.values() if tick > wheel.now}
        assert len(wheel._slots) <= (levels - 1) * (2**bits - 1) + len(spans) + 1

    def teardown(self) -> None:
        # Whatever is left comes out at the latest of its ticks.
        if self.filed:
            self._advance(max(self.wheel.now, *(t for t, _ in self.filed.values())))
            assert len(self.wheel) == 0


WheelMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# The thread method: a wheel stuck in a loop must fail the run even while
# hypothesis is shrinking, where a signal-raised timeout would be swallowed.
# Generous: a passing run takes about a second, but shrinking a failure can
# take half a minute, and a timeout then would hide the failure it shrinks.
test_wheel_agrees_with_a_heap_model = pytest.mark.timeout(120, method="thread")(
    WheelMachine.TestCase
)


# -- model-based: seeded stress against a heap, as the bucket uses the wheel ------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_stress_against_a_heap_model(seed: int) -> None:
    # Keys are task ids with a generation each; a filing is live while its
    # tag is its key's generation. Moving a timer bumps the generation and
    # files again; ending a task bumps it and files nothing. Stale filings
    # are dropped when they come out, and purged when they outnumber the
    # live ones, with the bucket's rule.
    rng = random.Random(seed)
    levels = 3
    wheel = CountingWheel(bits=2, levels=levels, now=rng.randrange(10**6))
    gen: dict[int, int] = {}  # key -> its generation
    live: dict[int, int] = {}  # key -> tick of its live filing
    filed: dict[tuple[int, int], int] = {}  # (key, tag) -> tick, for every filing in the wheel
    heap: list[tuple[int, int, int]] = []  # (tick, key, tag); rows of filings gone are skipped
    pool: list[int] = []  # the keys with a live filing, for O(1) random picks
    where: dict[int, int] = {}  # key -> its index in pool

    def unpool(key: int) -> None:
        i = where.pop(key)
        last = pool.pop()
        if last != key:
            pool[i] = last
            where[last] = i
        del live[key]

    def file(key: int, tick: int) -> None:
        gen[key] = tag = gen.get(key, 0) + 1
        if key in live:
            unpool(key)
        live[key] = tick
        where[key] = len(pool)
        pool.append(key)
        filed[key, tag] = tick
        heapq.heappush(heap, (tick, key, tag))
        wheel.add(tick, key, tag)

    offsets: list[Callable[[], int]] = [
        lambda: rng.randrange(-5, 1),
        lambda: rng.randrange(1, 64),
        lambda: rng.randrange(1, 5000),
        lambda: rng.randrange(5000, 2**36),
    ]
    steps: list[Callable[[], int]] = [
        lambda: 0,
        lambda: rng.randrange(1, 8),
        lambda: rng.randrange(1, 200),
        lambda: rng.randrange(1000, 2**34),
    ]
    max_live = cascades = purges = stale_out = 0
    serial = 0
    for op in range(50_000):
        # Alternate phases that grow and shrink the wheel.
        grow = (op // 5000) % 2 == 0
        p_add, p_move, p_end = (0.7, 0.1, 0.05) if grow else (0.3, 0.15, 0.25)
        p_big_jump = 0.0 if grow else 0.3
        r = rng.random()
        if r < p_add or not live:
            serial += 1
            file(serial, wheel.now + rng.choices(offsets, weights=[1, 3, 4, 2])[0]())
        elif r < p_add + p_move:
            file(pool[rng.randrange(len(pool))], wheel.now + rng.randrange(-2, 3000))
        elif r < p_add + p_move + p_end:
            key = pool[rng.randrange(len(pool))]
            gen[key] += 1
            unpool(key)
        else:
            now = wheel.now + rng.choices(steps, weights=[1, 6, 1, p_big_jump])[0]()
            keys, tags = wheel.advance(now)
            due = []
            while heap and heap[0][0] <= now:
                _, key, tag = heapq.heappop(heap)
                if (key, tag) in filed:
                    due.append((key, tag))
            out = list(zip(keys, tags, strict=True))
            assert Counter(out) == Counter(due)
            for key, tag in out:
                assert filed.pop((key, tag)) <= now
                moves = wheel.cascades.pop((key, tag), 0)
                assert moves <= levels - 1
                cascades += moves
                if gen[key] != tag:
                    stale_out += 1
                    continue
                assert live[key] <= now
                gen[key] += 1  # it fired: the task ends
                unpool(key)
        if len(wheel) > 2 * len(live) + 50:
            purges += 1
            before = len(filed)
            for k, t in [f for f in filed if gen[f[0]] != f[1]]:
                del filed[k, t]
                wheel.cascades.pop((k, t), None)
            assert wheel.purge(lambda key, tag: gen[key] == tag) == before - len(filed)
        max_live = max(max_live, len(live))
        assert len(wheel) == len(filed)
        nxt = wheel.next_tick()
        while heap and (heap[0][1], heap[0][2]) not in filed:
            heapq.heappop(heap)
        if filed:
            assert nxt is not None
            assert wheel.now <= nxt <= max(wheel.now, heap[0][0])
        else:
            assert nxt is None
        if op % 500 == 0:
            wheel._check()
    wheel._check()
    assert max_live > 500, "the stress test should keep many filings live"
    assert cascades > 2000, "the stress test should cascade filings often"
    assert purges > 5, "the stress test should purge"
    assert stale_out > 100, "the stress test should see stale filings come out"
    keys, tags = wheel.clear()
    assert sorted(zip(keys, tags, strict=True)) == sorted(filed)

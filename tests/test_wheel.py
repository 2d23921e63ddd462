"""Deterministic tests of the timing wheel: no clock, no threads, no sleeping.

The wheel is compared with a plain model (a dict of live entries, plus a heap
in the stress test) on deliberately tiny wheels, where cascades and deadlines
beyond the top level happen on almost every step.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from wheelbucket.wheel import TimerEntry, TimingWheel

MS_PER_DAY = 86_400_000
MS_PER_YEAR = 365 * MS_PER_DAY


class Job(TimerEntry):
    """A timer entry with a name, so failures say which entry misbehaved."""

    __slots__ = ("name",)

    name: Any

    def __init__(self, name: Any) -> None:
        super().__init__()
        self.name = name

    def __repr__(self) -> str:
        return f"Job({self.name!r})"


class CountingWheel(TimingWheel):
    """A `TimingWheel` that counts how often each entry cascades.

    A cascade is a filing made by `advance` (`add` files entries itself); an
    entry moves down a level at most ``levels - 1`` times.
    """

    __slots__ = ("_advancing", "cascades")

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self._advancing = False
        self.cascades: Counter[TimerEntry] = Counter()

    def advance(self, now: int) -> list[TimerEntry]:
        self._advancing = True
        try:
            return super().advance(now)
        finally:
            self._advancing = False

    def _file(self, entry: TimerEntry, tick: int) -> None:
        if self._advancing:
            self.cascades[entry] += 1
        super()._file(entry, tick)


def names(entries: list[TimerEntry]) -> list[Any]:
    return [cast(Job, e).name for e in entries]


def expire(wheel: TimingWheel, now: int) -> list[Job]:
    """`wheel.advance(now)`, typed for wheels that hold only `Job`s."""
    return cast("list[Job]", wheel.advance(now))


# -- basics ------------------------------------------------------------------


def test_new_wheel_is_empty() -> None:
    wheel = TimingWheel(now=42)
    assert len(wheel) == 0
    assert wheel.now == 42
    assert wheel.next_tick() is None
    assert wheel.advance(10**9) == []
    assert wheel.now == 10**9
    wheel._check()


def test_add_files_entry_and_advance_to_its_tick_expires_it() -> None:
    wheel = TimingWheel()
    job = Job("a")
    wheel.add(job, 100)
    assert job.in_wheel
    assert len(wheel) == 1
    wheel._check()
    assert wheel.advance(99) == []
    assert wheel.advance(100) == [job]
    assert not job.in_wheel
    assert len(wheel) == 0
    assert wheel.next_tick() is None
    wheel._check()


def test_advance_past_a_deadline_expires_it_late_rather_than_never() -> None:
    wheel = TimingWheel(bits=2, levels=2)
    job = Job("a")
    wheel.add(job, 5)
    assert wheel.advance(10**6) == [job]
    wheel._check()


def test_remove_takes_entry_out_and_forgets_its_empty_slot() -> None:
    wheel = TimingWheel()
    a, b = Job("a"), Job("b")
    wheel.add(a, 7)
    wheel.add(b, 7)
    wheel.remove(a)
    assert not a.in_wheel
    assert len(wheel) == 1
    wheel._check()
    wheel.remove(b)
    assert len(wheel) == 0
    assert wheel.next_tick() is None
    wheel._check()
    assert wheel.advance(100) == []


def test_removed_entry_never_expires() -> None:
    wheel = CountingWheel(bits=1, levels=2)
    keep, drop = Job("keep"), Job("drop")
    wheel.add(keep, 13)
    wheel.add(drop, 13)
    assert wheel.advance(12) == []  # their slot (key 12) cascades them to 13
    assert wheel.cascades[drop] == 1
    wheel.remove(drop)
    wheel._check()
    assert wheel.advance(13) == [keep]


@pytest.mark.parametrize(("bits", "levels"), [(1, 1), (1, 3), (2, 3), (6, 6)])
def test_entries_never_expire_before_their_tick(bits: int, levels: int) -> None:
    wheel = TimingWheel(bits=bits, levels=levels)
    ticks = [1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 63, 64, 65, 100, 255, 256, 257, 300]
    jobs = {Job(t): t for t in ticks}
    for job, tick in jobs.items():
        wheel.add(job, tick)
    for now in range(1, 301):
        for job in expire(wheel, now):
            assert jobs[job] == now, f"{job} due at {jobs[job]} expired at {now}"
            del jobs[job]
        wheel._check()
    assert jobs == {}


@pytest.mark.parametrize("offset", [0, -1, -1000])
def test_deadline_at_or_before_now_expires_on_next_advance(offset: int) -> None:
    wheel = TimingWheel(bits=2, levels=3, now=5000)
    job = Job("late")
    wheel.add(job, 5000 + offset)
    wheel._check()
    assert wheel.next_tick() == 5000
    # Time need not move: advancing to the same tick hands it out.
    assert wheel.advance(5000) == [job]
    assert len(wheel) == 0
    wheel._check()


def test_past_deadline_added_after_a_future_one_does_not_disturb_it() -> None:
    wheel = TimingWheel(bits=1, levels=2, now=10)
    future, past = Job("future"), Job("past")
    wheel.add(future, 11)
    wheel.add(past, 3)
    wheel._check()
    assert wheel.advance(10) == [past]
    assert wheel.advance(11) == [future]


# -- errors --------------------------------------------------------------------


def test_remove_of_entry_never_added_raises_value_error() -> None:
    wheel = TimingWheel()
    with pytest.raises(ValueError, match="not in a wheel"):
        wheel.remove(Job("stranger"))
    wheel._check()


def test_remove_of_removed_or_expired_entry_raises_value_error() -> None:
    wheel = TimingWheel()
    removed, expired, other = Job("removed"), Job("expired"), Job("other")
    wheel.add(removed, 10)
    wheel.add(expired, 10)
    wheel.add(other, 20)
    wheel.remove(removed)
    assert wheel.advance(10) == [expired]
    for job in (removed, expired):
        with pytest.raises(ValueError, match="not in a wheel"):
            wheel.remove(job)
    assert len(wheel) == 1
    wheel._check()


def test_adding_an_entry_twice_raises_value_error_and_changes_nothing() -> None:
    wheel = TimingWheel()
    job = Job("a")
    wheel.add(job, 10)
    with pytest.raises(ValueError, match="already in a wheel"):
        wheel.add(job, 20)
    with pytest.raises(ValueError, match="already in a wheel"):
        TimingWheel().add(job, 20)
    assert len(wheel) == 1
    wheel._check()
    assert wheel.advance(10) == [job]


def test_add_many_files_in_order_like_repeated_add() -> None:
    wheel = TimingWheel(bits=2, levels=3)
    jobs = [Job(i) for i in range(5)]
    wheel.add(Job("before"), 40)
    wheel.add_many(jobs, 40)
    wheel.add_many([], 40)
    wheel._check()
    assert len(wheel) == 6
    assert names(expire(wheel, 39)) == []
    assert names(expire(wheel, 40)) == ["before", 0, 1, 2, 3, 4]
    wheel._check()


def test_add_many_with_an_entry_twice_raises_and_changes_nothing() -> None:
    wheel = TimingWheel(bits=2, levels=3)
    jobs = [Job(i) for i in range(3)]
    with pytest.raises(ValueError, match="already in a wheel"):
        wheel.add_many([*jobs, jobs[1]], 7)
    with pytest.raises(ValueError, match="already in a wheel"):
        wheel.add_many([*jobs, jobs[0]], 7)
    assert len(wheel) == 0
    assert wheel.next_tick() is None
    assert not any(job.in_wheel for job in jobs)
    wheel._check()
    wheel.add_many(jobs, 7)  # all free again
    assert names(expire(wheel, 7)) == [0, 1, 2]


def test_time_going_backwards_raises_value_error_and_changes_nothing() -> None:
    wheel = TimingWheel(now=100)
    job = Job("a")
    wheel.add(job, 150)
    with pytest.raises(ValueError, match="backwards"):
        wheel.advance(99)
    assert wheel.now == 100
    assert len(wheel) == 1
    wheel._check()
    assert wheel.advance(150) == [job]


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
    wheel = TimingWheel(bits=bits, levels=levels)
    job = Job("a")
    wheel.add(job, 2**200)
    wheel._check()
    assert wheel.advance(2**200 - 1) == []
    wheel._check()
    assert wheel.advance(2**200) == [job]


# -- far deadlines -------------------------------------------------------------


@pytest.mark.parametrize(
    "deadline",
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
def test_far_deadlines_expire_exactly_with_bounded_cascades(deadline: int) -> None:
    # Default wheel, 1 ms ticks: days and years away.
    wheel = CountingWheel(now=123_456)
    job = Job("far")
    wheel.add(job, deadline)
    wakeups = 0
    while (tick := wheel.next_tick()) is not None:
        assert tick <= deadline
        wakeups += 1
        assert wheel.advance(tick - 1) == []
        expired = wheel.advance(tick)
        wheel._check()
        assert expired == ([job] if tick == deadline else [])
    # It moves down at most once per level below its first one, and the
    # wheel wakes up once per slot it sat in: never per empty slot.
    moves = wheel.cascades[job]
    # (A count of 0 would mean CountingWheel no longer sees the filings of advance.)
    assert 1 <= moves <= 5
    assert wakeups == moves + 1


def test_far_deadlines_need_no_overflow_list_on_a_tiny_wheel() -> None:
    # 2 levels x 2 slots span 4 ticks; everything here is far beyond that.
    wheel = CountingWheel(bits=1, levels=2)
    rng = random.Random(7)
    jobs = {Job(i): rng.randrange(10, 10**12) for i in range(200)}
    for job, tick in jobs.items():
        wheel.add(job, tick)
    wheel._check()
    for now in sorted({*jobs.values(), *(t - 1 for t in jobs.values())}):
        for job in expire(wheel, now):
            assert jobs.pop(job) == now
    assert jobs == {}
    assert len(wheel) == 0
    assert 0 < max(wheel.cascades.values()) <= 1


def test_jumping_over_many_slots_at_once_expires_everything_due() -> None:
    wheel = TimingWheel(bits=2, levels=3)
    jobs = [Job(t) for t in range(0, 5000, 7)]
    for job in jobs:
        wheel.add(job, job.name)
    expired = wheel.advance(2500)
    wheel._check()
    assert sorted(names(expired)) == list(range(0, 2501, 7))
    assert len(wheel) == len(jobs) - len(expired)


# -- order ---------------------------------------------------------------------


def test_entries_of_one_slot_expire_in_the_order_they_were_added() -> None:
    wheel = TimingWheel(bits=2, levels=3)
    jobs = [Job(i) for i in range(50)]
    for job in jobs:
        wheel.add(job, 1000)
    assert wheel.advance(1000) == jobs


def test_fifo_order_survives_cascades_and_removals() -> None:
    # Tick 1023 = 0b1111111111 lies in a different slot at every level, so
    # entries added at these "now"s start at different levels and the early
    # ones cascade (1016 -> 1020 -> 1022 -> 1023) among the later ones.
    wheel = CountingWheel(bits=1, levels=4)
    jobs: list[Job] = []
    for now in [0, 500, 1000, 1016, 1017, 1019, 1020, 1021, 1022]:
        assert wheel.advance(now) == []
        for _ in range(3):
            jobs.append(Job(len(jobs)))
            wheel.add(jobs[-1], 1023)
        wheel._check()
    assert wheel.cascades[jobs[0]] == 3
    for job in jobs[1::4]:
        wheel.remove(job)
    assert wheel.advance(1023) == [j for j in jobs if j not in jobs[1::4]]


def test_past_entries_expire_in_the_order_they_were_added() -> None:
    wheel = TimingWheel(now=50)
    jobs = [Job(i) for i in range(10)]
    for i, job in enumerate(jobs):
        wheel.add(job, 50 - i)
    assert wheel.advance(50) == jobs


# -- next_tick -----------------------------------------------------------------


def test_next_tick_is_none_only_when_empty() -> None:
    wheel = TimingWheel()
    assert wheel.next_tick() is None
    job = Job("a")
    wheel.add(job, 10)
    assert wheel.next_tick() is not None
    wheel.remove(job)
    assert wheel.next_tick() is None
    wheel.add(job, 10)
    wheel.advance(10)
    assert wheel.next_tick() is None


@pytest.mark.parametrize(("bits", "levels"), [(1, 1), (1, 3), (2, 3), (6, 6)])
def test_next_tick_is_never_later_than_the_earliest_deadline(bits: int, levels: int) -> None:
    rng = random.Random(bits * 100 + levels)
    wheel = TimingWheel(bits=bits, levels=levels)
    live: dict[Job, int] = {}
    for i in range(2000):
        if live and rng.random() < 0.3:
            job = rng.choice(list(live))
            wheel.remove(job)
            del live[job]
        else:
            job = Job(i)
            live[job] = wheel.now + rng.choice([1, 2, 3, 50, 4000, 10**7])
            wheel.add(job, live[job])
        if rng.random() < 0.2:
            for job in expire(wheel, wheel.now + rng.randrange(100)):
                assert live.pop(job) <= wheel.now
        tick = wheel.next_tick()
        if live:
            assert tick is not None
            assert wheel.now < tick <= min(live.values())
        else:
            assert tick is None


def test_next_tick_skips_empty_slots() -> None:
    wheel = TimingWheel(bits=2, levels=3)
    job = Job("a")
    wheel.add(job, 10**9)
    tick = wheel.next_tick()
    assert tick is not None
    # The slot holding it is in the top level, far past "now", not tick 1.
    assert tick > 10**9 - 2 ** (2 * 2)
    assert tick <= 10**9


# -- clear, len, reuse -----------------------------------------------------------


def test_clear_returns_every_entry_and_empties_the_wheel() -> None:
    wheel = TimingWheel(bits=1, levels=2, now=10)
    jobs = [Job(i) for i in range(30)]
    for i, job in enumerate(jobs):
        wheel.add(job, 10 + i * i - 5)
    out = wheel.clear()
    assert sorted(names(out)) == list(range(30))
    assert len(out) == 30
    assert all(not job.in_wheel for job in jobs)
    assert len(wheel) == 0
    assert wheel.next_tick() is None
    assert wheel.now == 10
    wheel._check()
    assert wheel.advance(10**6) == []
    # Cleared entries can be added again.
    wheel.add(jobs[0], 10**6 + 1)
    assert wheel.advance(10**6 + 1) == [jobs[0]]


def test_len_counts_adds_removes_and_expiries() -> None:
    wheel = TimingWheel(bits=2, levels=2)
    jobs = [Job(i) for i in range(10)]
    for n, job in enumerate(jobs, 1):
        wheel.add(job, n)
        assert len(wheel) == n
    wheel.remove(jobs[9])
    assert len(wheel) == 9
    wheel.advance(4)
    assert len(wheel) == 5
    wheel.clear()
    assert len(wheel) == 0


def test_an_entry_can_be_added_again_after_it_left() -> None:
    wheel = TimingWheel(bits=1, levels=2)
    job = Job("a")
    wheel.add(job, 3)
    wheel.remove(job)
    wheel.add(job, 5)
    assert wheel.advance(4) == []
    assert wheel.advance(5) == [job]
    wheel.add(job, 9)
    assert wheel.advance(9) == [job]
    wheel._check()


def test_two_wheels_share_no_state() -> None:
    w1, w2 = TimingWheel(bits=1, levels=2), TimingWheel(bits=1, levels=2)
    a, b = Job("a"), Job("b")
    w1.add(a, 8)
    w2.add(b, 8)
    assert w1.advance(8) == [a]
    assert len(w2) == 1
    assert w2.advance(8) == [b]


# -- model-based: hypothesis state machine ----------------------------------------

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
    """The wheel against a dict of live entries and their ticks."""

    def __init__(self) -> None:
        super().__init__()
        self.wheel: CountingWheel
        self.live: dict[Job, int] = {}
        self.dead: list[Job] = []
        self.serial = 0

    @initialize(
        bits=st.integers(1, 3),
        levels=st.integers(1, 3),
        start=st.one_of(st.integers(-50, 50), st.integers(0, 2**45)),
    )
    def make_wheel(self, bits: int, levels: int, start: int) -> None:
        self.wheel = CountingWheel(bits=bits, levels=levels, now=start)
        self.levels = levels

    def _new_job(self) -> Job:
        self.serial += 1
        return Job(self.serial)

    def _add(self, job: Job, tick: int) -> None:
        self.wheel.cascades[job] = 0
        self.wheel.add(job, tick)
        self.live[job] = tick

    @rule(offset=ADD_OFFSETS)
    def add(self, offset: int) -> None:
        self._add(self._new_job(), self.wheel.now + offset)

    @rule(offset=ADD_OFFSETS, count=st.integers(2, 6))
    def add_several_on_one_tick(self, offset: int, count: int) -> None:
        for _ in range(count):
            self._add(self._new_job(), self.wheel.now + offset)

    @rule(data=st.data(), offset=ADD_OFFSETS, fresh=st.integers(0, 5))
    def add_many_on_one_tick(self, data: st.DataObject, offset: int, fresh: int) -> None:
        jobs = [self._new_job() for _ in range(fresh)]
        if self.dead:
            again = data.draw(st.lists(st.sampled_from(self.dead), max_size=3, unique=True))
            for job in again:
                self.dead.remove(job)
            jobs += again
        jobs = data.draw(st.permutations(jobs))
        tick = self.wheel.now + offset
        self.wheel.add_many(jobs, tick)
        for job in jobs:
            self.wheel.cascades[job] = 0
            self.live[job] = tick

    @precondition(lambda self: self.live)
    @rule(data=st.data(), offset=ADD_OFFSETS, fresh=st.integers(0, 3))
    def add_many_with_a_live_entry_is_refused_and_changes_nothing(
        self, data: st.DataObject, offset: int, fresh: int
    ) -> None:
        live = data.draw(st.sampled_from(sorted(self.live, key=lambda j: j.name)))
        jobs = data.draw(st.permutations([*(self._new_job() for _ in range(fresh)), live]))
        with pytest.raises(ValueError, match="already in a wheel"):
            self.wheel.add_many(jobs, self.wheel.now + offset)
        assert not any(job.in_wheel for job in jobs if job is not live)
        self.dead.extend(job for job in jobs if job is not live)

    @precondition(lambda self: self.dead)
    @rule(data=st.data(), offset=ADD_OFFSETS)
    def add_again_an_entry_that_left(self, data: st.DataObject, offset: int) -> None:
        job = data.draw(st.sampled_from(self.dead))
        self.dead.remove(job)
        self._add(job, self.wheel.now + offset)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), offset=ADD_OFFSETS)
    def add_of_a_live_entry_is_refused(self, data: st.DataObject, offset: int) -> None:
        job = data.draw(st.sampled_from(sorted(self.live, key=lambda j: j.name)))
        with pytest.raises(ValueError, match="already in a wheel"):
            self.wheel.add(job, self.wheel.now + offset)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(sorted(self.live, key=lambda j: j.name)))
        self.wheel.remove(job)
        del self.live[job]
        self.dead.append(job)
        assert not job.in_wheel

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def remove_of_an_entry_not_in_the_wheel_is_refused(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(self.dead))
        with pytest.raises(ValueError, match="not in a wheel"):
            self.wheel.remove(job)

    def _advance(self, now: int) -> None:
        wheel = self.wheel
        expired = expire(wheel, now)
        assert wheel.now == now
        assert len(expired) == len(set(expired)), "an entry expired twice"
        for job in expired:
            assert job in self.live, f"{job} expired but was not live"
            assert self.live[job] <= now, f"{job} due at {self.live[job]} expired at {now}"
            assert not job.in_wheel
        due = {job for job, tick in self.live.items() if tick <= now}
        assert set(expired) == due
        for job in expired:
            del self.live[job]
            self.dead.append(job)
            # It moved down at most once per level below the top.
            assert wheel.cascades[job] <= self.levels - 1

    @rule(step=ADVANCE_STEPS)
    def advance(self, step: int) -> None:
        self._advance(self.wheel.now + step)

    @precondition(lambda self: self.live)
    @rule(data=st.data(), delta=st.integers(-2, 1))
    def advance_around_a_deadline(self, data: st.DataObject, delta: int) -> None:
        tick = data.draw(st.sampled_from(sorted(self.live.values())))
        self._advance(max(self.wheel.now, tick + delta))

    @precondition(lambda self: self.live)
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

    @rule()
    def clear(self) -> None:
        out = cast("list[Job]", self.wheel.clear())
        assert len(out) == len(set(out))
        assert set(out) == set(self.live)
        assert not any(job.in_wheel for job in out)
        self.dead.extend(out)
        self.live.clear()

    @invariant()
    def agrees_with_model(self) -> None:
        wheel = self.wheel
        wheel._check()
        assert len(wheel) == len(self.live)
        assert all(job.in_wheel for job in self.live)
        tick = wheel.next_tick()
        if not self.live:
            assert tick is None
            return
        assert tick is not None
        # Nothing is due before now, so a past deadline is due "now".
        assert wheel.now <= tick <= max(wheel.now, min(self.live.values()))

    @invariant()
    def index_stays_small(self) -> None:
        # Below the top level, every occupied slot lies in the block of "now"
        # one level up, so each level holds fewer than 2**bits of them; only
        # the top level grows, by one slot per top-level span that holds a
        # deadline. Plus the slot of entries already due.
        wheel = self.wheel
        bits, levels = wheel._bits, wheel._levels
        top = (levels - 1) * bits
        spans = {tick >> top for tick in self.live.values() if tick > wheel.now}
        assert len(wheel._slots) <= (levels - 1) * (2**bits - 1) + len(spans) + 1


WheelMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# The thread method: a wheel stuck in a loop must fail the run even while
# hypothesis is shrinking, where a signal-raised timeout would be swallowed.
test_wheel_agrees_with_a_dict_model = pytest.mark.timeout(30, method="thread")(
    WheelMachine.TestCase
)


# -- model-based: seeded stress against a heap ------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_stress_against_a_heap_model(seed: int) -> None:
    rng = random.Random(seed)
    levels = 3
    wheel = CountingWheel(bits=2, levels=levels, now=rng.randrange(10**6))
    live: dict[Job, int] = {}
    heap: list[tuple[int, int, Job]] = []  # (tick, serial, job); rows of removed jobs are stale
    pool: list[Job] = []  # the live jobs, for O(1) random picks
    where: dict[Job, int] = {}  # job -> its index in pool
    serial = 0

    def forget(job: Job) -> None:
        i = where.pop(job)
        last = pool.pop()
        if last is not job:
            pool[i] = last
            where[last] = i
        del live[job]

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
    max_live = cascades = 0
    for op in range(50_000):
        # Alternate phases that grow and shrink the wheel.
        grow = (op // 5000) % 2 == 0
        p_add, p_remove = (0.8, 0.05) if grow else (0.35, 0.35)
        p_big_jump = 0.0 if grow else 0.3
        r = rng.random()
        if r < p_add or not live:
            serial += 1
            job = Job(serial)
            tick = wheel.now + rng.choices(offsets, weights=[1, 3, 4, 2])[0]()
            wheel.add(job, tick)
            live[job] = tick
            where[job] = len(pool)
            pool.append(job)
            heapq.heappush(heap, (tick, serial, job))
        elif r < p_add + p_remove:
            job = pool[rng.randrange(len(pool))]
            wheel.remove(job)
            wheel.cascades.pop(job, None)
            forget(job)
        else:
            now = wheel.now + rng.choices(steps, weights=[1, 6, 1, p_big_jump])[0]()
            expired = expire(wheel, now)
            due = []
            while heap and heap[0][0] <= now:
                job = heapq.heappop(heap)[2]
                if job in live:
                    due.append(job)
            assert len(expired) == len(set(expired))
            assert set(expired) == set(due)
            for job in expired:
                assert live[job] <= now
                assert not job.in_wheel
                moves = wheel.cascades.pop(job, 0)
                assert moves <= levels - 1
                cascades += moves
                forget(job)
        while heap and heap[0][2] not in live:
            heapq.heappop(heap)
        max_live = max(max_live, len(live))
        assert len(wheel) == len(live)
        nxt = wheel.next_tick()
        if live:
            assert nxt is not None
            assert wheel.now <= nxt <= max(wheel.now, heap[0][0])
        else:
            assert nxt is None
        if op % 500 == 0:
            wheel._check()
    wheel._check()
    assert max_live > 500, "the stress test should keep many entries live"
    assert cascades > 2000, "the stress test should cascade entries often"
    assert set(wheel.clear()) == set(live)

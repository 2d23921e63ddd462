"""Time: nothing runs early, and only the monotonic clock moves timers.

* Real clock (``slow``): no ``on_execute`` starts before its due time and no
  task is exhausted before its life span ends, over a few hundred timers.
* Fake clock: every task starts at the first tick at or after its due time,
  exactly, even while the wall clock (``time.time`` / ``time.time_ns``)
  jumps back and forth by years; ``ctx.remaining()`` and ``ctx.wait()``
  follow the bucket's clock only; and no wheelbucket code reads the wall
  clock at all.
"""

from __future__ import annotations

import functools
import math
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import wheelbucket
from wheelbucket import Executor, TaskBucket, TaskContext, TaskState, TaskType
from wheelbucket.testing import FakeClock, settle

TICK_NS = 1_000_000  # the default tick: 1 ms

# The package's own folder, wherever it is installed: not any path that merely
# contains "wheelbucket" (the checkout's folder may well have that name too).
PACKAGE_DIR = os.path.join(
    os.path.normcase(os.path.realpath(os.path.dirname(wheelbucket.__file__))), ""
)


@functools.cache
def _is_library_code(filename: str) -> bool:
    return os.path.normcase(os.path.realpath(filename)).startswith(PACKAGE_DIR)


class WallClockChaos:
    """Stand-ins for time.time / time.time_ns that jump wildly on every call.

    They also note every caller inside the wheelbucket package, which should
    never read the wall clock.
    """

    JUMPS = (-10 * 365 * 86400.0, -3600.0, 0.0, 86400.0, 7 * 365 * 86400.0, -1.5, 1e6)

    def __init__(self) -> None:
        self.real_time = time.time
        self.calls = 0
        self.library_callers: list[str] = []
        self.lock = threading.Lock()

    def _note(self) -> float:
        frame = sys._getframe(2)
        if _is_library_code(frame.f_code.co_filename):
            self.library_callers.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")
        with self.lock:
            self.calls += 1
            jump = self.JUMPS[self.calls % len(self.JUMPS)]
        return max(0.0, self.real_time() + jump)

    def time(self) -> float:
        return self._note()

    def time_ns(self) -> int:
        return int(self._note() * 1e9)


@pytest.fixture
def chaos(monkeypatch: pytest.MonkeyPatch) -> WallClockChaos:
    chaos = WallClockChaos()
    monkeypatch.setattr(time, "time", chaos.time)
    monkeypatch.setattr(time, "time_ns", chaos.time_ns)
    return chaos


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


class Stamp(Executor):
    """Notes the bucket-clock time of each on_execute start and each exhaustion."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.started: dict[str, int] = {}
        self.exhausted_at: dict[str, int] = {}
        #: on_execute calls blocked in ctx.wait() right now (for settle()).
        self.blocked = 0
        self.lock = threading.Lock()

    def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        now = self.clock.monotonic_ns()
        with self.lock:
            self.started[task_id] = now
        if data == "block":
            with self.lock:
                self.blocked += 1
            ctx.wait()
            with self.lock:
                self.blocked -= 1
        return now

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        now = self.clock.monotonic_ns()
        with self.lock:
            self.exhausted_at[task_id] = now


def _exact_schedule(bucket: TaskBucket, clock: FakeClock, stamp: Stamp, seed: int) -> None:
    """Fill timers at random fake times; step the clock; each fires at its first tick."""
    rng = random.Random(seed)
    step_ns = 250_000  # 0.25 ms: finer than a tick, so "one tick late" would show
    due: dict[str, int] = {}
    deadline: dict[str, int] = {}
    for i in range(200):
        run_after = rng.choice([0.0, 1e-9, 0.0004, 0.001, 0.0015, rng.uniform(0, 0.05)])
        life = run_after + rng.choice([0.001, 0.0025, 0.2])
        blocks = i % 25 == 0  # fewer than there are workers, so none delays another
        now = clock.monotonic_ns()
        task_id = f"t{i}"
        bucket.fill(
            TaskType.TIME_BOMB,
            task_id,
            "block" if blocks else None,
            run_after=run_after,
            life_span=life,
        )
        due[task_id] = now + math.ceil(run_after * 1e9)  # as the bucket rounds: up
        deadline[task_id] = now + math.ceil(life * 1e9)
        if i % 7 == 0:  # fills happen at assorted fake times, between ticks too
            clock.advance(rng.choice([0.0001, 0.00013, 0.00025]))  # <= step_ns
            _settle(bucket, stamp)
    end = max(deadline.values()) + 2 * TICK_NS
    while clock.monotonic_ns() < end:
        clock.advance(step_ns / 1e9)
        _settle(bucket, stamp)
    assert len(bucket) == 0
    for task_id, due_ns in due.items():
        if task_id in stamp.started:
            started = stamp.started[task_id]
            assert started >= due_ns, f"{task_id} started {due_ns - started} ns early"
            # The first tick at or after the due time, seen at the next step.
            first_tick = -(-due_ns // TICK_NS) * TICK_NS
            assert started < first_tick + step_ns, (task_id, started - due_ns)
        else:
            # Never ran: its life span ended first (a due time within the
            # same tick as its deadline); it was exhausted, not early.
            assert stamp.exhausted_at[task_id] >= deadline[task_id]
    for task_id, at in stamp.exhausted_at.items():
        assert at >= deadline[task_id], f"{task_id} exhausted {deadline[task_id] - at} ns early"
        first_tick = -(-deadline[task_id] // TICK_NS) * TICK_NS
        assert at < first_tick + step_ns
    ran = sum(1 for i in range(200) if f"t{i}" in stamp.started)
    assert ran >= 150


def _settle(bucket: TaskBucket, stamp: Stamp) -> None:
    """settle(), counting the on_execute calls blocked in ctx.wait() as they change."""
    end = time.monotonic() + 10
    while True:
        try:
            settle(bucket, running=stamp.blocked, timeout=0.05)
        except TimeoutError:
            if time.monotonic() > end:
                raise
        else:
            return


@pytest.fixture
def stamped(fake_clock: FakeClock) -> Iterator[tuple[TaskBucket, Stamp]]:
    stamp = Stamp(fake_clock)
    bucket = TaskBucket(executor=stamp, clock=fake_clock, workers=8, max_bucket=1000)
    yield bucket, stamp
    bucket.close(wait=False)


def test_timers_fire_exactly_on_the_monotonic_schedule(
    stamped: tuple[TaskBucket, Stamp], fake_clock: FakeClock
) -> None:
    bucket, stamp = stamped
    _exact_schedule(bucket, fake_clock, stamp, seed=1)


def test_wall_clock_jumps_cannot_move_a_timer(
    stamped: tuple[TaskBucket, Stamp], fake_clock: FakeClock, chaos: WallClockChaos
) -> None:
    bucket, stamp = stamped
    _exact_schedule(bucket, fake_clock, stamp, seed=2)
    assert chaos.library_callers == []


def test_a_timer_does_not_fire_while_only_the_wall_clock_moves(
    stamped: tuple[TaskBucket, Stamp], fake_clock: FakeClock, chaos: WallClockChaos
) -> None:
    bucket, stamp = stamped
    handle = bucket.fill(TaskType.TIME_BOMB, "later", run_after=1.0, life_span=2.0)
    for _ in range(50):
        time.time()  # the wall clock leaps years forward and back...
        time.time_ns()
        settle(bucket)
    assert handle.state is TaskState.PENDING  # ...and the timer has not moved
    fake_clock.advance(0.999)
    settle(bucket)
    assert handle.state is TaskState.PENDING
    fake_clock.advance(0.001)
    settle(bucket)
    assert handle.state is TaskState.FINISHED
    assert stamp.started["later"] == round(1001.0 * 1e9)
    assert chaos.calls >= 100
    assert chaos.library_callers == []


def test_ctx_time_follows_the_bucket_clock_only(
    fake_clock: FakeClock, chaos: WallClockChaos
) -> None:
    seen: dict[str, Any] = {}
    proceed = threading.Event()

    def work(ctx: TaskContext, task_id: str, data: Any) -> None:
        seen["deadline"] = ctx.deadline
        seen["remaining at start"] = ctx.remaining()
        proceed.wait(10)
        seen["remaining later"] = ctx.remaining()
        seen["wait(0.25)"] = ctx.wait(0.25)  # times out on the fake clock
        seen["remaining at end"] = ctx.remaining()

    with TaskBucket(executor=work, clock=fake_clock, life_span=2.0) as bucket:
        start = fake_clock.monotonic()
        handle = bucket.fill(TaskType.IMMEDIATE, "t")
        settle(bucket, running=1)
        fake_clock.advance(0.5)
        for _ in range(20):
            time.time()
        proceed.set()
        # ctx.wait(0.25) returns only when the fake clock has moved 0.25 s.
        until = round((start + 0.75) * 1e9)
        end = time.monotonic() + 10
        while not any(d == until for d, _ in list(fake_clock._sleepers)):
            assert time.monotonic() < end, "ctx.wait() never started"
            time.sleep(0.001)
        assert handle.wait(0.1) is None
        fake_clock.advance(0.25)
        assert handle.wait(10) is TaskState.FINISHED
    assert seen["deadline"] == start + 2.0
    assert seen["remaining at start"] == pytest.approx(2.0)
    assert seen["remaining later"] == pytest.approx(1.5)
    assert seen["wait(0.25)"] is False
    assert seen["remaining at end"] == pytest.approx(1.25)
    assert chaos.library_callers == []


def test_alternating_durations_each_keep_their_own_schedule(fake_clock: FakeClock) -> None:
    # fill() reuses the conversion of the last (run_after, life_span) pair;
    # switching pairs back and forth must never hand a task another's times.
    started: dict[str, int] = {}

    def record(ctx: TaskContext, task_id: str, data: Any) -> None:
        started[task_id] = fake_clock.monotonic_ns()

    pairs = [(0.003, 0.010), (0.007, 0.009), (0.003, 0.004), (0.005, 0.010)]
    with TaskBucket(executor=record, clock=fake_clock) as bucket:
        handles = {}
        for i in range(12):
            run_after, life_span = pairs[i % len(pairs)]
            handles[f"t{i}"] = bucket.fill(
                TaskType.TIME_BOMB, f"t{i}", run_after=run_after, life_span=life_span
            )
        for i in range(12):
            run_after, life_span = pairs[i % len(pairs)]
            # The record's life offset (index 2, see wheelbucket.task.Record).
            life = bucket._core.tasks[f"t{i}"][2]  # type: ignore[index]
            assert life == math.ceil(life_span * 1e9) - math.ceil(run_after * 1e9)
        start = fake_clock.monotonic_ns()
        for _ in range(12):
            fake_clock.advance(0.001)
            settle(bucket)
        for i in range(12):
            run_after, life_span = pairs[i % len(pairs)]
            assert started[f"t{i}"] - start == round(run_after * 1e9)
        # Tasks filled one after another with the same pair share one int.
        run_after, life_span = pairs[0]
        bucket.fill(TaskType.TIME_BOMB, "a", run_after=run_after, life_span=life_span)
        bucket.fill(TaskType.TIME_BOMB, "b", run_after=run_after, life_span=life_span)
        # The records' life offsets (index 2, see wheelbucket.task.Record).
        assert bucket._core.tasks["a"][2] is bucket._core.tasks["b"][2]  # type: ignore[index]
        bucket.drain("a")
        bucket.drain("b")


def test_the_fake_clock_never_goes_backwards(fake_clock: FakeClock) -> None:
    before = fake_clock.monotonic_ns()
    for bad in (-1.0, -1e-9, float("nan")):
        with pytest.raises(ValueError, match="seconds"):
            fake_clock.advance(bad)
    assert fake_clock.monotonic_ns() == before


# -- the real clock ----------------------------------------------------------------


@pytest.mark.slow
def test_no_task_runs_or_is_exhausted_early_on_the_real_clock(chaos: WallClockChaos) -> None:
    """A few hundred real timers: none starts before its due time, none ends early.

    The wall clock jumps about meanwhile; only bounds that cannot fail on a
    slow machine are asserted on the late side.
    """
    clock = time  # the real monotonic clock, as the bucket reads it
    stamp = Stamp(clock)
    rng = random.Random(3)
    due: dict[str, int] = {}
    deadline: dict[str, int] = {}
    with TaskBucket(executor=stamp, workers=4, max_bucket=1000) as bucket:
        for i in range(300):
            run_after = rng.uniform(0, 0.3)
            blocks = i % 6 == 0
            life = run_after + (rng.uniform(0.02, 0.2) if blocks else 5.0)
            before = time.monotonic_ns()
            bucket.fill(
                TaskType.TIME_BOMB,
                f"t{i}",
                "block" if blocks else None,
                run_after=run_after,
                life_span=life,
            )
            due[f"t{i}"] = before + round(run_after * 1e9)
            deadline[f"t{i}"] = before + round(life * 1e9)
        for i in range(100):
            before = time.monotonic_ns()
            bucket.fill(TaskType.IMMEDIATE, f"now{i}")
            due[f"now{i}"] = before
        bucket.close()  # waits: every timer fires and every life span ends
        stats = bucket.stats()
    early = [tid for tid, at in stamp.started.items() if at < due[tid]]
    assert early == []
    early_exhausted = [tid for tid, at in stamp.exhausted_at.items() if at < deadline[tid]]
    assert early_exhausted == []
    assert stats.live == 0
    assert stats.finished + stats.exhausted == 400
    assert stats.exhausted >= 40  # the blocking ones (a few others if the machine is slow)
    assert 0 <= stats.lateness_p50 <= stats.lateness_p99 <= stats.lateness_max < 10
    assert chaos.library_callers == []

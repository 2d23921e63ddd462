"""reset(): a live task's timers move, the task goes on (SPEC section 2, "reset").

The deterministic tests run on a `FakeClock` and `settle()`, and read every
time in whole nanoseconds (the recorder here stamps ``on_execute`` with
``clock.monotonic_ns()``), so "never a nanosecond early" is checked exactly.
All times are written as offsets from the clock's start (``at(1.5)``).

What SPEC says, and where it is tested:

* a pending TIME_BOMB gets *now* + run_after and *now* + life_span, each
  defaulting to the value the task was *filled* with (`test_pending_*`,
  `test_defaults_*`); ``life_span > run_after`` or ValueError, nothing
  changed (`test_life_span_not_longer_than_run_after_*`). A TIME_BOMB that
  came due but still waits for a worker is pending too, so it gets new times
  as well (`test_due_time_bomb_still_queued_*`);
* a pending IMMEDIATE or a running task: only the life-span deadline moves,
  ``ctx.deadline`` and ``ctx.remaining()`` follow; a run_after raises
  ValueError and changes nothing (`test_queued_immediate_*`, `test_running_*`);
* the same handle back, no ending, no hook, ``stats().reset`` counts only
  successful resets (`test_reset_returns_*`, `test_refused_resets_*`);
* TaskNotFound for unknown and ended ids, also from the task's own ending
  hook (`test_reset_of_unknown_or_ended_*`, `test_reset_from_the_task_own_*`);
* bad arguments (`test_bad_argument_*`);
* many resets of one task, and of many tasks in random order (W5's pattern);
* races, with real threads: on the fake clock (deterministic verdicts,
  whatever the interleaving; `fast_switching` makes the threads interleave
  finely) and one eight-thread stress on the real clock (marked ``slow``).
  Only one thread resets a given id where the test checks start times
  against the resets' due times: with two threads resetting the same id at
  once, which "now" counts is not the caller's to know.

A choice SPEC leaves to us, made here: while ``close(wait=True)`` waits,
reset() of a live task works (the task is live, and only fill is refused
with BucketClosed), but it does not stretch close()'s own timeout.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import (
    RecordingExecutor,
    raises,
    wait_cancelled,
    wait_gate,
    wait_until,
)

from wheelbucket import (
    BucketClosed,
    BucketFull,
    BucketStats,
    Executor,
    TaskBucket,
    TaskContext,
    TaskExists,
    TaskHandle,
    TaskNotFound,
    TaskState,
    TaskType,
)
from wheelbucket.testing import FakeClock, settle

MakeBucket = Callable[..., TaskBucket]
Gate = Callable[[], threading.Event]

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB
NS0 = 1000 * 10**9  # the FakeClock's start, in ns
TICK = 0.001  # the bucket's default tick
# The bucket defaults in these tests: unlike any value a test fills with, so
# that a reset falling back to the bucket's default instead of the fill's shows.
BUCKET_RUN_AFTER = 0.25
BUCKET_LIFE_SPAN = 10.0


def at(offset: float) -> int:
    """The fake clock's time `offset` seconds after its start, in ns."""
    return NS0 + round(offset * 1e9)


def advance_to(clock: FakeClock, offset: float) -> None:
    clock.advance((at(offset) - clock.monotonic_ns()) / 1e9)


def grace() -> None:
    """A moment of real time for other threads, where `settle()` cannot wait.

    Used only where every worker is held on purpose (settle needs the queues
    empty): it gives a wrong implementation the time to show itself; a right
    one passes whatever the delay.
    """
    time.sleep(0.05)


def deadline_ns(ctx: TaskContext) -> int:
    return round(ctx.deadline * 1e9)


def starts(recorder: RecordingExecutor, task_id: str) -> list[int]:
    """When each on_execute of `task_id` began (ns)."""
    return [d for h, t, d in recorder.snapshot() if h == "on_execute" and t == task_id]


def assert_stats_consistent(bucket: TaskBucket) -> None:
    """The counters' invariants; call once the bucket has settled."""
    s = bucket.stats()
    assert s.live == s.pending + s.running, s
    assert s.live == len(bucket), s
    assert s.filled == s.finished + s.failed + s.exhausted + s.drained + s.rescued + s.live, s


def endings_of(s: BucketStats) -> tuple[int, ...]:
    return (s.finished, s.failed, s.exhausted, s.drained, s.rescued)


def assert_starts_at(
    bucket: TaskBucket,
    recorder: RecordingExecutor,
    clock: FakeClock,
    task_id: str,
    offset: float,
    *,
    held: int = 0,
    stays: bool = False,
) -> None:
    """`task_id` has not started one tick before `offset`, and starts exactly at it.

    `held`: hooks the test keeps blocked meanwhile; `stays`: the task's own
    on_execute blocks once it started.
    """
    advance_to(clock, offset - TICK)
    settle(bucket, running=held)
    assert starts(recorder, task_id) == [], f"{task_id} started before {offset}"
    advance_to(clock, offset)
    settle(bucket, running=held + stays)
    assert starts(recorder, task_id) == [at(offset)], f"{task_id} did not start at {offset}"


def assert_exhausted_at(
    bucket: TaskBucket,
    clock: FakeClock,
    handle: TaskHandle,
    offset: float,
    *,
    held: int = 1,
    stuck: bool = False,
) -> None:
    """`handle`'s life span ends exactly at `offset`: live one tick before, EXHAUSTED at it.

    `held` counts the task's own blocked on_execute; `stuck`: it ignores its
    ctx, so its worker stays busy after the ending.
    """
    advance_to(clock, offset - TICK)
    settle(bucket, running=held)
    assert handle.state is not TaskState.EXHAUSTED, f"exhausted before {offset}"
    assert handle.id in bucket
    advance_to(clock, offset)
    settle(bucket, running=held - 1 + stuck)
    assert handle.state is TaskState.EXHAUSTED, f"not exhausted at {offset}"


@pytest.fixture
def recorder(clock: FakeClock) -> RecordingExecutor:
    """The conftest's recorder, but stamping on_execute in ns (exact comparisons)."""
    return RecordingExecutor(now=clock.monotonic_ns)


@pytest.fixture
def bucket(make_bucket: MakeBucket, recorder: RecordingExecutor) -> TaskBucket:
    return make_bucket(executor=recorder, run_after=BUCKET_RUN_AFTER, life_span=BUCKET_LIFE_SPAN)


def hold_worker(
    make_bucket: MakeBucket, recorder: RecordingExecutor, gate: Gate
) -> tuple[TaskBucket, threading.Event]:
    """A one-worker bucket whose worker is held in task "blocker" until the gate opens."""
    bucket = make_bucket(
        executor=recorder, workers=1, run_after=BUCKET_RUN_AFTER, life_span=BUCKET_LIFE_SPAN
    )
    hold = gate()
    recorder.behave("blocker", wait_gate(hold))
    bucket.fill(IMMEDIATE, "blocker", life_span=1000.0)
    recorder.wait_for("on_execute", "blocker")
    settle(bucket, running=1)
    return bucket, hold


class Closer:
    """`bucket.close(**kwargs)` on its own thread, so that the test can move time meanwhile."""

    def __init__(self, bucket: TaskBucket, **kwargs: Any) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(bucket, kwargs), daemon=True)
        self.thread.start()
        wait_until(lambda: bucket.closed, what="close() began")

    def _run(self, bucket: TaskBucket, kwargs: dict[str, Any]) -> None:
        try:
            bucket.close(**kwargs)
        except BaseException as exc:  # pragma: no cover - reported by join()
            self.error = exc

    def running(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float = 10.0) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"close() still running after {timeout} s"
        if self.error is not None:
            raise self.error


# -- a pending TIME_BOMB: both times move ----------------------------------------------


def test_pending_time_bomb_gets_a_new_start_and_a_new_life_span(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("t", wait_cancelled())
    handle = bucket.fill(TIME_BOMB, "t", "data", run_after=1.0, life_span=3.0)
    advance_to(clock, 0.5)
    settle(bucket)
    assert bucket.reset("t", run_after=2.0, life_span=4.0) == handle
    assert handle.state is TaskState.PENDING
    # Due at 0.5 + 2.0 now: not at the old due time 1.0, nor a tick before the new one.
    advance_to(clock, 1.0)
    settle(bucket)
    assert starts(recorder, "t") == []
    assert_starts_at(bucket, recorder, clock, "t", 2.5, stays=True)
    ctx = recorder.contexts["t"]
    assert deadline_ns(ctx) == at(4.5)
    assert ctx.remaining() == pytest.approx(2.0)
    # The old life-span deadline (3.0) passes; the new one (0.5 + 4.0) ends it.
    assert_exhausted_at(bucket, clock, handle, 4.5)
    assert recorder.endings("t") == ["on_task_exhausted"]
    stats = bucket.stats()
    assert (stats.reset, stats.exhausted, stats.executed) == (1, 1, 1)
    assert stats.lateness_max == 0.0, "lateness counts from the new due time"
    assert_stats_consistent(bucket)


@dataclass(frozen=True)
class Defaults:
    """fill(**filled) at 0, reset(**reset) at RESET_AT: the task must then start at
    RESET_AT + run_after and its life span end at RESET_AT + life_span."""

    name: str
    filled: dict[str, Any]
    reset: dict[str, Any]
    run_after: float
    life_span: float

    def __str__(self) -> str:
        return self.name


RESET_AT = 0.1  # before the earliest due time any case fills (the bucket's 0.25)
TD = datetime.timedelta
FILLED = {"run_after": 1.0, "life_span": 3.0}
DEFAULTS = [
    Defaults("both-as-filled", FILLED, {}, 1.0, 3.0),
    Defaults("run_after-given", FILLED, {"run_after": 2.0}, 2.0, 3.0),
    Defaults("life_span-given", FILLED, {"life_span": 1.5}, 1.0, 1.5),
    Defaults("both-given", FILLED, {"run_after": 0.25, "life_span": 0.5}, 0.25, 0.5),
    Defaults("bucket-defaults", {}, {}, BUCKET_RUN_AFTER, BUCKET_LIFE_SPAN),
    Defaults("only-run_after-filled", {"run_after": 1.0}, {}, 1.0, BUCKET_LIFE_SPAN),
    Defaults("only-life_span-filled", {"life_span": 3.0}, {}, BUCKET_RUN_AFTER, 3.0),
    Defaults("explicit-none", FILLED, {"run_after": None, "life_span": None}, 1.0, 3.0),
    Defaults(
        "timedeltas",
        {"run_after": TD(seconds=1), "life_span": TD(seconds=3)},
        {"life_span": TD(milliseconds=2500)},
        1.0,
        2.5,
    ),
]


@pytest.mark.parametrize("case", DEFAULTS, ids=str)
def test_defaults_are_the_values_the_task_was_filled_with(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock, case: Defaults
) -> None:
    recorder.behave("t", wait_cancelled())
    handle = bucket.fill(TIME_BOMB, "t", **case.filled)
    advance_to(clock, RESET_AT)
    settle(bucket)
    assert bucket.reset("t", **case.reset) == handle
    assert_starts_at(bucket, recorder, clock, "t", RESET_AT + case.run_after, stays=True)
    assert deadline_ns(recorder.contexts["t"]) == at(RESET_AT + case.life_span)
    assert_exhausted_at(bucket, clock, handle, RESET_AT + case.life_span)
    assert recorder.endings("t") == ["on_task_exhausted"]


def test_zero_delay_fill_can_be_held_back_by_a_reset_before_it_starts(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    # Either order may win here (the task is due at once): the reset, and the
    # task waits for its new time; or the start, and run_after is refused.
    handle = bucket.fill(TIME_BOMB, "t", run_after=0, life_span=3.0)
    try:
        bucket.reset("t", run_after=1.0)
    except ValueError:
        settle(bucket)
        assert starts(recorder, "t") == [at(0)]
        assert bucket.stats().reset == 0
    except TaskNotFound:
        settle(bucket)
        assert starts(recorder, "t") == [at(0)]
        assert handle.state is TaskState.FINISHED
    else:
        assert_starts_at(bucket, recorder, clock, "t", 1.0)
        assert bucket.stats().reset == 1
    settle(bucket)
    assert recorder.endings("t") == ["on_finish"]


def test_defaults_are_the_fill_values_not_an_earlier_reset(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("t", wait_cancelled())
    handle = bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    bucket.reset("t", run_after=5.0, life_span=9.0)
    advance_to(clock, 0.5)
    settle(bucket)
    bucket.reset("t")  # back to 1.0 and 3.0, from now
    assert_starts_at(bucket, recorder, clock, "t", 1.5, stays=True)
    assert deadline_ns(recorder.contexts["t"]) == at(3.5)
    assert_exhausted_at(bucket, clock, handle, 3.5)
    assert bucket.stats().reset == 2


def test_defaults_follow_a_refill_of_the_same_id(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    first = bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    bucket.drain("t")
    second = bucket.fill(TIME_BOMB, "t", run_after=2.0, life_span=5.0)
    advance_to(clock, 0.5)
    settle(bucket)
    assert bucket.reset("t") == second
    assert first.state is TaskState.DRAINED
    recorder.behave("t", wait_cancelled())
    assert_starts_at(bucket, recorder, clock, "t", 2.5, stays=True)
    assert deadline_ns(recorder.contexts["t"]) == at(5.5)
    assert_exhausted_at(bucket, clock, second, 5.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"run_after": 3.0},  # equal to the filled life span
        {"run_after": 4.0},
        {"life_span": 1.0},  # equal to the filled run_after
        {"life_span": 0.5},
        {"run_after": 2.0, "life_span": 2.0},
        {"run_after": 2.0, "life_span": 1.999},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_life_span_not_longer_than_run_after_is_refused_and_changes_nothing(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock, kwargs: dict[str, Any]
) -> None:
    recorder.behave("t", wait_cancelled())
    handle = bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    advance_to(clock, 0.5)
    settle(bucket)
    before = bucket.stats()
    with pytest.raises(ValueError, match="life_span"):
        bucket.reset("t", **kwargs)
    assert bucket.stats() == before
    assert handle.state is TaskState.PENDING
    # The times of the fill stand: due at 1.0, life span ending at 3.0.
    assert_starts_at(bucket, recorder, clock, "t", 1.0, stays=True)
    assert deadline_ns(recorder.contexts["t"]) == at(3.0)
    assert_exhausted_at(bucket, clock, handle, 3.0)
    assert bucket.stats().reset == 0


def test_zero_run_after_starts_a_pending_time_bomb_now(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("t", wait_cancelled())
    bucket.fill(TIME_BOMB, "t", run_after=5.0, life_span=10.0)
    advance_to(clock, 1.0)
    settle(bucket)
    bucket.reset("t", run_after=0)
    settle(bucket, running=1)
    assert starts(recorder, "t") == [at(1.0)]
    assert deadline_ns(recorder.contexts["t"]) == at(11.0)  # now + the filled life span


def test_pending_time_bomb_can_be_moved_earlier(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("t", wait_cancelled())
    handle = bucket.fill(TIME_BOMB, "t", run_after=5.0, life_span=10.0)
    advance_to(clock, 0.5)
    settle(bucket)
    bucket.reset("t", run_after=1.0, life_span=2.0)
    assert_starts_at(bucket, recorder, clock, "t", 1.5, stays=True)
    assert_exhausted_at(bucket, clock, handle, 2.5)
    # The old timers (start 5.0, life span 10.0) come and go: nothing happens.
    advance_to(clock, 20.0)
    settle(bucket)
    assert starts(recorder, "t") == [at(1.5)]
    assert recorder.endings("t") == ["on_task_exhausted"]
    assert_stats_consistent(bucket)


def test_later_then_earlier_then_later_again_runs_at_the_last_time(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=30.0)
    bucket.reset("t", run_after=10.0)  # later: due 10.0
    advance_to(clock, 0.5)
    settle(bucket)
    bucket.reset("t", run_after=0.25)  # earlier than the timer filed: due 0.75
    bucket.reset("t", run_after=2.0)  # and later again at once: due 2.5
    advance_to(clock, 0.75)
    settle(bucket)
    assert starts(recorder, "t") == []
    assert_starts_at(bucket, recorder, clock, "t", 2.5)
    advance_to(clock, 40.0)
    settle(bucket)
    assert starts(recorder, "t") == [at(2.5)]
    assert recorder.endings("t") == ["on_finish"]
    assert bucket.stats().reset == 3


def test_new_due_time_between_ticks_never_runs_early(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    advance_to(clock, 0.5)
    settle(bucket)
    bucket.reset("t", run_after=0.0015)  # due 0.5015: between two 1-ms ticks
    advance_to(clock, 0.5014)
    settle(bucket)
    assert starts(recorder, "t") == []
    advance_to(clock, 0.5015)
    settle(bucket)
    advance_to(clock, 0.5025)
    settle(bucket)
    (started,) = starts(recorder, "t")
    assert at(0.5015) <= started <= at(0.5025)


def test_due_time_bomb_still_queued_for_a_worker_gets_a_new_start(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, gate: Gate
) -> None:
    """A TIME_BOMB that came due while every worker is busy is still PENDING.

    SPEC: "Pending TIME_BOMB task: its due time becomes now + run_after" —
    pending is every live task that is not running, queued ones included
    (`stats().pending`). So a reset before it started must hold it back
    until its new due time, even though it already waited its first
    run_after out; only a task that *started* keeps its start.
    """
    bucket, hold = hold_worker(make_bucket, recorder, gate)
    handle = bucket.fill(TIME_BOMB, "q", run_after=0.5, life_span=3.0)
    advance_to(clock, 0.5)  # due: queued behind the blocker
    # Give the scheduler a moment to queue it. Nothing below depends on
    # whether it did: to the user the task is PENDING either way.
    grace()
    assert handle.state is TaskState.PENDING
    assert bucket.reset("q", run_after=1.0) == handle  # due 1.5, life span to 3.5
    hold.set()  # the worker is free now: q must still wait for 1.5
    settle(bucket)
    assert starts(recorder, "q") == [], "a reset pending TIME_BOMB started before its new due time"
    recorder.behave("q", wait_cancelled())
    assert_starts_at(bucket, recorder, clock, "q", 1.5, stays=True)
    assert deadline_ns(recorder.contexts["q"]) == at(3.5)
    assert_exhausted_at(bucket, clock, handle, 3.5)


# -- a pending IMMEDIATE task: only the life span moves ---------------------------------


def test_queued_immediate_gets_a_new_life_span_and_keeps_its_place(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, gate: Gate
) -> None:
    bucket, hold = hold_worker(make_bucket, recorder, gate)
    recorder.behave("q", wait_cancelled())
    handle = bucket.fill(IMMEDIATE, "q", life_span=1.0)
    advance_to(clock, 0.5)
    assert bucket.reset("q", life_span=2.0) == handle  # the deadline is 2.5 now
    advance_to(clock, 1.0)  # past the old deadline
    # It runs as soon as the worker is free: a task whose life span ended while
    # it queued would be exhausted instead (it never starts late).
    hold.set()
    recorder.wait_for("on_execute", "q")
    settle(bucket, running=1)
    assert starts(recorder, "q") == [at(1.0)]
    ctx = recorder.contexts["q"]
    assert deadline_ns(ctx) == at(2.5)
    assert ctx.remaining() == pytest.approx(1.5)
    assert_exhausted_at(bucket, clock, handle, 2.5)
    assert recorder.endings("q") == ["on_task_exhausted"]
    assert bucket.stats().reset == 1


def test_queued_immediate_is_exhausted_at_its_new_deadline_without_running(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, gate: Gate
) -> None:
    bucket, hold = hold_worker(make_bucket, recorder, gate)
    handle = bucket.fill(IMMEDIATE, "q", life_span=1.0)
    advance_to(clock, 0.5)
    bucket.reset("q")  # the life span it was filled with, from now: 1.5
    advance_to(clock, 1.5 - TICK)
    grace()  # the worker is busy: an early ending would come on a thread the pool adds
    assert handle.state is TaskState.PENDING
    advance_to(clock, 1.5)
    wait_until(lambda: handle.state is TaskState.EXHAUSTED, what="q exhausted at 1.5")
    hold.set()
    settle(bucket)
    assert recorder.hooks("q") == ["on_task_exhausted"]


@pytest.mark.parametrize(
    "kwargs", [{"run_after": 0.5}, {"run_after": 0}, {"run_after": 0.5, "life_span": 5.0}]
)
def test_run_after_for_a_queued_immediate_raises_and_changes_nothing(
    make_bucket: MakeBucket,
    recorder: RecordingExecutor,
    clock: FakeClock,
    gate: Gate,
    kwargs: dict[str, Any],
) -> None:
    bucket, hold = hold_worker(make_bucket, recorder, gate)
    handle = bucket.fill(IMMEDIATE, "q", life_span=1.0)
    before = bucket.stats()
    with pytest.raises(ValueError, match="run_after"):
        bucket.reset("q", **kwargs)
    assert bucket.stats() == before
    advance_to(clock, 1.0)  # the life span it was filled with ends, unmoved
    wait_until(lambda: handle.state is TaskState.EXHAUSTED, what="q exhausted at 1.0")
    hold.set()
    settle(bucket)
    assert recorder.hooks("q") == ["on_task_exhausted"]
    assert bucket.stats().reset == 0


# -- a running task: only the life span moves, ctx follows ---------------------------------


@pytest.mark.parametrize("cooperative", [True, False], ids=["cooperative", "ignores-ctx"])
def test_running_task_pushed_later_is_not_exhausted_at_its_old_deadline(
    bucket: TaskBucket,
    recorder: RecordingExecutor,
    clock: FakeClock,
    gate: Gate,
    cooperative: bool,
) -> None:
    hold = gate()
    recorder.behave("r", wait_cancelled() if cooperative else wait_gate(hold))
    handle = bucket.fill(IMMEDIATE, "r", life_span=1.0)
    recorder.wait_for("on_execute", "r")
    settle(bucket, running=1)
    ctx = recorder.contexts["r"]
    assert deadline_ns(ctx) == at(1.0)
    advance_to(clock, 0.5)
    settle(bucket, running=1)
    assert bucket.reset("r", life_span=2.0) == handle
    assert deadline_ns(ctx) == at(2.5)
    assert ctx.remaining() == pytest.approx(2.0)
    advance_to(clock, 1.0)  # the old deadline
    settle(bucket, running=1)
    assert handle.state is TaskState.RUNNING
    assert not ctx.cancelled
    assert ctx.remaining() == pytest.approx(1.5)
    assert_exhausted_at(bucket, clock, handle, 2.5, stuck=not cooperative)
    assert ctx.cancelled
    assert ctx.remaining() == 0.0
    assert recorder.endings("r") == ["on_task_exhausted"]
    hold.set()
    settle(bucket)
    stats = bucket.stats()
    assert (stats.reset, stats.exhausted, stats.finished, stats.failed) == (1, 1, 0, 0)
    assert_stats_consistent(bucket)


def test_running_task_defaults_to_the_life_span_it_was_filled_with(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("r", wait_cancelled())
    handle = bucket.fill(TIME_BOMB, "r", run_after=1.0, life_span=3.0)
    assert_starts_at(bucket, recorder, clock, "r", 1.0, stays=True)
    ctx = recorder.contexts["r"]
    assert deadline_ns(ctx) == at(3.0)
    advance_to(clock, 2.0)
    settle(bucket, running=1)
    bucket.reset("r")  # now + 3.0 (the whole filled life span), not now + 2.0
    assert deadline_ns(ctx) == at(5.0)
    assert ctx.remaining() == pytest.approx(3.0)
    assert_exhausted_at(bucket, clock, handle, 5.0)


def test_running_task_can_be_brought_to_an_earlier_deadline(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("r", wait_cancelled())
    handle = bucket.fill(IMMEDIATE, "r", life_span=10.0)
    recorder.wait_for("on_execute", "r")
    advance_to(clock, 1.0)
    settle(bucket, running=1)
    bucket.reset("r", life_span=0.5)
    assert deadline_ns(recorder.contexts["r"]) == at(1.5)
    assert_exhausted_at(bucket, clock, handle, 1.5)
    advance_to(clock, 20.0)  # the old deadline passes: nothing more
    settle(bucket)
    assert recorder.endings("r") == ["on_task_exhausted"]
    assert bucket.stats().exhausted == 1


@pytest.mark.parametrize(
    "kwargs", [{"run_after": 0}, {"run_after": 1.0}, {"run_after": 1.0, "life_span": 5.0}]
)
def test_run_after_for_a_running_task_raises_and_changes_nothing(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock, kwargs: dict[str, Any]
) -> None:
    recorder.behave("r", wait_cancelled())
    handle = bucket.fill(TIME_BOMB, "r", run_after=0.5, life_span=2.0)
    assert_starts_at(bucket, recorder, clock, "r", 0.5, stays=True)
    ctx = recorder.contexts["r"]
    before = bucket.stats()
    with pytest.raises(ValueError, match="run_after"):
        bucket.reset("r", **kwargs)
    assert bucket.stats() == before
    assert deadline_ns(ctx) == at(2.0)
    assert_exhausted_at(bucket, clock, handle, 2.0)
    assert bucket.stats().reset == 0


def test_a_task_extends_its_own_life_span_from_on_execute(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    """A heartbeat: work in steps of 0.5 s, and extend the life span by 1 s at each."""
    box: list[TaskBucket] = []

    def heartbeat(ctx: TaskContext, task_id: str, data: Any) -> Any:
        for beat in range(4):
            if ctx.wait(0.5):
                return "cancelled"
            handle = box[0].reset(task_id, life_span=1.0)
            recorder.record("beat", task_id, (beat, handle, deadline_ns(ctx)))
        try:
            box[0].reset(task_id, run_after=1.0)
        except ValueError:
            recorder.record("run_after refused", task_id)
        return "done"

    def beats() -> list[Any]:
        return [d for h, _, d in recorder.snapshot() if h == "beat"]

    recorder.behave("hb", heartbeat)
    box.append(bucket := make_bucket(executor=recorder))
    handle = bucket.fill(IMMEDIATE, "hb", life_span=1.0)
    recorder.wait_for("on_execute", "hb")
    for step in range(1, 5):
        settle(bucket, running=1)  # in ctx.wait(0.5)
        advance_to(clock, 0.5 * step)
        wait_until(lambda step=step: len(beats()) == step, what=f"beat {step}")
    settle(bucket)
    assert [b for b, _, _ in beats()] == [0, 1, 2, 3]
    assert all(h == handle for _, h, _ in beats())
    assert [d for _, _, d in beats()] == [at(0.5 * k + 1.0) for k in range(1, 5)]
    assert "run_after refused" in recorder.hooks("hb")
    # 2 s of work on a life span of 1 s: it finished, it was never exhausted.
    assert handle.result(timeout=0) == "done"
    assert recorder.endings("hb") == ["on_finish"]
    stats = bucket.stats()
    assert (stats.reset, stats.finished, stats.exhausted) == (4, 1, 0)
    assert_stats_consistent(bucket)


def test_a_task_that_stops_extending_itself_is_exhausted_at_its_last_deadline(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    box: list[TaskBucket] = []

    def extend_then_wait(ctx: TaskContext, task_id: str, data: Any) -> Any:
        box[0].reset(task_id, life_span=5.0)
        recorder.record("extended", task_id, deadline_ns(ctx))
        ctx.wait()
        return "ignored"

    recorder.behave("e", extend_then_wait)
    box.append(bucket := make_bucket(executor=recorder))
    handle = bucket.fill(IMMEDIATE, "e", life_span=1.0)
    assert recorder.wait_for("extended", "e") == at(5.0)
    assert_exhausted_at(bucket, clock, handle, 5.0)
    assert recorder.endings("e") == ["on_task_exhausted"]


class AsyncHeld(Executor):
    """An async on_execute that awaits forever; notes its real cancellation."""

    def __init__(self, now: Callable[[], int]) -> None:
        self.now = now
        self.started = threading.Event()
        self.cancelled_at: list[int] = []
        self.exhausted: list[str] = []
        self.ctx: TaskContext | None = None

    async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        self.ctx = ctx
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_at.append(self.now())
            raise

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self.exhausted.append(task_id)


def test_reset_of_a_running_coroutine_moves_its_real_cancellation(
    make_bucket: MakeBucket, clock: FakeClock
) -> None:
    executor = AsyncHeld(clock.monotonic_ns)
    bucket = make_bucket(executor=executor)
    handle = bucket.fill(IMMEDIATE, "a", life_span=1.0)
    assert executor.started.wait(10)
    settle(bucket, running=1)
    advance_to(clock, 0.5)
    settle(bucket, running=1)
    bucket.reset("a", life_span=2.0)
    assert executor.ctx is not None
    assert deadline_ns(executor.ctx) == at(2.5)
    advance_to(clock, 2.5 - TICK)
    settle(bucket, running=1)
    assert executor.cancelled_at == []
    assert handle.state is TaskState.RUNNING
    advance_to(clock, 2.5)
    settle(bucket)
    assert executor.cancelled_at == [at(2.5)]
    assert executor.exhausted == ["a"]
    assert handle.state is TaskState.EXHAUSTED


# -- the handle, no ending, no hook, the counter ---------------------------------------------


def test_reset_returns_the_handle_fill_returned_and_ends_nothing(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, gate: Gate
) -> None:
    bucket, hold = hold_worker(make_bucket, recorder, gate)  # "blocker" is running
    bomb = bucket.fill(TIME_BOMB, "bomb", run_after=1.0, life_span=3.0)
    queued = bucket.fill(IMMEDIATE, "queued", life_span=5.0)
    blocker = bucket.get("blocker")
    assert blocker is not None
    called: list[str] = []
    for handle in (bomb, queued, blocker):
        handle.add_done_callback(lambda h: called.append(h.id))
    events = recorder.snapshot()
    before = bucket.stats()
    for _ in range(3):
        assert bucket.reset("bomb") == bomb
        assert bucket.reset("queued") == queued
        assert bucket.reset("blocker") == blocker
    after = bucket.stats()
    assert after.reset == before.reset + 9
    # Nothing else changed: no ending, no hook, no callback, the same counts.
    assert endings_of(after) == endings_of(before)
    assert (after.filled, after.live, after.pending, after.running) == (
        before.filled,
        before.live,
        before.pending,
        before.running,
    )
    assert (after.executed, after.hook_errors) == (before.executed, before.hook_errors)
    assert recorder.snapshot() == events
    assert called == []
    assert [h.state for h in (bomb, queued, blocker)] == [
        TaskState.PENDING,
        TaskState.PENDING,
        TaskState.RUNNING,
    ]
    assert not any(h.done() for h in (bomb, queued, blocker))
    assert bucket.get("bomb") == bomb
    assert len(bucket) == 3
    hold.set()  # the blocker finishes, then the queued task runs (its deadline is 5.0)
    settle(bucket)
    advance_to(clock, 1.0)  # the bomb, reset at 0, is due at 1.0 (life span to 3.0)
    settle(bucket)
    assert sorted(called) == ["blocker", "bomb", "queued"]  # once each, at their endings
    for task_id in ("bomb", "queued", "blocker"):
        assert recorder.endings(task_id) == ["on_finish"]
    assert_stats_consistent(bucket)


def test_refused_resets_are_not_counted(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("r", wait_cancelled())
    bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    bucket.fill(IMMEDIATE, "r", life_span=3.0)
    recorder.wait_for("on_execute", "r")
    settle(bucket, running=1)
    refused: list[tuple[type[Exception], Callable[[], object]]] = [
        (TaskNotFound, lambda: bucket.reset("unknown")),
        (ValueError, lambda: bucket.reset("t", run_after=3.0)),
        (ValueError, lambda: bucket.reset("r", run_after=0.5)),
        (ValueError, lambda: bucket.reset("t", life_span=-1.0)),
        (TypeError, lambda: bucket.reset("t", life_span="2")),
        (TypeError, lambda: bucket.reset(42)),  # type: ignore[arg-type]
    ]
    for error, call in refused:
        with pytest.raises(error):
            call()
    assert bucket.stats().reset == 0
    bucket.reset("t")
    bucket.reset("r")
    assert bucket.stats().reset == 2


# -- TaskNotFound ---------------------------------------------------------------------------


def test_reset_of_unknown_or_ended_id_raises_task_not_found(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("failed", raises(ValueError("x")))
    recorder.behave("exhausted", wait_cancelled())
    bucket.fill(IMMEDIATE, "finished")
    bucket.fill(IMMEDIATE, "failed")
    bucket.fill(IMMEDIATE, "exhausted", life_span=1.0)
    bucket.fill(TIME_BOMB, "drained")
    bucket.fill(TIME_BOMB, "rescued", run_after=10.0, life_span=20.0)
    bucket.drain("drained")
    settle(bucket, running=1)
    advance_to(clock, 1.0)
    settle(bucket)
    bucket.rescue()
    before = bucket.stats()
    for task_id in ["unknown", "finished", "failed", "exhausted", "drained", "rescued"]:
        for kwargs in ({}, {"life_span": 5.0}, {"run_after": 1.0, "life_span": 5.0}):
            with pytest.raises(TaskNotFound, match=task_id):
                bucket.reset(task_id, **kwargs)
    assert bucket.stats() == before
    assert bucket.stats().reset == 0
    assert_stats_consistent(bucket)


class SelfResetter(RecordingExecutor):
    """Each ending hook tries to reset its own task, and records what happened."""

    def __init__(self, box: list[TaskBucket], now: Callable[[], int]) -> None:
        super().__init__(now)
        self.box = box

    def _try(self, task_id: str) -> None:
        outcomes = []
        for kwargs in ({}, {"life_span": 5.0}, {"run_after": 1.0, "life_span": 5.0}):
            try:
                self.box[0].reset(task_id, **kwargs)
            except TaskNotFound:
                outcomes.append("TaskNotFound")
            except Exception as exc:  # pragma: no cover - the failure the test looks for
                outcomes.append(repr(exc))
            else:  # pragma: no cover - the failure the test looks for
                outcomes.append("reset")
        self.record("reset", task_id, outcomes)

    def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        super().on_finish(ctx, task_id, data)
        self._try(task_id)

    def on_execute_error(
        self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
    ) -> None:
        super().on_execute_error(ctx, task_id, data, error)
        self._try(task_id)

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        super().on_task_exhausted(ctx, task_id, data)
        self._try(task_id)

    def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        super().on_panic(ctx, task_id, data)
        self._try(task_id)


def test_reset_from_the_task_own_ending_hook_raises_task_not_found(
    make_bucket: MakeBucket, clock: FakeClock, gate: Gate
) -> None:
    box: list[TaskBucket] = []
    executor = SelfResetter(box, clock.monotonic_ns)
    box.append(bucket := make_bucket(executor=executor, workers=2))
    hold = gate()
    executor.behave("failed", raises(ValueError("x")))
    executor.behave("exhausted-running", wait_cancelled())
    executor.behave("exhausted-stuck", wait_gate(hold))
    bucket.fill(IMMEDIATE, "finished")
    bucket.fill(IMMEDIATE, "failed")
    bucket.fill(TIME_BOMB, "bomb-finished", run_after=0.5, life_span=1.0)
    settle(bucket)
    advance_to(clock, 0.5)
    settle(bucket)
    bucket.fill(IMMEDIATE, "exhausted-running", life_span=1.0)
    bucket.fill(IMMEDIATE, "exhausted-stuck", life_span=1.0)
    settle(bucket, running=2)
    advance_to(clock, 1.5)
    settle(bucket, running=1)  # the stuck one's worker is still in user code
    bucket.fill(TIME_BOMB, "rescued", run_after=10.0, life_span=20.0)
    assert bucket.rescue() == ["rescued"]
    hold.set()
    settle(bucket)
    ids = ["finished", "failed", "bomb-finished", "exhausted-running", "exhausted-stuck", "rescued"]
    for task_id in ids:
        assert executor.detail("reset", task_id) == ["TaskNotFound"] * 3, task_id
    stats = bucket.stats()
    assert (stats.reset, stats.hook_errors) == (0, 0)
    assert_stats_consistent(bucket)


@pytest.mark.parametrize("where", ["pending", "running"])
def test_reset_after_drain_raises_task_not_found_and_the_task_stays_drained(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock, where: str
) -> None:
    if where == "running":
        recorder.behave("t", wait_cancelled())
        handle = bucket.fill(IMMEDIATE, "t", life_span=2.0)
        recorder.wait_for("on_execute", "t")
        settle(bucket, running=1)
    else:
        handle = bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=2.0)
    bucket.reset("t", life_span=5.0)
    bucket.drain("t")
    with pytest.raises(TaskNotFound):
        bucket.reset("t")
    with pytest.raises(TaskNotFound):
        bucket.reset("t", life_span=5.0)
    advance_to(clock, 10.0)
    settle(bucket)
    assert handle.state is TaskState.DRAINED
    assert recorder.endings("t") == []
    assert starts(recorder, "t") == ([at(0)] if where == "running" else [])
    stats = bucket.stats()
    assert (stats.reset, stats.drained) == (1, 1)


def test_reset_after_rescue_raises_task_not_found(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=2.0)
    assert bucket.rescue() == ["t"]
    with pytest.raises(TaskNotFound):
        bucket.reset("t")
    assert recorder.endings("t") == ["on_panic"]


# -- bad arguments ------------------------------------------------------------------------


class _StrSub(str):
    pass


NAN, INF = math.nan, math.inf
BAD_DURATIONS: list[Any] = [
    NAN,
    INF,
    -INF,
    -1,
    -0.001,
    True,
    False,
    "1",
    b"1",
    [1.0],
    complex(1, 0),
    10**400,
    1e300,
    TD(seconds=-1),
]


@dataclass(frozen=True)
class BadReset:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    names: str  # the argument the message must name

    def __str__(self) -> str:
        shown = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        text = ", ".join(shown)
        return text if len(text) < 40 else text[:37] + "..."


BAD_RESETS = [
    *[BadReset(("t",), {"run_after": v}, "run_after") for v in BAD_DURATIONS],
    *[BadReset(("t",), {"life_span": v}, "life_span") for v in [*BAD_DURATIONS, 0, 0.0, TD(0)]],
    *[
        BadReset((v,), {}, "task_id")
        for v in [42, None, b"t", ("t",), _StrSub("t"), "", 1.5, TaskType.TIME_BOMB]
    ],
    BadReset((), {}, ""),  # no task_id at all
    BadReset(("t", 1.0), {}, ""),  # run_after is keyword-only
    BadReset(("t",), {"delay": 1.0}, "delay"),
]


@pytest.fixture
def live_pair(bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock) -> TaskBucket:
    """A bucket with a pending TIME_BOMB "t" (due 1.0, life span to 3.0) and a running "r"."""
    recorder.behave("r", wait_cancelled())
    bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    bucket.fill(IMMEDIATE, "r", life_span=3.0)
    recorder.wait_for("on_execute", "r")
    settle(bucket, running=1)
    return bucket


@pytest.mark.parametrize("case", BAD_RESETS, ids=str)
@pytest.mark.parametrize("target", ["t", "r"])
def test_bad_argument_raises_and_changes_nothing(
    live_pair: TaskBucket,
    recorder: RecordingExecutor,
    clock: FakeClock,
    case: BadReset,
    target: str,
) -> None:
    bucket = live_pair
    args = tuple(target if a == "t" and type(a) is str else a for a in case.args)
    before = bucket.stats()
    r_deadline = deadline_ns(recorder.contexts["r"])
    with pytest.raises((TypeError, ValueError)) as info:
        bucket.reset(*args, **case.kwargs)
    assert type(info.value) in (TypeError, ValueError), info.value
    assert case.names in str(info.value), f"the message does not name {case.names!r}"
    assert bucket.stats() == before
    assert deadline_ns(recorder.contexts["r"]) == r_deadline
    # The times of the fills stand.
    assert_starts_at(bucket, recorder, clock, "t", 1.0, held=1)
    advance_to(clock, 3.0)
    settle(bucket)
    assert recorder.endings("r") == ["on_task_exhausted"]
    assert bucket.stats().reset == 0


def test_good_edge_values_work(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    bucket.reset("t", run_after=2, life_span=3)  # ints
    bucket.reset("t", run_after=TD(seconds=2), life_span=TD(days=365))  # timedeltas
    bucket.reset("t", life_span=9 * 365.25 * 86400.0)  # nine years: under the ten-year cap
    bucket.reset("t", run_after=None, life_span=None)  # explicit None: as filled
    settle(bucket)
    assert starts(recorder, "t") == []
    bucket.reset("t", run_after=0, life_span=1e-9)  # due now, one nanosecond of life
    settle(bucket)
    assert starts(recorder, "t") == [at(0)]
    assert recorder.endings("t") == ["on_finish"]
    assert bucket.stats().reset == 5


def test_a_duration_past_ten_years_is_refused(bucket: TaskBucket) -> None:
    bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    with pytest.raises(ValueError, match="life_span"):
        bucket.reset("t", life_span=10 * 365.25 * 86400.0 + 1)
    assert bucket.stats().reset == 0


# -- many resets ---------------------------------------------------------------------------

# Gaps between touches: all under the 1-s timeout, and whole ticks, so that
# "exactly at its due time" holds (between ticks a timer may be a tick late).
TOUCH_GAPS = [0.0, 0.0, 0.001, 0.002, 0.01, 0.3, 0.999]


def test_a_session_touched_a_thousand_times_ends_exactly_once(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    """An idle timeout of 1 s, touched 1000 times at random gaps under 1 s: it never
    fires while touched (old timers come due all the time and must not start it),
    then fires once, exactly 1 s after the last touch."""
    rng = random.Random(5)
    handle = bucket.fill(TIME_BOMB, "session", run_after=1.0, life_span=2.0)
    offset = 0.0
    for _ in range(1000):
        offset = round(offset + rng.choice(TOUCH_GAPS), 6)
        advance_to(clock, offset)
        settle(bucket)
        assert bucket.reset("session") == handle
    assert starts(recorder, "session") == []
    assert bucket.stats().reset == 1000
    assert_starts_at(bucket, recorder, clock, "session", offset + 1.0)
    advance_to(clock, offset + 100.0)
    settle(bucket)
    assert starts(recorder, "session") == [at(offset + 1.0)]
    assert recorder.endings("session") == ["on_finish"]
    assert handle.state is TaskState.FINISHED
    stats = bucket.stats()
    assert (stats.filled, stats.finished, stats.live, stats.lateness_max) == (1, 1, 0, 0.0)


def test_a_running_lease_renewed_a_thousand_times_is_exhausted_once(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    rng = random.Random(6)
    recorder.behave("lease", wait_cancelled())
    handle = bucket.fill(IMMEDIATE, "lease", life_span=1.0)
    recorder.wait_for("on_execute", "lease")
    offset = 0.0
    for _ in range(1000):
        offset = round(offset + rng.choice(TOUCH_GAPS), 6)
        advance_to(clock, offset)
        settle(bucket, running=1)
        assert bucket.reset("lease") == handle
    assert handle.state is TaskState.RUNNING
    assert deadline_ns(recorder.contexts["lease"]) == at(offset + 1.0)
    assert_exhausted_at(bucket, clock, handle, offset + 1.0)
    advance_to(clock, offset + 100.0)
    settle(bucket)
    assert recorder.endings("lease") == ["on_task_exhausted"]
    assert bucket.stats().reset == 1000


def test_many_tasks_each_moved_later_in_random_order_run_at_their_new_times(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    """W5's pattern, checked: N pending timers, each reset once, in random order."""
    rng = random.Random(7)
    ids = [f"t{i}" for i in range(500)]
    delays = {tid: rng.choice([0.5, 1.0, 2.0]) for tid in ids}
    for tid in ids:
        bucket.fill(TIME_BOMB, tid, run_after=delays[tid], life_span=10.0)
    advance_to(clock, 0.25)
    settle(bucket)
    order = ids[:]
    rng.shuffle(order)
    new_due: dict[str, float] = {}
    for i, tid in enumerate(order):
        if i % 50 == 0:
            advance_to(clock, 0.25 + i / 10_000)
        later = delays[tid] + rng.choice([0.001, 0.5, 3.0])
        bucket.reset(tid, run_after=later)
        new_due[tid] = 0.25 + (i // 50 * 50) / 10_000 + later
    settle(bucket)
    # Steps of 10 ms land inside every window between an old and a new due time.
    for step in range(30, 600):  # from 0.30, past the last reset
        advance_to(clock, step * 0.01)
        settle(bucket)
    first_start = {}
    for hook, tid, when in recorder.snapshot():
        if hook == "on_execute":
            assert tid not in first_start, f"{tid} started twice"
            first_start[tid] = when
    assert sorted(first_start) == sorted(ids)
    for tid, when in first_start.items():
        assert when >= at(new_due[tid]), f"{tid} ran early"
    assert bucket.stats().reset == len(ids)
    assert all(recorder.endings(tid) == ["on_finish"] for tid in ids)
    assert_stats_consistent(bucket)


# -- close ----------------------------------------------------------------------------------


def test_reset_of_a_live_task_while_close_waits_still_works(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    """Our reading of SPEC: close() refuses new *fills* (BucketClosed); a task
    that is still live while close(wait=True) waits is a live task like any
    other, so reset() works on it, and close() waits for it at its new time."""
    handle = bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    closer = Closer(bucket)
    with pytest.raises(BucketClosed):
        bucket.fill(IMMEDIATE, "refused")
    assert bucket.reset("t", run_after=2.0) == handle  # due 2.0 now, life span to 3.0
    advance_to(clock, 1.0)
    settle(bucket)
    assert closer.running()
    assert starts(recorder, "t") == []
    advance_to(clock, 2.0 - TICK)
    settle(bucket)
    assert closer.running()
    assert starts(recorder, "t") == []
    advance_to(clock, 2.0)
    closer.join()
    assert starts(recorder, "t") == [at(2.0)]
    assert handle.state is TaskState.FINISHED
    assert bucket.stats().reset == 1
    with pytest.raises(TaskNotFound):
        bucket.reset("t")  # after close() returned nothing is live


def test_reset_does_not_stretch_the_timeout_of_close(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    """close(timeout=1.5) drains what is live at 1.5, also a task a reset moved past it."""
    handle = bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    closer = Closer(bucket, timeout=1.5)
    bucket.reset("t", run_after=2.0)
    advance_to(clock, 1.5 - TICK)
    settle(bucket)
    assert closer.running()
    advance_to(clock, 1.5)
    closer.join()
    assert handle.state is TaskState.DRAINED
    assert starts(recorder, "t") == []


def test_reset_after_close_raises_task_not_found(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    bucket.fill(TIME_BOMB, "t", run_after=1.0, life_span=3.0)
    bucket.close(wait=False)
    with pytest.raises(TaskNotFound):
        bucket.reset("t")
    assert bucket.stats().reset == 0


# -- races, on the fake clock -----------------------------------------------------------------


class TimedRecorder(RecordingExecutor):
    """Also stamps each on_task_exhausted with the clock (ns)."""

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self.record("exhausted_at", task_id, self.now())
        super().on_task_exhausted(ctx, task_id, data)


def _race(threads: list[Callable[[], None]], main: Callable[[], None] | None = None) -> None:
    """Run `threads` at once (and `main` on this thread); re-raise the first failure."""
    barrier = threading.Barrier(len(threads) + 1)
    errors: list[BaseException] = []

    def run(fn: Callable[[], None]) -> None:
        try:
            barrier.wait(10)
            fn()
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(fn,), daemon=True) for fn in threads]
    for w in workers:
        w.start()
    barrier.wait(10)
    if main is not None:
        main()
    for w in workers:
        w.join(30)
        assert not w.is_alive(), "a racing thread hung"
    if errors:
        raise errors[0]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Hand the GIL around every 10 µs instead of every 5 ms, so that racing threads
    interleave within a few bytecodes (the verdicts never depend on it)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def tick_by_tick(clock: FakeClock, start: float, ticks: int) -> Callable[[], None]:
    """Move the clock from `start` one tick at a time, `ticks` times, yielding between."""

    def move() -> None:
        for k in range(ticks + 1):
            advance_to(clock, start + k * TICK)
            time.sleep(0)

    return move


@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize("seed", range(3))
def test_reset_racing_the_task_own_start(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, seed: int
) -> None:
    """Resets arrive while the tasks come due, a few per tick: one order wins for each.

    A reset that returned held its task back: it starts at >= the clock read
    before that reset + 1 s. One that raised ValueError lost to the start, and
    TaskNotFound means the task had finished: either way it ran from its first
    due time, during the race. Never an early start, one ending each.
    """
    bucket = make_bucket(executor=recorder, workers=4)
    ids = [f"t{i}" for i in range(300)]
    first_due = {tid: 1.0 + (i % 100) * TICK for i, tid in enumerate(ids)}
    for tid in ids:
        bucket.fill(TIME_BOMB, tid, run_after=first_due[tid], life_span=3.0)
    settle(bucket)
    advance_to(clock, 1.0 - TICK)
    settle(bucket)
    order = ids[:]
    random.Random(seed).shuffle(order)
    every = [0, 4, 1][seed]  # how the resetter paces itself: each seed races differently
    won: dict[str, int] = {}  # id -> the clock read before the reset that returned
    lost: dict[str, str] = {}

    def resetter() -> None:
        for tid in order:
            before = clock.monotonic_ns()
            try:
                bucket.reset(tid, run_after=1.0)
            except ValueError:
                lost[tid] = "started"
            except TaskNotFound:
                lost[tid] = "ended"
            else:
                won[tid] = before
            if every and not len(won) % every:
                time.sleep(0)  # spread the resets over the ticks

    _race([resetter], tick_by_tick(clock, 1.0, 110))
    race_end = clock.monotonic_ns()
    settle(bucket)
    # The new due times are between 1.999 and 2.111: up to a tick before them
    # in one step, then tick by tick (every deadline is 3.0 or later).
    advance_to(clock, 1.998)
    settle(bucket)
    for k in range(114):
        advance_to(clock, 1.999 + k * TICK)
        settle(bucket)
    advance_to(clock, 10.0)
    settle(bucket)
    assert len(won) + len(lost) == len(ids)
    for tid in ids:
        (started,) = starts(recorder, tid)
        assert recorder.endings(tid) == ["on_finish"], tid
        if tid in won:
            assert started >= won[tid] + 10**9, f"{tid} started early"
        else:
            assert at(first_due[tid]) <= started <= race_end, tid
    stats = bucket.stats()
    assert stats.reset == len(won)
    assert (stats.finished, stats.live) == (len(ids), 0)
    assert_stats_consistent(bucket)
    late = sum(1 for tid, before in won.items() if before >= at(first_due[tid]))
    print(
        f"\nstart race: reset won {len(won)} ({late} after the due time had come), "
        f"lost {len(lost)} ({sum(v == 'ended' for v in lost.values())} ended)"
    )


@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize("seed", range(2))
def test_reset_racing_the_life_span_ending(
    make_bucket: MakeBucket, clock: FakeClock, seed: int
) -> None:
    """Running tasks whose life spans end a tick apart, while resets push them later.

    A reset that returned moved the deadline (the task ends at >= the clock
    read before it + 1 s); TaskNotFound means the ending won (it ended at its
    first deadline, during the race). Never both, never neither, never two
    endings.
    """
    rng = random.Random(seed)
    recorder = TimedRecorder(now=clock.monotonic_ns)
    recorder.default = wait_cancelled()
    workers = 8
    bucket = make_bucket(executor=recorder, workers=workers)
    won: dict[str, int] = {}
    lost: dict[str, tuple[int, int]] = {}  # id -> its first deadline, the race's end
    firsts: dict[str, int] = {}
    offset = 0.0
    for round_ in range(20):
        ids = [f"r{round_}-{i}" for i in range(workers)]
        advance_to(clock, offset)
        for i, tid in enumerate(ids):
            bucket.fill(IMMEDIATE, tid, life_span=1.0 + i * TICK)
        settle(bucket, running=workers)
        first = {tid: deadline_ns(recorder.contexts[tid]) for tid in ids}
        firsts.update(first)
        advance_to(clock, offset + 1.0 - TICK)
        settle(bucket, running=workers)
        rng.shuffle(ids)
        lost_now: list[str] = []
        going = threading.Event()

        def resetter(
            ids: list[str] = ids, lost_now: list[str] = lost_now, going: threading.Event = going
        ) -> None:
            for tid in ids:
                going.set()
                before = clock.monotonic_ns()
                try:
                    bucket.reset(tid, life_span=1.0)
                except TaskNotFound:
                    lost_now.append(tid)
                else:
                    won[tid] = before
                time.sleep(0)  # spread the resets over the ticks

        move = tick_by_tick(clock, offset + 1.0, workers + 2)

        def move_when_going(
            move: Callable[[], None] = move, going: threading.Event = going
        ) -> None:
            assert going.wait(10)
            move()

        _race([resetter], move_when_going)
        now = clock.monotonic_ns()
        for tid in lost_now:
            lost[tid] = (first[tid], now)
        # The tasks a reset gave a deadline past now wait in ctx.wait(); the
        # others have ended.
        later = [t for t in ids if deadline_ns(recorder.contexts[t]) > now]
        settle(bucket, running=len(later))
        for tid in ids:
            handle = bucket.get(tid)
            if tid in later:
                assert handle is not None, tid
                assert handle.state is TaskState.RUNNING, tid
            else:
                assert handle is None, f"{tid} outlived its deadline"
        advance_to(clock, offset + 2.2)  # past every new deadline
        settle(bucket)
        offset += 3.0
    ended = {t: d for h, t, d in recorder.snapshot() if h == "exhausted_at"}
    for tid, before in won.items():
        assert ended[tid] >= before + 10**9, f"{tid} exhausted before its new deadline"
    for tid, (deadline, race_end) in lost.items():
        assert deadline <= ended[tid] <= race_end, f"{tid} lost the race but ended out of it"
    for tid in [*won, *lost]:
        assert recorder.endings(tid) == ["on_task_exhausted"], tid
    stats = bucket.stats()
    assert stats.reset == len(won)
    assert stats.exhausted == len(won) + len(lost) == 20 * workers
    assert_stats_consistent(bucket)
    late = sum(1 for tid, before in won.items() if before >= firsts[tid])
    print(
        f"\nlife-span race: reset won {len(won)} ({late} after the deadline had come), "
        f"lost {len(lost)}"
    )


@pytest.mark.usefixtures("fast_switching")
def test_reset_racing_drain_from_other_threads(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    """Three resetters and two drainers on the same ids, while time moves.

    Each task ends exactly once (DRAINED: no hook; FINISHED: one start, one
    on_finish); a reset right after a successful drain of the same id by the
    same thread raises TaskNotFound; the reset counter matches the successes.
    """
    bucket = make_bucket(executor=recorder, workers=4, max_bucket=1000)
    ids = [f"t{i}" for i in range(400)]
    for tid in ids:
        bucket.fill(TIME_BOMB, tid, run_after=1.0, life_span=5.0)
    settle(bucket)
    resets = [0] * 3
    drains = [0] * 2
    bounds: dict[str, int] = {}  # id -> the largest clock-before + run_after of a reset
    lock = threading.Lock()
    problems: list[str] = []

    def resetter(k: int) -> Callable[[], None]:
        # Each id is reset by one thread only, so its resets come in one
        # known order and the floor of its due time is exact.
        mine = ids[k::3]

        def run() -> None:
            rng = random.Random(k)
            for _ in range(1500):
                tid = rng.choice(mine)
                before = clock.monotonic_ns()
                try:
                    bucket.reset(tid, run_after=1.0)
                except (TaskNotFound, ValueError):
                    continue
                resets[k] += 1
                with lock:
                    bounds[tid] = before + 10**9

        return run

    def drainer(k: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(100 + k)
            for _ in range(150):
                tid = rng.choice(ids)
                try:
                    bucket.drain(tid)
                except TaskNotFound:
                    continue
                drains[k] += 1
                try:
                    bucket.reset(tid)
                except TaskNotFound:
                    pass
                else:
                    problems.append(f"reset of {tid} after its drain returned")

        return run

    def move_time() -> None:
        for step in range(1, 21):
            advance_to(clock, step * 0.1)
            time.sleep(0)

    _race([resetter(0), resetter(1), resetter(2), drainer(0), drainer(1)], move_time)
    # The last resets came at 2.0 at the latest: due by 3.0, life spans to 7.0 at least.
    settle(bucket)
    advance_to(clock, 3.0)
    settle(bucket)
    advance_to(clock, 10.0)
    settle(bucket)
    assert problems == []
    drained = 0
    for tid in ids:
        runs = starts(recorder, tid)
        endings = recorder.endings(tid)
        if endings == []:
            drained += 1
            assert len(runs) <= 1, tid  # drained before it started, or while running
        else:
            assert endings == ["on_finish"], tid
            assert len(runs) == 1, tid
        for started in runs:
            assert started >= bounds.get(tid, at(1.0)), f"{tid} started early"
    stats = bucket.stats()
    assert stats.drained == drained == sum(drains)
    assert stats.reset == sum(resets)
    assert stats.finished == len(ids) - drained
    assert_stats_consistent(bucket)


@pytest.mark.usefixtures("fast_switching")
def test_reset_racing_rescue(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    """rescue() while resets go on: every task is rescued exactly once, and once
    rescue() returned, every reset raises TaskNotFound."""
    recorder.default = wait_cancelled()
    bucket = make_bucket(executor=recorder, workers=4, max_bucket=1000)
    ids = [f"t{i}" for i in range(200)]
    for tid in ids[:4]:
        bucket.fill(IMMEDIATE, tid, life_span=5.0)  # running
    for tid in ids[4:]:
        bucket.fill(TIME_BOMB, tid, run_after=1.0, life_span=5.0)
    settle(bucket, running=4)
    rescued: list[list[str]] = []
    stop = threading.Event()
    count = [0, 0]

    def resetter(k: int) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(k)
            while not stop.is_set():
                try:
                    bucket.reset(rng.choice(ids))
                except TaskNotFound:
                    continue
                count[k] += 1

        return run

    def rescue_now() -> None:
        time.sleep(0.01)  # let the resets get going; the verdicts do not depend on it
        rescued.append(bucket.rescue())
        after = [tid for tid in ids if _reset_works(bucket, tid)]
        stop.set()
        assert after == [], f"reset worked after rescue() returned: {after[:5]}"

    _race([resetter(0), resetter(1)], rescue_now)
    settle(bucket)
    assert sorted(rescued[0]) == sorted(ids)
    for tid in ids:
        assert recorder.endings(tid) == ["on_panic"], tid
    stats = bucket.stats()
    assert stats.rescued == len(ids)
    assert stats.reset == sum(count)
    assert_stats_consistent(bucket)


def _reset_works(bucket: TaskBucket, task_id: str) -> bool:
    try:
        bucket.reset(task_id)
    except TaskNotFound:
        return False
    return True


@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize("wait", [False, True], ids=["close-now", "close-wait"])
def test_reset_racing_close(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, wait: bool
) -> None:
    """close() while resets go on. Without wait, every task is drained once; with
    wait, every task runs once, never before a reset's due time, and close()
    returns once they all did. After close() returned, reset raises TaskNotFound."""
    bucket = make_bucket(executor=recorder, workers=4, max_bucket=1000)
    ids = [f"t{i}" for i in range(200)]
    for tid in ids:
        bucket.fill(TIME_BOMB, tid, run_after=1.0, life_span=5.0)
    settle(bucket)
    bounds: dict[str, int] = {}
    lock = threading.Lock()
    done = threading.Event()

    def resetter(k: int) -> Callable[[], None]:
        mine = ids[k::2]  # each id is reset by one thread only (see the drain race)

        def run() -> None:
            rng = random.Random(k)
            for _ in range(2000):
                tid = rng.choice(mine)
                before = clock.monotonic_ns()
                try:
                    bucket.reset(tid, run_after=1.0)
                except (TaskNotFound, ValueError):
                    continue
                with lock:
                    bounds[tid] = before + 10**9

        return run

    def close_now() -> None:
        if not wait:
            bucket.close(wait=False)
            done.set()
            return
        closer = Closer(bucket)
        offset = 0.0
        give_up = time.monotonic() + 20.0
        while closer.running() and time.monotonic() < give_up:
            offset += 0.25
            advance_to(clock, offset)
            time.sleep(0.002)  # pacing of the fake time only
        closer.join()
        done.set()

    _race([resetter(0), resetter(1)], close_now)
    assert done.is_set()
    for tid in ids:
        with pytest.raises(TaskNotFound):
            bucket.reset(tid)
    stats = bucket.stats()
    if wait:
        for tid in ids:
            (started,) = starts(recorder, tid)
            assert started >= bounds.get(tid, at(1.0)), f"{tid} started early"
            assert recorder.endings(tid) == ["on_finish"]
        assert stats.finished == len(ids)
    else:
        assert all(recorder.hooks(tid) == [] for tid in ids)
        assert stats.drained == len(ids)
    assert stats.live == 0
    assert_stats_consistent(bucket)


# -- the stress, on the real clock ----------------------------------------------------------------

THREADS = 8
STRESS_IDS = [f"job-{i}" for i in range(128)]
STRESS_MAX = 96  # fewer than the ids: BucketFull happens too
OK, FAIL, WAIT, SPIN = range(4)
MODES = [OK] * 55 + [FAIL] * 15 + [WAIT] * 20 + [SPIN] * 10


@dataclass(slots=True)
class Job:
    """A task's data and what happened to it (ns of the bucket's clock, time.monotonic_ns)."""

    uid: int
    task_id: str
    mode: int
    hold: float
    run_after: float | None  # None: IMMEDIATE
    life_span: float
    not_before: int  # the clock before fill() + run_after
    deadline_floor: int  # the clock before fill() + life_span
    started: int = 0
    execs: int = 0
    exhausted_at: int = 0
    hooks: list[str] = field(default_factory=list)


class StressExecutor(Executor):
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def on_execute(self, ctx: TaskContext, task_id: str, job: Job) -> int:
        now = time.monotonic_ns()
        with self.lock:
            job.execs += 1
            job.started = now
        if job.mode == FAIL:
            raise ValueError(f"planned failure of {job.uid}")
        if job.mode == WAIT:
            ctx.wait(job.hold)
        elif job.mode == SPIN:
            time.sleep(job.hold)  # ignores ctx: may be exhausted under it
        return job.uid

    def _ending(self, hook: str, job: Job) -> None:
        with self.lock:
            job.hooks.append(hook)

    def on_finish(self, ctx: TaskContext, task_id: str, job: Job) -> None:
        self._ending("on_finish", job)

    def on_execute_error(
        self, ctx: TaskContext, task_id: str, job: Job, error: BaseException
    ) -> None:
        self._ending("on_execute_error", job)

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, job: Job) -> None:
        now = time.monotonic_ns()
        with self.lock:
            job.exhausted_at = now
        self._ending("on_task_exhausted", job)

    def on_panic(self, ctx: TaskContext, task_id: str, job: Job) -> None:
        self._ending("on_panic", job)


@dataclass
class ResetRecord:
    """One reset that returned: the handle, the clock read before it, and its arguments."""

    handle: TaskHandle
    before: int
    run_after: float | None
    life_span: float | None


@dataclass
class StressTally:
    fills: list[tuple[TaskHandle, Job]] = field(default_factory=list)
    resets: list[ResetRecord] = field(default_factory=list)
    reset_refused: int = 0
    reset_not_found: int = 0
    drains: int = 0
    rescued: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)


def _stress_racer(
    bucket: TaskBucket, k: int, tally: StressTally, uids: Iterator[int], end: float
) -> None:
    rng = random.Random(1000 + k)
    # Each thread resets only its own share of the ids, so that the resets of
    # one task come in one known order and the latest one sets its times.
    mine = STRESS_IDS[k::THREADS]
    delays = [0.0, 0.001, 0.005, 0.02]
    ops = 0
    try:
        while True:
            ops += 1
            if ops % 64 == 0 and time.monotonic() >= end:
                return
            roll = rng.random()
            if roll < 0.35:
                task_id = rng.choice(STRESS_IDS)
                uid = next(uids)
                before = time.monotonic_ns()
                immediate = roll < 0.1
                run_after = None if immediate else rng.choice(delays)
                life = (run_after or 0.0) + rng.uniform(0.002, 0.1)
                mode = rng.choice(MODES)
                hold = rng.uniform(0, 0.03 if mode == WAIT else 0.01)
                job = Job(
                    uid,
                    task_id,
                    mode,
                    hold,
                    run_after,
                    life,
                    before + math.ceil((run_after or 0.0) * 1e9),
                    before + math.ceil(life * 1e9),
                )
                try:
                    handle = bucket.fill(
                        IMMEDIATE if immediate else TIME_BOMB,
                        task_id,
                        job,
                        run_after=run_after,
                        life_span=life,
                    )
                except (TaskExists, BucketFull):
                    tally.rejected += 1
                    continue
                tally.fills.append((handle, job))
            elif roll < 0.75:
                task_id = rng.choice(mine)
                kind = rng.random()
                run_after = life_span = None
                if kind < 0.3:
                    life_span = rng.uniform(0.002, 0.1)  # refused for a longer run_after
                elif kind < 0.5:
                    # The fill's own run_after is not known here: pass one, and
                    # let a pending task with another one refuse it or take it.
                    run_after = rng.choice(delays)
                    life_span = run_after + rng.uniform(0.002, 0.1)
                before = time.monotonic_ns()
                try:
                    handle = bucket.reset(task_id, run_after=run_after, life_span=life_span)
                except ValueError:
                    tally.reset_refused += 1
                    continue
                except TaskNotFound:
                    tally.reset_not_found += 1
                    continue
                if handle.id != task_id:
                    tally.problems.append(f"reset({task_id!r}) returned {handle!r}")
                tally.resets.append(ResetRecord(handle, before, run_after, life_span))
            elif roll < 0.83:
                try:
                    bucket.drain(rng.choice(STRESS_IDS))
                except TaskNotFound:
                    continue
                tally.drains += 1
            elif roll < 0.99995:
                s = bucket.stats()
                ended = s.finished + s.failed + s.exhausted + s.drained + s.rescued
                if not (s.live == s.pending + s.running and s.filled == ended + s.live):
                    tally.problems.append(f"inconsistent stats snapshot: {s}")
            else:
                tally.rescued += len(bucket.rescue())
            if ops % 16 == 0:
                time.sleep(0)  # let the workers have the GIL now and then
    except BaseException as exc:  # a racer must report, never die silently
        tally.problems.append(f"racer {k} raised {exc!r}")


EXPECTED_HOOK = {
    TaskState.FINISHED: ["on_finish"],
    TaskState.FAILED: ["on_execute_error"],
    TaskState.EXHAUSTED: ["on_task_exhausted"],
    TaskState.DRAINED: [],
    TaskState.RESCUED: ["on_panic"],
}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_eight_threads_racing_with_reset_keep_every_invariant() -> None:
    """Eight threads fill, reset, drain, rescue and read on the real clock; then
    close(wait=True), and the books must balance: one ending and its one hook
    per filled task, no start before the latest due time a reset set, no
    exhaustion before the latest deadline a reset set, and stats that agree."""
    executor = StressExecutor()
    bucket = TaskBucket(
        executor=executor, workers=4, max_bucket=STRESS_MAX, name=f"rstress{time.monotonic_ns()}"
    )
    uids = iter(range(10**9))
    tallies = [StressTally() for _ in range(THREADS)]
    end = time.monotonic() + 4.0
    racers = [
        threading.Thread(target=_stress_racer, args=(bucket, k, tallies[k], uids, end))
        for k in range(THREADS)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(60)
        assert not racer.is_alive(), "a racer hung"
    bucket.close(wait=True)
    stats = bucket.stats()

    problems = [p for t in tallies for p in t.problems]
    fills = [pair for t in tallies for pair in t.fills]
    job_of = {handle: job for handle, job in fills}  # handles of one task are equal
    # Each task's resets, in order (they are all in one tally): the floor of
    # its due time and of its life-span deadline after the last of them.
    due_floor = {key: job.not_before for key, job in job_of.items()}
    life_floor = {key: job.deadline_floor for key, job in job_of.items()}
    for tally in tallies:
        for rec in tally.resets:
            key = rec.handle
            job = job_of.get(key)
            if job is None:
                problems.append(f"reset returned {rec.handle!r}, which no fill returned")
                continue
            span = job.life_span if rec.life_span is None else rec.life_span
            life_floor[key] = rec.before + math.ceil(span * 1e9)
            if rec.run_after is not None:
                # Taken only by a task still waiting for its start: due now + run_after.
                due_floor[key] = rec.before + math.ceil(rec.run_after * 1e9)
            elif job.run_after is not None:
                # Due now + the filled run_after if it was still waiting; if it
                # had started meanwhile, its start is above the floor so far.
                moved = rec.before + math.ceil(job.run_after * 1e9)
                due_floor[key] = min(due_floor[key], moved)
    by_state = dict.fromkeys(EXPECTED_HOOK, 0)
    for handle, job in fills:
        if not handle.done():
            problems.append(f"{handle!r} not done after close()")
            continue
        state = handle.state
        by_state[state] += 1
        if job.hooks != EXPECTED_HOOK[state]:
            problems.append(f"{job.task_id} (uid {job.uid}) ended {state.name} with {job.hooks}")
        if job.execs > 1:
            problems.append(f"uid {job.uid} executed {job.execs} times")
        if state in (TaskState.FINISHED, TaskState.FAILED) and job.execs != 1:
            problems.append(f"uid {job.uid} ended {state.name} but executed {job.execs} times")
        if job.execs and job.started < due_floor[handle]:
            early = due_floor[handle] - job.started
            problems.append(f"uid {job.uid} started {early} ns early")
        if state is TaskState.EXHAUSTED and job.exhausted_at < life_floor[handle]:
            early = life_floor[handle] - job.exhausted_at
            problems.append(f"uid {job.uid} exhausted {early} ns early")
    expected = {
        "filled": len(fills),
        "finished": by_state[TaskState.FINISHED],
        "failed": by_state[TaskState.FAILED],
        "exhausted": by_state[TaskState.EXHAUSTED],
        "drained": by_state[TaskState.DRAINED],
        "rescued": by_state[TaskState.RESCUED],
        "live": 0,
        "reset": sum(len(t.resets) for t in tallies),
        "hook_errors": 0,
    }
    actual = {key: getattr(stats, key) for key in expected}
    if actual != expected:
        problems.append(f"stats disagree: expected {expected}, got {actual}")
    if stats.drained < sum(t.drains for t in tallies):
        problems.append("fewer drained than successful drain() calls")
    if stats.rescued != sum(t.rescued for t in tallies):
        problems.append("rescue() return values do not add up to stats.rescued")
    if len(bucket) != 0:
        problems.append(f"len(bucket) == {len(bucket)} after close()")
    assert problems == [], "\n".join(problems[:50])
    resets = expected["reset"]
    refused = sum(t.reset_refused for t in tallies)
    print(
        f"\nreset stress: {len(fills)} fills, {resets} resets "
        f"({refused} refused with ValueError, "
        f"{sum(t.reset_not_found for t in tallies)} TaskNotFound); endings: "
        + ", ".join(f"{s.name.lower()} {n}" for s, n in by_state.items())
    )
    # The run exercised what it claims to (generous floors: the machine is shared).
    assert len(fills) >= 500
    assert resets >= 500
    assert refused > 0
    assert min(by_state[TaskState.FINISHED], by_state[TaskState.EXHAUSTED]) > 0

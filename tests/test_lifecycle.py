"""Every lifecycle path of a task, exactly, on a fake clock (SPEC section 2).

Each test fills a bucket that runs on a `FakeClock`, moves time by hand and
calls `settle()` before it looks. Hooks that must stay inside user code wait
on ``ctx.wait()`` or on a gate the test opens; nothing sleeps to wait for a
thread.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import (
    RecordingExecutor,
    raises,
    returns,
    wait_cancelled,
    wait_gate,
    wait_until,
)

from wheelbucket import (
    BucketClosed,
    BucketFull,
    TaskBucket,
    TaskContext,
    TaskDrained,
    TaskExhausted,
    TaskHandle,
    TaskNotFound,
    TaskRescued,
    TaskState,
    TaskType,
)
from wheelbucket.testing import FakeClock, settle

MakeBucket = Callable[..., TaskBucket]
Gate = Callable[[], threading.Event]

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB
T0 = 1000.0  # the FakeClock's start

#: The ending hooks each final state must have had, exactly.
EXPECTED_ENDINGS = {
    TaskState.FINISHED: ["on_finish"],
    TaskState.FAILED: ["on_execute_error"],
    TaskState.EXHAUSTED: ["on_task_exhausted"],
    TaskState.DRAINED: [],
    TaskState.RESCUED: ["on_panic"],
}


def assert_stats_consistent(bucket: TaskBucket) -> None:
    """The counters' invariants; call once the bucket has settled."""
    s = bucket.stats()
    assert s.live == s.pending + s.running, s
    assert s.live == len(bucket), s
    assert s.filled == s.finished + s.failed + s.exhausted + s.drained + s.rescued + s.live, s


def assert_one_ending(recorder: RecordingExecutor, handle: TaskHandle) -> None:
    assert handle.done(), handle
    assert recorder.endings(handle.id) == EXPECTED_ENDINGS[handle.state], handle


def returning_then(value: Any, recorder: RecordingExecutor) -> Any:
    """After a gate: note whether ctx was cancelled, then return `value`."""

    def then(ctx: TaskContext, task_id: str, data: Any) -> Any:
        recorder.record("after", task_id, ctx.cancelled)
        return value

    return then


def raising_then(error: BaseException, recorder: RecordingExecutor) -> Any:
    def then(ctx: TaskContext, task_id: str, data: Any) -> Any:
        recorder.record("after", task_id, ctx.cancelled)
        raise error

    return then


THEN = {
    "returns": lambda recorder: returning_then("late", recorder),
    "raises": lambda recorder: raising_then(RuntimeError("late"), recorder),
}


class Closer:
    """`bucket.close(**kwargs)` on its own thread, so the test can move time meanwhile."""

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


# -- run after --------------------------------------------------------------------


def test_time_bomb_runs_at_its_due_time_not_a_millisecond_before(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    handle = bucket.fill(TIME_BOMB, "t", "data", run_after=1.0)
    settle(bucket)
    assert recorder.hooks("t") == []
    clock.advance(0.999)
    settle(bucket)
    assert recorder.hooks("t") == []
    assert handle.state is TaskState.PENDING
    assert "t" in bucket
    clock.advance(0.001)
    settle(bucket)
    assert recorder.hooks("t") == ["on_execute", "on_finish"]
    assert recorder.detail("on_execute", "t") == T0 + 1.0
    assert handle.result(timeout=0) == "data"
    stats = bucket.stats()
    assert (stats.executed, stats.finished, stats.live) == (1, 1, 0)
    assert stats.lateness_max == 0.0
    assert_stats_consistent(bucket)


def test_time_bomb_between_ticks_never_runs_early(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    # 1.5 ms is between two 1-ms ticks: it may run up to a tick late, never early.
    bucket.fill(TIME_BOMB, "t", run_after=0.0015)
    clock.advance(0.0014)
    settle(bucket)
    assert recorder.hooks("t") == []
    clock.advance(0.0001)
    settle(bucket)
    clock.advance(0.001)
    settle(bucket)
    started = recorder.detail("on_execute", "t")
    assert T0 + 0.0015 <= started <= T0 + 0.0025 + 1e-9
    assert bucket.stats().lateness_max <= 0.001 + 1e-9


def test_time_bomb_with_zero_run_after_runs_without_moving_the_clock(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    bucket.fill(TIME_BOMB, "t", run_after=0)
    settle(bucket)
    assert recorder.hooks("t") == ["on_execute", "on_finish"]
    assert recorder.detail("on_execute", "t") == T0


def test_lateness_is_measured_against_the_due_time(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    bucket.fill(TIME_BOMB, "a", run_after=1.0)
    bucket.fill(TIME_BOMB, "b", run_after=1.2)
    clock.advance(1.5)  # a starts 0.5 s late, b 0.3 s late
    settle(bucket)
    assert sorted(recorder.ids("on_execute")) == ["a", "b"]
    stats = bucket.stats()
    assert stats.executed == 2
    assert stats.lateness_max == pytest.approx(0.5)
    assert stats.lateness_p99 == pytest.approx(0.5)
    assert stats.lateness_p50 == pytest.approx(0.3, rel=0.1)


def test_each_time_bomb_runs_in_due_order_on_its_own_time(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    delays = [0.3, 0.1, 0.5, 0.2, 0.4]
    for i, delay in enumerate(delays):
        bucket.fill(TIME_BOMB, f"t{i}", run_after=delay)
    for step in range(1, 6):
        clock.advance(0.1)
        settle(bucket)
        ran = recorder.ids("on_execute")
        assert len(ran) == step
        assert recorder.detail("on_execute", ran[-1]) == pytest.approx(T0 + step * 0.1)
    assert recorder.ids("on_execute") == ["t1", "t3", "t0", "t4", "t2"]
    assert bucket.stats().lateness_max == pytest.approx(0.0, abs=1e-9)


# -- immediate ---------------------------------------------------------------------


def test_immediate_runs_without_moving_the_clock(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    handles = [bucket.fill(IMMEDIATE, f"i{n}", n) for n in range(10)]
    settle(bucket)
    assert clock.monotonic() == T0
    for n, handle in enumerate(handles):
        assert handle.result(timeout=0) == n
        assert recorder.hooks(handle.id) == ["on_execute", "on_finish"]
        assert recorder.detail("on_execute", handle.id) == T0
    stats = bucket.stats()
    assert (stats.executed, stats.finished, stats.lateness_max) == (10, 10, 0.0)
    assert_stats_consistent(bucket)


# -- life span ---------------------------------------------------------------------


@pytest.mark.parametrize("task_type", [IMMEDIATE, TIME_BOMB])
def test_life_span_ending_while_queued_exhausts_without_running(
    make_bucket: MakeBucket,
    recorder: RecordingExecutor,
    clock: FakeClock,
    gate: Gate,
    task_type: TaskType,
) -> None:
    bucket = make_bucket(executor=recorder, workers=1)
    hold = gate()
    recorder.behave("blocker", wait_gate(hold))
    blocker = bucket.fill(IMMEDIATE, "blocker", life_span=100.0)
    recorder.wait_for("on_execute", "blocker")
    victim = bucket.fill(task_type, "victim", run_after=0.5, life_span=1.0)
    if task_type is TIME_BOMB:
        clock.advance(0.5)  # due: queued behind the blocker
    assert victim.state is TaskState.PENDING
    stats = bucket.stats()
    assert (stats.live, stats.running, stats.pending) == (2, 1, 1)

    clock.advance(T0 + 1.0 - clock.monotonic())  # the victim's life span ends
    wait_until(lambda: victim.state is TaskState.EXHAUSTED, what="victim exhausted")
    assert "victim" not in bucket
    assert len(bucket) == 1
    hold.set()
    settle(bucket)
    assert recorder.hooks("victim") == ["on_task_exhausted"]
    assert recorder.detail("on_task_exhausted", "victim") is True, "its ctx is cancelled"
    with pytest.raises(TaskExhausted):
        victim.result(timeout=0)
    assert blocker.state is TaskState.FINISHED
    stats = bucket.stats()
    assert (stats.exhausted, stats.finished, stats.executed) == (1, 1, 1)
    assert_stats_consistent(bucket)


@pytest.mark.parametrize("then", list(THEN))
def test_life_span_ending_while_running_exhausts_and_ignores_the_outcome(
    make_bucket: MakeBucket,
    recorder: RecordingExecutor,
    clock: FakeClock,
    gate: Gate,
    then: str,
) -> None:
    bucket = make_bucket(executor=recorder, workers=1)
    hold = gate()
    recorder.behave("r", wait_gate(hold, THEN[then](recorder)))
    handle = bucket.fill(IMMEDIATE, "r", life_span=1.0)
    recorder.wait_for("on_execute", "r")
    settle(bucket, running=1)
    ctx = recorder.contexts["r"]
    assert handle.state is TaskState.RUNNING
    assert not ctx.cancelled
    stats = bucket.stats()
    assert (stats.running, stats.pending, stats.workers) == (1, 0, 1)

    clock.advance(0.999)
    settle(bucket, running=1)
    assert handle.state is TaskState.RUNNING
    clock.advance(0.001)
    settle(bucket, running=1)  # the old worker is still inside on_execute
    assert ctx.cancelled
    assert handle.state is TaskState.EXHAUSTED
    assert handle.done()
    assert "r" not in bucket
    assert recorder.endings("r") == ["on_task_exhausted"]
    assert recorder.detail("on_task_exhausted", "r") is True
    stats = bucket.stats()
    assert (stats.running, stats.live, stats.exhausted, stats.workers_stuck) == (0, 0, 1, 1)

    # The pool does not starve: a new task runs, on a replacement thread.
    bucket.fill(IMMEDIATE, "next")
    settle(bucket, running=1)
    assert recorder.hooks("next") == ["on_execute", "on_finish"]
    stats = bucket.stats()
    assert (stats.workers_stuck, stats.workers_replaced, stats.workers) == (1, 1, 2)

    hold.set()  # the user code returns (or raises) at last: ignored
    settle(bucket)
    assert recorder.hooks("r") == ["on_execute", "on_task_exhausted", "after"]
    assert recorder.detail("after", "r") is True
    with pytest.raises(TaskExhausted):
        handle.result(timeout=0)
    stats = bucket.stats()
    assert (stats.finished, stats.failed, stats.exhausted, stats.hook_errors) == (1, 0, 1, 0)
    assert stats.workers_stuck == 0
    assert 1 <= stats.workers <= 2
    assert_stats_consistent(bucket)


def test_cooperative_task_sees_its_life_span_end(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("r", wait_cancelled(returns("ignored")))
    handle = bucket.fill(IMMEDIATE, "r", life_span=2.0)
    recorder.wait_for("on_execute", "r")
    settle(bucket, running=1)
    clock.advance(2.0)
    settle(bucket)
    assert handle.state is TaskState.EXHAUSTED
    assert recorder.endings("r") == ["on_task_exhausted"]
    assert recorder.contexts["r"].remaining() == 0.0
    assert_stats_consistent(bucket)


# -- drain -----------------------------------------------------------------------------


def test_drain_pending_time_bomb_never_executes(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    handle = bucket.fill(TIME_BOMB, "t", run_after=1.0)
    settle(bucket)
    assert bucket.drain("t") is None
    assert handle.state is TaskState.DRAINED
    assert handle.done()
    assert "t" not in bucket
    clock.advance(10.0)
    settle(bucket)
    assert recorder.hooks("t") == []
    with pytest.raises(TaskDrained):
        handle.result(timeout=0)
    stats = bucket.stats()
    assert (stats.drained, stats.executed, stats.live) == (1, 0, 0)
    assert_stats_consistent(bucket)


def test_drain_queued_immediate_never_executes(
    make_bucket: MakeBucket, recorder: RecordingExecutor, gate: Gate
) -> None:
    bucket = make_bucket(executor=recorder, workers=1)
    hold = gate()
    recorder.behave("blocker", wait_gate(hold))
    bucket.fill(IMMEDIATE, "blocker")
    recorder.wait_for("on_execute", "blocker")
    queued = bucket.fill(IMMEDIATE, "queued")
    bucket.drain("queued")
    assert queued.state is TaskState.DRAINED
    hold.set()
    settle(bucket)
    assert recorder.hooks("queued") == []
    assert recorder.hooks("blocker") == ["on_execute", "on_finish"]
    assert_stats_consistent(bucket)


@pytest.mark.parametrize("then", list(THEN))
def test_drain_running_task_cancels_it_and_frees_its_id(
    make_bucket: MakeBucket,
    recorder: RecordingExecutor,
    clock: FakeClock,
    gate: Gate,
    then: str,
) -> None:
    bucket = make_bucket(executor=recorder, workers=1)
    hold = gate()
    recorder.behave("r", wait_gate(hold, THEN[then](recorder)))
    handle = bucket.fill(IMMEDIATE, "r")
    recorder.wait_for("on_execute", "r")
    settle(bucket, running=1)
    ctx = recorder.contexts["r"]

    bucket.drain("r")
    # At once, on this thread: cancelled, gone, done, and the id is free.
    assert ctx.cancelled
    assert handle.state is TaskState.DRAINED
    assert handle.done()
    assert "r" not in bucket
    again = bucket.fill(TIME_BOMB, "r", "second", lambda ctx, task_id, data: data)
    assert again is not handle
    assert bucket.get("r") == again

    settle(bucket, running=1)
    stats = bucket.stats()
    assert (stats.drained, stats.running, stats.live, stats.workers_stuck) == (1, 0, 1, 1)
    # The pool does not starve: the new task runs while the old thread is stuck.
    clock.advance(1.0)
    settle(bucket, running=1)
    assert again.result(timeout=0) == "second"
    stats = bucket.stats()
    assert (stats.workers_stuck, stats.workers_replaced, stats.workers) == (1, 1, 2)

    hold.set()  # on_execute returns or raises now: no hook for it
    settle(bucket)
    assert recorder.hooks("r") == ["on_execute", "after"]
    assert recorder.detail("after", "r") is True
    with pytest.raises(TaskDrained):
        handle.result(timeout=0)
    stats = bucket.stats()
    assert stats.workers_stuck == 0
    assert (stats.finished, stats.failed, stats.drained, stats.hook_errors) == (1, 0, 1, 0)
    assert_stats_consistent(bucket)


def test_drain_running_cooperative_task_wakes_its_ctx_wait(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    def work(ctx: TaskContext, task_id: str, data: Any) -> Any:
        recorder.record("woke", task_id, ctx.wait())
        return "ignored"

    recorder.behave("r", work)
    handle = bucket.fill(IMMEDIATE, "r")
    recorder.wait_for("on_execute", "r")
    settle(bucket, running=1)
    bucket.drain("r")
    assert recorder.wait_for("woke", "r") is True
    settle(bucket)
    assert recorder.hooks("r") == ["on_execute", "woke"]
    assert handle.state is TaskState.DRAINED
    assert_stats_consistent(bucket)


def test_drain_of_unknown_or_ended_id_raises_task_not_found(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("failed", raises(ValueError("x")))
    bucket.fill(IMMEDIATE, "finished")
    bucket.fill(IMMEDIATE, "failed")
    recorder.behave("exhausted", wait_cancelled())
    bucket.fill(IMMEDIATE, "exhausted", life_span=1.0)
    bucket.fill(TIME_BOMB, "drained")
    bucket.fill(TIME_BOMB, "rescued", run_after=10.0, life_span=20.0)
    bucket.drain("drained")
    settle(bucket, running=1)
    clock.advance(1.0)
    settle(bucket)
    bucket.rescue()
    before = bucket.stats()
    for task_id in ["unknown", "finished", "failed", "exhausted", "drained", "rescued"]:
        with pytest.raises(TaskNotFound, match=task_id):
            bucket.drain(task_id)
    with pytest.raises(KeyError):
        bucket.drain("unknown")
    assert bucket.stats() == before
    assert_stats_consistent(bucket)


class SelfDrainer(RecordingExecutor):
    """Each ending hook tries to drain (and to rescue) its own task."""

    def __init__(self, bucket_box: list[TaskBucket], now: Callable[[], float]) -> None:
        super().__init__(now)
        self.box = bucket_box

    def _try(self, task_id: str) -> None:
        bucket = self.box[0]
        try:
            bucket.drain(task_id)
        except TaskNotFound:
            self.record("drain", task_id, "TaskNotFound")
        else:
            self.record("drain", task_id, "drained")
        self.record("in", task_id, task_id in bucket)

    def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        super().on_finish(ctx, task_id, data)
        self._try(task_id)
        self.record("rescue", task_id, bucket_rescue := self.box[0].rescue())
        assert task_id not in bucket_rescue

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


def test_drain_from_the_task_own_ending_hook_raises_task_not_found(
    make_bucket: MakeBucket, clock: FakeClock
) -> None:
    box: list[TaskBucket] = []
    executor = SelfDrainer(box, clock.monotonic)
    box.append(bucket := make_bucket(executor=executor))
    executor.behave("failed", raises(ValueError("x")))
    executor.behave("exhausted-running", wait_cancelled())
    bucket.fill(IMMEDIATE, "finished")
    bucket.fill(IMMEDIATE, "failed")
    bucket.fill(IMMEDIATE, "exhausted-running", life_span=1.0)
    settle(bucket, running=1)
    clock.advance(1.0)
    settle(bucket)
    bucket.fill(TIME_BOMB, "rescued", run_after=10.0, life_span=20.0)
    assert bucket.rescue() == ["rescued"]
    settle(bucket)
    for task_id in ["finished", "failed", "exhausted-running", "rescued"]:
        assert executor.detail("drain", task_id) == "TaskNotFound", task_id
        assert executor.detail("in", task_id) is False, task_id
    assert executor.detail("rescue", "finished") == []
    stats = bucket.stats()
    assert (stats.drained, stats.hook_errors) == (0, 0)
    assert_stats_consistent(bucket)


# -- rescue ----------------------------------------------------------------------------


def test_rescue_hands_back_pending_and_running_tasks_in_fill_order(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, gate: Gate
) -> None:
    bucket = make_bucket(executor=recorder, workers=1)
    hold = gate()
    recorder.behave("running", wait_gate(hold, returning_then("ignored", recorder)))
    handles = [
        bucket.fill(TIME_BOMB, "pending-1", run_after=2.0),
        bucket.fill(IMMEDIATE, "running"),
    ]
    recorder.wait_for("on_execute", "running")
    handles += [
        bucket.fill(IMMEDIATE, "queued"),  # behind the held worker
        bucket.fill(TIME_BOMB, "pending-2", run_after=1.0),
    ]
    ids = [h.id for h in handles]
    running_ctx = recorder.contexts["running"]

    assert bucket.rescue() == ids
    # on_panic ran on this thread, for each, and returned before rescue() did.
    assert recorder.ids("on_panic") == ids
    for task_id in ids:
        assert recorder.detail("on_panic", task_id) is threading.current_thread()
    for handle in handles:
        assert handle.state is TaskState.RESCUED
        assert handle.done()
        with pytest.raises(TaskRescued):
            handle.result(timeout=0)
    assert running_ctx.cancelled
    assert len(bucket) == 0
    assert not bucket.closed

    hold.set()
    clock.advance(5.0)
    settle(bucket)
    assert recorder.hooks("running") == ["on_execute", "on_panic", "after"]
    for task_id in ["pending-1", "queued", "pending-2"]:
        assert recorder.hooks(task_id) == ["on_panic"], "a rescued task never runs"
    # Still open: a new fill runs.
    bucket.fill(IMMEDIATE, "after-rescue")
    settle(bucket)
    assert recorder.hooks("after-rescue") == ["on_execute", "on_finish"]
    stats = bucket.stats()
    assert (stats.rescued, stats.finished, stats.executed) == (4, 1, 2)
    assert bucket.rescue() == []
    assert_stats_consistent(bucket)


def test_rescue_runs_on_panic_on_the_calling_thread(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    bucket.fill(TIME_BOMB, "a")
    bucket.fill(TIME_BOMB, "b")
    result: list[list[str]] = []
    thread = threading.Thread(target=lambda: result.append(bucket.rescue()), name="rescuer")
    thread.start()
    thread.join(10)
    assert result == [["a", "b"]]
    assert recorder.detail("on_panic", "a") is thread
    assert recorder.detail("on_panic", "b") is thread


def test_rescue_waits_for_each_on_panic_to_return(
    make_bucket: MakeBucket, clock: FakeClock
) -> None:
    log: list[str] = []

    class Slow(RecordingExecutor):
        def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            log.append(f"start {task_id}")
            assert ctx.cancelled
            assert ctx.task_id == task_id
            ctx.wait(0.0)
            log.append(f"end {task_id}")

    bucket = make_bucket(executor=Slow(clock.monotonic))
    bucket.fill(TIME_BOMB, "a")
    bucket.fill(TIME_BOMB, "b")
    assert bucket.rescue() == ["a", "b"]
    assert log == ["start a", "end a", "start b", "end b"]


def test_rescue_order_is_fill_order_even_for_a_refilled_id(bucket: TaskBucket) -> None:
    bucket.fill(TIME_BOMB, "a")
    bucket.fill(TIME_BOMB, "b")
    bucket.drain("a")
    bucket.fill(TIME_BOMB, "a")
    bucket.fill(IMMEDIATE, "c", executor=lambda ctx, task_id, data: ctx.wait())
    assert bucket.rescue() == ["b", "a", "c"]


# -- close -----------------------------------------------------------------------------


def test_close_with_wait_lets_timers_fire_on_time(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    handle = bucket.fill(TIME_BOMB, "t", "data", run_after=1.0)
    closer = Closer(bucket)
    with pytest.raises(BucketClosed):
        bucket.fill(IMMEDIATE, "refused")
    clock.advance(0.999)
    settle(bucket)
    assert closer.running()
    assert recorder.hooks("t") == []
    assert handle.state is TaskState.PENDING
    clock.advance(0.001)
    closer.join()
    assert recorder.hooks("t") == ["on_execute", "on_finish"]
    assert recorder.detail("on_execute", "t") == T0 + 1.0
    assert handle.done()
    assert handle.result(timeout=0) == "data"
    stats = bucket.stats()
    assert (stats.finished, stats.drained, stats.live, stats.filled) == (1, 0, 0, 1)


def test_close_with_timeout_drains_what_is_left(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("running", wait_cancelled(returns("ignored")))
    early = bucket.fill(TIME_BOMB, "early", run_after=0.5)
    late = bucket.fill(TIME_BOMB, "late", run_after=5.0, life_span=10.0)
    running = bucket.fill(IMMEDIATE, "running", life_span=100.0)
    recorder.wait_for("on_execute", "running")
    settle(bucket, running=1)
    closer = Closer(bucket, timeout=2.0)
    clock.advance(0.5)
    settle(bucket, running=1)
    assert early.state is TaskState.FINISHED
    clock.advance(1.499)
    settle(bucket, running=1)
    assert closer.running()
    assert late.state is TaskState.PENDING
    assert running.state is TaskState.RUNNING
    clock.advance(0.001)  # the timeout: what is left is drained
    closer.join()
    assert late.state is TaskState.DRAINED
    assert running.state is TaskState.DRAINED
    assert recorder.contexts["running"].cancelled
    assert recorder.hooks("late") == []
    assert recorder.hooks("running") == ["on_execute"]
    assert recorder.hooks("early") == ["on_execute", "on_finish"]
    stats = bucket.stats()
    assert (stats.finished, stats.drained, stats.live) == (1, 2, 0)
    assert_stats_consistent(bucket)


def test_close_with_zero_timeout_drains_at_once(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    handle = bucket.fill(TIME_BOMB, "t")
    bucket.close(timeout=0)
    assert handle.state is TaskState.DRAINED
    assert recorder.hooks("t") == []


def test_close_without_wait_drains_pending_and_running(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    recorder.behave("running", wait_cancelled())
    running = bucket.fill(IMMEDIATE, "running")
    pending = bucket.fill(TIME_BOMB, "pending")
    recorder.wait_for("on_execute", "running")
    bucket.close(wait=False)
    assert running.state is TaskState.DRAINED
    assert pending.state is TaskState.DRAINED
    assert recorder.contexts["running"].cancelled
    assert [e for e in recorder.snapshot() if e[0] != "on_execute"] == []
    assert bucket.stats().drained == 2


def test_close_with_rescue_rescues_what_is_left(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    early = bucket.fill(TIME_BOMB, "early", run_after=0.5)
    late = bucket.fill(TIME_BOMB, "late", run_after=3.0)
    closer = Closer(bucket, timeout=1.0, rescue=True)
    clock.advance(0.5)
    settle(bucket)
    assert closer.running()
    clock.advance(0.5)
    closer.join()
    assert early.state is TaskState.FINISHED
    assert late.state is TaskState.RESCUED
    assert late.done()
    assert recorder.detail("on_panic", "late") is closer.thread
    assert recorder.hooks("late") == ["on_panic"]
    stats = bucket.stats()
    assert (stats.finished, stats.rescued, stats.drained) == (1, 1, 0)


def test_close_is_idempotent_and_a_second_close_waits_for_the_first(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    handle = bucket.fill(TIME_BOMB, "t", run_after=1.0)
    first = Closer(bucket)
    second = Closer(bucket, wait=False)  # already closing: it waits, it drains nothing
    settle(bucket)
    assert first.running()
    assert second.running()
    clock.advance(1.0)
    first.join()
    second.join()
    assert handle.state is TaskState.FINISHED
    bucket.close()
    bucket.close(wait=False, rescue=True)
    assert bucket.closed
    stats = bucket.stats()
    assert (stats.finished, stats.drained, stats.rescued) == (1, 0, 0)
    with pytest.raises(BucketClosed):
        bucket.fill(TIME_BOMB, "t")
    assert bucket.stats().filled == 1


def test_close_runs_pending_ending_hooks_and_abandons_a_stuck_worker(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, gate: Gate
) -> None:
    # One worker and no replacements, held in user code that ignores ctx:
    # the queued task's on_task_exhausted has no worker to run on.
    bucket = make_bucket(executor=recorder, workers=1, max_extra_workers=0)
    hold = gate()
    recorder.behave("stuck", wait_gate(hold))
    stuck = bucket.fill(IMMEDIATE, "stuck", life_span=100.0)
    recorder.wait_for("on_execute", "stuck")
    victim = bucket.fill(IMMEDIATE, "victim", life_span=1.0)
    clock.advance(1.0)
    wait_until(lambda: victim.state is TaskState.EXHAUSTED, what="victim exhausted")
    bucket.close(wait=False)  # waits about a second for the stuck worker, then goes
    # When close() returns every task that ended has had its hook, and is done.
    assert victim.done()
    assert recorder.hooks("victim") == ["on_task_exhausted"]
    assert stuck.state is TaskState.DRAINED
    assert stuck.done()
    assert recorder.contexts["stuck"].cancelled
    hold.set()


def test_close_waits_for_a_running_task_and_its_hook(
    bucket: TaskBucket, recorder: RecordingExecutor, gate: Gate
) -> None:
    hold = gate()
    recorder.behave("r", wait_gate(hold, returns("done")))
    handle = bucket.fill(IMMEDIATE, "r")
    recorder.wait_for("on_execute", "r")
    closer = Closer(bucket)
    settle(bucket, running=1)
    assert closer.running()
    hold.set()
    closer.join()
    assert handle.done()
    assert handle.result(timeout=0) == "done"
    assert recorder.hooks("r") == ["on_execute", "on_finish"]


# -- fill from hooks ------------------------------------------------------------------------


def test_fill_from_inside_hooks_works(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    box: list[TaskBucket] = []

    class Chain(RecordingExecutor):
        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            super().on_finish(ctx, task_id, data)
            if task_id == "first":
                box[0].fill(TIME_BOMB, "from-on-finish", run_after=1.0)

        def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            super().on_task_exhausted(ctx, task_id, data)
            box[0].fill(IMMEDIATE, "from-on-exhausted")

    chain = Chain(clock.monotonic)

    def execute(ctx: TaskContext, task_id: str, data: Any) -> Any:
        box[0].fill(IMMEDIATE, "from-on-execute")
        return None

    chain.behave("first", execute)
    chain.behave("doomed", wait_cancelled())
    box.append(bucket := make_bucket(executor=chain))
    bucket.fill(IMMEDIATE, "first")
    bucket.fill(IMMEDIATE, "doomed", life_span=2.0)
    settle(bucket, running=1)
    assert chain.hooks("from-on-execute") == ["on_execute", "on_finish"]
    clock.advance(1.0)
    settle(bucket, running=1)
    assert chain.hooks("from-on-finish") == ["on_execute", "on_finish"]
    clock.advance(1.0)
    settle(bucket)
    assert chain.hooks("from-on-exhausted") == ["on_execute", "on_finish"]
    assert bucket.stats().filled == 5
    assert_stats_consistent(bucket)


def test_fill_from_a_hook_while_closing_raises_bucket_closed(
    make_bucket: MakeBucket, clock: FakeClock, gate: Gate
) -> None:
    box: list[TaskBucket] = []
    outcome: list[str] = []

    class Refill(RecordingExecutor):
        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            try:
                box[0].fill(IMMEDIATE, "too-late")
            except BucketClosed:
                outcome.append("BucketClosed")
            else:  # pragma: no cover - the failure the test looks for
                outcome.append("filled")

    hold = gate()
    executor = Refill(clock.monotonic)
    executor.behave("r", wait_gate(hold))
    box.append(bucket := make_bucket(executor=executor))
    bucket.fill(IMMEDIATE, "r")
    executor.wait_for("on_execute", "r")
    closer = Closer(bucket)
    hold.set()
    closer.join()
    assert outcome == ["BucketClosed"]
    assert bucket.get("too-late") is None
    assert bucket.stats().filled == 1


# -- exactly one ending ----------------------------------------------------------------------


def test_every_task_gets_exactly_one_ending_and_one_hook(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, gate: Gate
) -> None:
    bucket = make_bucket(executor=recorder, workers=2)
    hold = gate()
    recorder.behave("fail", raises(KeyError("k")))
    recorder.behave("exhaust-running", wait_gate(hold))
    recorder.behave("drain-running", wait_cancelled())
    recorder.behave("rescue-running", wait_cancelled())
    handles = [
        bucket.fill(IMMEDIATE, "finish"),
        bucket.fill(IMMEDIATE, "fail"),
        bucket.fill(TIME_BOMB, "finish-later", run_after=0.5),
        bucket.fill(IMMEDIATE, "exhaust-running", life_span=1.0),
        bucket.fill(IMMEDIATE, "drain-running", life_span=9.0),
        bucket.fill(TIME_BOMB, "drain-pending", run_after=2.0),
    ]
    settle(bucket, running=2)
    bucket.drain("drain-running")
    bucket.drain("drain-pending")
    clock.advance(0.5)
    settle(bucket, running=1)
    clock.advance(0.5)
    settle(bucket, running=1)
    handles.append(bucket.fill(IMMEDIATE, "rescue-running", life_span=9.0))
    handles.append(bucket.fill(TIME_BOMB, "rescue-pending", run_after=3.0, life_span=9.0))
    recorder.wait_for("on_execute", "rescue-running")
    settle(bucket, running=2)
    bucket.rescue()
    hold.set()
    clock.advance(10.0)
    settle(bucket)
    expected = {
        "finish": TaskState.FINISHED,
        "fail": TaskState.FAILED,
        "finish-later": TaskState.FINISHED,
        "exhaust-running": TaskState.EXHAUSTED,
        "drain-running": TaskState.DRAINED,
        "drain-pending": TaskState.DRAINED,
        "rescue-running": TaskState.RESCUED,
        "rescue-pending": TaskState.RESCUED,
    }
    assert {h.id: h.state for h in handles} == expected
    for handle in handles:
        assert_one_ending(recorder, handle)
    stats = bucket.stats()
    assert (stats.finished, stats.failed, stats.exhausted, stats.drained, stats.rescued) == (
        2,
        1,
        1,
        2,
        2,
    )
    assert stats.hook_errors == 0
    assert_stats_consistent(bucket)


def test_a_raising_ending_hook_is_logged_and_counted_once(
    make_bucket: MakeBucket, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(RecordingExecutor):
        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            super().on_finish(ctx, task_id, data)
            raise RuntimeError(f"hook of {task_id} broke")

    executor = Broken(clock.monotonic)
    bucket = make_bucket(executor=executor, workers=1)
    first = bucket.fill(IMMEDIATE, "a", 1)
    second = bucket.fill(IMMEDIATE, "b", 2)
    settle(bucket)
    assert first.result(timeout=0) == 1
    assert second.result(timeout=0) == 2
    assert executor.ids("on_finish") == ["a", "b"]
    assert bucket.stats().hook_errors == 2
    errors = [r for r in caplog.records if r.name == "wheelbucket" and r.levelno >= logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info is not None for r in errors)
    assert_stats_consistent(bucket)


@pytest.mark.parametrize("seed", range(4))
def test_random_mix_keeps_every_invariant(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock, seed: int
) -> None:
    rng = random.Random(seed)
    bucket = make_bucket(executor=recorder, workers=3, max_bucket=64)
    handles: dict[str, TaskHandle] = {}
    due: dict[str, float] = {}
    for step in range(120):
        op = rng.random()
        live = [tid for tid, h in handles.items() if not h.done()]
        if op < 0.55:
            tid = f"t{step}"
            if rng.random() < 0.2:
                recorder.behave(tid, raises(ValueError(tid)))
            try:
                if rng.random() < 0.3:
                    life_span = rng.choice([0.01, 0.5, 5])
                    handles[tid] = bucket.fill(IMMEDIATE, tid, life_span=life_span)
                    due[tid] = clock.monotonic()
                else:
                    run_after = rng.choice([0, 0.001, 0.0015, 0.01, 0.1, 0.3])
                    life_span = run_after + rng.choice([0.001, 0.01, 0.5])
                    handles[tid] = bucket.fill(
                        TIME_BOMB, tid, run_after=run_after, life_span=life_span
                    )
                    due[tid] = clock.monotonic() + run_after
            except BucketFull:
                assert len(bucket) == 64
        elif op < 0.7 and live:
            victim = rng.choice(live)
            try:
                bucket.drain(victim)
            except TaskNotFound:
                assert handles[victim].state is not TaskState.PENDING
        elif op < 0.73:
            bucket.rescue()
        else:
            clock.advance(rng.choice([0.0005, 0.001, 0.003, 0.05, 0.2]))
        if step % 10 == 0:
            settle(bucket)
            assert_stats_consistent(bucket)
    clock.advance(10.0)
    settle(bucket)
    assert len(bucket) == 0
    for tid, handle in handles.items():
        assert_one_ending(recorder, handle)
        starts = [d for h, t, d in recorder.snapshot() if h == "on_execute" and t == tid]
        assert len(starts) <= 1, tid
        assert all(start >= due[tid] - 1e-9 for start in starts), f"{tid} ran early"
        if handle.state in (TaskState.FINISHED, TaskState.FAILED):
            assert len(starts) == 1, tid
    stats = bucket.stats()
    assert stats.filled == len(handles)
    assert_stats_consistent(bucket)


def test_stats_count_pending_and_running(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    bucket = make_bucket(executor=recorder, workers=2)
    recorder.default = wait_cancelled()
    bucket.fill(IMMEDIATE, "r1")
    bucket.fill(IMMEDIATE, "r2")
    bucket.fill(IMMEDIATE, "q1")  # queued: both workers are busy
    for i in range(3):
        bucket.fill(TIME_BOMB, f"p{i}")
    recorder.wait_for("on_execute", "r1")
    recorder.wait_for("on_execute", "r2")
    wait_until(lambda: bucket.stats().running == 2)
    stats = bucket.stats()
    assert (stats.live, stats.running, stats.pending, stats.filled) == (6, 2, 4, 6)
    assert stats.live == stats.pending + stats.running == len(bucket)
    bucket.drain("r1")  # q1 gets the free worker
    recorder.wait_for("on_execute", "q1")
    settle(bucket, running=2)
    stats = bucket.stats()
    assert (stats.live, stats.running, stats.pending, stats.drained) == (5, 2, 3, 1)
    assert_stats_consistent(bucket)


# -- the handle --------------------------------------------------------------------------


def test_handle_reports_state_and_done_through_the_lifecycle(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock, gate: Gate
) -> None:
    hold = gate()
    recorder.behave("t", wait_gate(hold, returns(42)))
    handle = bucket.fill(TIME_BOMB, "t")
    assert handle.id == "t"
    assert (handle.state, handle.done()) == (TaskState.PENDING, False)
    clock.advance(1.0)
    recorder.wait_for("on_execute", "t")
    settle(bucket, running=1)
    assert (handle.state, handle.done()) == (TaskState.RUNNING, False)
    hold.set()
    settle(bucket)
    assert (handle.state, handle.done()) == (TaskState.FINISHED, True)
    assert handle.wait() is TaskState.FINISHED
    assert handle.wait(timeout=0) is TaskState.FINISHED
    assert handle.result() == 42


def test_handle_is_done_only_once_its_ending_hook_returned(
    make_bucket: MakeBucket, clock: FakeClock, gate: Gate
) -> None:
    hold = gate()

    class SlowFinish(RecordingExecutor):
        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            super().on_finish(ctx, task_id, data)
            hold.wait(30)

    executor = SlowFinish(clock.monotonic)
    bucket = make_bucket(executor=executor)
    handle = bucket.fill(IMMEDIATE, "t", "v")
    executor.wait_for("on_finish", "t")
    assert handle.state is TaskState.FINISHED
    assert not handle.done()
    assert handle.wait(timeout=0.01) is None
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.01)
    hold.set()
    assert handle.wait(timeout=10) is TaskState.FINISHED
    assert handle.done()
    assert handle.result(timeout=0) == "v"


def test_handle_wait_and_result_time_out(bucket: TaskBucket) -> None:
    handle = bucket.fill(TIME_BOMB, "t")
    assert handle.wait(timeout=0) is None
    assert handle.wait(timeout=0.01) is None
    with pytest.raises(TimeoutError) as info:
        handle.result(timeout=0.01)
    assert info.type is TimeoutError, "the built-in TimeoutError"
    assert handle.state is TaskState.PENDING, "a timed-out wait does not touch the task"


def test_handle_result_reraises_the_very_exception_of_on_execute(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    error = ValueError("boom")
    recorder.behave("t", raises(error))
    handle = bucket.fill(IMMEDIATE, "t")
    with pytest.raises(ValueError, match="boom") as info:
        handle.result(timeout=10)
    assert info.value is error
    settle(bucket)
    assert recorder.detail("on_execute_error", "t") is error
    assert handle.state is TaskState.FAILED


def test_handle_result_raises_for_each_unfinished_ending(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    exhausted = bucket.fill(TIME_BOMB, "exhausted", run_after=0.5, life_span=1.0)
    recorder.behave("exhausted", wait_cancelled())
    drained = bucket.fill(TIME_BOMB, "drained", run_after=10.0, life_span=20.0)
    rescued = bucket.fill(TIME_BOMB, "rescued", run_after=10.0, life_span=20.0)
    bucket.drain("drained")
    clock.advance(0.5)
    settle(bucket, running=1)
    clock.advance(0.5)
    settle(bucket)
    bucket.rescue()
    for handle, error in [
        (exhausted, TaskExhausted),
        (drained, TaskDrained),
        (rescued, TaskRescued),
    ]:
        with pytest.raises(error, match=handle.id):
            handle.result(timeout=0)
        assert handle.wait(timeout=0) is handle.state


def test_add_done_callback_runs_exactly_once_before_or_after_done(
    bucket: TaskBucket, clock: FakeClock
) -> None:
    calls: list[tuple[str, TaskHandle, threading.Thread]] = []
    handle = bucket.fill(TIME_BOMB, "t", 7)
    handle.add_done_callback(lambda h: calls.append(("early-1", h, threading.current_thread())))
    handle.add_done_callback(lambda h: calls.append(("early-2", h, threading.current_thread())))
    settle(bucket)
    assert calls == []
    clock.advance(1.0)
    settle(bucket)
    assert [name for name, _, _ in calls] == ["early-1", "early-2"]
    assert all(h is handle for _, h, _ in calls)
    handle.add_done_callback(lambda h: calls.append(("late", h, threading.current_thread())))
    assert calls[-1] == ("late", handle, threading.current_thread()), "at once, here"
    settle(bucket)
    clock.advance(10.0)
    settle(bucket)
    assert [name for name, _, _ in calls] == ["early-1", "early-2", "late"]


def test_done_callback_of_a_drained_task_runs_on_the_draining_thread(
    bucket: TaskBucket,
) -> None:
    calls: list[threading.Thread] = []
    handle = bucket.fill(TIME_BOMB, "t")
    handle.add_done_callback(lambda h: calls.append(threading.current_thread()))
    bucket.drain("t")
    assert calls == [threading.current_thread()]
    assert handle.done()


def test_a_raising_done_callback_does_not_stop_the_others(
    bucket: TaskBucket, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(handle: TaskHandle) -> None:
        raise RuntimeError("callback broke")

    handle = bucket.fill(TIME_BOMB, "t")
    handle.add_done_callback(broken)
    handle.add_done_callback(lambda h: calls.append("after"))
    clock.advance(1.0)
    settle(bucket)
    assert calls == ["after"]
    assert handle.state is TaskState.FINISHED
    assert bucket.stats().hook_errors == 1
    caplog.clear()
    handle.add_done_callback(broken)  # already done: runs here, must not raise
    logged = [r for r in caplog.records if r.name == "wheelbucket" and r.exc_info]
    assert len(logged) == 1, "logged with its traceback"
    assert_stats_consistent(bucket)


def test_a_raising_done_callback_added_after_done_is_counted(
    bucket: TaskBucket, clock: FakeClock
) -> None:
    def broken(handle: TaskHandle) -> None:
        raise RuntimeError("callback broke")

    handle = bucket.fill(IMMEDIATE, "t")
    settle(bucket)
    assert handle.done()
    handle.add_done_callback(broken)
    assert bucket.stats().hook_errors == 1


def test_await_handle_returns_like_result(bucket: TaskBucket, clock: FakeClock) -> None:
    async def main() -> Any:
        handle = bucket.fill(TIME_BOMB, "t", "value")
        asyncio.get_running_loop().call_soon(clock.advance, 1.0)
        return await asyncio.wait_for(handle, timeout=10)

    assert asyncio.run(main()) == "value"


def test_await_handle_raises_like_result(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    error = ValueError("boom")
    recorder.behave("failed", raises(error))
    failed = bucket.fill(IMMEDIATE, "failed")
    drained = bucket.fill(TIME_BOMB, "drained")

    async def main() -> None:
        asyncio.get_running_loop().call_soon(bucket.drain, "drained")
        with pytest.raises(TaskDrained):
            await drained
        with pytest.raises(ValueError, match="boom") as info:
            await failed
        assert info.value is error

    asyncio.run(main())


def test_await_done_handle_returns_at_once(bucket: TaskBucket) -> None:
    handle = bucket.fill(IMMEDIATE, "t", 5)
    assert handle.wait(timeout=10) is TaskState.FINISHED

    async def main() -> Any:
        return await handle

    assert asyncio.run(main()) == 5


def test_await_timeout_does_not_cancel_the_task(bucket: TaskBucket, clock: FakeClock) -> None:
    handle = bucket.fill(TIME_BOMB, "t", "v")

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(handle, timeout=0.01)

    asyncio.run(main())
    assert handle.state is TaskState.PENDING
    clock.advance(1.0)
    settle(bucket)
    assert handle.result(timeout=0) == "v"


# -- the context --------------------------------------------------------------------------


def test_ctx_fields_follow_the_fake_clock(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    def work(ctx: TaskContext, task_id: str, data: Any) -> Any:
        recorder.record("wait-0", task_id, ctx.wait(0))
        before = clock.monotonic()
        result = ctx.wait(0.5)
        recorder.record("wait-0.5", task_id, (result, before, clock.monotonic()))
        recorder.record("wait", task_id, ctx.wait())
        recorder.record("wait-again", task_id, ctx.wait(100.0))
        return None

    recorder.behave("c", work)
    bucket.fill(IMMEDIATE, "c", life_span=10.0)
    recorder.wait_for("on_execute", "c")
    settle(bucket, running=1)
    ctx = recorder.contexts["c"]
    assert ctx.task_id == "c"
    assert ctx.deadline == T0 + 10.0
    assert ctx.remaining() == pytest.approx(10.0)
    assert not ctx.cancelled
    assert recorder.wait_for("wait-0", "c") is False

    # ctx.wait(0.5) returns on the fake clock, exactly 0.5 s after it began.
    remaining = [ctx.remaining()]
    for _ in range(8):
        clock.advance(0.25)
        settle(bucket, running=1)
        remaining.append(ctx.remaining())
        if "wait-0.5" in recorder.hooks("c"):
            break
    result, before, after = recorder.detail("wait-0.5", "c")
    assert result is False
    assert after - before == pytest.approx(0.5)
    assert remaining == sorted(remaining, reverse=True)
    assert remaining[-1] == pytest.approx(T0 + 10.0 - clock.monotonic())
    assert not ctx.cancelled

    bucket.drain("c")
    assert recorder.wait_for("wait", "c") is True
    assert recorder.wait_for("wait-again", "c") is True, "a cancelled ctx never blocks"
    assert ctx.cancelled
    assert ctx.remaining() == pytest.approx(T0 + 10.0 - clock.monotonic())
    settle(bucket)


def test_ctx_remaining_is_never_negative(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    recorder.behave("c", wait_cancelled())
    bucket.fill(IMMEDIATE, "c", life_span=1.0)
    recorder.wait_for("on_execute", "c")
    settle(bucket, running=1)
    ctx = recorder.contexts["c"]
    clock.advance(5.0)
    settle(bucket)
    assert ctx.cancelled
    assert ctx.remaining() == 0.0

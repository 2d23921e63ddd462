"""Async hooks, real cancellation and awaitable handles (SPEC section 3, issue 5).

Deterministic tests run on a `FakeClock` and `settle()`: a coroutine the test
keeps blocked on purpose (awaiting an `asyncio.Event` it controls) counts in
``settle(bucket, running=k)`` exactly like a blocked worker does. Tests on the
real clock and real loops are marked ``slow`` and have generous bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

from wheelbucket import (
    BucketClosed,
    Executor,
    TaskBucket,
    TaskContext,
    TaskDrained,
    TaskExhausted,
    TaskHandle,
    TaskRescued,
    TaskState,
    TaskType,
)
from wheelbucket.testing import FakeClock, settle

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB
MakeBucket = Callable[..., TaskBucket]
AsyncBehaviour = Callable[[TaskContext, str, Any], Awaitable[Any]]

# A safety net against a hang, never a delay the test relies on.
SAFETY = 10.0


def on_loop_thread() -> bool:
    return threading.current_thread().name.endswith("-asyncio")


def on_worker_thread() -> bool:
    return "-worker-" in threading.current_thread().name


# -- helpers -----------------------------------------------------------------


class AsyncRecorder(Executor):
    """Every hook async; records ``(hook, task_id, detail, on_loop_thread)``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any, bool]] = []
        self._lock = threading.Lock()
        self.behaviours: dict[str, AsyncBehaviour] = {}

    def record(self, hook: str, task_id: str, detail: Any = None) -> None:
        with self._lock:
            self.events.append((hook, task_id, detail, on_loop_thread()))

    def hooks(self, task_id: str) -> list[str]:
        with self._lock:
            return [hook for hook, tid, _, _ in self.events if tid == task_id]

    def detail(self, hook: str, task_id: str) -> Any:
        with self._lock:
            found = [d for h, tid, d, _ in self.events if h == hook and tid == task_id]
        assert len(found) == 1, f"{hook} of {task_id!r} recorded {len(found)} times"
        return found[0]

    def all_on_loop(self) -> bool:
        with self._lock:
            return all(loop for *_, loop in self.events)

    async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        self.record("on_execute", task_id)
        behaviour = self.behaviours.get(task_id)
        return data if behaviour is None else await behaviour(ctx, task_id, data)

    async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self.record("on_finish", task_id)

    async def on_execute_error(
        self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
    ) -> None:
        self.record("on_execute_error", task_id, error)

    async def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self.record("on_task_exhausted", task_id, ctx.cancelled)

    async def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        await asyncio.sleep(0)  # a real suspension: rescue() must wait past it
        await asyncio.sleep(0)
        self.record("on_panic", task_id, ctx.cancelled)


class Hold:
    """An async behaviour that blocks on an `asyncio.Event` the test opens.

    Records whether the coroutine saw `CancelledError`; with `swallow` it
    catches it and returns (as badly written code does), with `forever` it
    goes on waiting after every cancellation.
    """

    def __init__(self, *, swallow: bool = False, forever: bool = False) -> None:
        self.swallow = swallow or forever
        self.forever = forever
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.cancellations = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    async def __call__(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.started.set()
        while True:
            try:
                await self._event.wait()
            except asyncio.CancelledError:
                self.cancellations += 1
                self.cancelled.set()
                if not self.swallow:
                    raise
                if self.forever:
                    continue
                return "swallowed"
            return "released"

    def wait_started(self) -> None:
        assert self.started.wait(SAFETY), "the coroutine never started"

    def release(self) -> None:
        assert self._loop is not None
        assert self._event is not None
        self._loop.call_soon_threadsafe(self._event.set)


@pytest.fixture
def arec() -> AsyncRecorder:
    return AsyncRecorder()


@pytest.fixture
def abucket(make_bucket: MakeBucket, arec: AsyncRecorder) -> TaskBucket:
    return make_bucket(executor=arec, life_span=10.0, run_after=1.0)


def start_held(
    bucket: TaskBucket, arec: AsyncRecorder, task_id: str, hold: Hold, *, others: int = 0
) -> TaskHandle:
    """Fill an IMMEDIATE async task that blocks in `hold`; return once it does.

    `others`: hooks the test already keeps blocked.
    """
    arec.behaviours[task_id] = hold
    handle = bucket.fill(IMMEDIATE, task_id)
    hold.wait_started()
    settle(bucket, running=1 + others)
    assert handle.state is TaskState.RUNNING
    return handle


# -- async hooks run on the bucket's loop -------------------------------------


def test_async_on_execute_returns_its_result_and_hooks_run_on_the_loop(
    abucket: TaskBucket, arec: AsyncRecorder
) -> None:
    handle = abucket.fill(IMMEDIATE, "t", {"n": 1})
    settle(abucket)
    assert handle.result(0) == {"n": 1}
    assert arec.hooks("t") == ["on_execute", "on_finish"]
    assert arec.all_on_loop()
    stats = abucket.stats()
    assert (stats.filled, stats.finished, stats.live, stats.executed) == (1, 1, 0, 1)


def test_plain_async_function_and_async_callable_object_are_executors(
    make_bucket: MakeBucket,
) -> None:
    async def double(ctx: TaskContext, task_id: str, data: int) -> int:
        await asyncio.sleep(0)
        return 2 * data

    class Tripler:
        async def __call__(self, ctx: TaskContext, task_id: str, data: int) -> int:
            return 3 * data

    bucket = make_bucket()
    a = bucket.fill(IMMEDIATE, "a", 5, double)
    b = bucket.fill(IMMEDIATE, "b", 5, Tripler())
    settle(bucket)
    assert (a.result(0), b.result(0)) == (10, 15)


def test_async_on_execute_error_runs_async_on_execute_error_and_result_reraises(
    abucket: TaskBucket, arec: AsyncRecorder
) -> None:
    error = ValueError("boom")

    async def fail(ctx: TaskContext, task_id: str, data: Any) -> Any:
        await asyncio.sleep(0)
        raise error

    arec.behaviours["t"] = fail
    handle = abucket.fill(IMMEDIATE, "t")
    settle(abucket)
    assert arec.hooks("t") == ["on_execute", "on_execute_error"]
    assert arec.detail("on_execute_error", "t") is error
    assert handle.state is TaskState.FAILED
    with pytest.raises(ValueError, match="boom"):
        handle.result(0)
    assert abucket.stats().failed == 1


def test_async_time_bomb_never_starts_before_its_due_time(
    abucket: TaskBucket, arec: AsyncRecorder, clock: FakeClock
) -> None:
    handle = abucket.fill(TIME_BOMB, "t", run_after=1.0)
    clock.advance(0.999)
    settle(abucket)
    assert arec.hooks("t") == []
    assert handle.state is TaskState.PENDING
    clock.advance(0.001)
    settle(abucket)
    assert arec.hooks("t") == ["on_execute", "on_finish"]
    assert abucket.stats().lateness_max == 0.0


class QuietClock(FakeClock):
    """A FakeClock that can also move without waking anyone (to stage a race)."""

    def jump_quietly(self, seconds: float) -> None:
        self._now_ns += round(seconds * 1e9)


def test_an_async_task_whose_life_span_ended_before_it_started_never_runs(
    arec: AsyncRecorder, gate: Callable[[], threading.Event]
) -> None:
    clock = QuietClock()
    opened = gate()
    blocking = threading.Event()

    async def blocks_the_loop(ctx: TaskContext, task_id: str, data: Any) -> None:
        blocking.set()
        opened.wait(SAFETY)  # sync code in a coroutine: the whole loop waits

    with TaskBucket(clock=clock, executor=arec, life_span=1.0) as bucket:
        arec.behaviours["blocker"] = blocks_the_loop
        blocker = bucket.fill(IMMEDIATE, "blocker", life_span=10.0)
        assert blocking.wait(SAFETY)
        late = bucket.fill(IMMEDIATE, "late")  # queued behind the blocked loop
        settle(bucket, running=2)
        # Its life span ends; the scheduler, asleep until then, is not told,
        # so the loop is first to find it over when it comes to start it.
        clock.jump_quietly(1.0)
        opened.set()
        wait_until(late.done, SAFETY, "the late task ended")
        clock.advance(0)
        settle(bucket)
        assert late.state is TaskState.EXHAUSTED
        assert arec.hooks("late") == ["on_task_exhausted"]  # on_execute never started
        assert arec.detail("on_task_exhausted", "late") is True
        assert blocker.state is TaskState.FINISHED
        assert bucket.stats().exhausted == 1


def test_a_raising_async_hook_is_counted_and_the_task_still_completes(
    make_bucket: MakeBucket, caplog: pytest.LogCaptureFixture
) -> None:
    class Bad(Executor):
        async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> str:
            return "ok"

        async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            raise RuntimeError("hook broke")

    bucket = make_bucket(executor=Bad())
    with caplog.at_level(logging.ERROR, logger="wheelbucket"):
        handle = bucket.fill(IMMEDIATE, "t")
        settle(bucket)
    assert handle.result(0) == "ok"
    assert bucket.stats().hook_errors == 1
    assert "hook on_finish of task 't' raised RuntimeError" in caplog.text


def test_the_handle_is_done_only_after_its_async_ending_hook_returned(
    make_bucket: MakeBucket,
) -> None:
    hold = Hold()

    class Slow(Executor):
        async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> str:
            return "r"

        async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            await hold(ctx, task_id, data)

    bucket = make_bucket(executor=Slow())
    handle = bucket.fill(IMMEDIATE, "t")
    hold.wait_started()
    settle(bucket, running=1)
    assert handle.state is TaskState.FINISHED
    assert not handle.done()
    assert handle.wait(0) is None
    hold.release()
    settle(bucket)
    assert handle.done()
    assert handle.result(0) == "r"


def test_sync_hooks_run_on_the_pool_and_async_hooks_on_the_loop_in_one_executor(
    make_bucket: MakeBucket,
) -> None:
    seen: dict[str, str] = {}

    def where() -> str:
        return "loop" if on_loop_thread() else "pool" if on_worker_thread() else "other"

    class AsyncWorkSyncEnd(Executor):
        async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            seen["a.on_execute"] = where()

        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            seen["a.on_finish"] = where()

    class SyncWorkAsyncEnd(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            seen["s.on_execute"] = where()

        async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            seen["s.on_finish"] = where()

    bucket = make_bucket()
    a = bucket.fill(IMMEDIATE, "a", executor=AsyncWorkSyncEnd())
    s = bucket.fill(IMMEDIATE, "s", executor=SyncWorkAsyncEnd())
    settle(bucket)
    assert a.done()
    assert s.done()
    assert seen == {
        "a.on_execute": "loop",
        "a.on_finish": "pool",
        "s.on_execute": "pool",
        "s.on_finish": "loop",
    }


def test_an_async_ending_hook_of_a_sync_task_does_not_hold_its_worker(
    make_bucket: MakeBucket,
) -> None:
    hold = Hold()
    ran: list[str] = []

    class SyncWorkSlowAsyncEnd(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            ran.append(task_id)

        async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            if task_id == "first":
                await hold(ctx, task_id, data)

    bucket = make_bucket(executor=SyncWorkSlowAsyncEnd(), workers=1, max_extra_workers=0)
    first = bucket.fill(IMMEDIATE, "first")
    hold.wait_started()
    second = bucket.fill(IMMEDIATE, "second")
    settle(bucket, running=1)  # the blocked hook is on the loop, not on the one worker
    assert ran == ["first", "second"]
    assert second.done()
    assert not first.done()
    hold.release()
    settle(bucket)
    assert first.done()


# -- real cancellation ----------------------------------------------------------


def test_drain_cancels_the_running_coroutine_and_runs_no_hook(
    abucket: TaskBucket, arec: AsyncRecorder
) -> None:
    hold = Hold()
    handle = start_held(abucket, arec, "t", hold)
    abucket.drain("t")
    assert "t" not in abucket  # at once: the id can be filled again
    settle(abucket)
    assert hold.cancelled.is_set()
    assert arec.hooks("t") == ["on_execute"]
    assert handle.state is TaskState.DRAINED
    with pytest.raises(TaskDrained):
        handle.result(0)
    assert abucket.stats().drained == 1


def test_exhaustion_cancels_the_coroutine_and_runs_on_task_exhausted_once(
    make_bucket: MakeBucket, arec: AsyncRecorder, clock: FakeClock
) -> None:
    bucket = make_bucket(executor=arec, life_span=2.0)
    hold = Hold()
    handle = start_held(bucket, arec, "t", hold)
    clock.advance(1.999)
    settle(bucket, running=1)
    assert not hold.cancelled.is_set()
    clock.advance(0.001)
    settle(bucket)
    assert hold.cancelled.is_set()
    assert arec.hooks("t") == ["on_execute", "on_task_exhausted"]
    assert arec.detail("on_task_exhausted", "t") is True  # its ctx was cancelled
    assert handle.state is TaskState.EXHAUSTED
    with pytest.raises(TaskExhausted):
        handle.result(0)
    stats = bucket.stats()
    assert (stats.exhausted, stats.live, stats.hook_errors) == (1, 0, 0)


def test_rescue_cancels_the_coroutine_and_waits_for_async_on_panic(
    abucket: TaskBucket, arec: AsyncRecorder
) -> None:
    hold = Hold()
    running = start_held(abucket, arec, "running", hold)
    waiting = abucket.fill(TIME_BOMB, "waiting")
    assert abucket.rescue() == ["running", "waiting"]
    # on_panic suspends twice; rescue() returned only after both came back.
    assert arec.detail("on_panic", "running") is True
    assert arec.detail("on_panic", "waiting") is True
    assert running.done()
    assert waiting.done()
    with pytest.raises(TaskRescued):
        running.result(0)
    settle(abucket)
    assert hold.cancelled.is_set()
    assert arec.hooks("running") == ["on_execute", "on_panic"]
    assert arec.hooks("waiting") == ["on_panic"]
    assert abucket.stats().rescued == 2
    assert not abucket.closed


def test_rescue_called_on_the_loop_thread_does_not_wait_but_completes_later(
    abucket: TaskBucket, arec: AsyncRecorder
) -> None:
    hold = Hold()
    other = start_held(abucket, arec, "other", hold)
    at_return: list[Any] = []

    async def rescuer(ctx: TaskContext, task_id: str, data: Any) -> None:
        ids = abucket.rescue()  # blocking call on the loop: it cannot await on_panic
        at_return.append((ids, arec.hooks("other"), other.done()))
        await asyncio.sleep(0)  # our own task was rescued: this is where we are cancelled

    arec.behaviours["rescuer"] = rescuer
    me = abucket.fill(IMMEDIATE, "rescuer")
    settle(abucket)
    assert at_return == [(["other", "rescuer"], ["on_execute"], False)]
    assert arec.hooks("other") == ["on_execute", "on_panic"]
    assert arec.hooks("rescuer") == ["on_execute", "on_panic"]
    assert other.done()
    assert me.done()
    assert hold.cancelled.is_set()
    assert abucket.stats().rescued == 2


def test_close_cancels_a_running_coroutine_before_it_returns(
    make_bucket: MakeBucket, arec: AsyncRecorder
) -> None:
    bucket = make_bucket(executor=arec)
    hold = Hold()
    handle = start_held(bucket, arec, "t", hold)
    bucket.close(wait=False)
    assert hold.cancelled.is_set()
    assert handle.state is TaskState.DRAINED
    assert handle.done()
    assert arec.hooks("t") == ["on_execute"]
    assert not bucket._core.aio.thread.is_alive()
    with pytest.raises(BucketClosed):
        bucket.fill(IMMEDIATE, "late")


def test_close_with_rescue_runs_async_on_panic_before_it_returns(
    make_bucket: MakeBucket, arec: AsyncRecorder
) -> None:
    bucket = make_bucket(executor=arec)
    hold = Hold()
    handle = start_held(bucket, arec, "t", hold)
    bucket.close(wait=False, rescue=True)
    assert hold.cancelled.is_set()
    assert arec.hooks("t") == ["on_execute", "on_panic"]
    assert handle.state is TaskState.RESCUED
    assert handle.done()


def test_close_from_inside_a_coroutine_returns_and_the_loop_stops_after(
    make_bucket: MakeBucket, arec: AsyncRecorder
) -> None:
    bucket = make_bucket(executor=arec)
    hold = Hold()
    other = start_held(bucket, arec, "other", hold)
    returned = threading.Event()

    async def closer(ctx: TaskContext, task_id: str, data: Any) -> None:
        # Blocks the loop while it runs: it cannot wait for async tasks, so
        # it drains them instead of hanging.
        bucket.close()
        returned.set()

    arec.behaviours["closer"] = closer
    me = bucket.fill(IMMEDIATE, "closer")
    assert returned.wait(SAFETY)
    thread = bucket._core.aio.thread
    thread.join(SAFETY)
    assert not thread.is_alive()
    assert hold.cancelled.is_set()
    assert other.state is TaskState.DRAINED
    assert me.state is TaskState.DRAINED
    assert bucket.closed


@pytest.mark.parametrize("ending", ["drain", "exhaust"])
def test_a_coroutine_that_swallows_its_cancellation_keeps_its_ending_and_is_logged(
    make_bucket: MakeBucket,
    arec: AsyncRecorder,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    ending: str,
) -> None:
    bucket = make_bucket(executor=arec, life_span=2.0)
    hold = Hold(swallow=True)
    handle = start_held(bucket, arec, "t", hold)
    with caplog.at_level(logging.WARNING, logger="wheelbucket"):
        if ending == "drain":
            bucket.drain("t")
        else:
            clock.advance(2.0)
        settle(bucket)
    assert hold.cancelled.is_set()
    expected = {"drain": TaskState.DRAINED, "exhaust": TaskState.EXHAUSTED}[ending]
    assert handle.state is expected
    with pytest.raises((TaskDrained, TaskExhausted)):
        handle.result(0)  # not "swallowed": its return value is ignored
    hooks = {"drain": ["on_execute"], "exhaust": ["on_execute", "on_task_exhausted"]}[ending]
    assert arec.hooks("t") == hooks
    assert "on_execute swallowed CancelledError and returned" in caplog.text
    assert f"the task stays {expected.value}" in caplog.text
    stats = bucket.stats()
    assert (stats.finished, stats.live, stats.hook_errors) == (0, 0, 0)


def test_settle_counts_coroutines_blocked_on_purpose_exactly(
    abucket: TaskBucket, arec: AsyncRecorder
) -> None:
    holds = [Hold(), Hold()]
    for i, hold in enumerate(holds):
        arec.behaviours[f"t{i}"] = hold
        abucket.fill(IMMEDIATE, f"t{i}")
        hold.wait_started()
    settle(abucket, running=2)
    with pytest.raises(TimeoutError, match="aio_inflight=2"):
        settle(abucket, running=1, timeout=0.2)
    holds[0].release()
    settle(abucket, running=1)
    with pytest.raises(TimeoutError):
        settle(abucket, timeout=0.2)
    abucket.drain("t1")
    settle(abucket)
    assert abucket.stats().finished == 1


@pytest.mark.slow
def test_a_coroutine_still_cancellation_proof_at_close_is_abandoned_not_waited_forever(
    make_bucket: MakeBucket, arec: AsyncRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = make_bucket(executor=arec)
    hold = Hold(forever=True)
    handle = start_held(bucket, arec, "t", hold)
    bucket.drain("t")
    settle(bucket, running=1)  # it swallowed the cancellation and waits again
    assert hold.cancellations == 1
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="wheelbucket"):
        bucket.close(wait=False)
    # close() waits 1 s, cancels again, waits 1 s more, then gives up.
    assert time.monotonic() - started < SAFETY
    assert hold.cancellations == 2
    assert "ignored their cancellation and are abandoned: 'wheelbucket:t'" in caplog.text
    assert handle.state is TaskState.DRAINED
    assert not bucket._core.aio.thread.is_alive()


# -- await handle ----------------------------------------------------------------


def test_await_a_handle_from_a_loop_in_another_thread(
    make_bucket: MakeBucket, clock: FakeClock
) -> None:
    bucket = make_bucket(executor=lambda ctx, task_id, data: data * 2)
    handle = bucket.fill(TIME_BOMB, "t", 21, run_after=1.0)
    got: list[Any] = []

    def foreign() -> None:
        async def main() -> Any:
            return await handle

        got.append(asyncio.run(main()))

    thread = threading.Thread(target=foreign)
    thread.start()
    wait_until(lambda: bool(handle._waiters and handle._waiters.callbacks), SAFETY)
    clock.advance(1.0)
    settle(bucket)
    thread.join(SAFETY)
    assert got == [42]


def _failing(ctx: TaskContext, task_id: str, data: Any) -> Any:
    raise KeyError("inner")


@pytest.mark.parametrize(
    ("ending", "error"),
    [
        ("fail", KeyError),
        ("drain", TaskDrained),
        ("exhaust", TaskExhausted),
        ("rescue", TaskRescued),
    ],
)
def test_await_raises_like_result_for_every_ending(
    make_bucket: MakeBucket, clock: FakeClock, ending: str, error: type[Exception]
) -> None:
    def blocked(ctx: TaskContext, task_id: str, data: Any) -> None:
        ctx.wait()

    bucket = make_bucket(life_span=3.0)
    if ending == "exhaust":
        handle = bucket.fill(IMMEDIATE, "t", executor=blocked)
        settle(bucket, running=1)
    else:
        handle = bucket.fill(TIME_BOMB, "t", executor=_failing, run_after=1.0)

    def trigger() -> None:
        if ending == "fail":
            clock.advance(1.0)
        elif ending == "drain":
            bucket.drain("t")
        elif ending == "exhaust":
            clock.advance(3.0)
        else:
            bucket.rescue()
        settle(bucket)

    async def main() -> Any:
        waiter = asyncio.ensure_future(_await(handle))
        await asyncio.sleep(0)  # it now waits on the handle
        assert not waiter.done()
        await asyncio.to_thread(trigger)
        return await waiter

    with pytest.raises(error):
        asyncio.run(main())
    with pytest.raises(error):
        handle.result(0)  # the same outcome, the same way


async def _await(handle: TaskHandle) -> Any:
    return await handle


def test_await_a_handle_that_is_done_returns_at_once(abucket: TaskBucket) -> None:
    handle = abucket.fill(IMMEDIATE, "t", "v")
    settle(abucket)
    assert asyncio.run(_await(handle)) == "v"


def test_wait_for_a_handle_times_out_without_touching_the_task(
    abucket: TaskBucket, arec: AsyncRecorder, clock: FakeClock
) -> None:
    handle = abucket.fill(TIME_BOMB, "t", "v", run_after=1.0)

    async def impatient() -> None:
        for _ in range(3):  # retrying does not pile up callbacks
            with pytest.raises(asyncio.TimeoutError):  # TimeoutError on 3.11+, not on 3.10
                await asyncio.wait_for(handle, 0.01)

    asyncio.run(impatient())  # that loop is closed now
    assert handle.state is TaskState.PENDING
    assert "t" in abucket
    assert handle._waiters is not None
    assert handle._waiters.callbacks == []
    clock.advance(1.0)
    settle(abucket)
    assert handle.result(0) == "v"
    assert abucket.stats().hook_errors == 0

    async def patient() -> Any:
        return await asyncio.wait_for(handle, SAFETY)

    assert asyncio.run(patient()) == "v"


def test_cancelling_the_awaiting_coroutine_does_not_cancel_the_task(
    abucket: TaskBucket, arec: AsyncRecorder, clock: FakeClock
) -> None:
    handle = abucket.fill(TIME_BOMB, "t", "v", run_after=1.0)

    async def main() -> None:
        waiter = asyncio.ensure_future(_await(handle))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    assert handle.state is TaskState.PENDING
    clock.advance(1.0)
    settle(abucket)
    assert handle.result(0) == "v"
    assert arec.hooks("t") == ["on_execute", "on_finish"]
    assert abucket.stats().hook_errors == 0


def test_await_a_handle_from_the_bucket_loop_itself(
    abucket: TaskBucket, arec: AsyncRecorder
) -> None:
    hold = Hold()
    first = start_held(abucket, arec, "first", hold)

    async def follower(ctx: TaskContext, task_id: str, data: Any) -> Any:
        return ("after", await first)

    arec.behaviours["second"] = follower
    second = abucket.fill(IMMEDIATE, "second")
    settle(abucket, running=2)
    assert not second.done()
    hold.release()
    settle(abucket)
    assert second.result(0) == ("after", "released")


# -- uvloop -----------------------------------------------------------------------


def test_use_uvloop_runs_async_hooks_on_uvloop_and_still_cancels(
    make_bucket: MakeBucket, arec: AsyncRecorder
) -> None:
    pytest.importorskip("uvloop")

    async def loop_kind(ctx: TaskContext, task_id: str, data: Any) -> str:
        return type(asyncio.get_running_loop()).__module__

    bucket = make_bucket(executor=arec, use_uvloop=True)
    arec.behaviours["kind"] = loop_kind
    kind = bucket.fill(IMMEDIATE, "kind")
    hold = Hold()
    held = start_held(bucket, arec, "held", hold)
    bucket.drain("held")
    settle(bucket)
    assert kind.result(0).startswith("uvloop")
    assert hold.cancelled.is_set()
    assert held.state is TaskState.DRAINED


def test_use_uvloop_without_uvloop_installed_fails_at_construction(
    monkeypatch: pytest.MonkeyPatch, clock: FakeClock
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    with pytest.raises(ImportError, match="wheelbucket\\[uvloop\\]"):
        TaskBucket(clock=clock, use_uvloop=True)


# -- sync and async side by side --------------------------------------------------


def test_a_blocked_async_task_does_not_hold_back_sync_tasks(
    make_bucket: MakeBucket, arec: AsyncRecorder
) -> None:
    bucket = make_bucket(executor=arec, workers=1)
    hold = Hold()
    held = start_held(bucket, arec, "held", hold)
    handles = [bucket.fill(IMMEDIATE, f"s{i}", i, lambda c, t, d: d) for i in range(50)]
    settle(bucket, running=1)
    assert [h.result(0) for h in handles] == list(range(50))
    assert held.state is TaskState.RUNNING
    bucket.drain("held")
    settle(bucket)


def test_blocked_workers_do_not_hold_back_async_tasks(
    make_bucket: MakeBucket, arec: AsyncRecorder, gate: Callable[[], threading.Event]
) -> None:
    bucket = make_bucket(executor=arec, workers=1, max_extra_workers=0)
    opened = gate()

    def stuck(ctx: TaskContext, task_id: str, data: Any) -> None:
        opened.wait(SAFETY)

    sync = bucket.fill(IMMEDIATE, "sync", executor=stuck)
    settle(bucket, running=1)
    handles = [bucket.fill(IMMEDIATE, f"a{i}", i) for i in range(50)]
    settle(bucket, running=1)
    assert [h.result(0) for h in handles] == list(range(50))
    assert sync.state is TaskState.RUNNING
    opened.set()
    settle(bucket)
    assert sync.done()


def test_async_on_task_exhausted_runs_even_when_every_worker_is_stuck(
    make_bucket: MakeBucket,
    arec: AsyncRecorder,
    clock: FakeClock,
    gate: Callable[[], threading.Event],
) -> None:
    bucket = make_bucket(executor=arec, workers=1, max_extra_workers=0, life_span=5.0)
    opened = gate()

    def ignores_ctx(ctx: TaskContext, task_id: str, data: Any) -> None:
        opened.wait(SAFETY)

    sync = bucket.fill(IMMEDIATE, "sync", executor=ignores_ctx)
    settle(bucket, running=1)
    hold = Hold()
    handle = start_held(bucket, arec, "async", hold, others=1)
    clock.advance(5.0)  # both exhaust; the one worker stays stuck, no replacement allowed
    wait_until(handle.done, SAFETY, "the async task's on_task_exhausted")
    assert arec.hooks("async") == ["on_execute", "on_task_exhausted"]
    assert hold.cancelled.is_set()
    # It has no on_task_exhausted, so its ending waits for nothing, not even
    # for the stuck worker (SPEC: an ending is never held back by live tasks).
    assert sync.state is TaskState.EXHAUSTED
    assert sync.done()
    opened.set()
    settle(bucket)
    assert sync.done()
    assert bucket.stats().exhausted == 2


def test_sync_and_async_tasks_under_load_each_end_exactly_once(
    make_bucket: MakeBucket, clock: FakeClock
) -> None:
    n = 2000
    finished: Counter[str] = Counter()
    lock = threading.Lock()

    def count(task_id: str) -> None:
        with lock:
            finished[task_id] += 1

    class SyncWork(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
            return data

        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            count(task_id)

    class AsyncWork(Executor):
        async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
            await asyncio.sleep(0)
            return data

        async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            count(task_id)

    bucket = make_bucket(max_bucket=4 * n, workers=2, life_span=5.0)
    handles: dict[str, TaskHandle] = {}
    drained: set[str] = set()

    def filler(prefix: str, executor: Executor) -> None:
        for i in range(n):
            kind = TIME_BOMB if i % 4 == 0 else IMMEDIATE
            task_id = f"{prefix}{i}"
            handles[task_id] = bucket.fill(kind, task_id, i, executor, run_after=1.0)

    def drainer() -> None:
        # Races the fills and the executions: drains every 7th id it finds live.
        for i in range(0, n, 7):
            for prefix in ("s", "a"):
                task_id = f"{prefix}{i}"
                wait_until(lambda tid=task_id: tid in handles, SAFETY)
                try:
                    bucket.drain(task_id)
                except KeyError:
                    continue  # it ended first
                drained.add(task_id)

    threads = [
        threading.Thread(target=filler, args=("s", SyncWork())),
        threading.Thread(target=filler, args=("a", AsyncWork())),
        threading.Thread(target=drainer),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SAFETY * 3)
    settle(bucket)
    clock.advance(1.0)  # the TIME_BOMB ones
    settle(bucket)

    assert len(handles) == 2 * n
    states = Counter(h.state for h in handles.values())
    assert set(states) <= {TaskState.FINISHED, TaskState.DRAINED}
    assert all(h.done() for h in handles.values())
    assert {tid for tid, h in handles.items() if h.state is TaskState.DRAINED} == drained
    assert set(finished) == set(handles) - drained
    assert set(finished.values()) == {1}
    stats = bucket.stats()
    assert stats.filled == 2 * n
    assert (stats.finished, stats.drained) == (2 * n - len(drained), len(drained))
    assert (stats.live, stats.running, stats.hook_errors) == (0, 0, 0)


# -- on the real clock -------------------------------------------------------------


@pytest.fixture
def real_bucket() -> Iterator[Callable[..., TaskBucket]]:
    made: list[TaskBucket] = []

    def make(**kwargs: Any) -> TaskBucket:
        made.append(TaskBucket(**kwargs))
        return made[-1]

    yield make
    for bucket in made:
        bucket.close(wait=False)


@pytest.mark.slow
def test_real_clock_life_span_cancels_a_sleeping_coroutine(
    real_bucket: Callable[..., TaskBucket],
) -> None:
    cancelled = threading.Event()

    async def sleeper(ctx: TaskContext, task_id: str, data: Any) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    bucket = real_bucket(executor=sleeper, life_span=0.2)
    handle = bucket.fill(IMMEDIATE, "t")
    assert handle.wait(SAFETY) is TaskState.EXHAUSTED
    assert cancelled.wait(SAFETY)


@pytest.mark.slow
def test_real_clock_wait_for_from_a_foreign_loop(real_bucket: Callable[..., TaskBucket]) -> None:
    async def work(ctx: TaskContext, task_id: str, data: float) -> str:
        await asyncio.sleep(data)
        return task_id

    bucket = real_bucket(executor=work, life_span=30.0)

    async def request(task_id: str, seconds: float, timeout: float) -> Any:
        handle = bucket.fill(IMMEDIATE, task_id, seconds)
        try:
            return await asyncio.wait_for(handle, timeout)
        except asyncio.TimeoutError:
            bucket.drain(task_id)
            return "timed out"

    async def main() -> list[Any]:
        return await asyncio.gather(request("quick", 0.01, SAFETY), request("slow", 30.0, 0.05))

    assert asyncio.run(main()) == ["quick", "timed out"]
    assert bucket.stats().drained == 1


@pytest.mark.slow
def test_real_clock_mixed_load_with_exhaustion(real_bucket: Callable[..., TaskBucket]) -> None:
    async def forever(ctx: TaskContext, task_id: str, data: Any) -> None:
        await asyncio.sleep(60)

    def quick(ctx: TaskContext, task_id: str, data: Any) -> int:
        return 1

    bucket = real_bucket(life_span=0.5, max_bucket=1000, workers=2)
    stuck = [bucket.fill(IMMEDIATE, f"a{i}", None, forever) for i in range(200)]
    done = [bucket.fill(IMMEDIATE, f"s{i}", None, quick) for i in range(200)]
    assert all(h.result(SAFETY) == 1 for h in done)
    assert all(h.wait(SAFETY) is TaskState.EXHAUSTED for h in stuck)
    stats = bucket.stats()
    assert (stats.finished, stats.exhausted, stats.live) == (200, 200, 0)


@pytest.mark.slow
def test_draining_tasks_as_they_come_due_never_kills_the_scheduler(
    make_bucket: MakeBucket, clock: FakeClock
) -> None:
    # Regression: the scheduler read task._plan without the lock right after
    # firing a batch; a drain in between left it None and the scheduler died.
    async def work(ctx: TaskContext, task_id: str, data: Any) -> None:
        return None

    def sync_work(ctx: TaskContext, task_id: str, data: Any) -> None:
        return None

    errors: list[BaseException | None] = []
    old_hook = threading.excepthook
    old_interval = sys.getswitchinterval()
    threading.excepthook = lambda args: errors.append(args.exc_value)
    sys.setswitchinterval(1e-6)  # interleave the threads as much as possible
    drained = 0
    try:
        for _ in range(4):
            bucket = make_bucket(max_bucket=10_000, life_span=5.0)
            handles = [
                bucket.fill(TIME_BOMB, f"t{i}", None, work if i % 2 else sync_work)
                for i in range(4000)
            ]
            settle(bucket)

            thread = threading.Thread(target=drain_as_due, args=(bucket, handles))
            thread.start()
            clock.advance(1.0)
            thread.join(SAFETY * 2)
            settle(bucket)
            assert bucket._core.thread.is_alive()
            assert all(h.done() for h in handles)
            stats = bucket.stats()
            assert stats.finished + stats.drained == len(handles)
            drained += stats.drained
            bucket.close()
    finally:
        sys.setswitchinterval(old_interval)
        threading.excepthook = old_hook
    assert errors == []
    assert drained > 0


def drain_as_due(bucket: TaskBucket, handles: list[TaskHandle]) -> None:
    """Drain each task the moment it has fired and before it starts."""
    left = handles
    end = time.monotonic() + SAFETY
    while left and time.monotonic() < end:
        waiting = []
        for handle in left:
            if isinstance(bucket._core.tasks.get(handle.id), tuple):  # a record: not fired yet
                waiting.append(handle)
            elif handle.state is TaskState.PENDING:  # fired, not started
                with contextlib.suppress(KeyError):
                    bucket.drain(handle.id)
        left = waiting


# -- the examples in docs/asyncio.md ----------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "asyncio.md"


def _doc_examples() -> list[str]:
    text = DOCS.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_doc_examples())))
def test_docs_asyncio_examples_run(index: int, tmp_path: Path) -> None:
    code = _doc_examples()[index]
    if "use_uvloop=True" in code:
        pytest.importorskip("uvloop")
    script = tmp_path / f"example_{index}.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1:] == ["ok"]
    assert "Traceback" not in done.stderr


def test_docs_asyncio_has_examples() -> None:
    assert len(_doc_examples()) >= 7

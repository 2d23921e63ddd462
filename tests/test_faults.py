"""Faults: user code that raises, hangs or is broken, and process life events.

For each fault the decided behaviour (docs/reliability.md, "Decisions") is
checked, and after each one the bucket must still work: a fresh fill runs to
FINISHED. Deterministic (`FakeClock` + `settle`) except the tests marked
``slow``, which use the real clock with generous bounds, and the
subprocess/fork tests, which bound real time only to catch a hang.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wheelbucket import (
    BucketClosed,
    Executor,
    TaskBucket,
    TaskContext,
    TaskHandle,
    TaskNotFound,
    TaskState,
    TaskType,
)
from wheelbucket.testing import FakeClock, settle

LOGGER = "wheelbucket"
LIFE = 1.0
BASE_EXCEPTIONS = [RuntimeError, KeyboardInterrupt, SystemExit]


def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `predicate` for up to `timeout` real seconds (threads we do not control)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.001)
    return True


def still_works(bucket: TaskBucket) -> None:
    """The bucket is alive: its scheduler runs and a fresh task finishes."""
    assert bucket._core.thread.is_alive()
    handle = bucket.fill(TaskType.IMMEDIATE, f"probe-{time.monotonic_ns()}", "probe")
    settle(bucket)
    assert handle.wait(10) is TaskState.FINISHED


def check_invariants(bucket: TaskBucket) -> None:
    stats = bucket.stats()
    assert stats.live == stats.pending + stats.running == len(bucket)
    ended = stats.finished + stats.failed + stats.exhausted + stats.drained + stats.rescued
    assert stats.filled == ended + stats.live


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gates() -> Iterator[Callable[[], threading.Event]]:
    """Events that hold a hook; all opened at teardown so no thread is left blocked."""
    made: list[threading.Event] = []

    def new() -> threading.Event:
        event = threading.Event()
        made.append(event)
        return event

    yield new
    for event in made:
        event.set()


class Raising(Executor):
    """Every hook may raise `exc_type` for tasks whose data says so."""

    def __init__(self, exc_type: type[BaseException], raise_in: str) -> None:
        self.exc_type = exc_type
        self.raise_in = raise_in
        self.calls: list[tuple[str, str]] = []

    def _maybe_raise(self, hook: str, task_id: str, data: Any) -> None:
        self.calls.append((hook, task_id))
        if data == "raise" and hook == self.raise_in:
            raise self.exc_type(f"{hook} of {task_id} raised on purpose")

    def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        self._maybe_raise("on_execute", task_id, data)
        if self.raise_in == "on_execute_error" and data == "raise":
            raise ValueError("so that on_execute_error runs")
        if self.raise_in == "on_task_exhausted" and data == "raise":
            ctx.wait()
        return "result"

    def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self._maybe_raise("on_finish", task_id, data)

    def on_execute_error(
        self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
    ) -> None:
        self._maybe_raise("on_execute_error", task_id, data)

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self._maybe_raise("on_task_exhausted", task_id, data)

    def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self._maybe_raise("on_panic", task_id, data)


class AsyncRaising(Raising):
    """The same, with every ending hook an ``async def``."""

    async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self._maybe_raise("on_finish", task_id, data)

    async def on_execute_error(  # type: ignore[override]
        self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
    ) -> None:
        await asyncio.sleep(0)
        self._maybe_raise("on_execute_error", task_id, data)

    async def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self._maybe_raise("on_task_exhausted", task_id, data)

    async def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self._maybe_raise("on_panic", task_id, data)


class AllAsync(AsyncRaising):
    """And on_execute async too (the ending hooks then run on the loop itself)."""

    async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:  # type: ignore[override]
        self._maybe_raise("on_execute", task_id, data)
        if self.raise_in == "on_execute_error" and data == "raise":
            raise ValueError("so that on_execute_error runs")
        if self.raise_in == "on_task_exhausted" and data == "raise":
            await asyncio.sleep(3600)  # cancelled for real when exhausted
        return "result"


ENDING_HOOK_CASES = {
    "on_finish": TaskState.FINISHED,
    "on_execute_error": TaskState.FAILED,
    "on_task_exhausted": TaskState.EXHAUSTED,
    "on_panic": TaskState.RESCUED,
    "done_callback": TaskState.FINISHED,
}


def _end_task(bucket: TaskBucket, clock: FakeClock, hook: str) -> TaskHandle:
    if hook == "on_panic":
        handle = bucket.fill(TaskType.TIME_BOMB, "victim", "raise", run_after=0.5)
        settle(bucket)
        assert bucket.rescue() == ["victim"]
    elif hook == "on_task_exhausted":
        handle = bucket.fill(TaskType.IMMEDIATE, "victim", "raise")
        # (settle() cannot tell a sleeping async on_execute from pending work.)
        assert eventually(lambda: handle.state is TaskState.RUNNING)
        clock.advance(LIFE)
    else:
        handle = bucket.fill(TaskType.IMMEDIATE, "victim", "raise")
    settle(bucket)
    assert handle.wait(10) is not None
    return handle


# -- hooks that raise --------------------------------------------------------------


HOOK_ERROR_CASES = [
    pytest.param(hook, exc_type, style, id=f"{hook}-{exc_type.__name__}-{style}")
    for hook in ENDING_HOOK_CASES
    for exc_type in BASE_EXCEPTIONS
    for style in ("sync", "async-hooks", "all-async")
    if hook != "done_callback" or style == "sync"  # a done callback is a plain callable
]


@pytest.mark.parametrize(("hook", "exc_type", "style"), HOOK_ERROR_CASES)
def test_a_raising_hook_is_logged_counted_and_contained(
    hook: str,
    exc_type: type[BaseException],
    style: str,
    fake_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kind = {"sync": Raising, "async-hooks": AsyncRaising, "all-async": AllAsync}[style]
    executor = kind(exc_type, hook)
    caplog.set_level(logging.ERROR, logger=LOGGER)
    with TaskBucket(executor=executor, clock=fake_clock, workers=2, life_span=LIFE) as bucket:
        if hook == "done_callback":

            def callback(handle: TaskHandle) -> None:
                raise exc_type("done callback raised on purpose")

            handle = bucket.fill(TaskType.TIME_BOMB, "victim", "ok", run_after=0.5)
            handle.add_done_callback(callback)
            fake_clock.advance(0.5)
            settle(bucket)
        else:
            handle = _end_task(bucket, fake_clock, hook)
        assert handle.done()
        assert handle.state is ENDING_HOOK_CASES[hook]
        assert bucket.stats().hook_errors == 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, caplog.text
        record = errors[0]
        assert hook.replace("_", " ") in record.getMessage() or hook in record.getMessage()
        assert "victim" in record.getMessage()
        assert record.exc_info is not None
        assert record.exc_info[0] is exc_type
        assert "Traceback" in caplog.text
        # Nothing is dead: not the scheduler, not a worker, not the event loop.
        still_works(bucket)
        check_invariants(bucket)
        assert bucket.stats().workers <= 2
        if style != "sync":
            assert bucket._core.aio.thread.is_alive()


@pytest.mark.parametrize(
    ("exc_type", "is_async"),
    [
        (KeyboardInterrupt, False),
        (SystemExit, False),
        (GeneratorExit, False),
        (KeyboardInterrupt, True),
        (SystemExit, True),
        # GeneratorExit from a coroutine is how it is closed: the loop lets it
        # through on purpose (_aio.py), so it is not a failure there.
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else ("async" if v else "sync"),
)
def test_a_base_exception_from_on_execute_fails_the_task_and_the_worker_survives(
    exc_type: type[BaseException], is_async: bool, fake_clock: FakeClock
) -> None:
    errors: list[BaseException] = []
    raised = exc_type("from on_execute")

    class Ex(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
            if data == "raise":
                raise raised
            return data

        def on_execute_error(
            self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
        ) -> None:
            errors.append(error)

    class AsyncEx(Ex):
        async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:  # type: ignore[override]
            if data == "raise":
                raise raised
            return data

    with TaskBucket(executor=AsyncEx() if is_async else Ex(), clock=fake_clock, workers=1) as b:
        handle = b.fill(TaskType.IMMEDIATE, "victim", "raise")
        settle(b)
        assert handle.state is TaskState.FAILED
        with pytest.raises(exc_type) as info:
            handle.result(0)
        assert info.value is raised
        assert errors == [raised]
        stats = b.stats()
        assert (stats.failed, stats.hook_errors, stats.workers_stuck) == (1, 0, 0)
        still_works(b)
        assert b.stats().workers <= 1


def test_generator_exit_from_an_async_on_execute_leaves_the_loop_alive(
    fake_clock: FakeClock,
) -> None:
    """The loop lets GeneratorExit through (it is how coroutines are closed).

    The task is then neither finished nor failed: it stays RUNNING until its
    life span ends, and ends EXHAUSTED like any task that overran. Everything
    else goes on.
    """
    exhausted: list[str] = []

    class Ex(Executor):
        async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
            if data == "raise":
                raise GeneratorExit("from on_execute")
            return data

        def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            exhausted.append(task_id)

    with TaskBucket(executor=Ex(), clock=fake_clock, life_span=LIFE) as bucket:
        handle = bucket.fill(TaskType.IMMEDIATE, "victim", "raise")
        settle(bucket)
        assert handle.state is TaskState.RUNNING
        fake_clock.advance(LIFE)
        settle(bucket)
        assert handle.state is TaskState.EXHAUSTED
        assert exhausted == ["victim"]
        assert bucket._core.aio.thread.is_alive()
        other = bucket.fill(TaskType.IMMEDIATE, "after", "fine")
        settle(bucket)
        assert other.result(0) == "fine"
        check_invariants(bucket)


# -- stuck and slow work ------------------------------------------------------------


def test_on_execute_that_never_returns_on_every_worker(
    fake_clock: FakeClock,
    gates: Callable[[], threading.Event],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Replacements are bounded by max_extra_workers, stats say so, close() abandons."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    gate = gates()
    exhausted: list[str] = []

    class Hang(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            gate.wait()  # ignores ctx: a thread cannot be killed

        def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            exhausted.append(task_id)

    workers, extra = 2, 3
    bound = workers + extra
    before = set(threading.enumerate())
    bucket = TaskBucket(
        executor=Hang(),
        clock=fake_clock,
        workers=workers,
        max_extra_workers=extra,
        life_span=LIFE,
        name="stuck",
    )
    handles: list[TaskHandle] = []

    def hang_one_round(count: int) -> None:
        """`count` tasks start and hang; at their life span they end EXHAUSTED under it."""
        batch = [bucket.fill(TaskType.IMMEDIATE, f"h{len(handles) + i}") for i in range(count)]
        handles.extend(batch)
        assert eventually(lambda: all(h.state is TaskState.RUNNING for h in batch))
        fake_clock.advance(LIFE)
        assert eventually(lambda: bucket.stats().workers_stuck == len(handles))
        assert all(h.state is TaskState.EXHAUSTED for h in batch)
        assert bucket.stats().workers <= bound

    try:
        # Every worker hangs at once...
        hang_one_round(workers)
        s = bucket.stats()
        assert (s.exhausted, s.workers_stuck, s.running) == (2, 2, 0)
        assert s.workers_replaced >= 1  # someone had to run the two on_task_exhausted
        assert eventually(lambda: sorted(exhausted) == ["h0", "h1"])
        # ...and so does every replacement, until the bound is reached.
        while bucket.stats().workers_stuck < bound:
            assert len(handles) < 3 * bound
            hang_one_round(1)
        s = bucket.stats()
        assert (s.workers, s.workers_stuck, s.executed) == (bound, bound, bound)
        assert s.workers_replaced == bound - workers
        assert any(f"bound of {extra} extra threads" in r.getMessage() for r in caplog.records), (
            caplog.text
        )
        # Now no thread is left: new tasks wait, never start, and end at
        # their life span; no thread is started for them.
        waiting = [bucket.fill(TaskType.IMMEDIATE, f"w{i}") for i in range(2)]
        time.sleep(0.3)  # (real time) a free thread would have started them by now
        assert [h.state for h in waiting] == [TaskState.PENDING] * 2
        fake_clock.advance(LIFE)
        assert eventually(lambda: all(h.state is TaskState.EXHAUSTED for h in waiting))
        s = bucket.stats()
        assert (s.workers, s.executed, s.live) == (bound, bound, 0)
        everyone = [*handles, *waiting]
        assert len(exhausted) < len(everyone)  # some on_task_exhausted wait for a thread
        # close() returns promptly, abandoning the stuck threads, and runs the
        # ending hooks still queued itself.
        started = time.monotonic()
        bucket.close()
        assert time.monotonic() - started < 10
        assert all(h.done() for h in everyone)
        assert sorted(exhausted) == sorted(h.id for h in everyone)
        check_invariants(bucket)
        assert bucket.stats().hook_errors == 0
    finally:
        gate.set()
        bucket.close(wait=False)
    for thread in set(threading.enumerate()) - before:
        thread.join(10)
        assert not thread.is_alive(), thread.name


def test_on_execute_outliving_its_life_span_is_exhausted_and_its_outcome_ignored(
    fake_clock: FakeClock, gates: Callable[[], threading.Event]
) -> None:
    gate = gates()
    calls: list[str] = []

    class Slow(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> str:
            gate.wait()
            calls.append("returned")
            return "late result"

        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            calls.append("on_finish")

        def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            calls.append("on_task_exhausted")

    with TaskBucket(executor=Slow(), clock=fake_clock, workers=1, life_span=LIFE) as bucket:
        handle = bucket.fill(TaskType.IMMEDIATE, "slow")
        settle(bucket, running=1)
        fake_clock.advance(LIFE)
        settle(bucket, running=1)
        assert handle.state is TaskState.EXHAUSTED
        assert calls == ["on_task_exhausted"]
        assert bucket.stats().workers_stuck == 1
        # The pool did not starve: the replacement runs other tasks.
        other = bucket.fill(TaskType.IMMEDIATE, "other", executor=lambda ctx, tid, d: "ok")
        settle(bucket, running=1)
        assert other.result(0) == "ok"
        gate.set()
        settle(bucket)
        assert calls == ["on_task_exhausted", "returned"]  # no on_finish
        assert handle.state is TaskState.EXHAUSTED
        s = bucket.stats()
        assert (s.workers_stuck, s.finished, s.exhausted) == (0, 1, 1)
        assert s.workers <= 1  # the returned thread rejoined or left
        still_works(bucket)


@pytest.mark.slow
def test_a_very_slow_on_execute_does_not_hold_up_the_others() -> None:
    done_slow = threading.Event()
    early: list[str] = []

    def work(ctx: TaskContext, task_id: str, data: Any) -> Any:
        now = time.monotonic_ns()
        if now < data:
            early.append(task_id)
        if task_id == "slow":
            time.sleep(2.0)  # ignores ctx on purpose
            done_slow.set()
        return done_slow.is_set()

    with TaskBucket(executor=work, workers=2, life_span=10.0) as bucket:
        slow = bucket.fill(TaskType.IMMEDIATE, "slow", time.monotonic_ns())
        quick = []
        for i in range(20):
            run_after = 0.01 * i
            due = time.monotonic_ns() + round(run_after * 1e9)
            quick.append(bucket.fill(TaskType.TIME_BOMB, f"q{i}", due, run_after=run_after))
        results = [h.result(timeout=30) for h in quick]
        # All twenty ran on the other worker while "slow" was still sleeping.
        assert results == [False] * 20
        assert slow.result(timeout=30) is True
        assert early == []
        assert bucket.stats().finished == 21


# -- broken objects -----------------------------------------------------------------


class Evil:
    """Data whose every dunder a logger or a container might call raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no eq")

    def __hash__(self) -> int:
        raise RuntimeError("no hash")

    def __bool__(self) -> bool:
        raise RuntimeError("no bool")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("no format")


class EvilError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_broken_data_and_errors_never_crash_verbose_logging(
    fake_clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    evil = Evil()
    seen: list[tuple[str, str, bool]] = []

    class Ex(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
            seen.append(("on_execute", task_id, data is evil))
            if task_id == "fail":
                raise EvilError()
            if task_id == "exhaust" or task_id == "drain" or task_id == "rescue":
                ctx.wait()
            return data

        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            seen.append(("on_finish", task_id, data is evil))
            if task_id == "hook-raises":
                raise EvilError()

        def on_execute_error(
            self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
        ) -> None:
            seen.append(("on_execute_error", task_id, isinstance(error, EvilError)))

        def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            seen.append(("on_task_exhausted", task_id, data is evil))

        def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            seen.append(("on_panic", task_id, data is evil))

    with TaskBucket(
        executor=Ex(), clock=fake_clock, verbose=True, workers=4, life_span=LIFE
    ) as bucket:
        h = {
            tid: bucket.fill(TaskType.IMMEDIATE, tid, evil)
            for tid in ("finish", "fail", "hook-raises", "exhaust", "drain")
        }
        settle(bucket, running=2)
        bucket.drain("drain")
        settle(bucket, running=1)
        fake_clock.advance(LIFE)
        settle(bucket)
        h["rescue"] = bucket.fill(TaskType.IMMEDIATE, "rescue", evil)
        settle(bucket, running=1)
        assert bucket.rescue() == ["rescue"]
        settle(bucket)
        assert h["finish"].result(0) is evil
        with pytest.raises(EvilError):
            h["fail"].result(0)
        states = {tid: handle.state.name for tid, handle in h.items()}
        assert states == {
            "finish": "FINISHED",
            "fail": "FAILED",
            "hook-raises": "FINISHED",
            "exhaust": "EXHAUSTED",
            "drain": "DRAINED",
            "rescue": "RESCUED",
        }
        assert all(flag for _, _, flag in seen), seen
        assert bucket.stats().hook_errors == 1
        still_works(bucket)
    text = caplog.text  # formats every record: must not raise
    for tid, event in [
        ("finish", "filled"),
        ("finish", "executing"),
        ("finish", "finished"),
        ("fail", "failed"),
        ("exhaust", "exhausted"),
        ("drain", "drained"),
        ("rescue", "rescued"),
    ]:
        assert f"task '{tid}' {event}" in text
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) >= 6 * 2 + 5
    assert "hook on_finish of task 'hook-raises' raised EvilError" in text
    assert "Logging error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "make_executor",
    [
        pytest.param(lambda: lambda ctx, tid, data: data, id="plain-function"),
        pytest.param(lambda: types.SimpleNamespace(on_execute=lambda c, t, d: d), id="namespace"),
        pytest.param(lambda: Executor(), id="bare-Executor"),
        pytest.param(
            lambda: type("OnlyExecute", (), {"on_execute": lambda self, c, t, d: d})(),
            id="duck-typed",
        ),
    ],
)
def test_an_executor_lacking_hooks_gets_every_ending_without_errors(
    make_executor: Callable[[], Any], fake_clock: FakeClock
) -> None:
    executor = make_executor()
    blocker = types.SimpleNamespace(on_execute=lambda ctx, tid, d: ctx.wait())
    failer = types.SimpleNamespace(on_execute=lambda ctx, tid, d: 1 / 0)
    with TaskBucket(executor=executor, clock=fake_clock, life_span=LIFE, workers=4) as bucket:
        finish = bucket.fill(TaskType.IMMEDIATE, "finish", "data")
        fail = bucket.fill(TaskType.IMMEDIATE, "fail", executor=failer)
        exhaust = bucket.fill(TaskType.IMMEDIATE, "exhaust", executor=blocker)
        drain = bucket.fill(TaskType.TIME_BOMB, "drain", run_after=0.5)
        settle(bucket, running=1)
        bucket.drain("drain")
        fake_clock.advance(LIFE)
        settle(bucket)
        rescue = bucket.fill(TaskType.TIME_BOMB, "rescue", run_after=0.5)
        assert bucket.rescue() == ["rescue"]
        settle(bucket)
        assert finish.state is TaskState.FINISHED
        assert finish.result(0) == ("data" if not isinstance(executor, Executor) else None)
        assert fail.state is TaskState.FAILED
        assert exhaust.state is TaskState.EXHAUSTED
        assert drain.state is TaskState.DRAINED
        assert rescue.state is TaskState.RESCUED
        assert bucket.stats().hook_errors == 0
        check_invariants(bucket)


def test_an_executor_hook_added_on_the_instance_is_used(fake_clock: FakeClock) -> None:
    panicked: list[str] = []
    executor = types.SimpleNamespace(
        on_execute=lambda ctx, tid, d: d, on_panic=lambda ctx, tid, d: panicked.append(tid)
    )
    with TaskBucket(executor=executor, clock=fake_clock) as bucket:
        bucket.fill(TaskType.TIME_BOMB, "a", run_after=0.5)
        assert bucket.rescue() == ["a"]
        assert panicked == ["a"]


# -- close() while tasks run ----------------------------------------------------------


def test_close_waits_for_a_running_task_to_finish(
    fake_clock: FakeClock, gates: Callable[[], threading.Event]
) -> None:
    gate = gates()
    finished: list[str] = []

    class Ex(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> str:
            gate.wait()
            return "done"

        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            finished.append(task_id)

    bucket = TaskBucket(executor=Ex(), clock=fake_clock, workers=1)
    handle = bucket.fill(TaskType.IMMEDIATE, "running")
    settle(bucket, running=1)
    closer = threading.Thread(target=bucket.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close(wait=True) waits for the running task
    with pytest.raises(BucketClosed):
        bucket.fill(TaskType.IMMEDIATE, "refused")
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert handle.state is TaskState.FINISHED
    assert handle.result(0) == "done"
    assert finished == ["running"]


def test_close_lets_pending_timers_fire_on_time_while_it_waits(fake_clock: FakeClock) -> None:
    ran: list[tuple[str, int]] = []
    bucket = TaskBucket(
        executor=lambda ctx, tid, d: ran.append((tid, fake_clock.monotonic_ns())),
        clock=fake_clock,
    )
    start = fake_clock.monotonic_ns()
    handles = [
        bucket.fill(TaskType.TIME_BOMB, f"t{i}", run_after=0.25 * i, life_span=2.0)
        for i in range(1, 4)
    ]
    closer = threading.Thread(target=bucket.close)
    closer.start()
    assert eventually(lambda: bucket.closed)
    for i in range(3):
        fake_clock.advance(0.25)
        assert eventually(lambda i=i: len(ran) > i)
    closer.join(10)
    assert not closer.is_alive()
    assert [h.state for h in handles] == [TaskState.FINISHED] * 3
    assert [(tid, (t - start) / 1e9) for tid, t in ran] == [("t1", 0.25), ("t2", 0.5), ("t3", 0.75)]


@pytest.mark.parametrize("honours_ctx", [True, False], ids=["honours-ctx", "ignores-ctx"])
def test_close_without_wait_drains_running_tasks_and_returns_promptly(
    honours_ctx: bool, fake_clock: FakeClock, gates: Callable[[], threading.Event]
) -> None:
    gate = gates()
    calls: list[str] = []
    contexts: list[TaskContext] = []

    class Ex(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            contexts.append(ctx)
            if honours_ctx:
                ctx.wait()
            else:
                gate.wait()
            calls.append("returned")

        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            calls.append("on_finish")

    before = set(threading.enumerate())
    bucket = TaskBucket(executor=Ex(), clock=fake_clock, workers=2)
    running = [bucket.fill(TaskType.IMMEDIATE, f"r{i}") for i in range(2)]
    pending = bucket.fill(TaskType.TIME_BOMB, "p", run_after=1.0)
    settle(bucket, running=2)
    started = time.monotonic()
    bucket.close(wait=False)
    assert time.monotonic() - started < 10
    assert [h.state for h in [*running, pending]] == [TaskState.DRAINED] * 3
    assert all(ctx.cancelled for ctx in contexts)
    gate.set()
    for thread in set(threading.enumerate()) - before:
        thread.join(10)
        assert not thread.is_alive(), thread.name
    assert "on_finish" not in calls
    assert calls == ["returned", "returned"]
    s = bucket.stats()
    assert (s.drained, s.live) == (3, 0)


@pytest.mark.slow
@pytest.mark.parametrize("rescue", [False, True])
def test_close_with_a_timeout_drains_or_rescues_what_is_left(rescue: bool) -> None:
    panicked: list[str] = []

    class Ex(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            ctx.wait()

        def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            panicked.append(task_id)

    bucket = TaskBucket(executor=Ex(), workers=1, life_span=3600)
    running = bucket.fill(TaskType.IMMEDIATE, "running")
    far = bucket.fill(TaskType.TIME_BOMB, "far", run_after=1800)
    assert eventually(lambda: running.state is TaskState.RUNNING)
    started = time.monotonic()
    bucket.close(timeout=0.2, rescue=rescue)
    took = time.monotonic() - started
    assert 0.2 <= took < 10
    expected = TaskState.RESCUED if rescue else TaskState.DRAINED
    assert (running.state, far.state) == (expected, expected)
    assert panicked == (["running", "far"] if rescue else [])


# -- shutdown and process life ---------------------------------------------------------


def _bucket_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name + "-")]


@pytest.mark.parametrize("live", [True, False], ids=["with-live-tasks", "empty"])
def test_a_bucket_never_closed_is_stopped_when_collected(
    live: bool, caplog: pytest.LogCaptureFixture, gates: Callable[[], threading.Event]
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    gate = gates()

    def make() -> list[TaskHandle]:
        bucket = TaskBucket(executor=lambda ctx, tid, d: gate.wait(), workers=2, name="forgotten")
        handles = []
        if live:
            handles.append(bucket.fill(TaskType.IMMEDIATE, "running"))
            handles += [
                bucket.fill(TaskType.TIME_BOMB, f"p{i}", run_after=3600, life_span=7200)
                for i in range(3)
            ]
            assert eventually(lambda: handles[0].state is TaskState.RUNNING)
        else:
            bucket.fill(TaskType.IMMEDIATE, "quick", executor=lambda ctx, tid, d: None).wait(10)
        assert _bucket_threads("forgotten")
        return handles

    handles = make()
    gc.collect()
    gate.set()
    assert eventually(lambda: not _bucket_threads("forgotten")), _bucket_threads("forgotten")
    warned = [r for r in caplog.records if "garbage-collected" in r.getMessage()]
    if live:
        assert len(warned) == 1
        assert "4 live tasks" in warned[0].getMessage()
        assert [h.state for h in handles] == [TaskState.DRAINED] * 4
    else:
        assert warned == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
@pytest.mark.parametrize("busy", [False, True], ids=["idle", "task-running"])
def test_fork_with_a_live_bucket_gives_the_child_a_clear_error(
    busy: bool, gates: Callable[[], threading.Event]
) -> None:
    gate = gates()
    bucket = TaskBucket(executor=lambda ctx, tid, d: gate.wait() if d else "parent")
    try:
        pending = bucket.fill(TaskType.TIME_BOMB, "pending", run_after=3600, life_span=7200)
        if busy:
            bucket.fill(TaskType.IMMEDIATE, "busy", True)
            assert eventually(lambda: bucket.stats().running == 1)
        # Hold the bucket's lock across fork(), as a racing fill would:
        # the child must not inherit it locked.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            with bucket._core.lock:
                pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 99
            try:
                code = 10
                try:
                    bucket.fill(TaskType.IMMEDIATE, "child")
                except BucketClosed as exc:
                    code = 11 if "closed" in str(exc) else 12
                if code == 11:
                    code = 13
                    try:
                        bucket.drain("pending")
                    except TaskNotFound:
                        code = 14
                if code == 14 and len(bucket) == 0 and bucket.closed and bucket.stats().live == 0:
                    bucket.close()  # returns at once: nothing to join in the child
                    with TaskBucket(executor=lambda ctx, tid, d: "child") as fresh:
                        if fresh.fill(TaskType.IMMEDIATE, "c").result(10) == "child":
                            code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's bucket is untouched by the fork.
        assert bucket.get("pending") == pending
        assert bucket.fill(TaskType.IMMEDIATE, "after-fork").result(10) == "parent"
    finally:
        gate.set()
        bucket.close(wait=False)


EXIT_SCRIPTS = {
    "pending-timers": """
        b = TaskBucket(executor=lambda ctx, tid, d: None)
        for i in range(1000):
            b.fill(TaskType.TIME_BOMB, f"t{i}", run_after=3600, life_span=7200)
    """,
    "stuck-on-execute": """
        forever = threading.Event()
        b = TaskBucket(executor=lambda ctx, tid, d: forever.wait(), workers=2)
        for i in range(10):
            b.fill(TaskType.IMMEDIATE, f"t{i}")
        while b.stats().running < 2:
            time.sleep(0.01)
    """,
    "ctx-waiting": """
        b = TaskBucket(executor=lambda ctx, tid, d: ctx.wait(), workers=2)
        for i in range(4):
            b.fill(TaskType.IMMEDIATE, f"t{i}")
        while b.stats().running < 2:
            time.sleep(0.01)
    """,
    "async-pending": """
        import asyncio
        async def run(ctx, tid, d):
            await asyncio.sleep(3600)
        b = TaskBucket(executor=run)
        for i in range(10):
            b.fill(TaskType.IMMEDIATE, f"t{i}")
        while b.stats().running < 10:
            time.sleep(0.01)
    """,
    "sys-exit-in-with": """
        # Leaving the block waits like close(): until the stuck task's life
        # span ends (0.5 s), then abandons its thread.
        forever = threading.Event()
        with TaskBucket(executor=lambda ctx, tid, d: forever.wait(), life_span=0.5) as b:
            b.fill(TaskType.IMMEDIATE, "stuck")
            b.fill(TaskType.TIME_BOMB, "later", run_after=0.1)
            while b.stats().running < 1:
                time.sleep(0.01)
            sys.exit(0)
    """,
    "close-nowait-stuck": """
        forever = threading.Event()
        b = TaskBucket(executor=lambda ctx, tid, d: forever.wait(), workers=1)
        b.fill(TaskType.IMMEDIATE, "stuck")
        while b.stats().running < 1:
            time.sleep(0.01)
        b.close(wait=False)
    """,
    "exit-from-hook-thread": """
        def work(ctx, tid, d):
            sys.exit(3)  # SystemExit in a worker: the task fails, the process goes on
        b = TaskBucket(executor=work)
        h = b.fill(TaskType.IMMEDIATE, "x")
        assert h.wait(10).name == "FAILED"
    """,
}


@pytest.mark.slow
@pytest.mark.parametrize("script", list(EXIT_SCRIPTS))
def test_interpreter_exit_with_tasks_still_live_never_hangs(script: str) -> None:
    code = "import sys, threading, time\nfrom wheelbucket import TaskBucket, TaskType\n"
    code += textwrap.dedent(EXIT_SCRIPTS[script]) + "\nprint('main done', flush=True)\n"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    if script != "sys-exit-in-with":
        assert "main done" in proc.stdout
    assert took < 30
    assert "Traceback" not in proc.stderr

"""Hooks on the application's own event loop: ``TaskBucket(..., loop=...)`` (SPEC section 3).

Every async hook runs on the loop given, as one of its tasks; sync hooks stay
on the pool; drain, exhaustion, rescue and close cancel the coroutines for
real; ``aclose()`` never blocks the loop; a loop that is closed or stopped, or
a ``close()`` called on the loop's own thread, never hangs the bucket.

The application's loop is a real one, running forever on its own thread
(`AppLoop`), so that a test which would deadlock it fails on a timeout instead
of hanging the run. The end-to-end tests drive the two examples of the docs
(docs/examples/echo_idle.py and aiohttp_deadlines.py) with real clients over
real sockets on 127.0.0.1. Tests on the real clock are marked ``slow`` and
have generous bounds; the others use a `FakeClock` and wait only on events.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
from helpers import wait_until

from wheelbucket import (
    BucketClosed,
    Executor,
    TaskBucket,
    TaskContext,
    TaskHandle,
    TaskState,
    TaskType,
)
from wheelbucket.testing import FakeClock

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB
EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
T = TypeVar("T")

# A safety net against a hang, never a delay a test relies on.
SAFETY = 10.0


# -- the application's loop ------------------------------------------------------


class AppLoop:
    """An asyncio loop running forever on its own thread, as an application's does.

    `errors` collects what reached the loop's exception handler (a task that
    died with an unretrieved exception, a callback that raised...).
    """

    def __init__(self, name: str = "app-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.errors.append(context))
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        wait_until(self.loop.is_running, SAFETY, "the app loop runs")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = SAFETY) -> T:
        """Run `coro` on the loop and return its result, within `timeout` seconds.

        The outer bound holds even when the loop's thread is blocked (then the
        inner `asyncio.wait_for` cannot fire): the test fails, it does not hang.
        """
        future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self.loop)
        return future.result(timeout + SAFETY)

    def call(self, fn: Callable[[], T]) -> T:
        """Call `fn` on the loop's thread and return its result."""

        async def call() -> T:
            return fn()

        return self.run(call())

    def stop(self, *, close: bool = True) -> None:
        """Stop the loop (its thread ends); with `close`, cancel what is left and close it."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(SAFETY)
            if self.thread.is_alive():
                return  # blocked for good by the test that failed: abandon it
        if close:
            leftover = asyncio.all_tasks(self.loop)
            for task in leftover:
                task.cancel()
            if leftover:
                gather = asyncio.gather(*leftover, return_exceptions=True)
                self.loop.run_until_complete(gather)
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


def close_bounded(bucket: TaskBucket, **kwargs: Any) -> float:
    """``bucket.close(**kwargs)`` on a thread of its own; its duration, or fail after SAFETY.

    A close() that hangs fails the test, rather than the whole run.
    """
    started = time.monotonic()
    closer = threading.Thread(target=bucket.close, kwargs=kwargs, name="closer", daemon=True)
    closer.start()
    closer.join(SAFETY)
    if closer.is_alive():
        pytest.fail(f"close({kwargs}) did not return within {SAFETY} s")
    return time.monotonic() - started


@pytest.fixture
def app() -> Iterator[AppLoop]:
    app = AppLoop()
    yield app
    app.stop()
    assert app.errors == [], f"the app loop's exception handler got {app.errors}"


@pytest.fixture
def make_app_bucket(app: AppLoop) -> Iterator[Callable[..., TaskBucket]]:
    """``make(**kwargs)``: a `TaskBucket` with ``loop=app.loop``, closed before the loop stops."""
    made: list[TaskBucket] = []

    def make(**kwargs: Any) -> TaskBucket:
        kwargs.setdefault("loop", app.loop)
        kwargs.setdefault("name", "apptest")
        bucket = TaskBucket(**kwargs)
        made.append(bucket)
        return bucket

    yield make
    for bucket in made:
        close_bounded(bucket, wait=False)


# -- recording where hooks run ---------------------------------------------------


class Where(Executor):
    """Every hook async; records ``(hook, task_id, running loop, thread)``.

    `behaviours[task_id]` replaces what `on_execute` does for that task.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, asyncio.AbstractEventLoop, threading.Thread]] = []
        self.behaviours: dict[str, Callable[..., Coroutine[Any, Any, Any]]] = {}
        self._lock = threading.Lock()

    def record(self, hook: str, task_id: str) -> None:
        with self._lock:
            self.calls.append(
                (hook, task_id, asyncio.get_running_loop(), threading.current_thread())
            )

    def hooks(self, task_id: str) -> list[str]:
        with self._lock:
            return [hook for hook, tid, _, _ in self.calls if tid == task_id]

    def places(self) -> set[tuple[asyncio.AbstractEventLoop, threading.Thread]]:
        with self._lock:
            return {(loop, thread) for _, _, loop, thread in self.calls}

    async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        self.record("on_execute", task_id)
        behaviour = self.behaviours.get(task_id)
        return data if behaviour is None else await behaviour(ctx, task_id, data)

    async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self.record("on_finish", task_id)

    async def on_execute_error(
        self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
    ) -> None:
        self.record("on_execute_error", task_id)

    async def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        assert ctx.cancelled
        self.record("on_task_exhausted", task_id)

    async def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        await asyncio.sleep(0)  # a real suspension: whoever waits for it must wait past it
        await asyncio.sleep(0)
        self.record("on_panic", task_id)


class Hold:
    """An async `on_execute` behaviour that waits on an `asyncio.Event` the test opens.

    `cancelled` is set when the coroutine sees `CancelledError` (it lets it through).
    """

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    async def __call__(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        self.loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.started.set()
        try:
            await self._event.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "released"

    def wait_started(self) -> None:
        assert self.started.wait(SAFETY), "the coroutine never started"

    def release(self) -> None:
        assert self.loop is not None
        assert self._event is not None
        self.loop.call_soon_threadsafe(self._event.set)


def start_held(bucket: TaskBucket, where: Where, task_id: str, hold: Hold) -> TaskHandle:
    where.behaviours[task_id] = hold
    handle = bucket.fill(IMMEDIATE, task_id)
    hold.wait_started()
    assert handle.state is TaskState.RUNNING
    return handle


# -- where hooks run -------------------------------------------------------------


def test_async_hooks_run_on_the_given_loop_as_its_tasks_on_its_thread(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket]
) -> None:
    seen: dict[str, Any] = {}

    class Probe(Executor):
        async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> str:
            seen["on_execute"] = (
                asyncio.get_running_loop(),
                threading.current_thread(),
                asyncio.current_task(),
            )
            await asyncio.sleep(0)
            return "ok"

        async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            seen["on_finish"] = (asyncio.get_running_loop(), threading.current_thread())

    bucket = make_app_bucket(executor=Probe(), clock=FakeClock())
    handle = bucket.fill(IMMEDIATE, "t")
    assert handle.result(SAFETY) == "ok"
    loop, thread, task = seen["on_execute"]
    assert loop is app.loop
    assert thread is app.thread
    assert task is not None  # one of the loop's own tasks
    assert seen["on_finish"] == (app.loop, app.thread)


def test_async_ending_hooks_of_sync_and_async_tasks_run_on_the_given_loop(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket]
) -> None:
    where = Where()

    async def fail(ctx: TaskContext, task_id: str, data: Any) -> None:
        raise ValueError("boom")

    class SyncWork(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            pass

        async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            where.record("on_finish", task_id)

    where.behaviours["fails"] = fail
    bucket = make_app_bucket(executor=where, clock=FakeClock())
    handles = [
        bucket.fill(IMMEDIATE, "finishes"),
        bucket.fill(IMMEDIATE, "fails"),
        bucket.fill(IMMEDIATE, "sync", executor=SyncWork()),
    ]
    for handle in handles:
        assert handle.wait(SAFETY) is not None
    assert where.hooks("finishes") == ["on_execute", "on_finish"]
    assert where.hooks("fails") == ["on_execute", "on_execute_error"]
    assert where.hooks("sync") == ["on_finish"]
    assert where.places() == {(app.loop, app.thread)}


def test_sync_hooks_run_on_worker_threads_never_on_the_loop_thread(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket]
) -> None:
    threads: dict[str, threading.Thread] = {}

    class Sync(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> str:
            threads["on_execute"] = threading.current_thread()
            return "ok"

        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            threads["on_finish"] = threading.current_thread()

    bucket = make_app_bucket(executor=Sync(), clock=FakeClock())
    handle = bucket.fill(IMMEDIATE, "t")
    assert handle.result(SAFETY) == "ok"
    for hook, thread in threads.items():
        assert thread is not app.thread, hook
        assert thread is not threading.main_thread(), hook
        assert "-worker-" in thread.name, (hook, thread.name)


def test_a_coroutine_can_fill_drain_and_reset_and_await_the_handle_on_its_loop(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket]
) -> None:
    where = Where()
    bucket = make_app_bucket(executor=where, clock=FakeClock())

    async def scenario() -> tuple[Any, TaskState]:
        now = bucket.fill(IMMEDIATE, "now", 42)
        later = bucket.fill(TIME_BOMB, "later", run_after=5.0, life_span=10.0)
        assert bucket.reset("later") == later
        bucket.drain("later")
        return await now, later.state

    assert app.run(scenario()) == (42, TaskState.DRAINED)
    assert where.hooks("later") == []


# -- real cancellation -------------------------------------------------------------


@pytest.mark.parametrize("caller", ["another thread", "the loop"])
def test_drain_of_a_running_async_on_execute_cancels_the_coroutine(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket], caller: str
) -> None:
    where = Where()
    bucket = make_app_bucket(executor=where, clock=FakeClock())
    hold = Hold()
    handle = start_held(bucket, where, "t", hold)
    if caller == "the loop":
        app.call(lambda: bucket.drain("t"))
    else:
        bucket.drain("t")
    assert "t" not in bucket
    assert hold.cancelled.wait(SAFETY), "the coroutine never saw CancelledError"
    assert handle.wait(SAFETY) is TaskState.DRAINED
    assert where.hooks("t") == ["on_execute"]  # no hook for a drained task
    assert bucket.stats().drained == 1


def test_exhaustion_cancels_the_coroutine_and_runs_async_on_task_exhausted_on_the_loop(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket]
) -> None:
    clock = FakeClock()
    where = Where()
    bucket = make_app_bucket(executor=where, clock=clock, life_span=2.0)
    hold = Hold()
    handle = start_held(bucket, where, "t", hold)
    clock.advance(1.999)
    assert not hold.cancelled.wait(0.05)
    clock.advance(0.001)
    assert hold.cancelled.wait(SAFETY), "the coroutine never saw CancelledError"
    assert handle.wait(SAFETY) is TaskState.EXHAUSTED
    assert where.hooks("t") == ["on_execute", "on_task_exhausted"]
    assert where.places() == {(app.loop, app.thread)}
    stats = bucket.stats()
    assert (stats.exhausted, stats.live, stats.hook_errors) == (1, 0, 0)


def test_rescue_from_another_thread_runs_async_on_panic_on_the_loop_and_waits_for_it(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket]
) -> None:
    where = Where()
    bucket = make_app_bucket(executor=where, clock=FakeClock())
    hold = Hold()
    running = start_held(bucket, where, "running", hold)
    waiting = bucket.fill(TIME_BOMB, "waiting", run_after=5.0, life_span=10.0)
    assert bucket.rescue() == ["running", "waiting"]
    # Every on_panic has returned, past its two suspensions on the app loop.
    assert where.hooks("running") == ["on_execute", "on_panic"]
    assert where.hooks("waiting") == ["on_panic"]
    assert where.places() == {(app.loop, app.thread)}
    assert running.state is TaskState.RESCUED
    assert waiting.state is TaskState.RESCUED
    assert hold.cancelled.wait(SAFETY)
    assert not bucket.closed


# -- aclose and async with -------------------------------------------------------


@pytest.mark.slow
def test_aclose_waits_for_a_running_hook_on_the_same_loop_without_blocking_it(
    app: AppLoop,
) -> None:
    async def scenario() -> tuple[TaskState, Any, int, int, list[str]]:
        ticks = 0
        release = asyncio.Event()
        started = asyncio.Event()
        ended: list[str] = []

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 5:
                    release.set()
                await asyncio.sleep(0.01)

        class Work(Executor):
            async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> str:
                started.set()
                await release.wait()  # only another coroutine making progress ends this
                return "done"

            async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
                await asyncio.sleep(0)
                ended.append(task_id)

        bucket = TaskBucket(executor=Work(), loop=asyncio.get_running_loop(), life_span=30.0)
        handle = bucket.fill(IMMEDIATE, "t")
        await started.wait()
        tick_task = asyncio.create_task(ticker())
        ticks_before = ticks
        await bucket.aclose()
        tick_task.cancel()
        return handle.state, handle.result(0), ticks_before, ticks, ended

    state, result, before, after, ended = app.run(scenario(), timeout=SAFETY)
    assert (state, result) == (TaskState.FINISHED, "done")
    assert ended == ["t"]  # its ending hook ran before aclose() returned
    assert before == 0
    assert after >= 5  # the loop went on running while aclose() waited


@pytest.mark.slow
def test_async_with_yields_the_bucket_and_acloses_it_on_the_way_out(app: AppLoop) -> None:
    async def work(ctx: TaskContext, task_id: str, data: Any) -> Any:
        await asyncio.sleep(0.01)
        return data

    async def scenario() -> tuple[TaskBucket, TaskHandle, TaskHandle]:
        loop = asyncio.get_running_loop()
        async with TaskBucket(executor=work, loop=loop, life_span=30.0) as bucket:
            assert isinstance(bucket, TaskBucket)
            now = bucket.fill(IMMEDIATE, "now", 1)
            later = bucket.fill(TIME_BOMB, "later", 2, run_after=0.1)
        return bucket, now, later

    bucket, now, later = app.run(scenario())
    assert bucket.closed
    assert (now.state, later.state) == (TaskState.FINISHED, TaskState.FINISHED)  # waited for
    assert (now.result(0), later.result(0)) == (1, 2)
    with pytest.raises(BucketClosed):
        bucket.fill(IMMEDIATE, "too-late")


@pytest.mark.parametrize("rescue", [False, True])
def test_aclose_without_wait_cancels_a_running_coroutine_and_rescue_runs_on_panic_there(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket], rescue: bool
) -> None:
    where = Where()
    bucket = make_app_bucket(executor=where, clock=FakeClock())
    hold = Hold()
    handle = start_held(bucket, where, "t", hold)
    app.run(bucket.aclose(wait=False, rescue=rescue))
    assert bucket.closed
    assert hold.cancelled.is_set()  # aclose() returned after the coroutine was cancelled
    if rescue:
        assert handle.state is TaskState.RESCUED
        assert where.hooks("t") == ["on_execute", "on_panic"]
        assert where.places() == {(app.loop, app.thread)}
    else:
        assert handle.state is TaskState.DRAINED
        assert where.hooks("t") == ["on_execute"]
    assert handle.done()


# -- a loop that is closed, stopped, busy, or calls close() itself -----------------


def says_why(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    """A wheelbucket log record (its message, with its traceback) holds every one of `words`."""
    formatter = logging.Formatter()
    for record in caplog.records:
        if record.name.split(".")[0] != "wheelbucket":
            continue
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + formatter.formatException(record.exc_info)
        if all(word in text for word in words):
            return True
    return False


@pytest.mark.parametrize("how", ["closed", "stopped"])
def test_on_execute_due_while_the_loop_is_down_ends_failed_and_close_returns(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = AppLoop(name="doomed-loop")
    clock = FakeClock()
    ran: list[str] = []
    errors: list[BaseException] = []

    class Work(Executor):
        async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            ran.append(task_id)

        def on_execute_error(
            self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
        ) -> None:
            errors.append(error)

    bucket = TaskBucket(executor=Work(), loop=app.loop, clock=clock, life_span=10.0)
    try:
        handle = bucket.fill(TIME_BOMB, "t", run_after=1.0)
        app.stop(close=how == "closed")
        assert not app.loop.is_running()
        with caplog.at_level(logging.WARNING, logger="wheelbucket"):
            clock.advance(1.0)
            assert handle.wait(SAFETY) is TaskState.FAILED
            failure: BaseException | None = None
            try:
                handle.result(0)
            except Exception as error:  # whatever says the loop was down
                failure = error
            else:
                pytest.fail("result() of a FAILED task returned")
        assert ran == []
        assert errors == [failure]  # exactly one ending hook: on_execute_error
        assert says_why(caplog, "'t'", "loop"), "no log line says why task 't' failed"
        assert bucket.stats().failed == 1
        if how == "stopped":
            # The loop runs again: the task has ended, so its on_execute never starts.
            app.loop.run_until_complete(asyncio.sleep(0.05))
            assert ran == []
    finally:
        close_bounded(bucket)
        app.stop()
    assert ran == []
    assert app.errors == []


def test_an_async_ending_hook_due_while_the_loop_is_closed_counts_a_hook_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = AppLoop(name="doomed-loop")
    clock = FakeClock()

    class SyncWorkAsyncEnd(Executor):
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> str:
            return "ok"

        async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            raise AssertionError("never runs: its loop is closed")

    bucket = TaskBucket(executor=SyncWorkAsyncEnd(), loop=app.loop, clock=clock, life_span=10.0)
    try:
        handle = bucket.fill(TIME_BOMB, "t", run_after=1.0)
        app.stop()
        with caplog.at_level(logging.WARNING, logger="wheelbucket"):
            clock.advance(1.0)
            assert handle.wait(SAFETY) is TaskState.FINISHED  # done, though its hook could not run
        assert handle.result(0) == "ok"
        assert bucket.stats().hook_errors == 1
        assert says_why(caplog, "'t'", "loop"), "no log line says why the hook did not run"
    finally:
        close_bounded(bucket)
        app.stop()


@pytest.mark.parametrize("wait", [True, False])
def test_close_returns_when_the_loop_stopped_under_a_running_coroutine(wait: bool) -> None:
    app = AppLoop(name="doomed-loop")
    where = Where()
    bucket = TaskBucket(executor=where, loop=app.loop, clock=FakeClock())
    try:
        hold = Hold()
        handle = start_held(bucket, where, "t", hold)
        app.stop(close=False)  # the coroutine is suspended on a loop that no longer runs
        # Even with wait=True: on a stopped loop the task can never end naturally.
        close_bounded(bucket, wait=wait)
        assert handle.done()
        assert handle.state is TaskState.DRAINED
    finally:
        close_bounded(bucket)
        app.stop()


def test_close_on_the_loop_thread_returns_and_drains_the_async_tasks_it_cannot_wait_for(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket]
) -> None:
    where = Where()
    bucket = make_app_bucket(executor=where, clock=FakeClock())
    hold = Hold()
    handle = start_held(bucket, where, "t", hold)

    def close_here() -> float:
        started = time.monotonic()
        bucket.close()  # a blocking call on the loop's own thread
        return time.monotonic() - started

    assert app.call(close_here) < SAFETY / 2  # returned (app.call fails rather than hang)
    assert bucket.closed
    # Once the loop runs again, the coroutine is cancelled for real.
    assert hold.cancelled.wait(SAFETY)
    assert handle.wait(SAFETY) is TaskState.DRAINED
    assert where.hooks("t") == ["on_execute"]


def test_rescue_on_the_loop_thread_returns_at_once_and_on_panic_runs_after(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket]
) -> None:
    where = Where()
    bucket = make_app_bucket(executor=where, clock=FakeClock())
    hold = Hold()
    running = start_held(bucket, where, "running", hold)
    waiting = bucket.fill(TIME_BOMB, "waiting", run_after=5.0, life_span=10.0)

    def rescue_here() -> list[str]:
        return bucket.rescue()  # cannot wait for on_panic coroutines on its own loop

    assert app.call(rescue_here) == ["running", "waiting"]
    assert running.wait(SAFETY) is TaskState.RESCUED
    assert waiting.wait(SAFETY) is TaskState.RESCUED
    assert where.hooks("running") == ["on_execute", "on_panic"]
    assert where.hooks("waiting") == ["on_panic"]
    assert where.places() == {(app.loop, app.thread)}
    assert hold.cancelled.is_set()
    assert not bucket.closed


@pytest.mark.slow
def test_a_coroutine_due_while_the_loop_is_busy_starts_late_never_early_and_stats_say_so(
    app: AppLoop, make_app_bucket: Callable[..., TaskBucket]
) -> None:
    starts: dict[str, float] = {}

    async def work(ctx: TaskContext, task_id: str, data: Any) -> None:
        starts[task_id] = time.monotonic()

    bucket = make_app_bucket(executor=work, life_span=30.0)
    blocked = threading.Event()

    def block_the_loop() -> None:
        blocked.set()
        time.sleep(0.5)  # sync code on the app's loop: nothing else runs there meanwhile

    due = time.monotonic() + 0.1
    handle = bucket.fill(TIME_BOMB, "t", run_after=0.1)
    app.loop.call_soon_threadsafe(block_the_loop)
    assert blocked.wait(SAFETY)
    assert handle.wait(SAFETY) is TaskState.FINISHED
    assert starts["t"] >= due  # never early
    stats = bucket.stats()
    assert stats.loop_lateness_max >= 0.2  # it waited for the loop, and stats show it
    assert stats.loop_lateness_p99 <= stats.loop_lateness_max + 1e-9
    assert stats.loop_lateness_max <= starts["t"] - due + 0.05


def test_loop_must_be_an_event_loop() -> None:
    with pytest.raises(TypeError, match="loop"):
        TaskBucket(loop="the main loop")  # type: ignore[arg-type]


# -- the docs' examples, end to end over loopback ----------------------------------


@functools.cache
def example(name: str) -> ModuleType:
    """Import docs/examples/NAME.py (it runs nothing on import)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_app(coro: Coroutine[Any, Any, T], timeout: float) -> tuple[T, list[dict[str, Any]]]:
    """Run `coro` as an application's main, bounded; also return the loop's errors."""
    errors: list[dict[str, Any]] = []

    async def main() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main()), errors


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name} {r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING
        and r.name.split(".")[0] in ("asyncio", "aiohttp", "wheelbucket")
    ]


@pytest.mark.slow
def test_echo_server_closes_idle_connections_on_time_and_keeps_active_ones_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    echo = example("echo_idle")
    idle_timeout = 0.5
    duration = 1.5  # how long the active clients keep talking
    margin = 2.5  # generous: 2 shared cores

    async def active(port: int, i: int) -> tuple[int, float, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        opened = time.monotonic()
        sent = 0
        while time.monotonic() - opened < duration:
            line = f"client {i} line {sent}\n".encode()
            writer.write(line)
            echoed = await asyncio.wait_for(reader.readline(), idle_timeout + margin)
            assert echoed == line, f"active client {i} got {echoed!r}"  # not the farewell
            sent += 1
            await asyncio.sleep(0.05)
        still_open = not reader.at_eof()
        writer.close()
        await writer.wait_closed()
        return sent, time.monotonic() - opened, still_open

    async def idle(port: int) -> tuple[bytes, bytes, float]:
        connecting = time.monotonic()  # the server's timer starts after this
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        farewell = await asyncio.wait_for(reader.readline(), idle_timeout + margin)
        closed_after = time.monotonic() - connecting
        rest = await asyncio.wait_for(reader.read(), margin)
        writer.close()
        return farewell, rest, closed_after

    async def scenario() -> tuple[list[Any], list[Any], int, Any]:
        async with echo.echo_server(idle_timeout=idle_timeout) as server:
            results = await asyncio.gather(
                asyncio.gather(*(active(server.port, i) for i in range(25))),
                asyncio.gather(*(idle(server.port) for _ in range(25))),
            )
        return results[0], results[1], server.closed_idle, server.bucket.stats()

    with caplog.at_level(logging.WARNING):
        (actives, idles, closed_idle, stats), loop_errors = run_app(scenario(), timeout=30.0)

    for farewell, rest, closed_after in idles:
        assert farewell == echo.BYE  # the hook closed it, nothing else
        assert rest == b""
        assert idle_timeout <= closed_after <= idle_timeout + margin
    for sent, open_for, still_open in actives:
        assert open_for >= duration
        assert still_open
        assert sent >= 5
    assert closed_idle == 25
    assert stats.reset == sum(sent for sent, _, _ in actives)
    assert (stats.finished, stats.drained, stats.live) == (25, 25, 0)
    assert (stats.failed, stats.exhausted, stats.hook_errors) == (0, 0, 0)
    assert loop_errors == []
    assert no_errors_logged(caplog) == []


@pytest.mark.slow
def test_aiohttp_a_slow_request_meets_its_deadline_while_a_fast_one_gets_its_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    demo = example("aiohttp_deadlines")
    deadline = 0.3
    margin = 3.0

    async def scenario() -> tuple[list[tuple[int, str, float]], list[str], Any]:
        app = demo.make_app(request_deadline=deadline, session_idle=60.0)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        jar = aiohttp.CookieJar(unsafe=True)
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", cookie_jar=jar) as client:

                async def get(path: str) -> tuple[int, str, float]:
                    started = time.monotonic()
                    async with client.get(path) as response:
                        text = await response.text()
                    return response.status, text, time.monotonic() - started

                replies = await asyncio.gather(
                    get("/slow?seconds=30"), get("/slow?seconds=0.01"), get("/report?seconds=0.6")
                )
            return list(replies), list(app[demo.EVENTS]), app[demo.BUCKET].stats()
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.WARNING):
        (replies, events, stats), loop_errors = run_app(scenario(), timeout=30.0)
    (slow, slow_text, slow_took), (fast, fast_text, fast_took), (report, report_text, _) = replies
    assert (slow, slow_text) == (504, f"deadline of {deadline} s exceeded")
    assert deadline <= slow_took <= deadline + margin
    assert (fast, fast_text) == (200, "slept 0.01 s")
    assert fast_took < deadline + margin
    assert (report, report_text) == (200, "report ready")  # its own deadline is 30 s
    assert sorted(events) == [
        "/slow?seconds=30: handler cancelled",  # cancelled for real
        "GET /slow?seconds=30: deadline exceeded",
    ]
    assert (stats.exhausted, stats.failed, stats.hook_errors) == (1, 0, 0)
    assert loop_errors == []
    assert no_errors_logged(caplog) == []


@pytest.mark.slow
def test_aiohttp_a_session_expires_after_its_idle_time_and_requests_keep_it_alive() -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    demo = example("aiohttp_deadlines")
    session_idle = 0.5
    margin = 3.0

    async def scenario() -> dict[str, Any]:
        app = demo.make_app(request_deadline=5.0, session_idle=session_idle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        jar = aiohttp.CookieJar(unsafe=True)
        seen: dict[str, Any] = {}
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", cookie_jar=jar) as client:

                async def hello() -> str:
                    async with client.get("/hello") as response:
                        assert response.status == 200
                        text: str = await response.text()
                        return text

                seen["first"] = await hello()
                kept = []
                started = time.monotonic()
                while time.monotonic() - started < 3 * session_idle:  # each resets the idle time
                    await asyncio.sleep(0.1)
                    kept.append(await hello())
                # A request longer than the idle time: the session does not expire under it.
                async with client.get(f"/report?seconds={2 * session_idle}") as response:
                    assert response.status == 200
                last_sent = time.monotonic()
                seen["after_long_request"] = await hello()
                seen["kept"] = kept
                seen["visits"] = len(kept) + 3
                sessions = app[demo.SESSIONS]
                while sessions and time.monotonic() - last_sent < session_idle + margin:
                    await asyncio.sleep(0.01)
                seen["expired_after"] = time.monotonic() - last_sent
                seen["sessions_left"] = len(sessions)
                seen["events"] = list(app[demo.EVENTS])
                seen["new"] = await hello()
        finally:
            await runner.cleanup()
        return seen

    seen, loop_errors = run_app(scenario(), timeout=30.0)
    assert seen["first"] == "hello, visit 1 of session 1"
    assert seen["kept"] == [
        f"hello, visit {n} of session 1" for n in range(2, len(seen["kept"]) + 2)
    ]
    visits = seen["visits"]
    assert seen["after_long_request"] == f"hello, visit {visits} of session 1"
    assert seen["sessions_left"] == 0
    assert session_idle <= seen["expired_after"] <= session_idle + margin
    assert seen["events"] == [f"session 1 expired after {visits} visits"]
    assert seen["new"] == "hello, visit 1 of session 2"
    assert loop_errors == []

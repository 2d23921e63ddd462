"""The one place user code is called: on_execute, ending hooks, done callbacks.

Every call into user code is made by a method of `Calls`, under one policy:

* ``on_execute``: what it returns or raises (anything, ``BaseException``
  included) is the task's outcome.
* every other hook, sync or ``async def``, and every done callback: what it
  raises (``BaseException`` included: a ``KeyboardInterrupt`` from user code
  must not kill a worker) is logged with its traceback and counted in
  `Calls.errors`, and nothing else happens; a coroutine's
  ``GeneratorExit`` is let through, since that is its loop closing it.

`Calls.ending` is the one function that decides where an ending's hook
runs: on this thread when the caller may run user code here, on the event
loop for an ``async def`` hook, and otherwise on a pool thread that the pool
provides at once (`WorkerPool.submit_hook`), so an ending never waits behind
live tasks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from ._aio import AsyncRunner
from ._log import logger, safe_repr
from .clock import Clock
from .lifecycle import Ending, Lifecycle
from .pool import Worker, WorkerPool
from .task import (
    DRAINED,
    EXHAUSTED,
    HOOK_PENDING,
    RESCUED,
    RUNNING,
    Task,
    TaskContext,
    TaskHandle,
)

__all__ = ["Calls"]

# The hook each ending runs (FINISHED and FAILED run theirs in the run path).
_HOOK_OF = {EXHAUSTED: "on_task_exhausted", RESCUED: "on_panic", DRAINED: None}


class Calls:
    """Runs a bucket's user code, contains what it raises, and counts it."""

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        pool: WorkerPool,
        runner: Callable[[], AsyncRunner],
        clock: Clock,
        log_level: int,
    ) -> None:
        self.life = lifecycle
        self.pool = pool
        # The event loop for async hooks, made on first use.
        self.runner = runner
        self.clock = clock
        self.log_level = log_level
        # Invariant: errors counts every hook or callback that raised; it
        #   changes under _errors_lock (hooks fail on any thread).
        self.errors = 0
        self._errors_lock = threading.Lock()
        # What a waiter on a done task gets: already released, so a callback
        # added later runs at once and is counted.
        lifecycle.book.done_waiters.runner = self.callback

    # -- the policy -----------------------------------------------------------

    def failed(self, name: str, task_id: str, exc: BaseException) -> None:
        """A hook or callback raised `exc`: log it with its traceback, count it."""
        with self._errors_lock:
            self.errors += 1
        logger.error(
            "hook %s of task %s raised %s",
            name,
            safe_repr(task_id),
            type(exc).__name__,
            exc_info=exc,
        )

    def callback(self, fn: Callable[[TaskHandle], object], task: TaskHandle) -> None:
        """Call one done callback."""
        try:
            fn(task)
        except BaseException as exc:
            self.failed("done callback", task.id, exc)

    def done(self, task: Task) -> None:
        """The ending hook is through: the handle is done; run its callbacks."""
        task._state &= ~HOOK_PENDING
        waiters = self.life.book.complete(task)
        if waiters is not None:
            self._release(waiters)

    def _release(self, waiters: Any) -> None:
        waiters.runner = self.callback
        handle = waiters.handle
        # The handle holds its waiters: let go of the handle, so that the
        # pair is no cycle and the last handle's __del__ runs when it goes.
        waiters.handle = None
        for fn in waiters.release():
            self.callback(fn, handle)

    def hook(
        self,
        name: str,
        hook: Callable[..., Any] | None,
        task_id: str,
        *args: Any,
        then: Task | None = None,
        wait: bool = False,
    ) -> None:
        """Call an ending hook; contain what it raises; then complete `then`.

        The one place sync ending hooks run. An ``async def`` hook's coroutine
        goes to the event loop, which completes `then` once it is through;
        the caller waits for that only with `wait` (rescue() does).
        """
        if hook is not None:
            try:
                result = hook(*args)
                if result is not None and inspect.iscoroutine(result):
                    self.run_coroutine(result, name, task_id, then, wait=wait)
                    return
            except BaseException as exc:
                self.failed(name, task_id, exc)
        if then is not None:
            self.done(then)

    def run_coroutine(
        self,
        coro: Coroutine[Any, Any, Any],
        name: str,
        task_id: str,
        then: Task | None,
        *,
        wait: bool,
    ) -> None:
        """Run a hook's coroutine on the loop (see `guard`); never raises."""
        runner = self.runner()
        future: concurrent.futures.Future[None] | None = None
        if wait and not runner.on_loop():
            future = concurrent.futures.Future()
        guard = self.guard
        given_up: list[bool] = []

        def not_run(why: str) -> None:
            if not given_up:  # once, whoever finds out first
                given_up.append(True)
                self._not_run(coro, name, task_id, then, why)

        if not runner.spawn(
            lambda: guard(coro, name, task_id, then, future),
            f"{name}:{task_id}",
            lambda: not_run("the event loop stopped before it ran"),
        ):
            not_run("the event loop is closed or stopped")
            return
        if future is not None:
            runner.wait_for(future)
            if not future.done() or future.cancelled():
                not_run("the event loop stopped")

    async def guard(
        self,
        coro: Coroutine[Any, Any, Any],
        name: str,
        task_id: str,
        then: Task | None,
        future: concurrent.futures.Future[None] | None,
    ) -> None:
        """Await one hook coroutine; contain what it raises; complete `then`."""
        try:
            await coro
        except GeneratorExit:
            raise
        except BaseException as exc:  # CancelledError (close() after its grace) included
            self.failed(name, task_id, exc)
        finally:
            if then is not None:
                self.done(then)
            if future is not None:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_result(None)

    def _not_run(
        self,
        coro: Coroutine[Any, Any, Any],
        name: str,
        task_id: str,
        then: Task | None,
        why: str,
    ) -> None:
        with contextlib.suppress(Exception):  # never started, or stranded on a dead loop
            coro.close()
        self.failed(name, task_id, RuntimeError(f"hook {name} not run: {why}"))
        if then is not None and then._state & HOOK_PENDING:
            self.done(then)

    # -- endings --------------------------------------------------------------

    def ending(self, e: Ending, *, here: bool, wait: bool = False) -> None:
        """Run the hook of ending `e` where it belongs, then complete its task.

        The one place where an ending's hook is placed. `here`: the calling
        thread may run sync user code (a worker, or a caller of rescue() or
        drain()); the scheduler thread and the event loop may not. `wait`:
        return only once an async hook is through too (rescue()).
        """
        task = e.task
        self._stop_running(e)
        state = task._state & ~HOOK_PENDING
        level = self.log_level
        if logger.isEnabledFor(level):
            logger.log(level, "task %s %s", safe_repr(task.id), task.state.value)
        name = _HOOK_OF.get(state) or ""
        hook = getattr(e.plan, name) if name and e.plan is not None else None
        if hook is None:
            if here or not self.life.book.watched:
                self.done(task)  # no user code to run but the callbacks, if any
                return
            job: Callable[[], None] = lambda: self.done(task)  # noqa: E731
        else:
            ctx = e.ctx if e.ctx is not None else self._dead_ctx(task)
            data = e.data

            def job() -> None:
                self.hook(name, hook, task.id, ctx, task.id, data, then=task, wait=wait)

            if name in e.plan.async_hooks:
                if here:
                    job()  # makes the coroutine and hands it to the loop
                else:
                    self.runner().call(job)
                return
        if here:
            job()
        else:
            self.pool.submit_hook(job)

    def drained(self, task_id: str, token: int) -> None:
        """A pending task was drained (`Lifecycle.drain`): no hook; complete it here."""
        level = self.log_level
        if logger.isEnabledFor(level):
            logger.log(level, "task %s drained", safe_repr(task_id))
        waiters = self.life.book.unwatch(token)
        if waiters is not None:
            self._release(waiters)

    def _stop_running(self, e: Ending) -> None:
        """A task ended under the thread (or coroutine) running it: stop that."""
        ctx = e.ctx
        if e.was != RUNNING or ctx is None:
            return
        ctx._cancel()
        if ctx.worker is not None:
            self.pool.replace()
        elif ctx._aio_task is not None:
            self.runner().cancel(ctx)

    def _dead_ctx(self, task: Task) -> TaskContext:
        """A ctx for the hook of a task that never ran: already cancelled."""
        ctx = TaskContext(task.id, task._deadline / 1e9, self.clock)
        ctx._cancelled = True
        return ctx

    # -- the run path -----------------------------------------------------------

    def execute(self, task: Task, worker: Worker | None) -> None:
        """Run `task` on this worker thread: on_execute, then its ending hook."""
        ctx = TaskContext(task.id, task._deadline / 1e9, self.clock, worker)
        life = self.life
        plan = task._plan
        data = task._data
        begun = life.begin(task, ctx)
        if begun is not True:
            if begun is not False:
                self.ending(begun, here=True)  # its life span ended while it queued
            return
        task_id = task.id
        level = self.log_level
        if logger.isEnabledFor(level):
            logger.log(level, "task %s executing", safe_repr(task_id))
        on_execute = plan.on_execute
        failed = False
        try:
            result = on_execute(ctx, task_id, data) if on_execute is not None else None
        except BaseException as exc:
            result = exc
            failed = True
        if not life.finish(task, result, failed):
            return  # ended under us: the ender ran (or runs) its hook
        if logger.isEnabledFor(level):
            logger.log(level, "task %s %s", safe_repr(task_id), "failed" if failed else "finished")
        if failed:
            hook = plan.on_execute_error
            self.hook("on_execute_error", hook, task_id, ctx, task_id, data, result, then=task)
        else:
            self.hook("on_finish", plan.on_finish, task_id, ctx, task_id, data, then=task)

    async def aexecute(self, task: Task, cancel_sent: set[asyncio.Task[Any]]) -> None:
        """Run one async on_execute on the loop, then its ending hook: `execute` for coroutines.

        `cancel_sent` holds the asyncio tasks the runner cancelled, so that a
        coroutine that swallowed its cancellation is told apart.
        """
        me = asyncio.current_task()
        ctx = TaskContext(task.id, task._deadline / 1e9, self.clock)
        ctx._aio_task = me
        plan = task._plan
        data = task._data
        begun = self.life.begin(task, ctx)
        if begun is not True:
            if begun is not False:
                self.ending(begun, here=False)
            return
        task_id = task.id
        level = self.log_level
        if logger.isEnabledFor(level):
            logger.log(level, "task %s executing", safe_repr(task_id))
        failed = False
        try:
            result: Any = await plan.on_execute(ctx, task_id, data)
        except GeneratorExit:
            raise
        except BaseException as exc:
            result = exc
            failed = True
        if not self.life.finish(task, result, failed):
            self._ended_under(task, me is not None and me in cancel_sent, result, failed)
            return
        if logger.isEnabledFor(level):
            logger.log(level, "task %s %s", safe_repr(task_id), "failed" if failed else "finished")
        name = "on_execute_error" if failed else "on_finish"
        hook = getattr(plan, name)
        args = (ctx, task_id, data, result) if failed else (ctx, task_id, data)
        if hook is None:
            self.done(task)
        elif name in plan.async_hooks:
            try:
                await hook(*args)
            except GeneratorExit:
                raise
            except BaseException as exc:
                self.failed(name, task_id, exc)
            finally:
                self.done(task)
        else:
            # Sync user code never runs on the loop.
            self.pool.submit_hook(lambda: self.hook(name, hook, task_id, *args, then=task))

    def fail_unrun(self, task: Task, why: str) -> None:
        """An async on_execute whose loop cannot run it: the task ends FAILED, saying why."""
        ctx = TaskContext(task.id, task._deadline / 1e9, self.clock)
        plan = task._plan
        data = task._data
        begun = self.life.begin(task, ctx)
        if begun is not True:
            if begun is not False:
                self.ending(begun, here=False)
            return
        error = RuntimeError(f"on_execute of task {task.id!r} not run: {why}")
        logger.error("task %s failed: on_execute not run: %s", safe_repr(task.id), why)
        if not self.life.finish(task, error, True):
            return
        hook = plan.on_execute_error
        if hook is None:
            self.done(task)
        elif "on_execute_error" in plan.async_hooks:
            self.failed("on_execute_error", task.id, RuntimeError(f"hook not run: {why}"))
            self.done(task)
        else:
            args = (ctx, task.id, data, error)
            self.pool.submit_hook(
                lambda: self.hook("on_execute_error", hook, task.id, *args, then=task)
            )

    def _ended_under(self, task: Task, cancelled: bool, result: Any, failed: bool) -> None:
        """on_execute came back after its task ended: say how, keep the ending."""
        ending = task.state.value
        if cancelled:
            if failed and isinstance(result, asyncio.CancelledError):
                return  # the normal case: it saw the cancellation and let it through
            outcome = f"raised {type(result).__name__}" if failed else "returned"
            logger.warning(
                "task %s: on_execute swallowed CancelledError and %s; the task stays %s "
                "and that outcome is ignored",
                safe_repr(task.id),
                outcome,
                ending,
            )
        elif logger.isEnabledFor(self.log_level):
            # It ended before the cancellation reached it: nothing to see.
            logger.log(
                self.log_level,
                "task %s: on_execute ended after the task was %s; outcome ignored",
                safe_repr(task.id),
                ending,
            )

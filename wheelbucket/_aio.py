"""The bucket's event loop: where ``async def`` hooks run, and really get cancelled.

One daemon thread per bucket runs an asyncio loop (uvloop's with
``use_uvloop=True``). It starts when the first async hook is needed and
``close()`` stops it.

Where hooks run
---------------
* An async ``on_execute`` runs as an `asyncio.Task` on this loop. Draining,
  exhausting or rescuing it calls ``Task.cancel()``, so the coroutine sees
  `asyncio.CancelledError` at its next ``await``: the one thing a thread pool
  cannot do.
* Every async hook (an ending hook of an async or a sync task alike) runs on
  this loop. Every sync hook runs on a pool thread, never on the loop, so a
  slow sync hook cannot stall the coroutines and a stuck coroutine cannot
  starve the pool. ``on_panic`` is the exception SPEC makes: it runs on the
  thread that calls ``rescue()``, and that thread waits for an async one,
  unless it *is* the loop thread, which cannot wait for itself.

What the runner owes the bucket is counted in `AsyncRunner.inflight`, so
that `wheelbucket.testing.settle` knows when the loop has nothing left to do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ._log import logger, safe_repr
from .task import FAILED, FINISHED, QUEUED, RUNNING, TaskContext, TaskHandle

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["AsyncRunner", "require_uvloop", "runner_for"]

# Makes a bucket's runner exactly once, without holding the bucket's own lock
# while a thread starts.
_CREATE_LOCK = threading.Lock()


def runner_for(core: Scheduler) -> AsyncRunner:
    """The bucket's runner; made, and its thread started, on first use."""
    runner: AsyncRunner | None = core.aio
    if runner is None:
        with _CREATE_LOCK:
            runner = core.aio
            if runner is None:
                runner = core.aio = AsyncRunner(core, use_uvloop=core.use_uvloop)
    return runner


def require_uvloop() -> None:
    """Raise ImportError unless uvloop can be imported (``use_uvloop=True``)."""
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "use_uvloop=True needs uvloop: pip install 'wheelbucket[uvloop]'"
        ) from exc


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


class AsyncRunner:
    """An asyncio loop on its own daemon thread, owned by one bucket.

    Methods without a leading underscore may be called from any thread; the
    underscored ones run on the loop.
    """

    def __init__(self, core: Scheduler, *, use_uvloop: bool = False) -> None:
        self.core = core
        self.loop = _new_loop(use_uvloop)
        # Invariant: inflight counts what the loop owes the bucket: on_execute
        #   runs submitted and not yet through their ending hook, and hook
        #   coroutines or jobs handed over without a caller waiting for them.
        #   It changes under _count_lock; settle() reads it without.
        self.inflight = 0
        self._count_lock = threading.Lock()
        # Tasks handed over by other threads, started in batches by _pump:
        # one loop wake-up per batch, not per task. deque.append and popleft
        # are atomic across threads (documented), so no lock.
        self._incoming: deque[TaskHandle] = deque()
        # Invariant: True from when a producer schedules _pump until that
        # _pump begins; a producer that sees True knows its task will be taken.
        self._pump_scheduled = False
        # asyncio tasks that got our cancel before their on_execute ended
        # (loop thread only): told apart from those that beat the cancel.
        self._cancel_sent: set[asyncio.Task[Any]] = set()
        # Callers blocked in run_hook(wait=True); released if the loop dies first.
        self._waiting: set[concurrent.futures.Future[None]] = set()
        self._waiting_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"{core.name}-asyncio", daemon=True)
        # call_soon_threadsafe works before run_forever starts, so nobody
        # waits for the thread to be up.
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()
            with self._waiting_lock:
                waiting, self._waiting = self._waiting, set()
            for future in waiting:
                future.cancel()

    # -- any thread ---------------------------------------------------------

    def submit(self, task: TaskHandle) -> None:
        """Start `task`'s async on_execute on the loop. Never blocks."""
        self._add(1)
        self._incoming.append(task)
        if not self._pump_scheduled:
            self._pump_scheduled = True
            if not self._call_soon(self._pump):
                # The loop is closed: close() drained every live task before
                # stopping it, so whatever is left here has ended already.
                self._add(-len(self._incoming))
                self._incoming.clear()

    def cancel(self, ctx: TaskContext) -> None:
        """Cancel the asyncio task running `ctx`'s on_execute, for real."""
        aio_task = ctx._aio_task
        if aio_task is None:
            return
        if threading.current_thread() is self.thread:
            self._cancel_now(aio_task)
        else:
            self._call_soon(self._cancel_now, aio_task)

    def call(self, job: Callable[[], None]) -> None:
        """Run `job` on the loop thread: a job that starts async hooks."""
        self._add(1)
        if not self._call_soon(self._run_job, job):
            self._add(-1)
            job()  # it finds the loop closed, logs, and completes its task

    def run_hook(
        self,
        coro: Coroutine[Any, Any, Any],
        name: str,
        task_id: str,
        then: TaskHandle | None,
        *,
        wait: bool,
    ) -> None:
        """Run an async ending hook on the loop, then complete `then` (if any).

        With `wait` the caller blocks until the hook is through (rescue()
        promises that), unless the caller is the loop thread: it cannot wait
        for itself, so there the hook runs as a task and `then` completes
        when it is through. Never raises.
        """
        on_loop = threading.current_thread() is self.thread
        if wait and not on_loop:
            future: concurrent.futures.Future[None] = concurrent.futures.Future()
            with self._waiting_lock:
                self._waiting.add(future)
            if not self._call_soon(self._start_hook, coro, name, task_id, then, future):
                self._hook_not_run(coro, name, task_id, then)
                return
            try:
                future.result()
            except concurrent.futures.CancelledError:
                # The loop stopped before the hook ran to its end.
                self._hook_not_run(coro, name, task_id, then)
            finally:
                with self._waiting_lock:
                    self._waiting.discard(future)
            return
        self._add(1)
        if on_loop:
            self._start_hook(coro, name, task_id, then, None)
        elif not self._call_soon(self._start_hook, coro, name, task_id, then, None):
            self._add(-1)
            self._hook_not_run(coro, name, task_id, then)

    def stop(self, grace: float) -> None:
        """Let in-flight work end (up to `grace` s), cancel the rest, stop the loop.

        Joins the thread, within bounds. Called from the loop thread itself
        (close() inside a coroutine) it only schedules the stop.
        """
        if self.loop.is_closed():
            return
        shutdown = self._shutdown(grace)
        if threading.current_thread() is self.thread:
            self.loop.create_task(shutdown)
            return
        try:
            asyncio.run_coroutine_threadsafe(shutdown, self.loop)
        except RuntimeError:  # closed meanwhile
            shutdown.close()
            return
        self.thread.join(2 * grace + 1.0)
        if self.thread.is_alive():
            logger.error(
                "%s: the event loop did not stop within %.1f s (a coroutine blocks it); "
                "its thread is abandoned",
                self.core.name,
                2 * grace + 1.0,
            )

    # -- helpers for any thread ---------------------------------------------

    def _add(self, n: int) -> None:
        with self._count_lock:
            self.inflight += n

    def _call_soon(self, fn: Callable[..., object], *args: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed
            return False
        return True

    def _hook_not_run(
        self, coro: Coroutine[Any, Any, Any], name: str, task_id: str, then: TaskHandle | None
    ) -> None:
        with contextlib.suppress(Exception):  # never started, or stranded on a dead loop
            coro.close()
        logger.error(
            "%s: hook %s of task %s not run: the event loop is closed",
            self.core.name,
            name,
            safe_repr(task_id),
        )
        if then is not None:
            self.core.complete(then)  # idempotent: a half-run hook may have done it

    # -- on the loop ----------------------------------------------------------

    def _pump(self) -> None:
        # Clear the flag before taking: a task appended after this line
        # schedules a pump of its own.
        self._pump_scheduled = False
        incoming = self._incoming
        create_task = self.loop.create_task
        for _ in range(len(incoming)):
            task = incoming.popleft()
            if task._state == QUEUED:
                create_task(self._execute(task), name=f"wheelbucket:{task.id}")
            else:  # drained, exhausted or rescued before it started
                self._add(-1)

    def _cancel_now(self, aio_task: asyncio.Task[Any]) -> None:
        if not aio_task.done():
            self._cancel_sent.add(aio_task)
            aio_task.cancel()

    def _run_job(self, job: Callable[[], None]) -> None:
        try:
            job()
        finally:
            self._add(-1)

    def _start_hook(
        self,
        coro: Coroutine[Any, Any, Any],
        name: str,
        task_id: str,
        then: TaskHandle | None,
        future: concurrent.futures.Future[None] | None,
    ) -> None:
        self.loop.create_task(
            self._guard(coro, name, task_id, then, future), name=f"wheelbucket:{name}:{task_id}"
        )

    async def _guard(
        self,
        coro: Coroutine[Any, Any, Any],
        name: str,
        task_id: str,
        then: TaskHandle | None,
        future: concurrent.futures.Future[None] | None,
    ) -> None:
        """Await one hook coroutine; contain what it raises; complete `then`."""
        try:
            await coro
        except GeneratorExit:
            raise
        except BaseException as exc:  # CancelledError (close() after its grace) included
            self.core._hook_failed(name, task_id, exc)
        finally:
            if then is not None:
                self.core.complete(then)
            if future is None:
                self._add(-1)
            else:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_result(None)

    async def _execute(self, task: TaskHandle) -> None:
        """Run one async on_execute, then its ending hook: the loop's `Scheduler.execute`."""
        core = self.core
        me = asyncio.current_task()
        try:
            ctx = TaskContext(task.id, (task._due + task._life) / 1e9, core.clock)
            ctx._aio_task = me
            begun = core.begin(task, ctx)
            if begun is None:
                return  # ended while it queued
            plan, data, late = begun
            if late is not None:
                job = core._exhausted_job(task, late)
                if "on_task_exhausted" in late[1].async_hooks:
                    job()  # makes the coroutine and starts it as a task here
                else:
                    self._to_pool(job)
                return
            task_id = task.id
            level = core.log_level
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
            with core.lock:
                ended_under_us = task._state != RUNNING
                if not ended_under_us:
                    core._end_locked(task, FAILED if failed else FINISHED)
                    task._data = result
            if ended_under_us:
                self._ended_under(task, me, result, failed)
                return
            if task._wheel_prev is not None:
                # Its life-span timer is armed: the scheduler takes it out (a
                # timer armed right now is dropped when it fires; see execute()).
                core.inbox.append(task)
            if logger.isEnabledFor(level):
                ended = "failed" if failed else "finished"
                logger.log(level, "task %s %s", safe_repr(task_id), ended)
            if failed:
                await self._end_hook(plan, "on_execute_error", task, ctx, task_id, data, result)
            else:
                await self._end_hook(plan, "on_finish", task, ctx, task_id, data)
        finally:
            if me is not None:
                self._cancel_sent.discard(me)
            self._add(-1)

    def _ended_under(
        self, task: TaskHandle, me: asyncio.Task[Any] | None, result: Any, failed: bool
    ) -> None:
        """on_execute came back after its task ended: say how, keep the ending."""
        ending = task.state.value
        if me is not None and me in self._cancel_sent:
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
        elif logger.isEnabledFor(self.core.log_level):
            # It ended before the cancellation reached it: nothing to see.
            logger.log(
                self.core.log_level,
                "task %s: on_execute ended after the task was %s; outcome ignored",
                safe_repr(task.id),
                ending,
            )

    async def _end_hook(self, plan: Any, name: str, task: TaskHandle, *args: Any) -> None:
        """Run `task`'s ending hook where its kind says, then complete the task."""
        core = self.core
        hook = getattr(plan, name)
        if hook is None:
            core.complete(task)
        elif name in plan.async_hooks:
            try:
                await hook(*args)
            except GeneratorExit:
                raise
            except BaseException as exc:
                core._hook_failed(name, task.id, exc)
            finally:
                core.complete(task)
        else:

            def job() -> None:
                core.call_hook(name, hook, task.id, *args, then=task)

            self._to_pool(job)

    def _to_pool(self, job: Callable[[], None]) -> None:
        """Hand a sync hook to the pool: sync user code never runs on the loop."""
        core = self.core
        pool = core.pool
        if pool.stopping:
            job()  # close() stops the pool: no worker would take it any more
            return
        pool.submit_hook(job)
        if not core.watching:
            # Queued work needs the stall watch, as in Scheduler.submit.
            core.watching = True
            core.wake.set()

    async def _shutdown(self, grace: float) -> None:
        """Wait for what is in flight, cancel what outlives `grace`, stop the loop."""
        loop = self.loop
        me = asyncio.current_task()
        left = await self._wait_others(me, grace)
        if left:
            logger.warning(
                "%s: close() cancels %d coroutine(s) still running after %.1f s: %s",
                self.core.name,
                len(left),
                grace,
                _names(left),
            )
            for aio_task in left:
                aio_task.cancel()
            left = await self._wait_others(me, grace)
            if left:
                logger.error(
                    "%s: %d coroutine(s) ignored their cancellation and are abandoned: %s",
                    self.core.name,
                    len(left),
                    _names(left),
                )
        with contextlib.suppress(Exception):
            await loop.shutdown_asyncgens()
        loop.stop()

    async def _wait_others(
        self, me: asyncio.Task[Any] | None, grace: float
    ) -> set[asyncio.Task[Any]]:
        """Wait up to `grace` s for every other task (new ones too); return those left."""
        loop = self.loop
        deadline = loop.time() + grace
        while True:
            others = {t for t in asyncio.all_tasks(loop) if t is not me}
            remaining = deadline - loop.time()
            if not others or remaining <= 0:
                return others
            await asyncio.wait(others, timeout=remaining)


def _names(tasks: set[asyncio.Task[Any]]) -> str:
    shown = sorted(safe_repr(t.get_name()) for t in tasks)
    return ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "")

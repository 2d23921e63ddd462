"""The bucket's event loop: where ``async def`` hooks run, and really get cancelled.

One thread per bucket runs an asyncio loop, started when the first async
hook is needed and stopped by ``close()``. An async ``on_execute`` runs as an
`asyncio.Task`; draining, exhausting or rescuing it calls ``Task.cancel()``,
so the coroutine sees `asyncio.CancelledError` at its next ``await``. Sync
and async tasks never wait behind each other: sync ones go to the thread
pool, async ones to this loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ._log import logger, safe_repr
from .task import FAILED, FINISHED, QUEUED, RUNNING, TaskContext, TaskHandle

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["AsyncRunner"]


class AsyncRunner:
    """An asyncio loop on its own daemon thread, owned by one bucket."""

    def __init__(self, core: Scheduler, *, use_uvloop: bool = False) -> None:
        self.core = core
        self.loop = _new_loop(use_uvloop or getattr(core, "use_uvloop", False))
        # Invariant: inflight counts coroutines submitted and not yet through.
        self.inflight = 0
        self._counter_lock = threading.Lock()
        self._ready = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"{core.name}-asyncio", daemon=True
        )
        self.thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(
                        asyncio.gather(*pending, return_exceptions=True)
                    )
            finally:
                self.loop.close()

    # -- called from any thread ---------------------------------------------

    def submit(self, task: TaskHandle) -> None:
        """Run `task`'s async on_execute on the loop."""
        self._add(1)
        self.loop.call_soon_threadsafe(self._start, task)

    def cancel(self, ctx: TaskContext) -> None:
        """Cancel the asyncio task running `ctx`'s on_execute, for real."""
        aio_task = ctx._aio_task
        if aio_task is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(aio_task.cancel)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def run_hook(self, coro: Coroutine[Any, Any, Any], name: str, task_id: str) -> None:
        """Run an async ending hook to completion (on the loop), from any thread."""
        if threading.current_thread() is self.thread:
            # On the loop already: it cannot block on itself; run it as a task.
            self._add(1)
            self.loop.create_task(self._guard(coro, name, task_id))
            return
        if self.loop.is_closed():
            coro.close()
            logger.error("hook %s of task %s not run: the loop is closed", name, task_id)
            return
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.result()

    def quiet(self) -> bool:
        return self.inflight == 0

    def stop(self, timeout: float) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)

    # -- on the loop -------------------------------------------------------

    def _add(self, n: int) -> None:
        with self._counter_lock:
            self.inflight += n

    def _start(self, task: TaskHandle) -> None:
        self.loop.create_task(self._execute(task))

    async def _guard(self, coro: Coroutine[Any, Any, Any], name: str, task_id: str) -> None:
        try:
            await coro
        except Exception as exc:
            self.core._hook_failed(name, task_id, exc)
        finally:
            self._add(-1)

    async def _execute(self, task: TaskHandle) -> None:
        try:
            await self._execute_inner(task)
        finally:
            self._add(-1)

    async def _execute_inner(self, task: TaskHandle) -> None:
        core = self.core
        ctx = TaskContext(task.id, task._deadline / 1e9, core.clock)
        ctx._aio_task = asyncio.current_task()
        with core.lock:
            if task._state != QUEUED:
                return
            task._state = RUNNING
            core.running += 1
            task._ctx = ctx
            core.lateness.record(core.clock.monotonic_ns() - task._due)
            plan = task._plan
            data = task._data
        task_id = task.id
        failed = False
        cancelled = False
        try:
            result: Any = await plan.on_execute(ctx, task_id, data)
        except asyncio.CancelledError as exc:
            result = exc
            failed = True
            cancelled = True
        except BaseException as exc:
            result = exc
            failed = True
        with core.lock:
            if task._state != RUNNING:
                if not cancelled:
                    logger.warning(
                        "task %s: on_execute went on after it was cancelled "
                        "(it swallowed CancelledError); its outcome is ignored",
                        safe_repr(task_id),
                    )
                return
            ending = core._end_locked(task, FAILED if failed else FINISHED)
            task._data = result
        core._after_end(task, QUEUED, ending)
        if failed:
            await self._hook(plan.on_execute_error, "on_execute_error", task_id, ctx, task_id, data, result)
        else:
            await self._hook(plan.on_finish, "on_finish", task_id, ctx, task_id, data)
        core.complete(task)

    async def _hook(self, hook: Any, name: str, task_id: str, *args: Any) -> None:
        if hook is None:
            return
        try:
            result = hook(*args)
            if asyncio.iscoroutine(result):
                await result
        except Exception as exc:
            self.core._hook_failed(name, task_id, exc)


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise RuntimeError("use_uvloop=True needs the 'uvloop' extra installed") from exc
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()

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
The runner calls no user code itself: it is handed `run_task`, the coroutine
function that runs one task (`calls.Calls.aexecute`), and runs coroutines it
is given.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from ._log import logger, safe_repr
from .task import QUEUED, Task, TaskContext

__all__ = ["AsyncRunner", "in_own_thread", "require_uvloop"]

RunTask = Callable[[Task, "set[asyncio.Task[Any]]"], Coroutine[Any, Any, None]]


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

    def __init__(self, run_task: RunTask, *, name: str, use_uvloop: bool = False) -> None:
        self._run_task = run_task
        self.name = name
        self.loop = _new_loop(use_uvloop)
        # Invariant: inflight counts what the loop owes the bucket: on_execute
        #   runs submitted and not yet through their ending hook, and hook
        #   coroutines or jobs handed over. It changes under _count_lock;
        #   settle() reads it without.
        self.inflight = 0
        self._count_lock = threading.Lock()
        # Tasks handed over by other threads, started in batches by _pump:
        # one loop wake-up per batch, not per task. deque.append and popleft
        # are atomic across threads (documented), so no lock.
        self._incoming: deque[Task] = deque()
        # Invariant: True from when a producer schedules _pump until that
        # _pump begins; a producer that sees True knows its task will be taken.
        self._pump_scheduled = False
        # asyncio tasks that got our cancel before their on_execute ended
        # (loop thread only): told apart from those that beat the cancel.
        self._cancel_sent: set[asyncio.Task[Any]] = set()
        # Callers blocked in wait_for(); released if the loop dies first.
        self._waiting: set[concurrent.futures.Future[None]] = set()
        self._waiting_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"{name}-asyncio", daemon=True)
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

    def on_loop(self) -> bool:
        """The calling thread is the loop's."""
        return threading.current_thread() is self.thread

    def submit(self, task: Task) -> None:
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
        if self.on_loop():
            self._cancel_now(aio_task)
        else:
            self._call_soon(self._cancel_now, aio_task)

    def call(self, job: Callable[[], None]) -> None:
        """Run `job` on the loop thread: a job that starts async hooks."""
        self._add(1)
        if not self._call_soon(self._run_job, job):
            self._add(-1)
            job()  # it finds the loop closed, logs, and completes its task

    def spawn(
        self,
        make: Callable[[], Coroutine[Any, Any, None]],
        name: str,
        fallback: Callable[[], None] | None = None,
    ) -> bool:
        """Run ``make()`` as a task on the loop; False if the loop is closed.

        The coroutine is made on the loop, so none is left unawaited when the
        loop stops before it starts; `fallback` runs instead if the loop
        never gets to it (the application's loop, stopped).
        """
        self._add(1)
        if self.on_loop():
            self._start(make, name)
            return True
        if self._call_soon(self._start, make, name):
            return True
        self._add(-1)
        return False

    def wait_for(self, future: concurrent.futures.Future[None]) -> None:
        """Block until `future` is done, or cancelled because the loop stopped."""
        with self._waiting_lock:
            if self.loop.is_closed():
                future.cancel()
                return
            self._waiting.add(future)
        try:
            future.result()
        except concurrent.futures.CancelledError:
            pass
        finally:
            with self._waiting_lock:
                self._waiting.discard(future)

    def stop(self, grace: float) -> None:
        """Let in-flight work end (up to `grace` s), cancel the rest, stop the loop.

        Joins the thread, within bounds. Called from the loop thread itself
        (close() inside a coroutine) it only schedules the stop.
        """
        if self.loop.is_closed():
            return
        shutdown = self._shutdown(grace)
        if self.on_loop():
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
                self.name,
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

    async def _execute(self, task: Task) -> None:
        me = asyncio.current_task()
        try:
            await self._run_task(task, self._cancel_sent)
        finally:
            if me is not None:
                self._cancel_sent.discard(me)
            self._add(-1)

    def _start(self, make: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self.loop.create_task(self._counted(make), name=f"wheelbucket:{name}")

    async def _counted(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await make()
        finally:
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

    async def _shutdown(self, grace: float) -> None:
        """Wait for what is in flight, cancel what outlives `grace`, stop the loop."""
        loop = self.loop
        me = asyncio.current_task()
        left = await self._wait_others(me, grace)
        if left:
            logger.warning(
                "%s: close() cancels %d coroutine(s) still running after %.1f s: %s",
                self.name,
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
                    self.name,
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


class LoopRunner(AsyncRunner):
    """Async hooks on the application's own event loop (``TaskBucket(loop=...)``).

    The loop is the application's: this runner never runs, stops or closes
    it. Objects bound to a loop are touched only from that loop, so every
    coroutine starts there as one of its tasks, by ``call_soon_threadsafe``.
    A loop that is closed, or not running, when something is handed over
    cannot take it: the hand-off fails at once (an on_execute ends FAILED, a
    hook counts an error), and what was handed over before the loop stopped
    is failed the same way by `stop`, so nothing waits for a loop that will
    not run it.
    """

    def __init__(
        self,
        run_task: RunTask,
        fail_task: Callable[[Task, str], None],
        loop: asyncio.AbstractEventLoop,
        *,
        name: str,
    ) -> None:
        self._run_task = run_task
        self._fail_task = fail_task
        self.name = name
        self.loop = loop
        self.inflight = 0
        self._count_lock = threading.Lock()
        self._incoming = deque()
        self._pump_scheduled = False
        self._cancel_sent = set()
        self._waiting_lock = threading.Lock()
        # Our asyncio tasks on that loop (loop thread only).
        self._tasks: set[asyncio.Task[Any]] = set()
        # Hand-offs not run yet, each with what to do if the loop never runs
        # it: key -> fallback. Guarded by _waiting_lock.
        self._pending: dict[int, Callable[[], None]] = {}
        self._serial = 0
        self._idle = threading.Event()  # set while inflight == 0
        self._idle.set()

    @property
    def thread(self) -> None:  # type: ignore[override]
        """No thread of ours: the loop runs on the application's."""
        return None

    def on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _add(self, n: int) -> None:
        with self._count_lock:
            was = self.inflight
            self.inflight = now = was + n
            # The event only when the count crosses zero: not per task.
            if not now:
                self._idle.set()
            elif not was:
                self._idle.clear()

    def _call_soon(self, fn: Callable[..., object], *args: Any) -> bool:
        return self._hand_over(fn, args, None)

    def _hand_over(
        self, fn: Callable[..., object], args: tuple[Any, ...], fallback: Callable[[], None] | None
    ) -> bool:
        loop = self.loop
        if loop.is_closed() or not loop.is_running():
            return False
        with self._waiting_lock:
            self._serial += 1
            key = self._serial
            if fallback is not None:
                self._pending[key] = fallback
        try:
            loop.call_soon_threadsafe(self._run_pending, key, fn, args)
        except RuntimeError:  # closed meanwhile
            with self._waiting_lock:
                self._pending.pop(key, None)
            return False
        return True

    def _run_pending(self, key: int, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        with self._waiting_lock:
            self._pending.pop(key, None)
        fn(*args)

    def submit(self, task: Task) -> None:
        self._add(1)
        self._incoming.append(task)
        if not self._pump_scheduled:
            self._pump_scheduled = True
            if not self._hand_over(self._pump, (), self._fail_incoming):
                self._pump_scheduled = False
                self._fail_incoming()

    def _fail_incoming(self) -> None:
        """The loop cannot take the queued tasks: each ends FAILED, with the reason."""
        why = "the event loop is closed" if self.loop.is_closed() else "the event loop is stopped"
        incoming = self._incoming
        for _ in range(len(incoming)):
            try:
                task = incoming.popleft()
            except IndexError:
                break
            try:
                self._fail_task(task, why)
            finally:
                self._add(-1)

    def call(self, job: Callable[[], None]) -> None:
        self._add(1)

        def fallback() -> None:
            try:
                job()  # it finds the loop unusable, counts the error, completes its task
            finally:
                self._add(-1)

        if not self._hand_over(self._run_job, (job,), fallback):
            self._add(-1)
            job()

    def spawn(
        self,
        make: Callable[[], Coroutine[Any, Any, None]],
        name: str,
        fallback: Callable[[], None] | None = None,
    ) -> bool:
        self._add(1)
        if self.on_loop():
            self._start(make, name)
            return True

        def never_ran() -> None:
            try:
                if fallback is not None:
                    fallback()
            finally:
                self._add(-1)

        if self._hand_over(self._start, (make, name), never_ran):
            return True
        self._add(-1)
        return False

    def _start(self, make: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self.loop.create_task(self._counted(make), name=f"wheelbucket:{name}")

    async def _counted(self, make: Callable[[], Coroutine[Any, Any, None]]) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)  # (no done callback: one loop step less per task)
        try:
            await make()
        finally:
            if me is not None:
                self._tasks.discard(me)
            self._add(-1)

    def _pump(self) -> None:
        self._pump_scheduled = False
        incoming = self._incoming
        create_task = self.loop.create_task
        for _ in range(len(incoming)):
            task = incoming.popleft()
            if task._state == QUEUED:
                create_task(self._execute(task), name=f"wheelbucket:{task.id}")
            else:
                self._add(-1)

    async def _execute(self, task: Task) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)
        try:
            await self._run_task(task, self._cancel_sent)
        finally:
            if me is not None:
                self._cancel_sent.discard(me)
                self._tasks.discard(me)
            self._add(-1)

    def wait_for(self, future: concurrent.futures.Future[None]) -> None:
        # Wait while the loop runs; if it stops, give up (the caller logs it).
        while True:
            try:
                future.result(timeout=0.05)
                return
            except concurrent.futures.TimeoutError:  # noqa: PERF203 - a poll, not a hot loop
                if self.loop.is_closed() or not self.loop.is_running():
                    future.cancel()
                    return
            except concurrent.futures.CancelledError:
                return

    def stop(self, grace: float) -> None:
        """Cancel what is still ours on the loop, within bounds; never stop the loop itself."""
        loop = self.loop
        if loop.is_closed() or not loop.is_running():
            self._fail_leftovers()
            return
        if self.on_loop():
            # Cannot wait here for coroutines on this very loop: cancel them
            # and let them finish as the loop goes on (aclose() waits instead).
            self._cancel_all()
            return
        if not self._idle.wait(grace):
            self._call_soon(self._cancel_all)
            if not self._idle.wait(grace + 1.0):
                logger.error(
                    "%s: %d coroutine(s) on the application's loop did not end within "
                    "%.1f s of their cancellation; they are abandoned",
                    self.name,
                    self.inflight,
                    grace + 1.0,
                )
        if loop.is_closed() or not loop.is_running():
            self._fail_leftovers()

    def _cancel_all(self) -> None:
        for aio_task in list(self._tasks):
            if not aio_task.done():
                aio_task.cancel()

    def _fail_leftovers(self) -> None:
        """The loop stopped with hand-offs it never ran: run their fallbacks here."""
        with self._waiting_lock:
            leftovers = list(self._pending.values())
            self._pending.clear()
        for fallback in leftovers:
            fallback()


async def in_own_thread(call: Callable[[], None], name: str) -> None:
    """Run `call` on a thread of its own and await it, never blocking the running loop.

    Its exception is raised here. Cancelling the awaiting coroutine does not
    stop `call` (a close goes on); the loop closing meanwhile is no error.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            call()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    await asyncio.shield(done)

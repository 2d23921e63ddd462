"""The core of one bucket: its parts wired together, and the operations that span them.

`Core` builds the lifecycle, the scheduler, the pool, the user-code calls
and (on first use) the event-loop runner, hands each the callables it needs
from the others, and implements what takes several of them: the hand-off of
a filled task, drain, rescue, close, and the quiet test of `settle()`. It
owns no task state itself: that is `lifecycle.Lifecycle`'s.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from typing import Any

from ._aio import AsyncRunner, LoopRunner
from ._log import logger
from .calls import Calls
from .clock import Clock
from .lifecycle import Ending, Lifecycle
from .pool import Worker, WorkerPool
from .scheduler import INBOX_BATCH, Scheduler
from .stats import BucketStats
from .task import DRAINED, RESCUED, Record, Task
from .wheel import TimingWheel

__all__ = ["Core", "live_cores"]


class Core:
    """One bucket's machinery."""

    def __init__(
        self,
        *,
        clock: Clock,
        tick_ns: int,
        workers: int,
        max_extra_workers: int,
        wheel_bits: int,
        wheel_levels: int,
        log_level: int,
        name: str,
        use_uvloop: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.clock = clock
        self.name = name
        self.use_uvloop = use_uvloop
        # The application's loop for async hooks (None: a loop of our own).
        self.app_loop = loop
        self.aio: AsyncRunner | None = None  # made on the first async hook
        self._aio_lock = threading.Lock()
        self.pool = pool = WorkerPool(_unwired, workers, max_extra_workers, name)
        self.life = life = Lifecycle(
            clock_ns=clock.monotonic_ns, move=_unwired, stuck=pool.flag_stuck
        )
        self.calls = calls = Calls(
            lifecycle=life, pool=pool, runner=self.runner, clock=clock, log_level=log_level
        )
        pool.execute = calls.execute
        self.sched = sched = Scheduler(
            clock=clock,
            tick_ns=tick_ns,
            wheel_bits=wheel_bits,
            wheel_levels=wheel_levels,
            lifecycle=life,
            pool=pool,
            dispatch=self._dispatch,
            exhausted=self._exhausted,
            name=name,
        )
        life._move = sched.move
        self.close_done = threading.Event()
        sched.start()

    def runner(self) -> AsyncRunner:
        """The event loop for async hooks; made, and its thread started, on first use."""
        aio = self.aio
        if aio is None:
            with self._aio_lock:
                aio = self.aio
                if aio is None:
                    calls = self.calls
                    if self.app_loop is not None:
                        aio = LoopRunner(
                            calls.aexecute, calls.fail_unrun, self.app_loop, name=self.name
                        )
                    else:
                        aio = AsyncRunner(
                            calls.aexecute, name=self.name, use_uvloop=self.use_uvloop
                        )
                    self.aio = aio
        return aio

    # -- hand-offs --------------------------------------------------------------

    def submit(self, task: Task, wake_for: int) -> None:
        """Hand a freshly filled IMMEDIATE task to the pool (or the loop), and the scheduler."""
        if task._plan.is_async:
            self.runner().submit(task)
        else:
            self.pool.submit(task)
            self.sched.watch()
        self.sched.submit(task.id, task, wake_for)  # for its life-span timer

    def _dispatch(self, ready: list[Task]) -> None:
        """Fired tasks go to the pool, or to the loop for an async on_execute (scheduler thread)."""
        sync = ready
        if self.aio is not None or any(_runs_async(t) for t in ready):
            sync = []
            runner = self.runner()
            for t in ready:
                if _runs_async(t):
                    runner.submit(t)
                else:
                    sync.append(t)
        if sync:
            pool = self.pool
            pool.work.extend(sync)
            pool.nudge()
            self.sched.watching = True  # on its own thread: no wake-up needed

    def _exhausted(self, ending: Ending) -> None:
        """A life-span timer ended a task (scheduler thread): its hook runs elsewhere."""
        self.calls.ending(ending, here=False)

    # -- caller-side operations ---------------------------------------------------

    def drain(self, task_id: str) -> bool:
        """End live `task_id` as DRAINED; False if it is not live."""
        got = self.life.drain(task_id)
        if got is None:
            return False
        if isinstance(got, int):
            self.calls.drained(task_id, got)
        else:
            self.calls.ending(got, here=True)  # it was running: stop that
        return True

    def rescue(self) -> list[str]:
        """End every live task as RESCUED and run its on_panic on this thread."""
        self.check_not_interrupted("rescue")
        endings = self.life.take_all(RESCUED)
        ending = self.calls.ending
        for e in endings:
            # wait: rescue() returns after every on_panic, async ones included
            # (but on the loop thread, which cannot wait for itself).
            ending(e, here=True, wait=True)
        return [e.task.id for e in endings]

    def check_not_interrupted(self, what: str) -> None:
        """Refuse to run inside a signal handler that cut into our own critical section."""
        if self.life.lock._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError(
                f"{what}() was called from a signal handler that interrupted this thread "
                "while it held the bucket's lock (inside fill, drain or stats); raise an "
                f"exception in the handler and call {what}() in an except or finally block"
            )

    def close(
        self, *, wait: bool, timeout: float | None, rescue: bool, join_timeout: float
    ) -> None:
        self.check_not_interrupted("close")
        life = self.life
        with life.lock:
            first = not life.closed
            life.closed = True
        if not first:
            if not self._on_own_thread():
                self.close_done.wait()
            return
        interrupted: BaseException | None = None
        if wait:
            try:
                self._wait_empty(timeout)
            except (KeyboardInterrupt, SystemExit) as exc:
                # Ctrl-C while close() waits: a crash, as when it leaves a
                # with block (SPEC, close): rescue what is live, stop, re-raise.
                interrupted = exc
                rescue = True
        if rescue:
            self.rescue()
        else:
            ending = self.calls.ending
            for e in life.take_all(DRAINED):
                ending(e, here=True)  # no hook for a drain: the handle is done now
        self.sched.stop(join_timeout)
        self.pool.stop(join_timeout)
        if self.aio is not None:
            # After the pool (whose hooks may still await on the loop), before
            # the leftover hooks below (the loop hands sync hooks to the pool).
            self.aio.stop(join_timeout)
        # Ending hooks still queued (every thread stuck, say) run here, so
        # that when close() returns every ending has had its hook.
        hooks = self.pool.hooks
        while hooks:
            try:
                job = hooks.popleft()
            except IndexError:
                break
            job()
        self.close_done.set()
        if interrupted is not None:
            raise interrupted

    def _on_own_thread(self) -> bool:
        current = threading.current_thread()
        aio = self.aio
        return (
            current is self.sched.thread
            or (aio is not None and aio.on_loop())
            or any(w.thread is current for w in list(self.pool.threads))
        )

    def _wait_empty(self, timeout: float | None) -> None:
        life = self.life
        current = threading.current_thread()
        me: Worker | None = None
        # On the event loop thread no async task can move while close() blocks.
        on_loop = self.aio is not None and self.aio.on_loop()
        with life.lock:
            # From inside a hook, close() does not wait for the caller's own task.
            life.close_allow = sum(
                1
                for task in life.tasks.values()
                if (on_loop and _runs_async(task, life))
                or (
                    type(task) is Task
                    and task._ctx is not None
                    and isinstance(task._ctx.worker, Worker)
                    and task._ctx.worker.thread is current
                )
            )
            if len(life.tasks) <= life.close_allow:
                return
            life.emptied.clear()
            # A worker that waits here is as good as stuck: lend its place, so
            # that tasks coming due meanwhile still find a thread to run on.
            me = next((w for w in self.pool.threads if w.thread is current), None)
            if me is not None:
                self.pool.flag_stuck(me)
        if me is not None:
            self.pool.replace()
        clock = self.clock
        deadline = None if timeout is None else clock.monotonic_ns() + round(timeout * 1e9)
        # Async tasks on the application's loop end only while it runs: look
        # at it now and then (real time), and stop waiting for them once it
        # has stopped (they are drained or rescued next).
        app_loop = self.app_loop
        look = None if app_loop is None else 0.05
        mine = life.close_allow
        while len(life.tasks) > life.close_allow:
            if deadline is not None and clock.monotonic_ns() >= deadline:
                return
            if app_loop is not None and (app_loop.is_closed() or not app_loop.is_running()):
                with life.lock:
                    stranded = sum(1 for task in life.tasks.values() if _runs_async(task, life))
                    life.close_allow = mine + stranded
                    if len(life.tasks) <= life.close_allow:
                        return
            clock.wait(life.emptied, deadline, look)

    # -- introspection ------------------------------------------------------------

    def stats(self) -> BucketStats:
        life = self.life
        pool = self.pool
        with life.lock:
            live = len(life.tasks)
            running = life.running
            lat = life.lateness
            return BucketStats(
                live=live,
                pending=live - running,
                running=running,
                filled=life.filled,
                finished=life.finished,
                failed=life.failed,
                exhausted=life.exhausted,
                drained=life.drained,
                rescued=life.rescued,
                rejected_full=life.rejected_full,
                rejected_duplicate=life.rejected_duplicate,
                hook_errors=self.calls.errors,
                reset=life.resets,
                executed=lat.count,
                lateness_p50=lat.quantile(0.50),
                lateness_p99=lat.quantile(0.99),
                lateness_max=lat.max_ns / 1e9,
                loop_lateness_p50=life.loop_lateness.quantile(0.50),
                loop_lateness_p99=life.loop_lateness.quantile(0.99),
                loop_lateness_max=life.loop_lateness.max_ns / 1e9,
                workers=len(pool.threads),
                workers_stuck=pool.stuck,
                workers_replaced=pool.replaced,
            )

    def quiet(self, running: int = 0) -> bool:
        """Nothing to do at the current time (see `wheelbucket.testing.settle`).

        `running` counts hooks a test keeps blocked on purpose (blocked
        workers and blocked coroutines alike).
        """
        sched = self.sched
        pool = self.pool
        aio = self.aio
        in_flight = 0 if aio is None else aio.inflight
        return (
            sched.asleep
            and not sched.wake.is_set()
            and sched.wake_at > self.clock.monotonic_ns()
            and len(sched.inbox) < INBOX_BATCH
            and len(sched.moves) < INBOX_BATCH
            and not pool.work
            and not pool.hooks
            and pool.busy_count() + in_flight <= running
        )

    def saturated(self, running: int) -> bool:
        """Quiet but for queued work: every thread is one of `running` blocked on purpose."""
        sched = self.sched
        return (
            sched.asleep
            and not sched.wake.is_set()
            and sched.wake_at > self.clock.monotonic_ns()
            and self.pool.busy_count() == running
        )

    def describe(self) -> str:
        sched = self.sched
        return (
            f"asleep={sched.asleep} wake_set={sched.wake.is_set()} wake_at={sched.wake_at} "
            f"now={self.clock.monotonic_ns()} inbox={len(sched.inbox)} "
            f"live={len(self.life.tasks)} pool={self.pool.describe()} "
            f"aio_inflight={None if self.aio is None else self.aio.inflight}"
        )

    # What tests read of a core, by their old names.
    @property
    def tasks(self) -> dict[str, Record | Task]:
        return self.life.tasks

    @property
    def lock(self) -> threading.RLock:
        return self.life.lock

    @property
    def thread(self) -> threading.Thread:
        return self.sched.thread

    @property
    def wake(self) -> threading.Event:
        return self.sched.wake

    @property
    def inbox(self) -> deque[tuple[str, Record | Task]]:
        return self.sched.inbox

    @property
    def wheel(self) -> TimingWheel[str]:
        return self.sched.wheel

    @property
    def asleep(self) -> bool:
        return self.sched.asleep

    # -- fork safety --------------------------------------------------------------

    def after_fork_in_child(self) -> None:
        """A forked child inherits this core's state but none of its threads.

        Closed on the spot, with fresh locks so nothing can hang: fill raises
        BucketClosed, drain raises TaskNotFound. The parent's tasks are the
        parent's; the child starts its own bucket.
        """
        life = self.life
        life.lock = life.book.lock = threading.RLock()
        life.closed = True
        life.tasks.clear()
        self._aio_lock = threading.Lock()
        sched = self.sched
        sched.stopping = True
        sched.inbox.clear()
        sched.moves.clear()
        self.pool.after_fork_in_child()
        self.close_done.set()


def _unwired(*args: Any) -> None:  # pragma: no cover - replaced before any use
    raise AssertionError("core part used before it was wired")


def _runs_async(task: Record | Task, life: Lifecycle | None = None) -> bool:
    """`task` has an async on_execute. Read without the lock: a task that ended
    since it was queued has no plan any more, and the run path drops it."""
    if isinstance(task, tuple):
        assert life is not None
        plan = life.plan_of(task)
    else:
        plan = task._plan
    return plan is not None and bool(plan.is_async)


#: Every core not closed yet, for the fork handler.
live_cores: weakref.WeakSet[Core] = weakref.WeakSet()


def close_forgotten(core: Core) -> None:
    """A bucket was garbage-collected without close(): stop its threads."""
    live = len(core.life.tasks)
    if live:
        logger.warning(
            "%s was garbage-collected with %d live tasks and no close(); they were drained",
            core.name,
            live,
        )
    core.close(wait=False, timeout=None, rescue=False, join_timeout=0.1)
    live_cores.discard(core)


def _after_fork_in_child() -> None:
    """A forked child inherits the buckets' state but none of their threads: close them."""
    for core in list(live_cores):
        core.after_fork_in_child()
    live_cores.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

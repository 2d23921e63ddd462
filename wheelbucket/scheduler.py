"""The scheduler: one thread that drives the timing wheel, and the task lifecycle.

Who does what
-------------
* Callers of ``fill`` / ``drain`` / ``rescue`` change a task's state under
  `Scheduler.lock` (a few bytecodes, never across user code or a wait), then
  append the task to `inbox`, a lock-free deque, and wake the scheduler only
  if the task's next deadline is earlier than the one it sleeps towards.
* The scheduler thread alone touches the wheel. It *reconciles* each task
  from the inbox (files it at its next deadline, or takes an ended task out),
  fires due run-after timers (hands tasks to the pool) and life-span timers
  (exhausts tasks), then sleeps until the next occupied slot. It never runs
  user code, so a slow hook cannot delay a timer.
* Workers (`pool`) run ``on_execute`` and the ending hooks.

Every ending is decided under the lock by whoever gets there first
(`_end_locked`), and only that thread runs the ending's hook: that is how
each task gets exactly one ending and one hook.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ._log import logger, safe_repr
from .clock import Clock
from .executor import HookPlan
from .pool import Worker, WorkerPool
from .stats import BucketStats, LatenessHistogram
from .task import (
    DRAINED,
    ENDED,
    EXHAUSTED,
    FAILED,
    FINISHED,
    HOOK_PENDING,
    QUEUED,
    RESCUED,
    RUNNING,
    WAITING,
    TaskContext,
    TaskHandle,
    TaskState,
    _call_done_callback,
)
from .wheel import TimingWheel

__all__ = ["Scheduler"]

# wake_at while the scheduler is awake: no caller needs to wake it, since it
# looks at the inbox again before it sleeps.
AWAKE = -(1 << 62)
# wake_at while it sleeps with an empty wheel.
NEVER = 1 << 62
# Wake the scheduler once this many submissions wait, so the inbox (and the
# time it takes to apply) stays bounded even when no deadline is near.
INBOX_BATCH = 4096
# Fired timers are handled under the lock in chunks of this size, so a
# storm never holds the lock long enough to stall a caller of fill.
FIRE_CHUNK = 512

_ENDING_NAMES = {
    FINISHED: "finished",
    FAILED: "failed",
    EXHAUSTED: "exhausted",
    DRAINED: "drained",
    RESCUED: "rescued",
}


def log_hook_error(name: str, task_id: str, exc: BaseException) -> None:
    logger.error(
        "hook %s of task %s raised %s", name, safe_repr(task_id), type(exc).__name__, exc_info=exc
    )


class Scheduler:
    """The shared state of one bucket and its scheduler thread."""

    def __init__(
        self,
        *,
        clock: Clock,
        tick_ns: int,
        max_bucket: int,
        workers: int,
        max_extra_workers: int,
        wheel_bits: int,
        wheel_levels: int,
        log_level: int,
        name: str,
    ) -> None:
        self.clock = clock
        self.tick_ns = tick_ns
        self.max_bucket = max_bucket
        self.log_level = log_level
        self.name = name
        self.lock = threading.Lock()
        # Invariant: tasks maps the id of every live task (state < ENDED) to
        # it, in fill order; it changes only under `lock`.
        self.tasks: dict[str, TaskHandle] = {}
        # Invariant: only the scheduler thread touches the wheel.
        self.wheel = TimingWheel(bits=wheel_bits, levels=wheel_levels, now=self._now_tick())
        self.inbox: deque[TaskHandle] = deque()
        self.wake = threading.Event()
        # Invariant: while the scheduler sleeps, wake_at is the monotonic ns it
        # sleeps towards; a caller whose deadline is earlier sets `wake`.
        self.wake_at = AWAKE
        self.asleep = False
        self.pool = WorkerPool(self, workers, max_extra_workers, name)
        self.aio: Any = None  # the asyncio runner, made on first async hook
        self.closed = False
        self.stopping = False
        self.close_started = threading.Event()
        self.close_done = threading.Event()
        self.emptied = threading.Event()
        # Live tasks that close(wait=True) does not wait for (the caller's own).
        self.close_allow = 0
        # Counters, changed under `lock`.
        self.filled = 0
        self.finished = 0
        self.failed = 0
        self.exhausted = 0
        self.drained = 0
        self.rescued = 0
        self.rejected_full = 0
        self.rejected_duplicate = 0
        self.hook_errors = 0
        self.running = 0
        self.lateness = LatenessHistogram()
        self.thread = threading.Thread(target=self._run, name=f"{name}-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _now_tick(self) -> int:
        return self.clock.monotonic_ns() // self.tick_ns

    # -- the scheduler thread ---------------------------------------------

    def _run(self) -> None:
        clock = self.clock
        wheel = self.wheel
        inbox = self.inbox
        tick_ns = self.tick_ns
        wake = self.wake
        reconcile = self._reconcile
        # This 'while' loop right here is the scheduler.
        while True:
            self.wake_at = AWAKE
            wake.clear()
            # Apply what callers submitted; a bounded batch, so producers
            # cannot keep the loop from firing timers.
            for _ in range(len(inbox)):
                reconcile(inbox.popleft())
            now = clock.monotonic_ns()
            expired = wheel.advance(now // tick_ns)
            if expired:
                self._fire(expired, now)
            if self.stopping:
                break
            nxt = wheel.next_tick()
            deadline = None if nxt is None else nxt * tick_ns
            self.wake_at = NEVER if deadline is None else deadline
            # Look again after publishing wake_at: a submission that came
            # before it saw AWAKE and did not wake us.
            if inbox or (deadline is not None and deadline <= now):
                continue
            self.asleep = True
            clock.wait(wake, deadline)
            self.asleep = False
        self.wake_at = AWAKE

    def _reconcile(self, task: TaskHandle) -> None:
        """Make the wheel agree with `task`'s state (scheduler thread only)."""
        state = task._state
        if state >= ENDED:
            if task._wheel_prev is not None:
                self.wheel.remove(task)
        elif task._wheel_prev is None:
            # Ceiling division: a deadline between two ticks belongs to the
            # later one, so nothing ever fires early.
            if state == WAITING:
                self.wheel.add(task, -(-task._due // self.tick_ns))
            else:
                self.wheel.add(task, -(-task._deadline // self.tick_ns))

    def _fire(self, expired: list[Any], now: int) -> None:
        """Handle timers that came due: start tasks, exhaust the overdue."""
        wheel = self.wheel
        tick_ns = self.tick_ns
        lock = self.lock
        for start in range(0, len(expired), FIRE_CHUNK):
            chunk = expired[start : start + FIRE_CHUNK]
            ready: list[TaskHandle] = []
            endings: list[tuple[TaskHandle, int, Any]] = []
            with lock:
                for task in chunk:
                    state = task._state
                    if state == WAITING:
                        task._state = QUEUED
                        ready.append(task)
                    elif state < ENDED:
                        endings.append((task, state, self._end_locked(task, EXHAUSTED)))
            for task in ready:
                wheel.add(task, -(-task._deadline // tick_ns))
            if ready:
                self._dispatch(ready)
            for task, was, ending in endings:
                self._after_end(task, was, ending)
                self.pool.submit_hook(self._exhausted_job(task, ending))

    def _dispatch(self, ready: list[TaskHandle]) -> None:
        sync = ready
        if self.aio is not None or any(t._plan.is_async for t in ready):
            sync = [t for t in ready if not t._plan.is_async]
            for t in ready:
                if t._plan.is_async:
                    self._aio().submit(t)
        if sync:
            pool = self.pool
            pool.work.extend(sync)
            if pool.idle:
                pool.wake_one()
            elif pool.active < pool.size:
                pool._grow()

    # -- lifecycle: every state change goes through here ------------------

    def _end_locked(self, task: TaskHandle, ending: int) -> tuple[Any, Any, Any]:
        """Give live `task` its ending. Call with `lock` held, after checking it is live.

        Returns (ctx, plan, data) for the ending hook; the task keeps none of them.
        """
        if task._state == RUNNING:
            self.running -= 1
        task._state = ending | HOOK_PENDING
        tasks = self.tasks
        if tasks.get(task.id) is task:
            del tasks[task.id]
        if ending == FINISHED:
            self.finished += 1
        elif ending == FAILED:
            self.failed += 1
        elif ending == EXHAUSTED:
            self.exhausted += 1
        elif ending == DRAINED:
            self.drained += 1
        else:
            self.rescued += 1
        ctx = task._ctx
        plan = task._plan
        data = task._data
        task._ctx = task._plan = task._data = None
        if self.closed and len(tasks) <= self.close_allow:
            self.emptied.set()
        return ctx, plan, data

    def _after_end(self, task: TaskHandle, was: int, ending: tuple[Any, Any, Any]) -> None:
        """Outside the lock, right after an ending: cancel, unwheel, log."""
        ctx = ending[0]
        self.inbox.append(task)  # the scheduler takes it out of the wheel
        if was == RUNNING and ctx is not None:
            ctx._cancel()
            if ctx.worker is not None:
                self.pool.mark_stuck(ctx.worker)
            elif self.aio is not None:
                self.aio.cancel(ctx)
        state = task._state & ~HOOK_PENDING
        level = self.log_level
        if logger.isEnabledFor(level):
            logger.log(level, "task %s %s", safe_repr(task.id), _ENDING_NAMES[state])

    def complete(self, task: TaskHandle) -> None:
        """The ending hook is through: the handle is done; run its callbacks."""
        task._state &= ~HOOK_PENDING
        for fn in task._release_waiters():
            try:
                fn(task)
            except Exception as exc:
                self._hook_failed("done callback", task.id, exc)

    def call_hook(self, name: str, hook: Callable[..., Any] | None, task_id: str, *args: Any) -> None:
        """Call an ending hook; contain and count what it raises. The one place they run."""
        if hook is None:
            return
        try:
            result = hook(*args)
            if result is not None and _is_coroutine(result):
                self._aio().run_hook(result, name, task_id)
        except Exception as exc:
            self._hook_failed(name, task_id, exc)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit from user code
            self._hook_failed(name, task_id, exc)

    def _hook_failed(self, name: str, task_id: str, exc: BaseException) -> None:
        with self.lock:
            self.hook_errors += 1
        log_hook_error(name, task_id, exc)

    def _exhausted_job(self, task: TaskHandle, ending: tuple[Any, Any, Any]) -> Callable[[], None]:
        ctx, plan, data = ending

        def job() -> None:
            hook_ctx = ctx if ctx is not None else self._dead_ctx(task)
            self.call_hook("on_task_exhausted", plan.on_task_exhausted, task.id, hook_ctx, task.id, data)
            self.complete(task)

        return job

    def _dead_ctx(self, task: TaskHandle) -> TaskContext:
        """A ctx for the hook of a task that never ran: already cancelled."""
        ctx = TaskContext(task.id, task._deadline / 1e9, self.clock)
        ctx._cancelled = True
        return ctx

    def execute(self, task: TaskHandle, worker: Worker | None) -> None:
        """Run `task` on this worker thread: on_execute, then its ending hook."""
        ctx = TaskContext(task.id, task._deadline / 1e9, self.clock, worker)
        with self.lock:
            if task._state != QUEUED:
                return  # drained, exhausted or rescued while it queued
            task._state = RUNNING
            self.running += 1
            task._ctx = ctx
            self.lateness.record(self.clock.monotonic_ns() - task._due)
            plan = task._plan
            data = task._data
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
        with self.lock:
            if task._state != RUNNING:
                return  # ended under us: the ender ran (or runs) its hook
            ending = self._end_locked(task, FAILED if failed else FINISHED)
            task._data = result
        self._after_end(task, QUEUED, ending)
        if failed:
            self.call_hook("on_execute_error", plan.on_execute_error, task_id, ctx, task_id, data, result)
        else:
            self.call_hook("on_finish", plan.on_finish, task_id, ctx, task_id, data)
        self.complete(task)

    # -- caller-side operations -------------------------------------------

    def submit(self, task: TaskHandle, due: int) -> None:
        """Queue a freshly filled task for the scheduler (and the pool)."""
        inbox = self.inbox
        inbox.append(task)
        if task._state == QUEUED:
            plan: HookPlan = task._plan
            if plan.is_async:
                self._aio().submit(task)
            else:
                self.pool.submit(task)
        if due < self.wake_at or not len(inbox) % INBOX_BATCH:
            self.wake.set()

    def drain(self, task_id: str) -> TaskHandle | None:
        """End a live task as DRAINED. Returns None if `task_id` is not live."""
        with self.lock:
            task = self.tasks.get(task_id)
            if task is None:
                return None
            was = task._state
            ending = self._end_locked(task, DRAINED)
        self._after_end(task, was, ending)
        self.complete(task)
        return task

    def rescue(self) -> list[str]:
        """End every live task as RESCUED and run its on_panic on this thread."""
        with self.lock:
            taken = [(task, task._state) for task in self.tasks.values()]
            endings = [self._end_locked(task, RESCUED) for task, _ in taken]
        for (task, was), ending in zip(taken, endings):
            self._after_end(task, was, ending)
        for (task, _), (ctx, plan, data) in zip(taken, endings):
            hook_ctx = ctx if ctx is not None else self._dead_ctx(task)
            self.call_hook("on_panic", plan.on_panic, task.id, hook_ctx, task.id, data)
            self.complete(task)
        return [task.id for task, _ in taken]

    def drain_all(self) -> int:
        with self.lock:
            ids = list(self.tasks)
        return sum(1 for task_id in ids if self.drain(task_id) is not None)

    def close(self, *, wait: bool, timeout: float | None, rescue: bool, join_timeout: float) -> None:
        with self.lock:
            first = not self.closed
            self.closed = True
        if not first:
            if not self._on_own_thread():
                self.close_done.wait()
            return
        self.close_started.set()
        if wait:
            self._wait_empty(timeout)
        if rescue:
            self.rescue()
        else:
            self.drain_all()
        self.stopping = True
        self.wake.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(join_timeout)
        self.pool.stop(join_timeout)
        # Ending hooks still queued (every worker stuck, say) run here, so
        # that when close() returns every ending has had its hook.
        hooks = self.pool.hooks
        while hooks:
            try:
                job = hooks.popleft()
            except IndexError:
                break
            job()
        if self.aio is not None:
            self.aio.stop(join_timeout)
        self.close_done.set()

    def _on_own_thread(self) -> bool:
        current = threading.current_thread()
        return current is self.thread or any(w.thread is current for w in list(self.pool.threads))

    def _wait_empty(self, timeout: float | None) -> None:
        current = threading.current_thread()
        with self.lock:
            # From inside a hook, close() does not wait for the caller's own task.
            self.close_allow = sum(
                1
                for task in self.tasks.values()
                if task._ctx is not None
                and task._ctx.worker is not None
                and task._ctx.worker.thread is current
            )
            if len(self.tasks) <= self.close_allow:
                return
            self.emptied.clear()
        clock = self.clock
        deadline = None if timeout is None else clock.monotonic_ns() + round(timeout * 1e9)
        while len(self.tasks) > self.close_allow:
            if deadline is not None and clock.monotonic_ns() >= deadline:
                return
            clock.wait(self.emptied, deadline)

    def _aio(self) -> Any:
        if self.aio is None:
            from ._aio import AsyncRunner

            with self.lock:
                if self.aio is None:
                    self.aio = AsyncRunner(self)
        return self.aio

    # -- introspection ----------------------------------------------------

    def stats(self) -> BucketStats:
        with self.lock:
            live = len(self.tasks)
            running = self.running
            lat = self.lateness
            pool = self.pool
            return BucketStats(
                live=live,
                pending=live - running,
                running=running,
                filled=self.filled,
                finished=self.finished,
                failed=self.failed,
                exhausted=self.exhausted,
                drained=self.drained,
                rescued=self.rescued,
                rejected_full=self.rejected_full,
                rejected_duplicate=self.rejected_duplicate,
                hook_errors=self.hook_errors,
                executed=lat.count,
                lateness_p50=lat.quantile(0.50),
                lateness_p99=lat.quantile(0.99),
                lateness_max=lat.max_ns / 1e9,
                workers=len(pool.threads),
                workers_stuck=pool.stuck,
                workers_replaced=pool.replaced,
            )

    def quiet(self, running: int = 0) -> bool:
        """Nothing to do at the current time (see `wheelbucket.testing.settle`)."""
        pool = self.pool
        aio_quiet = self.aio is None or self.aio.quiet()
        return (
            self.asleep
            and not self.wake.is_set()
            and self.wake_at > self.clock.monotonic_ns()
            and len(self.inbox) < INBOX_BATCH
            and not pool.work
            and not pool.hooks
            and pool.busy_count() <= running
            and aio_quiet
        )

    def describe(self) -> str:
        return (
            f"asleep={self.asleep} wake_set={self.wake.is_set()} wake_at={self.wake_at} "
            f"now={self.clock.monotonic_ns()} inbox={len(self.inbox)} "
            f"live={len(self.tasks)} pool={self.pool.describe()}"
        )

    def state_of(self, task: TaskHandle) -> TaskState:
        return task.state


def _is_coroutine(obj: object) -> bool:
    import inspect

    return inspect.iscoroutine(obj)

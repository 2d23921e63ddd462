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

import inspect
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._log import logger, safe_repr
from .clock import Clock
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
# A queue head that has not moved for this long, while the process stayed
# mostly idle, means the awake workers are blocked: wake one more (see
# Scheduler._watch_stall).
STALL_NS = 2_000_000
# How often take() yields the GIL to the lock's holder before it blocks.
POLITE_TRIES = 100
# Fired timers are handled under the lock in chunks of this size, so a
# storm never holds the lock long enough to stall a caller of fill.
FIRE_CHUNK = 512


def take(lock: threading.RLock) -> None:
    """Acquire the bucket's lock without joining a lock convoy.

    A thread that blocks in ``lock.acquire()`` is woken, on the other core,
    owning the lock, and then waits for the GIL; the GIL's holder soon wants
    the lock back and blocks in turn. Two threads that take the lock often
    (a caller filling, a worker finishing tasks) then switch on every single
    operation: a storm of a million timers made 1.3 million context switches.
    So this never blocks at first: the holder was only preempted inside its
    few bytecodes, and giving it the GIL with ``sleep(0)`` lets it finish.
    """
    if lock.acquire(False):
        return
    sleep = time.sleep
    for _ in range(POLITE_TRIES):
        sleep(0)
        if lock.acquire(False):
            return
    lock.acquire()  # held for long after all (it never is across user code)


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
        workers: int,
        max_extra_workers: int,
        wheel_bits: int,
        wheel_levels: int,
        log_level: int,
        name: str,
        use_uvloop: bool = False,
    ) -> None:
        self.clock = clock
        self.use_uvloop = use_uvloop  # for the asyncio runner, made on first use
        self.tick_ns = tick_ns
        self.log_level = log_level
        self.name = name
        # Re-entrant only so that rescue() can *tell* when a signal handler
        # interrupted this very thread inside a critical section (the handler
        # runs between two bytecodes of the interrupted code): it then raises
        # a clear error instead of deadlocking, or cutting into half-done work.
        self.lock = threading.RLock()
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
        self._last_tick = 0
        # Tasks fired on the last turn whose life-span timer is not filed yet,
        # and the earliest of their deadlines (see _arm).
        self.unarmed: list[TaskHandle] = []
        self.unarmed_soonest = NEVER
        # The stall watch: is the head of the pool's queue moving?
        self.watching = False
        self.stall_head: object = None
        self.stall_since = 0
        self.stall_cpu = 0
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
        wheel_add = wheel.add
        wheel_add_many = wheel.add_many
        task: TaskHandle | None = None
        # This 'while' loop right here is the scheduler.
        while True:
            self.wake_at = AWAKE
            wake.clear()
            # Apply what callers submitted; a bounded batch, so producers
            # cannot keep the loop from firing timers.
            # The common case, a new TIME_BOMB (this runs once per fill), is
            # _reconcile() inlined: file it at its due tick. A filling thread
            # makes hundreds of tasks due in the same tick: the first is
            # added alone, the rest of the run wait in `run` and go in with
            # one add_many (the slot found once) when the tick changes. A run
            # never holds a task twice: fill submits a TIME_BOMB once while
            # WAITING, and every later submission of it follows a change of
            # its state (so it takes the other branch).
            run: list[TaskHandle] = []
            last_tick = -1
            for _ in range(len(inbox)):
                task = inbox.popleft()
                if task._state == WAITING and task._wheel_prev is None:
                    tick = -(-task._due // tick_ns)
                    if tick == last_tick:
                        run.append(task)
                        continue
                    if run:
                        wheel_add_many(run, last_tick)
                        run = []
                    last_tick = tick
                    wheel_add(task, tick)
                else:
                    if run:  # file them first: this may be one of them, drained
                        wheel_add_many(run, last_tick)
                        run = []
                    reconcile(task)
            if run:
                wheel_add_many(run, last_tick)
            task = None  # sleep holding no handle
            run = []
            if self.unarmed:
                self._arm()
            now = clock.monotonic_ns()
            expired = wheel.advance(now // tick_ns)
            if expired:
                self._fire(expired, now)
            if self.stopping:
                break
            nxt = wheel.next_tick()
            deadline = None if nxt is None else nxt * tick_ns
            if self.unarmed and (deadline is None or self.unarmed_soonest < deadline):
                deadline = self.unarmed_soonest
            stall_timeout = self._watch_stall() if self.watching else None
            self.wake_at = NEVER if deadline is None else deadline
            # Look again after publishing wake_at: a submission that came
            # before it saw AWAKE and did not wake us.
            if inbox or (deadline is not None and deadline <= now):
                continue
            self.asleep = True
            clock.wait(wake, deadline, stall_timeout)
            self.asleep = False
        self.wake_at = AWAKE

    def _arm(self) -> None:
        """File the life-span timers of tasks fired on the last turn, if still live."""
        unarmed = self.unarmed
        self.unarmed = []
        self.unarmed_soonest = NEVER
        reconcile = self._reconcile
        for task in unarmed:
            if task._state < ENDED:
                reconcile(task)

    def _reconcile(self, task: TaskHandle) -> None:
        """Make the wheel agree with `task`'s state (scheduler thread only)."""
        state = task._state
        if state >= ENDED:
            if task._wheel_prev is not None:
                self.wheel.remove(task)
        elif task._wheel_prev is None:
            # Ceiling division: a deadline between two ticks belongs to the
            # later one, so nothing ever fires early.
            due = task._due if state == WAITING else task._due + task._life
            tick = -(-due // self.tick_ns)
            # Tasks due in the same tick share one int object: 32 bytes a
            # task saved when they come in bursts, for one comparison.
            if tick == self._last_tick:
                tick = self._last_tick
            else:
                self._last_tick = tick
            self.wheel.add(task, tick)

    def _fire(self, expired: list[Any], now: int) -> None:
        """Handle timers that came due: start tasks, exhaust the overdue."""
        lock = self.lock
        for start in range(0, len(expired), FIRE_CHUNK):
            chunk = expired[start : start + FIRE_CHUNK]
            ready: list[TaskHandle] = []
            endings: list[tuple[TaskHandle, int, Any]] = []
            with lock:
                for task in chunk:
                    state = task._state
                    if state == WAITING and now < task._due + task._life:
                        task._state = QUEUED
                        ready.append(task)
                    elif state < ENDED:
                        endings.append((task, state, self._end_locked(task, EXHAUSTED)))
            if ready:
                # Life-span timers are armed on the next turn of the loop (see
                # _arm), and only for tasks still live then: a short task has
                # ended by then and never costs a wheel add and remove.
                unarmed = self.unarmed
                soonest = self.unarmed_soonest
                for task in ready:
                    end = task._due + task._life
                    if end < soonest:
                        soonest = end
                unarmed.extend(ready)
                self.unarmed_soonest = soonest
                self._dispatch(ready)
            for task, was, ending in endings:
                self._after_end(task, was, ending)
                if "on_task_exhausted" in ending[1].async_hooks:
                    # On the loop, so that stuck workers cannot hold it back.
                    self._aio().call(self._exhausted_job(task, ending))
                else:
                    self.pool.submit_hook(self._exhausted_job(task, ending))
                    self.watching = True

    def _dispatch(self, ready: list[TaskHandle]) -> None:
        sync = ready
        if self.aio is not None or any(_runs_async(t) for t in ready):
            sync = []
            for t in ready:
                if _runs_async(t):
                    self._aio().submit(t)
                else:
                    sync.append(t)
        if sync:
            pool = self.pool
            pool.work.extend(sync)
            pool.nudge()
            self.watching = True

    def _watch_stall(self) -> float | None:
        """One more worker when the work queue is stuck and the process is idle.

        Tasks that block (I/O, sleep, waiting on a lock) release the GIL, and
        then more threads do help: this is how the pool finds out. The head
        of the queue not moving for STALL_NS is not enough, since a worker
        that merely waits for the GIL (say, while another thread fills
        timers) does not move it either, and waking more threads then only
        lengthens the queue for the GIL: a storm of a million timers tripled
        its CPU time that way. So a worker is added only if, meanwhile, the
        process used less than half a core: its threads are blocked, not busy.
        While work is queued the scheduler wakes every STALL_NS to look; with
        nothing queued it does not. Thread progress is a matter of real time,
        so this reads the real clocks even when the bucket runs on a fake one.
        Returns the real seconds to sleep at most, or None.
        """
        now = time.monotonic_ns()
        pool = self.pool
        try:
            head: object = pool.hooks[0] if pool.hooks else pool.work[0]
        except IndexError:
            self.stall_head = None
            self.watching = False
            # Look again: a submit that saw watching=True did not wake us.
            if not (pool.work or pool.hooks):
                return None
            self.watching = True
            head = None
        if head is not self.stall_head:
            self.stall_head = head
            self.stall_since = now
            self.stall_cpu = time.process_time_ns()
        elif now - self.stall_since >= STALL_NS:
            cpu = time.process_time_ns()
            if (cpu - self.stall_cpu) * 2 < now - self.stall_since:
                pool.add_worker()
            self.stall_since = now
            self.stall_cpu = cpu
        return max(0.0, (self.stall_since + STALL_NS - now) / 1e9)

    # -- lifecycle: every state change goes through here ------------------

    def _end_locked(self, task: TaskHandle, ending: int) -> tuple[Any, Any, Any]:
        """Give live `task` its ending. Call with `lock` held, after checking it is live.

        Returns (ctx, plan, data) for the ending hook; the task keeps none of them.
        """
        if task._state == RUNNING:
            self.running -= 1
            if ending != FINISHED and ending != FAILED:
                # Ended under its worker: that thread is stuck in user code.
                ctx = task._ctx
                if ctx is not None and ctx.worker is not None:
                    self.pool.flag_stuck(ctx.worker)
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
            self._after_end_running(task, ctx)
        level = self.log_level
        if logger.isEnabledFor(level):
            logger.log(level, "task %s %s", safe_repr(task.id), task.state.value)

    def _after_end_running(self, task: TaskHandle, ctx: TaskContext) -> None:
        """A task ended under the thread (or coroutine) running it: stop that."""
        ctx._cancel()
        if ctx.worker is not None:
            self.pool.replace()
        elif self.aio is not None:
            self.aio.cancel(ctx)

    def complete(self, task: TaskHandle) -> None:
        """The ending hook is through: the handle is done; run its callbacks."""
        task._state &= ~HOOK_PENDING
        for fn in task._release_waiters():
            # One try per callback: one that raises must not keep the next from running.
            try:
                fn(task)
            except BaseException as exc:  # noqa: PERF203 - KeyboardInterrupt must not kill a worker
                self._hook_failed("done callback", task.id, exc)

    def call_hook(
        self,
        name: str,
        hook: Callable[..., Any] | None,
        task_id: str,
        *args: Any,
        then: TaskHandle | None = None,
        wait: bool = False,
    ) -> None:
        """Call an ending hook; contain and count what it raises; then complete `then`.

        The one place sync ending hooks run. An async hook's coroutine goes to
        the bucket's loop, which completes `then` once it is through; the
        caller waits for that only with `wait` (rescue() does).
        """
        if hook is not None:
            try:
                result = hook(*args)
                if result is not None and inspect.iscoroutine(result):
                    self._aio().run_hook(result, name, task_id, then, wait=wait)
                    return
            except BaseException as exc:  # KeyboardInterrupt, SystemExit from user code too
                self._hook_failed(name, task_id, exc)
        if then is not None:
            self.complete(then)

    def _hook_failed(self, name: str, task_id: str, exc: BaseException) -> None:
        with self.lock:
            self.hook_errors += 1
        log_hook_error(name, task_id, exc)

    def _exhausted_job(self, task: TaskHandle, ending: tuple[Any, Any, Any]) -> Callable[[], None]:
        ctx, plan, data = ending

        def job() -> None:
            hook_ctx = ctx if ctx is not None else self._dead_ctx(task)
            hook = plan.on_task_exhausted
            self.call_hook("on_task_exhausted", hook, task.id, hook_ctx, task.id, data, then=task)

        return job

    def _dead_ctx(self, task: TaskHandle) -> TaskContext:
        """A ctx for the hook of a task that never ran: already cancelled."""
        ctx = TaskContext(task.id, task._deadline / 1e9, self.clock)
        ctx._cancelled = True
        return ctx

    def begin(self, task: TaskHandle, ctx: TaskContext) -> tuple[Any, Any, Any] | None:
        """Claim a queued task for its on_execute: the one place a task starts.

        Returns None if it ended while it queued; ``(None, None, ending)`` if
        its life span ended while it queued (it is EXHAUSTED now, and the
        caller runs the ending's hook: it never starts late); else
        ``(plan, data, None)`` with the task RUNNING under `ctx`.
        """
        take(self.lock)
        try:
            if task._state != QUEUED:
                return None
            now = self.clock.monotonic_ns()
            if now >= task._due + task._life:
                ending = self._end_locked(task, EXHAUSTED)
            else:
                task._state = RUNNING
                self.running += 1
                task._ctx = ctx
                self.lateness.record(now - task._due)
                return task._plan, task._data, None
        finally:
            self.lock.release()
        self._after_end(task, QUEUED, ending)
        return None, None, ending

    def execute(self, task: TaskHandle, worker: Worker | None) -> None:
        """Run `task` on this worker thread: on_execute, then its ending hook."""
        ctx = TaskContext(task.id, (task._due + task._life) / 1e9, self.clock, worker)
        begun = self.begin(task, ctx)
        if begun is None:
            return  # drained, exhausted or rescued while it queued
        plan, data, late = begun
        if late is not None:
            self._exhausted_job(task, late)()
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
        take(self.lock)
        try:
            if task._state != RUNNING:
                return  # ended under us: the ender ran (or runs) its hook
            # _end_locked(), inlined for the two endings a worker gives its
            # own task: this runs once per executed task.
            self.running -= 1
            if failed:
                task._state = FAILED | HOOK_PENDING
                self.failed += 1
            else:
                task._state = FINISHED | HOOK_PENDING
                self.finished += 1
            tasks = self.tasks
            if tasks.get(task_id) is task:
                del tasks[task_id]
            task._ctx = task._plan = None
            task._data = result
            if self.closed and len(tasks) <= self.close_allow:
                self.emptied.set()
        finally:
            self.lock.release()
        if task._wheel_prev is not None:
            # The scheduler takes its life-span timer out of the wheel. One
            # not armed yet never will be (see _arm); in the rare race where
            # the scheduler arms it right now, it is dropped when it fires.
            self.inbox.append(task)
        if logger.isEnabledFor(level):
            logger.log(level, "task %s %s", safe_repr(task_id), "failed" if failed else "finished")
        if failed:
            hook = plan.on_execute_error
            self.call_hook("on_execute_error", hook, task_id, ctx, task_id, data, result, then=task)
        else:
            self.call_hook("on_finish", plan.on_finish, task_id, ctx, task_id, data, then=task)

    # -- caller-side operations -------------------------------------------

    def submit(self, task: TaskHandle, due: int) -> None:
        """Queue a freshly filled IMMEDIATE task for the pool, and the scheduler.

        (fill hands a TIME_BOMB task to the inbox itself.)
        """
        inbox = self.inbox
        inbox.append(task)
        if _runs_async(task):
            self._aio().submit(task)
        else:
            self.pool.submit(task)
            if not self.watching:
                # Queued work needs the stall watch (see _watch_stall).
                self.watching = True
                self.wake.set()
        if due < self.wake_at or not len(inbox) % INBOX_BATCH:
            self.wake.set()

    def drain(self, task_id: str) -> TaskHandle | None:
        """End a live task as DRAINED. Returns None if `task_id` is not live."""
        lock = self.lock
        if not lock.acquire(False):
            take(lock)
        try:
            task = self.tasks.pop(task_id, None)
            if task is None:
                return None
            was = task._state
            if was == RUNNING:
                ending = self._end_locked(task, DRAINED)  # (it is out of the map already)
            else:
                # The common case, _end_locked() inlined (it runs once per drain):
                # a pending task, no hook, no worker to free.
                task._state = DRAINED
                self.drained += 1
                task._plan = task._data = None
                if self.closed and len(self.tasks) <= self.close_allow:
                    self.emptied.set()
        finally:
            lock.release()
        self.inbox.append(task)  # the scheduler takes it out of the wheel
        if was == RUNNING:
            self._after_end_running(task, ending[0])
            task._state = DRAINED
        level = self.log_level
        if logger.isEnabledFor(level):
            logger.log(level, "task %s drained", safe_repr(task_id))
        if task._waiters is not None:
            self.complete(task)
        return task

    def rescue(self) -> list[str]:
        """End every live task as RESCUED and run its on_panic on this thread."""
        self.check_not_interrupted("rescue")
        with self.lock:
            # list() is one C call, so a signal handler that rescues too (the
            # lock is re-entrant) cannot change the map under this loop; and
            # a task it ended already is skipped, not ended twice.
            taken = []
            endings = []
            for task in list(self.tasks.values()):
                state = task._state
                if state < ENDED:
                    taken.append((task, state))
                    endings.append(self._end_locked(task, RESCUED))
        for (task, was), ending in zip(taken, endings, strict=True):
            self._after_end(task, was, ending)
        for (task, _), (ctx, plan, data) in zip(taken, endings, strict=True):
            hook_ctx = ctx if ctx is not None else self._dead_ctx(task)
            # wait: rescue() returns after every on_panic, async ones included
            # (but on the loop thread, which cannot wait for itself).
            self.call_hook(
                "on_panic", plan.on_panic, task.id, hook_ctx, task.id, data, then=task, wait=True
            )
        return [task.id for task, _ in taken]

    def check_not_interrupted(self, what: str) -> None:
        """Refuse to run inside a signal handler that cut into our own critical section."""
        if self.lock._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError(
                f"{what}() was called from a signal handler that interrupted this thread "
                "while it held the bucket's lock (inside fill, drain or stats); raise an "
                f"exception in the handler and call {what}() in an except or finally block"
            )

    def drain_all(self) -> int:
        # All at once under the lock, as rescue() does: draining one id at a
        # time let a worker freed by an earlier drain start a queued task.
        with self.lock:
            taken = [(task, task._state) for task in self.tasks.values()]
            endings = [self._end_locked(task, DRAINED) for task, _ in taken]
        for (task, was), ending in zip(taken, endings, strict=True):
            self._after_end(task, was, ending)
            self.complete(task)  # no hook for a drain: the handle is done now
        return len(taken)

    def close(
        self, *, wait: bool, timeout: float | None, rescue: bool, join_timeout: float
    ) -> None:
        self.check_not_interrupted("close")
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
        if self.aio is not None:
            # After the pool (whose hooks may still await on the loop), before
            # the leftover hooks below (the loop hands sync hooks to the pool).
            self.aio.stop(join_timeout)
        # Ending hooks still queued (every worker stuck, say) run here, so
        # that when close() returns every ending has had its hook.
        hooks = self.pool.hooks
        while hooks:
            try:
                job = hooks.popleft()
            except IndexError:
                break
            job()
        self.close_done.set()

    def _on_own_thread(self) -> bool:
        current = threading.current_thread()
        aio = self.aio
        return (
            current is self.thread
            or (aio is not None and current is aio.thread)
            or any(w.thread is current for w in list(self.pool.threads))
        )

    def _wait_empty(self, timeout: float | None) -> None:
        current = threading.current_thread()
        me: Worker | None = None
        # On the event loop thread no async task can move while close() blocks.
        on_loop = self.aio is not None and current is self.aio.thread
        with self.lock:
            # From inside a hook, close() does not wait for the caller's own task.
            self.close_allow = sum(
                1
                for task in self.tasks.values()
                if (on_loop and _runs_async(task))
                or (
                    task._ctx is not None
                    and task._ctx.worker is not None
                    and getattr(task._ctx.worker, "thread", None) is current
                )
            )
            if len(self.tasks) <= self.close_allow:
                return
            self.emptied.clear()
            # A worker that waits here is as good as stuck: lend its place, so
            # that tasks coming due meanwhile still find a thread to run on.
            me = next((w for w in self.pool.threads if w.thread is current), None)
            if me is not None:
                self.pool.flag_stuck(me)
        if me is not None:
            self.pool.replace()
        clock = self.clock
        deadline = None if timeout is None else clock.monotonic_ns() + round(timeout * 1e9)
        while len(self.tasks) > self.close_allow:
            if deadline is not None and clock.monotonic_ns() >= deadline:
                return
            clock.wait(self.emptied, deadline)

    def _aio(self) -> Any:
        aio = self.aio
        if aio is None:
            from ._aio import runner_for

            aio = runner_for(self)
        return aio

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
        aio = self.aio
        # `running` counts blocked workers and blocked coroutines alike.
        in_flight = 0 if aio is None else aio.inflight
        return (
            self.asleep
            and not self.wake.is_set()
            and self.wake_at > self.clock.monotonic_ns()
            and len(self.inbox) < INBOX_BATCH
            and not pool.work
            and not pool.hooks
            and pool.busy_count() + in_flight <= running
        )

    def describe(self) -> str:
        return (
            f"asleep={self.asleep} wake_set={self.wake.is_set()} wake_at={self.wake_at} "
            f"now={self.clock.monotonic_ns()} inbox={len(self.inbox)} "
            f"live={len(self.tasks)} pool={self.pool.describe()} "
            f"aio_inflight={None if self.aio is None else self.aio.inflight}"
        )


def _runs_async(task: TaskHandle) -> bool:
    """`task` has an async on_execute. Read without the lock: a task that ended
    since it was queued has no plan any more, and the pool's execute() drops it."""
    plan = task._plan
    return plan is not None and bool(plan.is_async)

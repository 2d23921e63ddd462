"""The task lifecycle: the lock, the id map, the counters, and every state change.

This module owns the state that several threads share: which tasks are live
(`Lifecycle.tasks`), what state each is in, and the counters `stats()`
reports. Every change to it is a method here, made under `Lifecycle.lock`
for a few bytecodes and never across user code or a wait:

* `admit`: a filled task enters the map;
* `begin`: a queued task starts (or turns out to be over);
* `finish`: its on_execute came back;
* `end_locked` / `take_all`: any other ending (exhausted, drained, rescued);
* `drain`, `reset`, `fired`: the caller-side and scheduler-side operations
  built on those.

Every ending is decided here, by whichever thread gets there first, and
returned to that thread alone as an `Ending`: that is how each task gets
exactly one ending and one hook. What happens next (cancelling the ``ctx``,
unfiling the timer, running the hook) is the caller's business: this module
calls no user code and starts no thread.

The layers it talks to are handed in as callables: `unfile` and `move`
(the scheduler's inbox: take a timer out of the wheel, or move it earlier)
and `stuck` (the pool, told that a worker's task ended under it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ._args import duration_ns
from ._log import safe_repr
from .errors import BucketClosed, BucketFull, TaskExists
from .stats import LatenessHistogram
from .task import (
    DRAINED,
    ENDED,
    EXHAUSTED,
    FAILED,
    FINISHED,
    HOOK_PENDING,
    IMMEDIATE_FILL,
    QUEUED,
    RESCUED,
    RUNNING,
    WAITING,
    TaskContext,
    TaskHandle,
)

__all__ = ["Ending", "Lifecycle", "take"]

# How often take() yields the GIL to the lock's holder before it blocks.
POLITE_TRIES = 100


def take(lock: threading.RLock) -> None:
    """Acquire the bucket's lock without joining a lock convoy.

    A thread that blocks in ``lock.acquire()`` is woken, on the other core,
    owning the lock, and then waits for the GIL; the GIL's holder soon wants
    the lock back and blocks in turn. Two threads that take the lock often
    (a caller filling, a worker finishing tasks) then switch on every single
    operation (docs/design.md, "No lock convoys"). So this never blocks at
    first: the holder was only preempted inside its few bytecodes, and giving
    it the GIL with ``sleep(0)`` lets it finish.
    """
    if lock.acquire(False):
        return
    sleep = time.sleep
    for _ in range(POLITE_TRIES):
        sleep(0)
        if lock.acquire(False):
            return
    lock.acquire()  # held for long after all (it never is across user code)


class Ending(NamedTuple):
    """What the thread that ended a task needs for its hook; the task keeps none of it."""

    task: TaskHandle
    was: int  # the state it ended from
    ctx: TaskContext | None  # its ctx if it had started
    plan: Any  # its HookPlan
    data: Any  # its data (never the outcome)


class Lifecycle:
    """The shared state of one bucket's tasks, and every change to it."""

    def __init__(
        self,
        *,
        clock_ns: Callable[[], int],
        unfile: Callable[[TaskHandle], object],
        move: Callable[[TaskHandle, int], object],
        stuck: Callable[[Any], None],
    ) -> None:
        self.clock_ns = clock_ns
        self._unfile = unfile
        self._move = move
        self._stuck = stuck
        # Re-entrant only so that rescue() can *tell* when a signal handler
        # interrupted this very thread inside a critical section (the handler
        # runs between two bytecodes of the interrupted code): it then raises
        # a clear error instead of deadlocking, or cutting into half-done work.
        self.lock = threading.RLock()
        # Invariant: tasks maps the id of every live task (state < ENDED) to
        # it, in fill order; it changes only under `lock`.
        self.tasks: dict[str, TaskHandle] = {}
        # Invariant: closed only goes from False to True, under `lock`.
        self.closed = False
        # Live tasks that close(wait=True) does not wait for (the caller's own).
        self.close_allow = 0
        # Invariant: set while closed and len(tasks) <= close_allow (see _ended).
        self.emptied = threading.Event()
        # Counters, changed under `lock`.
        # Invariant: filled == finished + failed + exhausted + drained
        #   + rescued + len(tasks), and running == the RUNNING tasks in `tasks`.
        self.filled = 0
        self.finished = 0
        self.failed = 0
        self.exhausted = 0
        self.drained = 0
        self.rescued = 0
        self.resets = 0
        self.rejected_full = 0
        self.rejected_duplicate = 0
        self.running = 0
        self.lateness = LatenessHistogram()
        # The same, for async on_execute starts alone: how long an event
        # loop kept coroutines waiting (a busy application loop shows here).
        self.loop_lateness = LatenessHistogram()

    # -- entering -----------------------------------------------------------

    def admit(self, task: TaskHandle, max_bucket: int) -> None:
        """Put a freshly made task in the map, or refuse it and change nothing.

        Raises BucketClosed, TaskExists or BucketFull. Runtime complexity: O(1).
        """
        lock = self.lock
        if not lock.acquire(False):
            take(lock)  # see take(): never join a lock convoy
        try:
            if self.closed:
                raise BucketClosed(f"bucket is closed: cannot fill {safe_repr(task.id)}")
            tasks = self.tasks
            task_id = task.id
            if task_id in tasks:
                self.rejected_duplicate += 1
                raise TaskExists(f"task {safe_repr(task_id)} is already in the bucket")
            if len(tasks) >= max_bucket:
                self.rejected_full += 1
                raise BucketFull(
                    f"bucket is full (max_bucket={max_bucket} live tasks): "
                    f"cannot fill {safe_repr(task.id)}"
                )
            tasks[task_id] = task
            self.filled += 1
        finally:
            lock.release()

    # -- running --------------------------------------------------------------

    def begin(self, task: TaskHandle, ctx: TaskContext) -> Ending | bool:
        """Claim a queued task for its on_execute: the one place a task starts.

        Returns True with the task RUNNING under `ctx`; False if it ended
        while it queued; an `Ending` if its life span ended while it queued
        (it is EXHAUSTED now, and the caller runs the ending's hook: a task
        never starts late).
        """
        lock = self.lock
        take(lock)
        try:
            if task._state != QUEUED:
                return False
            now = self.clock_ns()
            deadline = task._due + task._life
            if now >= deadline:
                ending = self.end_locked(task, EXHAUSTED)
            else:
                task._state = RUNNING
                self.running += 1
                # reset() may have moved the deadline since ctx was made.
                ctx.deadline = deadline / 1e9
                task._ctx = ctx
                self.lateness.record(now - task._due)
                if ctx.worker is None:
                    self.loop_lateness.record(now - task._due)
                return True
        finally:
            lock.release()
        self._unfile(task)
        return ending

    def finish(self, task: TaskHandle, outcome: Any, failed: bool) -> bool:
        """on_execute came back: end `task` FINISHED or FAILED with `outcome`.

        Returns False if the task had ended under it meanwhile (its ender
        runs the hook, and `outcome` is ignored). Runtime complexity: O(1).
        """
        lock = self.lock
        take(lock)
        try:
            if task._state != RUNNING:
                return False
            # end_locked(), inlined for the two endings a task gives itself:
            # this runs once per executed task.
            self.running -= 1
            if failed:
                task._state = FAILED | HOOK_PENDING
                self.failed += 1
            else:
                task._state = FINISHED | HOOK_PENDING
                self.finished += 1
            tasks = self.tasks
            if tasks.get(task.id) is task:
                del tasks[task.id]
            task._ctx = task._plan = task._fill = None
            task._data = outcome
            if self.closed:
                self._ended()
        finally:
            lock.release()
        if task._wheel_prev is not None:
            # The scheduler takes its life-span timer out of the wheel. One
            # not armed yet never will be; in the rare race where the
            # scheduler arms it right now, it is dropped when it fires.
            self._unfile(task)
        return True

    # -- endings --------------------------------------------------------------

    def end_locked(self, task: TaskHandle, ending: int) -> Ending:
        """Give live `task` its ending. Call with `lock` held, after checking it is live."""
        was = task._state
        ctx = task._ctx
        if was == RUNNING:
            self.running -= 1
            if ending != FINISHED and ending != FAILED and ctx is not None and ctx.worker:
                # Ended under its worker: that thread is stuck in user code.
                self._stuck(ctx.worker)
        task._state = ending | HOOK_PENDING
        tasks = self.tasks
        if tasks.get(task.id) is task:
            del tasks[task.id]
        if ending == EXHAUSTED:
            self.exhausted += 1
        elif ending == DRAINED:
            self.drained += 1
        elif ending == RESCUED:
            self.rescued += 1
        elif ending == FINISHED:
            self.finished += 1
        else:
            self.failed += 1
        plan = task._plan
        data = task._data
        task._ctx = task._plan = task._data = task._fill = None
        if self.closed:
            self._ended()
        return Ending(task, was, ctx, plan, data)

    def _ended(self) -> None:
        """After an ending while closed: the one place "closed and now empty" is decided."""
        if len(self.tasks) <= self.close_allow:
            self.emptied.set()

    def drain(self, task_id: str) -> TaskHandle | Ending | None:
        """End live `task_id` as DRAINED; None if it is not live. Runtime complexity: O(1).

        Returns an `Ending` for a running task (its runner must be stopped),
        else the task itself: it was pending, so there is nothing to stop and
        no hook, and building an `Ending` would cost the common case for
        nothing.
        """
        lock = self.lock
        if not lock.acquire(False):
            take(lock)
        try:
            task = self.tasks.pop(task_id, None)
            if task is None:
                return None
            if task._state == RUNNING:
                ending: TaskHandle | Ending = self.end_locked(task, DRAINED)
            else:
                # The common case, end_locked() inlined (it runs once per drain).
                task._state = DRAINED
                self.drained += 1
                task._plan = task._data = task._fill = None
                if self.closed:
                    self._ended()
                ending = task
        finally:
            lock.release()
        self._unfile(task)  # the scheduler takes it out of the wheel
        return ending

    def take_all(self, ending: int) -> list[Ending]:
        """End every live task with `ending` (DRAINED or RESCUED), at once, in fill order.

        All under one hold of the lock: ending one id at a time let a worker
        freed by an earlier ending start a queued task.
        """
        with self.lock:
            # list() is one C call, so a signal handler that rescues too (the
            # lock is re-entrant) cannot change the map under this loop.
            endings = [self.end_locked(task, ending) for task in list(self.tasks.values())]
        for e in endings:
            self._unfile(e.task)
        return endings

    def fired(
        self, chunk: list[Any], now: int
    ) -> tuple[list[TaskHandle], list[Ending], list[TaskHandle]]:
        """Timers that came due at `now`: (to start, exhausted, to file again).

        A run-after timer queues its task, unless its life span is over too;
        a life-span timer exhausts it. A task whose times a reset moved later
        after its timer was filed is filed again instead (reset leaves such
        timers where they are: see docs/wheel.md).
        """
        ready: list[TaskHandle] = []
        endings: list[Ending] = []
        refile: list[TaskHandle] = []
        with self.lock:
            for task in chunk:
                state = task._state
                if state >= ENDED:
                    continue
                if now >= task._due + task._life:
                    endings.append(self.end_locked(task, EXHAUSTED))
                elif state != WAITING:
                    refile.append(task)  # its life span was moved later
                elif now < task._due:
                    refile.append(task)  # its start was moved later
                else:
                    task._state = QUEUED
                    ready.append(task)
        return ready, endings, refile

    def reset(self, task_id: str, delay: int | None, span: int | None) -> TaskHandle | None:
        """Move live `task_id`'s timers (SPEC, reset); None if it is not live.

        `delay` / `span` are ns, None for "as filled". Raises ValueError (and
        changes nothing) for a run-after on a task that is not waiting for
        its start, or a life span not longer than the run-after.
        Runtime complexity: O(1); see docs/wheel.md for when the timer moves.
        """
        lock = self.lock
        if not lock.acquire(False):
            take(lock)
        try:
            task = self.tasks.get(task_id)
            if task is None:
                return None
            state = task._state
            fill = task._fill
            if type(fill) is tuple:
                fill_delay, fill_span = fill
            elif fill is IMMEDIATE_FILL:
                fill_delay = -1
                fill_span = task._life  # (due is the fill time)
            else:  # the caller's run_after (checked at fill: it converts)
                fill_delay = duration_ns(fill, "run_after", zero_ok=True)
                fill_span = fill_delay + task._life
            now = self.clock_ns()
            old = task._due if state == WAITING else task._due + task._life
            if span is None:
                span = fill_span
            if state == WAITING or (state == QUEUED and fill_delay >= 0):
                # A TIME_BOMB that has not started: queued for a worker is
                # pending too, and it goes back to waiting for its new time
                # (the pool drops the stale queue entry: see begin()).
                if delay is None:
                    delay = fill_delay
                if span <= delay:
                    raise ValueError(
                        f"life_span ({span / 1e9:g} s) must be greater than run_after "
                        f"({delay / 1e9:g} s) for a TIME_BOMB task"
                    )
                task._fill = (fill_delay, fill_span)  # _life changes: keep what it was
                task._due = due = now + delay
                task._life = span - delay
                new = due
                if state == QUEUED:
                    task._state = WAITING
                    old = new + 1  # not filed for its start any more: file it
            else:
                if delay is not None:
                    raise ValueError(
                        f"run_after applies only to a TIME_BOMB task waiting to start; "
                        f"task {task_id!r} is {task.state.value}"
                    )
                new = now + span
                task._fill = (fill_delay, fill_span)
                task._life = new - task._due
                ctx = task._ctx
                if ctx is not None:
                    ctx.deadline = new / 1e9
            self.resets += 1
        finally:
            lock.release()
        if new < old:
            # Earlier than the timer filed for it: the scheduler moves it. A
            # later time needs nothing: the old timer fires first and files
            # the task again then (lazily, once, however often it moved).
            self._move(task, new)
        return task

    # -- introspection --------------------------------------------------------

    def _check(self) -> None:
        """Assert every invariant that holds at any moment. For tests. O(n)."""
        with self.lock:
            tasks = self.tasks
            running = 0
            for task_id, task in tasks.items():
                assert task.id == task_id, (task_id, task)
                assert task._state < ENDED, task
                assert task._plan is not None, task
                assert task._fill is not None, task
                if task._state == RUNNING:
                    running += 1
                    assert task._ctx is not None, task
            assert running == self.running, (running, self.running)
            ended = self.finished + self.failed + self.exhausted + self.drained + self.rescued
            assert self.filled == ended + len(tasks), (self.filled, ended, len(tasks))
            if self.closed and len(tasks) <= self.close_allow:
                assert self.emptied.is_set()

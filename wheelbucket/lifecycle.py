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

Records and handles (task.py): a task waiting to start is a tuple record,
and becomes a `Task` when its run-after timer fires; the handles are views
that find the task here by id and token while it lives, and its ending in
its `Book`'s mailbox after. The timers are the scheduler's: it files ids and
generations, and drops a stale filing when it comes out (lazy deletion), so
ending or moving a task later never reaches into the wheel. The layers it
talks to are handed in as callables: `move` (the scheduler's: file a timer
moved earlier) and `stuck` (the pool, told that a worker's task ended under
it).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from ._args import duration_ns
from ._log import safe_repr
from .errors import BucketClosed, BucketFull, TaskExists
from .executor import PlanTable
from .stats import LatenessHistogram
from .task import (
    DRAINED,
    EXHAUSTED,
    FAILED,
    FINISHED,
    HOOK_PENDING,
    IMMEDIATE_FILL,
    MOVED,
    QUEUED,
    R_DATA,
    R_DUE,
    R_FILL,
    R_GEN,
    R_LIFE,
    R_PLAN,
    R_TOKEN,
    REFS_UNHELD,
    RESCUED,
    RUNNING,
    WAITING,
    Book,
    Record,
    Task,
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

    task: Task
    was: int  # the state it ended from
    ctx: TaskContext | None  # its ctx if it had started
    plan: Any  # its HookPlan
    data: Any  # its data (never the outcome)


_getrefcount = sys.getrefcount


class Lifecycle:
    """The shared state of one bucket's tasks, and every change to it."""

    def __init__(
        self,
        *,
        clock_ns: Callable[[], int],
        move: Callable[[str, int], object],
        stuck: Callable[[Any], None],
    ) -> None:
        self.clock_ns = clock_ns
        self._move = move
        self._stuck = stuck
        # Re-entrant only so that rescue() can *tell* when a signal handler
        # interrupted this very thread inside a critical section (the handler
        # runs between two bytecodes of the interrupted code): it then raises
        # a clear error instead of deadlocking, or cutting into half-done work.
        self.lock = threading.RLock()
        # Invariant: tasks maps the id of every live task to its record (a
        #   tuple, while it waits to start) or its Task (queued or running),
        #   in fill order; it changes only under `lock`.
        self.tasks: dict[str, Record | Task] = {}
        # The executor of records whose plan is None (set by the bucket).
        self.default_plan: Any = None
        # Other executors' plans, by slot: a record holds its plan's slot,
        # an int, so that it holds no object the collector would visit.
        self.plan_table = table = PlanTable()
        self.plans = table.plans
        self.plan_uses = table.uses
        self.slot_of = table.slot_of
        self._intern = table.intern
        self._unintern = table.unintern
        # Where handles find their tasks, and their endings once over.
        self.book = Book(self.tasks, self.lock)
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

    def admit(
        self, task_id: str, rec: Record | Task, max_bucket: int, plan: Any = None
    ) -> Record | Task:
        """Put a freshly made record (or IMMEDIATE Task) in the map, or refuse it.

        A record of a per-fill executor comes with its `plan`, and with the
        slot the caller read for it without the lock (-1 if none): checked
        here, and the record made anew only if the slot has changed hands.
        Returns what went in the map. Raises BucketClosed, TaskExists or
        BucketFull, and changes nothing then. Runtime complexity: O(1).
        """
        lock = self.lock
        if not lock.acquire(False):
            take(lock)  # see take(): never join a lock convoy
        try:
            if self.closed:
                raise BucketClosed(f"bucket is closed: cannot fill {safe_repr(task_id)}")
            tasks = self.tasks
            if task_id in tasks:
                self.rejected_duplicate += 1
                raise TaskExists(f"task {safe_repr(task_id)} is already in the bucket")
            if len(tasks) >= max_bucket:
                self.rejected_full += 1
                raise BucketFull(
                    f"bucket is full (max_bucket={max_bucket} live tasks): "
                    f"cannot fill {safe_repr(task_id)}"
                )
            if plan is not None:
                slot = rec[R_PLAN]  # type: ignore[index]
                if slot >= 0 and self.plans[slot] is plan:
                    self.plan_uses[slot] += 1
                else:
                    rec = (*rec[:R_PLAN], self._intern(plan), *rec[R_PLAN + 1 :])  # type: ignore[index]
            tasks[task_id] = rec
            self.filled += 1
        finally:
            lock.release()
        return rec

    def plan_of(self, rec: Record) -> Any:
        """The HookPlan of record `rec` (read without the lock: for a quick look)."""
        slot = rec[R_PLAN]
        return self.default_plan if slot is None else self.plans[slot]

    def _task_of(self, task_id: str, rec: Record, state: int) -> Task:
        """Make the Task of waiting record `rec`, in its place in the map. Under `lock`."""
        slot = rec[R_PLAN]
        task = Task(
            task_id,
            rec[R_TOKEN],
            rec[R_DATA],
            self.default_plan if slot is None else self._unintern(slot),
            state,
            rec[R_DUE],
            rec[R_LIFE],
            rec[R_GEN],
            rec[R_FILL],
        )
        self.tasks[task_id] = task
        return task

    # -- running --------------------------------------------------------------

    def begin(self, task: Task, ctx: TaskContext) -> Ending | bool:
        """Claim a queued task for its on_execute: the one place a task starts.

        Returns True with the task RUNNING under `ctx`; False if it ended
        (or went back to waiting) while it queued; an `Ending` if its life
        span ended while it queued (it is EXHAUSTED now, and the caller runs
        the ending's hook: a task never starts late).
        """
        lock = self.lock
        take(lock)
        try:
            if task._state != QUEUED:
                return False
            now = self.clock_ns()
            deadline = task._due + task._life
            if now >= deadline:
                return self.end_locked(task, EXHAUSTED)
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

    def finish(self, task: Task, outcome: Any, failed: bool) -> bool:
        """on_execute came back: end `task` FINISHED or FAILED with `outcome`.

        Returns False if the task had ended under it meanwhile (its ender
        runs the hook, and `outcome` is ignored). Its life-span timer is left
        to come out stale. Runtime complexity: O(1).
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
                state = FAILED | HOOK_PENDING
                self.failed += 1
            else:
                state = FINISHED | HOOK_PENDING
                self.finished += 1
            if _getrefcount(task._token) > REFS_UNHELD:
                self.book.post(task._token, state, outcome)  # before it leaves the map
            task._state = state
            tasks = self.tasks
            if tasks.get(task.id) is task:
                del tasks[task.id]
            task._ctx = task._plan = task._fill = None
            task._data = outcome
            if self.closed:
                self._ended()
        finally:
            lock.release()
        return True

    # -- endings --------------------------------------------------------------

    def end_locked(self, task: Task, ending: int) -> Ending:
        """Give live `task` its ending. Call with `lock` held, after checking it is live."""
        was = task._state
        ctx = task._ctx
        if was == RUNNING:
            self.running -= 1
            if ending != FINISHED and ending != FAILED and ctx is not None and ctx.worker:
                # Ended under its worker: that thread is stuck in user code.
                self._stuck(ctx.worker)
        if _getrefcount(task._token) > REFS_UNHELD:
            self.book.post(task._token, ending | HOOK_PENDING, None)
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

    def drain(self, task_id: str) -> int | Ending | None:
        """End live `task_id` as DRAINED; None if it is not live. Runtime complexity: O(1).

        Returns an `Ending` for a running task (its runner must be stopped),
        else the task's token: it was pending, so there is nothing to stop
        and no hook, and building an `Ending` would cost the common case for
        nothing. Its timer comes out stale later (or a purge drops it).
        """
        lock = self.lock
        if not lock.acquire(False):
            take(lock)
        try:
            # One probe of the (big, cold) map. The post comes after it, still
            # under the lock, which a handle that finds neither waits for.
            rec = self.tasks.pop(task_id, None)
            if rec is None:
                return None
            if isinstance(rec, tuple):
                # The common case, end_locked() inlined (it runs once per drain).
                if _getrefcount(rec[R_TOKEN]) > REFS_UNHELD:
                    self.book.post(rec[R_TOKEN], DRAINED, None)
                if rec[R_PLAN] is not None:
                    self._unintern(rec[R_PLAN])
                self.drained += 1
                if self.closed:
                    self._ended()
                token: int = rec[R_TOKEN]
                return token
            if rec._state == RUNNING:
                return self.end_locked(rec, DRAINED)
            if _getrefcount(rec._token) > REFS_UNHELD:
                self.book.post(rec._token, DRAINED, None)
            rec._state = DRAINED
            self.drained += 1
            rec._plan = rec._data = rec._fill = None
            if self.closed:
                self._ended()
            return rec._token
        finally:
            lock.release()

    def take_all(self, ending: int) -> list[Ending]:
        """End every live task with `ending` (DRAINED or RESCUED), at once, in fill order.

        All under one hold of the lock: ending one id at a time let a worker
        freed by an earlier ending start a queued task.
        """
        with self.lock:
            # list() is one C call, so a signal handler that rescues too (the
            # lock is re-entrant) cannot change the map under this loop.
            endings = []
            for task_id, rec in list(self.tasks.items()):
                task = self._task_of(task_id, rec, WAITING) if isinstance(rec, tuple) else rec
                endings.append(self.end_locked(task, ending))
        return endings

    def fired(
        self, keys: list[str], gens: list[int], now: int
    ) -> tuple[list[Task], list[Ending], list[str]]:
        """Filings that came due at `now`: (tasks to start, endings, ids to file again).

        A filing whose task ended, or whose generation is not the task's
        (reset moved its timer earlier and filed it anew), is stale and
        dropped. A run-after timer queues its task, unless its life span is
        over too; a life-span timer exhausts it. A task whose times moved
        later after its timer was filed is filed again instead (reset leaves
        such timers where they are: see docs/wheel.md).
        """
        ready: list[Task] = []
        endings: list[Ending] = []
        refile: list[str] = []
        tasks = self.tasks
        with self.lock:
            for i, task_id in enumerate(keys):
                rec = tasks.get(task_id)
                if rec is None:
                    continue
                if isinstance(rec, tuple):
                    if rec[R_GEN] != gens[i]:
                        continue
                    due = rec[R_DUE]
                    if now < due:
                        refile.append(task_id)  # its start was moved later
                        continue
                    task = self._task_of(task_id, rec, QUEUED)
                    if now >= due + rec[R_LIFE]:
                        endings.append(self.end_locked(task, EXHAUSTED))
                    else:
                        ready.append(task)
                elif rec._gen == gens[i]:
                    if now >= rec._due + rec._life:
                        endings.append(self.end_locked(rec, EXHAUSTED))
                    else:
                        refile.append(task_id)  # its life span was moved later
        return ready, endings, refile

    def current(self, task_id: str, gen: int) -> bool:
        """A filing (task_id, gen) is not stale: the task is live in that generation."""
        rec = self.tasks.get(task_id)
        if rec is None:
            return False
        if isinstance(rec, tuple):
            return bool(rec[R_GEN] == gen)
        return rec._gen == gen

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
            rec = self.tasks.get(task_id)
            if rec is None:
                return None
            if isinstance(rec, tuple):
                task = None
                state = WAITING
                token, due, life, gen, plan, data, fill = rec
            else:
                task = rec
                state = task._state
                token, due, life, gen, fill = (
                    task._token,
                    task._due,
                    task._life,
                    task._gen,
                    task._fill,
                )
            if type(fill) is tuple:
                fill_delay, fill_span = fill
            elif fill is IMMEDIATE_FILL:
                fill_delay = -1
                fill_span = life  # (due is the fill time)
            else:  # the caller's run_after (checked at fill: it converts)
                fill_delay = duration_ns(fill, "run_after", zero_ok=True)
                fill_span = fill_delay + life
            now = self.clock_ns()
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
                new = now + delay
                earlier = task is not None or new < due
                if earlier:
                    gen = (gen + 1) & 255  # the filing out there goes stale
                if task is not None:
                    plan = None if task._plan is self.default_plan else self._intern(task._plan)
                    data = task._data
                    task._state = MOVED
                self.tasks[task_id] = (
                    token,
                    new,
                    span - delay,
                    gen,
                    plan,
                    data,
                    (fill_delay, fill_span),
                )
            else:
                if delay is not None:
                    raise ValueError(
                        f"run_after applies only to a TIME_BOMB task waiting to start; "
                        f"task {task_id!r} is {rec.state.value}"  # type: ignore[union-attr]
                    )
                assert task is not None
                new = now + span
                earlier = new < due + life
                if earlier:
                    task._gen = (gen + 1) & 255
                task._fill = (fill_delay, fill_span)
                task._life = new - due
                ctx = task._ctx
                if ctx is not None:
                    ctx.deadline = new / 1e9
            self.resets += 1
            handle = TaskHandle(self.book, task_id, token)
        finally:
            lock.release()
        if earlier:
            # Earlier than the timer filed for it: the scheduler files it
            # anew. A later time needs nothing: the old timer fires first and
            # files the task again then (lazily, once, however often it moved).
            self._move(task_id, new)
        return handle

    def handle_of(self, task_id: str) -> TaskHandle | None:
        """A handle of live task `task_id`, or None."""
        with self.lock:
            rec = self.tasks.get(task_id)
            if rec is None:
                return None
            token = rec[R_TOKEN] if isinstance(rec, tuple) else rec._token
            return TaskHandle(self.book, task_id, token)

    # -- introspection --------------------------------------------------------

    def _check(self) -> None:
        """Assert every invariant that holds at any moment. For tests. O(n)."""
        with self.lock:
            tasks = self.tasks
            running = 0
            for task_id, rec in tasks.items():
                if isinstance(rec, tuple):
                    assert len(rec) == 7, rec
                    assert 0 <= rec[R_GEN] <= 255, rec
                    assert rec[R_FILL] is not None, rec
                    assert rec[R_LIFE] > 0, rec
                    continue
                task = rec
                assert task.id == task_id, (task_id, task)
                assert task._state in (QUEUED, RUNNING), task
                assert task._plan is not None, task
                assert task._fill is not None, task
                if task._state == RUNNING:
                    running += 1
                    assert task._ctx is not None, task
            assert running == self.running, (running, self.running)
            uses = [0] * len(self.plans)
            for rec in tasks.values():
                if isinstance(rec, tuple) and rec[R_PLAN] is not None:
                    uses[rec[R_PLAN]] += 1
            assert uses == self.plan_uses, (uses, self.plan_uses)
            self.plan_table.check()
            ended = self.finished + self.failed + self.exhausted + self.drained + self.rescued
            assert self.filled == ended + len(tasks), (self.filled, ended, len(tasks))
            if self.closed and len(tasks) <= self.close_allow:
                assert self.emptied.is_set()

"""Tasks: the record the bucket keeps, the handle `fill` returns, the `ctx` hooks get.

A task's record *is* its handle: `fill` returns the very object the bucket
files in its map and its wheel, so a handle costs nothing extra until
someone waits on it (then a small waiter object is made). A `TaskContext`
is made only when `on_execute` starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from ._log import logger, safe_repr
from .errors import TaskDrained, TaskExhausted, TaskRescued
from .wheel import TimerEntry

if TYPE_CHECKING:
    from .clock import Clock

__all__ = ["TaskContext", "TaskHandle", "TaskState", "TaskType"]


class TaskType(enum.Enum):
    """When a task runs: at once, or after its run-after delay."""

    IMMEDIATE = "immediate"
    TIME_BOMB = "time_bomb"


class TaskState(enum.Enum):
    """Where a task is in its life. The last five are endings."""

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    EXHAUSTED = "exhausted"
    DRAINED = "drained"
    RESCUED = "rescued"


# The internal state is a small int so the hot paths compare ints, not enum
# members. WAITING (on the run-after timer) and QUEUED (for a worker) are
# both PENDING to the user.
WAITING = 0
QUEUED = 1
RUNNING = 2
FINISHED = 3
FAILED = 4
EXHAUSTED = 5
DRAINED = 6
RESCUED = 7
ENDED = FINISHED  # state >= ENDED  <=>  the task has its ending
# TaskHandle._fill of an IMMEDIATE task that was never reset.
IMMEDIATE_FILL = -1
# Or-ed into an ending while its hook has not returned yet: the handle is
# done (and waiters wake) only once the hook is through.
HOOK_PENDING = 16

_PUBLIC_STATE = (
    TaskState.PENDING,
    TaskState.PENDING,
    TaskState.RUNNING,
    TaskState.FINISHED,
    TaskState.FAILED,
    TaskState.EXHAUSTED,
    TaskState.DRAINED,
    TaskState.RESCUED,
)

_ENDING_ERROR: dict[int, type[Exception]] = {
    EXHAUSTED: TaskExhausted,
    DRAINED: TaskDrained,
    RESCUED: TaskRescued,
}


# What runs a done callback added after the task ended (calls.Calls.callback):
# it contains and counts what the callback raises.
Runner = Callable[[Callable[["TaskHandle"], object], "TaskHandle"], None]


class _Waiters:
    """What a handle needs once somebody waits on it; made on first use."""

    __slots__ = ("callbacks", "event", "lock", "runner")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.lock = threading.RLock()  # re-entrant for rescue() in a signal handler
        # Invariant: None once the task has ended and its callbacks were taken.
        self.callbacks: list[Callable[[TaskHandle], object]] | None = []
        # Set when the task is done, by its bucket: runs late callbacks.
        self.runner: Runner | None = None

    def release(self) -> list[Callable[[TaskHandle], object]]:
        with self.lock:
            callbacks, self.callbacks = self.callbacks, None
        self.event.set()
        return callbacks or []


# Orders the lazy creation of a handle's _Waiters against its ending.
_WAITERS_LOCK = threading.Lock()


def _reinit_after_fork() -> None:
    # A thread of the parent may have held it at fork(): the child's copy
    # would stay locked forever (CPython's threading.py does the same).
    _WAITERS_LOCK._at_fork_reinit()  # type: ignore[attr-defined]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


class TaskHandle(TimerEntry):
    """A filled task, as `fill` returns it.

    Wait for it with `wait` / `result`, chain on it with `add_done_callback`,
    or ``await`` it from any asyncio event loop.
    """

    __slots__ = ("_ctx", "_data", "_due", "_fill", "_life", "_plan", "_state", "_waiters", "id")

    # Invariant: _state only grows. It changes under the bucket's lock, but
    #   for the final clearing of HOOK_PENDING by the thread that ran the hook.
    # Invariant: while live, _data is the task's data; once ended it is the
    #   outcome (on_execute's return value, or its exception when FAILED) and
    #   _plan is None, so an ended task keeps no user object but that.
    id: str
    _data: Any
    _plan: Any
    _state: int
    _due: int  # monotonic ns at which on_execute may start
    # The life span ends at _due + _life. Kept as an offset because tasks
    # filled with the bucket's defaults then share one int object (memory
    # saved per pending task: docs/design.md).
    _life: int
    _ctx: TaskContext | None  # while RUNNING
    _waiters: _Waiters | None
    # Invariant: while live, _fill says what reset() falls back to, costing
    #   no allocation at fill: a tuple (run_after, life_span) in ns (shared
    #   by the tasks filled with the defaults, or made by the first reset);
    #   IMMEDIATE_FILL for an IMMEDIATE task, whose life span is then still
    #   _life; or the caller's own run_after object of a TIME_BOMB task, its
    #   life span then still run_after + _life. The twelfth slot costs no
    #   memory: objects come in 16-byte size classes.
    _fill: object

    def __init__(
        self,
        task_id: str,
        data: Any,
        plan: Any,
        state: int,
        due: int,
        life: int,
        fill: object,
    ):
        self._wheel_prev = None
        self._wheel_next = None
        self.id = task_id
        self._data = data
        self._plan = plan
        self._state = state
        self._due = due
        self._life = life
        self._ctx = None
        self._waiters = None
        self._fill = fill

    # -- public -----------------------------------------------------------

    @property
    def state(self) -> TaskState:
        """The task's `TaskState` now."""
        return _PUBLIC_STATE[self._state & ~HOOK_PENDING]

    def done(self) -> bool:
        """True once the task has ended and its ending hook has returned."""
        return ENDED <= self._state < HOOK_PENDING

    def wait(self, timeout: float | None = None) -> TaskState | None:
        """Block until the task ends; return its final state, or None on timeout.

        `timeout` is in real seconds, whatever clock the bucket runs on.
        """
        if not ENDED <= self._state < HOOK_PENDING:
            self._ensure_waiters().event.wait(timeout)
            if not ENDED <= self._state < HOOK_PENDING:
                return None
        return _PUBLIC_STATE[self._state]

    def result(self, timeout: float | None = None) -> Any:
        """The return value of `on_execute`, once the task ends.

        Raises:
            TimeoutError: the task did not end within `timeout` seconds.
            TaskExhausted / TaskDrained / TaskRescued: it ended that way.
            Exception: whatever `on_execute` raised, when FAILED.
        """
        if self.wait(timeout) is None:
            raise TimeoutError(f"task {self.id!r} did not end within {timeout} s")
        return self._outcome()

    def add_done_callback(self, fn: Callable[[TaskHandle], object]) -> None:
        """Call ``fn(handle)`` exactly once, when the task ends (at once if it has).

        Callbacks run on the thread that ends the task; one that raises is
        logged and counted in ``hook_errors`` like any hook error. A callback
        added after the end runs at once on the calling thread, and what it
        raises is logged and counted the same way.
        """
        waiters = self._ensure_waiters()
        with waiters.lock:
            if waiters.callbacks is not None:
                waiters.callbacks.append(fn)
                return
        runner = waiters.runner
        if runner is not None:
            runner(fn, self)
        else:  # pragma: no cover - only a waiter made in the instant the task ended
            _call_alone(fn, self)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await handle``: the result, or the exception, as `result()` gives it.

        Works from any event loop in any thread; cancelling the awaiting
        coroutine does not cancel the task.
        """
        if not ENDED <= self._state < HOOK_PENDING:
            loop = asyncio.get_running_loop()
            # Our own future, not the task: cancelling it (wait_for's timeout,
            # a cancelled awaiter) leaves the task alone.
            future: asyncio.Future[None] = loop.create_future()

            def wake(_: TaskHandle) -> None:
                with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits
                    loop.call_soon_threadsafe(_resolve, future)

            self.add_done_callback(wake)
            try:
                yield from future.__await__()
            except BaseException:
                # Given up (cancelled, timed out): drop the callback, so that
                # awaiting again and again with a timeout does not pile them up.
                waiters = self._waiters
                if waiters is not None:
                    with waiters.lock:
                        if waiters.callbacks is not None and wake in waiters.callbacks:
                            waiters.callbacks.remove(wake)
                raise
        return self._outcome()

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id!r} {self.state.name}>"

    # -- internals --------------------------------------------------------

    @property
    def _deadline(self) -> int:
        """Monotonic ns at which the life span ends."""
        return self._due + self._life

    def _outcome(self) -> Any:
        state = self._state
        if state == FINISHED:
            return self._data
        if state == FAILED:
            raise self._data
        raise _ENDING_ERROR[state](f"task {self.id!r} was {_PUBLIC_STATE[state].value}")

    def _ensure_waiters(self) -> _Waiters:
        waiters = self._waiters
        if waiters is None:
            with _WAITERS_LOCK:  # rare: only the first waiter of a task gets here
                waiters = self._waiters
                if waiters is None:
                    waiters = self._waiters = _Waiters()
                    if ENDED <= self._state < HOOK_PENDING:
                        waiters.release()
        return waiters

    def _release_waiters(self) -> list[Callable[[TaskHandle], object]]:
        """Once the ending hook is through: wake waiters, hand back the callbacks."""
        # No lock: a _Waiters made after this read sees the ending and
        # releases itself; releasing twice hands the callbacks out once.
        waiters = self._waiters
        if waiters is None:
            return []
        return waiters.release()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _call_alone(fn: Callable[[TaskHandle], object], handle: TaskHandle) -> None:
    """A late done callback whose bucket is unknown: contained and logged."""
    try:
        fn(handle)
    except BaseException:
        logger.exception("done callback of task %s raised", safe_repr(handle.id))


class TaskContext:
    """What a running task's hooks get as `ctx`: its deadline and its cancellation.

    The Python form of Go's ``ctx``: long work checks ``ctx.cancelled`` or
    blocks in ``ctx.wait(timeout)`` so that it stops early when the task is
    drained, exhausted or rescued.
    """

    __slots__ = ("_aio_task", "_cancelled", "_clock", "_wake", "deadline", "task_id", "worker")

    def __init__(
        self, task_id: str, deadline: float, clock: Clock, worker: object | None = None
    ) -> None:
        self.task_id = task_id
        #: Monotonic time (seconds) at which the task's life span ends.
        self.deadline = deadline
        self._clock = clock
        self._cancelled = False
        self._wake: threading.Event | None = None
        #: The pool worker running on_execute (None for async hooks).
        self.worker = worker
        self._aio_task: asyncio.Task[Any] | None = None

    @property
    def cancelled(self) -> bool:
        """True once the task was drained, exhausted or rescued."""
        return self._cancelled

    def remaining(self) -> float:
        """Seconds left in the life span (never negative)."""
        return max(0.0, self.deadline - self._clock.monotonic())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the task is cancelled or `timeout` seconds pass.

        Returns True if cancelled. The timeout runs on the bucket's clock.
        """
        clock = self._clock
        deadline = None if timeout is None else clock.monotonic_ns() + round(timeout * 1e9)
        while not self._cancelled:
            if deadline is not None and clock.monotonic_ns() >= deadline:
                return False
            wake = self._wake
            if wake is None:
                wake = self._wake = threading.Event()
            wake.clear()
            if self._cancelled:
                break
            clock.wait(wake, deadline)
        return True

    def _cancel(self) -> None:
        self._cancelled = True
        wake = self._wake
        if wake is not None:
            wake.set()

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "live"
        return f"<TaskContext {self.task_id!r} {state}>"

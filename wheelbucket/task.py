"""Tasks: the record the bucket keeps, the handle `fill` returns, the `ctx` hooks get.

What the bucket keeps of a task costs the cyclic garbage collector nothing
while the task waits for its run-after time, since that is where a big
bucket's tasks spend their lives (docs/design.md, "Records the collector
does not walk"):

* a task waiting to start is a plain tuple *record* of atomic values (ints,
  the caller's data, the fill's durations; the bucket's own executor by
  ``None``), in the id map and nowhere else: the wheel files its id. CPython
  stops tracking such a tuple at its first collection;
* once its run-after timer fires (or at once, for an IMMEDIATE task) it
  becomes a `Task`, an object with the mutable state a start needs; there
  are only as many as run or queue for a worker;
* the `TaskHandle` that `fill` returns is a small view: the id and a
  *token*, an int that the record holds too. The bucket holds no handle: a
  handle the caller drops is freed at once, and one the caller keeps finds
  its task through the id map while it lives, and its ending in the
  lifecycle's *mailbox* after. An ending is posted there only while some
  handle holds the token (its reference count tells), and taken out once
  none does. A handle registers with the bucket only when someone waits on
  it, awaits it or adds a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import sys
import threading
from collections.abc import Callable, Generator
from typing import Any

from ._log import logger, safe_repr
from .context import TaskContext
from .errors import TaskDrained, TaskExhausted, TaskRescued

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
# members. WAITING (on the run-after timer: a record) and QUEUED (for a
# worker: a Task) are both PENDING to the user.
WAITING = 0
QUEUED = 1
RUNNING = 2
FINISHED = 3
FAILED = 4
EXHAUSTED = 5
DRAINED = 6
RESCUED = 7
ENDED = FINISHED  # state >= ENDED  <=>  the task has its ending
# A queued Task whose reset() sent it back to waiting (as a record again):
# the pool's stale queue entry is dropped when a worker reaches it.
MOVED = 15
# Record.fill of an IMMEDIATE task that was never reset.
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

# A waiting task's record: (token, due, life, gen, plan, data, fill).
#   token: the int its handles hold (unique in the process, never cached);
#   due: monotonic ns at which on_execute may start; the life span ends at
#     due + life (an offset, so tasks filled with the same durations share
#     one int);
#   gen: the generation of its timers, 0-255: the wheel files (id, gen),
#     and a filing whose gen is not the record's is stale (reset moved the
#     timer earlier and filed it again);
#   plan: None for the bucket's own executor, else the slot of its HookPlan
#     in the lifecycle's table of plans (an int: see Lifecycle.plans);
#   data: the caller's data;
#   fill: what reset() falls back to (see Task._fill).
Record = tuple[Any, ...]
R_TOKEN = 0
R_DUE = 1
R_LIFE = 2
R_GEN = 3
R_PLAN = 4
R_DATA = 5
R_FILL = 6

#: Tokens: distinct ints, past the small-int cache (each is its own object).
new_token = itertools.count(1 << 40).__next__


# What runs a done callback added after the task ended (calls.Calls.callback):
# it contains and counts what the callback raises.
Runner = Callable[[Callable[["TaskHandle"], object], "TaskHandle"], None]


class _Waiters:
    """What a task needs once somebody waits on it; made on first use, per task."""

    __slots__ = ("callbacks", "event", "handle", "lock", "runner")

    def __init__(self, handle: TaskHandle | None) -> None:
        self.event = threading.Event()
        self.lock = threading.RLock()  # re-entrant for rescue() in a signal handler
        # Invariant: None once the task has ended and its callbacks were taken.
        self.callbacks: list[Callable[[TaskHandle], object]] | None = []
        # Set when the task is done, by its bucket: runs late callbacks.
        self.runner: Runner | None = None
        # What the callbacks are given (the handle that registered).
        self.handle = handle

    def release(self) -> list[Callable[[TaskHandle], object]]:
        with self.lock:
            callbacks, self.callbacks = self.callbacks, None
        self.event.set()
        return callbacks or []


class _Holder:
    __slots__ = ("_token",)

    def __init__(self, token: int) -> None:
        self._token = token


def _refs_held_once() -> int:
    """What ``sys.getrefcount(x.token)`` reads when only `x` holds the token."""
    holder = _Holder(new_token())
    return sys.getrefcount(holder._token)


def _refs_keyed_once() -> int:
    """What `unheld_tokens` reads for a token only a dict's key holds."""
    mailbox = {new_token(): None}
    # The same comprehension as unheld_tokens, so the same references count.
    return [sys.getrefcount(t) for t in list(mailbox)][0]  # noqa: RUF015


#: A record or Task's token read this many references while no handle held it.
#: Measured, not assumed: what a call to getrefcount sees differs between
#: CPython versions. A count above it (a handle, or a passing local) posts the
#: ending; a post nobody reads is swept later.
REFS_UNHELD = _refs_held_once()
_REFS_KEYED = _refs_keyed_once()


def unheld_tokens(mailbox: dict[int, Any]) -> list[int]:
    """The tokens in `mailbox` that no handle holds any more (their posts may go)."""
    limit = _REFS_KEYED
    return [t for t in list(mailbox) if sys.getrefcount(t) <= limit]


def _last_holder(holder: _Holder | TaskHandle) -> bool:
    """`holder` and a mailbox's key are all that hold ``holder._token``."""
    return sys.getrefcount(holder._token) <= _REFS_LAST


def _refs_last() -> int:
    holder = _Holder(new_token())
    mailbox = {holder._token: None}
    refs = sys.getrefcount(holder._token)
    del mailbox
    return refs


def _refs_local() -> int:
    token = new_token()
    mailbox = {token: None}
    refs = sys.getrefcount(token)
    del mailbox
    return refs


#: What _last_holder reads when nothing else holds the token (measured).
_REFS_LAST = _refs_last()
#: What Book.complete reads for a token held by a local and a mailbox key alone.
_REFS_LOCAL = _refs_local()


class Task:
    """A task that has left its record: queued for a worker, running, or just ended.

    Internal: the caller never sees one (it has a `TaskHandle`). Its fields
    change under the bucket's lock.
    """

    __slots__ = (
        "_ctx",
        "_data",
        "_due",
        "_fill",
        "_gen",
        "_life",
        "_plan",
        "_state",
        "_token",
        "id",
    )

    # Invariant: _state only grows (but for MOVED, set once under the lock,
    #   and the clearing of HOOK_PENDING by the thread that ran the hook).
    # Invariant: while live, _data is the task's data; once ended it is the
    #   outcome and _plan is None, so an ended task keeps no user object but it.
    id: str
    _token: int
    _data: Any
    _plan: Any  # HookPlan
    _state: int
    _due: int
    _life: int
    _gen: int
    _ctx: TaskContext | None  # while RUNNING
    # Invariant: while live, _fill says what reset() falls back to, costing
    #   no allocation at fill: a tuple (run_after, life_span) in ns (shared
    #   by the tasks filled with the defaults, or made by the first reset);
    #   IMMEDIATE_FILL for an IMMEDIATE task, whose life span is then still
    #   _life; or the caller's own run_after object of a TIME_BOMB task, its
    #   life span then still run_after + _life.
    _fill: object

    def __init__(
        self,
        task_id: str,
        token: int,
        data: Any,
        plan: Any,
        state: int,
        due: int,
        life: int,
        gen: int,
        fill: object,
    ):
        self.id = task_id
        self._token = token
        self._data = data
        self._plan = plan
        self._state = state
        self._due = due
        self._life = life
        self._gen = gen
        self._ctx = None
        self._fill = fill

    @property
    def _deadline(self) -> int:
        """Monotonic ns at which the life span ends."""
        return self._due + self._life

    @property
    def state(self) -> TaskState:
        return (
            _PUBLIC_STATE[self._state & ~HOOK_PENDING]
            if self._state != MOVED
            else (TaskState.PENDING)
        )

    def __repr__(self) -> str:
        return f"<Task {self.id!r} {self.state.name}>"


# Sweep the mailbox of posts no handle can read once it holds this many more
# than after the last sweep (and at least this many).
SWEEP_MIN = 1024


class Book:
    """Where a bucket's handles find their task: the id map, the mailbox, the waiters.

    The id map and the lock are the lifecycle's (`lifecycle.Lifecycle`),
    shared: a handle reads the map without the lock (one dict lookup, and a
    record or a Task's state read), and takes the lock only to register a
    waiter.
    """

    __slots__ = ("_sweep_at", "done_waiters", "lock", "mailbox", "tasks", "watched")

    def __init__(self, tasks: dict[str, Any], lock: threading.RLock) -> None:
        self.tasks = tasks
        self.lock = lock
        # Invariant: mailbox[token] is (state, outcome) of an ended task,
        #   posted at its ending if a handle held its token then (and before
        #   the task left the map); posts no handle can read are swept.
        self.mailbox: dict[int, tuple[int, Any]] = {}
        self._sweep_at = SWEEP_MIN
        # Invariant: watched[token] is the _Waiters of a task someone waits
        #   on, until the task is done (then it is popped and released).
        self.watched: dict[int, _Waiters] = {}
        # Already released: what a waiter on a done task gets (Calls sets
        # its runner, which runs a late callback and counts what it raises).
        self.done_waiters = _Waiters(None)
        self.done_waiters.release()

    def state_of(self, task_id: str, token: int) -> int:
        """The state of the task with `token`, HOOK_PENDING included."""
        state = self._state_of(task_id, token)
        if state < 0:
            # Between an ending's two steps (out of the map, posted), which
            # happen under the lock: wait for it, and look again.
            with self.lock:
                state = self._state_of(task_id, token)
            if state < 0:
                raise RuntimeError(f"wheelbucket: task {task_id!r} ended without a post (a bug)")
        return state

    def _state_of(self, task_id: str, token: int) -> int:
        rec = self.tasks.get(task_id)
        if rec is not None:
            if isinstance(rec, tuple):
                if rec[R_TOKEN] is token:
                    return WAITING
            elif rec._token is token:
                return int(rec._state)
        post = self.mailbox.get(token)
        if post is not None:
            return post[0]
        return -1

    def outcome_of(self, token: int) -> tuple[int, Any]:
        """(state, outcome) of the ended task with `token`."""
        state, outcome = self.mailbox[token]
        return state & ~HOOK_PENDING, outcome

    def watch(self, handle: TaskHandle) -> _Waiters:
        """The task's _Waiters, made now if nobody waited yet; released ones if it is done."""
        token = handle._token
        with self.lock:
            waiters = self.watched.get(token)
            if waiters is not None:
                return waiters
            state = self.state_of(handle.id, token)
            if ENDED <= state < HOOK_PENDING:
                return self.done_waiters
            waiters = self.watched[token] = _Waiters(handle)
            waiters.runner = self.done_waiters.runner
        return waiters

    def post(self, token: int, state: int, outcome: Any) -> None:
        """Post an ending for the handles that hold `token`. Under the lock."""
        mailbox = self.mailbox
        mailbox[token] = (state, outcome)
        if len(mailbox) >= self._sweep_at:
            for gone in unheld_tokens(mailbox):
                del mailbox[gone]
            self._sweep_at = max(SWEEP_MIN, 2 * len(mailbox))

    def complete(self, task: Task) -> _Waiters | None:
        """`task`'s ending hook is through: its post says so; return its waiters, if any.

        The task lets go of its token here: only handles hold it from now on,
        so the last of them to go takes the post with it (TaskHandle.__del__).
        """
        token = task._token
        task._token = 0
        mailbox = self.mailbox
        if token in mailbox:
            with self.lock:
                if sys.getrefcount(token) <= _REFS_LOCAL:
                    del mailbox[token]  # every handle went while the hook ran
                else:
                    mailbox[token] = (task._state, task._data)
        return self.unwatch(token)

    def unwatch(self, token: int) -> _Waiters | None:
        """Take the waiters of a done task, to release them."""
        watched = self.watched
        if not watched:
            return None
        with self.lock:
            return watched.pop(token, None)


class TaskHandle:
    """A filled task, as `fill` returns it.

    Wait for it with `wait` / `result`, chain on it with `add_done_callback`,
    or ``await`` it from any asyncio event loop. Two handles of the same task
    compare equal.
    """

    __slots__ = ("_book", "_token", "_waiters", "id")

    id: str
    _book: Book
    _token: int
    _waiters: _Waiters | None

    def __init__(self, book: Book, task_id: str, token: int) -> None:
        self._book = book
        self.id = task_id
        self._token = token
        self._waiters = None

    # -- public -----------------------------------------------------------

    @property
    def state(self) -> TaskState:
        """The task's `TaskState` now."""
        return _PUBLIC_STATE[self._book.state_of(self.id, self._token) & ~HOOK_PENDING]

    def done(self) -> bool:
        """True once the task has ended and its ending hook has returned."""
        return ENDED <= self._book.state_of(self.id, self._token) < HOOK_PENDING

    def wait(self, timeout: float | None = None) -> TaskState | None:
        """Block until the task ends; return its final state, or None on timeout.

        `timeout` is in real seconds, whatever clock the bucket runs on.
        """
        book = self._book
        state = book.state_of(self.id, self._token)
        if not ENDED <= state < HOOK_PENDING:
            self._ensure_waiters().event.wait(timeout)
            state = book.state_of(self.id, self._token)
            if not ENDED <= state < HOOK_PENDING:
                return None
        return _PUBLIC_STATE[state]

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
        if not self.done():
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

    def __del__(self) -> None:
        # The last handle of an ended task takes its post out of the mailbox:
        # its outcome (an exception holds on_execute's frame, and so its
        # data) must not outlive every handle (SPEC, stats()).
        mailbox = self._book.mailbox
        if mailbox and self._token in mailbox and _last_holder(self):
            mailbox.pop(self._token, None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskHandle):
            return NotImplemented
        return self._token == other._token and self._book is other._book

    def __hash__(self) -> int:
        return hash(self._token)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id!r} {self.state.name}>"

    # -- internals --------------------------------------------------------

    def _outcome(self) -> Any:
        state, outcome = self._book.outcome_of(self._token)
        if state == FINISHED:
            return outcome
        if state == FAILED:
            raise outcome
        raise _ENDING_ERROR[state](f"task {self.id!r} was {_PUBLIC_STATE[state].value}")

    def _ensure_waiters(self) -> _Waiters:
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = self._book.watch(self)
        return waiters


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _call_alone(fn: Callable[[TaskHandle], object], handle: TaskHandle) -> None:
    """A late done callback whose bucket is unknown: contained and logged."""
    try:
        fn(handle)
    except BaseException:
        logger.exception("done callback of task %s raised", safe_repr(handle.id))

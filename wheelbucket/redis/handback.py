"""What the group knows of starts: a task that never started goes back to the queue.

A member holds tasks it has not started yet: claimed ahead of its workers, or
filled here. If it dies, or closes, before they start, the group gives them
to another member instead of ending them. For that the group must know which
held tasks have started, so each start is recorded in Redis *before*
``on_execute`` begins (START, in lua/step.lua):

- a reaper (lua/reap.lua) queues the tasks of a dead member that bear the
  mark *doomed*: they may have started, so they end EXHAUSTED on a survivor
  and are never run twice; the others are queued again, to run once elsewhere
  within their life span;
- a closing member hands back (lua/handback.lua) the tasks its local close
  drained before they started, instead of ending them *drained*.

The record is written before the start, never after, so a start Redis has not
heard of cannot exist: the one error possible is on the side of at-most-once
(a task whose start was recorded, whose member died before ``on_execute``
began, ends EXHAUSTED although it never ran). Starts that come together are
recorded together, with the releases of that moment, in one STEP (link.py).

Keys (besides those of store.py): ``st`` in a task's hash (its start was
recorded), and ``wb:{G}:counts`` (HASH: ``queued``, ``started``: the
EXHAUSTED endings marked so, counted by lua/step.lua).

`StartBook` is what the shared executors call before a start; `HandbackStore`
holds the two protocol steps (START and HANDBACK), as `GroupStore` holds the
others; `started_executors` makes the executors of tasks that had started on a
member that died, whose ``on_task_exhausted`` can ask `had_started()`.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from .._log import safe_repr
from ..executor import HookPlan
from ..task import TaskContext
from .epoch import GroupScript
from .errors import REDIS_FAILED, translating
from .records import Record
from .stats import GroupInfo
from .store import _PRELUDE, STEP_CHUNK, GroupStore, _source

__all__ = [
    "HandbackStore",
    "StartBook",
    "hand_back",
    "hand_back_args",
    "had_started",
    "started_executors",
]

_E = TypeVar("_E")

logger = logging.getLogger("wheelbucket.redis")

# Tasks handed back in one round trip, at most.
HANDBACK_BATCH = 500
# The first wait before trying to record a start again after a Redis error;
# it doubles up to one heartbeat.
_FIRST_BACKOFF = 0.05

# What START says of a task.
STARTED = 1  # recorded: start it
TAKEN = 0  # taken from this member (drained elsewhere, or reaped): do not start it
UNKNOWN = -1  # Redis has no record of it (it lost the group): start it

# What HANDBACK says of a task.
HANDED_BACK = 1
MAY_HAVE_STARTED = 0
NOT_HELD = -1


@translating
class HandbackStore:
    """The START and HANDBACK steps of the protocol, for the member of `store`.

    An extension of `GroupStore` (same client, keys, epoch and error
    translation), kept apart because store.py is at its size limit.
    """

    def __init__(self, store: GroupStore) -> None:
        # The store's own client, key prefix and epoch: this is a part of it.
        self.group = store.group
        self.member = store.member
        self._prefix: str = store._prefix
        client = self._redis = store._redis
        ep_key: str = store._ep_key

        def script(name: str) -> GroupScript:
            # Both only mark or move existing records: they run under OOM too.
            source = "#!lua flags=allow-oom\n" + _PRELUDE + _source(name)
            return GroupScript(client, source, ep_key, store.epoch)

        self._s_handback = script("handback")
        self._step = store.step

    def start_many(self, tasks: Sequence[tuple[str, str]]) -> list[int]:
        """Record that each (id, token) held here starts now: STARTED, TAKEN or UNKNOWN each.

        A round trip per STEP_CHUNK of them, as `GroupStore.release_many`.
        """
        return [
            status
            for i in range(0, len(tasks), STEP_CHUNK)
            for status in self._step((), tasks[i : i + STEP_CHUNK])
        ]

    def hand_back_many(self, tasks: Sequence[tuple[str, str, int, int]]) -> list[int]:
        """Queue again each (id, token, delay_us, span_us) held here that never started.

        `delay_us` / `span_us` set its due time / deadline from the Redis
        clock's now (a task reset here); -1 keeps the record's. HANDED_BACK,
        MAY_HAVE_STARTED (its start was recorded: release it) or NOT_HELD,
        for each. One round trip per `HANDBACK_BATCH` tasks.
        """
        statuses: list[int] = []
        for i in range(0, len(tasks), HANDBACK_BATCH):
            statuses += self._batch(self._s_handback, tasks[i : i + HANDBACK_BATCH])
        return statuses

    def with_counts(self, info: GroupInfo) -> GroupInfo:
        """`info` with the group's counts of marked EXHAUSTED endings (one round trip)."""
        queued, started = self._redis.hmget(self._prefix + "counts", "queued", "started")
        return replace(info, expired_queued=int(queued or 0), exhausted_started=int(started or 0))

    def _batch(self, script: GroupScript, tasks: Sequence[tuple[Any, ...]]) -> list[int]:
        """One call of `script` on (id, token, more args...) tasks: a status each."""
        if not tasks:
            return []
        keys = [self._prefix + "t:" + task[0] for task in tasks]
        args: list[Any] = [self._prefix, self.member]
        for task in tasks:
            args += task
        return [int(status) for status in script(keys=keys, args=args)]


class StartBook:
    """Records each start of a shared task in Redis before its ``on_execute`` begins.

    Args:
        store: the START step, for `record_again`.
        start: ``start(id, token)``: one START, sent with those of the
            other workers (`link.Link.start`): STARTED, TAKEN or UNKNOWN.
        revoke: ``revoke(rec)``: `rec` was taken from this process.
        note_error: ``note_error(exc)``: a Redis call failed (the pump's).
        heartbeat: seconds; the longest wait between two tries while Redis fails.
    """

    def __init__(
        self,
        store: HandbackStore,
        start: Callable[[str, str], int],
        revoke: Callable[[Record], None],
        note_error: Callable[[BaseException], None],
        heartbeat: float,
    ) -> None:
        self._store = store
        # One start, sent with those of the other workers (link.py).
        self._start = start
        self._revoke = revoke
        self._note_error = note_error
        self._heartbeat = heartbeat

    def may_start(self, rec: Record, ctx: TaskContext) -> bool:
        """Record `rec`'s start in Redis; True if its ``on_execute`` may begin.

        Costs one round trip, shared by the starts that come together. While
        Redis fails, it tries again (50 ms, doubling up to a heartbeat) until
        the start is recorded or `ctx` is cancelled (drained, exhausted,
        closed): a task never starts unrecorded, so a start is never run
        twice after a crash. False: it was taken from this process, or
        cancelled meanwhile.
        """
        if rec.revoked or ctx.cancelled:
            return False
        # From here on it may have started (the pump records it again after a
        # Redis reset).
        rec.started = True
        backoff = _FIRST_BACKOFF
        while True:
            try:
                status = self._start(rec.id, rec.token)
            except REDIS_FAILED as exc:
                self._note_error(exc)
                if ctx.wait(backoff):
                    return False
                backoff = min(backoff * 2, self._heartbeat)
                continue
            break
        if status == TAKEN:
            self._revoke(rec)
            logger.debug("task %s was taken from this process before it started", safe_repr(rec.id))
            return False
        return not rec.revoked and not ctx.cancelled

    def record_again(self, recs: Sequence[Record]) -> None:
        """Redis lost the group and got `recs` back: mark again those that may have started."""
        started = [(r.id, r.token) for r in recs if r.started]
        self._store.start_many(started)


# -- the survivor's side of a task that had started --------------------------------------

_had_started: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "wheelbucket_redis_had_started", default=False
)


def had_started() -> bool:
    """In an ``on_task_exhausted`` hook of a shared bucket: had the task started elsewhere?

    True when the task had started on a member that died (or was presumed
    dead) before it ended: its ``on_execute`` may have run in part, or
    entirely, there. The group runs it no second time (at most once); this
    member only delivers its ending. False everywhere else: in any other hook,
    and for a task that never started (its life span ran out while it waited).
    """
    return _had_started.get()


class _StartedElsewhere:
    """The user's executor as seen for a task that had started on a dead member."""

    def __init__(self, plan: HookPlan) -> None:
        self._plan = plan
        self.on_execute = plan.on_execute
        user = plan.on_task_exhausted
        if user is not None:
            self.on_task_exhausted = self._exhausted_hook(user)
        for name in ("on_finish", "on_execute_error", "on_panic"):
            hook = getattr(plan, name)
            if hook is not None:
                setattr(self, name, hook)

    @staticmethod
    def _exhausted_hook(user: Callable[..., Any]) -> Callable[..., Any]:
        def on_task_exhausted(ctx: TaskContext, task_id: str, data: Any) -> Any:
            token = _had_started.set(True)
            try:
                result = user(ctx, task_id, data)
            finally:
                _had_started.reset(token)
            if inspect.iscoroutine(result):
                return _marked(result)
            return result

        return on_task_exhausted


async def _marked(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run an async hook with `had_started()` True in its own context."""
    token = _had_started.set(True)
    try:
        return await coro
    finally:
        _had_started.reset(token)


def started_executors(
    plans: Mapping[str, HookPlan], make: Callable[[HookPlan], _E]
) -> dict[str, _E]:
    """Per executor name: the executor of tasks that had started on a member that died.

    `make(plan)` builds the shared executor (a doomed one) around a plan.
    """
    return {name: make(HookPlan(_StartedElsewhere(plan))) for name, plan in plans.items()}


def hand_back_args(rec: Record, now: float) -> tuple[str, str, int, int]:
    """`rec` as HANDBACK takes it: (id, token, delay_us, span_us) at monotonic time `now`.

    A task reset here gets what is left of the times that reset gave it
    (its record still has the older ones); any other task keeps its record's
    (-1, -1).
    """
    if rec.moved is None:
        return (rec.id, rec.token, -1, -1)
    at, delay, span = rec.moved
    elapsed = now - at
    delay_us = -1 if delay is None else max(0, math.ceil((delay - elapsed) * 1e6))
    span_us = -1 if span is None else max(1, math.ceil((span - elapsed) * 1e6))
    return (rec.id, rec.token, delay_us, span_us)


def hand_back(store: HandbackStore, recs: list[Record], forget: Callable[[Record], None]) -> int:
    """At close: give back to the group those of `recs` that never started here.

    Those are the ones without an ending (drained by the local close, not by a
    user) whose start was never asked for. Each one handed back, or no longer
    held, leaves `recs` and is `forget`-ten; the rest is for the caller to
    release. Returns how many were handed back. Raises what the store raises.
    """
    unstarted = [r for r in recs if not r.ending and not r.started]
    if not unstarted:
        return 0
    now = time.monotonic()
    statuses = store.hand_back_many([hand_back_args(r, now) for r in unstarted])
    gone = {
        id(rec)
        for rec, status in zip(unstarted, statuses, strict=True)
        if status in (HANDED_BACK, NOT_HELD)
    }
    for rec in unstarted:
        if id(rec) in gone:
            forget(rec)
    recs[:] = [r for r in recs if id(r) not in gone]
    return sum(1 for status in statuses if status == HANDED_BACK)

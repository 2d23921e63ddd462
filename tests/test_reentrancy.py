"""Re-entrancy: hooks that call back into their own bucket.

From every hook (``on_execute``, the four ending hooks, and a done callback),
call `fill`, `drain` (another task's id and the hook's own id), `rescue`,
`stats()` and `close()` on the same bucket. Nothing may deadlock (pytest's
timeout turns a deadlock into a failure), each call behaves as documented,
and the bucket's invariants hold afterwards:

* a task that has ended is gone: from its own ending hook, ``drain`` of its
  id raises `TaskNotFound`, ``rescue`` leaves it out, ``fill`` of its id works;
* from ``on_execute`` the task is still live: ``drain`` of its own id ends it
  DRAINED (no ending hook runs, whatever ``on_execute`` does next), ``fill``
  of its id raises `TaskExists`, ``rescue`` ends it RESCUED.

Deterministic: a `FakeClock` and `settle()`, no sleeping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wheelbucket import (
    BucketClosed,
    BucketStats,
    Executor,
    TaskBucket,
    TaskContext,
    TaskExists,
    TaskHandle,
    TaskNotFound,
    TaskState,
    TaskType,
)
from wheelbucket.testing import FakeClock, settle

pytestmark = pytest.mark.timeout(30)

HOOKS = (
    "on_execute",
    "on_finish",
    "on_execute_error",
    "on_task_exhausted",
    "on_panic",
    "done_callback",
)
ENDING_HOOKS = HOOKS[1:]
NATURAL_END = {
    "on_execute": TaskState.FINISHED,
    "on_finish": TaskState.FINISHED,
    "on_execute_error": TaskState.FAILED,
    "on_task_exhausted": TaskState.EXHAUSTED,
    "on_panic": TaskState.RESCUED,
    "done_callback": TaskState.FINISHED,
}
ENDING_HOOK_OF = {
    TaskState.FINISHED: "on_finish",
    TaskState.FAILED: "on_execute_error",
    TaskState.EXHAUSTED: "on_task_exhausted",
    TaskState.RESCUED: "on_panic",
}
LIFE = 1.0

Action = Callable[[TaskBucket, TaskContext | None, str], Any]


class Reentrant(Executor):
    """Records every hook; runs `actions[(hook, task_id)]` from inside it."""

    def __init__(self) -> None:
        self.bucket: TaskBucket | None = None
        self.actions: dict[tuple[str, str], Action] = {}
        self.outcomes: list[tuple[str, str, Any]] = []
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def act(self, hook: str, ctx: TaskContext | None, task_id: str) -> None:
        action = self.actions.get((hook, task_id))
        if action is None:
            return
        assert self.bucket is not None
        try:
            outcome = action(self.bucket, ctx, task_id)
        except Exception as exc:
            outcome = exc
        with self.lock:
            self.outcomes.append((hook, task_id, outcome))

    def _event(self, hook: str, task_id: str) -> None:
        with self.lock:
            self.events.append((hook, task_id))

    def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        self._event("on_execute", task_id)
        self.act("on_execute", ctx, task_id)
        if data == "fail":
            raise ValueError("planned failure")
        if data == "block":
            ctx.wait()
        self._event("on_execute returned", task_id)
        return "result"

    def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self._event("on_finish", task_id)
        self.act("on_finish", ctx, task_id)

    def on_execute_error(
        self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
    ) -> None:
        self._event("on_execute_error", task_id)
        self.act("on_execute_error", ctx, task_id)

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self._event("on_task_exhausted", task_id)
        self.act("on_task_exhausted", ctx, task_id)

    def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self._event("on_panic", task_id)
        self.act("on_panic", ctx, task_id)

    def hooks_of(self, task_id: str) -> list[str]:
        return [
            hook for hook, tid in self.events if tid == task_id and hook in ENDING_HOOK_OF.values()
        ]

    def outcome(self, hook: str, task_id: str = "parent") -> Any:
        found = [out for h, tid, out in self.outcomes if (h, tid) == (hook, task_id)]
        assert len(found) == 1, (hook, task_id, self.outcomes)
        return found[0]


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def rex() -> Reentrant:
    return Reentrant()


@pytest.fixture
def rbucket(fake_clock: FakeClock, rex: Reentrant) -> Iterator[TaskBucket]:
    bucket = TaskBucket(executor=rex, clock=fake_clock, workers=2, life_span=LIFE)
    rex.bucket = bucket
    yield bucket
    bucket.close(wait=False)


def check_invariants(stats: BucketStats) -> None:
    assert stats.live == stats.pending + stats.running
    assert stats.pending >= 0
    assert stats.running >= 0
    ended = stats.finished + stats.failed + stats.exhausted + stats.drained + stats.rescued
    assert stats.filled == ended + stats.live


def trigger(bucket: TaskBucket, clock: FakeClock, rex: Reentrant, hook: str) -> TaskHandle:
    """Fill task "parent" and make `hook` run for it; return its handle once settled."""
    if hook == "on_execute_error":
        handle = bucket.fill(TaskType.IMMEDIATE, "parent", "fail")
    elif hook == "on_task_exhausted":
        handle = bucket.fill(TaskType.IMMEDIATE, "parent", "block")
        settle(bucket, running=1)
        clock.advance(LIFE)
    elif hook == "on_panic":
        handle = bucket.fill(TaskType.TIME_BOMB, "parent", "ok", run_after=0.5)
        settle(bucket)
        bucket.rescue()
    else:
        handle = bucket.fill(TaskType.IMMEDIATE, "parent", "ok")
    if hook == "done_callback":
        handle.add_done_callback(lambda h: rex.act("done_callback", None, h.id))
    settle(bucket)
    assert handle.wait(10) is not None
    return handle


# -- fill ------------------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_fill_from_a_hook_works_like_any_fill(
    hook: str, rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    rex.actions[hook, "parent"] = lambda b, ctx, tid: b.fill(TaskType.IMMEDIATE, "child", "ok")
    parent = trigger(rbucket, fake_clock, rex, hook)
    child = rex.outcome(hook)
    assert isinstance(child, TaskHandle)
    settle(rbucket)
    assert child.state is TaskState.FINISHED
    assert parent.state is NATURAL_END[hook]
    assert rex.hooks_of("child") == ["on_finish"]
    assert len(rbucket) == 0
    check_invariants(rbucket.stats())
    assert rbucket.stats().hook_errors == 0


@pytest.mark.parametrize("hook", ENDING_HOOKS)
def test_fill_of_its_own_id_from_an_ending_hook_works(
    hook: str, rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    rex.actions[hook, "parent"] = lambda b, ctx, tid: b.fill(
        TaskType.TIME_BOMB, tid, "again", run_after=0.5
    )
    parent = trigger(rbucket, fake_clock, rex, hook)
    again = rex.outcome(hook)
    assert isinstance(again, TaskHandle)
    assert again is not parent
    assert rbucket.get("parent") == again
    assert parent.state is NATURAL_END[hook]
    fake_clock.advance(0.5)
    settle(rbucket)
    assert again.state is TaskState.FINISHED
    check_invariants(rbucket.stats())


def test_fill_of_its_own_id_from_on_execute_raises_task_exists(
    rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    rex.actions["on_execute", "parent"] = lambda b, ctx, tid: b.fill(TaskType.IMMEDIATE, tid)
    parent = trigger(rbucket, fake_clock, rex, "on_execute")
    assert isinstance(rex.outcome("on_execute"), TaskExists)
    assert parent.state is TaskState.FINISHED
    assert rbucket.stats().rejected_duplicate == 1
    check_invariants(rbucket.stats())


# -- drain ------------------------------------------------------------------


@pytest.mark.parametrize("hook", ENDING_HOOKS)
def test_drain_of_its_own_id_from_an_ending_hook_raises_task_not_found(
    hook: str, rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    rex.actions[hook, "parent"] = lambda b, ctx, tid: b.drain(tid)
    parent = trigger(rbucket, fake_clock, rex, hook)
    assert isinstance(rex.outcome(hook), TaskNotFound)
    assert parent.state is NATURAL_END[hook]
    stats = rbucket.stats()
    assert stats.drained == 0
    check_invariants(stats)


def test_drain_of_its_own_id_from_on_execute_ends_it_drained(
    rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    def drain_self(b: TaskBucket, ctx: TaskContext | None, tid: str) -> Any:
        assert ctx is not None
        b.drain(tid)
        return (ctx.cancelled, tid in b, b.get(tid))

    rex.actions["on_execute", "parent"] = drain_self
    parent = trigger(rbucket, fake_clock, rex, "on_execute")
    assert rex.outcome("on_execute") == (True, False, None)
    assert parent.state is TaskState.DRAINED
    # on_execute went on and returned; its result is ignored and no hook ran.
    assert ("on_execute returned", "parent") in rex.events
    assert rex.hooks_of("parent") == []
    stats = rbucket.stats()
    assert (stats.drained, stats.finished, stats.live) == (1, 0, 0)
    check_invariants(stats)
    # The worker that ran it is back (or replaced): the pool still works.
    assert rbucket.fill(TaskType.IMMEDIATE, "next", "ok").wait(10) is TaskState.FINISHED


@pytest.mark.parametrize("hook", HOOKS)
def test_drain_of_another_task_from_a_hook_works(
    hook: str, rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    other = rbucket.fill(TaskType.TIME_BOMB, "other", "ok", run_after=5.0, life_span=10.0)
    rex.actions[hook, "parent"] = lambda b, ctx, tid: b.drain("other")
    parent = trigger(rbucket, fake_clock, rex, hook)
    if hook == "on_panic":
        # rescue() took "other" too, before any on_panic ran.
        assert isinstance(rex.outcome(hook), TaskNotFound)
        assert other.state is TaskState.RESCUED
    else:
        assert rex.outcome(hook) is None
        assert other.state is TaskState.DRAINED
        assert rex.hooks_of("other") == []
    assert parent.state is NATURAL_END[hook]
    check_invariants(rbucket.stats())


# -- rescue ------------------------------------------------------------------


@pytest.mark.parametrize("hook", ENDING_HOOKS)
def test_rescue_from_an_ending_hook_leaves_its_own_task_out(
    hook: str, rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    rex.actions[hook, "parent"] = lambda b, ctx, tid: b.rescue()
    other = rbucket.fill(TaskType.TIME_BOMB, "other", "ok", run_after=5.0, life_span=10.0)
    parent = trigger(rbucket, fake_clock, rex, hook)
    rescued = rex.outcome(hook)
    assert "parent" not in rescued
    if hook == "on_panic":
        assert rescued == []  # the outer rescue() already took both
    else:
        assert rescued == ["other"]
    assert other.state is TaskState.RESCUED
    assert rex.hooks_of("other") == ["on_panic"]
    assert parent.state is NATURAL_END[hook]
    assert rex.hooks_of("parent") == [ENDING_HOOK_OF[NATURAL_END[hook]]]
    stats = rbucket.stats()
    assert stats.live == 0
    check_invariants(stats)


def test_rescue_from_on_execute_rescues_its_own_task(
    rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    other = rbucket.fill(TaskType.TIME_BOMB, "other", "ok", run_after=5.0, life_span=10.0)
    rex.actions["on_execute", "parent"] = lambda b, ctx, tid: (b.rescue(), ctx and ctx.cancelled)
    parent = trigger(rbucket, fake_clock, rex, "on_execute")
    assert rex.outcome("on_execute") == (["other", "parent"], True)
    assert parent.state is TaskState.RESCUED
    assert other.state is TaskState.RESCUED
    assert rex.hooks_of("parent") == ["on_panic"]  # no on_finish after it
    stats = rbucket.stats()
    assert (stats.rescued, stats.finished) == (2, 0)
    check_invariants(stats)


# -- stats and introspection ------------------------------------------------------


@pytest.mark.parametrize("hook", HOOKS)
def test_stats_from_a_hook_are_consistent(
    hook: str, rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    def look(b: TaskBucket, ctx: TaskContext | None, tid: str) -> Any:
        return b.stats(), tid in b, b.get(tid), len(b)

    rex.actions[hook, "parent"] = look
    trigger(rbucket, fake_clock, rex, hook)
    stats, live, got, length = rex.outcome(hook)
    check_invariants(stats)
    if hook == "on_execute":
        assert live
        assert got is not None
        assert stats.running == 1
        assert length == 1
    else:
        # A task that has ended is gone, already in its own ending hook.
        assert not live
        assert got is None
        assert length == 0
        assert stats.live == 0


# -- close ------------------------------------------------------------------


def _closer(wait: bool, done: threading.Event) -> Action:
    def close(b: TaskBucket, ctx: TaskContext | None, tid: str) -> Any:
        b.close(wait=wait)
        done.set()
        try:
            b.fill(TaskType.IMMEDIATE, "after-close", "ok")
        except BucketClosed as exc:
            return exc
        return None

    return close


def _trigger_for_close(
    bucket: TaskBucket, clock: FakeClock, rex: Reentrant, hook: str, running: int = 0
) -> TaskHandle:
    """Like trigger(), without settle(): the bucket stops under the hook.

    `running`: workers the test keeps blocked in other tasks.
    """
    if hook == "on_execute_error":
        handle = bucket.fill(TaskType.IMMEDIATE, "parent", "fail")
    elif hook == "on_task_exhausted":
        handle = bucket.fill(TaskType.IMMEDIATE, "parent", "block")
        settle(bucket, running=running + 1)
        clock.advance(LIFE)
    elif hook == "on_panic":
        handle = bucket.fill(TaskType.TIME_BOMB, "parent", "ok", run_after=0.5)
        settle(bucket, running=running)
        bucket.rescue()
    else:
        handle = bucket.fill(TaskType.IMMEDIATE, "parent", "ok")
    if hook == "done_callback":
        handle.add_done_callback(lambda h: rex.act("done_callback", None, h.id))
    return handle


@pytest.mark.parametrize("wait", [True, False], ids=["wait", "nowait"])
@pytest.mark.parametrize("hook", HOOKS)
def test_close_from_a_hook_returns_and_stops_the_bucket(
    hook: str, wait: bool, rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    closed = threading.Event()
    rex.actions[hook, "parent"] = _closer(wait, closed)
    before = {t for t in threading.enumerate() if t.name.startswith("wheelbucket")}
    parent = _trigger_for_close(rbucket, fake_clock, rex, hook)
    assert closed.wait(10), "close() from the hook did not return"
    assert parent.wait(10) is not None
    assert isinstance(rex.outcome(hook), BucketClosed)
    assert rbucket.closed
    rbucket.close()  # from the test thread too: returns, does not hang
    if hook == "on_execute":
        # Decision: the caller's own task cannot end while close() blocks in
        # it, so close() does not wait for it, then drains it with the rest.
        assert parent.state is TaskState.DRAINED
        assert rex.hooks_of("parent") == []
    else:
        assert parent.state is NATURAL_END[hook]
        assert rex.hooks_of("parent") == [ENDING_HOOK_OF[NATURAL_END[hook]]]
    stats = rbucket.stats()
    assert stats.live == 0
    check_invariants(stats)
    assert "after-close" not in rbucket
    # Every thread of the bucket ends (the one that ran the hook included).
    for thread in {t for t in threading.enumerate() if t.name.startswith("wheelbucket")} - before:
        thread.join(10)
        assert not thread.is_alive(), thread.name


@pytest.mark.parametrize("hook", ["on_execute", "on_finish", "on_task_exhausted"])
def test_close_from_a_hook_waits_for_a_task_running_on_another_worker(
    hook: str, rbucket: TaskBucket, fake_clock: FakeClock, rex: Reentrant
) -> None:
    gate = threading.Event()
    rex.actions["on_execute", "other"] = lambda b, ctx, tid: gate.wait(10)
    other = rbucket.fill(TaskType.IMMEDIATE, "other", "gated", life_span=10.0)
    settle(rbucket, running=1)
    closed = threading.Event()
    rex.actions[hook, "parent"] = _closer(True, closed)
    parent = _trigger_for_close(rbucket, fake_clock, rex, hook, running=1)
    # "other" is still running: close() must not return before it ends...
    assert not closed.wait(0.2)
    assert other.state is TaskState.RUNNING
    gate.set()
    # ...and returns once it has finished naturally.
    assert closed.wait(10)
    assert other.wait(10) is TaskState.FINISHED
    assert rex.hooks_of("other") == ["on_finish"]
    assert parent.wait(10) is not None
    check_invariants(rbucket.stats())


def test_close_from_the_only_workers_hook_lets_due_tasks_run(fake_clock: FakeClock) -> None:
    rex = Reentrant()
    with TaskBucket(executor=rex, clock=fake_clock, workers=1, life_span=LIFE) as bucket:
        rex.bucket = bucket
        closed = threading.Event()
        rex.actions["on_finish", "parent"] = _closer(True, closed)
        later = bucket.fill(TaskType.TIME_BOMB, "later", "ok", run_after=0.5)
        bucket.fill(TaskType.IMMEDIATE, "parent", "ok")
        settle(bucket, running=1)  # the worker sits in close(), in on_finish
        fake_clock.advance(0.5)  # "later" is due: it should run now
        later.wait(2)  # (real seconds) it would be done at once with a free worker
        fake_clock.advance(LIFE)  # past its life span: close() can return
        assert closed.wait(10)
        assert later.wait(10) is TaskState.FINISHED


# -- async hooks -------------------------------------------------------------


class AsyncReentrant(Executor):
    def __init__(self) -> None:
        self.bucket: TaskBucket | None = None
        self.seen: dict[str, Any] = {}
        self.after_drain: list[str] = []

    async def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        import asyncio

        bucket = self.bucket
        assert bucket is not None
        if data == "fill":
            self.seen["child"] = bucket.fill(TaskType.IMMEDIATE, "child", "ok")
        elif data == "drain-self":
            bucket.drain(task_id)
            self.seen["cancelled"] = ctx.cancelled
            try:
                await asyncio.sleep(10)  # really cancelled: does not sleep
            except asyncio.CancelledError:
                self.after_drain.append(task_id)
                raise
        elif data == "stats":
            self.seen["stats"] = bucket.stats()
        return "result"

    async def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        bucket = self.bucket
        assert bucket is not None
        try:
            bucket.drain(task_id)
        except TaskNotFound as exc:
            self.seen["own drain"] = exc


@pytest.mark.parametrize("data", ["fill", "drain-self", "stats"])
def test_async_on_execute_calls_into_its_bucket(data: str, fake_clock: FakeClock) -> None:
    aex = AsyncReentrant()
    with TaskBucket(executor=aex, clock=fake_clock) as bucket:
        aex.bucket = bucket
        handle = bucket.fill(TaskType.IMMEDIATE, "parent", data)
        settle(bucket)
        assert handle.wait(10) is not None
        settle(bucket)
        if data == "fill":
            assert handle.state is TaskState.FINISHED
            assert aex.seen["child"].state is TaskState.FINISHED
        elif data == "drain-self":
            assert handle.state is TaskState.DRAINED
            assert aex.seen["cancelled"] is True
            assert aex.after_drain == ["parent"]
        else:
            check_invariants(aex.seen["stats"])
            assert aex.seen["stats"].running == 1
        if handle.state is TaskState.FINISHED:
            assert isinstance(aex.seen["own drain"], TaskNotFound)
        check_invariants(bucket.stats())
        assert bucket.stats().hook_errors == 0

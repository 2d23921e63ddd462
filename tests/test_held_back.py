"""An ending is never held back by other live tasks (SPEC, lifecycle invariants).

With every worker busy in a task still within its life span, a queued
IMMEDIATE task whose life span ends still ends EXHAUSTED on time: its handle
is done and its ``on_task_exhausted`` runs on a thread the pool adds for it
(within the replacement bound), never "when a worker frees up". Tried with
and without the hook, with one and two workers all blocked, on the fake
clock; and once as the issue reported it, on the real clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from wheelbucket import Executor, TaskBucket, TaskContext, TaskState, TaskType
from wheelbucket.testing import FakeClock, settle

IMMEDIATE = TaskType.IMMEDIATE
SAFETY = 10.0  # real seconds: a deadlock guard, not a timing assumption


class Blocking(Executor):
    """on_execute blocks on a gate (ignoring ctx); records the exhausted hooks."""

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate
        self.exhausted: list[tuple[str, str]] = []

    def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        if data == "block":
            self.gate.wait(SAFETY * 3)
        return data

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self.exhausted.append((task_id, threading.current_thread().name))


def _no_hook(gate: threading.Event) -> Callable[[TaskContext, str, Any], Any]:
    def on_execute(ctx: TaskContext, task_id: str, data: Any) -> Any:
        if data == "block":
            gate.wait(SAFETY * 3)
        return data

    return on_execute


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("with_hook", [True, False], ids=["hook", "no-hook"])
def test_a_queued_task_exhausts_on_time_behind_blocked_workers(
    make_bucket: Callable[..., TaskBucket],
    clock: FakeClock,
    gate: Callable[[], threading.Event],
    workers: int,
    with_hook: bool,
) -> None:
    opened = gate()
    executor: Any = Blocking(opened) if with_hook else _no_hook(opened)
    bucket = make_bucket(executor=executor, workers=workers, life_span=30.0)
    blockers = [bucket.fill(IMMEDIATE, f"b{i}", "block") for i in range(workers)]
    settle(bucket, running=workers)
    assert bucket.stats().running == workers
    queued = bucket.fill(IMMEDIATE, "q", "work", life_span=0.3)
    clock.advance(0.299)
    time.sleep(0.05)  # (real time passes; the fake clock does not)
    assert not queued.done()
    clock.advance(0.001)
    assert queued.wait(SAFETY) is TaskState.EXHAUSTED, "held back behind the blocked workers"
    if with_hook:
        assert [tid for tid, _ in executor.exhausted] == ["q"]
    stats = bucket.stats()
    assert stats.exhausted == 1
    assert stats.running == workers, "the blocked tasks are untouched"
    assert all(b.state is TaskState.RUNNING for b in blockers)
    assert stats.workers <= workers + 4 * workers, "within the replacement bound"
    opened.set()
    for b in blockers:
        assert b.wait(SAFETY) is TaskState.FINISHED


def test_the_hook_helper_stays_within_a_bound_of_zero_extra_threads(
    make_bucket: Callable[..., TaskBucket],
    clock: FakeClock,
    gate: Callable[[], threading.Event],
) -> None:
    """With no extra thread allowed, the hook waits (the bound wins), and runs later."""
    opened = gate()
    executor = Blocking(opened)
    bucket = make_bucket(executor=executor, workers=1, max_extra_workers=0, life_span=30.0)
    bucket.fill(IMMEDIATE, "b", "block")
    settle(bucket, running=1)
    queued = bucket.fill(IMMEDIATE, "q", "work", life_span=0.3)
    clock.advance(0.3)
    time.sleep(0.1)
    assert queued.state is TaskState.EXHAUSTED
    assert not queued.done(), "its hook waits: no thread may be added"
    assert bucket.stats().workers == 1
    opened.set()
    assert queued.wait(SAFETY) is TaskState.EXHAUSTED
    assert [tid for tid, _ in executor.exhausted] == ["q"]


def test_many_endings_behind_blocked_workers_all_run(
    make_bucket: Callable[..., TaskBucket],
    clock: FakeClock,
    gate: Callable[[], threading.Event],
) -> None:
    opened = gate()
    executor = Blocking(opened)
    bucket = make_bucket(executor=executor, workers=2, life_span=30.0, max_bucket=1000)
    bucket.fill(IMMEDIATE, "b0", "block")
    bucket.fill(IMMEDIATE, "b1", "block")
    settle(bucket, running=2)
    queued = [bucket.fill(IMMEDIATE, f"q{i}", "work", life_span=0.5) for i in range(200)]
    clock.advance(0.5)
    for handle in queued:
        assert handle.wait(SAFETY) is TaskState.EXHAUSTED
    assert sorted(tid for tid, _ in executor.exhausted) == sorted(h.id for h in queued)
    assert bucket.stats().workers <= 2 + 8
    opened.set()


@pytest.mark.slow
def test_the_reported_case_on_the_real_clock(gate: Callable[[], threading.Event]) -> None:
    """workers=1, the worker blocked for 30 s, then a task with a 0.3 s life span."""
    opened = gate()
    bucket = TaskBucket(executor=_no_hook(opened), workers=1, life_span=30.0)
    try:
        bucket.fill(IMMEDIATE, "blocker", "block")
        deadline = time.monotonic() + SAFETY
        while bucket.stats().running != 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        started = time.monotonic()
        handle = bucket.fill(IMMEDIATE, "q", life_span=0.3)
        assert handle.wait(5) is TaskState.EXHAUSTED
        # Generous: on time is 0.3 s plus a tick and a thread start.
        assert time.monotonic() - started < 2.5
    finally:
        opened.set()
        bucket.close(wait=False)

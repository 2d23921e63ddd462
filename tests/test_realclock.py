"""A few checks with the real clock and real threads (marked slow, generous bounds).

The machine is shared and small: these tests assert what must hold however
late a thread is scheduled (never early, exactly once, one ending each),
and keep their time bounds loose.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from helpers import RecordingExecutor, wait_until

from wheelbucket import TaskBucket, TaskContext, TaskNotFound, TaskState, TaskType

pytestmark = pytest.mark.slow

MakeBucket = Callable[..., TaskBucket]
IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB


def test_a_thousand_time_bombs_each_run_once_and_never_early(make_bucket: MakeBucket) -> None:
    rng = random.Random(1)
    starts: list[tuple[str, int]] = []  # list.append is atomic across threads

    def work(ctx: TaskContext, task_id: str, data: int) -> int:
        starts.append((task_id, time.monotonic_ns()))
        return data

    bucket = make_bucket(clock=None, executor=work, max_bucket=2000, life_span=30.0)
    earliest: dict[str, int] = {}
    handles = []
    for i in range(1000):
        task_id = f"bomb-{i}"
        run_after = rng.uniform(0.05, 0.2)
        # fill() reads the clock after this line, so its due time is no earlier.
        earliest[task_id] = time.monotonic_ns() + math.ceil(run_after * 1e9)
        handles.append(bucket.fill(TIME_BOMB, task_id, i, run_after=run_after))
    for i, handle in enumerate(handles):
        assert handle.result(timeout=30) == i
    counts = Counter(task_id for task_id, _ in starts)
    assert len(counts) == 1000
    assert set(counts.values()) == {1}
    early = [(tid, earliest[tid] - ns) for tid, ns in starts if ns < earliest[tid]]
    assert early == [], f"started before their due time (ns early): {early[:5]}"
    stats = bucket.stats()
    assert (stats.finished, stats.executed, stats.exhausted, stats.live) == (1000, 1000, 0, 0)
    assert 0.0 <= stats.lateness_p50 <= stats.lateness_p99 <= stats.lateness_max < 10.0


def test_drain_racing_the_due_time_ends_each_task_exactly_once(make_bucket: MakeBucket) -> None:
    rng = random.Random(2)
    recorder = RecordingExecutor()
    recorder.default = lambda ctx, task_id, data: time.sleep(0.002)  # drains can hit it running
    bucket = make_bucket(clock=None, executor=recorder, max_bucket=1000, workers=4)
    n = 400
    plan = []  # (when to drain, id): each drain aimed at its task's due time, -2 to +8 ms
    handles = []
    for i in range(n):
        run_after = rng.uniform(0.02, 0.06)
        handles.append(bucket.fill(TIME_BOMB, f"t{i}", run_after=run_after))
        plan.append((time.monotonic() + run_after + rng.uniform(-0.002, 0.008), f"t{i}"))
    plan.sort()
    drained: set[str] = set()
    missed: set[str] = set()

    def drainer(targets: list[tuple[float, str]]) -> None:
        for when, task_id in targets:
            delay = when - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                bucket.drain(task_id)
            except TaskNotFound:
                missed.add(task_id)
            else:
                drained.add(task_id)

    threads = [threading.Thread(target=drainer, args=(plan[k::2],)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for handle in handles:
        assert handle.wait(timeout=30) is not None
    ids = {h.id for h in handles}
    assert drained | missed == ids
    assert not drained & missed
    for handle in handles:
        hooks = recorder.hooks(handle.id)
        if handle.id in drained:
            assert handle.state is TaskState.DRAINED
            assert hooks in ([], ["on_execute"]), handle  # no hook after a drain
        else:
            assert handle.state is TaskState.FINISHED
            assert hooks == ["on_execute", "on_finish"], handle
    stats = bucket.stats()
    assert stats.drained == len(drained)
    assert stats.finished == len(missed)
    assert stats.live == 0
    assert set(recorder.count("on_execute").values()) <= {1}


def test_close_with_pending_tasks_waits_then_drains(make_bucket: MakeBucket) -> None:
    recorder = RecordingExecutor()
    bucket = make_bucket(clock=None, executor=recorder, name="closing-bucket")
    soon = [bucket.fill(TIME_BOMB, f"soon-{i}", run_after=0.05) for i in range(20)]
    later = [
        bucket.fill(TIME_BOMB, f"later-{i}", run_after=30.0, life_span=60.0) for i in range(20)
    ]
    begin = time.monotonic()
    bucket.close(timeout=0.5)
    elapsed = time.monotonic() - begin
    assert 0.5 <= elapsed < 10.0
    assert all(h.state is TaskState.FINISHED for h in soon)
    assert all(h.state is TaskState.DRAINED for h in later)
    assert all(h.done() for h in soon + later)
    assert sorted(recorder.ids("on_execute")) == sorted(h.id for h in soon)

    def threads_left() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("closing-bucket")]

    wait_until(lambda: not threads_left(), timeout=10, what="bucket threads exit")


def test_close_without_wait_returns_promptly_and_rescue_hands_back(
    make_bucket: MakeBucket,
) -> None:
    recorder = RecordingExecutor()
    bucket = make_bucket(clock=None, executor=recorder)
    handles = [bucket.fill(TIME_BOMB, f"t{i}", run_after=30.0, life_span=60.0) for i in range(50)]
    begin = time.monotonic()
    bucket.close(wait=False, rescue=True)
    assert time.monotonic() - begin < 5.0
    assert recorder.ids("on_panic") == [h.id for h in handles]
    assert {recorder.detail("on_panic", h.id) for h in handles} == {threading.current_thread()}
    assert all(h.state is TaskState.RESCUED for h in handles)


def test_overrunning_thread_is_replaced_and_the_pool_keeps_going(
    make_bucket: MakeBucket,
) -> None:
    release = threading.Event()
    recorder = RecordingExecutor()

    def stubborn(ctx: TaskContext, task_id: str, data: Any) -> None:
        release.wait(30)  # ignores ctx, like user code that cannot be stopped

    bucket = make_bucket(clock=None, executor=recorder, workers=1)
    try:
        stuck = bucket.fill(IMMEDIATE, "stuck", executor=stubborn, life_span=0.1)
        assert stuck.wait(timeout=30) is TaskState.EXHAUSTED
        after = bucket.fill(IMMEDIATE, "after", 3)
        assert after.result(timeout=30) == 3
        stats = bucket.stats()
        assert stats.workers_stuck == 1
        assert stats.workers_replaced == 1
    finally:
        release.set()
    wait_until(lambda: bucket.stats().workers_stuck == 0, timeout=10, what="worker came back")
    assert bucket.stats().finished == 1

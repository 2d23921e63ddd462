"""Leaks: memory and threads return to their baseline; ended tasks are let go.

* N fill/drain cycles and N fill/finish cycles on one bucket: the memory
  traced by `tracemalloc` after them is back at its level before them (within
  a small constant that does not grow with N), and once the bucket is closed
  the thread count is back at its baseline. N = 20,000 in the default run;
  N = 1,000,000 under ``-m long`` (figures in docs/reliability.md).
* Per task: when a task ends, the bucket keeps no reference to its data,
  executor or ctx; once the caller drops the handle too, everything is gone
  (checked with weak references and `gc.get_objects()`, after `gc.collect()`).
"""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wheelbucket import Executor, TaskBucket, TaskContext, TaskHandle, TaskState, TaskType
from wheelbucket.testing import FakeClock, settle

# Growth allowed after N cycles, whatever N: allocator slack, a deque block,
# an interned string or two. A leak of even one byte per cycle over the long
# runs (1,000,000 cycles) would be far above it.
GROWTH_LIMIT = 64 * 1024
SHORT_CYCLES = 20_000
LONG_CYCLES = 1_000_000
BATCH = 1000


def _noop(ctx: TaskContext, task_id: str, data: Any) -> None:
    return None


def _fill_drain(bucket: TaskBucket, n: int) -> None:
    fill, drain, bomb = bucket.fill, bucket.drain, TaskType.TIME_BOMB
    for _ in range(n):
        fill(bomb, "cycle")
        drain("cycle")


def _fill_finish(bucket: TaskBucket, n: int) -> None:
    """`n` IMMEDIATE tasks run to FINISHED, at most BATCH live at a time."""
    fill, now = bucket.fill, TaskType.IMMEDIATE
    ids = [f"cycle-{j}" for j in range(BATCH)]
    done = 0
    while done < n:
        count = min(BATCH, n - done)
        last: TaskHandle | None = None
        for j in range(count):
            last = fill(now, ids[j])
        assert last is not None
        assert last.wait(60) is TaskState.FINISHED
        _wait(lambda: len(bucket) == 0)
        done += count


def _wait(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.0005)


def _quiesce(bucket: TaskBucket) -> None:
    """Let the scheduler apply its whole inbox and the pool finish its queues.

    Ended tasks wait in the scheduler's inbox until its next wake (at most
    INBOX_BATCH of them); wake it so that the measure does not depend on where
    in that batch the run stopped.
    """
    core = bucket._core
    core.wake.set()
    _wait(
        lambda: (
            not core.inbox
            and core.asleep
            and not core.pool.work
            and not core.pool.hooks
            and core.pool.busy_count() == 0
        )
    )


def _bucket_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name + "-")]


def _measure(cycle: Callable[[TaskBucket, int], None], n: int) -> dict[str, float]:
    """Run `n` cycles after a warm-up; return memory growth, threads and timing."""
    name = f"leak{time.monotonic_ns()}"
    gc.collect()
    threads_before = threading.active_count()
    tracemalloc.start()
    try:
        bucket = TaskBucket(
            executor=_noop, life_span=3600, run_after=1800, max_bucket=2 * BATCH, name=name
        )
        try:
            cycle(bucket, 5000)  # warm-up: caches, deque blocks, worker threads
            _quiesce(bucket)
            gc.collect()
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            started = time.perf_counter()
            cycle(bucket, n)
            elapsed = time.perf_counter() - started
            _quiesce(bucket)
            gc.collect()
            current, peak = tracemalloc.get_traced_memory()
            stats = bucket.stats()
        finally:
            bucket.close()
    finally:
        tracemalloc.stop()
    for thread in _bucket_threads(name):
        thread.join(10)
    assert stats.live == 0
    assert stats.hook_errors == 0
    return {
        "growth": current - baseline,
        "peak_over_baseline": peak - baseline,
        "seconds": elapsed,
        "threads_before": threads_before,
        "threads_after": threading.active_count(),
        "filled": stats.filled,
    }


def _report(label: str, n: int, result: dict[str, float]) -> None:
    print(
        f"\n{label}: {n} cycles in {result['seconds']:.1f} s (tracemalloc on); "
        f"memory growth {result['growth']:+.0f} B, peak over baseline "
        f"{result['peak_over_baseline'] / 1024:.0f} KiB; threads "
        f"{result['threads_before']:.0f} -> {result['threads_after']:.0f}"
    )


@pytest.mark.parametrize(
    ("label", "cycle"),
    [("fill/drain", _fill_drain), ("fill/finish", _fill_finish)],
    ids=["fill-drain", "fill-finish"],
)
def test_cycles_return_to_baseline(label: str, cycle: Callable[[TaskBucket, int], None]) -> None:
    result = _measure(cycle, SHORT_CYCLES)
    _report(label, SHORT_CYCLES, result)
    assert result["growth"] < GROWTH_LIMIT
    assert result["threads_after"] == result["threads_before"]
    assert result["filled"] == SHORT_CYCLES + 5000


@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("long_only")
@pytest.mark.parametrize(
    ("label", "cycle"),
    [("fill/drain", _fill_drain), ("fill/finish", _fill_finish)],
    ids=["fill-drain", "fill-finish"],
)
def test_a_million_cycles_return_to_baseline(
    label: str, cycle: Callable[[TaskBucket, int], None]
) -> None:
    result = _measure(cycle, LONG_CYCLES)
    _report(label, LONG_CYCLES, result)
    assert result["growth"] < GROWTH_LIMIT
    assert result["threads_after"] == result["threads_before"]
    assert result["filled"] == LONG_CYCLES + 5000


# -- per task: nothing kept once it ends ------------------------------------------


class Data:
    """Weak-referenceable task data."""


class Result:
    """Weak-referenceable on_execute result."""


class Worker(Executor):
    """What each task does is in its data: finish, fail, or block until cancelled."""

    def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        if data.mode == "fail":
            raise ValueError("planned failure")
        if data.mode == "block":
            ctx.wait()
        return Result()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def leak_bucket(fake_clock: FakeClock) -> Iterator[TaskBucket]:
    bucket = TaskBucket(executor=_noop, clock=fake_clock, life_span=1.0, workers=2)
    yield bucket
    bucket.close(wait=False)


def _contexts_of(task_id: str) -> list[TaskContext]:
    return [o for o in gc.get_objects() if isinstance(o, TaskContext) and o.task_id == task_id]


def _handles_of(task_id: str) -> list[TaskHandle]:
    return [o for o in gc.get_objects() if isinstance(o, TaskHandle) and o.id == task_id]


ENDINGS = [
    # (ending, task mode, task type)
    ("finish", "return", TaskType.IMMEDIATE),
    ("fail", "fail", TaskType.IMMEDIATE),
    ("exhaust-running", "block", TaskType.IMMEDIATE),
    ("exhaust-pending", "return", TaskType.TIME_BOMB),
    ("drain-running", "block", TaskType.IMMEDIATE),
    ("drain-pending", "return", TaskType.TIME_BOMB),
    ("rescue-running", "block", TaskType.IMMEDIATE),
    ("rescue-pending", "return", TaskType.TIME_BOMB),
]


def _run_to_ending(
    bucket: TaskBucket, clock: FakeClock, ending: str, mode: str, task_type: TaskType
) -> tuple[TaskHandle, weakref.ref[Data], weakref.ref[Worker]]:
    data = Data()
    data.mode = mode  # type: ignore[attr-defined]
    executor = Worker()
    refs = weakref.ref(data), weakref.ref(executor)
    run_after = 0.6 if task_type is TaskType.TIME_BOMB else None
    handle = bucket.fill(task_type, "task", data, executor, run_after=run_after)
    del data, executor
    settle(bucket, running=1 if mode == "block" else 0)
    if ending.startswith("exhaust"):
        clock.advance(1.0)
    elif ending.startswith("drain"):
        bucket.drain("task")
    elif ending.startswith("rescue"):
        assert bucket.rescue() == ["task"]
    settle(bucket)
    assert handle.done()
    return handle, refs[0], refs[1]


@pytest.mark.parametrize(("ending", "mode", "task_type"), ENDINGS, ids=[e[0] for e in ENDINGS])
def test_an_ended_task_keeps_nothing_once_its_handle_is_dropped(
    ending: str, mode: str, task_type: TaskType, leak_bucket: TaskBucket, fake_clock: FakeClock
) -> None:
    handle, data_ref, _ = _run_to_ending(leak_bucket, fake_clock, ending, mode, task_type)
    result = handle.result() if handle.state is TaskState.FINISHED else None
    result_ref = weakref.ref(result) if result is not None else None
    del result
    gc.collect()
    if ending != "fail":
        # Already now, with the handle still held: the bucket and the handle
        # let go of the data and the ctx as soon as the task ends. (A FAILED
        # handle holds its exception, whose traceback holds on_execute's frame
        # and so its arguments, as concurrent.futures does.)
        assert data_ref() is None
        assert _contexts_of("task") == []
    del handle
    leak_bucket._core.wake.set()  # the scheduler's next pass drops its own reference
    settle(leak_bucket)
    gc.collect()
    assert data_ref() is None
    assert result_ref is None or result_ref() is None
    assert _contexts_of("task") == []
    assert _handles_of("task") == []


@pytest.mark.parametrize(("ending", "mode", "task_type"), ENDINGS[:2], ids=["finish", "fail"])
def test_a_per_fill_executor_is_let_go_when_its_task_ends(
    ending: str, mode: str, task_type: TaskType, leak_bucket: TaskBucket, fake_clock: FakeClock
) -> None:
    handle, _, executor_ref = _run_to_ending(leak_bucket, fake_clock, ending, mode, task_type)
    del handle
    settle(leak_bucket)
    gc.collect()
    assert executor_ref() is None


def test_a_per_fill_executor_is_let_go_with_its_bucket(fake_clock: FakeClock) -> None:
    bucket = TaskBucket(executor=_noop, clock=fake_clock)
    handle, data_ref, executor_ref = _run_to_ending(
        bucket, fake_clock, "finish", "return", TaskType.IMMEDIATE
    )
    bucket.close()
    del bucket, handle
    gc.collect()
    assert executor_ref() is None
    assert data_ref() is None


def test_ended_tasks_leave_the_id_map_and_the_wheel(
    leak_bucket: TaskBucket, fake_clock: FakeClock
) -> None:
    for i in range(100):
        leak_bucket.fill(TaskType.TIME_BOMB, f"t{i}", run_after=0.5)
    for i in range(0, 100, 2):
        leak_bucket.drain(f"t{i}")
    fake_clock.advance(0.5)
    settle(leak_bucket)
    leak_bucket._core.wake.set()
    settle(leak_bucket)
    core = leak_bucket._core
    assert core.tasks == {}
    assert len(core.wheel) == 0
    assert not core.inbox
    assert leak_bucket.stats().finished == 50

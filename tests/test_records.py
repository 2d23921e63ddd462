"""Pending tasks the collector does not walk (issue 15): records, handles, the mailbox.

Deterministic: a FakeClock, settle(), and the bucket's own structures read
directly (this is a white-box test of task.py / lifecycle.py / scheduler.py).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref

import pytest

from wheelbucket import TaskBucket, TaskDrained, TaskState, TaskType
from wheelbucket.task import REFS_UNHELD, Task
from wheelbucket.testing import FakeClock, settle

TIME_BOMB = TaskType.TIME_BOMB
IMMEDIATE = TaskType.IMMEDIATE


def _noop(ctx: object, task_id: str, data: object) -> None:
    return None


def _answer(ctx: object, task_id: str, data: object) -> object:
    return ("answer", task_id)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bucket(clock: FakeClock) -> TaskBucket:
    b = TaskBucket(executor=_noop, clock=clock, max_bucket=100_000, run_after=10, life_span=20)
    yield b
    b.close(wait=False)


def test_a_pending_record_holds_only_atomic_values_and_the_collector_untracks_it(
    bucket: TaskBucket,
) -> None:
    other = _answer
    bucket.fill(TIME_BOMB, "default")
    bucket.fill(TIME_BOMB, "own-executor", None, other)
    bucket.fill(TIME_BOMB, "durations", None, run_after=1.5, life_span=3.0)
    bucket.fill(TIME_BOMB, "data", ("a", 1, 2.5))
    settle(bucket)
    # Two collections: a tuple is untracked once its items are, and a
    # collection may look at a record before the tuple it holds (fill).
    gc.collect()
    gc.collect()
    for task_id in ("default", "own-executor", "durations", "data"):
        rec = bucket._core.tasks[task_id]
        assert isinstance(rec, tuple), task_id
        assert not gc.is_tracked(rec), task_id
    # A per-fill executor is a slot in the plan table, not the object.
    assert isinstance(bucket._core.tasks["own-executor"][4], int)


def test_data_that_is_not_atomic_is_the_callers_choice(bucket: TaskBucket) -> None:
    bucket.fill(TIME_BOMB, "t", {"a": [1]})
    gc.collect()
    assert gc.is_tracked(bucket._core.tasks["t"])  # the dict is tracked: so is its record


def test_a_million_pending_tasks_are_a_handful_of_tracked_objects(clock: FakeClock) -> None:
    n = 20_000
    b = TaskBucket(executor=_noop, clock=clock, max_bucket=n, run_after=10, life_span=20)
    try:
        gc.collect()
        before = len(gc.get_objects())
        for i in range(n):
            b.fill(TIME_BOMB, f"t{i}")
        settle(b)
        gc.collect()
        grown = len(gc.get_objects()) - before
        assert grown < n / 100, grown  # the wheel's lists, not one object per task
    finally:
        b.close(wait=False)


def test_a_kept_handle_reads_the_ending_and_its_outcome_after_the_task_left(
    clock: FakeClock,
) -> None:
    b = TaskBucket(executor=_answer, clock=clock)
    try:
        handle = b.fill(TIME_BOMB, "x", run_after=1, life_span=5)
        drained = b.fill(TIME_BOMB, "y", run_after=1, life_span=5)
        b.drain("y")
        clock.advance(1.5)
        settle(b)
        assert "x" not in b
        assert handle.state is TaskState.FINISHED
        assert handle.result(timeout=0) == ("answer", "x")
        assert drained.state is TaskState.DRAINED
        with pytest.raises(TaskDrained):
            drained.result(timeout=0)
    finally:
        b.close(wait=False)


def test_the_last_handle_to_go_takes_the_post_with_it(clock: FakeClock) -> None:
    b = TaskBucket(executor=_answer, clock=clock)
    try:
        mailbox = b._core.life.book.mailbox
        first = b.fill(TIME_BOMB, "x", run_after=1, life_span=5)
        second = b.get("x")
        assert second == first
        assert hash(second) == hash(first)
        assert second is not first
        clock.advance(1.5)
        settle(b)
        assert len(mailbox) == 1
        del first
        assert len(mailbox) == 1  # the other handle still reads it
        assert second.result(timeout=0) == ("answer", "x")
        del second
        assert mailbox == {}
    finally:
        b.close(wait=False)


def test_an_ending_is_posted_only_while_a_handle_holds_the_token(bucket: TaskBucket) -> None:
    mailbox = bucket._core.life.book.mailbox
    for i in range(100):
        bucket.fill(TIME_BOMB, f"dropped{i}")  # the handle is dropped at once
    kept = [bucket.fill(TIME_BOMB, f"kept{i}") for i in range(10)]
    # Filed: the scheduler's inbox no longer holds the records (a record
    # that something else still holds keeps its post until a sweep).
    settle(bucket)
    for i in range(100):
        bucket.drain(f"dropped{i}")
    for task_id in [f"kept{i}" for i in range(10)]:
        bucket.drain(task_id)
    posts = len(mailbox)
    states = {handle.state for handle in kept}
    assert posts == 10
    assert states == {TaskState.DRAINED}
    kept.clear()
    left = len(mailbox)
    assert left == 0


def test_the_reference_counts_are_measured_as_this_python_counts() -> None:
    # What the whole mechanism rests on: a token held by one container reads
    # REFS_UNHELD, and one more holder reads more.
    class Holder:
        __slots__ = ("_token",)

    holder = Holder()
    holder._token = 1 << 50
    holder._token += 1  # a fresh int object
    alone = sys.getrefcount(holder._token)  # (not inside an assert: pytest keeps temporaries)
    other = holder._token
    shared = sys.getrefcount(holder._token)
    del other
    assert alone == REFS_UNHELD
    assert shared > REFS_UNHELD


def test_waiting_registers_the_handle_and_the_ending_releases_it(clock: FakeClock) -> None:
    b = TaskBucket(executor=_answer, clock=clock)
    try:
        book = b._core.life.book
        handle = b.fill(TIME_BOMB, "x", run_after=1, life_span=5)
        assert book.watched == {}
        seen: list[object] = []
        handle.add_done_callback(lambda h: seen.append(h.result(timeout=0)))
        assert len(book.watched) == 1
        clock.advance(1.5)
        settle(b)
        assert seen == [("answer", "x")]
        assert book.watched == {}
        late: list[TaskState] = []
        handle.add_done_callback(lambda h: late.append(h.state))  # at once
        assert late == [TaskState.FINISHED]
        assert book.watched == {}
    finally:
        b.close(wait=False)


def test_stale_filings_are_purged_so_drained_tasks_cost_nothing_for_long(
    clock: FakeClock,
) -> None:
    b = TaskBucket(executor=_noop, clock=clock, max_bucket=100_000, run_after=3600)
    try:
        for rnd in range(5):
            for i in range(2000):
                b.fill(TIME_BOMB, f"t{rnd}-{i}", life_span=7200)
            settle(b)
            for i in range(2000):
                b.drain(f"t{rnd}-{i}")
            settle(b)
        sched = b._core.sched
        assert len(b) == 0
        assert sched.purges >= 1
        assert len(sched.wheel) <= 2 * len(b) + 1024 + 2000
        sched.wheel._check()
    finally:
        b.close(wait=False)


def test_a_per_fill_executor_slot_is_freed_when_its_last_record_goes(bucket: TaskBucket) -> None:
    def mine(ctx: object, task_id: str, data: object) -> None:
        return None

    ref = weakref.ref(mine)
    bucket.fill(TIME_BOMB, "a", None, mine)
    bucket.fill(TIME_BOMB, "b", None, mine)
    life = bucket._core.life
    slot = bucket._core.tasks["a"][4]
    assert life.plan_uses[slot] == 2
    bucket.drain("a")
    assert life.plan_uses[slot] == 1
    bucket.drain("b")
    assert life.plan_uses[slot] == 0
    assert life.plans[slot] is None
    life._check()
    del mine
    gc.collect()
    assert ref() is None


def test_a_record_becomes_a_task_when_it_fires_and_a_reset_makes_it_a_record_again(
    clock: FakeClock,
) -> None:
    b = TaskBucket(executor=_noop, clock=clock, workers=1)
    try:
        b.fill(TIME_BOMB, "x", run_after=1, life_span=5)
        assert isinstance(b._core.tasks["x"], tuple)
        # Fire it with the only worker busy: it queues, as a Task.
        release = threading.Event()
        b.fill(IMMEDIATE, "busy", None, lambda *_: release.wait(30))
        settle(b, running=1)
        clock.advance(1.5)
        end = time.monotonic() + 10
        while isinstance(b._core.tasks["x"], tuple) and time.monotonic() < end:
            time.sleep(0.001)  # the scheduler fires it (settle() waits for queues too)
        task = b._core.tasks["x"]
        assert isinstance(task, Task)
        assert task.state is TaskState.PENDING
        b.reset("x", run_after=10, life_span=20)
        assert isinstance(b._core.tasks["x"], tuple)
        b._core.life._check()
        release.set()  # the worker then drops the stale queue entry
        settle(b)
        assert "x" in b  # the stale queue entry was dropped: it waits again
        clock.advance(10.5)
        settle(b)
        assert "x" not in b
    finally:
        b.close(wait=False)


def test_a_handle_that_waited_takes_its_post_when_dropped_without_a_collection(
    clock: FakeClock,
) -> None:
    b = TaskBucket(executor=_answer, clock=clock)
    try:
        mailbox = b._core.life.book.mailbox
        handle = b.fill(TIME_BOMB, "x", run_after=1, life_span=5)
        handle.add_done_callback(lambda h: None)
        clock.advance(1.5)
        settle(b)
        assert handle.done()
        assert len(mailbox) == 1
        gc.disable()
        try:
            del handle  # no cycle with its waiters: freed, and its post with it
            left = len(mailbox)
        finally:
            gc.enable()
        assert left == 0
    finally:
        b.close(wait=False)


def test_a_purge_goes_in_steps_and_leaves_only_live_filings() -> None:
    from wheelbucket.wheel import TimingWheel

    wheel: TimingWheel[str] = TimingWheel(bits=2, levels=4)
    for i in range(1000):
        wheel.add(5 + i % 200, f"k{i}", i % 3)
    dropped = wheel.purge(lambda key, tag: tag == 0, limit=50)
    assert wheel.purging  # 1000 filings: not in one step of 50
    while wheel.purging:
        dropped += wheel.purge(lambda key, tag: tag == 0, limit=50)
    wheel._check()
    assert dropped == 1000 - 334
    assert len(wheel) == 334
    assert all(tag == 0 for _, _, tag in wheel.filings())

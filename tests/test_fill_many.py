"""TaskBucket.fill_many: an outcome per item, in order; a refused item changes nothing."""

from __future__ import annotations

import pytest

from wheelbucket import BucketClosed, TaskBucket, TaskExists, TaskHandle, TaskState, TaskType
from wheelbucket.testing import FakeClock, settle

TIME_BOMB = TaskType.TIME_BOMB


def _echo(ctx: object, task_id: str, data: object) -> object:
    return data


@pytest.fixture
def bucket() -> TaskBucket:
    b = TaskBucket(executor=_echo, clock=FakeClock(), max_bucket=4, run_after=1, life_span=5)
    yield b
    b.close(wait=False)


def test_each_item_gets_its_own_outcome_in_order(bucket: TaskBucket) -> None:
    bucket.fill(TIME_BOMB, "taken")
    before = bucket.stats()
    out = bucket.fill_many(
        [
            (TIME_BOMB, "a"),
            (TIME_BOMB, "b", "data-b"),
            (TIME_BOMB, "taken"),  # TaskExists
            {"task_type": TIME_BOMB, "task_id": "c", "run_after": 2.0, "life_span": 3.0},
            (TIME_BOMB, ""),  # ValueError
            (TIME_BOMB, "d"),  # the bucket is full by then: None
            ("not a type", "e"),  # TypeError
        ]
    )
    assert [type(o).__name__ for o in out] == [
        "TaskHandle",
        "TaskHandle",
        "TaskExists",
        "TaskHandle",
        "ValueError",
        "NoneType",
        "TypeError",
    ]
    assert isinstance(out[2], TaskExists)
    assert [o.id for o in out if isinstance(o, TaskHandle)] == ["a", "b", "c"]
    after = bucket.stats()
    assert after.filled == before.filled + 3
    assert after.rejected_duplicate == before.rejected_duplicate + 1
    assert after.rejected_full == before.rejected_full + 1
    assert set(bucket._core.tasks) == {"taken", "a", "b", "c"}
    bucket.clock.advance(1.5)  # type: ignore[attr-defined]
    settle(bucket)
    handle = out[1]
    assert isinstance(handle, TaskHandle)
    assert handle.state is TaskState.FINISHED
    assert handle.result(timeout=0) == "data-b"


@pytest.mark.parametrize(
    "item",
    [
        (TIME_BOMB,),
        (TIME_BOMB, "a", None, None, "extra"),
        {"task_id": "a"},
        {"task_type": TIME_BOMB, "task_id": "a", "bogus": 1},
        "a",
    ],
)
def test_a_malformed_item_is_a_type_error_for_that_item_alone(
    bucket: TaskBucket, item: object
) -> None:
    out = bucket.fill_many([item, (TIME_BOMB, "ok")])
    assert isinstance(out[0], TypeError)
    assert isinstance(out[1], TaskHandle)
    assert list(bucket._core.tasks) == ["ok"]


def test_a_closed_bucket_refuses_the_batch(bucket: TaskBucket) -> None:
    bucket.close(wait=False)
    with pytest.raises(BucketClosed):
        bucket.fill_many([(TIME_BOMB, "a")])


def test_an_empty_batch_is_an_empty_list(bucket: TaskBucket) -> None:
    assert bucket.fill_many([]) == []
    assert bucket.fill_many(iter(())) == []


def test_a_batch_gives_up_the_gil_once_not_once_per_item(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fill that finds due work starved (the oldest task queued for a worker
    # is late) gives up the GIL (sleep(0)); a fill_many does so once, at its end.
    import threading

    import wheelbucket.bucket as bucket_module

    release = threading.Event()

    def block(ctx: object, task_id: str, data: object) -> None:
        release.wait(10)

    clock = FakeClock()
    b = TaskBucket(executor=block, clock=clock, workers=1, max_bucket=100, life_span=60)
    try:
        b.fill(TaskType.IMMEDIATE, "busy")
        while not b._core.pool.busy_count():  # the one worker runs it (and blocks)
            threading.Event().wait(0.001)
        b.fill(TaskType.IMMEDIATE, "waiting")  # queued behind it
        clock.advance(0.01)  # ... and now late: due work is starved
        sleeps: list[float] = []
        monkeypatch.setattr(bucket_module, "_sleep", sleeps.append)
        for i in range(3):
            b.fill(TaskType.IMMEDIATE, f"one-{i}")
        assert sleeps == [0, 0, 0]
        sleeps.clear()
        out = b.fill_many([(TaskType.IMMEDIATE, f"many-{i}") for i in range(5)])
        assert all(isinstance(o, TaskHandle) for o in out)
        assert sleeps == [0]
        sleeps.clear()
        b.fill(TaskType.IMMEDIATE, "after")  # fill is itself again
        assert sleeps == [0]
    finally:
        release.set()
        b.close(wait=False)

# docs/examples/fake_clock_test.py
"""Testing code that uses a bucket, exactly and without sleeping: FakeClock and settle().

Run it with pytest (`pytest docs/examples/fake_clock_test.py`) or as a script.
"""

import pytest

from wheelbucket import Executor, TaskBucket, TaskState, TaskType
from wheelbucket.testing import FakeClock, settle


class Reminder(Executor):
    def __init__(self):
        self.sent = []
        self.expired = []

    def on_execute(self, ctx, task_id, data):
        if data == "slow":
            ctx.wait()  # blocks until the task is cancelled (here: exhausted)
        self.sent.append(task_id)

    def on_task_exhausted(self, ctx, task_id, data):
        self.expired.append(task_id)


@pytest.fixture
def clock():
    return FakeClock()  # starts at 1000.0 and moves only when told


@pytest.fixture
def reminder():
    return Reminder()


@pytest.fixture
def bucket(clock, reminder):
    bucket = TaskBucket(clock=clock, executor=reminder, life_span=3600)
    yield bucket
    # close() waits for live tasks on the bucket's clock, and a fake clock does
    # not move by itself: close without waiting.
    bucket.close(wait=False)


def test_reminder_is_sent_after_exactly_thirty_minutes(bucket, clock, reminder):
    bucket.fill(TaskType.TIME_BOMB, "remind::42", run_after=1800)
    clock.advance(1799.999)
    settle(bucket)  # the bucket has done everything due at this (fake) time
    assert reminder.sent == []
    clock.advance(0.001)
    settle(bucket)
    assert reminder.sent == ["remind::42"]
    assert bucket.stats().lateness_max == 0.0  # a fake clock does not move while it runs


def test_a_blocked_task_is_exhausted_at_its_life_span(bucket, clock, reminder):
    handle = bucket.fill(TaskType.IMMEDIATE, "remind::43", "slow", life_span=60)
    settle(bucket, running=1)  # one worker is blocked on purpose, in ctx.wait()
    assert handle.state is TaskState.RUNNING
    clock.advance(60)
    settle(bucket)
    assert handle.state is TaskState.EXHAUSTED
    assert reminder.expired == ["remind::43"]


def test_a_drained_reminder_is_never_sent(bucket, clock, reminder):
    bucket.fill(TaskType.TIME_BOMB, "remind::44", run_after=60)
    clock.advance(30)
    settle(bucket)
    bucket.drain("remind::44")
    clock.advance(3600)
    settle(bucket)
    assert reminder.sent == []
    assert reminder.expired == []  # a drained task gets no hook at all


if __name__ == "__main__":
    for test in (
        test_reminder_is_sent_after_exactly_thirty_minutes,
        test_a_blocked_task_is_exhausted_at_its_life_span,
        test_a_drained_reminder_is_never_sent,
    ):
        the_clock, the_reminder = FakeClock(), Reminder()
        the_bucket = TaskBucket(clock=the_clock, executor=the_reminder, life_span=3600)
        try:
            test(the_bucket, the_clock, the_reminder)
        finally:
            the_bucket.close(wait=False)
    print("all passed")

# docs/examples/context.py
"""TaskContext: the deadline, the time left, and cooperative cancellation."""

import threading

from wheelbucket import TaskBucket, TaskState, TaskType

started = threading.Event()
stopped = threading.Event()
report = {}


def poll_inbox(ctx, task_id, data):
    report["id"] = ctx.task_id
    report["remaining"] = ctx.remaining()  # seconds left in the life span
    report["deadline"] = ctx.deadline  # on the bucket's monotonic clock
    started.set()
    polls = 0
    # ctx.wait(t) blocks for up to t seconds and returns True as soon as the
    # task is drained, exhausted or rescued: the Python form of Go's ctx.Done().
    while not ctx.wait(0.01):
        polls += 1  # one unit of work between checks
    report["cancelled"] = ctx.cancelled
    stopped.set()
    return polls  # ignored: the task ended under us


with TaskBucket(executor=poll_inbox, life_span=30.0) as bucket:
    handle = bucket.fill(TaskType.IMMEDIATE, "poller")
    assert started.wait(timeout=5)
    assert handle.state is TaskState.RUNNING
    bucket.drain("poller")  # ctx is cancelled; the id is free again at once
    assert handle.state is TaskState.DRAINED
    assert "poller" not in bucket
    assert stopped.wait(timeout=5)  # the loop saw the cancellation and returned

print(report["id"], report["cancelled"])  # poller True
assert 0 < report["remaining"] <= 30.0

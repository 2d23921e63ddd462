# docs/examples/overrun.py
"""A task that ignores its ctx and overruns its life span: what the bucket does."""

import logging
import sys
import threading

from wheelbucket import Executor, TaskBucket, TaskExhausted, TaskState, TaskType

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")

release = threading.Event()  # lets the stubborn code return at last
returned = threading.Event()
events = []


class Stubborn(Executor):
    def on_execute(self, ctx, task_id, data):
        release.wait()  # blocks without looking at ctx: nothing can interrupt it
        events.append(("on_execute returned", ctx.cancelled))
        returned.set()
        return "too late"  # ignored: the task already ended EXHAUSTED

    def on_task_exhausted(self, ctx, task_id, data):
        events.append(("on_task_exhausted", ctx.cancelled))


with TaskBucket(workers=1, life_span=0.2, executor=Stubborn()) as bucket:
    stuck = bucket.fill(TaskType.IMMEDIATE, "stubborn")

    # At the end of its life span the task ends at once, while on_execute still runs:
    # ctx is cancelled, on_task_exhausted runs, and the id leaves the bucket.
    assert stuck.wait(timeout=5) is TaskState.EXHAUSTED
    assert events == [("on_task_exhausted", True)]
    assert "stubborn" not in bucket

    # The only worker is stuck in user code, yet the pool does not starve:
    # a replacement thread runs the next task.
    quick = bucket.fill(TaskType.IMMEDIATE, "quick", executor=lambda ctx, task_id, data: "done")
    assert quick.result(timeout=5) == "done"
    stats = bucket.stats()
    print(stats.workers_stuck, stats.workers_replaced, stats.workers)  # 1 1 2

    release.set()
    assert returned.wait(timeout=5)
    assert events[-1] == ("on_execute returned", True)
    try:
        stuck.result()  # what on_execute returned was ignored
    except TaskExhausted as error:
        print(error)  # task 'stubborn' was exhausted

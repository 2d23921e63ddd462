# docs/examples/gobucket_port.py
"""A GoBucket program's shape, in wheelbucket: a TaskExecutor with its five hooks."""

import atexit
import threading

import wheelbucket
from wheelbucket import Executor, TaskBucket

log = []
lock = threading.Lock()


def note(*event):
    with lock:
        log.append(event)


class Mailer(Executor):  # GoBucket: a type implementing the TaskExecutor interface
    def on_execute(self, ctx, task_id, data):  # OnExecute
        if data["name"] == "":
            raise ValueError("no name")  # Go would return an error; Python raises
        return f"sent to {data['name']}"

    def on_finish(self, ctx, task_id, data):  # OnFinish
        note("finish", task_id)

    def on_execute_error(self, ctx, task_id, data, error):  # OnExecuteError
        note("error", task_id, str(error))

    def on_task_exhausted(self, ctx, task_id, data):  # OnTaskExhausted
        note("exhausted", task_id)

    def on_panic(self, ctx, task_id, data):  # OnPanic, called by rescue()
        note("panic", task_id)


# NewTaskBucket(BucketConfig{...}): keyword arguments do that job.
bucket = TaskBucket(
    life_span=5.0, run_after=0.1, max_bucket=1024, verbose=False, executor=Mailer(), workers=4
)
atexit.register(bucket.close)  # a crash handler could call bucket.rescue() instead

ok = bucket.fill(wheelbucket.ImmidiateTask, "process::1", {"id": 1, "name": "Johnson"})
bad = bucket.fill(wheelbucket.ImmediateTask, "process::2", {"id": 2, "name": ""})
bomb = bucket.fill(wheelbucket.TimeBombTask, "process::3", {"id": 3, "name": "Ada"})
gone = bucket.fill(wheelbucket.TimeBombTask, "process::4", {"id": 4, "name": "Grace"})
bucket.drain("process::4")  # Drain: no hook at all

assert ok.result(timeout=5) == "sent to Johnson"
assert str(bad.wait(timeout=5)) == "TaskState.FAILED"
assert bomb.result(timeout=5) == "sent to Ada"
late = bucket.fill(wheelbucket.TimeBombTask, "process::5", {"id": 5, "name": "Linus"}, run_after=3)
assert bucket.rescue() == ["process::5"]  # Rescue: on_panic on this thread, now

assert sorted(log) == [
    ("error", "process::2", "no name"),
    ("finish", "process::1"),
    ("finish", "process::3"),
    ("panic", "process::5"),
]
print(bucket.stats().finished, bucket.stats().failed, bucket.stats().rescued)  # 2 1 1
bucket.close()

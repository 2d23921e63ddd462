# docs/examples/rescue.py
"""rescue(): hand every live task back to the program before it dies."""

import json
import tempfile
import threading
from pathlib import Path

from wheelbucket import Executor, TaskBucket, TaskState, TaskType

running = threading.Event()
saved = Path(tempfile.mkdtemp()) / "rescued.jsonl"


class Exporter(Executor):
    def on_execute(self, ctx, task_id, data):
        running.set()
        ctx.wait()  # a long job; returns when the task is cancelled

    def on_panic(self, ctx, task_id, data):
        # Runs on the thread that called rescue(): persist the task somewhere durable.
        with saved.open("a") as f:
            f.write(json.dumps({"id": task_id, "data": data}) + "\n")


bucket = TaskBucket(executor=Exporter(), life_span=60)
try:
    running_task = bucket.fill(TaskType.IMMEDIATE, "export::1", {"rows": 10})
    pending_task = bucket.fill(TaskType.TIME_BOMB, "export::2", {"rows": 20}, run_after=30)
    assert running.wait(timeout=5)
    raise RuntimeError("the program is going down")
except RuntimeError:
    ids = bucket.rescue()  # every on_panic has returned when rescue() does
    print(ids)  # ['export::1', 'export::2']  (fill order)
finally:
    bucket.close()

lines = [json.loads(line) for line in saved.read_text().splitlines()]
assert [line["id"] for line in lines] == ["export::1", "export::2"]
assert running_task.state is pending_task.state is TaskState.RESCUED
assert bucket.stats().rescued == 2
assert len(bucket) == 0

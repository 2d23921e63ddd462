# docs/examples/verbose_logging.py
"""verbose=True: every lifecycle event at INFO on the "wheelbucket" logger."""

import logging
import sys

from wheelbucket import TaskBucket, TaskType

# The library never configures logging handlers: the application does.
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")

with TaskBucket(verbose=True, executor=lambda ctx, task_id, data: data) as bucket:
    bucket.fill(TaskType.IMMEDIATE, "job::1", 42).wait(timeout=5)
    bucket.fill(TaskType.TIME_BOMB, "job::2", run_after=1.0)
    bucket.drain("job::2")
# INFO task 'job::1' filled (IMMEDIATE)
# INFO task 'job::1' executing
# INFO task 'job::1' finished
# INFO task 'job::2' filled (TIME_BOMB)
# INFO task 'job::2' drained

# Without verbose the same events go out at DEBUG: turn them on per logger when needed.
logging.getLogger("wheelbucket").setLevel(logging.DEBUG)
with TaskBucket(executor=lambda ctx, task_id, data: data) as bucket:
    bucket.fill(TaskType.IMMEDIATE, "job::3").wait(timeout=5)
# DEBUG task 'job::3' filled (IMMEDIATE)
# DEBUG task 'job::3' executing
# DEBUG task 'job::3' finished

"""wheelbucket: an in-memory background job bucket on a hierarchical timing wheel.

The Python heir of the Go library GoBucket::

    from wheelbucket import TaskBucket, TaskType

    with TaskBucket(executor=lambda ctx, task_id, data: print(task_id, data)) as bucket:
        bucket.fill(TaskType.TIME_BOMB, "process::1", {"id": 1}, run_after=0.5)
"""

from .bucket import TaskBucket
from .clock import Clock, MonotonicClock
from .errors import (
    BucketClosed,
    BucketError,
    BucketFull,
    TaskDrained,
    TaskExhausted,
    TaskExists,
    TaskNotFound,
    TaskRescued,
)
from .executor import Executor
from .stats import BucketStats
from .task import TaskContext, TaskHandle, TaskState, TaskType

# GoBucket's names, for people coming from Go (and the seed's spelling).
ImmediateTask = TaskType.IMMEDIATE
ImmidiateTask = TaskType.IMMEDIATE
TimeBombTask = TaskType.TIME_BOMB

__version__ = "0.1.0"

__all__ = [
    "BucketClosed",
    "BucketError",
    "BucketFull",
    "BucketStats",
    "Clock",
    "Executor",
    "ImmediateTask",
    "ImmidiateTask",
    "MonotonicClock",
    "TaskBucket",
    "TaskContext",
    "TaskDrained",
    "TaskExhausted",
    "TaskExists",
    "TaskHandle",
    "TaskNotFound",
    "TaskRescued",
    "TaskState",
    "TaskType",
    "TimeBombTask",
    "__version__",
]

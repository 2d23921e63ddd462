# docs/examples/fill_many.py
"""fill_many(items): a batch, an outcome per item; one item's refusal stops nothing."""

from wheelbucket import TaskBucket, TaskExists, TaskHandle, TaskType

with TaskBucket(executor=lambda ctx, task_id, data: data, max_bucket=3, life_span=120) as bucket:
    bucket.fill(TaskType.TIME_BOMB, "mail:0", run_after=60)
    out = bucket.fill_many(
        [
            (TaskType.TIME_BOMB, "mail:1", {"to": "a@example.com"}),
            {"task_type": TaskType.TIME_BOMB, "task_id": "mail:2", "run_after": 30.0},
            (TaskType.TIME_BOMB, "mail:0"),  # live already: TaskExists, for it alone
            (TaskType.TIME_BOMB, "mail:3"),  # the bucket is full by then: None
        ]
    )
    assert isinstance(out[0], TaskHandle)
    assert isinstance(out[1], TaskHandle)
    assert isinstance(out[2], TaskExists)
    assert out[3] is None
    print([type(o).__name__ for o in out])  # ['TaskHandle', 'TaskHandle', 'TaskExists', 'NoneType']
    bucket.close(wait=False)

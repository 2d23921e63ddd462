# docs/examples/drain.py
"""drain(task_id): cancel a task, pending or running; the id is free at once."""

from wheelbucket import TaskBucket, TaskNotFound, TaskState, TaskType

ran = []

with TaskBucket(executor=lambda ctx, task_id, data: ran.append(task_id)) as bucket:
    # Pending: it is removed and never executes; no hook runs.
    first = bucket.fill(TaskType.TIME_BOMB, "invoice::7", run_after=0.5)
    bucket.drain("invoice::7")
    assert first.state is TaskState.DRAINED
    assert "invoice::7" not in bucket

    # The id can be filled again at once: a new task, with a new handle.
    second = bucket.fill(TaskType.IMMEDIATE, "invoice::7")
    assert second.wait(timeout=5) is TaskState.FINISHED
    assert ran == ["invoice::7"]  # only the second one ran

    # An unknown or already-ended id raises TaskNotFound.
    try:
        bucket.drain("invoice::7")
    except TaskNotFound as error:
        print(error)  # no live task 'invoice::7'
    # It is a KeyError too, so code written against dict-like APIs keeps working.
    assert issubclass(TaskNotFound, KeyError)

# docs/examples/close.py
"""close(): refuse new fills, let live tasks end (or not), stop the threads."""

from wheelbucket import BucketClosed, Executor, TaskBucket, TaskState, TaskType

panicked = []


class Job(Executor):
    def on_execute(self, ctx, task_id, data):
        return task_id

    def on_panic(self, ctx, task_id, data):
        panicked.append(task_id)


# wait=True (the default): live tasks end naturally, timers still fire on time.
bucket = TaskBucket(executor=Job())
soon = bucket.fill(TaskType.TIME_BOMB, "soon", run_after=0.1)
bucket.close()
assert soon.state is TaskState.FINISHED
assert bucket.closed

# After close(), fill raises BucketClosed (a RuntimeError too); close() again is a no-op.
try:
    bucket.fill(TaskType.IMMEDIATE, "too-late")
except BucketClosed as error:
    print(error)  # bucket is closed: cannot fill 'too-late'
bucket.close()

# timeout: wait at most that long, then drain whatever is still live.
bucket = TaskBucket(executor=Job())
slow = bucket.fill(TaskType.TIME_BOMB, "slow", run_after=3.0, life_span=4.0)
bucket.close(timeout=0.05)
assert slow.state is TaskState.DRAINED

# rescue=True: what is still live goes through on_panic instead of being drained.
bucket = TaskBucket(executor=Job())
kept = bucket.fill(TaskType.TIME_BOMB, "kept", run_after=3.0, life_span=4.0)
bucket.close(wait=False, rescue=True)
assert kept.state is TaskState.RESCUED
assert panicked == ["kept"]

# As a context manager, leaving the block calls close() (with wait=True).
with TaskBucket(executor=Job()) as bucket:
    handle = bucket.fill(TaskType.IMMEDIATE, "in-block")
assert handle.state is TaskState.FINISHED
assert bucket.closed

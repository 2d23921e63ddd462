# docs/examples/errors.py
"""The error family: one base class, seven siblings, plain TypeError/ValueError for arguments."""

from wheelbucket import (
    BucketClosed,
    BucketError,
    BucketFull,
    TaskBucket,
    TaskExists,
    TaskNotFound,
    TaskType,
)

with TaskBucket(max_bucket=1, executor=lambda ctx, task_id, data: None) as bucket:
    bucket.fill(TaskType.TIME_BOMB, "only", run_after=0.05)
    try:
        bucket.fill(TaskType.TIME_BOMB, "only")
    except TaskExists as error:  # also a KeyError
        print(error)  # task 'only' is already in the bucket
    try:
        bucket.fill(TaskType.TIME_BOMB, "second")
    except BucketFull as error:
        print(error)  # bucket is full (max_bucket=1 live tasks): cannot fill 'second'
    try:
        bucket.drain("second")
    except TaskNotFound as error:  # also a KeyError
        print(error)  # no live task 'second'

    # Arguments are checked before anything changes; the message names the argument.
    def complaint(call):
        try:
            call()
        except (TypeError, ValueError) as error:
            return f"{type(error).__name__}: {error}"
        return "accepted"

    bad_calls = [
        lambda: bucket.fill(TaskType.TIME_BOMB, "x", run_after=float("nan")),
        lambda: bucket.fill(TaskType.TIME_BOMB, "x", run_after=2.0, life_span=1.0),
        lambda: bucket.fill(TaskType.IMMEDIATE, ""),
        lambda: bucket.fill(TaskType.IMMEDIATE, 42),
        lambda: bucket.fill("now", "x"),
        lambda: TaskBucket(workers=0),
        lambda: TaskBucket(life_span="5s"),
    ]
    for call in bad_calls:
        print(complaint(call))
    stats = bucket.stats()
    assert (stats.filled, stats.rejected_duplicate, stats.rejected_full) == (1, 1, 1)

try:
    bucket.fill(TaskType.IMMEDIATE, "after-close")
except BucketError as error:  # catches every error wheelbucket raises on purpose
    print(repr(error))  # BucketClosed("bucket is closed: cannot fill 'after-close'")
assert issubclass(BucketClosed, RuntimeError)

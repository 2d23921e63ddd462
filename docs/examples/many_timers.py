# docs/examples/many_timers.py
"""Many timers: size max_bucket, freeze the start-up heap, read the lateness."""

import contextlib
import gc
import time

from wheelbucket import TaskBucket, TaskNotFound, TaskType

N = 20_000
timed_out = []


def on_timeout(ctx, task_id, data):  # a plain callable is used as on_execute
    timed_out.append(task_id)


# Start-up is done (imports, configuration, caches): freeze what is alive now,
# so the collector's full collections stop walking it. Frozen objects are still
# freed by reference counting; wheelbucket itself never touches the collector.
gc.freeze()

with TaskBucket(
    executor=on_timeout,
    max_bucket=2 * N,  # the most live tasks at once (default 1024): leave room
    workers=4,  # threads for sync hooks; only blocking hooks need more than one
    tick=0.001,  # the default: a timer fires at the first tick at or after its due time
) as bucket:
    for i in range(N):  # one timeout per connection, due 0.3 to 0.8 s from now
        bucket.fill(TaskType.TIME_BOMB, f"conn::{i}", run_after=0.3 + 0.5 * i / N)
    for i in range(0, N, 2):  # half the connections answer in time: cancel their timeout
        with contextlib.suppress(TaskNotFound):  # unless it has fired already
            bucket.drain(f"conn::{i}")
    while len(bucket):
        time.sleep(0.05)
    stats = bucket.stats()

assert len(timed_out) == stats.finished >= N // 2
assert stats.finished + stats.drained == N
print(f"{stats.finished:,} fired, {stats.drained:,} cancelled")
print(f"lateness p50 {stats.lateness_p50 * 1e3:.1f} ms, p99 {stats.lateness_p99 * 1e3:.1f} ms")

# docs/examples/introspection.py
"""len, in, get and stats(): what the bucket holds and what it has done."""

import threading

from wheelbucket import TaskBucket, TaskState, TaskType

gate = threading.Event()
started = threading.Event()


def work(ctx, task_id, data):
    if data == "block":
        started.set()
        gate.wait()
    elif data == "fail":
        raise RuntimeError("failed on purpose")


with TaskBucket(executor=work, workers=2) as bucket:
    blocked = bucket.fill(TaskType.IMMEDIATE, "blocked", "block")
    assert started.wait(timeout=5)
    bucket.fill(TaskType.TIME_BOMB, "bomb", run_after=2.0, life_span=3.0)

    print(len(bucket), "bomb" in bucket)  # 2 True
    assert bucket.get("bomb").state is TaskState.PENDING
    assert bucket.get("unknown") is None

    stats = bucket.stats()  # a frozen dataclass: a consistent snapshot
    print(stats.live, stats.pending, stats.running)  # 2 1 1
    assert stats.live == stats.pending + stats.running

    bucket.drain("bomb")
    bucket.fill(TaskType.IMMEDIATE, "fails", "fail").wait(timeout=5)
    gate.set()
    blocked.wait(timeout=5)

    s = bucket.stats()
    print(s.filled, s.finished, s.failed, s.drained, s.executed)  # 3 1 1 1 2
    assert s.filled == s.finished + s.failed + s.exhausted + s.drained + s.rescued + s.live
    # Lateness: how long after its due time each on_execute started (seconds).
    assert 0 <= s.lateness_p50 <= s.lateness_p99 <= s.lateness_max
    print(f"p99 lateness {s.lateness_p99 * 1000:.1f} ms")

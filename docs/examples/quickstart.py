# docs/examples/quickstart.py
"""A first bucket: one task now, one a little later, one drained before it runs."""

from wheelbucket import Executor, TaskBucket, TaskState, TaskType

finished = []


class Mailer(Executor):
    def on_execute(self, ctx, task_id, data):
        # The work. Its return value is the task's result.
        return f"mail sent to {data['name']}"

    def on_finish(self, ctx, task_id, data):
        # on_execute returned normally.
        finished.append(task_id)


with TaskBucket(life_span=5.0, run_after=0.2, executor=Mailer()) as bucket:
    now = bucket.fill(TaskType.IMMEDIATE, "mail::1", {"name": "Johnson"})
    later = bucket.fill(TaskType.TIME_BOMB, "mail::2", {"name": "Ada"})  # runs 0.2 s after fill
    never = bucket.fill(TaskType.TIME_BOMB, "mail::3", {"name": "Grace"})
    bucket.drain("mail::3")  # cancelled: it never runs, and no hook runs for it

    print(now.result(timeout=5))  # mail sent to Johnson
    print(later.result(timeout=5))  # mail sent to Ada
    print(never.state)  # TaskState.DRAINED

    assert never.state is TaskState.DRAINED
    assert sorted(finished) == ["mail::1", "mail::2"]  # result() returns after on_finish
    stats = bucket.stats()
    assert (stats.filled, stats.finished, stats.drained, stats.live) == (3, 2, 1, 0)
# Leaving the block called bucket.close(): it waited for live tasks, then stopped the threads.

# docs/examples/executors.py
"""Every form an executor can take, side by side in one bucket."""

import asyncio
import functools

from wheelbucket import Executor, TaskBucket, TaskContext, TaskType

IMMEDIATE = TaskType.IMMEDIATE
finished: list[str] = []


# 1. A subclass of Executor: override only the hooks you need.
class Doubler(Executor):
    def on_execute(self, ctx: TaskContext, task_id: str, data: int) -> int:
        return data * 2

    def on_finish(self, ctx: TaskContext, task_id: str, data: int) -> None:
        finished.append(task_id)


# 2. Any object with an on_execute method; the hooks it lacks are no-ops.
class Incrementer:
    def on_execute(self, ctx, task_id, data):
        return data + 1


# 3. A plain callable f(ctx, task_id, data) is used as on_execute.
def triple(ctx, task_id, data):
    return data * 3


def scale(factor, ctx, task_id, data):
    return data * factor


# 4. Any hook may be `async def`: it runs on the bucket's own event loop thread.
class Fetcher(Executor):
    async def on_execute(self, ctx, task_id, data):
        await asyncio.sleep(0.01)
        return f"fetched {data}"


with TaskBucket(executor=Doubler()) as bucket:  # the bucket's default executor
    handles = [
        bucket.fill(IMMEDIATE, "default", 21),  # no executor: the bucket's Doubler
        bucket.fill(IMMEDIATE, "duck", 41, Incrementer()),
        bucket.fill(IMMEDIATE, "function", 14, triple),
        bucket.fill(IMMEDIATE, "partial", 7, functools.partial(scale, 6)),
        bucket.fill(IMMEDIATE, "lambda", -42, lambda ctx, task_id, data: -data),
        bucket.fill(IMMEDIATE, "async", "/index.html", executor=Fetcher()),
    ]
    results = [h.result(timeout=5) for h in handles]
    print(results)  # [42, 42, 42, 42, 42, 'fetched /index.html']
    assert results == [42, 42, 42, 42, 42, "fetched /index.html"]
    assert finished == ["default"]  # only Doubler defines on_finish

# A bucket without a default executor needs one at every fill.
with TaskBucket() as bucket:
    try:
        bucket.fill(IMMEDIATE, "orphan")
    except ValueError as error:
        print(error)  # no executor: pass executor= to fill() or to TaskBucket()
    assert len(bucket) == 0  # a refused fill changes nothing

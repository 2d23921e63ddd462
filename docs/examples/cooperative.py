# docs/examples/cooperative.py
"""Stopping early: check ctx.cancelled in CPU-bound loops; async work is really cancelled."""

import asyncio
import threading

from wheelbucket import Executor, TaskBucket, TaskExhausted, TaskState, TaskType

crunched = threading.Event()


def crunch(ctx, task_id, data):
    total = 0
    for n in range(data):
        if n % 10_000 == 0 and ctx.cancelled:  # a cheap attribute read
            break
        total += n * n
    crunched.set()
    return total


coroutine_cancelled = threading.Event()
exhausted_hook = threading.Event()


class Crawler(Executor):
    async def on_execute(self, ctx, task_id, data):
        try:
            await asyncio.sleep(60)  # far longer than its life span
        except asyncio.CancelledError:
            coroutine_cancelled.set()  # Task.cancel() reached the coroutine
            raise

    async def on_task_exhausted(self, ctx, task_id, data):
        exhausted_hook.set()


with TaskBucket(life_span=0.3) as bucket:
    # A sync task that would run for minutes stops at its life span.
    big = bucket.fill(TaskType.IMMEDIATE, "crunch", 10**12, crunch)
    assert big.wait(timeout=5) is TaskState.EXHAUSTED
    assert crunched.wait(timeout=5)  # it noticed ctx.cancelled and returned

    # An async on_execute is cancelled for real (asyncio.Task.cancel()).
    crawl = bucket.fill(TaskType.IMMEDIATE, "crawl", "https://example.org", Crawler())
    assert crawl.wait(timeout=5) is TaskState.EXHAUSTED
    assert exhausted_hook.is_set()  # the ending hook has returned when wait() does
    assert coroutine_cancelled.wait(timeout=5)
    try:
        crawl.result()
    except TaskExhausted as error:
        print(error)  # task 'crawl' was exhausted

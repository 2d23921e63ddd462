# docs/examples/handles.py
"""TaskHandle: state, done, wait, result, callbacks and `await`."""

import asyncio
import threading

from wheelbucket import TaskBucket, TaskDrained, TaskRescued, TaskState, TaskType


def shout(ctx, task_id, data):
    if data is None:
        raise ValueError("nothing to shout")
    return data.upper()


with TaskBucket(executor=shout, life_span=2.0) as bucket:
    # FINISHED: result() is on_execute's return value.
    ok = bucket.fill(TaskType.IMMEDIATE, "ok", "hello")
    assert ok.result(timeout=5) == "HELLO"
    assert ok.done()
    assert ok.state is TaskState.FINISHED
    assert ok.id == "ok"

    # FAILED: result() re-raises what on_execute raised.
    bad = bucket.fill(TaskType.IMMEDIATE, "bad", None)
    assert bad.wait(timeout=5) is TaskState.FAILED
    try:
        bad.result()
    except ValueError as error:
        print("failed:", error)  # failed: nothing to shout

    # Not ended yet: wait() returns None and result() raises TimeoutError.
    later = bucket.fill(TaskType.TIME_BOMB, "later", "x", run_after=1.0)
    assert later.state is TaskState.PENDING
    assert not later.done()
    assert later.wait(timeout=0.01) is None
    try:
        later.result(timeout=0.01)
    except TimeoutError:
        print("not yet")  # not yet

    # A done callback runs exactly once, on the thread that ends the task
    # (at once, on the caller's thread, if the task has already ended).
    ended_on = []
    later.add_done_callback(lambda h: ended_on.append((h.state, threading.current_thread().name)))
    bucket.drain("later")  # DRAINED: this thread ended it, so the callback ran here
    assert ended_on == [(TaskState.DRAINED, "MainThread")]
    try:
        later.result()
    except TaskDrained as error:
        print(error)  # task 'later' was drained

    # RESCUED: rescue() ends every live task through on_panic.
    doomed = bucket.fill(TaskType.TIME_BOMB, "doomed", "y", run_after=1.0)
    assert bucket.rescue() == ["doomed"]
    try:
        doomed.result()
    except TaskRescued:
        print("rescued")  # rescued

    # From asyncio code, in any event loop: await the handle itself.
    async def handler() -> str:
        handle = bucket.fill(TaskType.IMMEDIATE, "async-caller", "from a coroutine")
        return await asyncio.wait_for(handle, timeout=5)

    print(asyncio.run(handler()))  # FROM A COROUTINE

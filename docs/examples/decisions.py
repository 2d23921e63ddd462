# docs/examples/decisions.py
"""One check per entry of docs/decisions.md: the library does what that page says."""

import datetime
import gc
import logging
import os
import sys
import threading

from wheelbucket import BucketClosed, TaskBucket, TaskNotFound, TaskState, TaskType
from wheelbucket.testing import FakeClock, settle

logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
IMMEDIATE, TIME_BOMB = TaskType.IMMEDIATE, TaskType.TIME_BOMB


def nothing(ctx, task_id, data):
    return None


# -- Durations: seconds or timedelta, rounded up to whole ns, at most ten years.
clock = FakeClock()
with TaskBucket(clock=clock, executor=nothing, life_span=datetime.timedelta(minutes=5)) as b:
    seen = {}
    b.fill(
        IMMEDIATE, "tiny", executor=lambda ctx, i, d: seen.update(d=ctx.deadline), life_span=1.5e-9
    )
    settle(b)
    assert round((seen["d"] - 1000.0) * 1e9) == 2  # 1.5 ns became 2 ns
try:
    TaskBucket(life_span=10 * 365.25 * 86400 + 1)  # ten years and a second
except ValueError as error:
    print(error)  # life_span must be at most ten years (315576000 s), got 315576001.0

# -- IMMEDIATE ignores run_after, but still checks it.
with TaskBucket(executor=lambda ctx, i, d: "ran") as b:
    assert b.fill(IMMEDIATE, "now", run_after=60).result(timeout=5) == "ran"
    try:
        b.fill(IMMEDIATE, "bad", run_after=-1)
    except ValueError as error:
        print(error)  # run_after must be >= 0 seconds, got -1

# -- TIME_BOMB needs life_span > run_after, checked at fill (the bucket's defaults included).
with TaskBucket(executor=nothing, life_span=1.0, run_after=2.0) as b:  # fine for IMMEDIATE
    try:
        b.fill(TIME_BOMB, "bomb")
    except ValueError as error:
        print(error)  # life_span (1 s) must be greater than run_after (2 s) for a TIME_BOMB task

# -- The handle is done only once the ending hook has returned; state shows the ending first.
in_hook, leave_hook = threading.Event(), threading.Event()


class SlowFinish:
    def on_execute(self, ctx, task_id, data):
        return 1

    def on_finish(self, ctx, task_id, data):
        in_hook.set()
        leave_hook.wait()


with TaskBucket(executor=SlowFinish()) as b:
    h = b.fill(IMMEDIATE, "t")
    assert in_hook.wait(timeout=5)
    assert h.state is TaskState.FINISHED
    assert not h.done()
    assert h.wait(timeout=0.01) is None
    leave_hook.set()
    assert h.result(timeout=5) == 1
    assert h.done()

# -- Done callbacks run on the thread that ends the task; their errors count in hook_errors.
logging.getLogger("wheelbucket").setLevel(logging.CRITICAL)  # the traceback is expected here
with TaskBucket(executor=nothing) as b:
    h = b.fill(TIME_BOMB, "cb", run_after=0.05)
    threads = []

    def callback(handle):
        threads.append(threading.current_thread().name)
        raise RuntimeError("callback bug")

    h.add_done_callback(callback)
    h.wait(timeout=5)
    assert threads == ["wheelbucket-worker-1"]
    assert b.stats().hook_errors == 1
logging.getLogger("wheelbucket").setLevel(logging.NOTSET)


# -- A BaseException from on_execute (SystemExit, say) ends the task FAILED and is kept.
def leave(ctx, task_id, data):
    sys.exit(3)


with TaskBucket(executor=leave) as b:
    h = b.fill(IMMEDIATE, "exit")
    assert h.wait(timeout=5) is TaskState.FAILED
    try:
        h.result()
    except SystemExit as exc:
        code = exc.code
    assert code == 3

# -- close(timeout) counts on the bucket's clock.
clock = FakeClock()  # starts at 1000.0
b = TaskBucket(clock=clock, executor=nothing)
h = b.fill(TIME_BOMB, "late", run_after=5, life_span=10)
closed_at = []


def close_and_note():
    b.close(timeout=2)
    closed_at.append(clock.monotonic())


closer = threading.Thread(target=close_and_note, daemon=True)
closer.start()
while closer.is_alive() and clock.monotonic() < 1004:  # fake time moves only here
    closer.join(0.05)
    clock.advance(0.5)
closer.join(5)
assert closed_at
assert 1002 <= closed_at[0] < 1005  # two fake seconds passed, whatever the real time
assert h.state is TaskState.DRAINED


# -- close() from inside on_execute does not wait for the caller's own task, which it drains.
def shut_down(ctx, task_id, data):
    own.close()
    return ctx.cancelled


own = TaskBucket(executor=shut_down)
h = own.fill(IMMEDIATE, "self")
assert h.wait(timeout=5) is TaskState.DRAINED
assert own.closed

# -- A bucket nobody closed is closed when it is garbage-collected; its threads are daemons.
b = TaskBucket(executor=nothing, name="forgotten")
pending = b.fill(TIME_BOMB, "left-behind", run_after=30, life_span=60)
assert all(t.daemon for t in threading.enumerate() if t.name.startswith("forgotten"))
del b
gc.collect()
# WARNING forgotten was garbage-collected with 1 live tasks and no close(); they were drained
assert pending.state is TaskState.DRAINED

# -- After os.fork() the child's buckets are closed: fill raises BucketClosed.
if hasattr(os, "fork"):
    b = TaskBucket(executor=nothing)
    b.fill(TIME_BOMB, "parent's", run_after=30, life_span=60)
    pid = os.fork()
    if pid == 0:  # the child
        try:
            b.fill(IMMEDIATE, "child's")
            os._exit(1)
        except BucketClosed:
            pass
        try:
            b.drain("parent's")
            os._exit(2)
        except TaskNotFound:
            os._exit(0 if len(b) == 0 else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert "parent's" in b  # the parent's bucket is untouched
    b.close(wait=False)

# -- Threads: the scheduler starts with the bucket, workers on demand, up to `workers`.
with TaskBucket(executor=nothing, workers=3) as b:
    assert b.stats().workers == 0
    for i in range(30):
        b.fill(IMMEDIATE, f"w{i}")
    settle(b)
    s = b.stats()
    assert 1 <= s.workers <= 3
    assert s.executed == 30

# -- `executed` counts on_execute starts: a task drained while running counts, a pending one not.
started = threading.Event()


def blocker(ctx, task_id, data):
    started.set()
    ctx.wait()


logging.getLogger("wheelbucket").setLevel(logging.ERROR)  # the "stuck worker" warning
with TaskBucket(executor=blocker) as b:
    b.fill(IMMEDIATE, "runs")
    assert started.wait(timeout=5)
    b.fill(TIME_BOMB, "never", run_after=10, life_span=20)
    b.drain("runs")
    b.drain("never")
    assert b.stats().executed == 1
    assert b.stats().drained == 2
logging.getLogger("wheelbucket").setLevel(logging.NOTSET)
print("all decisions checked")

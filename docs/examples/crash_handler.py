# docs/examples/crash_handler.py
"""Crash handlers: rescue() after an exception, at exit, and on SIGTERM."""

import atexit
import os
import signal
import time

from wheelbucket import Executor, TaskBucket, TaskType


class Reports(Executor):
    def __init__(self):
        self.saved = []

    def on_execute(self, ctx, task_id, data):
        return f"report for {data}"

    def on_panic(self, ctx, task_id, data):
        self.saved.append((task_id, data))  # real code writes to a file, a database, a queue


reports = Reports()
bucket = TaskBucket(executor=reports)
atexit.register(bucket.rescue)


def on_sigterm(signum, frame):
    # Do not call rescue() in the handler itself: the signal may interrupt this
    # very thread inside fill() or drain(). Turn it into an exception instead.
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, on_sigterm)
try:
    for customer in ("acme", "globex", "initech"):
        bucket.fill(TaskType.TIME_BOMB, f"report::{customer}", customer, run_after=60, life_span=90)
    os.kill(os.getpid(), signal.SIGTERM)  # what `kill <pid>` does from outside
    while True:
        time.sleep(0.01)  # the program's work, interrupted by the signal
except SystemExit:
    print(bucket.rescue())  # ['report::acme', 'report::globex', 'report::initech']
finally:
    bucket.close()

assert [task_id for task_id, _ in reports.saved] == [
    "report::acme",
    "report::globex",
    "report::initech",
]

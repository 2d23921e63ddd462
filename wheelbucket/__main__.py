"""``python -m wheelbucket demo``: fill 100,000 tasks and watch them end.

The demo fills a mix of tasks into one bucket, shows progress while they
run, and prints the bucket's statistics:

* IMMEDIATE tasks that run at once;
* TIME_BOMB tasks that run after a delay spread over a second and a half;
* TIME_BOMB tasks drained right after they were filled (they never run);
* tasks whose work overruns their life span (they end EXHAUSTED, and their
  work stops early because it waits on ``ctx``);
* a few tasks that raise (they end FAILED).
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from . import Executor, TaskBucket, TaskType, __version__
from .task import TaskContext


class DemoExecutor(Executor):
    """Does (almost) nothing, quickly; overruns and fails on request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.early = 0

    def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        kind, due = data
        if time.monotonic() < due:
            with self.lock:
                self.early += 1  # never happens: checked at the end
        if kind == "overrun":
            ctx.wait()  # returns when the life span ends and ctx is cancelled
        elif kind == "fail":
            raise RuntimeError("this task fails on purpose")
        return kind


def _line(bucket: TaskBucket, started: float) -> str:
    s = bucket.stats()
    return (
        f"\r{time.monotonic() - started:5.1f}s  live {s.live:7,}  running {s.running:3}  "
        f"finished {s.finished:7,}  failed {s.failed:5,}  exhausted {s.exhausted:5,}  "
        f"drained {s.drained:6,}"
    )


def demo(total: int = 100_000, seed: int = 7) -> int:
    rng = random.Random(seed)
    executor = DemoExecutor()
    print(f"wheelbucket {__version__}: filling {total:,} tasks", flush=True)
    started = time.monotonic()
    with TaskBucket(
        life_span=3.0, run_after=1.0, max_bucket=total, executor=executor, workers=4
    ) as bucket:
        stop = threading.Event()

        def progress() -> None:
            while not stop.wait(0.25):
                print(_line(bucket, started), end="", flush=True)

        reporter = threading.Thread(target=progress, daemon=True)
        reporter.start()
        fill_start = time.perf_counter()
        for i in range(total):
            roll = rng.random()
            task_id = f"demo::{i}"
            if roll < 0.30:
                bucket.fill(TaskType.IMMEDIATE, task_id, ("quick", 0.0))
            elif roll < 0.30 + 0.0005:
                # Overruns: its life span (0.2 s) ends while it waits on ctx.
                bucket.fill(TaskType.IMMEDIATE, task_id, ("overrun", 0.0), life_span=0.2)
            elif roll < 0.30 + 0.0005 + 0.005:
                bucket.fill(TaskType.IMMEDIATE, task_id, ("fail", 0.0))
            else:
                delay = rng.uniform(0.0, 1.5)
                due = time.monotonic() + delay
                bucket.fill(TaskType.TIME_BOMB, task_id, ("timer", due), run_after=delay)
                if roll > 0.9:
                    bucket.drain(task_id)
        fill_time = time.perf_counter() - fill_start
        while len(bucket):
            time.sleep(0.05)
        stop.set()
        reporter.join()
        print(_line(bucket, started), flush=True)
        stats = bucket.stats()
    print(
        f"filled {total:,} tasks in {fill_time:.2f} s, running the due ones meanwhile "
        "(fill gives way to late work)"
    )
    print()
    width = max(len(name) for name in stats.__dataclass_fields__)
    for name in stats.__dataclass_fields__:
        value = getattr(stats, name)
        shown = f"{value * 1000:.3f} ms" if name.startswith("lateness") else f"{value:,}"
        print(f"  {name:<{width}}  {shown}")
    endings = stats.finished + stats.failed + stats.exhausted + stats.drained + stats.rescued
    ok = endings == stats.filled == total and executor.early == 0 and stats.live == 0
    print()
    print(
        f"every task ended exactly once: {endings == total}; "
        f"started before its due time: {executor.early}"
    )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wheelbucket")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("demo", help="fill 100,000 tasks and print the statistics")
    run.add_argument("-n", "--tasks", type=int, default=100_000, help="how many tasks to fill")
    run.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    return demo(args.tasks, args.seed)


if __name__ == "__main__":
    sys.exit(main())

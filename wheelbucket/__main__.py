"""``python -m wheelbucket demo``: fill 100,000 tasks and watch them end.

The demo fills a mix of tasks into one bucket, each kind with the ending it
is meant to get, shows progress while they run, prints the bucket's
statistics and then checks every task against its plan:

* IMMEDIATE tasks that run at once (FINISHED);
* TIME_BOMB tasks that run after a delay spread over a second and a half
  (FINISHED, never before their due time);
* TIME_BOMB tasks drained right after they were filled (DRAINED: they never run);
* tasks whose work overruns their life span (EXHAUSTED: their work stops
  early because it waits on ``ctx``);
* a few tasks that raise (FAILED).

It exits 1 if any task got another ending than planned, ran early, or the
counters disagree.
"""

from __future__ import annotations

import argparse
import random
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from . import Executor, TaskBucket, TaskState, TaskType, __version__
from .stats import BucketStats
from .task import TaskContext, TaskHandle

WORKERS = 4
OVERRUN_LIFE_SPAN = 0.2  # seconds; the bucket's default life span is 3 s

# kind: (how it is filled, the ending it should get, why); shares in plan()
KINDS: dict[str, tuple[str, TaskState, str]] = {
    "quick": ("IMMEDIATE, returns at once", TaskState.FINISHED, ""),
    "timer": ("TIME_BOMB, due 0-1.5 s after its fill", TaskState.FINISHED, "never early"),
    "drained": ("TIME_BOMB, drained at once", TaskState.DRAINED, "on purpose: never runs"),
    "overrun": (
        f"IMMEDIATE, ctx.wait() past its {OVERRUN_LIFE_SPAN:g} s life span",
        TaskState.EXHAUSTED,
        "on purpose",
    ),
    "fail": ("IMMEDIATE, raises RuntimeError", TaskState.FAILED, "on purpose"),
}


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


def plan(total: int, seed: int) -> list[tuple[str, float]]:
    """(kind, delay) for each task, drawn before anything is filled.

    30 % quick, 0.05 % overrun, 0.5 % fail; of the rest (timers), those whose
    roll is above 0.9 (10 % of all tasks) are drained.
    """
    rng = random.Random(seed)
    tasks = []
    for _ in range(total):
        roll = rng.random()
        if roll < 0.30:
            tasks.append(("quick", 0.0))
        elif roll < 0.30 + 0.0005:
            tasks.append(("overrun", 0.0))
        elif roll < 0.30 + 0.0005 + 0.005:
            tasks.append(("fail", 0.0))
        else:
            delay = rng.uniform(0.0, 1.5)
            tasks.append(("drained" if roll > 0.9 else "timer", delay))
    return tasks


def _line(bucket: TaskBucket, started: float) -> str:
    s = bucket.stats()
    return (
        f"{time.monotonic() - started:5.1f}s  live {s.live:7,}  running {s.running:3}  "
        f"finished {s.finished:7,}  failed {s.failed:5,}  exhausted {s.exhausted:5,}  "
        f"drained {s.drained:6,}"
    )


def _fill(bucket: TaskBucket, tasks: list[tuple[str, float]]) -> dict[str, list[TaskHandle]]:
    handles: dict[str, list[TaskHandle]] = {kind: [] for kind in KINDS}
    for i, (kind, delay) in enumerate(tasks):
        task_id = f"demo::{i}"
        if kind in ("timer", "drained"):
            due = time.monotonic() + delay
            handle = bucket.fill(TaskType.TIME_BOMB, task_id, ("timer", due), run_after=delay)
            if kind == "drained":
                bucket.drain(task_id)
        elif kind == "overrun":
            handle = bucket.fill(
                TaskType.IMMEDIATE, task_id, ("overrun", 0.0), life_span=OVERRUN_LIFE_SPAN
            )
        else:
            handle = bucket.fill(TaskType.IMMEDIATE, task_id, (kind, 0.0))
        handles[kind].append(handle)
    return handles


def demo(total: int = 100_000, seed: int = 7) -> int:
    tasks = plan(total, seed)
    planned = Counter(kind for kind, _ in tasks)
    executor = DemoExecutor()
    print(
        f"wheelbucket {__version__} demo: {total:,} tasks in one bucket (workers={WORKERS}, "
        "tick 1 ms,\nlife span 3 s unless said). The mix, and the ending each kind should get:"
    )
    width = max(len(how) for how, _, _ in KINDS.values())
    for kind, (how, ending, why) in KINDS.items():
        print(
            f"  {planned[kind]:7,}  {kind:<8} {how:<{width}}  -> {ending.name}"
            + (f" ({why})" if why else "")
        )
    print(flush=True)
    started = time.monotonic()
    with TaskBucket(
        life_span=3.0, run_after=1.0, max_bucket=total, executor=executor, workers=WORKERS
    ) as bucket:
        stop = threading.Event()
        tty = sys.stdout.isatty()

        def progress() -> None:
            # On a terminal one line redrawn in place; in a log one line a second.
            while not stop.wait(0.25 if tty else 1.0):
                print(("\r" if tty else "") + _line(bucket, started), end="" if tty else "\n")
                sys.stdout.flush()

        reporter = threading.Thread(target=progress, daemon=True)
        reporter.start()
        fill_start = time.perf_counter()
        handles = _fill(bucket, tasks)
        fill_time = time.perf_counter() - fill_start
        while len(bucket):
            time.sleep(0.05)
        run_time = time.monotonic() - started
        stop.set()
        reporter.join()
        print(("\r" if tty else "") + _line(bucket, started), flush=True)
        stats = bucket.stats()
    print(
        f"filled {total:,} tasks in {fill_time:.2f} s, running the due ones meanwhile "
        f"(fill gives way to late work); all ended after {run_time:.1f} s"
    )
    print()
    _print_stats(stats)
    print()
    ok = _check(handles, stats, executor, total)
    print()
    _explain(stats, planned, total, fill_time, run_time)
    return 0 if ok else 1


def _print_stats(stats: BucketStats) -> None:
    print("bucket.stats():")
    width = max(len(name) for name in stats.__dataclass_fields__)
    for name in stats.__dataclass_fields__:
        value = getattr(stats, name)
        shown = f"{value * 1000:.3f} ms" if name.startswith("lateness") else f"{value:,}"
        print(f"  {name:<{width}}  {shown}")


def _check(
    handles: dict[str, list[TaskHandle]], stats: BucketStats, executor: DemoExecutor, total: int
) -> bool:
    """Print, for each kind, how its tasks ended against the plan; True if all as planned."""
    print("endings, checked task by task against the plan:")
    ok = True
    for kind, (_, ending, _) in KINDS.items():
        got = Counter(handle.state for handle in handles[kind])
        good = got == Counter({ending: len(handles[kind])}) if handles[kind] else not got
        ok = ok and good
        shown = ", ".join(f"{n:,} {state.name}" for state, n in sorted(got.items()))
        print(f"  {kind:<8} {shown or 'none'}  {'as planned' if good else 'NOT AS PLANNED'}")
    endings = stats.finished + stats.failed + stats.exhausted + stats.drained + stats.rescued
    once = endings == stats.filled == total and stats.live == 0
    counters = (
        stats.finished == len(handles["quick"]) + len(handles["timer"])
        and stats.drained == len(handles["drained"])
        and stats.exhausted == len(handles["overrun"])
        and stats.failed == len(handles["fail"])
        and stats.rescued == 0
    )
    print(
        f"every task ended exactly once: {once}; the counters agree with the tasks: {counters}; "
        f"started before its due time: {executor.early}"
    )
    ok = ok and once and counters and executor.early == 0
    print("demo " + ("OK" if ok else "FAILED: some ending above is not as planned"))
    return ok


def _say(text: str) -> None:
    print(textwrap.fill(text, width=88, initial_indent="  ", subsequent_indent="    "))


def _explain(
    stats: BucketStats, planned: Counter[str], total: int, fill_time: float, run_time: float
) -> None:
    print("what the figures mean:")
    _say(
        f"failed {stats.failed:,} and exhausted {stats.exhausted:,} are the 'fail' and "
        "'overrun' tasks above: the demo makes them on purpose."
    )
    _say(
        f"workers_replaced {stats.workers_replaced:,}: when an overrun task's life span "
        "ended, its worker was still inside on_execute (in ctx.wait(), which returns once it "
        "sees the cancellation). A thread cannot be stopped from outside, so the pool counted "
        "that worker as stuck and, when other tasks were queued with no worker idle, started a "
        f"replacement at once rather than wait for it ({planned['overrun']:,} overruns, "
        f"{stats.workers_replaced:,} replacements). A stuck worker that comes back rejoins the "
        f"pool or exits: workers_stuck is {stats.workers_stuck} at the end, and the pool has "
        f"{stats.workers} threads (workers={WORKERS})."
    )
    executed = stats.executed
    _say(
        f"lateness_p99 {stats.lateness_p99 * 1000:.0f} ms: 1 task in 100 started at least that "
        f"long after its due time (p50 {stats.lateness_p50 * 1000:.1f} ms, never early). Here "
        f"one thread filled {total / fill_time:,.0f} tasks a second while {executed:,} came due "
        f"within {run_time:.1f} s (about {executed / run_time:,.0f} a second), "
        f"{planned['quick'] + planned['overrun'] + planned['fail']:,} of them IMMEDIATE, i.e. "
        "due the moment they were filled; the filling loop and the workers share one "
        "interpreter lock and take turns. At a steady fire rate lateness is far lower: see "
        "'Running many timers' in docs/guide.md."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wheelbucket")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("demo", help="fill 100,000 tasks, check their endings, print statistics")
    run.add_argument("-n", "--tasks", type=int, default=100_000, help="how many tasks to fill")
    run.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    return demo(args.tasks, args.seed)


if __name__ == "__main__":
    sys.exit(main())

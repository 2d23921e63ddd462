"""Throughput of async ``on_execute`` through wheelbucket, beside plain asyncio.

Standalone: ``python bench/async_throughput.py [--n 20000] [--repeats 5]``.

Every mode runs the same trivial coroutine N times (it counts itself, and the
last one signals the end) and is timed from the first submission to the
last task done. In the same run, in a rotating order, each repeat on a fresh
bucket or loop after a warm-up of 1,000 tasks:

* ``asyncio``: plain asyncio, from a coroutine on the loop:
  ``loop.call_later(0, loop.create_task, work())`` per task, the way an
  asyncio program schedules "run this soon" itself.
* ``asyncio, fed from a thread``: the same, but submitted from another thread
  with ``loop.call_soon_threadsafe`` per task, as a non-async program has to.
* ``wheelbucket``: ``bucket.fill(IMMEDIATE, ...)`` from the main thread; the
  coroutine runs on the bucket's own loop thread; "done" means every handle
  is done (its ending recorded, its hook through).
* the same three on uvloop (``use_uvloop=True`` for the bucket), if installed.

Reported: tasks per second (median over repeats, with min and max), CPU
microseconds per task (all threads of the process), and the ratio of each
mode to plain asyncio on the same loop kind. Nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from wheelbucket import TaskBucket, TaskType

try:
    import uvloop
except ImportError:  # the 'uvloop' extra is optional
    uvloop = None

IMMEDIATE = TaskType.IMMEDIATE
WARMUP = 1000


class Counter:
    """The work every mode does: count, and signal when the last one ran."""

    __slots__ = ("count", "n", "on_last")

    def __init__(self, n: int, on_last: Callable[[], object]) -> None:
        self.count = 0
        self.n = n
        self.on_last = on_last

    def hit(self) -> None:
        self.count += 1
        if self.count == self.n:
            self.on_last()


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        assert uvloop is not None
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


# -- the modes: each returns (wall seconds, cpu seconds) for n tasks ----------


def run_asyncio(kind: str, n: int) -> tuple[float, float]:
    """Plain asyncio, scheduled from a coroutine on the loop itself."""

    async def main(count: int) -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        counter = Counter(count, lambda: done.set_result(None))

        async def work(task_id: str, data: int) -> int:
            counter.hit()
            return data

        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(count):
            loop.call_later(0, loop.create_task, work(f"t{i}", i))
        await done
        return time.perf_counter() - wall, time.process_time() - cpu

    loop = new_loop(kind)
    try:
        loop.run_until_complete(main(WARMUP))
        return loop.run_until_complete(main(n))
    finally:
        loop.close()


def run_asyncio_threadsafe(kind: str, n: int) -> tuple[float, float]:
    """Plain asyncio on a loop thread, fed from this thread (as fill is)."""
    loop = new_loop(kind)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:

        def once(count: int) -> tuple[float, float]:
            done = threading.Event()
            counter = Counter(count, done.set)

            async def work(task_id: str, data: int) -> int:
                counter.hit()
                return data

            def later(coro: Any) -> None:
                loop.call_later(0, loop.create_task, coro)

            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            for i in range(count):
                loop.call_soon_threadsafe(later, work(f"t{i}", i))
            done.wait()
            return time.perf_counter() - wall, time.process_time() - cpu

        once(WARMUP)
        return once(n)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def run_wheelbucket(kind: str, n: int) -> tuple[float, float]:
    """wheelbucket: fill from this thread, coroutines on the bucket's loop."""
    with TaskBucket(max_bucket=n + WARMUP, life_span=600.0, use_uvloop=kind == "uvloop") as bucket:

        def once(count: int, prefix: str) -> tuple[float, float]:
            done = threading.Event()
            counter = Counter(count, done.set)

            async def work(ctx: Any, task_id: str, data: int) -> int:
                counter.hit()
                return data

            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            handles = [bucket.fill(IMMEDIATE, f"{prefix}{i}", i, work) for i in range(count)]
            done.wait()
            for handle in handles:
                handle.wait()
            elapsed = time.perf_counter() - wall, time.process_time() - cpu
            assert all(h.result(0) == i for i, h in enumerate(handles))
            return elapsed

        once(WARMUP, "w")
        return once(n, "t")


MODES: dict[str, Callable[[str, int], tuple[float, float]]] = {
    "asyncio": run_asyncio,
    "asyncio, fed from a thread": run_asyncio_threadsafe,
    "wheelbucket": run_wheelbucket,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks per trial")
    parser.add_argument("--repeats", type=int, default=5, help="trials per mode")
    parser.add_argument("--no-uvloop", action="store_true", help="skip the uvloop modes")
    parser.add_argument("--json", metavar="PATH", help="also write every trial as JSON")
    args = parser.parse_args()

    kinds = ["asyncio"] + ([] if args.no_uvloop or uvloop is None else ["uvloop"])
    combos = [(kind, mode) for kind in kinds for mode in MODES]
    trials: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in combos}
    load_before = os.getloadavg()
    for rep in range(args.repeats):
        shift = rep % len(combos)  # rotate the order: no mode always goes first
        for kind, mode in combos[shift:] + combos[:shift]:
            trials[(kind, mode)].append(MODES[mode](kind, args.n))
        print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    load_after = os.getloadavg()

    print(
        f"\nasync on_execute throughput: N={args.n:,} trivial coroutines, "
        f"median of {args.repeats} [min-max]; Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load {load_before[0]:.2f} -> {load_after[0]:.2f}\n"
    )
    print("| loop | mode | tasks/s | CPU µs/task | vs plain asyncio |")
    print("|---|---|---:|---:|---:|")
    summary: dict[str, dict[str, float]] = {}
    for kind, mode in combos:
        rates = [args.n / wall for wall, _ in trials[(kind, mode)]]
        cpus = [cpu / args.n * 1e6 for _, cpu in trials[(kind, mode)]]
        rate = statistics.median(rates)
        base = statistics.median(args.n / wall for wall, _ in trials[(kind, "asyncio")])
        summary[f"{kind}/{mode}"] = {"rate": rate, "cpu_us": statistics.median(cpus)}
        print(
            f"| {kind} | {mode} | {rate:,.0f} [{min(rates):,.0f}-{max(rates):,.0f}] "
            f"| {statistics.median(cpus):.1f} | {rate / base:.2f}x |"
        )
    print()
    for kind in kinds:
        ratio = summary[f"{kind}/wheelbucket"]["rate"] / summary[f"{kind}/asyncio"]["rate"]
        print(f"ratio wheelbucket / plain asyncio ({kind} loop): {ratio:.2f}")
    if "uvloop" in kinds:
        gain = summary["uvloop/wheelbucket"]["rate"] / summary["asyncio/wheelbucket"]["rate"]
        print(f"wheelbucket with use_uvloop=True vs the default loop: {gain:.2f}x")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "n": args.n,
                    "repeats": args.repeats,
                    "trials": {f"{k}/{m}": v for (k, m), v in trials.items()},
                    "summary": summary,
                },
                out,
                indent=1,
            )


if __name__ == "__main__":
    main()

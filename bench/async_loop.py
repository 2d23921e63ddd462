"""Async ``on_execute`` on the application's own loop (``TaskBucket(loop=...)``), beside asyncio.

    python -m bench.async_loop [--n 20000] [--repeats 3] [--spread 1.0] [--uvloop] [--json PATH]

Every mode runs the same trivial coroutine N times on one loop, the
application's, from a coroutine on that loop: it notes how late it started
against its due time, counts itself, and the last one signals the end. Two
workloads, each trial on a fresh loop after a warm-up of 1,000 tasks, the
(workload, mode) pairs in a rotating order, medians over the repeats:

* ``burst``: N tasks due at once. Timed from the first submission to the
  last task done; tasks per second.
* ``timers``: N tasks due at random times spread over ``--spread`` seconds
  (starting 50 ms out), submitted in random order: the lateness of each
  coroutine start against its due time (p50, p99, max).

The modes, side by side on the same loop:

* ``asyncio``: ``loop.call_later(delay, lambda: loop.create_task(work()))``,
  the way an asyncio program schedules its own timers.
* ``wheelbucket``: ``bucket.fill(IMMEDIATE, ...)`` (burst) or
  ``bucket.fill(TIME_BOMB, ..., run_after=delay)`` (timers) on a bucket made
  with ``loop=`` that loop; "done" means the last coroutine ran and the bucket
  is empty (every ending recorded). Until ``loop=`` exists its rows say "not
  available".

Reported: tasks per second of the burst (median [min-max]), CPU microseconds
per task (every thread of the process), lateness p50/p99/max in milliseconds
(in the burst that is mostly queueing behind the other tasks), and the ratio
wheelbucket / asyncio of the burst's tasks per second (the goal: at least 0.8).
Nothing here runs under pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from wheelbucket import TaskBucket, TaskType

try:
    import uvloop
except ImportError:  # the 'uvloop' extra is optional
    uvloop = None  # type: ignore[assignment]

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB
WARMUP = 1000
LEAD = 0.05  # the first timer of the timers workload is due this far out
GOAL = 0.8


class Trial:
    """One trial's work: the start lateness of each coroutine, and the end signal."""

    __slots__ = ("count", "done", "late", "n")

    def __init__(self, n: int, loop: asyncio.AbstractEventLoop) -> None:
        self.n = n
        self.count = 0
        self.late: list[float] = []
        self.done = loop.create_future()

    def hit(self, due: float) -> None:
        self.late.append(time.monotonic() - due)
        self.count += 1
        if self.count == self.n:
            self.done.set_result(None)


Result = dict[str, Any]


def summary(trial: Trial, wall: float, cpu: float) -> Result:
    late = sorted(trial.late)
    return {
        "wall": wall,
        "cpu": cpu,
        "rate": trial.n / wall,
        "p50": late[len(late) // 2],
        "p99": late[min(len(late) - 1, int(len(late) * 0.99))],
        "max": late[-1],
    }


def plan(workload: str, n: int, spread: float) -> list[float]:
    """The delay of each task, in submission order."""
    if workload == "burst":
        return [0.0] * n
    rng = random.Random(n)
    return [LEAD + rng.random() * spread for _ in range(n)]


# -- the modes: coroutines on the application's loop ---------------------------


async def run_asyncio(delays: list[float], warmup: list[float]) -> Result:
    loop = asyncio.get_running_loop()

    async def once(delays: list[float]) -> Result:
        trial = Trial(len(delays), loop)

        async def work(due: float) -> None:
            trial.hit(due)

        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()

        def start(due: float) -> None:
            # No reference kept, as in the plain pattern: work() ends in its first step.
            loop.create_task(work(due))  # noqa: RUF006

        for delay in delays:
            # call_later(delay, lambda: loop.create_task(work(due))), the
            # coroutine made when it comes due, as a callback does it.
            loop.call_later(delay, start, time.monotonic() + delay)
        await trial.done
        return summary(trial, time.perf_counter() - wall, time.process_time() - cpu)

    await once(warmup)
    return await once(delays)


async def run_wheelbucket(delays: list[float], warmup: list[float]) -> Result:
    loop = asyncio.get_running_loop()
    bucket = TaskBucket(loop=loop, max_bucket=len(delays) + len(warmup), life_span=600.0)

    async def once(delays: list[float], prefix: str) -> Result:
        trial = Trial(len(delays), loop)

        async def work(ctx: Any, task_id: str, due: float) -> None:
            trial.hit(due)

        fill = bucket.fill
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        for i, delay in enumerate(delays):
            due = time.monotonic() + delay
            if delay:
                fill(TIME_BOMB, f"{prefix}{i}", due, work, run_after=delay, life_span=delay + 600.0)
            else:
                fill(IMMEDIATE, f"{prefix}{i}", due, work)
        await trial.done
        while len(bucket):  # every ending recorded
            await asyncio.sleep(0.001)
        result = summary(trial, time.perf_counter() - wall, time.process_time() - cpu)
        stats = bucket.stats()
        for field in ("loop_lateness_p99", "loop_lateness_max"):
            if hasattr(stats, field):
                result[field] = getattr(stats, field)  # since the bucket was made
        return result

    try:
        await once(warmup, "w")
        return await once(delays, "t")
    finally:
        await bucket.aclose()


MODES: dict[str, Callable[[list[float], list[float]], Coroutine[Any, Any, Result]]] = {
    "asyncio": run_asyncio,
    "wheelbucket": run_wheelbucket,
}


def available() -> str | None:
    """None if ``TaskBucket(loop=...)`` is accepted, else why not."""

    async def probe() -> str | None:
        try:
            bucket = TaskBucket(loop=asyncio.get_running_loop())
        except TypeError as error:
            return str(error)
        await bucket.aclose()
        return None

    return asyncio.run(probe())


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        assert uvloop is not None
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def one_trial(kind: str, mode: str, workload: str, n: int, spread: float) -> Result:
    loop = new_loop(kind)
    try:
        warmup = plan(workload, WARMUP, min(spread, 0.1))
        return loop.run_until_complete(MODES[mode](plan(workload, n, spread), warmup))
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks per trial")
    parser.add_argument("--repeats", type=int, default=3, help="trials per mode and workload")
    parser.add_argument("--spread", type=float, default=1.0, help="seconds the timers span")
    parser.add_argument("--uvloop", action="store_true", help="also run on uvloop loops")
    parser.add_argument("--json", metavar="PATH", help="also write every trial as JSON")
    args = parser.parse_args()

    missing = available()
    modes = ["asyncio"] + ([] if missing else ["wheelbucket"])
    kinds = ["asyncio"] + (["uvloop"] if args.uvloop and uvloop is not None else [])
    combos = [(k, w, m) for k in kinds for w in ("burst", "timers") for m in modes]
    trials: dict[tuple[str, str, str], list[Result]] = {c: [] for c in combos}
    load_before = os.getloadavg()
    for rep in range(args.repeats):
        shift = rep % len(combos)  # rotate the order: no mode always goes first
        for kind, workload, mode in combos[shift:] + combos[:shift]:
            trials[(kind, workload, mode)].append(
                one_trial(kind, mode, workload, args.n, args.spread)
            )
        print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
    load_after = os.getloadavg()

    print(
        f"\nasync on_execute on the application's loop: N={args.n:,} trivial coroutines, "
        f"median of {args.repeats} [min-max]; timers spread over {args.spread} s; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load {load_before[0]:.2f} -> {load_after[0]:.2f}\n"
    )
    print(
        "| loop | workload | mode | tasks/s | CPU µs/task "
        "| lateness p50 ms | p99 ms | max ms | vs asyncio |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    medians: dict[str, dict[str, float]] = {}
    for kind, workload, mode in combos:
        runs = trials[(kind, workload, mode)]
        med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        medians[f"{kind}/{workload}/{mode}"] = med
        rates = [r["rate"] for r in runs]
        base = medians[f"{kind}/{workload}/asyncio"]["rate"]
        # The timers' pace is set by their due times: their rate says nothing.
        rate, versus = "-", "-"
        if workload == "burst":
            rate = f"{med['rate']:,.0f} [{min(rates):,.0f}-{max(rates):,.0f}]"
            versus = f"{med['rate'] / base:.2f}x"
        print(
            f"| {kind} | {workload} | {mode} | {rate} | {med['cpu'] / args.n * 1e6:.1f} "
            f"| {med['p50'] * 1e3:.2f} | {med['p99'] * 1e3:.2f} | {med['max'] * 1e3:.2f} "
            f"| {versus} |"
        )
    if missing:
        for kind in kinds:
            for workload in ("burst", "timers"):
                print(f"| {kind} | {workload} | wheelbucket | not available | | | | | |")
        print(f"\nwheelbucket with loop=: not available ({missing})")
    else:
        print()
        for kind in kinds:
            ratio = (
                medians[f"{kind}/burst/wheelbucket"]["rate"]
                / medians[f"{kind}/burst/asyncio"]["rate"]
            )
            verdict = "meets" if ratio >= GOAL else "misses"
            print(
                f"ratio wheelbucket / asyncio, burst ({kind} loop): {ratio:.2f} "
                f"({verdict} the goal of {GOAL})"
            )
            own = medians[f"{kind}/timers/wheelbucket"]
            if "loop_lateness_p99" in own:
                p99, top = own["loop_lateness_p99"] * 1e3, own["loop_lateness_max"] * 1e3
                print(
                    f"the bucket's own loop_lateness_p99 / max, timers ({kind} loop): "
                    f"{p99:.2f} / {top:.2f} ms"
                )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "n": args.n,
                    "repeats": args.repeats,
                    "spread": args.spread,
                    "available": missing is None,
                    "trials": {"/".join(c): v for c, v in trials.items()},
                    "medians": medians,
                },
                out,
                indent=1,
            )


if __name__ == "__main__":
    main()

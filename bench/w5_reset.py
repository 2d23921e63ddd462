"""SPEC W5 reset: ``python -m bench.w5_reset``.

    python -m bench.w5_reset                          # N = 100k and 1M, 3 repeats (~2 min)
    python -m bench.w5_reset --n 10000 --repeats 1    # a smoke run
    python -m bench.w5_reset --json results.json      # also keep every trial

N pending timers, each moved later once, in random order: microseconds per
move for

* wheelbucket ``reset(id, run_after=90, life_span=150)``: the new times given,
  as the other rows give them;
* wheelbucket ``reset(id)``: the idle-timeout form, both times as filled
  (due 60 s from now, later than the 60 s from the fill);
* wheelbucket ``drain(id)`` + ``fill(TIME_BOMB, id, run_after=90, life_span=150)``:
  what a program without reset does;
* asyncio ``handle.cancel()`` + ``loop.call_later(90, ...)`` from inside the
  loop, keeping the key -> TimerHandle dict a user keeps to move by key.

The heapq + ThreadPoolExecutor peer (`bench.peers.HeapPoolPeer`) has no way
of its own to move a timer, only schedule and a lazy cancel, so it has no row:
its move would be that cancel + schedule, the same shape as the asyncio row.

How it is measured (the bench's habits, see `bench.core_targets` and W1 in
`bench.workloads`):

* every trial is a fresh process (``--run``); the parent rotates the order
  of the kinds with each repeat and reports the median over the repeats,
  with [min-max];
* ids are built before anything is timed; the N timers are due in 60 s
  (life span 120 s), so none fires during the trial; the random order of the
  moves is made after the timers exist (made before, it is one more big
  list in random memory order for the collector to walk while they are
  made) and before the clock starts;
* one ``gc.collect()`` right before the timed loop, and the collector stays
  on: what a move allocates (drain + fill makes a new task record per move)
  costs collections, and those are part of its price. The table shows the
  collections that ran inside the timed loop and their total pause;
* "per move" is the loop from the first call to the last return; "applied"
  adds the wait until the bucket's scheduler has taken in every change (a
  marker task with run_after=0 has run), or one turn of the event loop for
  asyncio (where it purges cancelled handles).

Caveats: on a shared 2-core machine the absolute figures move with the load
(the load average is printed); compare the ratios, which come from the same
run. wheelbucket runs with its scheduler thread and 4 workers up, as a user
has them; asyncio runs the moves on its own loop thread, with no other thread.
"""

# The report is for people: its typographic dashes and signs are on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

DUE_S = 60.0  # where the N timers are first due
LIFE_S = 120.0
MOVED_DUE_S = 90.0  # where a move puts them: later
MOVED_LIFE_S = 150.0
SEED = 5

KINDS = ["reset", "reset_defaults", "drain_fill", "asyncio"]
LABELS = {
    "reset": "wheelbucket reset(id, run_after=90, life_span=150)",
    "reset_defaults": "wheelbucket reset(id) (times as filled)",
    "drain_fill": "wheelbucket drain(id) + fill(TIME_BOMB, id, run_after=90, life_span=150)",
    "asyncio": "asyncio TimerHandle.cancel() + loop.call_later(90, ...)",
}


class GcTimer:
    """Counts the collections that run while it is on, and their total pause."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_s = 0.0
        self._started = 0.0
        self.on = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.count[info["generation"]] += 1
        self.total_s += time.perf_counter() - self._started


def _noop(ctx: object, task_id: str, data: object) -> None:
    pass


def _sync(bucket: Any, tag: str) -> None:
    """Return once the scheduler applied every earlier call (a marker task ran)."""
    from wheelbucket import TaskType

    done = threading.Event()
    bucket.fill(TaskType.TIME_BOMB, f"__marker_{tag}", None, lambda *_: done.set(), run_after=0)
    if not done.wait(300):
        raise RuntimeError("marker task did not run within 300 s")


def _order(ids: list[str]) -> list[str]:
    order = ids[:]
    random.Random(SEED).shuffle(order)
    return order


def _timed(loop_body: Any, order: list[str]) -> tuple[float, GcTimer]:
    """Run ``loop_body(order)`` once after a gc.collect(); its seconds and collections."""
    timer = GcTimer()
    gc.callbacks.append(timer)
    try:
        gc.collect()
        timer.on = True
        t0 = time.perf_counter()
        loop_body(order)
        seconds = time.perf_counter() - t0
        timer.on = False
    finally:
        gc.callbacks.remove(timer)
    return seconds, timer


def run_wheelbucket(kind: str, n: int) -> dict[str, Any]:
    from wheelbucket import TaskBucket, TaskType

    if kind != "drain_fill" and not hasattr(TaskBucket, "reset"):
        return {"kind": kind, "n": n, "available": False}
    bomb = TaskType.TIME_BOMB
    ids = [f"task-{i}" for i in range(n)]
    with TaskBucket(max_bucket=n + 64, workers=4, executor=_noop) as bucket:
        _sync(bucket, "warm")
        fill = bucket.fill
        for task_id in ids:
            fill(bomb, task_id, run_after=DUE_S, life_span=LIFE_S)
        _sync(bucket, "filled")
        if len(bucket) != n:
            raise RuntimeError(f"expected {n} live tasks, found {len(bucket)}")
        order = _order(ids)

        if kind == "reset":
            reset = bucket.reset

            def body(order: list[str]) -> None:
                for task_id in order:
                    reset(task_id, run_after=MOVED_DUE_S, life_span=MOVED_LIFE_S)

        elif kind == "reset_defaults":
            reset = bucket.reset

            def body(order: list[str]) -> None:
                for task_id in order:
                    reset(task_id)

        else:
            drain = bucket.drain

            def body(order: list[str]) -> None:
                for task_id in order:
                    drain(task_id)
                    fill(bomb, task_id, run_after=MOVED_DUE_S, life_span=MOVED_LIFE_S)

        t0 = time.perf_counter()
        seconds, timer = _timed(body, order)
        _sync(bucket, "moved")
        applied = time.perf_counter() - t0
        stats = bucket.stats()
        if len(bucket) != n:
            raise RuntimeError(f"{n - len(bucket)} tasks ended during the moves")
        result = {
            "kind": kind,
            "n": n,
            "available": True,
            "us": seconds / n * 1e6,
            "applied_us": applied / n * 1e6,
            "gc_count": timer.count,
            "gc_ms": timer.total_s * 1e3,
            "reset_counter": stats.reset,
            "executed_early": stats.executed - 3,  # the three markers
        }
        # Not measured, and slow at 1M: draining everything at close.
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)


def run_asyncio(n: int) -> dict[str, Any]:
    keys = [f"task-{i}" for i in range(n)]
    fired: list[str] = []
    callback = fired.append
    loop = asyncio.new_event_loop()

    async def trial() -> dict[str, Any]:
        call_later = loop.call_later
        handles = {key: call_later(DUE_S, callback, key) for key in keys}
        await asyncio.sleep(0)
        order = _order(keys)

        def body(order: list[str]) -> None:
            for key in order:
                handles[key].cancel()
                handles[key] = call_later(MOVED_DUE_S, callback, key)

        t0 = time.perf_counter()
        seconds, timer = _timed(body, order)
        await asyncio.sleep(0)  # one turn: where asyncio purges cancelled handles
        applied = time.perf_counter() - t0
        scheduled = len(loop._scheduled)  # type: ignore[attr-defined]
        for handle in handles.values():
            handle.cancel()
        return {
            "kind": "asyncio",
            "n": n,
            "available": True,
            "us": seconds / n * 1e6,
            "applied_us": applied / n * 1e6,
            "gc_count": timer.count,
            "gc_ms": timer.total_s * 1e3,
            "heap_entries_after": scheduled,
            "fired": len(fired),
        }

    try:
        return loop.run_until_complete(trial())
    finally:
        loop.close()


def run_one(kind: str, n: int) -> dict[str, Any]:
    if kind == "asyncio":
        return run_asyncio(n)
    return run_wheelbucket(kind, n)


# -- the parent -------------------------------------------------------------------------


def _spawn(kind: str, n: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.w5_reset", "--run", kind, "--n", str(n)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{kind} (n={n}) failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def _spread(values: list[float], digits: int = 2) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def summarize(trials: list[dict[str, Any]], sizes: list[int]) -> list[str]:
    """The markdown table (one row per kind and N) and the ratio rows."""
    lines = [
        "| move | N | µs per move | µs per move, applied | collections in the loop "
        "(gen 0/1/2), pause ms |",
        "|---|---:|---:|---:|---|",
    ]
    medians: dict[tuple[str, int], float] = {}
    for n in sizes:
        for kind in KINDS:
            runs = [t for t in trials if t["kind"] == kind and t["n"] == n]
            if not runs:
                continue
            if not all(t["available"] for t in runs):
                lines.append(f"| {LABELS[kind]} | {n:,} | reset not available | – | – |")
                continue
            medians[kind, n] = statistics.median(t["us"] for t in runs)
            gc_counts = "/".join(
                str(round(statistics.median(t["gc_count"][g] for t in runs))) for g in range(3)
            )
            gc_ms = statistics.median(t["gc_ms"] for t in runs)
            lines.append(
                f"| {LABELS[kind]} | {n:,} | {_spread([t['us'] for t in runs])} | "
                f"{_spread([t['applied_us'] for t in runs])} | {gc_counts}, {gc_ms:.0f} |"
            )
    lines += [
        "",
        "| ratio of the medians (below 1: reset is cheaper) | N | value |",
        "|---|---:|---:|",
    ]
    for n in sizes:
        for num, den, label in (
            ("reset", "drain_fill", "reset / (drain + fill)"),
            ("reset_defaults", "drain_fill", "reset(id) / (drain + fill)"),
            ("reset", "asyncio", "reset / asyncio cancel + call_later"),
            ("reset_defaults", "asyncio", "reset(id) / asyncio cancel + call_later"),
        ):
            if (num, n) in medians and (den, n) in medians:
                value = f"{medians[num, n] / medians[den, n]:.2f}×"
            elif (den, n) in medians:
                value = "reset not available"
            else:
                continue
            lines.append(f"| {label} | {n:,} | {value} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.w5_reset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--n", type=int, nargs="+", default=[100_000, 1_000_000], help="sizes (default 100k 1M)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per size and kind")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=KINDS)
    parser.add_argument("--json", type=Path, help="also write every trial to this file")
    parser.add_argument("--run", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        result = run_one(args.run, args.n[0])
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)

    load_before = [round(x, 2) for x in os.getloadavg()]
    print(
        f"W5 reset: N={', '.join(f'{n:,}' for n in args.n)}; {args.repeats} repeat(s); "
        f"load average {load_before}",
        file=sys.stderr,
        flush=True,
    )
    trials = []
    for size_index, n in enumerate(args.n):
        for rep in range(args.repeats):
            shift = (rep + size_index) % len(args.kinds)
            for kind in args.kinds[shift:] + args.kinds[:shift]:
                print(f"  {kind} N={n:,} ({rep + 1}/{args.repeats}) ...", end="", file=sys.stderr)
                result = _spawn(kind, n)
                print(f" {result['process_s']:.1f} s", file=sys.stderr, flush=True)
                trials.append(result)
    load_after = [round(x, 2) for x in os.getloadavg()]
    problems = [
        f"{t['kind']} N={t['n']}: {t['executed_early']} task(s) ran during the moves"
        for t in trials
        if t.get("executed_early")
    ] + [
        f"{t['kind']} N={t['n']}: stats().reset is {t['reset_counter']}, not {t['n']}"
        for t in trials
        if t["kind"].startswith("reset") and t["available"] and t["reset_counter"] != t["n"]
    ]
    print()
    print("\n".join(summarize(trials, args.n)))
    print()
    print(
        f"Medians of {args.repeats} fresh process(es) per cell, [min–max]; load average "
        f"before {load_before}, after {load_after}. The heapq+pool peer has no move of its "
        "own (only schedule and a lazy cancel), so it has no row."
    )
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json:
        from .__main__ import machine_info

        meta = {
            "command": " ".join(["python -m bench.w5_reset", *(argv or sys.argv[1:])]),
            "machine": machine_info(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        }
        args.json.write_text(json.dumps({"meta": meta, "trials": trials}, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()

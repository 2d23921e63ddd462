"""Issue 2's figures for wheelbucket alone: ``python -m bench.core_targets``.

    python -m bench.core_targets            # N = 1,000,000 (about a minute)
    python -m bench.core_targets --quick    # N = 100,000: a smoke run, not the targets

Each measurement runs in a fresh process (``--run NAME``), prints one JSON
line, and the parent prints a table: target, GoBucket's figure on the same
machine, what wheelbucket did, pass/fail. It also writes
``core_targets[-quick].md`` and ``.json`` to ``bench/results/`` (untracked),
or to ``--out DIR``: ``--out docs/benchmarks`` refreshes the published ones.

What is measured (all with a real executor, the scheduler thread and the
pool running, ``workers=4``):

* fill: N TIME_BOMB tasks (run_after 60 s, life_span 120 s) from one thread,
  ids built beforehand; wall time from the first fill call to the last one
  returning, per fill. Also reported: the same until the scheduler has
  applied them all (a marker task with run_after=0 has executed).
* drain: all N in random order (the order is made after the fill, so it
  is not one more big list for the collector to walk while the fill is
  timed); wall time first call to last return, per drain; the ratio of
  that per-drain cost at N to the cost at 10,000. Fill and drain are
  medians of 3 fresh processes at each size.
* context for that ratio, not targets: the same N filled again and drained
  in fill order, and the least a drain by id can do (pop each id from a
  plain dict and store one field of its record) in random order. Both
  show how much of the growth is the machine's caches rather than the
  bucket.
* memory: growth while filling N tasks due in an hour (ids pre-built, data
  None), after the scheduler applied them, per task: by the allocators'
  books (pymalloc + malloc bytes in use, `bench.memory`) and RSS at N, and
  by tracemalloc at min(N, 100,000) in its own process (tracing a
  threaded program is 10-20x slower: minutes at 1M).
* idle: 100,000 tasks due in an hour, applied, then process CPU time over
  5 s of the bench thread sleeping.
* storm: 100,000 TIME_BOMB tasks due uniformly within one second (the
  window opens 1 s after the first fill, so filling finishes before it);
  a trivial on_execute records the time. Executed exactly once, none early
  (fire time >= monotonic() before the fill call + run_after), p99 lateness.
"""

# The report is for people: its typographic dashes and signs are on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"  # untracked; --out docs/benchmarks for the published copy

# tracemalloc slows a threaded program 10-20x (see bench/memory.py): past this N
# it would take minutes, so the table's figure comes from the allocators' books.
TRACED_MAX = 100_000
GOBUCKET = {"fill_us": 14.0, "drain_us": 2.0, "bytes": 6850.0, "p99_s": 0.080}


# -- measurements (each in its own process) --------------------------------------------------


def _bucket(capacity: int, executor: Any) -> Any:
    from wheelbucket import TaskBucket

    return TaskBucket(max_bucket=capacity + 64, workers=4, executor=executor)


def _sync(bucket: Any, tag: str) -> None:
    """Return once the scheduler applied every earlier fill/drain (a marker task ran)."""
    from wheelbucket import TaskType

    done = threading.Event()
    bucket.fill(
        TaskType.TIME_BOMB,
        f"__marker_{tag}",
        None,
        lambda *_: done.set(),
        run_after=0,
        life_span=60,
    )
    if not done.wait(300):
        raise RuntimeError("marker task did not run within 300 s")


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _noop(ctx: object, task_id: str, data: object) -> None:
    pass


class _Record:
    """A stand-in for a task record in the floor measurement."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = 0


def _floor_ns(ids: list[str], order: list[str]) -> float:
    """Per-item ns of the least a drain by id does: pop from a dict, mark the record."""
    records = {task_id: _Record() for task_id in ids}
    gc.collect()
    pop = records.pop
    t0 = time.perf_counter()
    for task_id in order:
        pop(task_id).state = 6
    return (time.perf_counter() - t0) / len(ids) * 1e9


def _fill_all(bucket: Any, ids: list[str]) -> float:
    from wheelbucket import TaskType

    fill = bucket.fill
    bomb = TaskType.TIME_BOMB
    gc.collect()
    t0 = time.perf_counter()
    for task_id in ids:
        fill(bomb, task_id, run_after=60.0, life_span=120.0)
    return time.perf_counter() - t0


def _drain_all(bucket: Any, order: list[str]) -> float:
    drain = bucket.drain
    gc.collect()
    t0 = time.perf_counter()
    for task_id in order:
        drain(task_id)
    return time.perf_counter() - t0


def run_fill_drain(n: int) -> dict[str, Any]:
    ids = [f"task-{i}" for i in range(n)]
    with _bucket(n, _noop) as bucket:
        _sync(bucket, "warm")
        t0 = time.perf_counter()
        fill_s = _fill_all(bucket, ids)
        _sync(bucket, "filled")
        fill_applied_s = time.perf_counter() - t0
        if len(bucket) != n:
            raise RuntimeError(f"expected {n} live tasks, found {len(bucket)}")
        # The drain order is made only now: made before the fill, it was one
        # more million-item list (in random order) for the collector to walk
        # while timing the fill.
        order = ids[:]
        random.Random(1).shuffle(order)
        t3 = time.perf_counter()
        drain_s = _drain_all(bucket, order)
        _sync(bucket, "drained")
        drain_applied_s = time.perf_counter() - t3
        # Again, drained in fill order: how much of the cost is the memory
        # hierarchy (random order touches a cold line per step).
        _fill_all(bucket, ids)
        _sync(bucket, "refilled")
        drain_in_order_s = _drain_all(bucket, ids)
        _sync(bucket, "drained again")
        stats = bucket.stats()
    return {
        "n": n,
        "fill_us": fill_s / n * 1e6,
        "fill_applied_us": fill_applied_s / n * 1e6,
        "drain_us": drain_s / n * 1e6,
        "drain_applied_us": drain_applied_s / n * 1e6,
        "drain_in_order_us": drain_in_order_s / n * 1e6,
        "floor_ns": _floor_ns(ids, order),
        "floor_in_order_ns": _floor_ns(ids, ids),
        "drained": stats.drained,
        "live_after": stats.live,
    }


def run_memory(n: int, traced: bool = False) -> dict[str, Any]:
    """Bytes per pending task: allocator books and RSS, or tracemalloc when `traced`."""
    from wheelbucket import TaskType

    from .memory import allocated_bytes, rss_bytes

    ids = [f"task-{i}" for i in range(n)]
    with _bucket(n, _noop) as bucket:
        fill = bucket.fill
        bomb = TaskType.TIME_BOMB
        _sync(bucket, "warm")
        gc.collect()
        rss0 = rss_bytes()
        alloc0 = allocated_bytes()
        if traced:
            tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for task_id in ids:
            # Due in an hour: tracing is slow, and nothing may fire before we measure.
            fill(bomb, task_id, run_after=3600.0, life_span=3700.0)
        _sync(bucket, "filled")
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        alloc1 = allocated_bytes()
        rss1 = rss_bytes()
        live = len(bucket)
        if live != n:
            raise RuntimeError(f"{n - live} tasks ended before the measurement")
        result = {
            "n": n,
            "traced": traced,
            "tracemalloc_bytes_per_task": grown / n if traced else None,
            "alloc_bytes_per_task": None
            if traced or alloc0 is None or alloc1 is None
            else (alloc1 - alloc0) / n,
            "rss_bytes_per_task": None
            if traced or rss0 is None or rss1 is None
            else (rss1 - rss0) / n,
            "live": live,
        }
        # Not measured, and slow: a million drains at close.
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)


def run_memory_traced(n: int) -> dict[str, Any]:
    return run_memory(n, traced=True)


def run_idle(n: int, seconds: float = 5.0) -> dict[str, Any]:
    from wheelbucket import TaskType

    with _bucket(n, _noop) as bucket:
        for i in range(n):
            bucket.fill(TaskType.TIME_BOMB, f"idle-{i}", run_after=3600.0, life_span=3700.0)
        _sync(bucket, "filled")
        time.sleep(0.5)
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        time.sleep(seconds)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
        live = len(bucket)
        sys.stdout.write(
            json.dumps({"n": n, "idle_cpu_s": cpu, "idle_wall_s": wall, "live": live}) + "\n"
        )
        sys.stdout.flush()
        os._exit(0)


def run_storm(n: int, lead: float = 1.0, window: float = 1.0) -> dict[str, Any]:
    from wheelbucket import TaskType

    rng = random.Random(7)
    ids = [f"storm-{i}" for i in range(n)]
    index = {task_id: i for i, task_id in enumerate(ids)}
    offsets = [lead + window * rng.random() for _ in range(n)]
    dues = [0.0] * n
    fired: list[tuple[str, float]] = []
    append = fired.append
    now = time.monotonic

    def on_execute(ctx: object, task_id: str, data: object) -> None:
        append((task_id, now()))

    with _bucket(n, on_execute) as bucket:
        fill = bucket.fill
        bomb = TaskType.TIME_BOMB
        _sync(bucket, "warm")
        fired.clear()
        gc.collect()
        t0 = now()
        clamped = 0
        for i, task_id in enumerate(ids):
            at = now()
            run_after = t0 + offsets[i] - at
            if run_after < 0:
                run_after = 0.0
                clamped += 1
            fill(bomb, task_id, run_after=run_after, life_span=run_after + 30.0)
            dues[i] = at + run_after
        fill_s = now() - t0
        give_up = max(dues) + 30.0
        while len(fired) < n and now() < give_up:
            time.sleep(0.01)
        time.sleep(0.3)  # duplicates would come now
        stats = bucket.stats()
    counts = [0] * n
    lateness = []
    spurious = 0
    for task_id, at in fired:
        i = index.get(task_id)
        if i is None:
            spurious += 1
            continue
        counts[i] += 1
        if counts[i] == 1:
            lateness.append(at - dues[i])
    lateness.sort()

    def q(p: float) -> float:
        return lateness[min(len(lateness) - 1, round(p * (len(lateness) - 1)))]

    return {
        "n": n,
        "fill_s": fill_s,
        "clamped": clamped,
        "executed_once": sum(1 for c in counts if c == 1),
        "missed": sum(1 for c in counts if c == 0),
        "duplicates": sum(c - 1 for c in counts if c > 1),
        "spurious": spurious,
        "early": sum(1 for v in lateness if v < 0),
        "lat_min_s": lateness[0] if lateness else None,
        "lat_p50_s": q(0.5) if lateness else None,
        "lat_p99_s": q(0.99) if lateness else None,
        "lat_max_s": lateness[-1] if lateness else None,
        "bucket_lateness_p99_s": stats.lateness_p99,
        "bucket_finished": stats.finished,
    }


# The fill_drain figures the table takes the median of.
MEDIANS = (
    "fill_us",
    "fill_applied_us",
    "drain_us",
    "drain_applied_us",
    "drain_in_order_us",
    "floor_ns",
    "floor_in_order_ns",
)

RUNS = {
    "fill_drain": run_fill_drain,
    "memory": run_memory,
    "memory_traced": run_memory_traced,
    "idle": run_idle,
    "storm": run_storm,
}


# -- the parent ----------------------------------------------------------------------


def _spawn(name: str, n: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.core_targets", "--run", name, "--n", str(n)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{name} (n={n}) failed:\n{proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def _verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core_targets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="N = 100,000 (a smoke run)")
    parser.add_argument("--n", type=int, help="N for fill/drain/memory (default 1,000,000)")
    parser.add_argument("--run", choices=sorted(RUNS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=OUT, help="output directory (default bench/results/)"
    )
    args = parser.parse_args(argv)
    if args.run:
        result = RUNS[args.run](args.n or 100_000)
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)

    n = args.n or (100_000 if args.quick else 1_000_000)
    small = 10_000
    given = sys.argv[1:] if argv is None else argv
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"core targets: N={n:,}; load average {load_before}", file=sys.stderr, flush=True)

    def step(label: str, name: str, size: int) -> dict[str, Any]:
        print(f"  {label} ...", end="", file=sys.stderr, flush=True)
        r = _spawn(name, size)
        print(f" {r['process_s']:.1f} s", file=sys.stderr, flush=True)
        return r

    # Medians of three fresh processes at each size: the machine is shared.
    bigs = [step(f"fill+drain N={n:,} ({i + 1}/3)", "fill_drain", n) for i in range(3)]
    smalls = [step(f"fill+drain N={small:,} ({i + 1}/3)", "fill_drain", small) for i in range(3)]
    mem = step(f"memory N={n:,} (allocator books, RSS)", "memory", n)
    traced_n = min(n, TRACED_MAX)
    traced = step(f"memory N={traced_n:,} (tracemalloc)", "memory_traced", traced_n)
    idle = step("idle CPU, 100,000 pending, 5 s", "idle", 100_000)
    storm = step("storm, 100,000 due within 1 s", "storm", 100_000)
    load_after = [round(x, 2) for x in os.getloadavg()]

    # The allocators' books where glibc has them, else RSS growth.
    mem_bytes = mem["alloc_bytes_per_task"] or mem["rss_bytes_per_task"]
    big = {key: statistics.median(r[key] for r in bigs) for key in MEDIANS}
    little = {key: statistics.median(r[key] for r in smalls) for key in MEDIANS}
    drain_small = little["drain_us"]
    growth = big["drain_us"] / drain_small
    in_order_growth = big["drain_in_order_us"] / little["drain_in_order_us"]
    floor_growth = big["floor_ns"] / little["floor_ns"]
    storm_ok = storm["executed_once"] == storm["n"] and not storm["duplicates"]
    rows = [
        (
            "fill µs/task at N (first call to last return)",
            "≤ 3",
            "14",
            f"{big['fill_us']:.2f} (applied: {big['fill_applied_us']:.2f})",
            big["fill_us"] <= 3,
            big["fill_us"] < GOBUCKET["fill_us"],
        ),
        (
            "drain µs/task at N (random order)",
            "≤ 2",
            "2",
            f"{big['drain_us']:.2f} (applied: {big['drain_applied_us']:.2f})",
            big["drain_us"] <= 2,
            big["drain_us"] < GOBUCKET["drain_us"],
        ),
        (
            f"drain cost at N ÷ at {small:,}",
            "≤ 1.5×",
            "–",
            f"{growth:.2f}× ({big['drain_us']:.2f} / {drain_small:.2f})",
            growth <= 1.5,
            None,
        ),
        (
            f"context: drain in fill order, cost at N ÷ at {small:,}",
            "–",
            "–",
            f"{in_order_growth:.2f}× ({big['drain_in_order_us']:.2f} / "
            f"{little['drain_in_order_us']:.2f})",
            None,
            None,
        ),
        (
            f"context: bare dict pop + one store, random order, at N ÷ at {small:,}",
            "–",
            "–",
            f"{floor_growth:.2f}× ({big['floor_ns']:.0f} ns / {little['floor_ns']:.0f} ns)",
            None,
            None,
        ),
        (
            "bytes per pending task at N (allocator books)",
            "≤ 300",
            "6,850",
            f"{mem_bytes:.0f} (RSS {mem['rss_bytes_per_task']:.0f}; tracemalloc "
            f"{traced['tracemalloc_bytes_per_task']:.0f} at N={traced_n:,})",
            mem_bytes <= 300,
            mem_bytes < GOBUCKET["bytes"],
        ),
        (
            "idle CPU s over 5 s, 100k pending due in 1 h",
            "< 0.05",
            "–",
            f"{idle['idle_cpu_s']:.3f}",
            idle["idle_cpu_s"] < 0.05,
            None,
        ),
        (
            "100k due within 1 s: executed exactly once",
            "all",
            "–",
            f"{storm['executed_once']:,}/{storm['n']:,} (missed {storm['missed']}, duplicates "
            f"{storm['duplicates']})",
            storm_ok,
            None,
        ),
        (
            "100k due within 1 s: none early",
            "0 early",
            "–",
            f"{storm['early']} early (min lateness {storm['lat_min_s'] * 1e3:.3f} ms)",
            storm["early"] == 0,
            None,
        ),
        (
            "100k due within 1 s: p99 lateness",
            "≤ 10 ms",
            "80 ms",
            f"{storm['lat_p99_s'] * 1e3:.2f} ms (bucket's own: "
            f"{storm['bucket_lateness_p99_s'] * 1e3:.2f} ms; max {storm['lat_max_s'] * 1e3:.1f})",
            storm["lat_p99_s"] <= 0.010,
            storm["lat_p99_s"] < GOBUCKET["p99_s"],
        ),
    ]
    header = ["figure", "target", "GoBucket", "wheelbucket", "target met", "beats GoBucket"]
    table = [header] + [
        [
            r[0].replace(" at N", f" at N={n:,}"),
            r[1],
            r[2],
            r[3],
            "–" if r[4] is None else _verdict(r[4]),
            "–" if r[5] is None else ("yes" if r[5] else "NO"),
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(file=sys.stderr)
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    notes = []
    if n != 1_000_000:
        notes.append(f"N={n:,}: the targets are stated at 1,000,000; this is a smoke run.")
    if storm["clamped"]:
        notes.append(
            f"storm: filling took {storm['fill_s']:.2f} s; {storm['clamped']} tasks "
            "were filled after their due time (run_after clamped to 0)."
        )
    for note in notes:
        print("note: " + note)

    from .__main__ import machine_info

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.core_targets", *given]),
        "machine": machine_info(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "n": n,
    }
    stem = "core_targets" + ("" if n == 1_000_000 else "-quick")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "fill_drain": bigs,
                "fill_drain_small": smalls,
                "memory": mem,
                "idle": idle,
                "storm": storm,
            },
            indent=1,
        )
        + "\n"
    )
    md = [
        "# wheelbucket core targets (issue 2)",
        "",
        f"- Command: `{meta['command']}` (see the docstring of bench/core_targets.py)",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']['cpu_count']} CPUs, {meta['machine']['cpu_model']}; "
        f"Python {meta['machine']['python']}; wheelbucket revision {meta['machine']['git']}",
        f"- Load average before: {load_before}, after: {load_after} (shared machine)",
        "- GoBucket column: GoBucket measured on the same machine (from issue 2).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(row) + " |" for row in table[1:]],
        "",
        *[f"Note: {note}" for note in notes],
        "",
    ]
    (args.out / f"{stem}.md").write_text("\n".join(md))
    print(f"wrote {args.out / (stem + '.md')} and .json", file=sys.stderr)


if __name__ == "__main__":
    main()

"""A measured floor for issue 15: what the collector costs per pending timer, by layout.

    python bench/proto_atomic_records.py [--n 1000000] [--repeats 3]

Standalone: no wheelbucket code runs. Each layout holds N pending timers
spread over 1,000 wheel slots (one second of 1-ms ticks), with an id map,
and is measured in a fresh process: ``gc.collect()`` once to settle (the
*first* collection: it is the one that untracks atomic tuples and dicts),
then three timed ones (*steady*, their median), minus the same with only
the N id strings in a plain dict (values None). Also the time to build
the layout, per timer, so a cheaper collection is not bought with a
dearer fill.

Layouts:

* ``slots-intrusive``: today's shape. A ``__slots__`` object per timer with
  wheelbucket's eleven fields (three wheel links, id, data, plan, state,
  due, life, ctx, waiters), linked into a circular doubly linked list per
  slot through a sentinel; ``dict id -> object``. Every object is tracked
  and points at two tracked neighbours.
* ``slots-lists``: the same objects, held in a plain list per slot instead
  of linked (what the links themselves cost the collector).
* ``tuple-lists``: a tuple ``(due_ns, seq, id, state, life_ns)`` of ints and
  a str per timer, appended to a list per slot; ``dict id -> tuple``. A
  cancel pops the id from the map and leaves the tuple in its slot list
  (lazy unlinking; the slot is purged when its dead entries pass a share of
  it, Kafka-purgatory style, or when it comes due). CPython untracks a
  tuple of atomic values at its first collection, and a dict of untracked
  values at a full collection; the slot lists stay tracked (a list always
  is) and the collector still visits each element of them.
* ``tuple-dicts``: the same tuples in a ``dict id -> tuple`` per slot, and
  ``dict id -> slot key`` as the id map: a cancel deletes from both (no lazy
  unlinking needed), and every container holds atomic values only, so after
  a full collection none of it is tracked.
* ``int-dicts``: the record packed into one int (due ns and state bits) in
  a ``dict id -> int`` per slot, and ``dict id -> slot key``. An int is not
  a GC object, so storing one never tracks a dict: nothing per timer is
  ever tracked, not even before the first collection.

Only the pending state is built and measured: the cancels and purges
described above are how each layout would be used, not code here.

The "after one new timer" column: after the steady collections, one new
timer is put in every slot (as a bucket that keeps filling does) and one
more collection is timed. A fresh tuple is tracked until a collection sees it,
and storing a tracked value in a dict tracks that dict again until the
next *full* collection, which then walks it whole: the steady figure of
``tuple-dicts`` is what an idle bucket gets, not a busy one.

Caveats: a record of atomic values cannot hold the task's data or executor
(those go to side tables only when they are not None / not the default),
and the handle `fill` returns becomes a view made on demand (bucket, id,
seq), which the bucket does not keep. The figures are for this machine and
load; the parent prints the load average.
"""

# The report is for people: its typographic dashes and signs are on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

SLOTS = 1_000
LAYOUTS = ["slots-intrusive", "slots-lists", "tuple-lists", "tuple-dicts", "int-dicts"]
# How int-dicts packs a record into one int: due ns above, state below.
STATE_BITS = 8


class _Plan:
    """A stand-in for the shared executor plan every task points at."""


class _Entry:
    __slots__ = ("_wheel_next", "_wheel_prev", "_wheel_tick")

    _wheel_next: Any
    _wheel_prev: Any
    _wheel_tick: int


class _Task(_Entry):
    """wheelbucket's TaskHandle fields (HEAD 56a4341), without its methods."""

    __slots__ = ("_ctx", "_data", "_due", "_life", "_plan", "_state", "_waiters", "id")

    def __init__(self, task_id: str, plan: _Plan, due: int, life: int) -> None:
        self._wheel_prev = None
        self._wheel_next = None
        self._wheel_tick = due
        self.id = task_id
        self._data = None
        self._plan = plan
        self._state = 0
        self._due = due
        self._life = life
        self._ctx = None
        self._waiters = None


class _Sentinel(_Entry):
    __slots__ = ()

    def __init__(self, key: int) -> None:
        self._wheel_tick = key
        self._wheel_prev = self
        self._wheel_next = self


def build(layout: str, ids: list[str]) -> Any:
    """N pending timers in `layout`; returns what keeps them alive."""
    base_ns = 10**12
    life = 30 * 10**9  # one int shared by every record, as with the bucket's defaults
    if layout == "slots-intrusive":
        plan = _Plan()
        heads = {k: _Sentinel(k) for k in range(SLOTS)}
        tasks: dict[str, Any] = {}
        for i, task_id in enumerate(ids):
            task = _Task(task_id, plan, base_ns + i, life)
            head = heads[i % SLOTS]
            last = head._wheel_prev
            task._wheel_prev = last
            task._wheel_next = head
            last._wheel_next = task
            head._wheel_prev = task
            tasks[task_id] = task
        return heads, tasks
    if layout == "slots-lists":
        plan = _Plan()
        slots: dict[int, list[Any]] = {k: [] for k in range(SLOTS)}
        tasks = {}
        for i, task_id in enumerate(ids):
            task = _Task(task_id, plan, base_ns + i, life)
            slots[i % SLOTS].append(task)
            tasks[task_id] = task
        return slots, tasks
    if layout == "tuple-lists":
        lists: dict[int, list[tuple[int, int, str, int, int]]] = {k: [] for k in range(SLOTS)}
        records: dict[str, tuple[int, int, str, int, int]] = {}
        for i, task_id in enumerate(ids):
            record = (base_ns + i, i, task_id, 0, life)
            lists[i % SLOTS].append(record)
            records[task_id] = record
        return lists, records
    if layout == "tuple-dicts":
        dicts: dict[int, dict[str, tuple[int, int, str, int, int]]] = {k: {} for k in range(SLOTS)}
        where: dict[str, int] = {}
        for i, task_id in enumerate(ids):
            key = i % SLOTS
            dicts[key][task_id] = (base_ns + i, i, task_id, 0, life)
            where[task_id] = key
        return dicts, where
    if layout == "int-dicts":
        packed: dict[int, dict[str, int]] = {k: {} for k in range(SLOTS)}
        where = {}
        for i, task_id in enumerate(ids):
            key = i % SLOTS
            packed[key][task_id] = (base_ns + i) << STATE_BITS
            where[task_id] = key
        return packed, where
    raise ValueError(f"unknown layout {layout!r}")


def touch(layout: str, keep: Any, n: int) -> None:
    """One new timer in every slot, as a bucket that goes on filling does.

    A fresh tuple is tracked until a collection looks at it, and storing a
    tracked value in a dict tracks the dict again: until the next full
    collection, that dict is walked whole.
    """
    base_ns = 2 * 10**12
    containers, index = keep
    for k in range(SLOTS):
        task_id = f"new-{k}"
        if layout == "slots-intrusive":
            head = containers[k]
            task = _Task(task_id, head._wheel_next._plan, base_ns + k, 0)
            last = head._wheel_prev
            task._wheel_prev = last
            task._wheel_next = head
            last._wheel_next = task
            head._wheel_prev = task
            index[task_id] = task
        elif layout == "slots-lists":
            task = _Task(task_id, containers[k][0]._plan, base_ns + k, 0)
            containers[k].append(task)
            index[task_id] = task
        elif layout == "tuple-lists":
            record = (base_ns + k, n + k, task_id, 0, 0)
            containers[k].append(record)
            index[task_id] = record
        elif layout == "tuple-dicts":
            containers[k][task_id] = (base_ns + k, n + k, task_id, 0, 0)
            index[task_id] = k
        else:
            containers[k][task_id] = (base_ns + k) << STATE_BITS
            index[task_id] = k


def _collects(k: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    gc.collect()
    first = time.perf_counter() - t0
    timed = []
    for _ in range(k):
        t0 = time.perf_counter()
        gc.collect()
        timed.append(time.perf_counter() - t0)
    return first, timed


def run(layout: str, n: int) -> dict[str, Any]:
    ids = [f"task-{i}" for i in range(n)]
    plain = dict.fromkeys(ids)
    _, base = _collects(3)
    del plain
    gc.collect()
    gc.disable()  # building is timed without the collector; it is measured below
    t0 = time.perf_counter()
    keep = build(layout, ids)
    build_s = time.perf_counter() - t0
    gc.enable()
    first, timed = _collects(3)
    tracked = sum(1 for _ in gc.get_objects())
    touch(layout, keep, n)
    t0 = time.perf_counter()
    gc.collect()
    touched = time.perf_counter() - t0
    base_ms = statistics.median(base) * 1e3
    steady_ms = statistics.median(timed) * 1e3
    result = {
        "layout": layout,
        "n": n,
        "baseline_ms": base_ms,
        "first_ms": first * 1e3,
        "steady_ms": steady_ms,
        "first_ns_per_timer": (first * 1e3 - base_ms) * 1e6 / n,
        "steady_ns_per_timer": (steady_ms - base_ms) * 1e6 / n,
        "touched_ms": touched * 1e3,
        "touched_ns_per_timer": (touched * 1e3 - base_ms) * 1e6 / n,
        "build_ns_per_timer": build_s * 1e9 / n,
        "tracked_objects": tracked,
    }
    del keep
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        sys.stdout.write(json.dumps(run(args.run, args.n)) + "\n")
        sys.stdout.flush()
        os._exit(0)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, list[dict[str, Any]]] = {layout: [] for layout in LAYOUTS}
    for rep in range(args.repeats):
        for layout in LAYOUTS[rep % len(LAYOUTS) :] + LAYOUTS[: rep % len(LAYOUTS)]:
            out = subprocess.run(
                [sys.executable, __file__, "--run", layout, "--n", str(args.n)],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results[layout].append(r)
            print(
                f"rep {rep + 1} {layout:16s} steady {r['steady_ns_per_timer']:6.1f} ns/timer "
                f"(first {r['first_ns_per_timer']:6.1f}, after {SLOTS} new "
                f"{r['touched_ns_per_timer']:6.1f}), build {r['build_ns_per_timer']:5.0f} ns",
                file=sys.stderr,
                flush=True,
            )
    load_after = [round(x, 2) for x in os.getloadavg()]

    def cell(values: list[float]) -> str:
        text = f"{statistics.median(values):.1f}"
        return text + (f" [{min(values):.1f}–{max(values):.1f}]" if len(values) > 1 else "")

    print(
        f"\nN={args.n:,} pending timers over {SLOTS:,} slots; median of {args.repeats} fresh "
        f"process(es) [min–max]; ns per timer above the ids in a plain dict\n"
    )
    print(
        "| layout | gc.collect() ns/timer, steady | first collection after building "
        f"| after one new timer in each of the {SLOTS:,} slots "
        "| build ns/timer (gc off) | tracked objects in the process |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for layout in LAYOUTS:
        rs = results[layout]
        print(
            f"| {layout} | {cell([r['steady_ns_per_timer'] for r in rs])} "
            f"| {cell([r['first_ns_per_timer'] for r in rs])} "
            f"| {cell([r['touched_ns_per_timer'] for r in rs])} "
            f"| {cell([r['build_ns_per_timer'] for r in rs])} "
            f"| {statistics.median(r['tracked_objects'] for r in rs):,.0f} |"
        )
    print(f"\nload average before {load_before}, after {load_after} (2 shared cores)")


if __name__ == "__main__":
    main()

"""SPEC's GC burden: ``python -m bench.gc_burden [--n 1000000] [--repeats 3]``.

What the cyclic garbage collector costs per pending task. In a fresh process
per peer and repeat (``--run``):

1. Start the peer (its threads, its pool), build N id strings.
2. *Baseline*: the same N ids as the keys of a plain dict (values None: the
   dict holds only atomic objects, so CPython does not track it). Time
   ``gc.collect()``: one settling collection, then ``--collects`` timed
   ones; their median. Drop the dict.
3. *Fill*: N pending timers due in an hour, nothing fires. Every collection
   during the fill is timed through `gc.callbacks`: how many of each
   generation, and the longest full (generation 2) pause, which is what a
   program filling a big bucket sees as a stall of every thread.
4. *Pending*: time ``gc.collect()`` again the same way. The burden is
   ``(pending - baseline) / N`` in ns per pending task. Also: tracked
   objects per pending task, from ``len(gc.get_objects())``.

Peers, each as a user holds N pending timers:

* ``wheelbucket``: ``TaskBucket(workers=4, run_after=3600, life_span=7200)``
  and ``fill(TIME_BOMB, id)`` with data None (the SPEC's setting);
* ``heapq+pool``: `bench.peers.HeapPoolPeer`, its ``[due, seq, key,
  callback]`` heap entries and its key -> entry dict, one shared callback;
* ``asyncio``: `bench.peers.AsyncioInLoop`, ``loop.call_later`` from inside
  the loop, and the key -> `TimerHandle` dict a user keeps to cancel by key.

The table shows medians over the repeats, [min-max]; JSON goes to ``--out``
(default bench/results/). The machine is shared: a collection is pure CPU
and memory traffic, so another process on the same core stretches it;
compare the load averages.
"""

# The report is for people: its typographic dashes and signs are on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
PEERS = ["wheelbucket", "heapq+pool", "asyncio"]
ADAPTERS = {"heapq+pool": "heapq+pool", "asyncio": "asyncio-inloop"}
FAR_S = 3600.0
CHUNK = 1024


class _GcTimer:
    """Counts and times collections per generation through `gc.callbacks`."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.total = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        gen = info["generation"]
        self.count[gen] += 1
        self.total[gen] += pause
        self.longest[gen] = max(self.longest[gen], pause)


def _time_collects(collects: int) -> tuple[float, list[float]]:
    """One settling ``gc.collect()``, then `collects` timed ones: (settle s, timed s)."""
    t0 = time.perf_counter()
    gc.collect()
    settle = time.perf_counter() - t0
    timed = []
    for _ in range(collects):
        t0 = time.perf_counter()
        gc.collect()
        timed.append(time.perf_counter() - t0)
    return settle, timed


def _tracked() -> int:
    objects = gc.get_objects()
    count = len(objects)
    del objects
    return count


def _noop(ctx: object, task_id: str, data: object) -> None:
    pass


def _callback(key: str) -> None:
    pass


def _wheelbucket_filler(n: int) -> tuple[Callable[[list[str]], None], Callable[[], Any]]:
    """Returns fill(ids) and a closer; the bucket is built (and its threads up) at once."""
    from wheelbucket import TaskBucket, TaskType

    bucket = TaskBucket(
        workers=4, max_bucket=n + 64, run_after=FAR_S, life_span=2 * FAR_S, executor=_noop
    )
    bomb = TaskType.TIME_BOMB

    def sync(tag: str) -> None:
        done = threading.Event()
        bucket.fill(bomb, tag, None, lambda *_: done.set(), run_after=0, life_span=60)
        if not done.wait(300):
            raise RuntimeError("marker task did not run within 300 s")

    sync("__warm")

    def fill(ids: list[str]) -> None:
        fill_ = bucket.fill
        for task_id in ids:
            fill_(bomb, task_id)
        sync("__filled")  # the scheduler has filed every task in the wheel

    return fill, lambda: len(bucket)


def _adapter_filler(name: str, n: int) -> tuple[Callable[[list[str]], None], Callable[[], Any]]:
    from .peers import make_peer

    peer = make_peer(ADAPTERS[name], n + 64)
    peer.start()

    def workload(ids: list[str]) -> Any:
        schedule = peer.schedule
        for start in range(0, len(ids), CHUNK):
            for key in ids[start : start + CHUNK]:
                schedule(key, FAR_S, _callback)
            yield ("yield",)
        yield ("sync",)

    def fill(ids: list[str]) -> None:
        peer.drive(workload(ids))

    def pending() -> int:
        return len(peer.entries if name == "heapq+pool" else peer.handles)  # type: ignore[attr-defined]

    return fill, pending


def run(peer: str, n: int, collects: int) -> dict[str, Any]:
    """One peer, one process: baseline, fill, pending; the figures as a dict."""
    started = time.perf_counter()
    fill, pending = _wheelbucket_filler(n) if peer == "wheelbucket" else _adapter_filler(peer, n)
    ids = [f"task-{i}" for i in range(n)]

    plain = dict.fromkeys(ids)
    base_settle, base = _time_collects(collects)
    plain_tracked = gc.is_tracked(plain)
    del plain
    gc.collect()
    tracked0 = _tracked()

    timer = _GcTimer()
    gc.callbacks.append(timer)
    t0 = time.perf_counter()
    fill(ids)
    fill_s = time.perf_counter() - t0
    gc.callbacks.remove(timer)
    live = pending()
    if live != n:
        raise RuntimeError(f"{peer}: {live:,} pending after filling {n:,}")

    settle, timed = _time_collects(collects)
    tracked1 = _tracked()
    base_ms = statistics.median(base) * 1e3
    pending_ms = statistics.median(timed) * 1e3
    return {
        "peer": peer,
        "n": n,
        "pid": os.getpid(),
        "baseline_collect_ms": base_ms,
        "baseline_collects_ms": [t * 1e3 for t in base],
        "baseline_settle_ms": base_settle * 1e3,
        "plain_dict_tracked": plain_tracked,
        "pending_collect_ms": pending_ms,
        "pending_collects_ms": [t * 1e3 for t in timed],
        "pending_settle_ms": settle * 1e3,
        "burden_ns_per_task": (pending_ms - base_ms) * 1e6 / n,
        "tracked_per_task": (tracked1 - tracked0) / n,
        "fill_s": fill_s,
        "fill_gc_count": timer.count,
        "fill_gc_longest_ms": [s * 1e3 for s in timer.longest],
        "fill_gc_total_ms": [s * 1e3 for s in timer.total],
        "process_s": time.perf_counter() - started,
    }


# -- the parent ---------------------------------------------------------------------------


def _spawn(peer: str, n: int, collects: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.gc_burden", "--run", peer, "--n", str(n)]
    cmd += ["--collects", str(collects)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"peer": peer, "n": n, "ok": False, "error": "killed after 900 s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"peer": peer, "n": n, "ok": False, "error": f"crashed: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _med(values: list[float], fmt: str) -> str:
    """'median [min-max]' (just the value for one repeat)."""
    text = format(statistics.median(values), fmt)
    if len(values) > 1:
        text += f" [{format(min(values), fmt)}–{format(max(values), fmt)}]"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gc_burden",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="pending tasks (1,000,000)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per peer (3)")
    parser.add_argument(
        "--collects", type=int, default=3, help="timed gc.collect() calls per phase (3)"
    )
    parser.add_argument(
        "--peers", default=",".join(PEERS), help="comma-separated, of: " + ", ".join(PEERS)
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--run", choices=PEERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        try:
            result = {**run(args.run, args.n, args.collects), "ok": True}
        except Exception as exc:
            result = {"peer": args.run, "n": args.n, "ok": False, "error": repr(exc)}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)  # a million pending timers are not worth tearing down

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        parser.error(f"unknown peers {unknown}; known: {', '.join(PEERS)}")
    given = sys.argv[1:] if argv is None else argv
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(
        f"GC burden: N={args.n:,}, {args.repeats} repeat(s) x {len(peers)} peers, "
        f"one process each; load average {load_before}",
        file=sys.stderr,
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {p: [] for p in peers}
    started = time.perf_counter()
    total = args.repeats * len(peers)
    done = 0
    for rep in range(args.repeats):
        shift = rep % len(peers)
        for peer in peers[shift:] + peers[:shift]:
            r = _spawn(peer, args.n, args.collects)
            r["rep"] = rep
            results[peer].append(r)
            done += 1
            text = (
                f"burden {r['burden_ns_per_task']:.0f} ns/task (collect "
                f"{r['pending_collect_ms']:.1f} ms vs {r['baseline_collect_ms']:.1f} ms), "
                f"longest gen-2 while filling {r['fill_gc_longest_ms'][2]:.1f} ms "
                f"({r['fill_gc_count'][2]} gen-2), {r['process_s']:.1f} s"
                if r.get("ok")
                else f"FAILED: {r.get('error')}"
            )
            print(
                f"[{done}/{total}, {time.perf_counter() - started:5.0f} s] {peer:12s} "
                f"rep {rep + 1}: {text}",
                file=sys.stderr,
                flush=True,
            )
    load_after = [round(x, 2) for x in os.getloadavg()]

    header = [
        "peer",
        "ns per pending task",
        f"gc.collect() ms, {args.n:,} pending",
        "same ids in a plain dict, ms",
        "tracked objects per task",
        "longest gen-2 while filling, ms",
        "gen-2 collections while filling",
    ]
    rows = []
    summary: dict[str, Any] = {}
    for peer in peers:
        ok = [r for r in results[peer] if r.get("ok")]
        if not ok:
            rows.append([peer, "failed", "", "", "", "", ""])
            continue

        def col(key: str, ok: list[dict[str, Any]] = ok) -> list[float]:
            return [float(r[key]) for r in ok]

        gen2_longest = [r["fill_gc_longest_ms"][2] for r in ok]
        gen2_count = [float(r["fill_gc_count"][2]) for r in ok]
        summary[peer] = {
            "burden_ns_per_task": statistics.median(col("burden_ns_per_task")),
            "pending_collect_ms": statistics.median(col("pending_collect_ms")),
            "baseline_collect_ms": statistics.median(col("baseline_collect_ms")),
            "tracked_per_task": statistics.median(col("tracked_per_task")),
            "fill_gen2_longest_ms": statistics.median(gen2_longest),
            "fill_gen2_count": statistics.median(gen2_count),
            "repeats": len(ok),
        }
        rows.append(
            [
                peer,
                _med(col("burden_ns_per_task"), ".0f"),
                _med(col("pending_collect_ms"), ".1f"),
                _med(col("baseline_collect_ms"), ".1f"),
                _med(col("tracked_per_task"), ".2f"),
                _med(gen2_longest, ".1f"),
                _med(gen2_count, ".0f"),
            ]
        )
    lines = [
        f"GC burden at N={args.n:,}: median over {args.repeats} fresh process(es) [min–max]; "
        f"each gc.collect() figure is the median of {args.collects} timed calls.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "|".join("---:" for _ in header[1:]) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"load average before {load_before}, after {load_after} (2 shared cores)",
    ]
    print("\n".join(lines))

    from .__main__ import machine_info

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.gc_burden", *given]),
        "machine": machine_info(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "n": args.n,
        "repeats": args.repeats,
        "collects": args.collects,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gc_burden.json"
    path.write_text(
        json.dumps({"meta": meta, "summary": summary, "trials": results}, indent=1) + "\n"
    )
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

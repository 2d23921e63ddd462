"""Throughput and latency of the shared bucket (wheelbucket.redis) on a real Redis.

Standalone: ``python bench/shared_throughput.py [--url redis://...] [--tasks N]``.
Without --url it starts a throwaway redis-server (tests/redis_server.py) on
127.0.0.1. It measures, with no-op tasks:

* shared path, 1 and 3 worker processes: a producer-only process overflows N
  tasks into Redis; the workers (max_bucket=100, 4 threads each) claim, run
  and release them. Reported: the producer's fill rate (into an idle group,
  and while the workers run), the end-to-end rate (first fill to last
  ending), and the drain rate of a queue filled before the workers start
  (claim + run + release only). Endings are timed by the group's ledger
  (Redis stream ids are the server's milliseconds).
* overflow-to-start latency: one task at a time is overflowed into an idle
  group; the time from just before ``fill`` to the start of ``on_execute``
  in the worker process (CLOCK_MONOTONIC is system-wide on Linux).
* for reference, the local path through a SharedBucket (room to spare: one
  Redis round trip to record the task, one to release it) and a plain
  TaskBucket.

Each figure is the median of --repeats runs (min and max shown too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from wheelbucket import TaskBucket, TaskType
from wheelbucket.redis import SharedBucket

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent / "tests"))


# -- the worker process ------------------------------------------------------------------


def worker_main(cfg: dict[str, Any]) -> None:
    client = redis.Redis.from_url(cfg["url"])
    latency_key = cfg.get("latency_key")

    def execute(ctx: Any, task_id: str, data: Any) -> None:
        if latency_key:
            client.hset(latency_key, task_id, repr(time.monotonic()))

    shared = SharedBucket(
        cfg["group"],
        cfg["url"],
        executor=execute,
        local={"max_bucket": cfg["max_bucket"], "workers": cfg["workers"]},
        heartbeat=cfg["heartbeat"],
        ledger=10_000_000,
    )
    print("READY", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    shared.close(wait=True, timeout=30)
    client.close()


class Workers:
    def __init__(self, url: str, group: str, n: int, **cfg: Any) -> None:
        cfg = {
            "url": url, "group": group, "max_bucket": 100, "workers": 4, "heartbeat": 0.5,
            **cfg,
        }  # fmt: skip
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(HERE), "_worker", json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            for _ in range(n)
        ]
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line.startswith(b"READY"):
                raise RuntimeError("a worker did not start")

    def stop(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            p.wait(60)
            assert p.stdout is not None
            p.stdout.close()


# -- measurements --------------------------------------------------------------------------


def ledger_span(r: Any, group: str, n: int, timeout: float) -> tuple[float, float]:
    """Wait for n endings; return (first, last) ending times from the ledger ids (s)."""
    key = f"wb:{{{group}}}:ledger"
    end = time.monotonic() + timeout
    while r.xlen(key) < n:
        if time.monotonic() > end:
            raise TimeoutError(f"only {r.xlen(key)} of {n} tasks ended")
        time.sleep(0.01)
    first = r.xrange(key, count=1)[0][0]
    last = r.xrevrange(key, count=1)[0][0]
    return int(first.split(b"-")[0]) / 1e3, int(last.split(b"-")[0]) / 1e3


def server_time(r: Any) -> float:
    sec, usec = r.time()
    return float(sec) + usec / 1e6


def shared_run(url: str, r: Any, n: int, procs: int, *, prefill: bool) -> dict[str, float]:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    producer = SharedBucket(group, url, producer_only=True, heartbeat=0.5)
    if prefill:  # no worker yet: say the default executor is run, as the workers will
        producer._store.register_executors([""])
    workers = None if prefill else Workers(url, group, procs)
    try:
        t0 = server_time(r)
        start = time.perf_counter()
        for i in range(n):
            producer.fill(TaskType.IMMEDIATE, f"t{i}", i, life_span=600)
        fill_s = time.perf_counter() - start
        if prefill:
            workers = Workers(url, group, procs)
        first, last = ledger_span(r, group, n, timeout=600)
    finally:
        if workers is not None:
            workers.stop()
        producer.close()
    out = {"fill_per_s": n / fill_s}
    if prefill:
        out["drain_per_s"] = n / max(last - first, 1e-3)
    else:
        out["end_to_end_per_s"] = n / max(last - t0, 1e-3)
    return out


def latency_run(url: str, r: Any, samples: int, procs: int) -> list[float]:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    key = f"bench:{{{group}}}:lat"
    producer = SharedBucket(group, url, producer_only=True, heartbeat=0.5)
    workers = Workers(url, group, procs, latency_key=key)
    out = []
    try:
        for i in range(samples):
            task_id = f"l{i}"
            before = time.monotonic()
            producer.fill(TaskType.IMMEDIATE, task_id, None, life_span=60)
            while (started := r.hget(key, task_id)) is None:
                time.sleep(0.0005)
            out.append(float(started) - before)
            time.sleep(0.01)
    finally:
        workers.stop()
        producer.close()
    return out


def local_run(url: str, n: int) -> dict[str, float]:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    shared = SharedBucket(
        group, url, executor=lambda ctx, t, d: None, local={"max_bucket": n + 1}, heartbeat=0.5
    )
    start = time.perf_counter()
    for i in range(n):
        shared.fill(TaskType.IMMEDIATE, f"t{i}", i)
    while len(shared) or shared.group_info().live:
        time.sleep(0.005)
    shared_s = time.perf_counter() - start
    shared.close()
    with TaskBucket(max_bucket=n + 1, executor=lambda ctx, t, d: None) as bucket:
        start = time.perf_counter()
        for i in range(n):
            bucket.fill(TaskType.IMMEDIATE, f"t{i}", i)
        while len(bucket):
            time.sleep(0.001)
        plain_s = time.perf_counter() - start
    return {"shared_local_per_s": n / shared_s, "plain_taskbucket_per_s": n / plain_s}


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis to use (default: start a throwaway redis-server)")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=300, help="latency samples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    server = None
    url = args.url
    if url is None:
        from redis_server import RedisServer

        server = RedisServer()
        server.start()
        url = server.url
    r = redis.Redis.from_url(url)
    results: dict[str, Any] = {
        "tasks": args.tasks,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "redis": r.info("server")["redis_version"],
        "python": sys.version.split()[0],
    }
    try:
        for procs in (1, 3):
            runs = [
                shared_run(url, r, args.tasks, procs, prefill=False) for _ in range(args.repeats)
            ]
            drains = [
                shared_run(url, r, args.tasks, procs, prefill=True) for _ in range(args.repeats)
            ]
            results[f"shared_{procs}"] = {
                "fill_per_s": summary([x["fill_per_s"] for x in runs]),
                "fill_idle_per_s": summary([x["fill_per_s"] for x in drains]),
                "end_to_end_per_s": summary([x["end_to_end_per_s"] for x in runs]),
                "drain_per_s": summary([x["drain_per_s"] for x in drains]),
            }
            lat: list[float] = []
            for _ in range(args.repeats):
                lat += latency_run(url, r, args.samples // args.repeats, procs)
            results[f"latency_{procs}"] = {
                "p50_ms": 1e3 * quantile(lat, 0.5),
                "p99_ms": 1e3 * quantile(lat, 0.99),
                "max_ms": 1e3 * max(lat),
            }
        local = [local_run(url, min(args.tasks, 10_000)) for _ in range(args.repeats)]
        results["local"] = {
            k: summary([x[k] for x in local])
            for k in ("shared_local_per_s", "plain_taskbucket_per_s")
        }
    finally:
        r.close()
        if server is not None:
            server.close()

    print(
        f"wheelbucket shared bucket: {args.tasks} no-op tasks, {results['cpus']} CPUs, "
        f"Redis {results['redis']}, Python {results['python']} (median of {args.repeats})"
    )
    print(f"{'':34}{'median':>10}{'min':>10}{'max':>10}")
    for procs in (1, 3):
        block = results[f"shared_{procs}"]
        for name, label in (
            ("fill_idle_per_s", "fills/s, idle group"),
            ("fill_per_s", "fills/s, workers busy"),
            ("end_to_end_per_s", "end-to-end tasks/s"),
            ("drain_per_s", "full-queue drain/s"),
        ):
            s = block[name]
            figures = f"{s['median']:>10.0f}{s['min']:>10.0f}{s['max']:>10.0f}"
            print(f"{procs} worker(s): {label:<22}{figures}")
        lat = results[f"latency_{procs}"]
        print(
            f"{procs} worker(s): overflow-to-start ms    p50 {lat['p50_ms']:.2f}  "
            f"p99 {lat['p99_ms']:.2f}  max {lat['max_ms']:.2f}"
        )
    for name, label in (
        ("shared_local_per_s", "local path via SharedBucket/s"),
        ("plain_taskbucket_per_s", "plain TaskBucket tasks/s"),
    ):
        s = results["local"][name]
        print(f"{label:<34}{s['median']:>10.0f}{s['min']:>10.0f}{s['max']:>10.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        worker_main(json.loads(sys.argv[2]))
    else:
        main()

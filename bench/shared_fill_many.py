"""Batched fills into the shared bucket (``SharedBucket.fill_many``), side by side with
saq and RQ on the same redis-server, in the same run.

Standalone: ``python bench/shared_fill_many.py [--url redis://...] [--tasks N]
[--batch B] [--repeats 3] [--peers]``. Without --url it starts a throwaway
redis-server (tests/redis_server.py) on 127.0.0.1. No-op tasks; each figure is
the median of --repeats runs (min and max shown too):

* fill_many/s into an idle group: a producer-only process fills N tasks in
  batches of B; nobody claims them meanwhile (the producer registers the
  executor name itself, as a worker would, so that its fills are accepted).
* fill/s the same way, one ``fill`` per task, for reference.
* end to end with 1 and 3 worker processes (max_bucket 1000, --threads each):
  from just before the first fill to the last ending in the group's ledger
  (Redis stream ids are the server's milliseconds); and the producer's
  fill_many/s while the workers run.
* --peers (needs ``pip install saq rq``): saq (``enqueue`` per job, 1000 at a
  time with asyncio.gather) and RQ (``enqueue_many`` in one pipeline per
  batch), fills/s into an idle queue and end to end with 1 and 3 worker
  processes (saq ``Worker`` with concurrency 10; RQ ``SimpleWorker``).
"""

from __future__ import annotations

import argparse
import asyncio
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

from wheelbucket import TaskType
from wheelbucket.redis import SharedBucket

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent.parent / "tests"))

LIFE_SPAN = 600  # seconds: no task expires while it waits, whatever the backlog


def noop(*args: Any) -> None:
    """The peers' job function (importable as bench.shared_fill_many.noop)."""


async def saq_noop(ctx: Any, **kwargs: Any) -> None:
    """saq's job function."""


# -- worker processes ------------------------------------------------------------------------


def worker_main(cfg: dict[str, Any]) -> None:
    kind = cfg["kind"]
    if kind == "wheelbucket":
        shared = SharedBucket(
            cfg["group"],
            cfg["url"],
            executor=lambda ctx, task_id, data: None,
            local={"max_bucket": 1000, "workers": cfg["threads"], "life_span": LIFE_SPAN},
            heartbeat=0.5,
            claim_batch=200,
            ledger=10_000_000,
        )
        print("READY", flush=True)
        sys.stdin.read()  # until the parent closes our stdin
        shared.close(wait=True, timeout=30)
    elif kind == "rq":
        from rq import Queue
        from rq.worker import SimpleWorker

        conn = redis.Redis.from_url(cfg["url"])
        queue = Queue(cfg["group"], connection=conn)
        worker = SimpleWorker([queue], connection=conn)
        print("READY", flush=True)
        worker.work(burst=False, logging_level="WARNING", with_scheduler=False)
    elif kind == "saq":
        from saq import Queue as SaqQueue
        from saq import Worker as SaqWorker

        async def run() -> None:
            queue = SaqQueue.from_url(cfg["url"], name=cfg["group"])
            worker = SaqWorker(queue, functions=[("noop", saq_noop)], concurrency=10)
            print("READY", flush=True)
            await worker.start()

        asyncio.run(run())


class Workers:
    def __init__(self, kind: str, url: str, group: str, n: int, threads: int = 4) -> None:
        cfg = {"kind": kind, "url": url, "group": group, "threads": threads}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(HERE), "_worker", json.dumps(cfg)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(n)
        ]
        for p in self.procs:
            assert p.stdout is not None
            if not p.stdout.readline().startswith(b"READY"):
                raise RuntimeError(f"a {kind} worker did not start")
        time.sleep(0.3)  # joined and listening

    def stop(self) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            assert p.stdout is not None
            p.stdout.close()


# -- wheelbucket -------------------------------------------------------------------------------


def server_time(r: Any) -> float:
    sec, usec = r.time()
    return float(sec) + usec / 1e6


def ledger_last(r: Any, group: str, n: int, timeout: float) -> float:
    """Wait for n endings; the time of the last one (s, Redis clock)."""
    key = f"wb:{{{group}}}:ledger"
    end = time.monotonic() + timeout
    while r.xlen(key) < n:
        if time.monotonic() > end:
            raise TimeoutError(f"only {r.xlen(key)} of {n} tasks ended")
        time.sleep(0.01)
    last = r.xrevrange(key, count=1)[0][0]
    return int(last.split(b"-")[0]) / 1e3


def drop_group(r: Any, group: str) -> None:
    keys = list(r.scan_iter(match=f"wb:{{{group}}}:*", count=10_000))
    for i in range(0, len(keys), 1000):
        r.delete(*keys[i : i + 1000])


def wb_fill(url: str, r: Any, n: int, batch: int, *, many: bool) -> float:
    """Fills/s of a producer into an idle group (nobody claims)."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    producer = SharedBucket(
        group, url, producer_only=True, heartbeat=0.5, local={"life_span": LIFE_SPAN}
    )
    # As a worker would: the producer accepts only executor names a live member runs.
    producer._store.register_executors([""])
    try:
        start = time.perf_counter()
        if many:
            for b in range(0, n, batch):
                out = producer.fill_many(
                    [(TaskType.IMMEDIATE, f"t{i}", i) for i in range(b, min(n, b + batch))]
                )
                assert all(o is None for o in out), out[:3]
        else:
            for i in range(n):
                producer.fill(TaskType.IMMEDIATE, f"t{i}", i)
        elapsed = time.perf_counter() - start
    finally:
        producer.close()
        drop_group(r, group)
    return n / elapsed


def wb_end_to_end(
    url: str, r: Any, n: int, batch: int, procs: int, threads: int = 4
) -> dict[str, float]:
    group = f"bench-{uuid.uuid4().hex[:8]}"
    workers = Workers("wheelbucket", url, group, procs, threads)
    producer = SharedBucket(
        group, url, producer_only=True, heartbeat=0.5, local={"life_span": LIFE_SPAN}
    )
    try:
        t0 = server_time(r)
        start = time.perf_counter()
        for b in range(0, n, batch):
            out = producer.fill_many(
                [(TaskType.IMMEDIATE, f"t{i}", i) for i in range(b, min(n, b + batch))]
            )
            assert all(o is None for o in out), out[:3]
        fill_s = time.perf_counter() - start
        last = ledger_last(r, group, n, timeout=600)
    finally:
        producer.close()
        workers.stop()
        drop_group(r, group)
    return {"fill_per_s": n / fill_s, "end_to_end_per_s": n / max(last - t0, 1e-3)}


# -- the peers ---------------------------------------------------------------------------------


def rq_run(url: str, r: Any, n: int, batch: int, procs: int) -> dict[str, float]:
    from rq import Queue

    name = f"bench-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, connection=r)
    workers = Workers("rq", url, name, procs) if procs else None
    try:
        t0 = time.perf_counter()
        for b in range(0, n, batch):
            with r.pipeline() as pipe:
                queue.enqueue_many(
                    [
                        Queue.prepare_data(noop, (i,), result_ttl=600)
                        for i in range(b, min(n, b + batch))
                    ],
                    pipeline=pipe,
                )
                pipe.execute()
        fill_s = time.perf_counter() - t0
        out = {"fill_per_s": n / fill_s}
        if workers is not None:
            registry = queue.finished_job_registry
            end = time.monotonic() + 600
            while registry.count < n:
                if time.monotonic() > end:
                    raise TimeoutError(f"RQ: only {registry.count} of {n} jobs finished")
                time.sleep(0.01)
            out["end_to_end_per_s"] = n / (time.perf_counter() - t0)
    finally:
        if workers is not None:
            workers.stop()
        r.flushdb()
    return out


def saq_run(url: str, n: int, batch: int, procs: int) -> dict[str, float]:
    from saq import Queue as SaqQueue

    name = f"bench-{uuid.uuid4().hex[:8]}"
    workers = Workers("saq", url, name, procs) if procs else None

    async def run() -> dict[str, float]:
        queue = SaqQueue.from_url(url, name=name)
        await queue.connect()
        t0 = time.perf_counter()
        for b in range(0, n, batch):
            await asyncio.gather(*(queue.enqueue("noop", i=i) for i in range(b, min(n, b + batch))))
        fill_s = time.perf_counter() - t0
        out = {"fill_per_s": n / fill_s}
        if workers is not None:
            end = time.monotonic() + 600
            while await queue.count("incomplete") > 0:
                if time.monotonic() > end:
                    raise TimeoutError("saq: jobs did not complete")
                await asyncio.sleep(0.01)
            out["end_to_end_per_s"] = n / (time.perf_counter() - t0)
        await queue.disconnect()
        return out

    try:
        return asyncio.run(run())
    finally:
        if workers is not None:
            workers.stop()
        redis.Redis.from_url(url).flushdb()


# -- report ------------------------------------------------------------------------------------


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Redis to use (default: start a throwaway redis-server)")
    parser.add_argument("--tasks", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--peers", action="store_true", help="also measure saq and RQ")
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
    n, batch, reps = args.tasks, args.batch, range(args.repeats)
    results: dict[str, Any] = {
        "tasks": n,
        "batch": batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "redis": r.info("server")["redis_version"],
        "python": sys.version.split()[0],
    }
    rows: list[tuple[str, dict[str, float]]] = []

    def add(label: str, run: Any, *keys: str) -> None:
        """Run `run` --repeats times; one row per key of its result dict."""
        outs = [run() for _ in reps]
        for key, text in zip(keys[::2], keys[1::2], strict=True):
            rows.append((label.format(text), summary([o[key] for o in outs])))

    def fills(many: bool, count: int) -> Any:
        return lambda: {"fill_per_s": wb_fill(url, r, count, batch, many=many)}

    try:
        add("wheelbucket {}", fills(True, n), "fill_per_s", "fill_many/s, idle group")
        add("wheelbucket {}", fills(False, n // 3), "fill_per_s", "fill/s one by one, idle")
        for procs in (1, 3):
            add(
                f"wheelbucket {{}}, {procs} workers",
                lambda procs=procs: wb_end_to_end(url, r, n, batch, procs, args.threads),
                "fill_per_s", "fill_many/s while running",
                "end_to_end_per_s", "end to end/s",
            )  # fmt: skip
        if args.peers:
            peer_n = max(1000, n // 3)
            results["peer_tasks"] = peer_n
            add(
                "RQ {}",
                lambda: rq_run(url, r, peer_n, batch, 0),
                "fill_per_s",
                "enqueue_many/s, idle",
            )
            add("saq {}", lambda: saq_run(url, peer_n, batch, 0), "fill_per_s", "enqueue/s, idle")
            for procs in (1, 3):
                add(
                    f"RQ SimpleWorker {{}}, {procs} workers",
                    lambda procs=procs: rq_run(url, r, peer_n, batch, procs),
                    "end_to_end_per_s", "end to end/s",
                )  # fmt: skip
                add(
                    f"saq {{}}, {procs} workers",
                    lambda procs=procs: saq_run(url, peer_n, batch, procs),
                    "end_to_end_per_s", "end to end/s",
                )  # fmt: skip
    finally:
        r.close()
        if server is not None:
            server.close()
    results["rows"] = {label: s for label, s in rows}
    print(
        f"{n} no-op tasks (peers: {results.get('peer_tasks', '-')}), batches of {batch}, "
        f"{args.threads} threads per wheelbucket worker, "
        f"{results['cpus']} CPUs, Redis {results['redis']}, Python {results['python']}, "
        f"median of {args.repeats}"
    )
    print(f"{'':46}{'median':>10}{'min':>10}{'max':>10}")
    for label, s in rows:
        print(f"{label:<46}{s['median']:>10.0f}{s['min']:>10.0f}{s['max']:>10.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_worker"]:
        worker_main(json.loads(sys.argv[2]))
    else:
        main()

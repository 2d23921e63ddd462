"""Crashes and deploys lose nothing that never started (docs/shared.md, hand-backs).

Against a real redis-server (the fixtures of tests/test_redis.py). A member
records each start in Redis before its ``on_execute`` begins, so the group
knows which of the tasks it held had started:

- killed with SIGKILL (a real subprocess), its never-started tasks run once
  on a survivor, within ``dead_after`` + 1 s; those that had started are not
  run again, and end EXHAUSTED on a survivor with the mark ``started`` (in the
  ledger, in ``had_started()`` inside the hook, and in the stats);
- closing, it hands its never-started tasks back to the group instead of
  draining them;
- tasks whose life span ran out while they waited in the queue are counted
  apart (``expired_queued``).

Worker processes are this file run as a script: ``python
tests/test_redis_handback.py worker '<json>'``. Their hooks write to Redis
(``test:{G}:starts``: starts per id; ``test:{G}:hooks``: one JSON line per
ending hook), so a killed process leaves its record behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from test_redis import (  # noqa: E402 - the fixtures of the shared-bucket tests
    group,
    make,
    r,
    redis_server,
    server,
    wait_for,
)

from wheelbucket import Executor, TaskState, TaskType  # noqa: E402
from wheelbucket.redis import SharedBucket  # noqa: E402
from wheelbucket.redis.handback import had_started  # noqa: E402

__all__ = ["group", "make", "r", "redis_server", "server"]  # fixtures, used by name

pytestmark = pytest.mark.redis

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB
HERE = Path(__file__).resolve()
# Short, so that the tests stay fast; the heartbeat is a tenth of it.
DEAD_AFTER = 1.0
HEARTBEAT = 0.1


def ledger(r: Any, group: str) -> list[dict[str, str]]:
    """Every ending of the group, in order, with all its fields."""
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in r.xrange(f"wb:{{{group}}}:ledger")
    ]


def hooks(r: Any, group: str) -> list[dict[str, Any]]:
    """The ending hooks the worker processes ran: {hook, id, by, had_started}."""
    return [json.loads(x) for x in r.lrange(f"test:{{{group}}}:hooks", 0, -1)]


def starts(r: Any, group: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(f"test:{{{group}}}:starts").items()}


class Recorder(Executor):
    """In-process executor: records hooks; blocks in on_execute until `release` (or cancel)."""

    def __init__(self, block: bool = False) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, bool]] = []
        self.block = block
        self.release = threading.Event()

    def _note(self, hook: str, task_id: str) -> None:
        with self.lock:
            self.calls.append((hook, task_id, had_started()))

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("execute", task_id)
        if self.block:
            while not ctx.cancelled and not self.release.is_set():
                ctx.wait(0.01)

    def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("finish", task_id)

    def on_task_exhausted(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("exhausted", task_id)

    def on_panic(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("panic", task_id)

    def ids(self, hook: str) -> list[str]:
        with self.lock:
            return [t for h, t, _ in self.calls if h == hook]


# -- worker processes ---------------------------------------------------------------


class Worker:
    """A member in its own process (this file run as a script)."""

    def __init__(self, url: str, group: str, log: Path, **cfg: Any) -> None:
        cfg = {"url": url, "group": group, **cfg}
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE), "worker", json.dumps(cfg)],
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=str(HERE.parent.parent),
            )
        self.member = ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc.stdout is not None
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline().decode()
                if line.startswith("READY "):
                    self.member = line.split()[1]
                    return
            if self.proc.poll() is not None:
                break
        pytest.fail(f"worker did not start: {self.log.read_text()[-3000:]}")

    def wait_stopped(self, timeout: float = 60.0) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not stop: {self.log.read_text()[-3000:]}")
        assert self.proc.returncode == 0, self.log.read_text()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def workers(server: Any, group: str, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(**cfg: Any) -> Worker:
        w = Worker(server.url, group, tmp_path / f"w{len(started)}.log", **cfg)
        started.append(w)
        w.wait_ready()
        return w

    yield start
    for w in started:
        w.kill()


# -- kill -9 --------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_kill_9_with_100_claimed_tasks_loses_none_that_never_started(
    make: Callable[..., SharedBucket], workers: Callable[..., Worker], r: Any, group: str
) -> None:
    n, stalled = 100, 4
    victim = workers(max_bucket=n, workers=stalled, stall=True)
    p = make(producer_only=True, heartbeat=HEARTBEAT, dead_after=DEAD_AFTER)
    ids = [f"job-{i}" for i in range(n)]
    for task_id in ids:
        assert p.fill(IMMEDIATE, task_id, {"work": 0}, life_span=120) is None
    by_victim = f"wb:{{{group}}}:by:{victim.member}"
    wait_for(lambda: r.scard(by_victim) == n, timeout=60, what="the victim to claim all")
    wait_for(lambda: len(starts(r, group)) == stalled, timeout=60, what="its workers to start")
    time.sleep(0.3)  # it holds 100 claimed tasks, of which 4 run (stalled) and 96 wait
    assert len(starts(r, group)) == stalled
    survivors = [workers(max_bucket=n, workers=4) for _ in range(2)]
    time.sleep(DEAD_AFTER + 0.2)  # a member reaps once connected for dead_after
    started_on_victim = set(starts(r, group))

    victim.kill()
    killed = time.monotonic()
    wait_for(lambda: len(starts(r, group)) == n, timeout=60, what="the never-started to run")
    recovery = time.monotonic() - killed
    wait_for(lambda: r.xlen(f"wb:{{{group}}}:ledger") >= n, timeout=60, what="every ending")
    print(f"recovery: {recovery:.2f} s after kill -9 (dead_after {DEAD_AFTER} s)")

    entries = ledger(r, group)
    counts = Counter(e["id"] for e in entries)
    assert set(counts) == set(ids)
    assert set(counts.values()) == {1}  # one ending each in the group
    survivor_names = {s.member for s in survivors}
    never_started = set(ids) - started_on_victim
    for e in entries:
        assert e["by"] in survivor_names
        if e["id"] in never_started:
            assert e["end"] == "finished", e  # ran on a survivor: none lost
            assert "started" not in e
        else:
            assert (e["end"], e.get("started")) == ("exhausted", "1"), e
    # Each ran once in the whole group: none of the started ones ran again.
    assert starts(r, group) == dict.fromkeys(ids, 1)
    # The survivors' hooks match: finished for the 96, exhausted with the mark for the 4.
    seen = sorted((h["hook"], h["id"], h["had_started"]) for h in hooks(r, group))
    assert seen == sorted(
        [("finished", i, False) for i in never_started]
        + [("exhausted", i, True) for i in started_on_victim]
    )
    assert recovery <= DEAD_AFTER + 1.0
    r.set(f"test:{{{group}}}:stop", "1")
    stats = []
    for s in survivors:
        s.wait_stopped()
        stats.append(json.loads(r.get(f"test:{{{group}}}:stats:{s.member}")))
    assert sum(st["exhausted_started"] for st in stats) == stalled
    assert sum(st["claimed"] for st in stats) == n
    reaped_unstarted = sum(st["reaped_unstarted"] for st in stats) + p.stats().reaped_unstarted
    assert reaped_unstarted == n - stalled
    info = p.group_info()
    assert (info.live, info.queued, info.exhausted_started) == (0, 0, stalled)


def ghost(r: Any, group: str, tasks: dict[str, bool]) -> None:
    """A member 'ghost' that died holding `tasks` (id -> its start was recorded)."""
    p = f"wb:{{{group}}}:"
    sec, usec = r.time()
    now = sec * 1_000_000 + usec
    for task_id, started in tasks.items():
        fields = {"tok": f"g.{task_id}", "own": "ghost", "typ": "i", "due": now}
        fields |= {"dl": now + 60_000_000, "ex": "", "d": "null", "ra": 0, "ls": 60_000_000}
        if started:
            fields["st"] = "1"
        r.hset(p + "t:" + task_id, mapping=fields)
        r.sadd(p + "ids", task_id)
        r.sadd(p + "by:ghost", task_id)
    r.sadd(p + "exs", "")
    r.zadd(p + "m", {"ghost": now - 10_000_000})  # silent for 10 s


def test_a_dead_members_started_task_ends_marked_and_the_rest_runs(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    calls: list[tuple[str, str, bool]] = []

    class Survivor(Executor):
        def on_execute(self, ctx: Any, task_id: str, data: Any) -> None:
            calls.append(("execute", task_id, had_started()))

        def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
            calls.append(("finish", task_id, had_started()))

        async def on_task_exhausted(self, ctx: Any, task_id: str, data: Any) -> None:
            calls.append(("exhausted", task_id, had_started()))  # an async hook sees it too

    ghost(r, group, {"ran": True, "waited": False})
    s = make(executor=Survivor(), dead_after=0.5)
    wait_for(lambda: len(calls) == 3, what="the survivor to end both")
    assert sorted(calls) == [
        ("execute", "waited", False),
        ("exhausted", "ran", True),
        ("finish", "waited", False),
    ]
    stats = s.stats()
    assert (stats.reaped, stats.reaped_unstarted, stats.exhausted_started) == (2, 1, 1)
    assert sorted((e["id"], e["end"], e.get("started")) for e in ledger(r, group)) == [
        ("ran", "exhausted", "1"),
        ("waited", "finished", None),
    ]
    wait_for(lambda: s.group_info().live == 0, what="the group to empty")
    assert s.group_info().exhausted_started == 1


@pytest.mark.slow
def test_no_task_starts_while_its_start_cannot_be_recorded(
    make: Callable[..., SharedBucket], server: Any, r: Any, group: str
) -> None:
    rec = Recorder()
    a = make(executor=rec, timeout=0.5)
    handle = a.fill(TIME_BOMB, "due-soon", run_after=0.3, life_span=30)
    assert handle is not None
    server.stop()  # no persistence: it comes back without the group
    try:
        time.sleep(1.0)  # it comes due while Redis is down
        assert rec.calls == []  # its start could not be recorded: it waits
        assert handle.state is TaskState.PENDING or handle.state is TaskState.RUNNING
    finally:
        server.start()
    wait_for(lambda: rec.ids("finish") == ["due-soon"], what="it to run once Redis is back")
    assert rec.ids("execute") == ["due-soon"]
    wait_for(lambda: a.group_info().live == 0, what="its release")


# -- graceful close -------------------------------------------------------------------


def test_close_with_a_timeout_hands_back_what_never_started(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    n = 20
    slow = Recorder(block=True)
    a = make(executor=slow, local={"max_bucket": n, "workers": 2})
    p = make(producer_only=True)
    for i in range(n):
        assert p.fill(IMMEDIATE, f"t{i}", life_span=60) is None
    wait_for(lambda: len(a) == n, what="a to claim them all")
    wait_for(lambda: len(slow.ids("execute")) == 2, what="a's two workers to start")
    running = set(slow.ids("execute"))
    rec = Recorder()
    b = make(executor=rec)
    a.close(wait=True, timeout=0.3)  # its two running tasks outlive the timeout
    assert a.stats().handed_back == n - 2
    wait_for(lambda: len(rec.ids("finish")) == n - 2, what="b to run the handed-back tasks")
    assert sorted(rec.ids("execute")) == sorted(set(f"t{i}" for i in range(n)) - running)
    ends = {(e["id"], e["end"], e["by"]) for e in ledger(r, group)}
    assert ends == {(t, "drained", a.member) for t in running} | {
        (f"t{i}", "finished", b.member) for i in range(n) if f"t{i}" not in running
    }
    assert set(slow.ids("execute")) == running  # none of them started on a
    assert b.group_info().live == 0
    assert b.stats().claimed == n - 2


def test_close_without_wait_hands_back_pending_tasks_and_they_run_on_time(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = make(executor=rec_a)
    filled = time.monotonic()
    handle = a.fill(TIME_BOMB, "later", run_after=0.5, life_span=30)
    assert handle is not None  # placed in a, not started
    b = make(executor=rec_b)
    a.close(wait=False)
    assert handle.state is TaskState.DRAINED  # gone from a's bucket...
    assert a.stats().handed_back == 1
    wait_for(lambda: rec_b.ids("finish") == ["later"], what="b to run it")  # ...run by b
    assert time.monotonic() - filled >= 0.5 - 0.01  # not before its due time
    assert rec_a.calls == []
    assert [(e["id"], e["end"], e["by"]) for e in ledger(r, group)] == [
        ("later", "finished", b.member)
    ]


def test_a_handed_back_task_keeps_the_times_a_reset_here_gave_it(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec_b = Recorder()
    a = make(executor=Recorder())
    assert a.fill(TIME_BOMB, "moved", run_after=0.2, life_span=30) is not None
    reset_at = time.monotonic()
    assert a.reset("moved", run_after=1.0) is not None  # later than its record says
    b = make(executor=rec_b)
    a.close(wait=False)
    assert a.stats().handed_back == 1
    wait_for(lambda: rec_b.ids("finish") == ["moved"], what="b to run it")
    assert time.monotonic() - reset_at >= 1.0 - 0.01  # not at the record's old due time
    assert [(e["id"], e["end"], e["by"]) for e in ledger(r, group)] == [
        ("moved", "finished", b.member)
    ]


def test_close_with_rescue_hands_nothing_back(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    a = make(executor=rec)
    assert a.fill(TIME_BOMB, "saved", run_after=30, life_span=60) is not None
    b = make(producer_only=True)
    a.close(wait=False, rescue=True)
    assert rec.ids("panic") == ["saved"]
    assert a.stats().handed_back == 0
    assert b.group_info().live == 0
    assert [(e["id"], e["end"]) for e in ledger(r, group)] == [("saved", "rescued")]


# -- backlog visibility ---------------------------------------------------------------


def test_tasks_that_expire_in_the_queue_are_counted_apart(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder(block=True)
    w = make(executor=rec, local={"max_bucket": 1, "workers": 1})
    assert w.fill(IMMEDIATE, "busy") is not None  # w is full while it runs
    wait_for(lambda: rec.ids("execute") == ["busy"], what="w to be busy")
    p = make(producer_only=True)
    for i in range(5):
        assert p.fill(IMMEDIATE, f"x{i}", life_span=0.2) is None
    time.sleep(0.3)  # no room anywhere: their life span ends in the queue
    rec.release.set()
    wait_for(lambda: len(rec.ids("exhausted")) == 5, what="their endings")
    assert rec.ids("execute") == ["busy"]
    assert all(not started for _, _, started in rec.calls)
    stats = w.stats()
    assert (stats.expired_queued, stats.exhausted_started) == (5, 0)
    assert stats.exhausted_on_claim == 5
    info = w.group_info()
    wait_for(lambda: w.group_info().live == 0, what="the group to empty")
    assert (info.expired_queued, info.exhausted_started) == (5, 0)
    assert {(e["end"], e.get("queued")) for e in ledger(r, group) if e["id"] != "busy"} == {
        ("exhausted", "1")
    }


def test_a_start_is_recorded_in_redis_before_on_execute_runs(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    seen: list[bytes | None] = []

    def job(ctx: Any, task_id: str, data: Any) -> None:
        seen.append(r.hget(f"wb:{{{group}}}:t:{task_id}", "st"))

    a = make(executor=job)
    handle = a.fill(IMMEDIATE, "j")
    assert handle is not None
    assert handle.wait(10) is TaskState.FINISHED
    assert seen == [b"1"]


# -- the worker process ---------------------------------------------------------------


class _WorkerExecutor(Executor):
    def __init__(self, client: Any, cfg: dict[str, Any]) -> None:
        g = cfg["group"]
        self.r = client
        self.starts = f"test:{{{g}}}:starts"
        self.hooks = f"test:{{{g}}}:hooks"
        self.stall = bool(cfg.get("stall"))
        self.member = ""

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> None:
        self.r.hincrby(self.starts, task_id, 1)  # before any work
        if self.stall:
            ctx.wait(120)
        elif data and data.get("work"):
            ctx.wait(data["work"])

    def _end(self, hook: str, task_id: str) -> None:
        entry = {"hook": hook, "id": task_id, "by": self.member, "had_started": had_started()}
        self.r.rpush(self.hooks, json.dumps(entry))

    def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
        self._end("finished", task_id)

    def on_execute_error(self, ctx: Any, task_id: str, data: Any, error: BaseException) -> None:
        self._end("failed", task_id)

    def on_task_exhausted(self, ctx: Any, task_id: str, data: Any) -> None:
        self._end("exhausted", task_id)

    def on_panic(self, ctx: Any, task_id: str, data: Any) -> None:
        self._end("rescued", task_id)


def _worker_main(cfg: dict[str, Any]) -> None:
    import dataclasses

    client = redis.Redis.from_url(cfg["url"], socket_timeout=5, socket_connect_timeout=5)
    executor = _WorkerExecutor(client, cfg)
    shared = SharedBucket(
        cfg["group"],
        cfg["url"],
        executor=executor,
        local={"max_bucket": cfg.get("max_bucket", 100), "workers": cfg.get("workers", 4)},
        heartbeat=cfg.get("heartbeat", HEARTBEAT),
        dead_after=cfg.get("dead_after", DEAD_AFTER),
        timeout=2.0,
        ledger=100_000,
    )
    executor.member = shared.member
    print("READY", shared.member, flush=True)
    stop_key = f"test:{{{cfg['group']}}}:stop"
    while not client.exists(stop_key):
        time.sleep(0.05)
    shared.close(wait=True, timeout=30)
    stats = dataclasses.asdict(shared.stats())
    stats.pop("local")
    client.set(f"test:{{{cfg['group']}}}:stats:{shared.member}", json.dumps(stats))
    client.close()


if __name__ == "__main__":  # a worker process of the tests above
    if sys.argv[1:2] == ["worker"]:
        import logging

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            _worker_main(json.loads(sys.argv[2]))
        os._exit(0)

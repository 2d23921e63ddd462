"""SharedBucket.reset (and drain's TaskOutOfReach) against a real redis-server.

Each case of docs/shared.md, "Reset": a task held here is reset in the local
bucket (with the durations it was *filled* with as defaults, also when it was
claimed); a task waiting in Redis is moved by one script; a task held by
another process, doomed, or past its deadline in Redis raises TaskOutOfReach;
an id live nowhere raises TaskNotFound; bad arguments are refused before any
Redis call.

The fixtures are the minimal ones of tests/test_redis.py, copied. Time is
real: waits are polls with generous safety timeouts, and "not before" checks
compare with a time read before the reset was called.
"""

from __future__ import annotations

import datetime
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from redis_server import RedisServer

redis = pytest.importorskip("redis")

from test_redis import (  # noqa: E402 - the fixtures of the shared-bucket tests
    group,
    make,
    r,
    redis_server,
    server,
    wait_for,
)

from wheelbucket import (  # noqa: E402 - after the importorskip
    BucketError,
    TaskExists,
    TaskNotFound,
    TaskState,
    TaskType,
)
from wheelbucket.redis import (  # noqa: E402
    RedisUnavailable,
    SharedBucket,
    TaskOutOfReach,
)

__all__ = ["group", "make", "r", "redis_server", "server"]  # fixtures, used by name

pytestmark = pytest.mark.redis

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB
# The Redis clock (TIME) and the local monotonic clock may run at slightly
# different rates: "never early" across them allows this much (seconds).
CLOCKS = 0.005


# -- fixtures (as in tests/test_redis.py) -------------------------------------------


class Recorder:
    """Records hooks and start times; blocks in on_execute when the data says so."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []
        self.starts: dict[str, float] = {}
        self.ctxs: dict[str, Any] = {}
        self.release = threading.Event()

    def _note(self, hook: str, task_id: str) -> None:
        with self.lock:
            self.calls.append((hook, task_id))

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> None:
        with self.lock:
            self.starts[task_id] = time.monotonic()
            self.ctxs[task_id] = ctx
        self._note("execute", task_id)
        if isinstance(data, dict) and data.get("block"):
            while not ctx.cancelled and not self.release.is_set():
                ctx.wait(0.01)

    def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("finish", task_id)

    def on_task_exhausted(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("exhausted", task_id)

    def hooks(self, task_id: str) -> list[str]:
        with self.lock:
            return [h for h, t in self.calls if t == task_id]


def record(r: Any, group: str, task_id: str) -> dict[str, str]:
    """The group's Redis record of `task_id` ({} if none)."""
    raw = r.hgetall(f"wb:{{{group}}}:t:{task_id}")
    return {k.decode(): v.decode() for k, v in raw.items() if k != b"d"}


def redis_now_us(r: Any) -> int:
    sec, usec = r.time()
    return int(sec) * 1_000_000 + int(usec)


def runs_elsewhere(producer: SharedBucket) -> None:
    """As if another live process ran the default executor (see test_redis.runs_elsewhere)."""
    producer._store.register_executors([""])


def queue_score(r: Any, group: str, task_id: str, ex: str = "") -> float | None:
    score = r.zscore(f"wb:{{{group}}}:q:{ex}", task_id)
    return None if score is None else float(score)


# -- held here -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_held_time_bomb_moved_later_runs_at_its_new_time_and_not_before(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    shared = make(executor=rec)
    handle = shared.fill(TIME_BOMB, "later", run_after=0.3, life_span=30)
    assert handle is not None
    before = time.monotonic()
    assert shared.reset("later", run_after=1.2) == handle  # the same handle, no Redis call
    wait_for(lambda: "later" in rec.starts, what="the moved task to start")
    assert rec.starts["later"] >= before + 1.2  # never before its new time (one clock)
    assert rec.starts["later"] < before + 1.2 + 3.0  # generous: a busy machine
    assert handle.wait(10) is TaskState.FINISHED
    assert rec.hooks("later") == ["execute", "finish"]
    assert shared.stats().local.reset == 1
    assert shared.stats().reset_remote == 0


@pytest.mark.slow
def test_a_held_time_bomb_moved_earlier_runs_at_its_new_time(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    shared = make(executor=rec)
    handle = shared.fill(TIME_BOMB, "sooner", run_after=60, life_span=90)
    assert handle is not None
    before = time.monotonic()
    assert shared.reset("sooner", run_after=datetime.timedelta(seconds=0.3)) == handle
    assert handle.wait(15) is TaskState.FINISHED  # not after 60 s
    assert rec.starts["sooner"] >= before + 0.3
    assert rec.starts["sooner"] < before + 0.3 + 5.0


@pytest.mark.slow
def test_a_running_task_whose_deadline_moved_is_not_exhausted_at_the_old_one(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    shared = make(executor=rec)
    filled = time.monotonic()
    handle = shared.fill(IMMEDIATE, "run", {"block": True}, life_span=3.0)
    assert handle is not None
    wait_for(lambda: "run" in rec.ctxs, what="the task to start")
    ctx = rec.ctxs["run"]
    old_deadline = ctx.deadline
    with pytest.raises(ValueError, match="run_after"):
        shared.reset("run", run_after=1, life_span=10)  # running: refused, nothing moves
    assert ctx.deadline == old_deadline
    assert shared.reset("run", life_span=30) == handle
    assert ctx.deadline > old_deadline + 20
    # Past the old deadline, with room to spare: still running, no ending.
    wait_for(lambda: time.monotonic() > filled + 3.0 + 0.8, timeout=30, what="the old deadline")
    assert handle.state is TaskState.RUNNING
    assert rec.hooks("run") == ["execute"]
    rec.release.set()
    assert handle.wait(10) is TaskState.FINISHED
    assert rec.hooks("run") == ["execute", "finish"]


def test_a_claimed_task_gets_the_life_span_it_was_filled_with(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    p = make(producer_only=True)
    runs_elsewhere(p)
    assert p.fill(IMMEDIATE, "c", {"block": True}, life_span=60) is None
    # As if it had waited 55 s in Redis: claimed, it has 5 s left.
    r.hset(f"wb:{{{group}}}:t:c", "dl", str(redis_now_us(r) + 5_000_000))
    rec = Recorder()
    w = make(executor=rec)
    wait_for(lambda: "c" in rec.ctxs, what="the claim")
    ctx = rec.ctxs["c"]
    assert ctx.remaining() <= 5.0
    handle = w.reset("c")  # the default is the 60 s it was filled with, not the 5 s left
    assert handle == w.get("c")
    assert ctx.remaining() > 30
    rec.release.set()
    assert handle is not None
    assert handle.wait(10) is TaskState.FINISHED


@pytest.mark.slow
def test_a_time_bomb_claimed_late_and_queued_for_a_worker_goes_back_to_waiting(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    w = make(executor=rec, local={"max_bucket": 10, "workers": 1})
    assert w.fill(IMMEDIATE, "blocker", {"block": True}, life_span=60) is not None
    wait_for(lambda: "blocker" in rec.starts, what="the blocker to hold the only worker")
    p = make(producer_only=True)
    assert p.fill(TIME_BOMB, "late", run_after=0, life_span=60) is None
    wait_for(lambda: w.get("late") is not None, what="the claim")
    handle = w.get("late")
    assert handle is not None
    assert handle.state is TaskState.PENDING  # due, queued behind the blocker
    before = time.monotonic()
    assert w.reset("late", run_after=0.5) == handle  # a pending TIME_BOMB: allowed
    rec.release.set()
    assert handle.wait(15) is TaskState.FINISHED
    assert rec.starts["late"] >= before + 0.5


# -- waiting in Redis -------------------------------------------------------------------


def test_a_queued_time_bomb_is_moved_in_redis(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    p = make(producer_only=True)
    other = make(producer_only=True)
    runs_elsewhere(p)
    assert p.fill(TIME_BOMB, "q", run_after=30, life_span=60) is None
    before = redis_now_us(r)
    assert other.reset("q", run_after=100, life_span=200) is None
    after = redis_now_us(r)
    rec = record(r, group, "q")
    due, dl = int(rec["due"]), int(rec["dl"])
    assert before + 100_000_000 <= due <= after + 100_000_000
    assert before + 200_000_000 <= dl <= after + 200_000_000
    assert queue_score(r, group, "q") == due  # its place in the queue follows
    assert (rec["ra"], rec["ls"]) == ("30000000", "60000000")  # the fill's, kept
    # Defaults: the durations it was filled with, from now.
    before = redis_now_us(r)
    assert other.reset("q") is None
    rec = record(r, group, "q")
    assert before + 30_000_000 <= int(rec["due"]) <= redis_now_us(r) + 30_000_000
    assert before + 60_000_000 <= int(rec["dl"]) <= redis_now_us(r) + 60_000_000
    assert other.stats().reset_remote == 2
    assert p.group_info().queued == 1


@pytest.mark.slow
def test_a_queued_time_bomb_moved_earlier_runs_then_and_not_before(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    p = make(producer_only=True)
    make(executor=rec)  # a worker with room: it claims a TIME_BOMB a heartbeat before due
    assert p.fill(TIME_BOMB, "q", run_after=60, life_span=90) is None
    before = time.monotonic()
    assert p.reset("q", run_after=0.6) is None
    wait_for(lambda: rec.hooks("q") == ["execute", "finish"], what="the moved task to run")
    assert rec.starts["q"] >= before + 0.6 - CLOCKS
    assert rec.starts["q"] < before + 0.6 + 5.0


def test_a_queued_immediate_task_only_gets_a_new_deadline(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    p = make(producer_only=True)
    runs_elsewhere(p)
    assert p.fill(IMMEDIATE, "i", life_span=10) is None
    was = record(r, group, "i")
    with pytest.raises(ValueError, match="run_after applies only to a TIME_BOMB"):
        p.reset("i", run_after=1)
    assert record(r, group, "i") == was  # refused: nothing changed
    before = redis_now_us(r)
    assert p.reset("i", life_span=50) is None
    now = record(r, group, "i")
    assert now["due"] == was["due"]
    assert before + 50_000_000 <= int(now["dl"]) <= redis_now_us(r) + 50_000_000
    assert queue_score(r, group, "i") == int(was["due"])


def test_a_queued_time_bomb_refuses_a_life_span_not_longer_than_its_run_after(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    p = make(producer_only=True)
    runs_elsewhere(p)
    assert p.fill(TIME_BOMB, "q", run_after=20, life_span=60) is None
    was = record(r, group, "q")
    with pytest.raises(
        ValueError, match=r"life_span \(5 s\) must be greater than run_after \(20 s\)"
    ):
        p.reset("q", life_span=5)  # the default run_after is the fill's 20 s
    assert record(r, group, "q") == was
    assert queue_score(r, group, "q") == int(was["due"])
    assert p.stats().reset_remote == 0


# -- refused -------------------------------------------------------------------------------


def test_an_id_live_nowhere_raises_task_not_found(make: Callable[..., SharedBucket]) -> None:
    rec = Recorder()
    shared = make(executor=rec)
    with pytest.raises(TaskNotFound, match="group"):
        shared.reset("nobody")
    handle = shared.fill(IMMEDIATE, "done")
    assert handle is not None
    assert handle.wait(10) is TaskState.FINISHED
    wait_for(lambda: shared.group_info().live == 0, what="the release")
    with pytest.raises(TaskNotFound):
        shared.reset("done")


def test_bad_arguments_are_refused_before_any_redis_call_and_change_nothing(
    make: Callable[..., SharedBucket], r: Any, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    w = make(executor=rec)
    p = make(producer_only=True)
    assert p.fill(TIME_BOMB, "q", run_after=30, life_span=60) is None
    handle = w.fill(TIME_BOMB, "h", run_after=30, life_span=60)
    assert handle is not None
    was = record(r, group, "q")

    def no_redis(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("reset called Redis for a bad argument")

    monkeypatch.setattr(p._store, "reset", no_redis)
    monkeypatch.setattr(w._store, "reset", no_redis)
    bad: list[tuple[type[Exception], str, dict[str, Any]]] = [
        (TypeError, "task_id", {"task_id": 5}),
        (ValueError, "task_id", {"task_id": ""}),
        (TypeError, "run_after", {"run_after": "1"}),
        (TypeError, "run_after", {"run_after": True}),
        (ValueError, "run_after", {"run_after": -1}),
        (ValueError, "run_after", {"run_after": math.nan}),
        (TypeError, "life_span", {"life_span": [1]}),
        (ValueError, "life_span", {"life_span": 0}),
        (ValueError, "life_span", {"life_span": math.inf}),
        (ValueError, "life_span", {"run_after": 5, "life_span": 3}),
    ]
    for shared, task_id in ((p, "q"), (w, "h"), (p, "nobody")):
        for error, name, kwargs in bad:
            kwargs = {"task_id": task_id, **kwargs}
            with pytest.raises(error, match=name):
                shared.reset(**kwargs)
    assert record(r, group, "q") == was
    assert handle.state is TaskState.PENDING
    assert w.stats().local.reset == 0
    assert p.stats().reset_remote == 0


def test_a_task_held_by_another_process_raises_task_out_of_reach(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    holder = make(executor=rec)
    other = make(producer_only=True)
    handle = holder.fill(TIME_BOMB, "h", run_after=30, life_span=60)
    assert handle is not None
    was = record(r, group, "h")
    with pytest.raises(TaskOutOfReach, match="held by another process") as info:
        other.reset("h", run_after=1)
    err = info.value
    assert isinstance(err, BucketError)
    assert not isinstance(err, (TaskNotFound, KeyError))
    assert (err.task_id, err.owner) == ("h", holder.member)
    assert holder.member in str(err)
    assert record(r, group, "h") == was  # nothing changed, there or here
    assert handle.state is TaskState.PENDING
    assert holder.stats().local.reset == 0
    with pytest.raises(TaskExists):
        other.fill(IMMEDIATE, "h")  # it is live: hence not TaskNotFound
    assert holder.reset("h", run_after=40, life_span=50) == handle  # its holder can


def test_a_doomed_or_expired_queued_task_raises_task_out_of_reach(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    p = make(producer_only=True)
    runs_elsewhere(p)
    assert p.fill(IMMEDIATE, "expired", life_span=30) is None
    assert p.fill(IMMEDIATE, "doomed", life_span=30) is None
    # As if its life span had run out while it waited, and as if it had been
    # reaped from a dead member.
    r.hset(f"wb:{{{group}}}:t:expired", "dl", str(redis_now_us(r) - 1))
    r.hset(f"wb:{{{group}}}:t:doomed", "doom", "1")
    was = record(r, group, "expired"), record(r, group, "doomed")
    with pytest.raises(TaskOutOfReach, match="life span ran out"):
        p.reset("expired", life_span=100)
    with pytest.raises(TaskOutOfReach, match="dead process"):
        p.reset("doomed", life_span=100)
    assert (record(r, group, "expired"), record(r, group, "doomed")) == was
    assert p.stats().reset_remote == 0


def test_a_task_being_placed_here_raises_task_out_of_reach_from_drain_and_reset(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    shared = make(executor=rec)
    key = f"wb:{{{group}}}:t:x"
    # A fill of "x" in flight here: recorded in Redis as this member's, not
    # yet in the local bucket (as SharedBucket.fill is between the two).
    shared._holdings.begin_fill("x")
    try:
        r.hset(key, mapping={"tok": "t1", "own": shared.member, "typ": "i", "ex": ""})
        r.sadd(f"wb:{{{group}}}:ids", "x")
        r.sadd(f"wb:{{{group}}}:by:{shared.member}", "x")
        with pytest.raises(TaskOutOfReach, match="being placed") as info:
            shared.drain("x")
        assert not isinstance(info.value, TaskNotFound)
        assert info.value.owner == shared.member
        with pytest.raises(TaskOutOfReach, match="being placed"):
            shared.reset("x", life_span=5)
        assert r.exists(key)  # neither changed anything
    finally:
        shared._holdings.end_fill("x")
    r.delete(key)
    r.srem(f"wb:{{{group}}}:ids", "x")
    r.srem(f"wb:{{{group}}}:by:{shared.member}", "x")


def test_redis_down_a_held_task_is_still_reset_a_remote_one_raises(
    make: Callable[..., SharedBucket], server: RedisServer
) -> None:
    rec = Recorder()
    shared = make(executor=rec)
    handle = shared.fill(TIME_BOMB, "h", run_after=30, life_span=60)
    assert handle is not None
    server.stop()
    try:
        assert shared.reset("h", run_after=40, life_span=50) == handle  # no Redis call
        with pytest.raises(RedisUnavailable, match="cannot reset"):
            shared.reset("elsewhere")
    finally:
        server.start()
    assert shared.stats().local.reset == 1

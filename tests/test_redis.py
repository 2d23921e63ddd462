"""The shared bucket (wheelbucket.redis) against a real redis-server.

Every test here needs ``redis-server`` (tests/redis_server.py starts a
throwaway one on 127.0.0.1). Without it they are skipped, except under CI
(``CI=true``), where a missing server is a failure.

Time here is real (Redis is real), so waits are polls with generous safety
timeouts, never sleeps that assume a speed. The multi-process tests run
worker processes from this very file: ``python tests/test_redis.py worker
'<json>'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import RedisServer, find_redis_server

redis = pytest.importorskip("redis")

from wheelbucket import (  # noqa: E402 - after the importorskip
    BucketClosed,
    BucketError,
    BucketFull,
    Executor,
    TaskBucket,
    TaskExists,
    TaskNotFound,
    TaskState,
    TaskType,
)
from wheelbucket.redis import (  # noqa: E402
    JSONSerializer,
    RedisUnavailable,
    SharedBucket,
    UnknownExecutor,
)

pytestmark = pytest.mark.redis

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB
HERE = Path(__file__).resolve()


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; under CI the shared-bucket tests must run")
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    server = RedisServer(binary=binary)
    server.start()
    yield server
    server.close()


@pytest.fixture
def server(redis_server: RedisServer) -> Iterator[RedisServer]:
    redis_server.start()
    yield redis_server
    redis_server.resume()  # a test may have paused or stopped it
    redis_server.start()


@pytest.fixture
def r(server: RedisServer) -> Iterator[Any]:
    client = redis.Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=5)
    yield client
    client.close()


@pytest.fixture
def group() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make(server: RedisServer, group: str) -> Iterator[Callable[..., SharedBucket]]:
    """Make SharedBuckets of the test's group; all are closed at the end."""
    made: list[SharedBucket] = []

    def make_one(**kwargs: Any) -> SharedBucket:
        kwargs.setdefault("heartbeat", 0.1)
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("ledger", 100_000)
        shared = SharedBucket(kwargs.pop("group", group), kwargs.pop("url", server.url), **kwargs)
        made.append(shared)
        return shared

    yield make_one
    server.resume()
    server.start()
    for shared in made:
        shared.close(wait=False)


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    """Poll `predicate` until true; fail after `timeout` real seconds (a safety net)."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.005)


class Recorder(Executor):
    """Records every hook call; blocks in on_execute when the data says so."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, Any]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def _note(self, hook: str, task_id: str, data: Any) -> None:
        with self.lock:
            self.calls.append((hook, task_id, data))

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> Any:
        self._note("execute", task_id, data)
        self.started.set()
        if isinstance(data, dict) and data.get("block"):
            while not ctx.cancelled and not self.release.is_set():
                ctx.wait(0.01)
            if ctx.cancelled:
                self._note("cancelled", task_id, data)
        return task_id

    def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("finish", task_id, data)

    def on_execute_error(self, ctx: Any, task_id: str, data: Any, error: BaseException) -> None:
        self._note("error", task_id, error)

    def on_task_exhausted(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("exhausted", task_id, data)

    def on_panic(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("panic", task_id, data)

    def hooks(self, task_id: str | None = None) -> list[str]:
        with self.lock:
            return [h for h, t, _ in self.calls if task_id is None or t == task_id]

    def ids(self, hook: str) -> list[str]:
        with self.lock:
            return [t for h, t, _ in self.calls if h == hook]


def ledger(r: Any, group: str) -> list[tuple[str, str, str]]:
    """The group's ledger: (id, ending, member) for every ending, in order."""
    out = []
    for _, fields in r.xrange(f"wb:{{{group}}}:ledger"):
        out.append((fields[b"id"].decode(), fields[b"end"].decode(), fields[b"by"].decode()))
    return out


def runs_elsewhere(producer: SharedBucket, *names: str) -> None:
    """As if another live process ran executors `names` (none given: the default one).

    A producer refuses executor names no live member runs (UnknownExecutor).
    This registers them for the producer itself, which heartbeats but claims
    nothing, so that the tasks it fills wait in Redis, unclaimed.
    """
    producer._store.register_executors(list(names) or [""])


def blocker(shared: SharedBucket, rec: Recorder, task_id: str = "blocker") -> None:
    """Fill a task that holds one local slot until rec.release is set."""
    rec.started.clear()
    assert shared.fill(IMMEDIATE, task_id, {"block": True}) is not None
    wait_for(rec.started.is_set, what="the blocker to start")


# -- packaging -------------------------------------------------------------------------


def test_import_wheelbucket_does_not_import_redis() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"  # as if the extra were not installed
        "import wheelbucket\n"
        "assert 'wheelbucket.redis' not in sys.modules\n"
        "try:\n"
        "    import wheelbucket.redis\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'wheelbucket[redis]'" in out.stdout


# -- arguments ---------------------------------------------------------------------------


def test_bad_arguments_are_refused_with_their_name(server: RedisServer) -> None:
    with pytest.raises(ValueError, match="braces"):
        SharedBucket("a{b}", server.url)
    with pytest.raises(TypeError, match="group"):
        SharedBucket("", server.url)
    with pytest.raises(ValueError, match="heartbeat"):
        SharedBucket("g", server.url, heartbeat=0)
    with pytest.raises(ValueError, match="dead_after"):
        SharedBucket("g", server.url, heartbeat=1.0, dead_after=0.5)
    with pytest.raises(TypeError, match="client"):
        SharedBucket("g", 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock"):
        SharedBucket("g", server.url, local={"clock": object()})
    with pytest.raises(TypeError, match="serializer"):
        SharedBucket("g", server.url, serializer=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_limit"):
        SharedBucket("g", server.url, group_limit=0)


def test_joining_an_unreachable_redis_raises_at_once() -> None:
    start = time.monotonic()
    with pytest.raises(RedisUnavailable, match="cannot join") as info:
        SharedBucket("g", "redis://127.0.0.1:1/0", executor=print, timeout=0.5)
    assert isinstance(info.value, BucketError)
    assert isinstance(info.value, ConnectionError)
    assert time.monotonic() - start < 5


def test_fill_checks_its_arguments_before_storing(make: Callable[..., SharedBucket]) -> None:
    shared = make(executor=Recorder())
    with pytest.raises(TypeError, match="task_id"):
        shared.fill(IMMEDIATE, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task_id"):
        shared.fill(IMMEDIATE, "")
    with pytest.raises(ValueError, match="life_span"):
        shared.fill(TIME_BOMB, "x", run_after=2, life_span=1)
    with pytest.raises(TypeError, match="task_type"):
        shared.fill("now", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown executor name"):
        shared.fill(IMMEDIATE, "x", executor="nope")
    with pytest.raises(TypeError, match="cannot travel"):
        shared.fill(IMMEDIATE, "x", executor=Recorder())
    assert shared.group_info().live == 0


# -- filling: local first, then the group --------------------------------------------------


def test_fill_runs_locally_when_there_is_room_and_leaves_the_group_after(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    shared = make(executor=rec)
    handle = shared.fill(IMMEDIATE, "a", {"n": 1})
    assert handle is not None
    assert handle.wait(10) is TaskState.FINISHED
    assert handle.result() == "a"
    assert rec.hooks("a") == ["execute", "finish"]
    assert rec.calls[0][2] == {"n": 1}
    stats = shared.stats()
    assert (stats.filled_local, stats.overflowed, stats.local.finished) == (1, 0, 1)
    wait_for(lambda: shared.group_info().live == 0, what="the release")
    assert ledger(r, group) == [("a", "finished", shared.member)]


def test_the_group_record_lives_exactly_as_long_as_the_task(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    shared = make(executor=rec)
    blocker(shared, rec)
    assert shared.group_info().live == 1
    rec.release.set()
    wait_for(lambda: shared.group_info().live == 0, what="the release")
    # The group's record is released before the ending hook runs: wait for it.
    wait_for(lambda: len(rec.hooks("blocker")) >= 2, what="the ending hook")
    assert rec.hooks("blocker") == ["execute", "finish"]


def test_a_full_bucket_overflows_and_another_process_runs_the_task(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = make(executor=rec_a, local={"max_bucket": 1})
    blocker(a, rec_a)
    assert a.fill(IMMEDIATE, "over", [1, "two"]) is None  # overflowed
    assert a.stats().overflowed == 1
    b = make(executor=rec_b)
    wait_for(lambda: rec_b.hooks("over") == ["execute", "finish"], what="b to run it")
    assert rec_b.calls[0][2] == [1, "two"]
    assert rec_a.hooks("over") == []
    assert b.stats().claimed == 1
    wait_for(lambda: ("over", "finished", b.member) in ledger(r, group), what="the ledger")
    rec_a.release.set()


def test_the_filler_claims_its_own_overflow_once_it_has_room(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    a = make(executor=rec, local={"max_bucket": 1})
    blocker(a, rec)
    assert a.fill(IMMEDIATE, "later", None) is None
    time.sleep(0.2)  # it must not run while there is no room (a negative check)
    assert rec.hooks("later") == []
    rec.release.set()
    wait_for(lambda: rec.hooks("later") == ["execute", "finish"], what="the claim")
    assert a.stats().claimed == 1


def test_group_limit_counts_every_live_task_of_the_group(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    a = make(executor=rec, local={"max_bucket": 1}, group_limit=2)
    b = make(executor=rec, producer_only=True, group_limit=2)
    blocker(a, rec)  # live here
    assert b.fill(TIME_BOMB, "q", run_after=30, life_span=60) is None  # waits in Redis
    with pytest.raises(BucketFull, match="group"):
        b.fill(IMMEDIATE, "third")
    with pytest.raises(BucketFull):
        a.fill(IMMEDIATE, "third")
    assert a.group_info().live == 2
    assert b.stats().rejected_full == 1
    b.drain("q")
    assert b.fill(IMMEDIATE, "third", executor=None) is None


def test_producer_only_never_runs_tasks(make: Callable[..., SharedBucket]) -> None:
    rec = Recorder()
    p = make(producer_only=True)
    # A name no live member runs is refused (tests/test_redis_errors.py has more).
    with pytest.raises(UnknownExecutor, match="no live member"):
        p.fill(IMMEDIATE, "x", 1)
    w = make(executor=rec)
    assert p.fill(IMMEDIATE, "x", 1) is None
    wait_for(lambda: rec.ids("finish") == ["x"], what="the worker")
    assert len(p) == 0
    m = make(executors={"mail": rec})
    assert p.fill(IMMEDIATE, "y", 2, executor="mail") is None
    wait_for(lambda: sorted(rec.ids("finish")) == ["x", "y"], what="the mail worker")
    assert w.stats().claimed + m.stats().claimed == 2


# -- ids ---------------------------------------------------------------------------------


def test_an_id_live_anywhere_in_the_group_is_refused(make: Callable[..., SharedBucket]) -> None:
    rec = Recorder()
    a = make(executor=rec, local={"max_bucket": 1})
    b = make(executor=Recorder(), producer_only=True)
    blocker(a, rec, "x")
    with pytest.raises(TaskExists, match="group"):
        b.fill(IMMEDIATE, "x")
    assert b.fill(TIME_BOMB, "queued", run_after=30, life_span=60) is None
    with pytest.raises(TaskExists):
        a.fill(IMMEDIATE, "queued")
    assert b.stats().rejected_duplicate == 1
    assert a.stats().rejected_duplicate == 1
    rec.release.set()
    wait_for(lambda: a.group_info().live == 1, what="x to leave the group")
    assert b.fill(IMMEDIATE, "x") is None  # free again


# -- draining ---------------------------------------------------------------------------


def test_drain_here_runs_no_hook_and_frees_the_id(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    a = make(executor=rec)
    handle = a.fill(TIME_BOMB, "t", run_after=30, life_span=60)
    assert handle is not None
    a.drain("t")
    assert handle.state is TaskState.DRAINED
    assert a.group_info().live == 0
    with pytest.raises(TaskNotFound):
        a.drain("t")
    assert rec.calls == []
    assert ledger(r, group) == [("t", "drained", a.member)]
    assert a.fill(TIME_BOMB, "t", run_after=30, life_span=60) is not None


def test_drain_reaches_a_task_waiting_in_redis(make: Callable[..., SharedBucket]) -> None:
    p = make(producer_only=True)
    other = make(producer_only=True)
    runs_elsewhere(p)
    assert p.fill(TIME_BOMB, "w", run_after=30, life_span=60) is None
    other.drain("w")
    info = p.group_info()
    assert (info.live, info.queued) == (0, 0)
    assert other.stats().drained_remote == 1
    with pytest.raises(TaskNotFound, match="group"):
        p.drain("w")


def test_drain_reaches_running_and_pending_tasks_of_another_process(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    holder = make(executor=rec, local={"max_bucket": 10, "workers": 1})
    other = make(producer_only=True)
    blocker(holder, rec, "run")  # running, holds the only worker
    assert holder.fill(IMMEDIATE, "pend") is not None  # pending behind it
    other.drain("pend")
    other.drain("run")
    wait_for(lambda: "run" in rec.ids("cancelled"), what="the running task's ctx to be cancelled")
    wait_for(lambda: len(holder) == 0, what="the holder to drop both")
    assert rec.hooks("pend") == []
    assert rec.hooks("run") == ["execute", "cancelled"]  # no ending hook
    assert holder.stats().revoked == 2
    assert other.fill(IMMEDIATE, "run") is None  # the id is free at once
    assert [e for e in ledger(r, group) if e[1] == "drained"] == [
        ("pend", "drained", other.member),
        ("run", "drained", other.member),
    ]


def test_async_task_of_another_process_is_really_cancelled(
    make: Callable[..., SharedBucket],
) -> None:
    cancelled = threading.Event()
    started = threading.Event()

    class Slow:
        async def on_execute(self, ctx: Any, task_id: str, data: Any) -> None:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise

    holder = make(executor=Slow())
    other = make(producer_only=True)
    assert holder.fill(IMMEDIATE, "aio") is not None
    wait_for(started.is_set, what="the coroutine to start")
    other.drain("aio")
    wait_for(cancelled.is_set, what="the coroutine to be cancelled")


# -- data --------------------------------------------------------------------------------


def test_data_the_serializer_refuses_is_refused_at_fill_and_nothing_is_stored(
    make: Callable[..., SharedBucket],
) -> None:
    a = make(executor=Recorder())
    with pytest.raises(TypeError, match="cannot be serialized"):
        a.fill(IMMEDIATE, "s", {1, 2})
    with pytest.raises(ValueError, match="cannot be serialized"):
        a.fill(IMMEDIATE, "n", float("nan"))
    assert a.group_info().live == 0
    assert len(a) == 0
    assert a.fill(IMMEDIATE, "s", [1, 2]) is not None  # the id was never taken


def test_a_pluggable_serializer_carries_data_across(make: Callable[..., SharedBucket]) -> None:
    class Pickle:
        def dumps(self, data: Any) -> bytes:
            return pickle.dumps(data)

        def loads(self, raw: bytes | str) -> Any:
            assert isinstance(raw, bytes)
            return pickle.loads(raw)

    class Bad:
        def dumps(self, data: Any) -> Any:
            return 42

        def loads(self, raw: bytes | str) -> Any:
            return raw

    rec = Recorder()
    p = make(producer_only=True, serializer=Pickle())
    make(executor=rec, serializer=Pickle())
    assert p.fill(IMMEDIATE, "set", {1, 2}) is None
    wait_for(lambda: rec.ids("finish") == ["set"], what="the worker")
    assert rec.calls[0][2] == {1, 2}
    bad = make(producer_only=True, serializer=Bad())
    with pytest.raises(TypeError, match="not bytes or str"):
        bad.fill(IMMEDIATE, "b")
    assert isinstance(JSONSerializer().dumps((1,)), str)


def test_undecodable_data_makes_the_task_fail_where_it_is_claimed(
    make: Callable[..., SharedBucket],
) -> None:
    class Raw:
        def dumps(self, data: Any) -> str:
            return "not json"

        def loads(self, raw: bytes | str) -> Any:
            return raw

    rec = Recorder()
    p = make(producer_only=True, serializer=Raw())
    make(executor=rec)
    assert p.fill(IMMEDIATE, "garbled") is None
    wait_for(lambda: rec.hooks("garbled") == ["error"], what="the failure")
    error = rec.calls[0][2]
    assert isinstance(error, ValueError)
    assert "cannot be decoded" in str(error)


# -- executors ------------------------------------------------------------------------------


def test_named_executors_route_tasks_and_registered_objects_are_accepted(
    make: Callable[..., SharedBucket],
) -> None:
    default, mail = Recorder(), Recorder()
    a = make(executor=default, executors={"mail": mail})
    assert a.fill(IMMEDIATE, "m", 1, executor="mail") is not None
    assert a.fill(IMMEDIATE, "m2", 2, executor=mail) is not None
    assert a.fill(IMMEDIATE, "d", 3) is not None
    wait_for(lambda: len(mail.ids("finish")) == 2 and default.ids("finish") == ["d"])
    assert sorted(mail.ids("finish")) == ["m", "m2"]


# -- timing -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_after_counts_from_the_original_fill(make: Callable[..., SharedBucket]) -> None:
    starts: dict[str, float] = {}

    def work(ctx: Any, task_id: str, data: Any) -> None:
        starts[task_id] = time.monotonic()

    p = make(producer_only=True)
    runs_elsewhere(p)
    filled = time.monotonic()
    assert p.fill(TIME_BOMB, "bomb", run_after=0.8, life_span=30) is None
    time.sleep(0.4)  # the worker joins late: the delay still counts from the fill
    make(executor=work)
    wait_for(lambda: "bomb" in starts, what="the bomb")
    delay = starts["bomb"] - filled
    assert delay >= 0.8 - 0.005  # never early (tolerance: server vs local clock rate)
    assert delay < 0.8 + 1.0  # generous: a busy machine


@pytest.mark.slow
def test_a_task_claimed_after_its_life_span_ends_exhausted_on_the_claimer(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    p = make(producer_only=True)
    runs_elsewhere(p)
    assert p.fill(IMMEDIATE, "late", {"v": 1}, life_span=0.2) is None
    time.sleep(0.4)  # nobody has room until after its life span
    w = make(executor=rec)
    wait_for(lambda: rec.hooks("late") == ["exhausted"], what="the exhausted hook")
    assert rec.calls[0][2] == {"v": 1}  # the hook gets the data
    assert w.stats().exhausted_on_claim == 1
    assert w.stats().local.exhausted == 1
    wait_for(lambda: ledger(r, group) == [("late", "exhausted", w.member)], what="the ledger")


# -- endings ------------------------------------------------------------------------------------


def test_every_ending_kind_leaves_the_group_with_its_hook(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()

    def boom(ctx: Any, task_id: str, data: Any) -> None:
        raise RuntimeError("boom")

    a = make(executor=rec, executors={"boom": boom, "rec": rec})
    assert a.fill(IMMEDIATE, "ok") is not None
    failing = a.fill(IMMEDIATE, "bad", executor="boom")
    assert failing is not None
    assert failing.wait(10) is TaskState.FAILED
    short = a.fill(IMMEDIATE, "short", {"block": True}, life_span=0.1)
    assert short is not None
    assert short.wait(10) is TaskState.EXHAUSTED
    wait_for(lambda: "exhausted" in rec.hooks("short"), what="the exhausted hook")
    assert a.fill(TIME_BOMB, "saved", run_after=30, life_span=60) is not None
    assert a.rescue() == ["saved"]
    assert "panic" in rec.hooks("saved")
    wait_for(lambda: len(ledger(r, group)) == 4, what="four endings")
    endings = {i: e for i, e, _ in ledger(r, group)}
    assert endings == {"ok": "finished", "bad": "failed", "short": "exhausted", "saved": "rescued"}
    assert a.group_info().live == 0


def test_close_leaves_the_group_and_refuses_fills(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    a = make(executor=rec)
    b = make(producer_only=True)
    assert a.fill(TIME_BOMB, "pending", run_after=30, life_span=60) is not None
    assert len(b.group_info().members) == 2
    a.close(wait=False)
    assert a.closed
    with pytest.raises(BucketClosed):
        a.fill(IMMEDIATE, "x")
    info = b.group_info()
    assert info.members == (b.member,)
    # It never started: handed back to the group, not drained (test_redis_handback.py).
    assert (info.live, info.queued) == (1, 1)
    assert a.stats().handed_back == 1
    assert ledger(r, group) == []
    a.close()  # idempotent


@pytest.mark.parametrize(
    "kwargs", [{"timeout": "x"}, {"timeout": -1.0}, {"wait": 1}, {"rescue": None}]
)
def test_a_close_with_a_bad_argument_is_refused_and_changes_nothing(
    make: Callable[..., SharedBucket], kwargs: dict[str, Any]
) -> None:
    rec = Recorder()
    a = make(executor=rec)
    b = make(producer_only=True)
    assert a.fill(TIME_BOMB, "pending", run_after=30, life_span=60) is not None
    with pytest.raises((TypeError, ValueError)):
        a.close(**kwargs)
    assert not a.closed
    assert "pending" in a
    assert len(b.group_info().members) == 2
    assert b.group_info().live == 1
    a.close(wait=False)  # a good close still does its whole job
    assert a.closed
    assert b.group_info().members == (b.member,)


def test_an_existing_task_bucket_can_be_the_local_bucket(make: Callable[..., SharedBucket]) -> None:
    rec = Recorder()
    bucket = TaskBucket(max_bucket=3, workers=2)
    a = make(executor=rec, local=bucket)
    assert a.local is bucket
    handle = a.fill(IMMEDIATE, "x")
    assert handle is not None
    assert handle.wait(10) is TaskState.FINISHED
    a.close()
    assert bucket.closed


def test_a_refusal_of_the_local_bucket_is_raised_and_leaves_nothing_in_the_group(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    bucket = TaskBucket()
    a = make(executor=rec, local=bucket)
    assert bucket.fill(TIME_BOMB, "private", executor=rec, run_after=30, life_span=60)
    with pytest.raises(TaskExists):
        a.fill(IMMEDIATE, "private")  # held by the bucket itself, outside the group
    assert a.group_info().live == 0
    bucket.close(wait=False)  # closed under the shared bucket's feet
    with pytest.raises(BucketClosed):
        a.fill(IMMEDIATE, "late")
    assert a.group_info().live == 0


# -- Redis trouble ------------------------------------------------------------------------


@pytest.mark.slow
def test_redis_down_fill_raises_quickly_local_work_goes_on_and_recovers(
    make: Callable[..., SharedBucket], server: RedisServer, r: Any, group: str
) -> None:
    rec = Recorder()
    a = make(executor=rec, timeout=0.5)
    blocker(a, rec)
    server.stop()  # without persistence: it comes back empty
    start = time.monotonic()
    with pytest.raises(RedisUnavailable, match="cannot fill"):
        a.fill(IMMEDIATE, "x")
    with pytest.raises(RedisUnavailable, match="cannot drain"):
        a.drain("elsewhere")
    assert time.monotonic() - start < 3.0  # refused connections fail at once
    assert len(a) == 1  # nothing placed
    rec.release.set()  # a local task ends while Redis is down: its hook still runs
    wait_for(lambda: rec.hooks("blocker") == ["execute", "finish"], what="the local ending")
    wait_for(lambda: a.stats().unreleased == 1, what="the release to wait for Redis")
    assert not a.stats().connected
    server.start()
    wait_for(lambda: a.stats().connected and a.stats().unreleased == 0, what="the recovery")
    assert a.stats().redis_resets == 1  # it noticed that Redis lost the group
    assert a.stats().redis_errors >= 1
    handle = a.fill(IMMEDIATE, "after")
    assert handle is not None
    assert handle.wait(10) is TaskState.FINISHED


@pytest.mark.slow
def test_a_hung_redis_makes_fill_fail_within_the_timeout(
    make: Callable[..., SharedBucket], server: RedisServer
) -> None:
    a = make(executor=Recorder(), timeout=0.5)
    server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(RedisUnavailable):
            a.fill(IMMEDIATE, "x")
        elapsed = time.monotonic() - start
    finally:
        server.resume()
    assert 0.3 < elapsed < 3.0
    wait_for(lambda: a.stats().connected, what="the recovery")
    # The first attempt may or may not have reached Redis: refilling says which.
    try:
        handle = a.fill(IMMEDIATE, "x")
    except TaskExists:
        handle = None
    wait_for(lambda: a.group_info().live == 0, what="x to end either way")
    assert handle is None or handle.state is TaskState.FINISHED


@pytest.mark.slow
def test_a_redis_that_lost_its_data_gets_the_local_tasks_back(
    make: Callable[..., SharedBucket], server: RedisServer, r: Any, group: str
) -> None:
    rec = Recorder()
    a = make(executor=rec)
    blocker(a, rec, "kept")
    server.stop()  # no persistence: the group is gone
    server.start()
    wait_for(lambda: a.stats().redis_resets == 1, what="the reset to be noticed")
    wait_for(lambda: r.exists(f"wb:{{{group}}}:t:kept"), what="the task to be recorded again")
    b = make(producer_only=True)
    with pytest.raises(TaskExists):
        b.fill(IMMEDIATE, "kept")  # unique across the group again
    rec.release.set()
    wait_for(lambda: a.group_info().live == 0, what="the release")
    # The group's record is released before the ending hook runs: wait for it.
    wait_for(lambda: len(rec.hooks("kept")) >= 2, what="the ending hook")
    assert rec.hooks("kept") == ["execute", "finish"]


# -- many processes ---------------------------------------------------------------------------
#
# Workers are this file run as a script. Each runs a SharedBucket whose
# executor counts starts in Redis (HINCRBY, before any work) and keeps its
# ending hooks in memory; when the stop key appears it closes and writes
# what it saw to a JSON file.


class WorkerProcess:
    def __init__(self, server: RedisServer, group: str, out: Path, **cfg: Any) -> None:
        cfg = {"url": server.url, "group": group, "out": str(out), **cfg}
        self.out = out
        self.log = out.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE), "worker", json.dumps(cfg)],
                stdout=subprocess.PIPE,
                stderr=log,
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

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not stop: {self.log.read_text()[-3000:]}")
        assert self.proc.returncode == 0, self.log.read_text()[-3000:]
        data: dict[str, Any] = json.loads(self.out.read_text())
        return data

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def workers(
    server: RedisServer, group: str, tmp_path: Path
) -> Iterator[Callable[..., list[WorkerProcess]]]:
    started: list[WorkerProcess] = []

    def start(n: int, **cfg: Any) -> list[WorkerProcess]:
        batch = [
            WorkerProcess(server, group, tmp_path / f"w{len(started) + i}.json", **cfg)
            for i in range(n)
        ]
        started.extend(batch)
        for w in batch:
            w.wait_ready()
        return batch

    yield start
    for w in started:
        w.kill()


def stop_workers(r: Any, group: str, procs: list[WorkerProcess]) -> list[dict[str, Any]]:
    r.set(f"test:{{{group}}}:stop", "1")
    return [w.result() for w in procs]


def fill_all(p: SharedBucket, ids: list[str], data: Any, **kwargs: Any) -> int:
    """Fill every id, riding out Redis outages; returns how many fills had to be retried."""
    retried = 0
    for task_id in ids:
        while True:
            try:
                p.fill(IMMEDIATE, task_id, data, **kwargs)
            except RedisUnavailable:
                retried += 1
                time.sleep(0.02)
                continue
            except TaskExists:
                assert retried, f"{task_id} exists, but no fill of it was ever uncertain"
            break
    return retried


def check_exactly_once(entries: list[tuple[str, str, str]], ids: list[str]) -> Counter[str]:
    counts = Counter(task_id for task_id, _, _ in entries)
    twice = [task_id for task_id, n in counts.items() if n > 1]
    missing = set(ids) - set(counts)
    assert not twice, f"{len(twice)} tasks ended twice, e.g. {twice[:5]}"
    assert not missing, f"{len(missing)} tasks never ended, e.g. {sorted(missing)[:5]}"
    assert len(counts) == len(ids)
    return Counter(ending for _, ending, _ in entries)


@pytest.mark.timeout(150)
def test_three_workers_and_a_producer_run_10000_tasks_exactly_once(
    make: Callable[..., SharedBucket],
    workers: Callable[..., list[WorkerProcess]],
    r: Any,
    group: str,
) -> None:
    n = 10_000
    procs = workers(3, max_bucket=100, heartbeat=0.1, dead_after=5.0)
    p = make(producer_only=True, dead_after=5.0)
    ids = [f"job-{i}" for i in range(n)]
    fill_all(p, ids, {"work": 0})
    assert p.stats().overflowed == n
    wait_for(lambda: r.xlen(f"wb:{{{group}}}:ledger") >= n, timeout=120, what="10,000 endings")
    results = stop_workers(r, group, procs)

    endings = check_exactly_once(ledger(r, group), ids)
    assert endings == Counter(finished=n)
    hooks = [
        (task_id, ending, res["member"]) for res in results for ending, task_id in res["events"]
    ]
    assert check_exactly_once(hooks, ids) == Counter(finished=n)
    assert sorted(hooks) == sorted(ledger(r, group))  # each hook ran where the ledger says
    claimed = [res["stats"]["claimed"] for res in results]
    assert sum(claimed) == n
    assert all(c > 0 for c in claimed), claimed  # the work was shared
    for res in results:
        stats = res["stats"]
        local = stats["local"]
        assert local["filled"] == local["finished"] == stats["claimed"]
        assert stats["exhausted_on_claim"] == stats["revoked"] == stats["unreleased"] == 0
    starts = r.hgetall(f"test:{{{group}}}:starts")
    assert len(starts) == n
    assert set(starts.values()) == {b"1"}
    info = p.group_info()
    assert (info.live, info.queued, info.members) == (0, 0, (p.member,))


@pytest.mark.timeout(150)
def test_kill_9_of_a_worker_mid_run_loses_nothing_and_runs_nothing_twice(
    make: Callable[..., SharedBucket],
    workers: Callable[..., list[WorkerProcess]],
    r: Any,
    group: str,
) -> None:
    n = 2_000
    procs = workers(3, max_bucket=100, workers=4, heartbeat=0.1, dead_after=1.0)
    victim, survivors = procs[0], procs[1:]
    p = make(producer_only=True, dead_after=1.0)
    ids = [f"job-{i}" for i in range(n)]
    # A long life span: on a loaded machine none may expire in the queue, so
    # that every EXHAUSTED ending is one of the victim's started tasks.
    fill_all(p, ids, {"work": 0.02}, life_span=120)
    by_victim = f"wb:{{{group}}}:by:{victim.member}"
    wait_for(lambda: r.scard(by_victim) >= 50, timeout=60, what="the victim to hold tasks")
    victim.kill()  # SIGKILL, mid-run: it holds running and pending tasks
    held = r.scard(by_victim)  # what it held when it died (the reaping starts 1 s later)
    print(f"the victim held {held} tasks when it died")
    wait_for(lambda: r.xlen(f"wb:{{{group}}}:ledger") >= n, timeout=120, what="every ending")
    results = stop_workers(r, group, survivors)

    entries = ledger(r, group)
    endings = check_exactly_once(entries, ids)
    assert endings["finished"] + endings["exhausted"] == n
    assert {by for _, e, by in entries if e == "exhausted"} <= {s.member for s in survivors}
    # Of the tasks it held, those that had started (even one whose ending it
    # had not yet told Redis) end EXHAUSTED, marked so; the others run
    # elsewhere (test_redis_handback.py).
    # (It may hold more than max_bucket: endings whose release waits for a
    # Redis that timed out under load still count.)
    assert held >= 1
    assert endings["exhausted"] <= held
    marked = [f for _, f in r.xrange(f"wb:{{{group}}}:ledger") if f[b"end"] == b"exhausted"]
    assert all(f.get(b"started") == b"1" for f in marked)
    print(f"endings: {dict(endings)}")
    # None ran twice: every start is counted before any work.
    starts = r.hgetall(f"test:{{{group}}}:starts")
    assert set(starts.values()) == {b"1"}
    # The survivors' hooks match the ledger one for one, on_task_exhausted included.
    survivor_entries = sorted(e for e in entries if e[2] != victim.member)
    hooks = sorted(
        (task_id, ending, res["member"]) for res in results for ending, task_id in res["events"]
    )
    assert hooks == survivor_entries
    # Any live member may notice the death (the producer too); survivors end the tasks.
    reaped = sum(res["stats"]["reaped"] for res in results) + p.stats().reaped
    unstarted = sum(res["stats"]["reaped_unstarted"] for res in results)
    unstarted += p.stats().reaped_unstarted
    doomed = sum(res["stats"]["exhausted_on_claim"] for res in results)
    marked_here = sum(res["stats"]["exhausted_started"] for res in results)
    assert reaped == held == unstarted + endings["exhausted"]
    assert doomed == marked_here == endings["exhausted"]
    info = p.group_info()
    assert (info.live, info.queued, info.members) == (0, 0, (p.member,))


@pytest.mark.timeout(120)
def test_cross_process_drain_and_duplicate_refusal(
    make: Callable[..., SharedBucket],
    workers: Callable[..., list[WorkerProcess]],
    r: Any,
    group: str,
) -> None:
    (holder,) = workers(1, max_bucket=10, workers=1, heartbeat=0.1, hooks_to_redis=True)
    p = make(producer_only=True)
    starts = f"test:{{{group}}}:starts"
    assert p.fill(IMMEDIATE, "run", {"block": True}) is None
    wait_for(lambda: r.hexists(starts, "run"), what="the holder to run it")
    assert p.fill(IMMEDIATE, "pend", {"work": 0}) is None  # queued behind "run" in the holder
    wait_for(
        lambda: r.hget(f"wb:{{{group}}}:t:pend", "own") == holder.member.encode(),
        what="the holder to claim it",
    )
    with pytest.raises(TaskExists):
        p.fill(IMMEDIATE, "run")
    with pytest.raises(TaskExists):
        p.fill(IMMEDIATE, "pend")
    p.drain("pend")
    p.drain("run")
    wait_for(lambda: r.lrange(f"test:{{{group}}}:cancelled", 0, -1) == [b"run"])
    with pytest.raises(TaskNotFound):
        p.drain("run")
    assert p.fill(IMMEDIATE, "run", {"work": 0}) is None  # free in the group at once
    wait_for(lambda: r.hget(starts, "run") == b"2", what="the new 'run' to start")
    wait_for(lambda: p.group_info().live == 0, what="the group to empty")
    (res,) = stop_workers(r, group, [holder])
    assert res["events"] == [["finished", "run"]]  # the drained ones had no hook
    assert not r.hexists(starts, "pend")  # drained before it started
    assert res["stats"]["revoked"] == 2
    assert r.lrange(f"test:{{{group}}}:hooks", 0, -1) == [b"finished run"]


@pytest.mark.timeout(120)
def test_a_process_presumed_dead_but_alive_runs_no_hook_for_what_was_taken(
    make: Callable[..., SharedBucket],
    workers: Callable[..., list[WorkerProcess]],
    r: Any,
    group: str,
) -> None:
    (holder,) = workers(1, max_bucket=10, workers=1, heartbeat=0.1, hooks_to_redis=True)
    p = make(producer_only=True, dead_after=0.5)
    starts = f"test:{{{group}}}:starts"
    assert p.fill(IMMEDIATE, "run", {"block": True}) is None
    wait_for(lambda: r.hexists(starts, "run"), what="the holder to run it")
    for i in range(3):
        assert p.fill(IMMEDIATE, f"p{i}", {"work": 0}) is None
    wait_for(lambda: r.scard(f"wb:{{{group}}}:by:{holder.member}") == 4, what="the claims")
    os.kill(holder.proc.pid, signal.SIGSTOP)  # a long pause: no heartbeat
    try:
        rec = Recorder()
        survivor = make(executor=rec, dead_after=0.5)
        # The running one had started: EXHAUSTED; the pending ones run here.
        wait_for(
            lambda: rec.ids("exhausted") == ["run"] and len(rec.ids("finish")) == 3,
            what="the survivor to end them",
        )
    finally:
        os.kill(holder.proc.pid, signal.SIGCONT)
    # Back from the dead: it drops what was taken, cancels the running one, runs no hook.
    wait_for(lambda: r.lrange(f"test:{{{group}}}:cancelled", 0, -1) == [b"run"])
    # The reaper set its epoch key to expire; back, it keeps it (else, an hour
    # later, the key gone would look like a rollback).
    assert r.ttl(f"wb:{{{group}}}:ep:{holder.member}") == -1
    (res,) = stop_workers(r, group, [holder])
    assert res["events"] == []
    assert res["stats"]["revoked"] == 4
    assert r.lrange(f"test:{{{group}}}:hooks", 0, -1) == []
    assert r.hgetall(starts) == {b"run": b"1"}  # the pending ones never started there
    assert sorted(ledger(r, group)) == [
        *((t, "finished", survivor.member) for t in ["p0", "p1", "p2"]),
        ("run", "exhausted", survivor.member),
    ]


@pytest.mark.timeout(150)
def test_redis_stopped_and_restarted_mid_run(
    make: Callable[..., SharedBucket],
    workers: Callable[..., list[WorkerProcess]],
    r: Any,
    group: str,
    server: RedisServer,
) -> None:
    n = 1_500
    procs = workers(2, max_bucket=100, heartbeat=0.1, dead_after=2.0, timeout=0.5)
    p = make(producer_only=True, dead_after=2.0, timeout=0.5)
    ids = [f"job-{i}" for i in range(n)]
    outage_done = threading.Event()

    def outage() -> None:
        wait_for(lambda: p.stats().overflowed >= n // 3, timeout=60, what="a third filled")
        server.stop(save=True)  # Redis with persistence, restarted: nothing may be lost
        time.sleep(1.0)
        server.start()
        outage_done.set()

    thread = threading.Thread(target=outage)
    thread.start()
    retried = fill_all(p, ids, {"work": 0.002})
    thread.join(60)
    assert outage_done.is_set()
    assert retried > 0  # the producer saw the outage: clear errors, no hang
    print(f"{retried} fills were retried during the outage")
    wait_for(lambda: r.xlen(f"wb:{{{group}}}:ledger") >= n, timeout=90, what="every ending")
    results = stop_workers(r, group, procs)
    assert check_exactly_once(ledger(r, group), ids) == Counter(finished=n)
    hooks = [(t, e, res["member"]) for res in results for e, t in res["events"]]
    assert check_exactly_once(hooks, ids) == Counter(finished=n)
    assert set(r.hgetall(f"test:{{{group}}}:starts").values()) == {b"1"}
    for res in results:
        assert res["stats"]["redis_errors"] > 0
        assert res["stats"]["unreleased"] == 0
        assert res["stats"]["redis_resets"] == 0  # the data set survived
    assert p.group_info().live == 0


# -- the worker process -------------------------------------------------------------------


# One start, counted at most once whatever the retries: the start's own token
# goes in a set, and the count moves only when the token is new.
_COUNT_START = """
if redis.call('SADD', KEYS[2], ARGV[2]) == 1 then
    redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
end
"""


class _WorkerExecutor(Executor):
    def __init__(self, client: Any, cfg: dict[str, Any]) -> None:
        group = cfg["group"]
        self.r = client
        self.starts = f"test:{{{group}}}:starts"
        self.tokens = f"test:{{{group}}}:start-tokens"
        self._count_start = client.register_script(_COUNT_START)
        self.cancelled = f"test:{{{group}}}:cancelled"
        self.hooks = f"test:{{{group}}}:hooks" if cfg.get("hooks_to_redis") else None
        self.lock = threading.Lock()
        self.events: list[list[str]] = []

    def _redis(self, fn: Callable[[], object]) -> None:
        while True:  # ride out an outage: the test restarts Redis
            try:
                fn()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.05)

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> None:
        # Counted once per start even when Redis goes down mid-call: a plain
        # HINCRBY retried after a lost reply (applied, then the connection
        # dropped) counted one start twice.
        token = uuid.uuid4().hex
        self._redis(
            lambda: self._count_start(keys=[self.starts, self.tokens], args=[task_id, token])
        )
        data = data or {}
        if data.get("block"):
            if ctx.wait(60):
                self._redis(lambda: self.r.rpush(self.cancelled, task_id))
        elif data.get("work"):
            ctx.wait(data["work"])

    def _end(self, ending: str, task_id: str) -> None:
        with self.lock:
            self.events.append([ending, task_id])
        if self.hooks:
            self._redis(lambda: self.r.rpush(self.hooks, f"{ending} {task_id}"))

    def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
        self._end("finished", task_id)

    def on_execute_error(self, ctx: Any, task_id: str, data: Any, error: BaseException) -> None:
        self._end("failed", task_id)

    def on_task_exhausted(self, ctx: Any, task_id: str, data: Any) -> None:
        self._end("exhausted", task_id)

    def on_panic(self, ctx: Any, task_id: str, data: Any) -> None:
        self._end("rescued", task_id)


def _worker_main(cfg: dict[str, Any]) -> None:
    client = redis.Redis.from_url(cfg["url"], socket_timeout=2, socket_connect_timeout=2)
    executor = _WorkerExecutor(client, cfg)
    shared = SharedBucket(
        cfg["group"],
        cfg["url"],
        executor=executor,
        local={"max_bucket": cfg.get("max_bucket", 100), "workers": cfg.get("workers", 4)},
        heartbeat=cfg.get("heartbeat", 0.1),
        dead_after=cfg.get("dead_after", 2.0),
        timeout=cfg.get("timeout", 1.0),
        ledger=100_000,
    )
    print("READY", shared.member, flush=True)
    stop_key = f"test:{{{cfg['group']}}}:stop"
    while True:
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            if client.exists(stop_key):
                break
        time.sleep(0.05)
    shared.close(wait=True, timeout=30)
    with executor.lock:
        events = list(executor.events)
    result = {
        "member": shared.member,
        "events": events,
        "stats": dataclasses.asdict(shared.stats()),
    }
    Path(cfg["out"]).write_text(json.dumps(result))
    client.close()


if __name__ == "__main__":  # a worker process of the multi-process tests
    if sys.argv[1:2] == ["worker"]:
        import logging

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        _worker_main(json.loads(sys.argv[2]))

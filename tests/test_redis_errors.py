"""Redis failures of the shared bucket: errors, the pump's backoff, idempotent fills,
and executor names no member runs. Against a real redis-server.

* Every Redis failure reaches the caller as a `RedisFailure` (a `BucketError`):
  `RedisUnavailable` or `RedisServerError`, chained to the client's exception.
* The pump backs off on any error, logs once per streak of failures, and
  keeps heartbeating on time when Redis is out of memory.
* A fill retried with its fill token returns the first outcome.
* A producer refuses an executor name no live member runs.

Time is real (Redis is real): waits are polls with generous safety timeouts.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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
    Executor,
    TaskExists,
    TaskState,
    TaskType,
)
from wheelbucket.redis import (  # noqa: E402
    RedisFailure,
    RedisServerError,
    RedisUnavailable,
    SharedBucket,
    UnknownExecutor,
)

__all__ = ["group", "make", "r", "redis_server", "server"]  # fixtures, used by name

pytestmark = pytest.mark.redis

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB


# -- fixtures -----------------------------------------------------------------------


class Recorder(Executor):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def _note(self, hook: str, task_id: str) -> None:
        with self.lock:
            self.calls.append((hook, task_id))

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> Any:
        self._note("execute", task_id)
        return task_id

    def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("finish", task_id)

    def on_task_exhausted(self, ctx: Any, task_id: str, data: Any) -> None:
        self._note("exhausted", task_id)

    def hooks(self, task_id: str) -> list[str]:
        with self.lock:
            return [h for h, t in self.calls if t == task_id]


def ledger(r: Any, group: str) -> list[tuple[str, str]]:
    return [(f[b"id"].decode(), f[b"end"].decode()) for _, f in r.xrange(f"wb:{{{group}}}:ledger")]


def redis_now(r: Any) -> float:
    sec, usec = r.time()
    return float(sec) + usec / 1e6


@pytest.fixture
def full_redis(r: Any) -> Iterator[None]:
    """Redis out of memory: maxmemory 1 MB above what it uses now, noeviction, then filled up."""
    used = int(r.info("memory")["used_memory"])
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", str(used + 1024 * 1024))
    key = f"ballast-{uuid.uuid4().hex[:8]}"
    try:
        chunk = "x" * 16_384
        for _ in range(10_000):
            try:
                r.rpush(key, chunk)
            except redis.exceptions.OutOfMemoryError:
                break
        else:
            pytest.fail("Redis never ran out of memory")
        # Full; and kept full: freed buffers and ended tasks must not let a fill in.
        used = int(r.info("memory")["used_memory"])
        r.config_set("maxmemory", str(used - 512 * 1024))
        yield
    finally:
        r.delete(key)
        r.config_set("maxmemory", "0")


# -- errors reach the caller as BucketErrors ---------------------------------------------


def test_an_out_of_memory_fill_raises_a_redis_server_error_chained_to_the_client_error(
    make: Callable[..., SharedBucket], r: Any, group: str, full_redis: None
) -> None:
    p = make(producer_only=True)
    make(executor=Recorder(), local={"max_bucket": 1})  # runs the default executor
    with pytest.raises(RedisServerError, match="cannot fill 'big'") as info:
        p.fill(IMMEDIATE, "big", "y" * 1000)
    exc = info.value
    assert isinstance(exc, BucketError)
    assert isinstance(exc, RedisFailure)
    assert isinstance(exc.__cause__, redis.exceptions.OutOfMemoryError)
    assert exc.fill_token  # what a retry would pass
    assert r.exists(f"wb:{{{group}}}:t:big") == 0  # nothing half done
    assert p.stats().redis_errors >= 1
    assert p.stats().connected  # Redis is there; it refused


@pytest.mark.slow
def test_every_failure_of_an_unreachable_redis_is_a_redis_unavailable_chained(
    make: Callable[..., SharedBucket], server: RedisServer
) -> None:
    a = make(executor=Recorder(), timeout=0.5)
    server.stop()
    calls: list[Callable[[], object]] = [
        lambda: a.fill(IMMEDIATE, "x"),
        lambda: a.fill_many([(IMMEDIATE, "y")]),
        lambda: a.drain("z"),
        lambda: a.reset("z", life_span=3),
        a.group_info,
    ]
    for call in calls:
        with pytest.raises(RedisUnavailable) as info:
            call()
        assert isinstance(info.value, BucketError)
        assert isinstance(info.value, ConnectionError)
        assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    server.start()
    wait_for(lambda: a.stats().connected, what="the recovery")


# -- the pump backs off ----------------------------------------------------------------------


@pytest.mark.slow
def test_out_of_memory_neither_spins_the_pump_nor_delays_heartbeats(
    make: Callable[..., SharedBucket],
    r: Any,
    group: str,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    caplog.set_level(logging.DEBUG, logger="wheelbucket")
    rec = Recorder()
    heartbeat = 0.2
    w = make(executor=rec, heartbeat=heartbeat)
    p = make(producer_only=True, heartbeat=heartbeat)
    assert p.fill(IMMEDIATE, "before") is None
    wait_for(lambda: rec.hooks("before") == ["execute", "finish"], what="a task before")
    request.getfixturevalue("full_redis")
    errors_before = w.stats().redis_errors
    records_before = len(caplog.records)
    worst = 0.0
    end = time.monotonic() + 2.0
    refused = 0
    while time.monotonic() < end:
        # Heartbeats stay on time: the members' scores stay fresh on the Redis clock.
        now = redis_now(r)
        for member in (w.member, p.member):
            score = r.zscore(f"wb:{{{group}}}:m", member)
            assert score is not None
            worst = max(worst, now - score / 1e6)
        try:
            p.fill(IMMEDIATE, f"oom-{refused}", "z" * 2000)
        except RedisServerError:
            refused += 1
        time.sleep(0.05)
    assert refused >= 10  # every fill was refused for the whole window
    assert worst < heartbeat + 0.5, f"a heartbeat was {worst:.2f} s old"
    # No spin: the worker's pump made no failed round, and nothing was logged
    # beyond a line or two.
    assert w.stats().redis_errors - errors_before == 0
    assert len(caplog.records) - records_before <= 2
    assert w.stats().connected
    assert p.stats().connected


@pytest.mark.slow
def test_the_pump_backs_off_on_error_replies_and_logs_once_per_streak(
    make: Callable[..., SharedBucket],
    r: Any,
    server: RedisServer,
    group: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A member whose scripts Redis refuses (NOPERM): back off, one line, recover."""
    caplog.set_level(logging.DEBUG, logger="wheelbucket.redis")
    user = f"wb-{uuid.uuid4().hex[:6]}"
    r.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all")
    try:
        url = f"redis://{user}:pw@127.0.0.1:{server.port}/0"
        heartbeat = 0.4
        rec = Recorder()
        w = make(executor=rec, heartbeat=heartbeat, url=url)
        before = w.stats().redis_errors
        r.execute_command("ACL", "SETUSER", user, "-evalsha", "-eval")
        window = 3.0
        time.sleep(window)
        failures = w.stats().redis_errors - before
        # Backoff 50 ms doubling up to one heartbeat: about a dozen rounds in
        # 3 s, where a spinning pump would fail thousands of times.
        assert 3 <= failures <= 25, failures
        lines = [
            x
            for x in caplog.records
            if x.name == "wheelbucket.redis" and x.levelno >= logging.WARNING
        ]
        assert len(lines) == 1, [x.getMessage() for x in lines]
        assert "backs off" in lines[0].getMessage()
        assert lines[0].exc_info is None  # no traceback per spin
        with pytest.raises(RedisServerError) as info:
            w.fill(IMMEDIATE, "refused")
        assert isinstance(info.value.__cause__, redis.exceptions.NoPermissionError)
        r.execute_command("ACL", "SETUSER", user, "+@all")
        wait_for(
            lambda: any("works again" in x.getMessage() for x in caplog.records),
            what="the recovery line",
        )
        handle = w.fill(IMMEDIATE, "after")
        assert handle is not None
        assert handle.wait(10) is TaskState.FINISHED
    finally:
        r.execute_command("ACL", "DELUSER", user)


# -- idempotent fills ------------------------------------------------------------------------


def test_a_retry_with_the_same_fill_token_returns_the_first_outcome(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    a = make(executor=rec)
    first = a.fill(TIME_BOMB, "here", run_after=0.3, life_span=10, fill_token="tok-1")
    assert first is not None
    assert a.fill(TIME_BOMB, "here", run_after=0.3, life_span=10, fill_token="tok-1") == first
    with pytest.raises(TaskExists):
        a.fill(TIME_BOMB, "here", run_after=0.3, life_span=10, fill_token="tok-2")
    with pytest.raises(TaskExists):
        a.fill(TIME_BOMB, "here", run_after=0.3, life_span=10)  # a token of its own
    assert first.wait(10) is TaskState.FINISHED
    wait_for(lambda: ledger(r, group) == [("here", "finished")], what="one ending")
    assert rec.hooks("here") == ["execute", "finish"]
    assert a.stats().rejected_duplicate == 2


def test_a_fill_applied_but_unanswered_runs_once_when_retried_with_its_token(
    make: Callable[..., SharedBucket], r: Any, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timeout case, made deterministic: FILL is applied, then the reply is lost."""
    rec = Recorder()
    a = make(executor=rec)
    store = a._store
    real_fill = store.fill

    def applied_then_lost(*args: Any, **kwargs: Any) -> Any:
        real_fill(*args, **kwargs)
        raise RedisUnavailable("group: cannot fill: Redis unreachable (Timeout reading)")

    monkeypatch.setattr(store, "fill", applied_then_lost)
    with pytest.raises(RedisUnavailable) as info:
        a.fill(IMMEDIATE, "lost", {"v": 1})
    token = info.value.fill_token
    assert token
    monkeypatch.setattr(store, "fill", real_fill)
    # The retry finds its own record: no TaskExists, no second task.
    outcome = a.fill(IMMEDIATE, "lost", {"v": 1}, fill_token=token)
    assert outcome is None or outcome.id == "lost"
    wait_for(lambda: ledger(r, group) == [("lost", "finished")], what="exactly one ending")
    time.sleep(0.3)  # a second run would show by now
    assert rec.hooks("lost") == ["execute", "finish"]
    assert ledger(r, group) == [("lost", "finished")]


def test_a_retried_overflow_is_not_queued_twice(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    make(executor=rec)
    p = make(producer_only=True)
    assert p.fill(IMMEDIATE, "o", fill_token="t-o") is None
    assert p.fill(IMMEDIATE, "o", fill_token="t-o") is None
    wait_for(lambda: ledger(r, group) == [("o", "finished")], what="one ending")
    # The ledger line is written by the release, just before the hook runs.
    wait_for(lambda: rec.hooks("o") == ["execute", "finish"], what="its hooks")
    assert ledger(r, group) == [("o", "finished")]


def test_bad_fill_tokens_are_refused_before_anything_is_stored(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    a = make(executor=Recorder())
    for bad, error in (
        (5, TypeError),
        ("", ValueError),
        ("a b", ValueError),
        ("x" * 200, ValueError),
    ):
        with pytest.raises(error, match="fill_token"):
            a.fill(IMMEDIATE, "t", fill_token=bad)
    assert r.exists(f"wb:{{{group}}}:t:t") == 0


# -- executor names no member runs ---------------------------------------------------------------


def test_a_producer_refuses_an_executor_name_no_live_member_runs(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    p = make(producer_only=True, heartbeat=0.1)
    with pytest.raises(UnknownExecutor, match="no live member") as info:
        p.fill(IMMEDIATE, "m1", executor="mail")
    assert isinstance(info.value, BucketError)
    assert isinstance(info.value, ValueError)
    assert r.exists(f"wb:{{{group}}}:t:m1") == 0
    assert p.group_info().live == 0
    # A member that runs "mail" joins: the very next fill sees it (a miss looks again).
    rec = Recorder()
    w = make(executors={"mail": rec})
    assert p.fill(IMMEDIATE, "m1", executor="mail") is None
    wait_for(lambda: rec.hooks("m1") == ["execute", "finish"], what="the mail task")
    with pytest.raises(UnknownExecutor):
        p.fill(IMMEDIATE, "d1")  # nobody runs the default executor
    # The member leaves: once the cached names are older than a heartbeat, refused again.
    w.close()
    time.sleep(0.25)
    with pytest.raises(UnknownExecutor):
        p.fill(IMMEDIATE, "m2", executor="mail")
    outcomes = p.fill_many([(IMMEDIATE, "m3", None, "mail")])
    assert isinstance(outcomes[0], UnknownExecutor)
    assert p.group_info().live == 0


def test_a_dead_members_executor_names_do_not_count(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    p = make(producer_only=True, heartbeat=0.1, dead_after=0.5)
    # As if a member that ran "mail" had died: its entry stays, its heartbeat is old.
    r.zadd(f"wb:{{{group}}}:m", {"ghost": (redis_now(r) - 60) * 1e6})
    r.hset(f"wb:{{{group}}}:exn", "ghost", "mail")
    with pytest.raises(UnknownExecutor):
        p.fill(IMMEDIATE, "g", executor="mail")

"""`SharedBucket.fill_many`: many fills in one round trip, an outcome per item, in order.

Against a real redis-server. Items are tuples ``(task_type, task_id[, data[,
executor]])`` or mappings of fill()'s argument names; outcomes are the local
handle, None (it went to the group), or the exception fill() would have raised.
"""

from __future__ import annotations

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
    BucketClosed,
    BucketFull,
    Executor,
    TaskExists,
    TaskHandle,
    TaskState,
    TaskType,
)
from wheelbucket.redis import RedisUnavailable, SharedBucket, UnknownExecutor  # noqa: E402

__all__ = ["group", "make", "r", "redis_server", "server"]  # fixtures, used by name

pytestmark = pytest.mark.redis

IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB


class Recorder(Executor):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> Any:
        self.gate.wait(10)
        with self.lock:
            self.calls.append(("execute", task_id, data))
        return task_id

    def executed(self) -> list[str]:
        with self.lock:
            return [t for h, t, _ in self.calls if h == "execute"]


def ledger_ids(r: Any, group: str) -> list[str]:
    return [f[b"id"].decode() for _, f in r.xrange(f"wb:{{{group}}}:ledger")]


# What a new connection sends before its first command (redis-py's handshake).
_HANDSHAKE = (b"HELLO", b"CLIENT", b"AUTH", b"SELECT")


class RoundTrips:
    """Counts the requests sent to Redis from the thread that set `thread`.

    Not the handshake of a new connection: the pool opens one for this
    thread when the pump and the listener hold the others at that moment.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.thread: int | None = None
        self.count = 0
        send = redis.connection.AbstractConnection.send_packed_command

        def counting(conn: Any, command: Any, check_health: bool = True) -> None:
            if threading.get_ident() == self.thread:
                head = command if isinstance(command, bytes) else b"".join(command[:2])
                if head.split(b"\r\n", 3)[2].upper() not in _HANDSHAKE:
                    self.count += 1  # one request: a command, or a whole pipeline
            send(conn, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)


# -- outcomes ------------------------------------------------------------------------------


def test_outcomes_come_in_order_handles_while_there_is_room_then_none(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    rec.gate.clear()  # nothing ends before all are placed
    a = make(executor=rec, local={"max_bucket": 3})
    outcomes = a.fill_many([(IMMEDIATE, f"t{i}", {"i": i}) for i in range(5)])
    assert [isinstance(o, TaskHandle) for o in outcomes] == [True, True, True, False, False]
    assert outcomes[3] is None
    assert outcomes[4] is None
    assert [o.id for o in outcomes[:3] if isinstance(o, TaskHandle)] == ["t0", "t1", "t2"]
    assert a.stats().filled_local == 3
    assert a.stats().overflowed == 2
    rec.gate.set()
    wait_for(lambda: sorted(ledger_ids(r, group)) == [f"t{i}" for i in range(5)], what="all 5")
    assert sorted(rec.executed()) == [f"t{i}" for i in range(5)]  # each once


def test_each_refused_item_gets_its_own_exception_and_the_others_go_in(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    rec.gate.clear()
    a = make(executor=rec, group_limit=4)
    assert a.fill(IMMEDIATE, "live") is not None
    outcomes = a.fill_many(
        [
            (IMMEDIATE, "a"),
            (IMMEDIATE, "live"),  # live in the group
            (IMMEDIATE, ""),  # a bad id
            {"task_type": TIME_BOMB, "task_id": "b", "run_after": 5, "life_span": 1},
            (IMMEDIATE, "a"),  # the same id earlier in this batch
            (IMMEDIATE, "nan", float("nan")),  # data JSON refuses
            {"task_type": IMMEDIATE, "task_id": "c", "bogus": 1},  # an unknown key
            "not an item",
            (IMMEDIATE, "d", None, "nobody"),  # an executor name this member has not
            {"task_type": IMMEDIATE, "task_id": "e", "data": [1], "life_span": 30},
            (IMMEDIATE, "f"),  # over the group limit: live, a, e, and then?
            (IMMEDIATE, "g"),
        ]
    )
    assert isinstance(outcomes[0], TaskHandle)
    assert isinstance(outcomes[1], TaskExists)
    assert isinstance(outcomes[2], ValueError)
    assert isinstance(outcomes[3], ValueError)
    assert "life_span" in str(outcomes[3])
    assert isinstance(outcomes[4], TaskExists)
    assert isinstance(outcomes[5], ValueError)
    assert isinstance(outcomes[6], TypeError)
    assert isinstance(outcomes[7], TypeError)
    assert isinstance(outcomes[8], ValueError)
    assert isinstance(outcomes[9], TaskHandle)
    assert isinstance(outcomes[10], TaskHandle)  # the 4th live task
    assert isinstance(outcomes[11], BucketFull)
    live = {"live", "a", "e", "f"}
    assert {k.decode().rsplit(":", 1)[1] for k in r.keys(f"wb:{{{group}}}:t:*")} == live
    assert a.group_info().live == 4
    rec.gate.set()
    wait_for(lambda: sorted(ledger_ids(r, group)) == sorted(live), what="the endings")


def test_a_batch_is_one_round_trip(
    make: Callable[..., SharedBucket], r: Any, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder()
    make(executor=rec, local={"max_bucket": 2000})  # runs them
    p = make(producer_only=True)
    p.fill(IMMEDIATE, "warm-up")  # the executor names are read and cached here
    trips = RoundTrips(monkeypatch)
    n = 1234
    trips.thread = threading.get_ident()
    outcomes = p.fill_many([(IMMEDIATE, f"m{i}", i) for i in range(n)])
    trips.thread = None
    assert outcomes == [None] * n
    assert trips.count == 1
    assert p.stats().overflowed == n + 1
    wait_for(lambda: len(ledger_ids(r, group)) == n + 1, what="all tasks to end")
    assert len(rec.executed()) == n + 1
    assert len(set(rec.executed())) == n + 1


def test_a_batch_beyond_one_script_call_is_atomic_per_chunk_and_complete(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    from wheelbucket.redis.store import FILL_CHUNK

    p = make(producer_only=True)
    p._store.register_executors([""])  # as if a worker ran it: the tasks wait in Redis
    n = FILL_CHUNK * 2 + 7
    items: list[Any] = [(IMMEDIATE, f"c{i}") for i in range(n)]
    items[FILL_CHUNK + 3] = (IMMEDIATE, "c0")  # a duplicate in the second chunk
    out = p.fill_many(items)
    assert isinstance(out[FILL_CHUNK + 3], TaskExists)
    assert sum(o is None for o in out) == n - 1
    assert p.group_info().queued == n - 1


def test_mapping_items_take_every_fill_argument(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    starts: dict[str, float] = {}

    def work(ctx: Any, task_id: str, data: Any) -> Any:
        starts[task_id] = time.monotonic()
        return data

    a = make(executors={"w": work})
    filled = time.monotonic()
    out = a.fill_many(
        [
            {
                "task_type": TIME_BOMB,
                "task_id": "later",
                "data": {"x": 1},
                "executor": "w",
                "run_after": 0.3,
                "life_span": 5,
                "fill_token": "tok-later",
            },
            (IMMEDIATE, "now", 2, "w"),
        ]
    )
    handles = [o for o in out if isinstance(o, TaskHandle)]
    assert len(handles) == 2
    assert handles[1].result(10) == 2
    assert handles[0].result(10) == {"x": 1}
    assert starts["later"] - filled >= 0.3 - 0.005
    assert r.hget(f"wb:{{{group}}}:t:later", "tok") is None  # gone once ended


def test_a_retried_batch_with_the_same_tokens_returns_the_first_outcomes(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    rec = Recorder()
    rec.gate.clear()
    a = make(executor=rec, local={"max_bucket": 1})
    items = [
        {"task_type": IMMEDIATE, "task_id": f"k{i}", "fill_token": f"tok-{i}"} for i in range(3)
    ]
    first = a.fill_many(items)
    assert isinstance(first[0], TaskHandle)
    assert first[1:] == [None, None]
    again = a.fill_many(items)
    assert again[0] == first[0]
    assert again[1:] == [None, None]
    other = a.fill_many([{"task_type": IMMEDIATE, "task_id": "k1", "fill_token": "else"}])
    assert isinstance(other[0], TaskExists)
    rec.gate.set()
    wait_for(lambda: sorted(ledger_ids(r, group)) == ["k0", "k1", "k2"], what="3 endings")
    time.sleep(0.2)
    assert sorted(rec.executed()) == ["k0", "k1", "k2"]


def test_a_producer_refuses_unknown_executor_names_per_item(
    make: Callable[..., SharedBucket],
) -> None:
    rec = Recorder()
    make(executors={"mail": rec})
    p = make(producer_only=True)
    out = p.fill_many([(IMMEDIATE, "x", None, "mail"), (IMMEDIATE, "y", None, "sms")])
    assert out[0] is None
    assert isinstance(out[1], UnknownExecutor)
    wait_for(lambda: rec.executed() == ["x"], what="the mail task")
    # Its release follows its on_execute (within LINGER: it has no ending hook).
    wait_for(lambda: p.group_info().live == 0, what="the mail task to leave the group")


def test_a_closed_bucket_refuses_the_batch_and_an_unreachable_redis_fails_it_whole(
    make: Callable[..., SharedBucket], server: RedisServer
) -> None:
    a = make(executor=Recorder(), timeout=0.5)
    assert a.fill_many([]) == []
    server.stop()
    with pytest.raises(RedisUnavailable) as info:
        a.fill_many([(IMMEDIATE, "u1"), (IMMEDIATE, ""), (IMMEDIATE, "u2")])
    tokens = info.value.fill_tokens
    assert tokens is not None
    assert len(tokens) == 3
    assert tokens[1] is None  # refused before Redis
    assert tokens[0]
    assert tokens[2]
    assert len(a) == 0
    server.start()
    wait_for(lambda: a.stats().connected, what="the recovery")
    a.close()
    with pytest.raises(BucketClosed):
        a.fill_many([(IMMEDIATE, "z")])


def test_handles_of_a_batch_end_like_handles_of_fill(make: Callable[..., SharedBucket]) -> None:
    a = make(executor=lambda ctx, task_id, data: data * 2)
    out = a.fill_many([(IMMEDIATE, f"h{i}", i) for i in range(10)])
    assert all(isinstance(h, TaskHandle) for h in out)
    for i, h in enumerate(out):
        assert isinstance(h, TaskHandle)
        assert h.wait(10) is TaskState.FINISHED
        assert h.result() == 2 * i

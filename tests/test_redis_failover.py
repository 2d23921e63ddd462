"""Failover and rollback: Redis loses writes, and the group notices and puts itself right.

- A restart from an old snapshot (SAVE, more work, SIGKILL, start again from
  that snapshot) emulates a lagging replica's promotion on one server: every
  member notices (its epoch is behind its answered calls), reconciles, and
  no task runs twice without the user being told.
- The incarnation gate (wheelbucket/redis/gate.py): a member that made no
  call across the snapshot does not claim the ghosts of tasks another member
  ran after it, before that member reconciled; and a member that never
  confirms holds the gate closed for `dead_after` at most.
- A real primary + replica + Sentinel (tests/redis_sentinel.py): members
  reach the primary through a ``redis+sentinel://`` URL and follow a
  failover; with ``min_replicas=1`` no acknowledged fill is lost, and
  without it the fills a lagging replica missed are lost but reported.

The figures printed here (``-s``) are the ones docs/shared.md, Failures, gives.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_sentinel import SentinelSet
from redis_server import RedisServer, find_redis_server

redis = pytest.importorskip("redis")

from wheelbucket import TaskType  # noqa: E402
from wheelbucket.redis import RedisUnavailable, RollbackReport, SharedBucket  # noqa: E402

pytestmark = pytest.mark.redis

IMMEDIATE = TaskType.IMMEDIATE


@pytest.fixture(scope="module")
def binary() -> str:
    found = find_redis_server()
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; under CI the failover tests must run")
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    return found


@pytest.fixture
def group() -> str:
    return f"f-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def members() -> Iterator[list[SharedBucket]]:
    made: list[SharedBucket] = []
    yield made
    for shared in made:
        shared.close(wait=False)


def wait_for(
    predicate: Callable[[], object], timeout: float = 30.0, what: str | Callable[[], str] = ""
) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            shown = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout} s waiting for {shown or predicate}")
        time.sleep(0.01)


class Runs:
    """Counts every on_execute per id (a task that runs twice shows 2)."""

    def __init__(self, work: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.count: Counter[str] = Counter()
        # When each task first ran (monotonic).
        self.at: dict[str, float] = {}
        self.work = work
        # Cleared: every task waits in on_execute until it is set (or cancelled).
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, ctx: Any, task_id: str, data: Any) -> None:
        with self.lock:
            self.count[task_id] += 1
            self.at.setdefault(task_id, time.monotonic())
        if self.work:
            ctx.wait(self.work)
        while not self.gate.is_set() and not ctx.cancelled:
            ctx.wait(0.01)

    def ran(self) -> int:
        with self.lock:
            return len(self.count)

    def twice(self) -> set[str]:
        with self.lock:
            return {t for t, n in self.count.items() if n > 1}


def live(shared: SharedBucket) -> int:
    try:
        return shared.group_info().live
    except RedisUnavailable:
        return -1


@pytest.fixture
def hold(
    members: list[SharedBucket], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[SharedBucket], Hold]]:
    """`hold(shared)`: a `Hold` on its pump; every pump held goes on before the members close."""
    made: list[Hold] = []

    def make(shared: SharedBucket) -> Hold:
        made.append(Hold(shared, monkeypatch))
        return made[-1]

    yield make
    for h in made:
        h.resume()


class Hold:
    """Holds a member's pump before its next heartbeat, claim or reap: it makes no call.

    Its workers and its listener go on (an idle member's make no script call).
    """

    def __init__(self, shared: SharedBucket, monkeypatch: pytest.MonkeyPatch) -> None:
        self._go = threading.Event()
        self._go.set()
        self._held = threading.Event()
        store = shared._store
        for name in ("heartbeat", "claim", "reap"):
            monkeypatch.setattr(store, name, self._gated(getattr(store, name)))

    def _gated(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def gated(*args: Any, **kwargs: Any) -> Any:
            while not self._go.is_set():
                self._held.set()
                self._go.wait(0.05)
            return call(*args, **kwargs)

        return gated

    def pause(self) -> None:
        """Stop the pump at its next call, and wait until it got there."""
        self._held.clear()
        self._go.clear()
        # Set only by the pump thread, waiting here: no call of its own is in flight.
        wait_for(self._held.is_set, timeout=5, what="the pump to stop")

    def resume(self) -> None:
        self._go.set()


# -- a rollback on one server ---------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("n_workers", [1, 3])
def test_a_restart_from_an_old_snapshot_is_noticed_and_nothing_runs_twice_untold(
    binary: str,
    group: str,
    members: list[SharedBucket],
    caplog: pytest.LogCaptureFixture,
    n_workers: int,
) -> None:
    caplog.set_level(logging.ERROR, logger="wheelbucket.redis")
    server = RedisServer(port=_free_port(), binary=binary)
    server.start()
    try:
        runs = Runs(work=0.005)
        reports: list[RollbackReport] = []
        common: dict[str, Any] = {
            "heartbeat": 0.1,
            "dead_after": 1.0,
            "timeout": 0.5,
            "on_rollback": reports.append,
        }
        workers = [
            SharedBucket(
                group,
                server.url,
                executor=runs,
                local={"max_bucket": 20, "workers": 4, "life_span": 120},
                **common,
            )
            for _ in range(n_workers)
        ]
        members.extend(workers)
        w = workers[0]
        p = SharedBucket(group, server.url, producer_only=True, local={"life_span": 120}, **common)
        members.append(p)
        n = 600
        ids = [f"t{i}" for i in range(n)]
        for task_id in ids:
            assert p.fill(IMMEDIATE, task_id, None) is None
        wait_for(lambda: runs.ran() >= 100, what="100 tasks to run")
        assert server._command("SAVE").startswith(b"+OK")  # the snapshot
        saved = time.monotonic()
        at_snapshot = runs.ran()
        more = min(at_snapshot + 150, n - 30)
        # More work, and a few heartbeats of every member, after the snapshot.
        wait_for(
            lambda: runs.ran() >= more and time.monotonic() > saved + 0.3,
            what="more work after the snapshot",
        )
        server.kill()  # SIGKILL: what happened after the SAVE is lost
        at_kill = runs.ran()
        claimed = sum(x.stats().claimed for x in workers)
        server.start()  # from the snapshot
        restarted = time.monotonic()
        first_claim: list[float] = []  # how long nobody claimed (the gate)

        def claims_seen() -> bool:  # notes the first claim; always True
            if not first_claim and sum(x.stats().claimed for x in workers) > claimed:
                first_claim.append(time.monotonic() - restarted)
            return True

        wait_for(
            lambda: claims_seen() and all(x.stats().redis_rollbacks >= 1 for x in workers),
            what="the workers to notice",
        )
        wait_for(
            lambda: claims_seen() and runs.ran() == n and live(p) == 0,
            timeout=60,
            what=lambda: (
                f"every task to end: {runs.ran()} of {n} ran, {p.group_info()}, "
                f"{w.stats()}, {reports}"
            ),
        )
        done = time.monotonic() - restarted
    finally:
        server.close()

    told = set().union(*(r.may_run_twice for r in reports))
    twice = runs.twice()
    ended_again = sum(r.ended_again for r in reports)
    print(
        f"\n{n_workers} workers: snapshot after {at_snapshot} runs, killed after {at_kill}; "
        "rollbacks noticed: "
        f"{len(reports)} ({[r.member.rsplit('/', 1)[-1] for r in reports]}); lost calls "
        f"{[r.lost_calls for r in reports]}; ghosts of ended tasks deleted again: "
        f"{ended_again}; held tasks taken back: {sum(r.taken_back for r in reports)}; "
        f"ran twice: {len(twice)}, of which told: {len(twice & told)}; first claim "
        f"{first_claim[0] if first_claim else -1:.2f} s after the restart; all done after "
        f"{done:.2f} s"
    )
    # None may be untold. The window the epoch alone left open (a member that
    # lost no calls of its own claims a ghost before the member that ran it
    # reconciles: once in CI, 1 of 600) is closed by the incarnation gate; a
    # task that ended while its member reconciled is no longer requeued by
    # the orphan scan (seen once here with the gate alone: 1 of 600).
    untold = twice - told
    assert untold == set(), f"{len(untold)} tasks ran twice untold: {sorted(untold)[:5]}"
    assert runs.ran() == n  # every fill was in the snapshot: none lost
    assert ended_again >= 1  # without it, those would have run again
    assert sum(x.stats().may_run_twice for x in workers) == sum(
        len(r.may_run_twice) for r in reports
    )
    assert any("Redis lost" in r.getMessage() for r in caplog.records)


def _raw(server: RedisServer) -> Any:
    return redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)


def _gate(r: Any, group: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(f"wb:{{{group}}}:run").items()}


@pytest.mark.timeout(60)
def test_a_member_idle_across_the_snapshot_claims_no_ghost_before_their_runner_reconciled(
    binary: str,
    group: str,
    members: list[SharedBucket],
    hold: Callable[[SharedBucket], Hold],
) -> None:
    """The window the epoch alone left open (docs/shared.md, Failures), step by step.

    A runs tasks after the snapshot; B makes no call from before the
    snapshot until Redis is back from it, so its epoch is not behind. Then B
    goes on while A's pump is held: the ghosts wait in the queue, and B takes
    none of them until A has reconciled (which deletes them).
    """
    server = RedisServer(port=_free_port(), binary=binary)
    server.start()
    r = _raw(server)
    try:
        runs = Runs()
        reports: list[RollbackReport] = []
        common: dict[str, Any] = {"heartbeat": 0.1, "dead_after": 30.0, "timeout": 0.5}
        local = {"max_bucket": 100, "life_span": 120}
        a = SharedBucket(
            group, server.url, executor=runs, local=local, on_rollback=reports.append, **common
        )
        b = SharedBucket(group, server.url, executor=runs, local=local, **common)
        p = SharedBucket(group, server.url, producer_only=True, local={"life_span": 120}, **common)
        members.extend([a, b, p])
        hold_a, hold_b = hold(a), hold(b)
        hold_a.pause()
        hold_b.pause()
        n = 40
        ids = [f"g{i}" for i in range(n)]
        for task_id in ids:
            assert p.fill(IMMEDIATE, task_id, None) is None
        queue = f"wb:{{{group}}}:q:"
        assert r.zcard(queue) == n
        assert server._command("SAVE").startswith(b"+OK")  # the snapshot: n queued
        hold_a.resume()  # A runs them all after the snapshot
        wait_for(lambda: runs.ran() == n and live(p) == 0, what="A to run every task")
        assert a.stats().claimed == n
        hold_a.pause()
        server.kill()
        server.start()  # from the snapshot: the n tasks are queued again (ghosts)
        assert r.zcard(queue) == n
        hold_b.resume()
        # B heartbeats (and confirms the new server) and claims, again and
        # again: the gate is closed, as A has not confirmed.
        wait_for(lambda: _gate(r, group).get(f"ok:{b.member}") == "1", what="B to confirm")
        end = time.monotonic() + 1.0  # 5 gate holds, 10 heartbeats of B
        while time.monotonic() < end:
            assert b.stats().claimed == 0
            time.sleep(0.02)
        assert r.zcard(queue) == n  # still there to be claimed: only the gate kept them
        assert _gate(r, group)["open"] == "0"
        # Nor is A reaped while the gate is closed, however old its heartbeat.
        assert b._store.reap(1) == (0, [], 0)
        assert a.member in p.group_info().members
        hold_a.resume()  # A reconciles: the ghosts are deleted, then it confirms
        wait_for(lambda: a.stats().redis_rollbacks >= 1, what="A to reconcile")
        wait_for(lambda: r.zcard(queue) == 0 and live(p) == 0, what="the ghosts to go")
        # The gate opens: a new task runs.
        assert p.fill(IMMEDIATE, "after", None) is None
        wait_for(lambda: runs.ran() == n + 1, what="a task filled after the gate opened")
    finally:
        r.close()
        server.close()
    print(
        f"\nidle member: claimed {b.stats().claimed}; A deleted "
        f"{sum(x.ended_again for x in reports)} ghosts of {n}; ran twice: {len(runs.twice())}"
    )
    assert runs.twice() == set()
    assert sum(x.ended_again for x in reports) == n
    assert sum(x.may_run_twice for x in (a.stats(), b.stats())) == 0


@pytest.mark.timeout(60)
def test_a_member_that_joined_after_the_snapshot_is_waited_for_within_the_gates_hold(
    binary: str,
    group: str,
    members: list[SharedBucket],
    hold: Callable[[SharedBucket], Hold],
) -> None:
    """A is not in the registry Redis comes back with: the gate cannot name it.

    It is held for 2 heartbeats after the new server is first seen (B's
    heartbeat here is 0.5 s: 1 s): A, back within that, is in the registry
    and unconfirmed before anyone may claim.
    """
    server = RedisServer(port=_free_port(), binary=binary)
    server.start()
    r = _raw(server)
    try:
        runs = Runs()
        common: dict[str, Any] = {"dead_after": 30.0, "timeout": 0.5}
        local = {"max_bucket": 100, "life_span": 120}
        b = SharedBucket(group, server.url, executor=runs, local=local, heartbeat=0.5, **common)
        p = SharedBucket(group, server.url, producer_only=True, heartbeat=0.1, **common)
        members.extend([b, p])
        hold_b = hold(b)
        hold_b.pause()
        n = 40
        for i in range(n):
            assert p.fill(IMMEDIATE, f"j{i}", None) is None
        assert server._command("SAVE").startswith(b"+OK")
        a = SharedBucket(group, server.url, executor=runs, local=local, heartbeat=0.1, **common)
        members.append(a)
        hold_a = hold(a)
        wait_for(lambda: runs.ran() == n and live(p) == 0, what="A to run every task")
        hold_a.pause()
        server.kill()
        server.start()
        hold_b.resume()
        # Without the hold, B would claim the ghosts now, A being held.
        time.sleep(0.5)
        assert b.stats().claimed == 0
        hold_a.resume()
        wait_for(lambda: a.stats().redis_rollbacks >= 1, what="A to reconcile")
        wait_for(lambda: r.zcard(f"wb:{{{group}}}:q:") == 0, what="the ghosts to go")
        assert p.fill(IMMEDIATE, "after", None) is None
        wait_for(lambda: runs.ran() == n + 1, what="a task filled after the gate opened")
    finally:
        r.close()
        server.close()
    assert runs.twice() == set()
    assert b.stats().claimed <= 1  # "after", perhaps


@pytest.mark.timeout(60)
@pytest.mark.parametrize("silent", [False, True], ids=["all-confirm", "one-silent"])
def test_a_member_that_never_confirms_holds_the_gate_closed_for_dead_after_at_most(
    binary: str,
    group: str,
    members: list[SharedBucket],
    hold: Callable[[SharedBucket], Hold],
    silent: bool,
) -> None:
    server = RedisServer(port=_free_port(), binary=binary)
    server.start()
    try:
        runs = Runs()
        dead_after = 2.0
        common: dict[str, Any] = {"heartbeat": 0.1, "dead_after": dead_after, "timeout": 0.5}
        w = SharedBucket(group, server.url, executor=runs, local={"life_span": 120}, **common)
        p = SharedBucket(group, server.url, producer_only=True, local={"life_span": 120}, **common)
        members.extend([w, p])
        if silent:  # in the registry, and never heard of again
            s = SharedBucket(group, server.url, producer_only=True, **common)
            members.append(s)
            hold(s).pause()
        assert p.fill(IMMEDIATE, "before", None) is None
        wait_for(lambda: runs.ran() == 1, what="a first task")
        restarted = time.monotonic()
        server.stop(save=True)  # nothing lost, but another server process: a new run_id
        server.start()
        back = time.monotonic()
        while True:  # p may not know yet that Redis is back
            try:
                assert p.fill(IMMEDIATE, "after", None) is None
                break
            except RedisUnavailable:
                time.sleep(0.02)
        wait_for(lambda: runs.ran() == 2, what="the task filled after the restart")
    finally:
        server.close()
    took = runs.at["after"] - back
    print(
        f"\n{'one silent member' if silent else 'all confirm'}: ran {took:.2f} s after the restart"
    )
    if silent:
        # Opens dead_after after the first script saw the new server (after `back`... at
        # the earliest when the server answered, a little before `back`).
        assert runs.at["after"] - restarted >= dead_after - 0.05
        assert took <= dead_after + 1.0
    else:
        assert took < dead_after / 2


def test_a_member_that_holds_tasks_warns_once_when_the_server_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from wheelbucket.redis.gate import RunGate

    caplog.set_level(logging.WARNING, logger="wheelbucket.redis")
    held = [0]
    gate = RunGate("wb:{g}:", "g")
    gate.configure(dead_after=5.0, hold=0.2, held=lambda: held[0])
    assert gate.keys == ["wb:{g}:run", "wb:{g}:m"]
    gate.heard(b"r1")  # the first server it hears of
    gate.heard("")  # the same one
    gate.heard(b"r2")  # another, but nothing held here
    assert gate.known == "r2"
    held[0] = 3
    gate.heard("")
    gate.heard("r3")
    assert [r.getMessage() for r in caplog.records] == [
        "group 'g': Redis is another server process (run_id r3, was r2: a restart or a "
        "failover) while this member holds 3 tasks; the group claims nothing until every "
        "member has checked its epoch on it, or for 5 s at most"
    ]
    assert gate.args() == ["r3", 5_000_000, 200_000]


@pytest.mark.timeout(30)
def test_without_info_the_gate_is_off_and_the_group_works_and_says_so(
    binary: str, group: str, members: list[SharedBucket], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wheelbucket.redis")
    server = RedisServer(port=_free_port(), binary=binary)
    server.start()
    r = _raw(server)
    try:
        r.execute_command("ACL", "SETUSER", "wb", "on", ">pw", "~*", "&*", "+@all", "-info")
        url = f"redis://wb:pw@127.0.0.1:{server.port}/0"
        runs = Runs()
        w = SharedBucket(group, url, executor=runs, heartbeat=0.1, local={"max_bucket": 1})
        p = SharedBucket(group, url, producer_only=True, heartbeat=0.1)
        members.extend([w, p])
        for i in range(3):
            p.fill(IMMEDIATE, f"n{i}", None)
        wait_for(lambda: runs.ran() == 3, what="the tasks to run")
        assert _gate(r, group)["id"] == "?"
    finally:
        r.close()
        server.close()
    assert sum("refuses INFO" in rec.getMessage() for rec in caplog.records) == 2  # once each


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a real failover --------------------------------------------------------------------


@pytest.fixture
def sentinel(binary: str) -> Iterator[SentinelSet]:
    s = SentinelSet(binary=binary)
    s.start()
    yield s
    s.close()


def _exists(port: int, keys: tuple[str, ...]) -> int:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        return int(client.exists(*keys))
    finally:
        client.close()


def _records(port: int, group: str, ids: list[str]) -> int:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)
    try:
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.exists(f"wb:{{{group}}}:t:{task_id}")
        return sum(pipe.execute())
    finally:
        client.close()


@pytest.mark.timeout(90)
def test_with_min_replicas_no_acknowledged_fill_is_lost_in_a_sentinel_failover(
    sentinel: SentinelSet, group: str, members: list[SharedBucket]
) -> None:
    runs = Runs()
    runs.gate.clear()  # the worker holds 2 tasks; the rest wait in Redis
    w = SharedBucket(
        group, sentinel.url, executor=runs, heartbeat=0.1, local={"max_bucket": 2, "life_span": 120}
    )
    members.append(w)
    p = SharedBucket(
        group,
        sentinel.url,
        producer_only=True,
        min_replicas=1,
        local={"life_span": 120},
        heartbeat=0.1,
        timeout=2.0,
    )
    members.append(p)
    acked = []
    for i in range(300):
        p.fill(IMMEDIATE, f"a{i}", i)
        acked.append(f"a{i}")
    old = sentinel.kill_primary()  # at once after the last acknowledged fill
    new = sentinel.wait_for_failover(old)
    kept = _records(new, group, acked)
    print(f"\nmin_replicas=1: {kept} of {len(acked)} acknowledged fills on the new primary")
    assert kept == len(acked)
    # The worker follows the Sentinel to the new primary; each task runs once.
    runs.gate.set()
    wait_for(lambda: runs.ran() == len(acked), what="every acknowledged task to run")
    assert runs.twice() == set()
    # The new primary has no replica left: a durable fill now says so (once
    # the producer's client has dropped its connections to the dead primary).
    errors = []
    for attempt in range(100):
        with pytest.raises(RedisUnavailable) as info:
            p.fill(IMMEDIATE, f"after-{attempt}", 0)
        errors.append(str(info.value))
        if "replicas acknowledged" in errors[-1]:
            break
        time.sleep(0.05)
    assert "replicas acknowledged" in errors[-1], errors[-3:]


@pytest.mark.timeout(90)
def test_a_lagging_replica_loses_fills_without_min_replicas_and_the_member_is_told(
    sentinel: SentinelSet, group: str, members: list[SharedBucket]
) -> None:
    replica = sentinel.replica_port()
    reports: list[RollbackReport] = []
    runs = Runs()
    runs.gate.clear()  # the worker holds 1 task; the rest wait in Redis
    w = SharedBucket(group, sentinel.url, executor=runs, heartbeat=0.1, local={"max_bucket": 1})
    members.append(w)
    durable = SharedBucket(
        group, sentinel.url, producer_only=True, min_replicas=1, heartbeat=0.1, timeout=0.5
    )
    members.append(durable)
    plain = SharedBucket(
        group,
        sentinel.url,
        producer_only=True,
        heartbeat=0.1,
        timeout=0.5,
        local={"life_span": 120},
        on_rollback=reports.append,
    )
    members.append(plain)
    # The replica has the group (else the new primary would look like a Redis
    # that lost it all: the nonce path, not a rollback).
    keys = (f"wb:{{{group}}}:meta", f"wb:{{{group}}}:ep:{plain.member}")
    wait_for(lambda: _exists(replica, keys) == len(keys), what="the replica to have the group")
    # The replica lags: it is stopped and cut off, so it hears nothing from
    # now on (a write merely sitting in its socket buffer would still reach it).
    sentinel.pause(replica)
    sentinel.cut_replication()
    try:
        start = time.monotonic()
        with pytest.raises(RedisUnavailable, match="replicas acknowledged"):
            durable.fill(IMMEDIATE, "durable", 0)
        assert time.monotonic() - start < 2.0  # bounded by the timeout
        lost_ids = [f"p{i}" for i in range(50)]
        for task_id in lost_ids:
            assert plain.fill(IMMEDIATE, task_id, 0) is None  # acknowledged by the primary
        old = sentinel.kill_primary()  # before the replica can catch up
    finally:
        sentinel.resume(replica)
    new = sentinel.wait_for_failover(old)
    kept = _records(new, group, lost_ids)
    # The count goes up before on_rollback is called: wait for the report.
    wait_for(lambda: reports, what="the producer to notice")
    print(
        f"\nwithout min_replicas: {len(lost_ids) - kept} of {len(lost_ids)} acknowledged "
        f"fills lost; the producer was told: lost calls {[r.lost_calls for r in reports]}"
    )
    assert kept == 0
    assert reports[0].lost_calls >= len(lost_ids)
    runs.gate.set()


def test_a_sentinel_master_for_client_is_accepted(
    sentinel: SentinelSet, group: str, members: list[SharedBucket]
) -> None:
    from redis.sentinel import Sentinel

    client = Sentinel([("127.0.0.1", sentinel.sentinel_port)], socket_timeout=2).master_for(
        "wbmaster", socket_timeout=2, socket_connect_timeout=2
    )
    runs = Runs()
    shared = SharedBucket(group, client, executor=runs, heartbeat=0.1)
    members.append(shared)
    handle = shared.fill(IMMEDIATE, "x", 1)
    assert handle is not None
    handle.wait(10)
    assert runs.ran() == 1
    shared.close()
    assert client.ping()  # not closed: the bucket did not build it
    client.close()


@pytest.mark.parametrize(
    ("url", "error", "match"),
    [
        ("http://127.0.0.1:6379", ValueError, "must start with"),
        ("redis+sentinel://127.0.0.1:26379", ValueError, "master_name"),
        ("redis+sentinel://127.0.0.1:26379/m/x", ValueError, "master_name"),
        ("redis+cluster://127.0.0.1:7000/3", ValueError, "database 0"),
        ("redis+cluster://127.0.0.1:x", ValueError, "host:port"),
        (42, TypeError, "RedisCluster"),
    ],
)
def test_client_urls_are_read_and_bad_ones_refused(url: Any, error: type, match: str) -> None:
    from wheelbucket.redis.connect import connect

    with pytest.raises(error, match=match):
        connect(url, 1.0)


def test_client_urls_build_the_right_client() -> None:
    from redis.cluster import RedisCluster

    from wheelbucket.redis.connect import connect

    port = _free_port()  # nothing listens there: building a client connects to nothing
    client, owned = connect(f"redis+sentinel://127.0.0.1:{port},127.0.0.1:{port}/m/2", 1.0)
    assert owned
    assert isinstance(client, redis.Redis)
    assert client.connection_pool.service_name == "m"
    assert client.connection_pool.connection_kwargs["db"] == 2
    plain, _ = connect(f"redis://127.0.0.1:{port}/3", 1.0)
    assert plain.connection_pool.connection_kwargs["db"] == 3
    assert plain.connection_pool.connection_kwargs["socket_timeout"] == 1.0
    with pytest.raises(redis.exceptions.RedisClusterException):
        connect(f"redis+cluster://127.0.0.1:{port}", 1.0)  # finds the cluster at once
    given = RedisCluster.__new__(RedisCluster)
    assert connect(given, 1.0) == (given, False)
    for c in (client, plain):
        c.close()

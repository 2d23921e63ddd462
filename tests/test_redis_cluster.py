"""The shared bucket on a real 3-master Redis Cluster (tests/redis_cluster.py starts it).

The core group tests of tests/test_redis.py and tests/test_redis_reset.py run
here again, unchanged, with this module's fixtures: their `make` builds
members from a ``redis+cluster://`` URL and their `r` is a ``RedisCluster``.
Then what only a cluster has: groups spread over the nodes, a client object,
MOVED after the group's slot moved to another node, and a member killed
with SIGKILL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_cluster import RedisClusterServers
from redis_server import find_redis_server

redis = pytest.importorskip("redis")

from redis.cluster import RedisCluster  # noqa: E402
from test_redis import (  # noqa: E402 - the core tests, run again on the cluster
    Recorder,
    ledger,
    test_a_full_bucket_overflows_and_another_process_runs_the_task,
    test_a_task_claimed_after_its_life_span_ends_exhausted_on_the_claimer,
    test_an_id_live_anywhere_in_the_group_is_refused,
    test_close_leaves_the_group_and_refuses_fills,
    test_drain_here_runs_no_hook_and_frees_the_id,
    test_drain_reaches_a_task_waiting_in_redis,
    test_drain_reaches_running_and_pending_tasks_of_another_process,
    test_every_ending_kind_leaves_the_group_with_its_hook,
    test_fill_runs_locally_when_there_is_room_and_leaves_the_group_after,
    test_group_limit_counts_every_live_task_of_the_group,
    test_producer_only_never_runs_tasks,
    test_the_filler_claims_its_own_overflow_once_it_has_room,
    test_the_group_record_lives_exactly_as_long_as_the_task,
    wait_for,
)
from test_redis_reset import (  # noqa: E402
    test_a_queued_time_bomb_is_moved_in_redis,
    test_a_task_held_by_another_process_raises_task_out_of_reach,
)

from wheelbucket import TaskState, TaskType  # noqa: E402
from wheelbucket.redis import SharedBucket  # noqa: E402

pytestmark = pytest.mark.redis

IMMEDIATE = TaskType.IMMEDIATE
HERE = Path(__file__).resolve()

__all__ = [  # the imported tests are collected here too
    "test_a_full_bucket_overflows_and_another_process_runs_the_task",
    "test_a_queued_time_bomb_is_moved_in_redis",
    "test_a_task_claimed_after_its_life_span_ends_exhausted_on_the_claimer",
    "test_a_task_held_by_another_process_raises_task_out_of_reach",
    "test_an_id_live_anywhere_in_the_group_is_refused",
    "test_close_leaves_the_group_and_refuses_fills",
    "test_drain_here_runs_no_hook_and_frees_the_id",
    "test_drain_reaches_a_task_waiting_in_redis",
    "test_drain_reaches_running_and_pending_tasks_of_another_process",
    "test_every_ending_kind_leaves_the_group_with_its_hook",
    "test_fill_runs_locally_when_there_is_room_and_leaves_the_group_after",
    "test_group_limit_counts_every_live_task_of_the_group",
    "test_producer_only_never_runs_tasks",
    "test_the_filler_claims_its_own_overflow_once_it_has_room",
    "test_the_group_record_lives_exactly_as_long_as_the_task",
]


# -- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    if find_redis_server() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; under CI the cluster tests must run")
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    servers = RedisClusterServers()
    servers.start()
    yield servers
    servers.close()


def _client(cluster: RedisClusterServers) -> Any:
    return RedisCluster(
        host="127.0.0.1", port=cluster.ports[0], socket_timeout=5, socket_connect_timeout=5
    )


@pytest.fixture
def r(cluster: RedisClusterServers) -> Iterator[Any]:
    client = _client(cluster)
    yield client
    client.close()


@pytest.fixture
def group() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make(cluster: RedisClusterServers, group: str) -> Iterator[Callable[..., SharedBucket]]:
    """Make SharedBuckets of the test's group on the cluster; all are closed at the end."""
    made: list[SharedBucket] = []

    def make_one(**kwargs: Any) -> SharedBucket:
        kwargs.setdefault("heartbeat", 0.1)
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("ledger", 100_000)
        shared = SharedBucket(kwargs.pop("group", group), kwargs.pop("url", cluster.url), **kwargs)
        made.append(shared)
        return shared

    yield make_one
    for shared in made:
        shared.close(wait=False)


def _node_of(r: Any, group: str) -> int:
    return int(r.get_node_from_key(f"wb:{{{group}}}:ids").port)


# -- what only a cluster has ----------------------------------------------------------


def test_groups_on_every_node_each_run_on_their_own_slot(
    make: Callable[..., SharedBucket], r: Any, cluster: RedisClusterServers
) -> None:
    # Find a group name for each node, so that every node runs scripts.
    names: dict[int, str] = {}
    while len(names) < len(cluster.ports):
        name = f"g-{uuid.uuid4().hex[:8]}"
        names.setdefault(_node_of(r, name), name)
    rec = Recorder()
    for name in names.values():
        p = make(group=name, producer_only=True)
        w = make(group=name, executor=rec)
        assert p.fill(IMMEDIATE, f"{name}-task", name) is None  # through the queue
        wait_for(lambda n=name: rec.hooks(f"{n}-task") == ["execute", "finish"], what=name)
        wait_for(lambda w=w: w.group_info().live == 0, what="the release")
    # Every key of a group is on its node: the hash tag keeps them in one slot.
    for port, name in names.items():
        keys = r.keys(f"wb:{{{name}}}:*", target_nodes=RedisCluster.ALL_NODES)
        assert keys
        assert {int(r.get_node_from_key(k).port) for k in keys} == {port}


def test_a_cluster_client_object_is_accepted_and_not_closed(
    cluster: RedisClusterServers, r: Any, group: str
) -> None:
    rec = Recorder()
    client = _client(cluster)
    with SharedBucket(group, client, executor=rec, heartbeat=0.1) as shared:
        handle = shared.fill(IMMEDIATE, "x", 1)
        assert handle is not None
        assert handle.wait(10) is TaskState.FINISHED
    assert client.ping()  # the bucket did not close a client it did not build
    client.close()


def test_moved_is_followed_once_the_groups_slot_moved_to_another_node(
    make: Callable[..., SharedBucket], r: Any, group: str, cluster: RedisClusterServers
) -> None:
    rec = Recorder()
    p = make(producer_only=True)
    w = make(executor=rec, local={"max_bucket": 1000})
    for i in range(50):
        p.fill(IMMEDIATE, f"before-{i}", i)
    wait_for(lambda: w.group_info().live == 0, what="the first tasks to run")
    # Move the group's slot to another node, key by key, as redis-cli --cluster
    # reshard does (MIGRATING/IMPORTING, then MIGRATE, then SETSLOT NODE).
    slot = r.keyslot(f"wb:{{{group}}}:ids")
    source = r.get_node_from_key(f"wb:{{{group}}}:ids")
    target_port = next(port for port in cluster.ports if port != source.port)
    ids = {int(port): r.cluster_myid(r.get_node("127.0.0.1", port)) for port in cluster.ports}
    src_id, dst_id = ids[int(source.port)], ids[target_port]
    src = redis.Redis(host="127.0.0.1", port=source.port)
    dst = redis.Redis(host="127.0.0.1", port=target_port)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    # While the slot migrates, the group's scripts fail (a script's keys must
    # all be on one node) and the members back off: this takes milliseconds.
    while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
        src.execute_command("MIGRATE", "127.0.0.1", target_port, "", 0, 5000, "KEYS", *keys)
    for node in (src, dst):
        node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    for i in range(50):
        p.fill(IMMEDIATE, f"after-{i}", i)  # MOVED, then the new node
    every = [f"{kind}-{i}" for kind in ("before", "after") for i in range(50)]
    wait_for(
        lambda: all(rec.hooks(t) == ["execute", "finish"] for t in every),
        timeout=30,
        what="every task to run once",
    )
    wait_for(lambda: w.group_info().live == 0, what="the releases")
    # The group now lives on the target node alone (its ledger, members...).
    assert int(dst.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) > 0
    assert int(src.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)) == 0
    src.close()
    dst.close()


@pytest.mark.timeout(60)
def test_a_member_killed_on_the_cluster_has_its_tasks_ended_by_a_survivor(
    make: Callable[..., SharedBucket], r: Any, group: str, cluster: RedisClusterServers
) -> None:
    cfg = {"url": cluster.url, "group": group}
    victim = subprocess.Popen(
        [sys.executable, str(HERE), "worker", json.dumps(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=str(HERE.parent.parent),
    )
    try:
        assert victim.stdout is not None
        line = victim.stdout.readline().decode()
        assert line.startswith("READY "), line
        member = line.split()[1]
        p = make(producer_only=True, dead_after=1.0)
        for i in range(5):
            p.fill(IMMEDIATE, f"held-{i}", i)
        wait_for(lambda: r.scard(f"wb:{{{group}}}:by:{member}") == 5, what="the victim to claim")
        victim.kill()
        victim.wait()
        rec = Recorder()
        make(executor=rec, dead_after=1.0)
        # A task that had started there ends EXHAUSTED here; one that had not runs here.
        endings = (["exhausted"], ["execute", "finish"])
        wait_for(
            lambda: all(rec.hooks(f"held-{i}") in endings for i in range(5)),
            timeout=20,
            what="the survivor to end the victim's tasks",
        )
        entries = ledger(r, group)
        assert sorted(task_id for task_id, _, _ in entries) == [f"held-{i}" for i in range(5)]
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        if victim.stdout is not None:
            victim.stdout.close()


def _worker(cfg: dict[str, Any]) -> None:
    """A member that claims up to 5 tasks and never finishes them (until killed)."""

    def stuck(ctx: Any, task_id: str, data: Any) -> None:
        ctx.wait(60)

    shared = SharedBucket(
        cfg["group"],
        cfg["url"],
        executor=stuck,
        local={"max_bucket": 5, "workers": 5, "life_span": 60},
        heartbeat=0.1,
        dead_after=1.0,
    )
    print("READY", shared.member, flush=True)
    time.sleep(60)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        _worker(json.loads(sys.argv[2]))

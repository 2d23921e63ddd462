"""The member's epoch: how it tells that Redis lost writes it relied on, and its scripts.

Every script of the group INCRs the calling member's epoch key
``wb:{G}:ep:<member>`` (KEYS[1], in prelude.lua), in the same atomic step as
the rest of its work. The member counts the calls Redis answered. Redis only
answers a call after it applied it, and a snapshot, an AOF or a replica holds
a prefix of the primary's history; so as long as Redis kept everything, the
key is at least that count. A key *behind* the count proves that Redis
forgot some of the member's answered calls: it restarted from an old
snapshot, or a lagging replica was promoted (docs/shared.md, Failures).
Detection costs one INCR per script and no round trip: the heartbeat reads
the key.

`GroupScript` is one registered script of the group: it puts the member's
epoch key first in KEYS, counts answered calls, and queues itself in a
pipeline in the way the client allows (a cluster pipeline refuses EVALSHA).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis
from redis.cluster import RedisCluster

__all__ = ["Epoch", "GroupScript", "OwnLine", "is_cluster"]


def is_cluster(client: object) -> bool:
    """Is `client` a Redis Cluster client (which routes by key and pipelines per node)?"""
    return isinstance(client, RedisCluster)


class Epoch:
    """This member's count of answered script calls, against its epoch key in Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Invariant: the epoch key in Redis is >= _answered unless Redis lost
        #   writes (or a rebase() after one just set it to what Redis holds).
        self._answered = 0

    @property
    def answered(self) -> int:
        """Calls Redis answered so far (each applied before its answer came)."""
        return self._answered

    def count(self, n: int = 1) -> None:
        with self._lock:
            self._answered += n

    def forget(self, lost: int) -> None:
        """Redis lost `lost` of the calls it answered: count without them."""
        with self._lock:
            self._answered -= lost

    def rebase(self, value: int) -> int:
        """Redis lost writes: count from what it holds (`value`). Returns the calls lost."""
        with self._lock:
            lost = self._answered - value
            self._answered = value
        return lost


class GroupScript:
    """One Lua script of the group, called with the member's epoch key as KEYS[1].

    Args:
        client: a ``redis.Redis`` or a ``RedisCluster``.
        source: the script (with prelude.lua in front).
        epoch_key: ``wb:{G}:ep:<member>``.
        epoch: the member's `Epoch`, counted on every answered call.
    """

    def __init__(self, client: Any, source: str, epoch_key: str, epoch: Epoch) -> None:
        self._client = client
        self._script = client.register_script(source)
        # (replicas, timeout in ms): each call waits until that many replicas
        # have it (WAIT on the same connection), else raises TimeoutError.
        self.wait_replicas: tuple[int, int] | None = None
        self._source = source
        self._epoch_key = epoch_key
        self._epoch = epoch

    @property
    def sha(self) -> str:
        return str(self._script.sha)

    @property
    def source(self) -> str:
        return self._source

    @property
    def epoch_key(self) -> str:
        return self._epoch_key

    def counted(self) -> None:
        """One call of it was answered (by an `OwnLine`)."""
        self._epoch.count()

    def __call__(
        self, keys: Sequence[str | bytes] = (), args: Sequence[Any] = (), client: Any = None
    ) -> Any:
        """Run it (one round trip), or queue it in the pipeline `client`.

        A queued call is counted by `answered_in_pipeline` once the pipeline ran.
        """
        all_keys = [self._epoch_key, *keys]
        if client is None and self.wait_replicas is not None:
            replicas, timeout_ms = self.wait_replicas
            pipe = self._client.pipeline(transaction=False)
            self._script(keys=all_keys, args=args, client=pipe)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            reply, acked = pipe.execute()
            self._epoch.count()
            if int(acked) < replicas:
                # Applied on the primary, maybe not on a replica: a failover
                # may lose it. The caller cannot know the outcome.
                raise redis.exceptions.TimeoutError(
                    f"only {int(acked)} of {replicas} replicas acknowledged the write "
                    f"within {timeout_ms} ms (min_replicas)"
                )
            return reply
        if client is None:
            reply = self._script(keys=all_keys, args=args)
            self._epoch.count()
            return reply
        if is_cluster_pipeline(client):
            # ClusterPipeline refuses EVALSHA (it cannot load a missing script
            # on the right node); EVAL carries the source, cached by the server.
            return client.execute_command("EVAL", self._source, len(all_keys), *all_keys, *args)
        return self._script(keys=all_keys, args=args, client=client)


class OwnLine:
    """A `GroupScript` called on a connection of its own, its command packed in one go.

    For the hot step of a member's workers (lua/step.lua), which the `Link`
    sends one call at a time: no connection is taken from the pool and given
    back per call, and the arguments (bytes already) are packed without the
    client's per-argument work. A call that fails on the connection is
    tried once more on a new one (to the current primary under Sentinel);
    then it raises the client's exception, and the callers retry as they
    do. Only for a ``redis.Redis`` client (a Sentinel-managed one too); a
    ``RedisCluster`` has none (`for_client` returns None).
    """

    def __init__(self, script: GroupScript, client: redis.Redis) -> None:
        self._script = script
        self._client = client
        encode: Callable[[str], bytes] = cast(Any, client).get_encoder().encode
        self._epoch_key = encode(script.epoch_key)
        self._lock = threading.Lock()  # one call at a time on the connection
        self._conn: Any = None
        self._pid = 0  # of the process that made _conn (a forked child makes its own)
        self._broken = False  # _conn failed: connect it again before the next call

    @classmethod
    def for_client(cls, script: GroupScript, client: Any) -> OwnLine | None:
        return None if is_cluster(client) else cls(script, client)

    def __call__(self, keys: Sequence[bytes], args: Sequence[bytes]) -> Any:
        """Run the script (one round trip) with the member's epoch key in front of `keys`."""
        script = self._script
        head = [b"EVALSHA", script.sha.encode(), b"%d" % (len(keys) + 1), self._epoch_key]
        parts = [*head, *keys, *args]
        packed = b"".join(
            [b"*%d\r\n" % len(parts)] + [b"$%d\r\n%s\r\n" % (len(a), a) for a in parts]
        )
        with self._lock:
            try:
                reply = self._roundtrip(packed)
            except redis.exceptions.ConnectionError:
                # Most often a connection the server closed while it was idle
                # (a restart): the pool would have seen that at checkout. Once
                # more on a new one. A step applied whose answer was lost is
                # safe to repeat: a release finds no record (-1), a start
                # finds its own mark (1).
                reply = self._roundtrip(packed)
        script.counted()
        return reply

    def _roundtrip(self, packed: bytes) -> Any:
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            # One of the pool's, kept (connected by the pool).
            conn = self._conn = self._client.connection_pool.get_connection()
            self._pid = os.getpid()
            self._broken = False
        try:
            if self._broken:
                # Its own connect(), which asks Sentinel where the primary is
                # now: send_packed_command would connect to where it last was.
                conn.connect()
                self._broken = False
            try:
                conn.send_packed_command([packed], check_health=False)
                reply = conn.read_response()
            except redis.exceptions.NoScriptError:
                self._client.script_load(self._script.source)  # a restart, or SCRIPT FLUSH
                conn.send_packed_command([packed], check_health=False)
                reply = conn.read_response()
        except redis.exceptions.ResponseError:
            raise  # an error reply: the connection is fine
        except BaseException:
            conn.disconnect()
            self._broken = True
            raise
        if isinstance(reply, redis.exceptions.ResponseError):
            raise reply
        return reply

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                self._client.connection_pool.release(conn)


def is_cluster_pipeline(pipe: object) -> bool:
    return isinstance(pipe, redis.cluster.ClusterPipeline)

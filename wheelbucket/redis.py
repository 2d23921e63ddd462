"""A bucket shared by many processes through Redis: GoBucket's bucket group.

Each process keeps its own in-memory `TaskBucket`. A `SharedBucket` puts a
group layer on top of it, named by `group`, on one Redis server::

    from wheelbucket import TaskType
    from wheelbucket.redis import SharedBucket

    with SharedBucket("mail", "redis://127.0.0.1:6379/0", executor=Mailer()) as bucket:
        bucket.fill(TaskType.IMMEDIATE, "mail::1", {"to": "ann@example.com"})

* A fill goes to the local bucket when it has room; when it is full the task
  *overflows* into Redis, and any process of the group with room claims it
  (atomically, in a Lua script) and runs it with its own executor.
* Every live task of the group has a record in Redis from its fill to its
  ending, whoever holds it: ids are unique across the group, `drain` reaches
  a task wherever it is, and a process that dies (``kill -9``) leaves its
  tasks behind for the survivors, who notice its lapsed heartbeat and end
  them EXHAUSTED (their ``on_task_exhausted`` runs).
* Deadlines of tasks that cross processes are on the Redis server's clock.

See docs/shared.md for the design, the Redis keys and the delivery guarantees.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "wheelbucket.redis needs the redis client: pip install 'wheelbucket[redis]'"
    ) from exc

from ._args import close_timeout, duration_ns, positive_int
from ._log import safe_repr
from .bucket import TaskBucket
from .clock import MonotonicClock
from .errors import BucketClosed, BucketError, BucketFull, TaskExists, TaskNotFound
from .executor import HookPlan
from .stats import BucketStats
from .task import TaskContext, TaskHandle, TaskType

__all__ = [
    "GroupInfo",
    "JSONSerializer",
    "RedisUnavailable",
    "Serializer",
    "SharedBucket",
    "SharedStats",
]

logger = logging.getLogger("wheelbucket.redis")

# What "Redis cannot be reached" looks like: refused or reset connections,
# socket timeouts, a server still loading its data set (a ConnectionError).
_UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)
# Revocations (drain requests) fetched per pump round.
_CTL_BATCH = 100
# How long the revocation list of a dead member is kept for it, in case it
# was only paused and comes back (seconds).
_CTL_TTL = 3600
# Tasks taken from dead members per heartbeat.
_REAP_BATCH = 1000
# A process that has not heartbeated for this share of dead_after may have
# been presumed dead: it checks with Redis before it starts a task.
_LEASE = 0.8
# The life span given to a task that is already past its deadline when it
# is claimed: it ends EXHAUSTED on the first tick of the local wheel.
_DOOMED_SPAN = 1e-6
_INF = math.inf


class RedisUnavailable(BucketError, ConnectionError):
    """Redis could not be reached (refused, timed out) for an operation that needs it.

    Raised by `SharedBucket.fill` and `drain`. For a fill the outcome is not
    always known (the request may have reached Redis before the connection
    broke): fill the same id again once Redis is back; `TaskExists` then
    means the first attempt went through.
    """


@runtime_checkable
class Serializer(Protocol):
    """Turns task data into bytes (or str) for Redis, and back."""

    def dumps(self, data: Any) -> bytes | str:
        """Encode `data`; raise TypeError or ValueError if it cannot be encoded."""
        ...

    def loads(self, raw: bytes | str) -> Any:
        """Decode what `dumps` made."""
        ...


class JSONSerializer:
    """The default serializer: strict JSON (no NaN/inf; tuples come back as lists)."""

    __slots__ = ()

    def dumps(self, data: Any) -> str:
        return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)

    def loads(self, raw: bytes | str) -> Any:
        return json.loads(raw)

    def __repr__(self) -> str:
        return "JSONSerializer()"


@dataclass(frozen=True)
class SharedStats:
    """A snapshot of one process's view of the group, as `SharedBucket.stats()` returns it.

    ``local`` holds the counters of the process's own bucket (every task this
    process ran or ended is counted there). The rest counts the group layer:
    ``filled_local + overflowed`` fills succeeded here; ``claimed`` tasks came
    from Redis, ``exhausted_on_claim`` of them already past their life span
    (or taken from a dead process) and ended EXHAUSTED at once.
    """

    local: BucketStats
    member: str
    filled_local: int
    overflowed: int
    claimed: int
    exhausted_on_claim: int
    reaped: int
    drained_remote: int
    revoked: int
    rejected_duplicate: int
    rejected_full: int
    unreleased: int
    redis_errors: int
    redis_resets: int
    connected: bool


@dataclass(frozen=True)
class GroupInfo:
    """The whole group as Redis sees it (`SharedBucket.group_info()`)."""

    live: int
    queued: int
    members: tuple[str, ...]


# -- the Lua side ---------------------------------------------------------------
#
# Keys of group G (all share the hash tag {G}, so they live in one slot):
#   wb:{G}:t:<id>      HASH  the task: tok own typ due dl ex d [doom]
#   wb:{G}:ids         SET   ids of the live tasks of the group
#   wb:{G}:q:<ex>      ZSET  queued tasks for executor name <ex>, by due time
#   wb:{G}:exs         SET   executor names ever used (which q:<ex> exist)
#   wb:{G}:by:<member> SET   ids held by a member
#   wb:{G}:m           ZSET  members, by their last heartbeat
#   wb:{G}:ctl:<member> LIST "tok id" of tasks taken away from a member
#   wb:{G}:meta        HASH  nonce (changes when Redis lost the group)
#   wb:{G}:ledger      STREAM every ending (optional)
# Channels: wb:{G}:wake (a task was queued), wb:{G}:wake:<member> (revocation).
# Times are microseconds of the Redis server's clock (TIME).

_PRELUDE = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function num(x) return string.format('%.0f', x) end
"""

# ARGV: P id tok own typ delay_us span_us ex data limit
_FILL = """
local P, id, tok, own = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = P .. 't:' .. id
local cur = redis.call('HMGET', key, 'tok', 'due', 'dl')
if cur[1] then return {0, cur[1], cur[2] or '0', cur[3] or '0'} end
local limit = tonumber(ARGV[10])
if limit > 0 and redis.call('SCARD', P .. 'ids') >= limit then return {-1, '', '0', '0'} end
local now = now_us()
local due = num(now + tonumber(ARGV[6]))
local dl = num(now + tonumber(ARGV[7]))
redis.call('HSET', key, 'tok', tok, 'own', own, 'typ', ARGV[5], 'due', due, 'dl', dl,
           'ex', ARGV[8], 'd', ARGV[9])
redis.call('SADD', P .. 'ids', id)
redis.call('SADD', P .. 'exs', ARGV[8])
if own == '' then
  local q = P .. 'q:' .. ARGV[8]
  redis.call('ZADD', q, due, id)
  -- Wake the group only for a new head: behind an older head, every member
  -- with room was woken already, and every full one waits for room.
  if redis.call('ZRANK', q, id) == 0 then redis.call('PUBLISH', P .. 'wake', '') end
else
  redis.call('SADD', P .. 'by:' .. own, id)
end
return {1, tok, due, dl}
"""

# ARGV: P me n lookahead_us nctl ex...
_CLAIM = """
local P, me = ARGV[1], ARGV[2]
local n = tonumber(ARGV[3])
local now = now_us()
local horizon = num(now + tonumber(ARGV[4]))
local ctl = redis.call('LRANGE', P .. 'ctl:' .. me, 0, tonumber(ARGV[5]) - 1)
local out = {}
local nxt = -1
for i = 6, #ARGV do
  local ex = ARGV[i]
  local q = P .. 'q:' .. ex
  if n > 0 then
    local ids = redis.call('ZRANGEBYSCORE', q, '-inf', horizon, 'LIMIT', 0, n)
    for _, id in ipairs(ids) do
      redis.call('ZREM', q, id)
      local key = P .. 't:' .. id
      local f = redis.call('HMGET', key, 'tok', 'typ', 'due', 'dl', 'd', 'doom', 'own')
      if f[1] and f[7] == '' then
        redis.call('HSET', key, 'own', me)
        redis.call('SADD', P .. 'by:' .. me, id)
        local k = #out
        out[k + 1] = id
        out[k + 2] = f[1]
        out[k + 3] = f[2]
        out[k + 4] = f[3]
        out[k + 5] = f[4]
        out[k + 6] = ex
        out[k + 7] = f[5] or ''
        out[k + 8] = f[6] or ''
        n = n - 1
      end
    end
  end
  local first = redis.call('ZRANGE', q, 0, 0, 'WITHSCORES')
  if first[2] then
    local s = tonumber(first[2])
    if nxt < 0 or s < nxt then nxt = s end
  end
end
return {num(now), num(nxt), ctl, out}
"""

# ARGV: P me id tok ending ledger_maxlen
# 1: released (run the hook); 0: taken away from us (no hook); -1: unknown to Redis.
_RELEASE = """
local P, me, id, tok = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = P .. 't:' .. id
local f = redis.call('HMGET', key, 'tok', 'own')
if f[1] == tok then
  if f[2] ~= me then return 0 end
  redis.call('DEL', key)
  redis.call('SREM', P .. 'ids', id)
  redis.call('SREM', P .. 'by:' .. me, id)
  local maxlen = tonumber(ARGV[6])
  if maxlen > 0 and ARGV[5] ~= '' then
    redis.call('XADD', P .. 'ledger', 'MAXLEN', '~', maxlen, '*',
               'id', id, 'end', ARGV[5], 'by', me)
  end
  return 1
end
if redis.call('LREM', P .. 'ctl:' .. me, 1, tok .. ' ' .. id) > 0 then return 0 end
return -1
"""

# ARGV: P me id ledger_maxlen force
# {0}: unknown; {2}: held by the caller (drain it locally); {1, owner}: drained.
_DRAIN = """
local P, me, id = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 't:' .. id
local f = redis.call('HMGET', key, 'tok', 'own', 'ex')
if not f[1] then return {0, ''} end
local own = f[2]
if own == me and ARGV[5] ~= '1' then return {2, own} end
redis.call('DEL', key)
redis.call('SREM', P .. 'ids', id)
if own == '' then
  redis.call('ZREM', P .. 'q:' .. f[3], id)
else
  redis.call('SREM', P .. 'by:' .. own, id)
  if own ~= me then
    redis.call('RPUSH', P .. 'ctl:' .. own, f[1] .. ' ' .. id)
    redis.call('PUBLISH', P .. 'wake:' .. own, '')
  end
end
local maxlen = tonumber(ARGV[4])
if maxlen > 0 then
  redis.call('XADD', P .. 'ledger', 'MAXLEN', '~', maxlen, '*',
             'id', id, 'end', 'drained', 'by', me)
end
return {1, own}
"""

# ARGV: P me id tok ('' = whatever token)
_REQUEUE = """
local P, me, id = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 't:' .. id
local f = redis.call('HMGET', key, 'tok', 'own', 'ex', 'due', 'doom')
if not f[1] or f[2] ~= me or (ARGV[4] ~= '' and f[1] ~= ARGV[4]) then return 0 end
redis.call('HSET', key, 'own', '')
redis.call('SREM', P .. 'by:' .. me, id)
local score = f[4]
if f[5] == '1' then score = '0' end
redis.call('ZADD', P .. 'q:' .. f[3], score, id)
redis.call('PUBLISH', P .. 'wake', '')
return 1
"""

# ARGV: P me fresh_nonce -> {now, nonce, was_member}
_HEARTBEAT = """
local P, me = ARGV[1], ARGV[2]
local now = now_us()
local was = redis.call('ZSCORE', P .. 'm', me)
redis.call('ZADD', P .. 'm', num(now), me)
-- Back after being presumed dead: keep the revocation list the reaper set to expire.
if not was then redis.call('PERSIST', P .. 'ctl:' .. me) end
local nonce = redis.call('HGET', P .. 'meta', 'nonce')
if not nonce then
  nonce = ARGV[3]
  redis.call('HSET', P .. 'meta', 'nonce', nonce)
end
local w = 0
if was then w = 1 end
return {num(now), nonce, w}
"""

# ARGV: P me dead_after_us batch ttl -> {tasks requeued as doomed, members gone}
_REAP = """
local P, me = ARGV[1], ARGV[2]
local now = now_us()
local dead = redis.call('ZRANGEBYSCORE', P .. 'm', '-inf', num(now - tonumber(ARGV[3])),
                        'LIMIT', 0, 16)
local batch = tonumber(ARGV[4])
local reaped = 0
local gone = {}
for _, m in ipairs(dead) do
  if m ~= me and batch > 0 then
    local by = P .. 'by:' .. m
    local ids = redis.call('SPOP', by, batch)
    for _, id in ipairs(ids) do
      local key = P .. 't:' .. id
      local f = redis.call('HMGET', key, 'tok', 'own', 'ex')
      if f[1] and f[2] == m then
        redis.call('HSET', key, 'own', '', 'doom', '1')
        redis.call('ZADD', P .. 'q:' .. f[3], 0, id)
        redis.call('RPUSH', P .. 'ctl:' .. m, f[1] .. ' ' .. id)
        reaped = reaped + 1
      end
    end
    batch = batch - #ids
    if redis.call('SCARD', by) == 0 then
      redis.call('ZREM', P .. 'm', m)
      redis.call('EXPIRE', P .. 'ctl:' .. m, tonumber(ARGV[5]))
      gone[#gone + 1] = m
    end
  end
end
if reaped > 0 then redis.call('PUBLISH', P .. 'wake', '') end
return {reaped, gone}
"""

# ARGV: P me id tok typ due dl ex data
_RESTORE = """
local P, me, id = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 't:' .. id
local cur = redis.call('HGET', key, 'tok')
if cur then
  if cur == ARGV[4] then return 1 end
  return 0
end
redis.call('HSET', key, 'tok', ARGV[4], 'own', me, 'typ', ARGV[5], 'due', ARGV[6],
           'dl', ARGV[7], 'ex', ARGV[8], 'd', ARGV[9])
redis.call('SADD', P .. 'ids', id)
redis.call('SADD', P .. 'by:' .. me, id)
return 1
"""

# ARGV: P me
_LEAVE = """
local P, me = ARGV[1], ARGV[2]
if redis.call('SCARD', P .. 'by:' .. me) == 0 then
  redis.call('ZREM', P .. 'm', me)
  redis.call('DEL', P .. 'ctl:' .. me, P .. 'by:' .. me)
  return 1
end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Rec:
    """What this process knows of one shared task it holds."""

    __slots__ = (
        "data",
        "dl",
        "due",
        "ending",
        "error",
        "ex",
        "handle",
        "id",
        "payload",
        "revoked",
        "token",
        "typ",
    )

    # Invariant: a _Rec is in SharedBucket._local from the moment its task is
    #   put in the local bucket until Redis confirmed its release (or it was
    #   revoked): while it is there, no scan treats its Redis record as orphaned.
    def __init__(
        self,
        task_id: str,
        token: str,
        data: Any,
        typ: str,
        due: str,
        dl: str,
        ex: str,
        payload: bytes | str,
    ) -> None:
        self.id = task_id
        self.token = token
        self.data = data
        self.typ = typ
        self.due = due
        self.dl = dl
        self.ex = ex
        self.payload = payload
        self.handle: TaskHandle | None = None
        # Set (by the pump) when another process drained it or presumed us dead.
        self.revoked = False
        # The ending whose release could not reach Redis yet.
        self.ending = ""
        # Why the data could not be decoded, if it could not.
        self.error: BaseException | None = None


class _Wrapper:
    """The executor the local bucket sees for shared tasks of one user executor.

    Its ending hooks first take the task out of the group (one Redis round
    trip), then call the user's hook, only if this process still held the
    task: that is what gives each task one ending in the whole group. The
    hooks are instance attributes, so `HookPlan` sees exactly these.
    """

    def __init__(self, shared: SharedBucket, user: object, *, doomed: bool) -> None:
        plan = HookPlan(user)
        self.user = user
        end = shared._end
        may_start = shared._may_start

        if doomed:
            # A task past its life span: it must end EXHAUSTED without running.
            # It is filled with a life span of a microsecond; should a worker
            # pick it up before the wheel expires it, it waits for that.
            def guard(ctx: TaskContext, task_id: str, rec: _Rec) -> None:
                ctx.wait()

            self.on_execute: Callable[..., Any] = guard
        elif plan.is_async:
            user_execute = plan.on_execute
            assert user_execute is not None

            async def on_execute_async(ctx: TaskContext, task_id: str, rec: _Rec) -> Any:
                if rec.error is not None:
                    raise rec.error
                if not may_start(rec):
                    return None
                return await user_execute(ctx, task_id, rec.data)

            self.on_execute = on_execute_async
        else:
            user_sync = plan.on_execute

            def on_execute(ctx: TaskContext, task_id: str, rec: _Rec) -> Any:
                if rec.error is not None:
                    raise rec.error
                if user_sync is None or not may_start(rec):
                    return None
                return user_sync(ctx, task_id, rec.data)

            self.on_execute = on_execute

        def ending_hook(name: str, ending: str) -> Callable[..., Any]:
            user_hook = getattr(plan, name)

            def hook(ctx: TaskContext, task_id: str, rec: _Rec, *extra: Any) -> Any:
                if end(rec, ending) and user_hook is not None:
                    return user_hook(ctx, task_id, rec.data, *extra)
                return None

            hook.__name__ = name
            return hook

        self.on_finish = ending_hook("on_finish", "finished")
        self.on_execute_error = ending_hook("on_execute_error", "failed")
        self.on_task_exhausted = ending_hook("on_task_exhausted", "exhausted")
        self.on_panic = ending_hook("on_panic", "rescued")

    def __repr__(self) -> str:
        return f"<shared executor for {self.user!r}>"


class SharedBucket:
    """A `TaskBucket` that overflows into, and takes work from, a group on Redis.

    Args:
        group: the group's name; every process that uses the same name on the
            same Redis server shares one bucket.
        client: a ``redis.Redis`` client, or a URL (``redis://host:port/db``)
            to build one with `timeout`. A client you pass should have socket
            timeouts set, or a fill may wait for a hung server.
        executor: the default executor of shared tasks (an `Executor`, an
            object with ``on_execute``, or a callable). Every process of the
            group must have one that does the same job.
        executors: more executors by name; ``fill(..., executor="name")``
            picks one. A process only claims tasks whose executor it has.
        local: keyword arguments for the local `TaskBucket`
            (``max_bucket``, ``life_span``, ``run_after``, ``workers``...),
            or a `TaskBucket` to use (the shared bucket then owns it).
        serializer: turns data into bytes and back (default `JSONSerializer`).
        heartbeat: seconds between heartbeats, and the longest a process
            waits before it looks at the group again without being woken.
        dead_after: a member whose last heartbeat is older than this (seconds
            of the Redis clock) is dead: its tasks end EXHAUSTED elsewhere.
            Default five heartbeats.
        group_limit: most live tasks in the whole group; a fill beyond it
            raises `BucketFull`. Default: no limit (Redis memory is the limit).
        producer_only: this process never runs tasks: every fill goes to the
            group, and it claims nothing.
        timeout: socket timeouts of the client built from a URL (seconds).
        ledger: keep the last `ledger` endings (id, ending, member) in the
            Redis stream ``wb:{group}:ledger``; written in the same atomic step
            that ends the task in the group.
        claim_batch: most tasks claimed in one round trip.

    Raises:
        RedisUnavailable: Redis cannot be reached to join the group.
        TypeError, ValueError: a bad argument; the message names it.
    """

    def __init__(
        self,
        group: str,
        client: redis.Redis | str,
        *,
        executor: object = None,
        executors: Mapping[str, object] | None = None,
        local: TaskBucket | Mapping[str, Any] | None = None,
        serializer: Serializer | None = None,
        heartbeat: float = 1.0,
        dead_after: float | None = None,
        group_limit: int | None = None,
        producer_only: bool = False,
        timeout: float = 2.0,
        ledger: int | None = None,
        claim_batch: int = 100,
    ) -> None:
        if not isinstance(group, str) or not group:
            raise TypeError(f"group must be a non-empty str, got {safe_repr(group)}")
        if "{" in group or "}" in group:
            raise ValueError(f"group must not contain braces, got {group!r}")
        self._heartbeat = _seconds(heartbeat, "heartbeat")
        self._dead_after = (
            5 * self._heartbeat if dead_after is None else _seconds(dead_after, "dead_after")
        )
        if self._dead_after <= self._heartbeat:
            raise ValueError(
                f"dead_after ({self._dead_after:g} s) must be longer than heartbeat "
                f"({self._heartbeat:g} s)"
            )
        timeout = _seconds(timeout, "timeout")
        self._group_limit = 0 if group_limit is None else positive_int(group_limit, "group_limit")
        self._ledger = 0 if ledger is None else positive_int(ledger, "ledger")
        self._claim_batch = positive_int(claim_batch, "claim_batch")
        if not isinstance(producer_only, bool):
            raise TypeError(f"producer_only must be a bool, got {type(producer_only).__name__}")
        self._producer_only = producer_only
        if serializer is None:
            serializer = JSONSerializer()
        elif not isinstance(serializer, Serializer):
            raise TypeError(
                f"serializer must have dumps(data) and loads(raw), got {type(serializer).__name__}"
            )
        self._serializer = serializer

        if isinstance(client, str):
            self._redis: redis.Redis = redis.Redis.from_url(
                client,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._own_client = True
        elif isinstance(client, redis.Redis):
            self._redis = client
            self._own_client = False
        else:
            raise TypeError(
                f"client must be a redis.Redis or a redis:// URL, got {type(client).__name__}"
            )

        # The executors, wrapped for the local bucket: name -> (normal, doomed).
        self._wrappers: dict[str, tuple[_Wrapper, _Wrapper]] = {}
        if executor is not None:
            self._wrappers[""] = self._wrap(executor, "executor")
        for ex_name, ex in (executors or {}).items():
            if not isinstance(ex_name, str) or not ex_name or " " in ex_name:
                raise ValueError(
                    f"executor names must be non-empty str without spaces, got {ex_name!r}"
                )
            self._wrappers[ex_name] = self._wrap(ex, f"executors[{ex_name!r}]")
        self._names = sorted(self._wrappers)

        if local is None:
            bucket = TaskBucket()
        elif isinstance(local, TaskBucket):
            bucket = local
        elif isinstance(local, Mapping):
            if "clock" in local:
                raise ValueError("local: a SharedBucket runs on real time; clock= is not allowed")
            bucket = TaskBucket(**local)
        else:
            raise TypeError(f"local must be a TaskBucket or a dict of its arguments, got {local!r}")
        if not isinstance(bucket._core.clock, MonotonicClock):
            raise ValueError("local: a SharedBucket runs on real time, not on a test clock")
        self._bucket = bucket
        self._max_bucket: int = bucket._max_bucket
        self._life_span_ns: int = bucket._life_span
        self._run_after_ns: int = bucket._run_after

        self.group = group
        self.member = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._prefix = f"wb:{{{group}}}:"
        self._wake_channel = self._prefix + "wake"
        self._my_channel = self._prefix + "wake:" + self.member
        self._tokens = itertools.count(1)
        self._token_prefix = secrets.token_hex(6) + "."

        r = self._redis
        self._s_fill = r.register_script(_PRELUDE + _FILL)
        self._s_claim = r.register_script(_PRELUDE + _CLAIM)
        self._s_release = r.register_script(_RELEASE)
        self._s_drain = r.register_script(_DRAIN)
        self._s_requeue = r.register_script(_REQUEUE)
        self._s_heartbeat = r.register_script(_PRELUDE + _HEARTBEAT)
        self._s_reap = r.register_script(_PRELUDE + _REAP)
        self._s_restore = r.register_script(_RESTORE)
        self._s_leave = r.register_script(_LEAVE)

        # Guards _local, _inflight, _unreleased and the counters; never held
        # across a Redis call. The only user code run under it is the done
        # callbacks the local bucket calls inside drain(): re-entrant, so that
        # such a callback may fill or drain again.
        self._lock = threading.RLock()
        # Invariant: _local maps each id this process holds in the group to its
        #   record (see _Rec); _inflight counts fills between their Redis
        #   record and their entry in _local.
        self._local: dict[str, _Rec] = {}
        self._inflight: dict[str, int] = {}
        self._unreleased: list[_Rec] = []
        self._closing = False
        self._stopping = False
        self._wake = threading.Event()
        # Due tasks wait in Redis for room here: a task ending here wakes the pump.
        self._backlog = False
        self._maybe_orphans = False
        self._online = True
        self._connected_since = time.monotonic()
        self._nonce = ""
        self._next_claim = 0.0
        self._closed_event = threading.Event()
        # Until then (monotonic), the group cannot have presumed us dead.
        self._lease_until = 0.0

        self._filled_local = 0
        self._overflowed = 0
        self._claimed = 0
        self._exhausted_on_claim = 0
        self._reaped = 0
        self._drained_remote = 0
        self._revoked = 0
        self._rejected_duplicate = 0
        self._rejected_full = 0
        self._redis_errors = 0
        self._redis_resets = 0

        try:
            self._beat(reap=False)
        except _UNREACHABLE as exc:
            if self._own_client:
                self._redis.close()
            if local is not bucket:
                bucket.close(wait=False)
            raise RedisUnavailable(
                f"cannot join group {group!r}: Redis unreachable ({exc})"
            ) from exc

        self._pump_thread = threading.Thread(
            target=self._pump, name=f"wheelbucket-shared-{group}", daemon=True
        )
        self._listen_thread = threading.Thread(
            target=self._listen, name=f"wheelbucket-shared-{group}-listen", daemon=True
        )
        self._pump_thread.start()
        self._listen_thread.start()
        _live_shared.add(self)

    # -- the API ----------------------------------------------------------------

    def fill(
        self,
        task_type: TaskType,
        task_id: str,
        data: Any = None,
        executor: object = None,
        *,
        run_after: float | datetime.timedelta | None = None,
        life_span: float | datetime.timedelta | None = None,
    ) -> TaskHandle | None:
        """Put a task in the group: here if the local bucket has room, else in Redis.

        Args are those of `TaskBucket.fill`, but `executor` is the *name* of
        an executor given to ``executors=`` (or that executor object itself);
        None picks the default executor. `data` must pass the serializer.

        Returns:
            The local `TaskHandle` when the task was placed in this process,
            None when it overflowed into Redis (any process may run it).

        Raises:
            TaskExists: `task_id` is live anywhere in the group.
            BucketFull: the group is at `group_limit` (only with a limit).
            BucketClosed: close() has begun.
            RedisUnavailable: Redis could not be reached; nothing was placed
                here (see `RedisUnavailable` for the uncertain case).
            TypeError, ValueError: a bad argument, or data the serializer
                refuses; nothing is stored.
        """
        if self._closing:
            raise BucketClosed(f"shared bucket is closed: cannot fill {safe_repr(task_id)}")
        if type(task_id) is not str:
            raise TypeError(
                f"task_id must be a str, got {type(task_id).__name__}: {safe_repr(task_id)}"
            )
        if not task_id:
            raise ValueError("task_id must be a non-empty str")
        ex = self._executor_name(executor)
        span = (
            self._life_span_ns
            if life_span is None
            else duration_ns(life_span, "life_span", zero_ok=False)
        )
        if task_type is TaskType.TIME_BOMB:
            delay = (
                self._run_after_ns
                if run_after is None
                else duration_ns(run_after, "run_after", zero_ok=True)
            )
            if span <= delay:
                raise ValueError(
                    f"life_span ({span / 1e9:g} s) must be greater than run_after "
                    f"({delay / 1e9:g} s) for a TIME_BOMB task"
                )
            typ = "t"
        elif task_type is TaskType.IMMEDIATE:
            if run_after is not None:
                duration_ns(run_after, "run_after", zero_ok=True)
            delay = 0
            typ = "i"
        else:
            raise TypeError(
                "task_type must be TaskType.IMMEDIATE or TaskType.TIME_BOMB, "
                f"got {safe_repr(task_type)}"
            )
        payload = self._encode(task_id, data)
        here = not self._producer_only and len(self._bucket) < self._max_bucket
        token = self._token_prefix + format(next(self._tokens), "x")
        delay_us = -(-delay // 1000)
        span_us = -(-span // 1000)
        if here:
            with self._lock:
                self._inflight[task_id] = self._inflight.get(task_id, 0) + 1
        try:
            reply = self._s_fill(
                args=[
                    self._prefix,
                    task_id,
                    token,
                    self.member if here else "",
                    typ,
                    delay_us,
                    span_us,
                    ex,
                    payload,
                    self._group_limit,
                ]
            )
            status = int(reply[0])
            if status == 0:
                if _text(reply[1]) != token:  # a retried call finds its own record
                    with self._lock:
                        self._rejected_duplicate += 1
                    raise TaskExists(f"task {safe_repr(task_id)} is already live in the group")
            elif status < 0:
                with self._lock:
                    self._rejected_full += 1
                raise BucketFull(
                    f"group {self.group!r} is full ({self._group_limit} live tasks): "
                    f"cannot fill {safe_repr(task_id)}"
                )
            if not here:
                with self._lock:
                    self._overflowed += 1
                return None
            rec = _Rec(task_id, token, data, typ, _text(reply[2]), _text(reply[3]), ex, payload)
            return self._place_filled(rec, task_type, delay, span)
        except _UNREACHABLE as exc:
            self._note_error(exc)
            if here:
                self._maybe_orphans = True  # the record may exist without its task
            raise RedisUnavailable(
                f"cannot fill {safe_repr(task_id)}: Redis unreachable ({exc})"
            ) from exc
        finally:
            if here:
                with self._lock:
                    left = self._inflight[task_id] - 1
                    if left:
                        self._inflight[task_id] = left
                    else:
                        del self._inflight[task_id]

    def drain(self, task_id: str) -> None:
        """Cancel a live task of the group, wherever it is. No hook runs for it.

        Here: as `TaskBucket.drain`. Waiting in Redis: removed. Held by another
        process: removed from the group at once (the id can be filled again),
        and that process drops it (or cancels its ``ctx``) as soon as it hears,
        normally within a round trip; no ending hook runs there.

        Raises:
            TaskNotFound: `task_id` is not live anywhere in the group.
            RedisUnavailable: Redis was needed and could not be reached.
        """
        if type(task_id) is not str:
            raise TypeError(f"task_id must be a str, got {type(task_id).__name__}")
        force = "0"
        for _attempt in range(3):
            if self._drain_here(task_id):
                return
            try:
                status, owner = self._s_drain(
                    args=[self._prefix, self.member, task_id, self._ledger, force]
                )
            except _UNREACHABLE as exc:
                self._note_error(exc)
                raise RedisUnavailable(
                    f"cannot drain {safe_repr(task_id)}: Redis unreachable ({exc})"
                ) from exc
            status = int(status)
            if status == 0:
                raise TaskNotFound(f"no live task {safe_repr(task_id)} in the group")
            if status == 1:
                with self._lock:
                    self._drained_remote += 1
                logger.debug(
                    "task %s drained in the group (held by %r)",
                    safe_repr(task_id),
                    _text(owner) or "Redis",
                )
                return
            # Redis says we hold it: a fill or claim here is putting it in the
            # local bucket right now. Look again; the last time, remove it
            # from Redis whatever it is (an orphan of a broken fill).
            with self._lock:
                if task_id not in self._local and not self._inflight.get(task_id):
                    force = "1"
            time.sleep(0.001)
        raise TaskNotFound(f"task {safe_repr(task_id)} could not be drained: it is being placed")

    def rescue(self) -> list[str]:
        """`TaskBucket.rescue` for the tasks this process holds; they leave the group."""
        return self._bucket.rescue()

    def close(
        self, *, wait: bool = True, timeout: float | None = None, rescue: bool = False
    ) -> None:
        """Leave the group. Idempotent.

        New fills are refused at once and this process claims nothing more;
        tasks waiting in Redis stay there for the other processes. The local
        bucket closes as `TaskBucket.close` says (`wait`, `timeout`,
        `rescue`); every task it held leaves the group. Heartbeats go on
        meanwhile, so the group does not presume this process dead.
        """
        # Checked before anything starts: a refused close() changes nothing.
        timeout = close_timeout(wait, timeout, rescue)
        with self._lock:
            first = not self._closing
            self._closing = True
        if not first:
            self._closed_event.wait()
            return
        try:
            self._bucket.close(wait=wait, timeout=timeout, rescue=rescue)
        finally:
            self._stopping = True
            self._wake.set()
            with contextlib.suppress(*_UNREACHABLE):
                self._redis.publish(self._my_channel, "")  # wakes the listener at once
            self._pump_thread.join(self._heartbeat + 5.0)
            self._sweep()
            try:
                self._s_leave(args=[self._prefix, self.member])
            except _UNREACHABLE as exc:
                logger.warning("group %r: could not leave cleanly: %s", self.group, exc)
            self._listen_thread.join(self._heartbeat + 5.0)
            if self._own_client:
                self._redis.close()
            _live_shared.discard(self)
            self._closed_event.set()

    def __enter__(self) -> SharedBucket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- introspection ------------------------------------------------------------

    def __len__(self) -> int:
        """Live tasks in this process's bucket."""
        return len(self._bucket)

    def __contains__(self, task_id: object) -> bool:
        """Is `task_id` live in this process? (`group_info` sees the whole group.)"""
        return task_id in self._bucket

    def get(self, task_id: str) -> TaskHandle | None:
        """The local handle of live task `task_id`, or None if it is not here."""
        return self._bucket.get(task_id)

    @property
    def local(self) -> TaskBucket:
        """This process's own bucket."""
        return self._bucket

    @property
    def closed(self) -> bool:
        return self._closing

    def stats(self) -> SharedStats:
        """This process's counters (no Redis round trip; see `group_info`)."""
        local = self._bucket.stats()
        with self._lock:
            return SharedStats(
                local=local,
                member=self.member,
                filled_local=self._filled_local,
                overflowed=self._overflowed,
                claimed=self._claimed,
                exhausted_on_claim=self._exhausted_on_claim,
                reaped=self._reaped,
                drained_remote=self._drained_remote,
                revoked=self._revoked,
                rejected_duplicate=self._rejected_duplicate,
                rejected_full=self._rejected_full,
                unreleased=len(self._unreleased),
                redis_errors=self._redis_errors,
                redis_resets=self._redis_resets,
                connected=self._online,
            )

    def group_info(self) -> GroupInfo:
        """The whole group, read from Redis: live tasks, queued tasks, members.

        Raises:
            RedisUnavailable: Redis could not be reached.
        """
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.scard(self._prefix + "ids")
            pipe.zrange(self._prefix + "m", 0, -1)
            pipe.smembers(self._prefix + "exs")
            live, members, names = pipe.execute()
            queued = 0
            if names:
                pipe = self._redis.pipeline(transaction=False)
                for name in names:
                    pipe.zcard(self._prefix + "q:" + _text(name))
                queued = sum(int(n) for n in pipe.execute())
        except _UNREACHABLE as exc:
            raise RedisUnavailable(f"cannot read group {self.group!r}: {exc}") from exc
        return GroupInfo(int(live), queued, tuple(sorted(_text(m) for m in members)))

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<SharedBucket {self.group!r} {self.member} {state} live={len(self)}>"

    # -- fill and drain, the local part -------------------------------------------

    def _wrap(self, executor: object, what: str) -> tuple[_Wrapper, _Wrapper]:
        try:
            return (
                _Wrapper(self, executor, doomed=False),
                _Wrapper(self, executor, doomed=True),
            )
        except TypeError as exc:
            raise TypeError(f"{what}: {exc}") from None

    def _executor_name(self, executor: object) -> str:
        # A producer runs nothing: any name will do, some other process has it.
        if executor is None:
            if "" not in self._wrappers and not self._producer_only:
                raise ValueError(
                    "no executor: pass executor= to SharedBucket(), or the name of one of "
                    "its executors= to fill()"
                )
            return ""
        if isinstance(executor, str):
            if not executor or " " in executor:
                raise ValueError(f"bad executor name {executor!r}")
            if executor not in self._wrappers and not self._producer_only:
                raise ValueError(f"unknown executor name {executor!r}: known are {self._names!r}")
            return executor
        for name, (wrapper, _) in self._wrappers.items():
            if wrapper.user is executor:
                return name
        raise TypeError(
            "a shared task's executor must be the name of one given to executors= (an "
            "executor object cannot travel to another process), got "
            f"{type(executor).__name__}"
        )

    def _encode(self, task_id: str, data: Any) -> bytes | str:
        try:
            payload = self._serializer.dumps(data)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            kind = ValueError if isinstance(exc, ValueError) else TypeError
            raise kind(
                f"data of task {safe_repr(task_id)} cannot be serialized with "
                f"{self._serializer!r}: {exc}"
            ) from exc
        if not isinstance(payload, (bytes, str)):
            raise TypeError(
                f"serializer {self._serializer!r} returned {type(payload).__name__}, "
                "not bytes or str"
            )
        return payload

    def _place_filled(
        self, rec: _Rec, task_type: TaskType, delay: int, span: int
    ) -> TaskHandle | None:
        """Put a task just recorded in Redis as ours into the local bucket."""
        wrapper = self._wrappers[rec.ex][0]
        task_id = rec.id
        failure: BaseException | None = None
        with self._lock:
            stale = self._local.get(task_id)
            if stale is not None:
                # Redis no longer knows that one (drained by another process,
                # whose word has not reached us yet): it is gone.
                self._drop_revoked(stale)
            self._local[task_id] = rec
            try:
                if task_type is TaskType.TIME_BOMB:
                    handle = self._bucket.fill(
                        task_type,
                        task_id,
                        rec,
                        wrapper,
                        run_after=delay / 1e9,
                        life_span=span / 1e9,
                    )
                else:
                    handle = self._bucket.fill(
                        task_type, task_id, rec, wrapper, life_span=span / 1e9
                    )
            except BucketFull:
                del self._local[task_id]
                handle = None
            except BaseException as exc:
                del self._local[task_id]
                failure = exc
            else:
                rec.handle = handle
                self._filled_local += 1
        if failure is not None:  # BucketClosed, or an id the local bucket holds outside the group
            self._release_quietly(rec)
            raise failure
        if handle is not None:
            return handle
        # The local bucket filled up since we looked: hand the task to the group.
        try:
            self._s_requeue(args=[self._prefix, self.member, task_id, rec.token])
        except _UNREACHABLE as exc:
            self._note_error(exc)
            self._maybe_orphans = True  # the pump requeues it when Redis is back
        with self._lock:
            self._overflowed += 1
        return None

    def _release_quietly(self, rec: _Rec) -> None:
        try:
            self._s_release(args=[self._prefix, self.member, rec.id, rec.token, "", 0])
        except _UNREACHABLE as exc:
            self._note_error(exc)
            self._maybe_orphans = True

    def _drain_here(self, task_id: str) -> bool:
        """Drain `task_id` if this process holds it; False if it does not."""
        with self._lock:
            rec = self._local.get(task_id)
            if rec is None or rec.revoked:
                return False
            handle = rec.handle
            if handle is None or self._bucket.get(task_id) is not handle:
                # It ended here; its release is on its way (or waits for Redis).
                raise TaskNotFound(f"no live task {safe_repr(task_id)}")
            self._bucket.drain(task_id)  # TaskNotFound if it just ended
        self._end(rec, "drained")
        return True

    def _drop_revoked(self, rec: _Rec) -> None:
        """Another process took `rec` away: forget it and drop its local task. Under _lock."""
        rec.revoked = True
        if self._local.get(rec.id) is rec:
            del self._local[rec.id]
        self._revoked += 1
        handle = rec.handle
        if handle is not None and self._bucket.get(rec.id) is handle:
            with contextlib.suppress(TaskNotFound):
                self._bucket.drain(rec.id)

    def _may_start(self, rec: _Rec) -> bool:
        """May `rec`'s on_execute start? False if it was taken from this process.

        Cheap while our heartbeats are fresh. After a pause (or while Redis
        is unreachable) the group may have presumed us dead and taken the
        task before we heard of it: then ask Redis (one round trip). If Redis
        cannot answer, the task starts: availability wins, see docs/shared.md.
        """
        if rec.revoked:
            return False
        if time.monotonic() < self._lease_until or not self._online:
            return True  # fresh; or Redis is down, we cannot know: availability wins
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(self._prefix + "t:" + rec.id, "tok", "own")
            pipe.hget(self._prefix + "meta", "nonce")
            (tok, own), nonce = pipe.execute()
        except _UNREACHABLE:
            return True
        if nonce is not None and _text(nonce) != self._nonce:
            return True  # Redis lost the group; the pump records our tasks again
        if tok is not None and _text(tok) == rec.token and _text(own) == self.member:
            return True
        with self._lock:
            if not rec.revoked:
                rec.revoked = True
                self._revoked += 1
        logger.debug("task %s was taken from this process before it started", safe_repr(rec.id))
        return False

    # -- endings --------------------------------------------------------------------

    def _end(self, rec: _Rec, ending: str) -> bool:
        """A shared task ended here: take it out of the group. True: run its hook.

        Called from the wrapper's ending hooks (on a worker) and from drain.
        """
        if rec.revoked:
            with self._lock:
                self._forget(rec)
            return False
        if self._online:
            try:
                status = int(
                    self._s_release(
                        args=[self._prefix, self.member, rec.id, rec.token, ending, self._ledger]
                    )
                )
            except _UNREACHABLE as exc:
                self._note_error(exc)
            else:
                return self._released(rec, status)
        # Redis is down: run the hook now, tell Redis when it is back (the pump
        # retries), and do not make every ending wait for a socket timeout.
        rec.ending = ending
        with self._lock:
            self._unreleased.append(rec)
        return True

    def _released(self, rec: _Rec, status: int) -> bool:
        if status == 0 or (status < 0 and rec.revoked):
            with self._lock:
                if not rec.revoked:
                    rec.revoked = True
                    self._revoked += 1
                self._forget(rec)
            logger.debug("task %s was taken from this process; no hook here", safe_repr(rec.id))
            return False
        if status < 0:
            logger.warning(
                "task %s ended here but Redis had no record of it (did Redis lose its data?)",
                safe_repr(rec.id),
            )
        with self._lock:
            self._forget(rec)
        return True

    def _forget(self, rec: _Rec) -> None:
        """Under _lock: `rec` has left the group; a claim may use its room."""
        if self._local.get(rec.id) is rec:
            del self._local[rec.id]
        if self._backlog:
            self._wake.set()

    def _note_error(self, exc: BaseException) -> None:
        with self._lock:
            self._redis_errors += 1
        if self._online:
            self._online = False
            self._connected_since = _INF
            logger.warning("group %r: Redis unreachable: %s", self.group, exc)
        self._wake.set()

    # -- the pump: one thread per process that talks to the group --------------------

    def _pump(self) -> None:
        """Heartbeats, claims, revocations and recovery, until close()."""
        next_beat = time.monotonic() + self._heartbeat
        next_scan = time.monotonic() + 30 * self._dead_after
        retry_at = 0.0
        backoff = 0.05
        # This 'while' loop right here is the group layer of this process.
        while True:
            now = time.monotonic()
            target = retry_at if not self._online else min(next_beat, self._next_claim)
            if target > now:
                self._wake.wait(target - now)
            self._wake.clear()
            if self._stopping:
                break
            now = time.monotonic()
            if not self._online and now < retry_at:
                continue
            try:
                if not self._online or now >= next_beat:
                    self._beat(reap=True)
                    next_beat = time.monotonic() + self._heartbeat
                if self._unreleased:
                    self._flush_releases()
                if self._maybe_orphans or now >= next_scan:
                    self._scan_orphans()
                    next_scan = time.monotonic() + 30 * self._dead_after
                self._round()
                backoff = 0.05
            except _UNREACHABLE as exc:
                self._note_error(exc)
                retry_at = time.monotonic() + backoff
                backoff = min(backoff * 2, self._heartbeat)
            except Exception:  # a bug: say so, and keep the group alive
                logger.exception("group %r: the shared-bucket pump failed", self.group)
                self._next_claim = time.monotonic() + self._heartbeat
                next_beat = min(next_beat, self._next_claim)
        # Last releases before the sweep in close().
        try:
            if self._unreleased:
                self._flush_releases()
        except _UNREACHABLE:
            pass

    def _beat(self, *, reap: bool) -> None:
        sent = time.monotonic()
        _now_us, nonce, was = self._s_heartbeat(
            args=[self._prefix, self.member, secrets.token_hex(8)]
        )
        nonce = _text(nonce)
        if not self._online:
            self._online = True
            self._connected_since = time.monotonic()
            self._maybe_orphans = True
            self._wake.set()
            logger.warning("group %r: Redis reachable again", self.group)
        if not self._nonce:
            self._nonce = nonce
        elif nonce != self._nonce:
            self._nonce = nonce
            self._on_reset()
        elif not int(was):
            logger.error(
                "group %r: this process was presumed dead (no heartbeat for %g s); "
                "the tasks taken from it end elsewhere",
                self.group,
                self._dead_after,
            )
            # Apply the revocations before the lease lets tasks start unchecked.
            self._round()
        self._lease_until = sent + _LEASE * self._dead_after
        if reap and time.monotonic() - self._connected_since >= self._dead_after:
            reaped, gone = self._s_reap(
                args=[
                    self._prefix,
                    self.member,
                    round(self._dead_after * 1e6),
                    _REAP_BATCH,
                    _CTL_TTL,
                ]
            )
            reaped = int(reaped)
            if reaped or gone:
                with self._lock:
                    self._reaped += reaped
                logger.warning(
                    "group %r: %d tasks of dead members %s will end EXHAUSTED",
                    self.group,
                    reaped,
                    [_text(m) for m in gone] or "(still being reaped)",
                )

    def _on_reset(self) -> None:
        """Redis lost the group (restarted without persistence): record our tasks again."""
        with self._lock:
            self._redis_resets += 1
            recs = [r for r in self._local.values() if r.handle is not None and not r.revoked]
        logger.error(
            "group %r: Redis lost the group's state (restarted without persistence?); "
            "tasks that were waiting in Redis are lost; recording the %d tasks held here again",
            self.group,
            len(recs),
        )
        pipe = self._redis.pipeline(transaction=False)
        for rec in recs:
            self._s_restore(
                args=[
                    self._prefix,
                    self.member,
                    rec.id,
                    rec.token,
                    rec.typ,
                    rec.due,
                    rec.dl,
                    rec.ex,
                    rec.payload,
                ],
                client=pipe,
            )
        pipe.execute()
        # A task that ended meanwhile found no record to release: take out the
        # one just restored for it, or it would look orphaned and run again.
        with self._lock:
            gone = [rec for rec in recs if self._local.get(rec.id) is not rec]
        for rec in gone:
            self._release_quietly(rec)

    def _flush_releases(self) -> None:
        with self._lock:
            recs, self._unreleased = self._unreleased, []
        try:
            replies = self._release_pipe(recs)
        except BaseException:
            with self._lock:
                self._unreleased[:0] = recs
            raise
        for rec, status in zip(recs, replies, strict=True):
            self._released(rec, int(status))

    def _scan_orphans(self) -> None:
        """Records Redis says we hold but we do not (a fill broken mid-way): requeue them."""
        self._maybe_orphans = False
        ids = [_text(i) for i in self._redis.smembers(self._prefix + "by:" + self.member)]
        with self._lock:
            orphans = [i for i in ids if i not in self._local and not self._inflight.get(i)]
        if not orphans:
            return
        pipe = self._redis.pipeline(transaction=False)
        for task_id in orphans:
            self._s_requeue(args=[self._prefix, self.member, task_id, ""], client=pipe)
        moved = sum(int(x) for x in pipe.execute())
        if moved:
            logger.warning(
                "group %r: %d orphaned tasks handed back to the group", self.group, moved
            )

    def _room(self) -> int:
        if self._closing or self._producer_only:
            return 0
        return max(0, min(self._max_bucket - len(self._bucket), self._claim_batch))

    def _round(self) -> None:
        """Claim what fits, apply revocations, and decide when to look again."""
        room = self._room()
        lookahead_us = round(self._heartbeat * 1e6)
        now_us, next_us, ctl, items = self._s_claim(
            args=[self._prefix, self.member, room, lookahead_us, _CTL_BATCH, *self._names]
        )
        if ctl:
            self._apply_revocations(ctl)
        now = int(now_us)
        taken = len(items) // 8
        put_back = self._take(now, items) if items else 0
        nxt = int(next_us)
        if nxt < 0:
            self._backlog = False
            self._next_claim = _INF
        elif nxt <= now + lookahead_us:
            # More is due than we took: take more at once if there is room,
            # else when a task here ends (the backlog flag wakes us).
            self._backlog = True
            if put_back or taken < room:
                # Some did not fit after all, or the queue holds records we
                # may not take: look again a little later, not in a loop.
                self._next_claim = time.monotonic() + min(0.05, self._heartbeat)
            else:
                self._next_claim = 0.0 if self._room() else _INF
        else:
            self._backlog = False
            self._next_claim = time.monotonic() + (nxt - lookahead_us - now) / 1e6
        if len(ctl) >= _CTL_BATCH:
            self._next_claim = 0.0

    def _apply_revocations(self, ctl: list[Any]) -> None:
        entries = [_text(e) for e in ctl]
        with self._lock:
            taken = []
            for entry in entries:
                token, _, task_id = entry.partition(" ")
                rec = self._local.get(task_id)
                if rec is not None and rec.token == token and not rec.revoked:
                    # All flagged before any is dropped: cancelling a running
                    # one frees a worker, which must not start another of them.
                    rec.revoked = True
                    taken.append(rec)
            for rec in taken:
                self._drop_revoked(rec)
        # Only now, so that a release racing with this finds either the entry
        # or the revoked flag.
        pipe = self._redis.pipeline(transaction=False)
        for entry in entries:
            pipe.lrem(self._prefix + "ctl:" + self.member, 1, entry)
        pipe.execute()

    def _take(self, now_us: int, items: list[Any]) -> int:
        """Put claimed tasks into the local bucket; hand back (and count) what does not fit."""
        back: list[_Rec] = []
        for i in range(0, len(items), 8):
            task_id, token, typ, due, dl, ex, payload, doom = items[i : i + 8]
            rec = _Rec(
                _text(task_id),
                _text(token),
                None,
                _text(typ),
                _text(due),
                _text(dl),
                _text(ex),
                payload,
            )
            try:
                rec.data = self._serializer.loads(payload)
            except Exception as exc:
                rec.error = ValueError(
                    f"data of task {safe_repr(rec.id)} cannot be decoded with "
                    f"{self._serializer!r}: {exc}"
                )
            due_us, dl_us = int(rec.due), int(rec.dl)
            doomed = _text(doom) == "1" or dl_us <= now_us
            normal, doomed_wrapper = self._wrappers[rec.ex]
            with self._lock:
                if rec.id in self._local:
                    back.append(rec)
                    continue
                self._local[rec.id] = rec
                try:
                    if doomed:
                        handle = self._bucket.fill(
                            TaskType.IMMEDIATE, rec.id, rec, doomed_wrapper, life_span=_DOOMED_SPAN
                        )
                    elif due_us > now_us:
                        handle = self._bucket.fill(
                            TaskType.TIME_BOMB,
                            rec.id,
                            rec,
                            normal,
                            run_after=(due_us - now_us) / 1e6,
                            life_span=(dl_us - now_us) / 1e6,
                        )
                    else:
                        handle = self._bucket.fill(
                            TaskType.IMMEDIATE,
                            rec.id,
                            rec,
                            normal,
                            life_span=(dl_us - now_us) / 1e6,
                        )
                except (BucketFull, BucketClosed, TaskExists, ValueError):
                    del self._local[rec.id]
                    back.append(rec)
                    continue
                rec.handle = handle
                self._claimed += 1
                if doomed:
                    self._exhausted_on_claim += 1
        if back:
            pipe = self._redis.pipeline(transaction=False)
            for rec in back:
                self._s_requeue(args=[self._prefix, self.member, rec.id, rec.token], client=pipe)
            pipe.execute()
        return len(back)

    def _sweep(self) -> None:
        """At close: tasks drained by the local close, and pending releases, leave the group."""
        with self._lock:
            recs = [r for r in self._local.values() if not r.revoked] + [
                r for r in self._unreleased if r.id not in self._local
            ]
            self._unreleased = []
            for rec in recs:
                if not rec.ending:
                    rec.ending = "drained"
        if not recs:
            return
        deadline = time.monotonic() + self._heartbeat + 2.0
        while (error := self._release_all(recs)) is not None:
            if time.monotonic() >= deadline:
                logger.error(
                    "group %r: %d tasks could not be taken out of the group (%s); "
                    "the other processes will end them EXHAUSTED after %g s",
                    self.group,
                    len(recs),
                    error,
                    self._dead_after,
                )
                return
            time.sleep(0.1)
        with self._lock:
            for rec in recs:
                self._forget(rec)

    def _release_pipe(self, recs: list[_Rec]) -> list[Any]:
        """Release `recs` with their recorded endings in one round trip; the replies."""
        pipe = self._redis.pipeline(transaction=False)
        for rec in recs:
            self._s_release(
                args=[self._prefix, self.member, rec.id, rec.token, rec.ending, self._ledger],
                client=pipe,
            )
        return list(pipe.execute())

    def _release_all(self, recs: list[_Rec]) -> BaseException | None:
        """Release `recs` with their recorded endings; the error if Redis is unreachable."""
        try:
            self._release_pipe(recs)
        except _UNREACHABLE as exc:
            return exc
        return None

    # -- the listener: wakes the pump when Redis has news ------------------------

    def _listen(self) -> None:
        pubsub: Any = None
        backoff = 0.05
        while not self._stopping:
            try:
                if pubsub is None:
                    pubsub = cast(Any, self._redis).pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self._wake_channel, self._my_channel)
                    # News may have come while we were not listening.
                    self._wake.set()
                message = pubsub.get_message(timeout=self._heartbeat)
                backoff = 0.05
                if message is None:
                    continue
                if _text(message["channel"]) == self._my_channel or self._room():
                    self._wake.set()
                else:
                    self._backlog = True
            except Exception as exc:
                if not isinstance(exc, _UNREACHABLE):
                    logger.exception("group %r: the listener failed", self.group)
                if pubsub is not None:
                    _close_quietly(pubsub)
                    pubsub = None
                if self._stopping:
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, self._heartbeat)
        if pubsub is not None:
            _close_quietly(pubsub)


def _seconds(value: object, name: str) -> float:
    return duration_ns(value, name, zero_ok=False) / 1e9


def _close_quietly(pubsub: Any) -> None:
    with contextlib.suppress(Exception):  # it is going away either way
        pubsub.close()


# -- fork safety ---------------------------------------------------------------------

_live_shared: weakref.WeakSet[SharedBucket] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: its shared buckets are closed."""
    for shared in list(_live_shared):
        shared._lock = threading.RLock()
        shared._closing = True
        shared._stopping = True
        shared._local.clear()
        shared._unreleased.clear()
        shared._closed_event.set()
    _live_shared.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

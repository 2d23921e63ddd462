"""`SharedBucket`: a `TaskBucket` that overflows into, and takes work from, a group on Redis.

It checks arguments, places fills (here or in the group), drains and resets, and
puts the pieces together: the `GroupStore` (Redis), the `Holdings` (what this
process holds), the `Pump` and the `Listener` (its two threads). It uses the
local bucket through `TaskBucket`'s public API only.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import redis
from redis.cluster import RedisCluster

from .._args import close_timeout, duration_ns, positive_int, task_id_arg
from .._log import safe_repr
from ..bucket import TaskBucket
from ..clock import MonotonicClock
from ..errors import BucketClosed, TaskNotFound
from ..executor import HookPlan
from ..task import TaskHandle, TaskType
from . import forks
from .connect import connect, durable_fills
from .errors import REDIS_FAILED, UNREACHABLE, TaskOutOfReach
from .handback import HandbackStore
from .helpers import _plan, _reset_refused, _seconds
from .listener import Listener, Subscription
from .placing import Filler
from .pump import Pump
from .records import Holdings
from .rollback import Rollback, RollbackReport
from .serializer import JSONSerializer, Serializer
from .stats import GroupInfo, SharedStats
from .store import Drained, GroupStore, Reset

__all__ = ["SharedBucket"]

logger = logging.getLogger("wheelbucket.redis")

# Tries of drain() and reset() on a task Redis says this process holds, while it
# is being placed here.
_DRAIN_ATTEMPTS = 3
# Endings each process remembers, to delete them again after a rollback
# (a few MB; seconds of endings at thousands per second: a replica's lag).
_REMEMBER = 20_000


class SharedBucket:
    """A `TaskBucket` that overflows into, and takes work from, a group on Redis.

    Args:
        group: the group's name; every process that uses the same name on the
            same Redis server shares one bucket.
        client: a ``redis.Redis`` (a Sentinel ``master_for`` one too), a
            ``RedisCluster``, or a URL to build one with `timeout`:
            ``redis://host:port/db``, ``redis+cluster://host:port[,...]``,
            ``redis+sentinel://host:port[,...]/master_name[/db]`` (connect.py).
            A client you pass should have socket timeouts set, or a fill may
            wait for a hung server.
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
        min_replicas: a fill returns only once this many replicas have it
            (WAIT, up to `timeout`; else `RedisUnavailable`, outcome unknown),
            so an acknowledged fill survives a failover. Not on a cluster.
        on_rollback: called with a `RollbackReport` when Redis lost writes
            this process relied on (failover, old snapshot); also logged.

    Raises:
        RedisUnavailable: Redis cannot be reached to join the group.
        TypeError, ValueError: a bad argument; the message names it.
    """

    def __init__(
        self,
        group: str,
        client: redis.Redis | RedisCluster | str,
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
        min_replicas: int | None = None,
        on_rollback: Callable[[RollbackReport], object] | None = None,
    ) -> None:
        if not isinstance(group, str) or not group:
            raise TypeError(f"group must be a non-empty str, got {safe_repr(group)}")
        if "{" in group or "}" in group:
            raise ValueError(f"group must not contain braces, got {group!r}")
        self._heartbeat = _seconds(heartbeat, "heartbeat")
        dead_after_s = (
            5 * self._heartbeat if dead_after is None else _seconds(dead_after, "dead_after")
        )
        if dead_after_s <= self._heartbeat:
            raise ValueError(
                f"dead_after ({dead_after_s:g} s) must be longer than heartbeat "
                f"({self._heartbeat:g} s)"
            )
        timeout = _seconds(timeout, "timeout")
        self._group_limit = 0 if group_limit is None else positive_int(group_limit, "group_limit")
        ledger = 0 if ledger is None else positive_int(ledger, "ledger")
        claim_batch = positive_int(claim_batch, "claim_batch")
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

        self._redis, self._own_client = connect(client, timeout)

        # The user's executors by name ('' for the default one).
        self._plans: dict[str, HookPlan] = {}
        if executor is not None:
            self._plans[""] = _plan(executor, "executor")
        for ex_name, ex in (executors or {}).items():
            if not isinstance(ex_name, str) or not ex_name or " " in ex_name:
                raise ValueError(
                    f"executor names must be non-empty str without spaces, got {ex_name!r}"
                )
            self._plans[ex_name] = _plan(ex, f"executors[{ex_name!r}]")
        self._names = sorted(self._plans)

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
        if not isinstance(bucket.clock, MonotonicClock):
            raise ValueError("local: a SharedBucket runs on real time, not on a test clock")
        self._bucket = bucket
        self._max_bucket = bucket.max_bucket
        self._life_span_ns = duration_ns(bucket.life_span, "life_span", zero_ok=False)
        self._run_after_ns = duration_ns(bucket.run_after, "run_after", zero_ok=True)

        self.group = group
        self.member = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self._store = GroupStore(
            self._redis, group, self.member, ledger=ledger, limit=self._group_limit
        )
        if min_replicas is not None:  # docs/shared.md, Failures
            n = positive_int(min_replicas, "min_replicas")
            durable_fills(self._store, self._redis, n, timeout)
        self._rollback = Rollback(
            self._store,
            self._redis,
            on_rollback=on_rollback,
            remember=_REMEMBER,
            settle=2 * self._heartbeat,
        )
        self._holdings = Holdings(bucket)
        # After Redis became another server process, claim nothing before every
        # member checked its epoch, nor for 2 heartbeats: a live member that is
        # not in the registry heartbeats within them (gate.py).
        self._store.gate.configure(
            dead_after=dead_after_s, hold=2 * self._heartbeat, held=self._holdings.held
        )
        self._pump = Pump(
            self._store,
            self._holdings,
            bucket,
            serializer,
            self._plans,
            heartbeat=self._heartbeat,
            dead_after=dead_after_s,
            claim_batch=claim_batch,
            claiming=not producer_only,
            rollback=self._rollback,
        )
        self._filler = Filler(
            self._store,
            self._holdings,
            self._pump,
            bucket,
            serializer,
            self._plans,
            producer_only=producer_only,
            group_limit=self._group_limit,
            dead_after=dead_after_s,
            heartbeat=self._heartbeat,
            run_after_ns=self._run_after_ns,
            life_span_ns=self._life_span_ns,
        )
        self._listener = Listener(
            lambda: Subscription(self._redis, *self._store.channels()),
            self._pump.heard,
            group=group,
            heartbeat=self._heartbeat,
        )
        # Orders close() against close(); never held across a call.
        self._close_lock = threading.Lock()
        self._closing = False
        self._closed_event = threading.Event()

        try:
            self._pump.first_beat()
        except REDIS_FAILED as exc:
            if self._own_client:
                self._redis.close()
            if local is not bucket:
                bucket.close(wait=False)
            # The store's error, said of the join, chained to the client's.
            raise type(exc)(f"cannot join group {group!r}: {exc}") from exc.__cause__
        self._pump.start()
        self._listener.start()
        forks.track(self)

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
        fill_token: str | None = None,
    ) -> TaskHandle | None:
        """Put a task in the group: here if the local bucket has room, else in Redis.

        Args are those of `TaskBucket.fill`, but `executor` is the *name* of
        an executor given to ``executors=`` (or that executor object itself);
        None picks the default executor. `data` must pass the serializer.
        `fill_token` (a str without whitespace) makes the fill idempotent:
        a fill of the same id with the same token, while the first one's task
        is live, returns the first one's outcome and runs nothing twice. By
        default each fill gets a new token; a failed fill's error carries it
        (``exc.fill_token``) for the retry.

        Returns:
            The local `TaskHandle` when the task was placed in this process,
            None when it overflowed into Redis (any process may run it).

        Raises:
            TaskExists: `task_id` is live anywhere in the group (under
                another fill token).
            BucketFull: the group is at `group_limit` (only with a limit).
            BucketClosed: close() has begun.
            RedisUnavailable: Redis could not be reached; nothing was placed
                here (see `RedisUnavailable` for the uncertain case).
            RedisServerError: Redis refused it (out of memory...); nothing stored.
            UnknownExecutor: no live member of the group runs that executor.
            TypeError, ValueError: a bad argument, or data the serializer
                refuses; nothing is stored.
        """
        if self._closing:
            raise BucketClosed(f"shared bucket is closed: cannot fill {safe_repr(task_id)}")
        return self._filler.fill(
            task_type,
            task_id,
            data,
            executor,
            run_after=run_after,
            life_span=life_span,
            fill_token=fill_token,
        )

    def fill_many(self, items: Iterable[Any]) -> list[TaskHandle | BaseException | None]:
        """Fill many tasks in one round trip to Redis; an outcome per item, in order.

        Each item is a tuple ``(task_type, task_id[, data[, executor]])`` or a
        mapping of `fill`'s argument names (``task_type``, ``task_id``,
        ``data``, ``executor``, ``run_after``, ``life_span``, ``fill_token``).
        The first items go to the local bucket while it has room, the rest
        to the group, as `fill` would place them one by one.

        Returns:
            Per item: its local `TaskHandle`, None when it went to the group,
            or the exception `fill` would have raised for it alone
            (`TaskExists`, `BucketFull` at the group limit, `UnknownExecutor`,
            TypeError/ValueError...); nothing is stored for such an item.

        Raises:
            BucketClosed: close() has begun; nothing is stored.
            RedisUnavailable, RedisServerError: the batch failed as a whole
                (its outcome may be unknown: ``exc.fill_tokens`` holds each
                item's token, None for the refused ones, to retry with).
        """
        if self._closing:
            raise BucketClosed("shared bucket is closed: cannot fill")
        return self._filler.fill_many(items)

    def drain(self, task_id: str) -> None:
        """Cancel a live task of the group, wherever it is. No hook runs for it.

        Here: as `TaskBucket.drain`. Waiting in Redis: removed. Held by another
        process: removed from the group at once (the id can be filled again),
        and that process drops it (or cancels its ``ctx``) as soon as it hears,
        normally within a round trip; no ending hook runs there.

        Raises:
            TaskNotFound: `task_id` is not live anywhere in the group.
            TaskOutOfReach: it is live, but being placed in this process at
                that very moment (a fill or a claim in flight); try again.
            RedisUnavailable: Redis was needed and could not be reached.
            TypeError, ValueError: `task_id` is not a non-empty str (checked
                before any Redis call).
        """
        task_id = task_id_arg(task_id)
        force = False
        for _attempt in range(_DRAIN_ATTEMPTS):
            rec = self._holdings.drain_here(task_id)
            if rec is not None:
                self._pump.end(rec, "drained")
                return
            try:
                reply = self._store.drain(task_id, force=force)
            except REDIS_FAILED as exc:
                self._pump.note_error(exc)
                raise
            if reply.status is Drained.UNKNOWN:
                raise TaskNotFound(f"no live task {safe_repr(task_id)} in the group")
            if reply.status is Drained.DRAINED:
                self._holdings.count_drained_remote()
                logger.debug(
                    "task %s drained in the group (held by %r)",
                    safe_repr(task_id),
                    reply.owner or "Redis",
                )
                return
            # Redis says we hold it: a fill or claim here is putting it in the
            # local bucket right now. Look again; the last time, remove it
            # from Redis whatever it is (an orphan of a broken fill).
            if not self._holdings.knows(task_id):
                force = True
            time.sleep(0.001)
        # It is live (Redis says this process holds it): not a TaskNotFound.
        raise TaskOutOfReach(
            f"task {safe_repr(task_id)} could not be drained: it is being placed in this "
            "process right now (by a fill or a claim); try again",
            task_id=task_id,
            owner=self.member,
        )

    def reset(
        self,
        task_id: str,
        *,
        run_after: float | datetime.timedelta | None = None,
        life_span: float | datetime.timedelta | None = None,
    ) -> TaskHandle | None:
        """Move a live task's timers without ending it, here or while it waits in Redis.

        Held here: `TaskBucket.reset` with the filled durations as defaults;
        returns the local handle. Waiting in Redis: moved atomically; returns
        None. Raises TaskNotFound (live nowhere), TaskOutOfReach (live but
        out of reach from here; nothing changed), RedisUnavailable, and
        TypeError / ValueError as `TaskBucket.reset`. docs/shared.md, reset.
        """
        task_id = task_id_arg(task_id)
        delay = None if run_after is None else duration_ns(run_after, "run_after", zero_ok=True)
        span = None if life_span is None else duration_ns(life_span, "life_span", zero_ok=False)
        if delay is not None and span is not None and span <= delay:
            raise ValueError(
                f"life_span ({span / 1e9:g} s) must be greater than run_after "
                f"({delay / 1e9:g} s) for a TIME_BOMB task"
            )
        for _attempt in range(_DRAIN_ATTEMPTS):
            handle = self._holdings.reset_here(task_id, run_after, life_span)
            if handle is not None:
                # Remembered for a hand-back at close (the record keeps the old times).
                self._holdings.note_moved(task_id, run_after, life_span)
                return handle
            try:
                reply = self._store.reset(
                    task_id,
                    delay_us=-1 if delay is None else -(-delay // 1000),
                    span_us=-1 if span is None else -(-span // 1000),
                )
            except REDIS_FAILED as exc:
                self._pump.note_error(exc)
                raise
            status = reply.status
            if status is Reset.MOVED:
                self._holdings.count_reset_remote()
                logger.debug(
                    "task %s reset in the group: due in %g s, life span %g s",
                    safe_repr(task_id),
                    reply.delay_us / 1e6,
                    reply.span_us / 1e6,
                )
                return None
            if status is not Reset.HELD_HERE:
                raise _reset_refused(task_id, reply)
            # Redis says we hold it: a fill or claim here is placing it right
            # now (or handing it back). Look again.
            time.sleep(0.001)
        raise TaskOutOfReach(
            f"task {safe_repr(task_id)} could not be reset: it is being placed in this "
            "process right now (by a fill or a claim); try again",
            task_id=task_id,
            owner=self.member,
        )

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
        `rescue`), but what it would drain and never started here goes back
        to the group's queue instead (unless `rescue`), to run on another
        process; every other task it held leaves the group. Heartbeats go on
        meanwhile, so the group does not presume this process dead.
        """
        # Checked before anything starts: a refused close() changes nothing.
        timeout = close_timeout(wait, timeout, rescue)
        with self._close_lock:
            first = not self._closing
            self._closing = True
        if not first:
            self._closed_event.wait()
            return
        self._pump.stop_claiming()
        try:
            self._bucket.close(wait=wait, timeout=timeout, rescue=rescue)
        finally:
            self._pump.stop()
            self._listener.stop()
            with contextlib.suppress(*UNREACHABLE):
                self._store.wake_me()  # wakes the listener at once
            self._pump.join(self._heartbeat + 5.0)
            self._pump.sweep()
            try:
                self._store.leave()
            except UNREACHABLE as exc:
                logger.warning("group %r: could not leave cleanly: %s", self.group, exc)
            self._store.hang_up()
            self._listener.join(self._heartbeat + 5.0)
            if self._own_client:
                self._redis.close()
            forks.untrack(self)
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
        """The local handle of live task `task_id`, or None if it is not here.

        Raises TypeError or ValueError, as `TaskBucket.get`, for a `task_id`
        that is not a non-empty str.
        """
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
        stats = self._holdings.stats(
            self._bucket.stats(), self.member, connected=self._pump.connected
        )
        rb = self._rollback
        return replace(stats, redis_rollbacks=rb.rollbacks, may_run_twice=rb.may_run_twice)

    def group_info(self) -> GroupInfo:
        """The whole group, read from Redis: live tasks, queued tasks, members.

        Raises:
            RedisUnavailable: Redis could not be reached.
            RedisServerError: Redis answered with an error.
        """
        return HandbackStore(self._store).with_counts(self._store.group_info())

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<SharedBucket {self.group!r} {self.member} {state} live={len(self)}>"

    # -- internals ----------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """A forked child has none of the parent's threads: this bucket is closed there."""
        self._holdings.after_fork_in_child()
        self._close_lock = threading.Lock()
        self._closing = True
        self._pump.after_fork_in_child()
        self._listener.stop()
        self._closed_event.set()

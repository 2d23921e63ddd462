"""The group's side in Redis: its keys, its Lua scripts, one method per protocol step.

A `GroupStore` is one member's view of one group. Each method is one round
trip (a script, or a pipeline of them) with typed arguments and a typed
reply, in the manner of APScheduler 4's ``DataStore``; it raises what the
client raises (`UNREACHABLE` for "Redis cannot be reached"). The scripts are
the ``lua/*.lua`` files next to this module: each says what its ARGV are and
what it returns; every script that changes the group is atomic.

Keys of group G (all share the hash tag {G}, so they live in one slot)::

    wb:{G}:t:<id>        HASH   the task: tok own typ due dl ex d ra ls [doom]
    wb:{G}:ids           SET    ids of the live tasks of the group
    wb:{G}:q:<ex>        ZSET   queued tasks for executor name <ex>, by due time
    wb:{G}:exs           SET    executor names ever used (which q:<ex> exist)
    wb:{G}:by:<member>   SET    ids held by a member
    wb:{G}:m             ZSET   members, by their last heartbeat
    wb:{G}:ctl:<member>  LIST   "tok id" of tasks taken away from a member
    wb:{G}:meta          HASH   nonce (changes when Redis lost the group)
    wb:{G}:ledger        STREAM every ending (optional)

Channels: ``wb:{G}:wake`` (a task was queued), ``wb:{G}:wake:<member>``
(a revocation for that member). Times are whole microseconds of the Redis
server's clock (TIME), so that deadlines mean the same in every process.
"""

from __future__ import annotations

import contextlib
import enum
import secrets
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, NamedTuple, cast

import redis

from .stats import GroupInfo

__all__ = [
    "Beat",
    "ClaimReply",
    "Claimed",
    "DrainReply",
    "Drained",
    "FillReply",
    "Filled",
    "GroupStore",
    "Holder",
    "Reaped",
    "Released",
    "Reset",
    "ResetReply",
    "StoredTask",
    "Subscription",
]

# Revocations (drain requests) fetched per claim.
CTL_BATCH = 100
# How long the revocation list of a dead member is kept for it, in case it
# was only paused and comes back (seconds).
CTL_TTL = 3600
# Tasks taken from dead members per reap.
REAP_BATCH = 1000


def _source(name: str) -> str:
    return (resources.files("wheelbucket.redis") / "lua" / f"{name}.lua").read_text(
        encoding="utf-8"
    )


# The helpers of the scripts that read the server's clock.
_PRELUDE = _source("prelude")


def _text(value: Any) -> str:
    """A reply field as str (the client may or may not decode replies)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt_text(value: Any) -> str | None:
    return None if value is None else _text(value)


# -- the replies ------------------------------------------------------------------


class Filled(enum.IntEnum):
    """What `GroupStore.fill` did."""

    FULL = -1  # the group is at its limit: nothing recorded
    EXISTS = 0  # the id is live in the group (a retried fill finds its own token)
    RECORDED = 1


class FillReply(NamedTuple):
    status: Filled
    # The live task's token, due and deadline (the new one's, when RECORDED).
    token: str
    due: str
    dl: str


class Claimed(NamedTuple):
    """A task `GroupStore.claim` took for this member, as Redis holds it."""

    id: str
    token: str
    typ: str
    due: str
    dl: str
    ex: str
    payload: bytes | str
    # Taken from a dead member: it must end EXHAUSTED without running.
    doomed: bool
    # The run-after and life span it was filled with (µs; '' if not recorded).
    ra: str
    ls: str


class ClaimReply(NamedTuple):
    now_us: int
    # The earliest due time left in this member's queues; -1: none left.
    next_us: int
    # (token, id) of each task taken away from this member since the last ack.
    revocations: list[tuple[str, str]]
    tasks: list[Claimed]
    # A full batch of revocations came: there may be more.
    more_revocations: bool


class Released(enum.IntEnum):
    """What `GroupStore.release` found."""

    UNKNOWN = -1  # Redis has no record of the task
    TAKEN = 0  # it was taken away from this member: no hook here
    RELEASED = 1  # it left the group: run its hook


class Drained(enum.IntEnum):
    """What `GroupStore.drain` did."""

    UNKNOWN = 0  # not live in the group
    DRAINED = 1
    HELD_HERE = 2  # this member holds it: drain it locally (unless forced)


class DrainReply(NamedTuple):
    status: Drained
    # Who held it ('' when it was queued).
    owner: str


class Reset(enum.IntEnum):
    """What `GroupStore.reset` did. Only MOVED changed anything."""

    UNKNOWN = 0  # not live in the group
    MOVED = 1  # it waits in the queue: its times moved
    HELD_HERE = 2  # this member holds it (or is placing it): reset it locally
    HELD_ELSEWHERE = 3  # another member holds it: its timers are in that member's memory
    DOOMED = 4  # taken from a dead member: it ends EXHAUSTED where it is claimed
    EXPIRED = 5  # its life span ran out while it waited: it ends EXHAUSTED where claimed
    NOT_WAITING = 6  # a run_after for an IMMEDIATE task
    SPAN = 7  # the life span is not longer than the run-after


class ResetReply(NamedTuple):
    status: Reset
    # Who holds it (HELD_HERE, HELD_ELSEWHERE), else ''.
    owner: str
    # The run-after and life span used (µs; MOVED, NOT_WAITING, SPAN).
    delay_us: int
    span_us: int
    # Its due time and deadline (µs of the Redis clock): the new ones when MOVED.
    due_us: int
    dl_us: int


class Beat(NamedTuple):
    now_us: int
    nonce: str
    # False: the group had presumed this member dead (or never knew it).
    was_member: bool


class Reaped(NamedTuple):
    # Tasks of dead members queued doomed.
    requeued: int
    # Dead members that left the group (their tasks all reaped).
    gone: list[str]


class Holder(NamedTuple):
    """Who holds a task in Redis, and the group's nonce (None: no such field)."""

    token: str | None
    owner: str | None
    nonce: str | None


class StoredTask(NamedTuple):
    """A task as `GroupStore.restore` records it again."""

    id: str
    token: str
    typ: str
    due: str
    dl: str
    ex: str
    payload: bytes | str
    ra: str
    ls: str


# -- the store -------------------------------------------------------------------


class GroupStore:
    """Group `group` in Redis, as member `member` sees it: one method per protocol step.

    Args:
        client: the Redis client (its socket timeouts bound every call).
        group: the group's name (no braces).
        member: this process's member name.
        ledger: keep the last `ledger` endings in the ledger stream (0: none).
        limit: most live tasks in the group (0: no limit).
    """

    def __init__(
        self, client: redis.Redis, group: str, member: str, *, ledger: int, limit: int
    ) -> None:
        self._redis = client
        self.group = group
        self.member = member
        self._ledger = ledger
        self._limit = limit
        self._prefix = f"wb:{{{group}}}:"
        self._wake_channel = self._prefix + "wake"
        self._my_channel = self._prefix + "wake:" + member
        # Registering makes no round trip: each script is loaded on its first call.
        self._s_fill = client.register_script(_PRELUDE + _source("fill"))
        self._s_claim = client.register_script(_PRELUDE + _source("claim"))
        self._s_release = client.register_script(_source("release"))
        self._s_drain = client.register_script(_source("drain"))
        self._s_reset = client.register_script(_PRELUDE + _source("reset"))
        self._s_requeue = client.register_script(_source("requeue"))
        self._s_heartbeat = client.register_script(_PRELUDE + _source("heartbeat"))
        self._s_reap = client.register_script(_PRELUDE + _source("reap"))
        self._s_restore = client.register_script(_source("restore"))
        self._s_leave = client.register_script(_source("leave"))

    # -- a task's way through the group ----------------------------------------------

    def fill(
        self,
        task_id: str,
        token: str,
        *,
        here: bool,
        typ: str,
        delay_us: int,
        span_us: int,
        ex: str,
        payload: bytes | str,
    ) -> FillReply:
        """Record a new task: held by this member (`here`), or queued for the group.

        A queued task that is the new head of its queue wakes the group.
        """
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
                self._limit,
            ]
        )
        return FillReply(Filled(int(reply[0])), _text(reply[1]), _text(reply[2]), _text(reply[3]))

    def claim(self, room: int, lookahead_us: int, executors: Sequence[str]) -> ClaimReply:
        """Take up to `room` tasks due within `lookahead_us`, and read this member's revocations."""
        now_us, next_us, ctl, items = self._s_claim(
            args=[self._prefix, self.member, room, lookahead_us, CTL_BATCH, *executors]
        )
        revocations = []
        for entry in ctl:
            token, _, task_id = _text(entry).partition(" ")
            revocations.append((token, task_id))
        tasks = [
            Claimed(
                _text(items[i]),
                _text(items[i + 1]),
                _text(items[i + 2]),
                _text(items[i + 3]),
                _text(items[i + 4]),
                _text(items[i + 5]),
                items[i + 6],
                _text(items[i + 7]) == "1",
                _text(items[i + 8]),
                _text(items[i + 9]),
            )
            for i in range(0, len(items), len(Claimed._fields))
        ]
        return ClaimReply(
            int(now_us), int(next_us), revocations, tasks, len(revocations) >= CTL_BATCH
        )

    def ack_revocations(self, revocations: Sequence[tuple[str, str]]) -> None:
        """Remove revocations this member has applied from its list."""
        pipe = self._redis.pipeline(transaction=False)
        ctl = self._prefix + "ctl:" + self.member
        for token, task_id in revocations:
            pipe.lrem(ctl, 1, f"{token} {task_id}")
        pipe.execute()

    def release(self, task_id: str, token: str, ending: str = "") -> Released:
        """A task this member held ended here: take it out of the group.

        `ending` ('finished', 'drained'...) goes to the ledger; '' writes none.
        """
        return Released(
            int(
                self._s_release(
                    args=[self._prefix, self.member, task_id, token, ending, self._ledger]
                )
            )
        )

    def release_many(self, endings: Sequence[tuple[str, str, str]]) -> list[Released]:
        """`release` for each (id, token, ending), in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for task_id, token, ending in endings:
            self._s_release(
                args=[self._prefix, self.member, task_id, token, ending, self._ledger],
                client=pipe,
            )
        return [Released(int(status)) for status in pipe.execute()]

    def drain(self, task_id: str, *, force: bool) -> DrainReply:
        """Drain a task wherever it is; a holder other than this member is told.

        Without `force`, a task this member holds is left alone (HELD_HERE).
        """
        status, owner = self._s_drain(
            args=[self._prefix, self.member, task_id, self._ledger, "1" if force else "0"]
        )
        return DrainReply(Drained(int(status)), _text(owner))

    def reset(self, task_id: str, *, delay_us: int, span_us: int) -> ResetReply:
        """Move the due time and deadline of a task waiting in the queue; report a held one.

        `delay_us` / `span_us` count from the Redis clock's now; -1 for the
        value the task was filled with. A queued TIME_BOMB that becomes the
        head of its queue wakes the group.
        """
        status, owner, delay, span, due, dl = self._s_reset(
            args=[self._prefix, self.member, task_id, delay_us, span_us]
        )
        return ResetReply(
            Reset(int(status)), _text(owner), int(delay), int(span), int(due), int(dl)
        )

    def requeue(self, task_id: str, token: str) -> bool:
        """Hand a task this member holds back to the group's queue; False if not held."""
        return bool(int(self._s_requeue(args=[self._prefix, self.member, task_id, token])))

    def requeue_many(self, tasks: Iterable[tuple[str, str]]) -> int:
        """`requeue` for each (id, token; '' for any token), in one round trip; how many moved."""
        pipe = self._redis.pipeline(transaction=False)
        for task_id, token in tasks:
            self._s_requeue(args=[self._prefix, self.member, task_id, token], client=pipe)
        return sum(int(moved) for moved in pipe.execute())

    def holder(self, task_id: str) -> Holder:
        """Who holds `task_id` now, and the group's nonce (one round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._prefix + "t:" + task_id, "tok", "own")
        pipe.hget(self._prefix + "meta", "nonce")
        (token, owner), nonce = pipe.execute()
        return Holder(_opt_text(token), _opt_text(owner), _opt_text(nonce))

    def owned_ids(self) -> list[str]:
        """The ids Redis says this member holds."""
        return [_text(i) for i in self._redis.smembers(self._prefix + "by:" + self.member)]

    # -- membership -----------------------------------------------------------------

    def heartbeat(self) -> Beat:
        """Tell the group this member lives; read the group's nonce (made if missing)."""
        now_us, nonce, was = self._s_heartbeat(
            args=[self._prefix, self.member, secrets.token_hex(8)]
        )
        return Beat(int(now_us), _text(nonce), bool(int(was)))

    def reap(self, dead_after_us: int) -> Reaped:
        """Queue the tasks of members silent for `dead_after_us` as doomed, a batch at a time."""
        requeued, gone = self._s_reap(
            args=[self._prefix, self.member, dead_after_us, REAP_BATCH, CTL_TTL]
        )
        return Reaped(int(requeued), [_text(m) for m in gone])

    def restore_many(self, tasks: Sequence[StoredTask]) -> None:
        """Record again, as held by this member, tasks Redis lost (one round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for task in tasks:
            self._s_restore(args=[self._prefix, self.member, *task], client=pipe)
        pipe.execute()

    def leave(self) -> bool:
        """Leave the group if this member holds nothing; False if it still holds tasks."""
        return bool(int(self._s_leave(args=[self._prefix, self.member])))

    # -- news and introspection ---------------------------------------------------------

    def subscribe(self) -> Subscription:
        """Listen to the group's wake channel and this member's own."""
        return Subscription(self._redis, self._wake_channel, self._my_channel)

    def wake_me(self) -> None:
        """Publish on this member's own channel (wakes its listener at once)."""
        self._redis.publish(self._my_channel, "")

    def group_info(self) -> GroupInfo:
        """The live tasks, queued tasks and members of the group (two round trips)."""
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
        return GroupInfo(int(live), queued, tuple(sorted(_text(m) for m in members)))


class Subscription:
    """A member's subscription to the group's wake channel and its own."""

    def __init__(self, client: redis.Redis, wake_channel: str, my_channel: str) -> None:
        self._my_channel = my_channel
        self._pubsub: Any = cast(Any, client).pubsub(ignore_subscribe_messages=True)
        try:
            self._pubsub.subscribe(wake_channel, my_channel)
        except BaseException:
            self.close()
            raise

    def get(self, timeout: float) -> bool | None:
        """Wait up to `timeout` for news: None if none came, True if it is for this member."""
        message = self._pubsub.get_message(timeout=timeout)
        if message is None:
            return None
        return _text(message["channel"]) == self._my_channel

    def close(self) -> None:
        with contextlib.suppress(Exception):  # it is going away either way
            self._pubsub.close()

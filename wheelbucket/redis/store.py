"""The group's side in Redis: its keys, its Lua scripts, one method per protocol step.

A `GroupStore` is one member's view of one group. Each method is one round
trip (a script, or a pipeline of them) with typed arguments and a typed
reply, in the manner of APScheduler 4's ``DataStore``. It is the one place
where redis client errors become the bucket's: every public method raises
`RedisUnavailable` (connection errors, timeouts) or `RedisServerError`
(any other error reply: OOM, READONLY...), chained to the client's
exception (see `errors.translating`). The scripts are
the ``lua/*.lua`` files next to this module: each says what its ARGV are and
what it returns; every script that changes the group is atomic.

Keys of group G (all share the hash tag {G}, so they live in one slot)::

    wb:{G}:t:<id>        HASH   the task: tok own typ due dl ex d ra ls [doom] [st: started]
    wb:{G}:ids           SET    ids of the live tasks of the group
    wb:{G}:q:<ex>        ZSET   queued tasks for executor name <ex>, by due time
    wb:{G}:exs           SET    executor names ever used (which q:<ex> exist)
    wb:{G}:by:<member>   SET    ids held by a member
    wb:{G}:m             ZSET   members, by their last heartbeat
    wb:{G}:ctl:<member>  LIST   "tok id" of tasks taken away from a member
    wb:{G}:meta          HASH   nonce (changes when Redis lost the group)
    wb:{G}:exn           HASH   member -> the executor names it runs (space-separated)
    wb:{G}:ledger        STREAM every ending (optional)
    wb:{G}:ep:<member>   STRING the member's epoch: its script calls (epoch.py)
    wb:{G}:run           HASH   the incarnation gate: id at open ok:<member> (gate.py)

KEYS[1] of every script is the caller's epoch key (KEYS[2]: the task's record,
if any, or the gate's: gate.py); a Redis Cluster routes by them to the group's slot.

Channels: ``wb:{G}:wake`` (a task was queued), ``wb:{G}:wake:<member>``
(a revocation for that member). Times are whole microseconds of the Redis
server's clock (TIME), so that deadlines mean the same in every process.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any, NamedTuple

import redis

from .epoch import Epoch, GroupScript, OwnLine
from .errors import translating
from .gate import RunGate, gate_source
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
    "NewTask",
    "Reaped",
    "Released",
    "Reset",
    "ResetReply",
    "StoredTask",
]

# Revocations (drain requests) fetched per claim.
CTL_BATCH = 100
# How long the revocation list of a dead member is kept for it, in case it
# was only paused and comes back (seconds).
CTL_TTL = 3600
# Tasks taken from dead members per reap.
REAP_BATCH = 1000
# Tasks per script call of fill_many: about 5 ms of Redis time for no-op tasks.
FILL_CHUNK = 2000
# Tasks per step at most (Lua's unpack() of a step's releases takes < 8000).
STEP_CHUNK = 1000


def _source(name: str) -> str:
    return (resources.files("wheelbucket.redis") / "lua" / f"{name}.lua").read_text(
        encoding="utf-8"
    )


# The helpers of the scripts that read the server's clock.
_PRELUDE = _source("prelude")

# The scripts that run even when Redis is out of memory (maxmemory with the
# noeviction policy): none of them adds a task, each moves, ends or deletes
# one or keeps a member alive, so they keep the group going and free memory.
# The fills (and restore, reset) are refused with an OOM error, which reaches
# their caller as a RedisServerError. Needs Redis 7 (script flags).
_OOM_OK = frozenset({"heartbeat", "claim", "step", "drain", "reap", "leave", "requeue", "names"})


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


class NewTask(NamedTuple):
    """A task for `GroupStore.fill_many`: `fill`'s arguments."""

    id: str
    token: str
    here: bool
    typ: str
    delay_us: int
    span_us: int
    ex: str
    payload: bytes | str


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
    # Nothing was taken: the epoch is behind (Redis lost writes), or the gate waits for us.
    behind: bool = False


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
    # The member's epoch in Redis, and the least it must be (lower: a rollback, epoch.py).
    epoch: int = 0
    least: int = 0


class Reaped(NamedTuple):
    # Tasks taken from dead members and queued again (doomed if started).
    requeued: int
    # Dead members that left the group (their tasks all reaped).
    gone: list[str]
    unstarted: int = 0  # of `requeued`, those never started: they run again


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

_translating = translating  # the name handback.py imports from here


@translating
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
        self, client: redis.Redis | Any, group: str, member: str, *, ledger: int, limit: int
    ) -> None:
        self._redis = client
        self.group = group
        self.member = member
        self._ledger = ledger
        self._limit = limit
        self._prefix = f"wb:{{{group}}}:"
        self._wake_channel = self._prefix + "wake"
        self._my_channel = self._prefix + "wake:" + member
        # Answered script calls, against wb:{G}:ep:<member> (KEYS[1] of every script).
        self.epoch = Epoch()
        self._ep_key = self._prefix + "ep:" + member
        self.gate = RunGate(self._prefix, group)  # claim, heartbeat, reap check it

        # Registering makes no round trip: each script is loaded on its first call.
        def script(name: str) -> GroupScript:
            source = _PRELUDE + gate_source(name) + _source(name)
            if name in _OOM_OK:
                source = "#!lua flags=allow-oom\n" + source
            return self.gate.script(client, name, source, self._ep_key, self.epoch)

        self._s_fill = script("fill")
        self._s_claim = script("claim")
        self._s_step = script("step")
        # The step of the workers, on a connection of its own where it can be.
        self._step_line = OwnLine.for_client(self._s_step, client)
        self._encode: Callable[[str], bytes] = client.get_encoder().encode
        self._s_drain = script("drain")
        self._s_reset = script("reset")
        self._s_requeue = script("requeue")
        self._s_heartbeat = script("heartbeat")
        self._s_reap = script("reap")
        self._s_restore = script("restore")
        self._s_leave = script("leave")
        self._s_fill_many = script("fill_many")
        self._s_names = script("names")

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
            keys=[self._prefix + "t:" + task_id],
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
            ],
        )
        return FillReply(Filled(int(reply[0])), _text(reply[1]), _text(reply[2]), _text(reply[3]))

    def fill_many(self, tasks: Sequence[NewTask]) -> list[FillReply]:
        """`fill` for each task, in order: one atomic script call per FILL_CHUNK tasks.

        One round trip up to FILL_CHUNK tasks without min_replicas; beyond, a
        pipeline, which redis-py precedes with a SCRIPT EXISTS: two."""
        if not tasks:
            return []
        prefix, member = self._prefix, self.member
        wait = self._s_fill.wait_replicas
        enc = self._redis.get_encoder().encode  # the client's, as for every other argument
        calls = []
        for start in range(0, len(tasks), FILL_CHUNK):
            chunk = tasks[start : start + FILL_CHUNK]
            args: list[Any] = [prefix, member, self._limit]
            for t in chunk:  # one packed argument per task (fill_many.lua)
                i, k, e, d = enc(t.id), enc(t.token), enc(t.ex), enc(t.payload)
                head = (len(i), len(k), t.here, enc(t.typ), t.delay_us, t.span_us, len(e))
                args.append(b"%d %d %d %s %d %d %d " % head + i + k + e + d)
            calls.append(([prefix + "t:" + t.id for t in chunk], args))
        if len(calls) == 1 and wait is None:
            replies = [self._s_fill_many(keys=calls[0][0], args=calls[0][1])]
            return self._fill_replies(replies)
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            self._s_fill_many(keys=keys, args=args, client=pipe)
        # min_replicas: as durable as fill, in the same round trip.
        if wait is not None:
            pipe.execute_command("WAIT", *wait)
        replies = pipe.execute()
        if wait is not None:
            acked = int(replies.pop())
            if acked < wait[0]:
                self.epoch.count(len(replies))
                raise redis.exceptions.TimeoutError(
                    f"only {acked} of {wait[0]} replicas acknowledged the write "
                    f"within {wait[1]} ms (min_replicas)"
                )
        self.epoch.count(len(replies))
        return self._fill_replies(replies)

    @staticmethod
    def _fill_replies(replies: list[Any]) -> list[FillReply]:
        return [
            FillReply(Filled(int(f[i])), _text(f[i + 1]), _text(f[i + 2]), _text(f[i + 3]))
            for f in replies
            for i in range(0, len(f), 4)
        ]

    def register_executors(self, names: Sequence[str]) -> None:
        """Tell the group which executor names this member runs ('' for the default)."""
        self._s_names(args=[self._prefix, self.member, "set", 0, " ".join(names)])

    def executor_names(self, dead_after_us: int) -> frozenset[str]:
        """The executor names the members with a heartbeat younger than `dead_after_us` run."""
        entries = self._s_names(args=[self._prefix, self.member, "get", dead_after_us, ""])
        return frozenset(name for e in entries for name in _text(e).split(" "))

    def claim(self, room: int, lookahead_us: int, executors: Sequence[str]) -> ClaimReply:
        """Take up to `room` tasks due within `lookahead_us`, and read this member's revocations."""
        least = self.epoch.answered + 1  # behind it, Redis lost writes: claim nothing
        now_us, next_us, ctl, items, behind = self._s_claim(
            args=[self._prefix, self.member, room, lookahead_us, CTL_BATCH, least, *executors]
        )
        revocations = []
        for entry in ctl:
            token, _, task_id = _text(entry).partition(" ")
            revocations.append((token, task_id))
        # 10 fields a task: all str, but the data (6), as the client gives it.
        tasks = []
        for i in range(0, len(items), 10):
            t = [
                v.decode() if type(v) is bytes and k != 6 else v
                for k, v in enumerate(items[i : i + 10])
            ]
            t[7] = t[7] == "1"
            tasks.append(Claimed._make(t))
        more = len(revocations) >= CTL_BATCH
        return ClaimReply(int(now_us), int(next_us), revocations, tasks, more, bool(behind))

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
        return Released(self.step([(task_id, token, ending)], ())[0])

    def release_many(self, endings: Sequence[tuple[str, str, str]]) -> list[Released]:
        """`release` for each (id, token, ending): a round trip per STEP_CHUNK of them."""
        return [
            Released(status)
            for i in range(0, len(endings), STEP_CHUNK)
            for status in self.step(endings[i : i + STEP_CHUNK], ())
        ]

    def step(
        self, releases: Sequence[tuple[str, str, str]], starts: Sequence[tuple[str, str]]
    ) -> list[int]:
        """Release each (id, token, ending) and record the start of each (id, token), at once.

        One round trip (lua/step.lua); the statuses, releases first: a
        `Released` value each, then for each start 1 (recorded: start it), 0
        (taken from this member) or -1 (unknown to Redis: start it).
        """
        enc = self._encode
        p = enc(self._prefix + "t:")
        keys: list[bytes] = []
        args = [enc(self._prefix), enc(self.member), b"%d" % self._ledger, b"%d" % len(releases)]
        for task_id, token, ending in releases:  # one packed argument each (step.lua)
            i, t = enc(task_id), enc(token)
            keys.append(p + i)
            args.append(b"%d %d %s%s%s" % (len(i), len(t), i, t, enc(ending)))
        for task_id, token in starts:
            i = enc(task_id)
            keys.append(p + i)
            args.append(b"%d %s%s" % (len(i), i, enc(token)))
        if self._step_line is not None:
            return [int(status) for status in self._step_line(keys, args)]
        return [int(status) for status in self._s_step(keys=keys, args=args)]

    def drain(self, task_id: str, *, force: bool) -> DrainReply:
        """Drain a task wherever it is; a holder other than this member is told.

        Without `force`, a task this member holds is left alone (HELD_HERE).
        """
        status, owner = self._s_drain(
            keys=[self._prefix + "t:" + task_id],
            args=[self._prefix, self.member, task_id, self._ledger, "1" if force else "0"],
        )
        return DrainReply(Drained(int(status)), _text(owner))

    def reset(self, task_id: str, *, delay_us: int, span_us: int) -> ResetReply:
        """Move the due time and deadline of a task waiting in the queue; report a held one.

        `delay_us` / `span_us` count from the Redis clock's now; -1 for the
        value the task was filled with. A queued TIME_BOMB that becomes the
        head of its queue wakes the group.
        """
        status, owner, delay, span, due, dl = self._s_reset(
            keys=[self._prefix + "t:" + task_id],
            args=[self._prefix, self.member, task_id, delay_us, span_us],
        )
        return ResetReply(
            Reset(int(status)), _text(owner), int(delay), int(span), int(due), int(dl)
        )

    def requeue(self, task_id: str, token: str) -> bool:
        """Hand a task this member holds back to the group's queue; False if not held."""
        keys, args = [self._prefix + "t:" + task_id], [self._prefix, self.member, task_id, token]
        return bool(int(self._s_requeue(keys=keys, args=args)))

    def requeue_many(self, tasks: Iterable[tuple[str, str]]) -> int:
        """`requeue` for each (id, token; '' for any token), in one round trip; how many moved."""
        pipe = self._redis.pipeline(transaction=False)
        for task_id, token in tasks:
            args = [self._prefix, self.member, task_id, token]
            self._s_requeue(keys=[self._prefix + "t:" + task_id], args=args, client=pipe)
        replies = pipe.execute()
        self.epoch.count(len(replies))
        return sum(int(moved) for moved in replies)

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
        answered = self.epoch.answered  # all applied before this heartbeat
        now_us, nonce, was, epoch = self._s_heartbeat(
            args=[self._prefix, self.member, secrets.token_hex(8), answered + 1]
        )
        return Beat(int(now_us), _text(nonce), bool(int(was)), int(epoch), answered + 1)

    def reap(self, dead_after_us: int) -> Reaped:
        """Queue again the tasks of members silent for `dead_after_us` (doomed if started)."""
        requeued, gone, unstarted = self._s_reap(
            args=[self._prefix, self.member, dead_after_us, REAP_BATCH, CTL_TTL]
        )
        return Reaped(int(requeued), [_text(m) for m in gone], int(unstarted))

    def restore_many(self, tasks: Sequence[StoredTask]) -> None:
        """Record again, as held by this member, tasks Redis lost (one round trip)."""
        pipe = self._redis.pipeline(transaction=False)
        for task in tasks:
            key = self._prefix + "t:" + task.id
            self._s_restore(keys=[key], args=[self._prefix, self.member, *task], client=pipe)
        self.epoch.count(len(pipe.execute()))

    def durable_fills(self, replicas: int, timeout_ms: int) -> None:
        """From now on each fill waits for `replicas` replicas (WAIT), or raises a timeout."""
        self._s_fill.wait_replicas = (replicas, timeout_ms)

    def leave(self) -> bool:
        """Leave the group if this member holds nothing; False if it still holds tasks."""
        return bool(int(self._s_leave(args=[self._prefix, self.member])))

    # -- news and introspection ---------------------------------------------------------

    def channels(self) -> tuple[str, str]:
        """The group's wake channel and this member's own (listener.Subscription)."""
        return self._wake_channel, self._my_channel

    def hang_up(self) -> None:
        """Close the connection of the workers' step (the client's own are the caller's)."""
        if self._step_line is not None:
            self._step_line.close()

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

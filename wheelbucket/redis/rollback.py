"""Rollbacks: Redis lost writes a member relied on, and the member puts the group right.

A rollback happens when the primary a member talks to forgets answered
writes: a lagging replica promoted by a failover, or a restart from an old
snapshot. The member sees it at its next heartbeat, because its epoch key is
behind the count of its answered calls (epoch.py). Then Redis holds an
older state of the group than the one this member acted on:

- records of tasks that already ended here are back (as held by this
  member, or queued again): without a fix, the orphan scan would requeue
  them, and they would run twice;
- tasks held here may have no record, or be queued again, or even claimed
  again by another member that did not notice anything.

A claim from such a state takes nothing (CLAIM checks the epoch too), so the
member reconciles before it claims anything. `Rollback.recover` reconciles,
in one script (reconcile.lua): it deletes the
records of the tasks this member remembers ending (the last `remember`
endings), takes back (or records again) the tasks it holds, and, when its
memory does not reach back to the rollback, deletes the records it holds in
Redis and does not know instead of requeueing them (at most once). A task
another member had claimed again meanwhile is taken from that member as a
drain would; it may have started there: such ids are reported. Then the
member claims nothing for `settle` seconds, so that every other member that
notices the rollback deletes its ghosts before one can be claimed. A member
that lost no calls notices nothing: the incarnation gate (gate.py) keeps it,
and everyone, from claiming until every member has reconciled. The orphan
scan deletes, instead of requeueing, a record of a task that ended here. Every
rollback is logged (ERROR), counted (``stats().redis_rollbacks``) and passed
to the ``on_rollback`` hook as a `RollbackReport`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from .epoch import GroupScript
from .store import Beat, GroupStore, Released, StoredTask

if TYPE_CHECKING:
    from .records import Holdings

__all__ = ["Rollback", "RollbackReport"]

logger = logging.getLogger("wheelbucket.redis")

# Calls that may be in flight at once (threads, batches): the answered count
# at an ending may lag the server's order by this much.
_IN_FLIGHT = 10_000


@dataclass(frozen=True)
class RollbackReport:
    """What a member found and did after Redis lost writes it relied on.

    Attributes:
        group, member: who noticed.
        lost_calls: this member's answered script calls that Redis forgot
            (fills, claims, releases, heartbeats...).
        covered: this member remembered every ending since the rollback;
            when False, ``dropped`` records had to be deleted unchecked.
        ended_again: records of tasks that had ended here, brought back by
            the rollback and deleted again (each would have run twice).
        taken_back: tasks held here whose record had gone back to the queue
            or to another member, made this member's again.
        restored: tasks held here whose record was gone, recorded again.
        dropped: records Redis said this member held, that it neither held
            nor remembered (not covered): deleted, never requeued.
        may_run_twice: ids another member had claimed again after the
            rollback; it was told to drop them (as by a drain), but may
            already have started them.
    """

    group: str
    member: str
    lost_calls: int
    covered: bool
    ended_again: int
    taken_back: int
    restored: int
    dropped: int
    may_run_twice: tuple[str, ...]


class Rollback:
    """This member's memory of its recent endings, and what it does after a rollback.

    Args:
        store: the group in Redis.
        on_rollback: called with each `RollbackReport` (on the pump thread).
        remember: how many recent endings to remember (their id and token).
        settle: seconds to claim nothing after a rollback (two heartbeats:
            the others reconnect within one, backing off, and reconcile).
    """

    def __init__(
        self,
        store: GroupStore,
        client: Any,
        *,
        on_rollback: Callable[[RollbackReport], object] | None,
        remember: int,
        settle: float,
    ) -> None:
        self._store = store
        self._group = store.group
        self._member = store.member
        self._prefix = f"wb:{{{store.group}}}:"  # as store.py names the keys
        source = (resources.files("wheelbucket.redis") / "lua").joinpath
        self._s_reconcile = GroupScript(
            client,
            source("prelude.lua").read_text(encoding="utf-8")
            + source("reconcile.lua").read_text(encoding="utf-8"),
            self._prefix + "ep:" + store.member,
            store.epoch,
        )
        self._on_rollback = on_rollback
        self._remember = remember
        # (id, token, answered calls when it ended); deque.append is atomic.
        self._ended: deque[tuple[str, str, int]] = deque(maxlen=remember)
        self._lock = threading.Lock()
        self.rollbacks = 0
        self.may_run_twice = 0
        # After a rollback, claim nothing for `settle` seconds: every other
        # member notices it too and deletes its ghosts before anyone claims one.
        self._settle = settle
        self._settle_until = 0.0

    def settling(self) -> bool:
        """Is this member waiting, after a rollback, for the others to reconcile?

        Meanwhile it claims nothing, and the pump scans for orphans every round.
        """
        return self._settle_until > time.monotonic()

    def ended(self, task_id: str, token: str) -> None:
        """A task ended here (its release may yet be lost): remember it."""
        self._ended.append((task_id, token, self._store.epoch.answered))

    def release_ended(self, orphans: list[str]) -> list[str]:
        """Delete the orphaned records of tasks that ended here; return the other ids.

        A task that ended while `recover` ran may have found no record (or
        one taken from it) and left the group here, and then had its record
        restored (or taken back) for it: requeued as an orphan, it would run
        again, and nobody would be told.
        """
        ended: dict[str, list[str]] = {}
        for task_id, token, _ in list(self._ended):  # list(): atomic
            ended.setdefault(task_id, []).append(token)
        rest = []
        deleted = 0
        for task_id in orphans:
            tokens = ended.get(task_id, [])
            if any(self._store.release(task_id, t) is Released.RELEASED for t in tokens):
                deleted += 1
            else:
                rest.append(task_id)
        if deleted:
            logger.warning(
                "group %r: %d records of tasks that had ended here were back after a "
                "rollback; deleted",
                self._group,
                deleted,
            )
        return rest

    def recover(self, holdings: Holdings, beat: Beat) -> RollbackReport:
        """Reconcile the group with what this member knows (raises what the store raises)."""
        self._settle_until = time.monotonic() + self._settle
        lost = beat.least - beat.epoch
        # Held first, then the endings: a task that ends meanwhile is in one
        # of the two (an ending is remembered before its task leaves `held`).
        held = holdings.note_reset()
        ended = list(self._ended)  # one C call: atomic against the workers' appends
        # Every ending remembered is checked: a cheap HMGET each, and the
        # answered count at an ending says little about the server's order
        # when calls are batched.
        covered = len(ended) < self._remember or ended[0][2] < beat.epoch - _IN_FLIGHT
        entries: list[tuple[str, str, str]] = [("e", task_id, token) for task_id, token, _ in ended]
        entries += [("h", rec.id, rec.token) for rec in held]
        codes = self._reconcile(entries)
        ended_again = taken_back = 0
        twice: list[str] = []
        for (mode, task_id, _), code in zip(entries, codes, strict=True):
            if code == 2:
                twice.append(task_id)
            if mode == "e":
                ended_again += code > 0
            elif code in (1, 2):
                taken_back += 1
        missing = [
            rec
            for rec, code in zip(held, codes[len(codes) - len(held) :], strict=True)
            if code == 3
        ]
        if missing:
            self._store.restore_many(
                [
                    StoredTask(r.id, r.token, r.typ, r.due, r.dl, r.ex, r.payload, r.ra, r.ls)
                    for r in missing
                ]
            )
        # A task that ended here while this ran may have been released against
        # the older state (no record, or "not yours"), then recorded again or
        # taken back: take it out again. One whose worker has not forgotten it
        # yet, and one dropped before it started (its START found the older
        # state), are left to the orphan scans while this member settles (the
        # first deletes, the second requeues: `release_ended`).
        done = {(task_id, token) for task_id, token, _ in list(self._ended)}  # list(): atomic
        for rec in holdings.not_held(held):
            if (rec.id, rec.token) in done:
                self._store.release(rec.id, rec.token)
        dropped = 0
        if not covered:
            unknown = holdings.orphans(self._store.owned_ids())
            dropped = sum(self._reconcile([("x", task_id, "") for task_id in unknown]))
        # Only now: if reconciling failed, the next heartbeat finds the epoch behind again.
        self._store.epoch.forget(lost)
        report = RollbackReport(
            self._group,
            self._member,
            lost,
            covered,
            ended_again,
            taken_back,
            len(missing),
            dropped,
            tuple(twice),
        )
        with self._lock:
            self.rollbacks += 1
            self.may_run_twice += len(twice)
        logger.error(
            "group %r: Redis lost %d calls of this member (a failover to a lagging replica, "
            "or a restart from an old snapshot?): %d ended tasks deleted again, %d held tasks "
            "taken back, %d recorded again, %d unknown records dropped%s; %d tasks may run "
            "twice (claimed again elsewhere meanwhile): %s",
            self._group,
            lost,
            ended_again,
            taken_back,
            len(missing),
            dropped,
            "" if covered else " (the memory of endings did not reach back far enough)",
            len(twice),
            twice[:20],
        )
        if self._on_rollback is not None:
            try:
                self._on_rollback(report)
            except Exception:
                logger.exception("group %r: the on_rollback hook failed", self._group)
        return report

    def _reconcile(self, entries: list[tuple[str, str, str]]) -> list[int]:
        codes: list[int] = []
        for start in range(0, len(entries), 1000):  # keep each script short
            batch = entries[start : start + 1000]
            args: list[str] = [self._prefix, self._member]
            for entry in batch:
                args.extend(entry)
            codes.extend(int(c) for c in self._s_reconcile(args=args))
        return codes

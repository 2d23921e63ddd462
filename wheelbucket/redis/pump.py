"""The pump: the one thread per process that talks to the group, and what it knows.

It heartbeats, claims due tasks into the local bucket, applies revocations
(tasks other processes took from this one), reaps dead members, releases
the endings Redis could not hear of when they happened, and records the
tasks held here again when Redis lost the group. It owns the state of the
link to Redis: reachable or not, since when, the group's nonce, and the
lease (how long the group cannot have presumed this process dead).

`end` and `may_start` are what the shared executors call on a worker: they
read that state, so they live here too.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from functools import partial

from .._log import safe_repr
from ..bucket import TaskBucket
from ..executor import HookPlan
from ..task import TaskContext
from .claiming import Placer
from .errors import REDIS_FAILED, UNREACHABLE
from .handback import HandbackStore, StartBook, hand_back
from .hooks import SharedExecutor
from .link import LINGER, Link
from .records import Holdings, Record
from .rollback import Rollback
from .serializer import Serializer
from .store import Claimed, GroupStore, Released, StoredTask
from .streak import FailureStreak

__all__ = ["Pump"]

logger = logging.getLogger("wheelbucket.redis")

# A process that has not heartbeated for this share of dead_after may have
# been presumed dead: it checks with Redis before it starts a task.
_LEASE = 0.8
# How often the pump looks for orphaned records unprompted, in dead_after periods.
_SCAN_PERIODS = 30
# The first wait before retrying Redis after an error; it doubles up to a heartbeat.
_FIRST_BACKOFF = 0.05
# How soon to look again at a queue whose due tasks could not all be taken.
_LOOK_AGAIN = 0.05
# While due tasks wait in Redis for room here, the room that endings free is
# claimed when half a batch is free, or this long (seconds) after the first
# ending: a full member makes one claim per many endings, not one each, and
# a member full of timers that are not due yet still claims its few slots.
_GATHER = 0.05
_INF = math.inf


class Pump:
    """Heartbeats, claims, revocations, releases and recovery for one `SharedBucket`.

    Args:
        store: the group in Redis.
        holdings: the tasks this process holds.
        bucket: the local bucket (its public API only).
        serializer: decodes the data of claimed tasks.
        plans: the user's executors by name; the pump makes the executors
            the local bucket runs shared tasks with (see `executor_for`).
        heartbeat, dead_after: seconds, as `SharedBucket` takes them.
        claim_batch: most tasks claimed in one round trip.
        claiming: False for a producer, which claims nothing.
    """

    def __init__(
        self,
        store: GroupStore,
        holdings: Holdings,
        bucket: TaskBucket,
        serializer: Serializer,
        plans: Mapping[str, HookPlan],
        *,
        heartbeat: float,
        dead_after: float,
        claim_batch: int,
        claiming: bool,
        rollback: Rollback | None = None,
    ) -> None:
        self._store = store
        # Remembers recent endings, and reconciles when Redis lost writes.
        self._rollback = rollback
        self._holdings = holdings
        self._bucket = bucket
        self._max_bucket = bucket.max_bucket
        self._serializer = serializer
        self._group = store.group
        self._member = store.member
        self._heartbeat = heartbeat
        self._dead_after = dead_after
        self._claim_batch = claim_batch
        # Room worth a claim at once while a backlog waits (see _GATHER).
        self._worth_claiming = max(1, min(claim_batch, bucket.max_bucket) // 2)
        self._claiming = claiming
        # Starts are recorded before they happen; close hands back the rest (handback.py).
        self._handback = HandbackStore(store)
        # Starts and releases that come together share a round trip (link.py).
        self._link = Link(store.step, self._linger)
        # When the pump sends the releases nobody waits for (monotonic; inf: none queued).
        self._next_flush = _INF
        self._starts = StartBook(
            self._handback, self._link.start, holdings.revoke, self.note_error, heartbeat
        )
        # Local slots that fills in flight will take: a claim leaves them free.
        self._reserved = 0
        self._reserve_lock = threading.Lock()
        # Claimed tasks into the local bucket, with the shared executors (claiming.py).
        self._placer = Placer(
            plans,
            holdings,
            serializer,
            lambda plan, doomed: SharedExecutor(
                plan, doomed=doomed, end=self.end, may_start=self.may_start
            ),
        )
        self._names = sorted(plans)
        self._stopping = False
        self._wake = threading.Event()
        # Due tasks wait in Redis for room here: a task ending here wakes the pump.
        self._backlog = False
        # A claim for room freed by endings is due at _next_claim (see _room_freed).
        self._gathering = False
        self._maybe_orphans = False
        self._online = True
        self._connected_since = time.monotonic()
        self._nonce = ""
        # When to claim next (monotonic; 0: at once, inf: when woken).
        self._next_claim = 0.0
        # Until then (monotonic), the group cannot have presumed us dead.
        self._lease_until = 0.0
        # The current streak of failed rounds, logged once (pump thread only).
        self._streak = FailureStreak(self._group, heartbeat)
        self._thread = threading.Thread(
            target=self._run, name=f"wheelbucket-shared-{self._group}", daemon=True
        )

    # -- for the SharedBucket -----------------------------------------------------

    def first_beat(self) -> None:
        """Join the group: one heartbeat, before the thread starts (raises REDIS_FAILED)."""
        self._beat(reap=False)
        self._register()

    def _register(self) -> None:
        """Tell the group the executor names this member runs (a producer runs none)."""
        if self._claiming and self._names:
            self._store.register_executors(self._names)

    def start(self) -> None:
        self._thread.start()

    def executor_for(self, name: str) -> SharedExecutor:
        """The executor the local bucket runs a shared task of executor `name` with."""
        return self._placer.executor_for(name)

    @property
    def connected(self) -> bool:
        """Could Redis be reached the last time the pump or a hook tried?"""
        return self._online

    def note_error(self, exc: BaseException) -> None:
        """A Redis call failed: count it; if Redis could not be reached, go offline.

        An error reply (`RedisServerError`: OOM, READONLY...) comes from a
        Redis that is there: it is counted, and the pump's loop backs off.
        """
        self._holdings.count_redis_error()
        if not isinstance(exc, UNREACHABLE):
            return
        if self._online:
            self._online = False
            self._connected_since = _INF
            logger.warning("group %r: Redis unreachable: %s", self._group, exc)
        self._wake.set()

    def suspect_orphans(self) -> None:
        """A record may exist in Redis without its local task: the pump looks soon."""
        self._maybe_orphans = True

    def release_quietly(self, rec: Record) -> None:
        """Take `rec` out of the group without an ending (its fill failed here)."""
        try:
            self._store.release(rec.id, rec.token)
        except REDIS_FAILED as exc:
            self.note_error(exc)
            self._maybe_orphans = True

    def hand_back(self, rec: Record) -> None:
        """Queue `rec`, recorded as ours, for the group: it did not fit here after all."""
        try:
            self._store.requeue(rec.id, rec.token)
        except REDIS_FAILED as exc:
            self.note_error(exc)
            self._maybe_orphans = True  # the pump requeues it when Redis is back

    def heard(self, urgent: bool) -> None:
        """The listener heard news: for this process (`urgent`), or a task was queued."""
        if urgent or self.room():
            self._claim_now()
        else:
            self._backlog = True

    def _claim_now(self) -> None:
        """Have the pump claim (and read revocations) at once."""
        self._next_claim = 0.0
        self._wake.set()

    def _room_freed(self) -> None:
        """Room freed while due tasks wait in Redis: claim now, or gather (_GATHER)."""
        room = self.room()
        if room >= self._worth_claiming:
            self._claim_now()
        elif room and not self._gathering:
            self._gathering = True
            self._next_claim = min(self._next_claim, time.monotonic() + _GATHER)
            self._wake.set()  # the pump waits until the new _next_claim

    def stop_claiming(self) -> None:
        """From now on the pump claims nothing (close has begun)."""
        self._claiming = False

    def stop(self) -> None:
        """End the thread's loop after its last releases (see `join`)."""
        self._stopping = True
        self._wake.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def after_fork_in_child(self) -> None:
        """In a forked child, which has no pump thread: claim nothing, never run."""
        self._claiming = False
        self._stopping = True

    # -- endings (on a worker) ----------------------------------------------------

    def end(self, rec: Record, ending: str, wait: bool = True) -> bool:
        """A shared task ended here: take it out of the group. True: run its hook.

        Called from the shared executors' ending hooks (on a worker) and from
        drain. Without `wait` (the ending has no hook to run), a claimed
        task's release is queued to go with the next step of any worker
        (`Link.release_later`): its answer matters to the pump's records only.
        """
        if rec.revoked:
            self._forget(rec)
            return False
        if self._rollback is not None:
            self._rollback.ended(rec.id, rec.token)  # before its release can be lost
        if rec.mark and ending == "exhausted":
            self._holdings.count_marked(rec.mark)
            ending = "exhausted:" + rec.mark  # counted and marked in Redis (step.lua)
        if self._online and not wait and rec.claimed:  # no user's handle here waits for it
            self._link.release_later(rec.id, rec.token, ending, partial(self._later, rec, ending))
            return True
        if self._online:
            try:
                status = self._link.release(rec.id, rec.token, ending)
            except REDIS_FAILED as exc:
                self.note_error(exc)
            else:
                return self._released(rec, status)
        # Redis is down (or refused the release): run the hook now, tell Redis
        # later (the pump retries, backing off), and do not make every ending
        # wait for a socket timeout.
        rec.ending = ending
        self._holdings.defer_release(rec)
        return True

    def _later(self, rec: Record, ending: str, status: Released | None, exc: object) -> None:
        """The answer to a release nobody waited for (on the thread that sent it)."""
        if status is not None:
            self._released(rec, status)
            return
        if isinstance(exc, REDIS_FAILED):
            self.note_error(exc)
        else:
            logger.error("a release of task %s failed: %r", safe_repr(rec.id), exc)
        rec.ending = ending  # the pump tries again, backing off
        self._holdings.defer_release(rec)

    def _linger(self) -> None:
        """A release nobody waits for is queued: the pump sends it within LINGER."""
        if self._next_flush == _INF:
            self._next_flush = time.monotonic() + LINGER
            self._wake.set()

    def may_start(self, rec: Record, ctx: TaskContext) -> bool:
        """May `rec`'s on_execute start? Its start is recorded in Redis first (`StartBook`)."""
        return self._starts.may_start(rec, ctx)

    def _released(self, rec: Record, status: Released) -> bool:
        if status is Released.TAKEN or (status is Released.UNKNOWN and rec.revoked):
            self._forget(rec, revoke=True)
            logger.debug("task %s was taken from this process; no hook here", safe_repr(rec.id))
            return False
        if status is Released.UNKNOWN:
            logger.warning(
                "task %s ended here but Redis had no record of it (did Redis lose its data?)",
                safe_repr(rec.id),
            )
        self._forget(rec)
        return True

    def _forget(self, rec: Record, *, revoke: bool = False) -> None:
        """`rec` has left the group; a claim may use its room."""
        self._holdings.forget(rec, revoke=revoke)
        if self._backlog:
            self._room_freed()

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        """Heartbeats, claims, revocations and recovery, until stop()."""
        next_beat = time.monotonic() + self._heartbeat
        next_scan = time.monotonic() + _SCAN_PERIODS * self._dead_after
        # After any failure nothing is tried again before retry_at, but a
        # heartbeat that is due: the backoff never makes this process look dead.
        retry_at = 0.0
        backoff = _FIRST_BACKOFF
        # This 'while' loop right here is the group layer of this process.
        while True:
            now = time.monotonic()
            target = retry_at if not self._online else min(next_beat, self._next_claim)
            target = min(target, self._next_flush)
            if target > now:
                self._wake.wait(target - now)
            self._wake.clear()
            if self._stopping:
                break
            now = time.monotonic()
            if now >= self._next_flush:  # what no worker's step took along (link.py)
                self._next_flush = _INF  # from now on a queued release lingers anew
                wait = self._link.flush(young=False)
                if wait is not None:
                    self._next_flush = min(self._next_flush, now + wait)
            if now < retry_at and not (self._online and now >= next_beat):
                continue
            try:
                # A heartbeat's round claims too; else only a claim that is due.
                beat = not self._online or now >= next_beat
                if beat:
                    self._beat(reap=True)
                    next_beat = time.monotonic() + self._heartbeat
                if self._holdings.has_unreleased:
                    self._flush_releases()
                if self._maybe_orphans or now >= next_scan:
                    self._scan_orphans()
                    next_scan = time.monotonic() + _SCAN_PERIODS * self._dead_after
                if beat or now >= self._next_claim:
                    self._round()
            except Exception as exc:  # Redis down, an error reply, or a bug: back off
                if isinstance(exc, REDIS_FAILED):
                    self.note_error(exc)
                self._streak.failed(exc)
                retry_at = time.monotonic() + backoff
                backoff = min(backoff * 2, self._heartbeat)
                next_beat = max(next_beat, retry_at)
                self._next_claim = max(self._next_claim, retry_at)
            else:
                backoff = _FIRST_BACKOFF
                if self._streak.failures:
                    self._streak.recovered()
        # Last releases before the sweep in close().
        self._link.flush()
        try:
            if self._holdings.has_unreleased:
                self._flush_releases()
        except REDIS_FAILED:
            pass

    def _beat(self, *, reap: bool) -> None:
        sent = time.monotonic()
        beat = self._store.heartbeat()
        if not self._online:
            self._online = True
            self._connected_since = time.monotonic()
            self._maybe_orphans = True
            self._wake.set()
            logger.warning("group %r: Redis reachable again", self._group)
        if not self._nonce:
            self._nonce = beat.nonce
        elif beat.nonce != self._nonce:
            self._nonce = beat.nonce
            self._store.epoch.rebase(beat.epoch)  # lost with the rest
            self._on_reset()
        elif beat.epoch < beat.least and self._rollback is not None:
            # Redis forgot calls it had answered us: see rollback.py.
            self._rollback.recover(self._holdings, beat)
            self._maybe_orphans = True
            if not beat.was_member:  # it joined after the state Redis went back to
                self._register()
        elif not beat.was_member:
            logger.error(
                "group %r: this process was presumed dead (no heartbeat for %g s); "
                "the tasks taken from it end elsewhere",
                self._group,
                self._dead_after,
            )
            # The group forgot our executor names with us.
            self._register()
            # Apply the revocations before the lease lets tasks start unchecked.
            self._round()
        self._lease_until = sent + _LEASE * self._dead_after
        if reap and time.monotonic() - self._connected_since >= self._dead_after:
            reaped = self._store.reap(round(self._dead_after * 1e6))
            if reaped.requeued or reaped.gone:
                self._holdings.count_reaped(reaped.requeued, reaped.unstarted)
                logger.warning(
                    "group %r: tasks of dead members %s: %d had never started and run "
                    "elsewhere, %d had started and end EXHAUSTED",
                    self._group,
                    reaped.gone or "(still being reaped)",
                    reaped.unstarted,
                    reaped.requeued - reaped.unstarted,
                )

    def _on_reset(self) -> None:
        """Redis lost the group (restarted without persistence): record our tasks again."""
        recs = self._holdings.note_reset()
        logger.error(
            "group %r: Redis lost the group's state (restarted without persistence?); "
            "tasks that were waiting in Redis are lost; recording the %d tasks held here again",
            self._group,
            len(recs),
        )
        self._register()
        self._store.restore_many(
            [
                StoredTask(r.id, r.token, r.typ, r.due, r.dl, r.ex, r.payload, r.ra, r.ls)
                for r in recs
            ]
        )
        # Those that may have started must not run again should we die.
        self._starts.record_again(recs)
        # A task that ended meanwhile found no record to release: take out the
        # one just restored for it, or it would look orphaned and run again.
        for rec in self._holdings.not_held(recs):
            self.release_quietly(rec)

    def _flush_releases(self) -> None:
        recs = self._holdings.take_unreleased()
        try:
            replies = self._store.release_many([(r.id, r.token, r.ending) for r in recs])
        except BaseException:
            self._holdings.put_back_unreleased(recs)
            raise
        for rec, status in zip(recs, replies, strict=True):
            self._released(rec, status)

    def _scan_orphans(self) -> None:
        """Records Redis says we hold but we do not: requeue them (each round while settling)."""
        self._maybe_orphans = self._rollback is not None and self._rollback.settling()
        orphans = self._holdings.orphans(self._store.owned_ids())
        if orphans and self._rollback is not None:  # ended here: deleted, never run again
            orphans = self._rollback.release_ended(orphans)
        if not orphans:
            return
        moved = self._store.requeue_many((task_id, "") for task_id in orphans)
        if moved:
            logger.warning(
                "group %r: %d orphaned tasks handed back to the group", self._group, moved
            )

    def room(self) -> int:
        """How many tasks the next claim may take (not the slots fills in flight reserved)."""
        if not self._claiming or (self._rollback is not None and self._rollback.settling()):
            return 0
        free = self._max_bucket - len(self._bucket) - self._reserved
        return max(0, min(free, self._claim_batch))

    def reserve(self, n: int) -> None:
        """Fills are placing `n` tasks here: claims leave them the room (see `unreserve`)."""
        with self._reserve_lock:
            self._reserved += n

    def unreserve(self, n: int) -> None:
        with self._reserve_lock:
            self._reserved -= n
        if self._backlog:  # due tasks wait for room: a slot left unused is room
            self._room_freed()

    def _round(self) -> None:
        """Claim what fits, apply revocations, and decide when to look again."""
        self._gathering = False
        room = self.room()
        lookahead_us = round(self._heartbeat * 1e6)
        claim = self._store.claim(room, lookahead_us, self._names)
        if claim.behind:  # Redis lost writes: the heartbeat reconciles, then claim again
            self._beat(reap=False)
            self._next_claim = 0.0
        if claim.revocations:
            self._holdings.revoke_all(claim.revocations)
            # Only now, so that a release racing with this finds either the
            # entry or the revoked flag.
            self._store.ack_revocations(claim.revocations)
        now = claim.now_us
        taken = len(claim.tasks)
        put_back = self._take(now, claim.tasks) if claim.tasks else 0
        nxt = claim.next_us
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
                self._next_claim = time.monotonic() + min(_LOOK_AGAIN, self._heartbeat)
            else:
                room = self.room()
                if room >= self._worth_claiming:
                    self._next_claim = 0.0
                elif room:  # a few slots: gather the endings of the next moments
                    self._gathering = True
                    self._next_claim = time.monotonic() + _GATHER
                else:
                    self._next_claim = _INF
        else:
            self._backlog = False
            self._next_claim = time.monotonic() + (nxt - lookahead_us - now) / 1e6
        if claim.more_revocations:
            self._next_claim = 0.0
        elif self._gathering:  # room freed by endings during this round (_room_freed)
            self._next_claim = min(self._next_claim, time.monotonic() + _GATHER)

    def _take(self, now_us: int, tasks: list[Claimed]) -> int:
        """Put claimed tasks into the local bucket; hand back (and count) what does not fit."""
        back = self._placer.place(now_us, tasks)
        if back:
            self._store.requeue_many((rec.id, rec.token) for rec in back)
        return len(back)

    # -- close ------------------------------------------------------------------------

    def sweep(self) -> None:
        """At close: the tasks the local close drained, and pending releases, leave the group.

        Called once the thread has ended; retries for a while if Redis is unreachable.
        """
        self._link.flush()  # the endings' releases that are still queued
        recs = self._holdings.take_for_sweep()
        if not recs:
            return
        deadline = time.monotonic() + self._heartbeat + 2.0
        while (error := self._hand_back(recs)) is not None:
            if time.monotonic() >= deadline:
                # Never released as drained: left to the reapers, which hand them back.
                recs[:] = [r for r in recs if r.ending or r.started]
                break
            time.sleep(0.1)
        for rec in recs:
            if not rec.ending:
                rec.ending = "drained"  # it may have started here: at most once
        while (error := self._release_all(recs)) is not None:
            if time.monotonic() >= deadline:
                logger.error(
                    "group %r: %d tasks could not be taken out of the group (%s); "
                    "after %g s the other processes run those that never started "
                    "and end the others EXHAUSTED",
                    self._group,
                    len(recs),
                    error,
                    self._dead_after,
                )
                return
            time.sleep(0.1)
        for rec in recs:
            self._forget(rec)

    def _hand_back(self, recs: list[Record]) -> BaseException | None:
        """Give back those of `recs` that never started here (handback.py); the error if any."""
        try:
            handed = hand_back(self._handback, recs, self._forget)
        except REDIS_FAILED as exc:
            return exc
        if handed:
            self._holdings.count_handed_back(handed)
            logger.info("group %r: %d unstarted tasks handed back", self._group, handed)
        return None

    def _release_all(self, recs: list[Record]) -> BaseException | None:
        """Release `recs` with their recorded endings; the error if Redis is unreachable."""
        try:
            self._store.release_many([(r.id, r.token, r.ending) for r in recs])
        except REDIS_FAILED as exc:
            return exc
        return None

"""What this process holds of the group: a `Record` per task, kept by the `Holdings`.

The `Holdings` owns the lock, the id map (id -> `Record`), the fills in
flight, the endings Redis has not heard of yet, and the counters of the group
layer. It alone puts a group task into the local bucket or takes one out of
it, under its lock, so that the map and the local bucket always agree. It
makes no Redis call: the callers do, outside the lock.
"""

from __future__ import annotations

import contextlib
import datetime
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .._log import safe_repr
from ..bucket import TaskBucket
from ..errors import BucketClosed, BucketFull, TaskNotFound
from ..stats import BucketStats
from ..task import TaskHandle, TaskState, TaskType
from .errors import TaskOutOfReach
from .stats import SharedStats

__all__ = ["Holdings", "Record"]

# A claimed task to place: its record, executor, type, run-after and life
# span (seconds, local), and whether it is doomed (ends EXHAUSTED at once).
Placement = tuple["Record", object, TaskType, "float | None", float, bool]


class Record:
    """What this process knows of one shared task it holds."""

    __slots__ = (
        "claimed",
        "data",
        "dl",
        "doomed",
        "due",
        "ending",
        "error",
        "ex",
        "handle",
        "id",
        "ls",
        "mark",
        "moved",
        "payload",
        "ra",
        "revoked",
        "started",
        "token",
        "typ",
    )

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
        ra: str,
        ls: str,
    ) -> None:
        self.id = task_id
        # Unique per fill: tells this task from a later one with the same id.
        self.token = token
        self.data = data
        self.typ = typ
        # Due time and life-span deadline, microseconds of the Redis clock,
        # as it was placed here. A reset here does not move them: nothing
        # reads them while a member holds the task (docs/shared.md, reset).
        self.due = due
        self.dl = dl
        self.ex = ex
        self.payload = payload
        # The run-after and life span it was filled with (µs; '' if unknown):
        # reset's defaults.
        self.ra = ra
        self.ls = ls
        # Claimed from the group: the local bucket was filled with what was
        # left of its times, not with the times it was filled with.
        self.claimed = False
        # Past its life span, or taken from a dead member: its ending is decided.
        self.doomed = False
        self.handle: TaskHandle | None = None
        # Set (by the pump) when another process drained it or presumed us dead.
        self.revoked = False
        # The ending whose release could not reach Redis yet.
        self.ending = ""
        # Why the data could not be decoded, if it could not.
        self.error: BaseException | None = None
        # Its start was (being) recorded in Redis: it may have started here.
        self.started = False
        # Why a claimed task ends EXHAUSTED at once ('' if it does not):
        # 'started' (it had started on a member that died) or 'queued' (its
        # life span ran out while it waited in the group's queue).
        self.mark = ""
        # Set by a reset here: (monotonic time of the reset, its run-after or
        # None if the due time did not move, its life span or None), so that a
        # hand-back at close queues it with these times, not the record's.
        self.moved: tuple[float, float | None, float | None] | None = None


class Holdings:
    """The group tasks this process holds, and the counters of its group layer.

    Every method takes the lock itself; none calls Redis.
    """

    def __init__(self, bucket: TaskBucket) -> None:
        self._bucket = bucket
        # Guards _local, _inflight, _unreleased and the counters; never held
        # across a Redis call. The only user code run under it is the done
        # callbacks the local bucket calls inside drain(): re-entrant, so that
        # such a callback may fill or drain again.
        self._lock = threading.RLock()
        # Invariant: _local maps each id this process holds in the group to its
        #   record from the moment its task is put in the local bucket until
        #   Redis confirmed its release (or it was revoked): while it is there,
        #   no scan treats its Redis record as orphaned.
        self._local: dict[str, Record] = {}
        # Invariant: _inflight counts, per id, the fills between their Redis
        #   record and their entry in _local.
        self._inflight: dict[str, int] = {}
        # Ended here, not yet released in Redis (it could not be reached).
        self._unreleased: list[Record] = []
        self._filled_local = 0
        self._overflowed = 0
        self._claimed = 0
        self._exhausted_on_claim = 0
        self._reaped = 0
        self._drained_remote = 0
        self._reset_remote = 0
        self._revoked = 0
        self._rejected_duplicate = 0
        self._rejected_full = 0
        self._redis_errors = 0
        self._redis_resets = 0
        # Hand-backs (handback.py): tasks this process gave back unstarted at
        # close, tasks of dead members its reaps queued to run again, and
        # the claimed tasks it ended EXHAUSTED marked 'started' or 'queued'.
        self._handed_back = 0
        self._reaped_unstarted = 0
        self._marked = {"started": 0, "queued": 0}

    # -- fills in flight ----------------------------------------------------------

    def begin_fill(self, task_id: str) -> None:
        """A fill of `task_id` for this process is about to write its Redis record."""
        with self._lock:
            self._inflight[task_id] = self._inflight.get(task_id, 0) + 1

    def end_fill(self, task_id: str) -> None:
        """That fill is over: placed here, handed to the group, or failed."""
        with self._lock:
            left = self._inflight[task_id] - 1
            if left:
                self._inflight[task_id] = left
            else:
                del self._inflight[task_id]

    def knows(self, task_id: str) -> bool:
        """Is `task_id` held here, or being filled here?"""
        with self._lock:
            return task_id in self._local or bool(self._inflight.get(task_id))

    def held(self) -> int:
        """How many group tasks this process holds."""
        with self._lock:
            return len(self._local)

    def orphans(self, ids: Iterable[str]) -> list[str]:
        """Those of `ids` (held here, says Redis) that this process does not know."""
        with self._lock:
            return [i for i in ids if i not in self._local and not self._inflight.get(i)]

    # -- placing tasks in the local bucket ------------------------------------------

    def place_filled(
        self,
        rec: Record,
        executor: object,
        task_type: TaskType,
        *,
        run_after: float | None,
        life_span: float,
    ) -> TaskHandle | None:
        """Put a task just recorded in Redis as ours into the local bucket.

        Returns its handle, or None when the local bucket is full. Any other
        refusal of the local bucket is raised; nothing is then held here.
        """
        with self._lock:
            stale = self._local.get(rec.id)
            if stale is not None:
                # Redis no longer knows that one (drained by another process,
                # whose word has not reached us yet): it is gone.
                self._drop_revoked(stale)
            self._local[rec.id] = rec
            try:
                handle = self._bucket.fill(
                    task_type, rec.id, rec, executor, run_after=run_after, life_span=life_span
                )
            except BucketFull:
                del self._local[rec.id]
                return None
            except BaseException:
                del self._local[rec.id]
                raise
            rec.handle = handle
            self._filled_local += 1
            return handle

    def place_claimed(self, placements: Sequence[Placement]) -> list[Record]:
        """Put tasks claimed from the group into the local bucket; the records that do not fit.

        One `TaskBucket.fill_many` for them all, under the lock: the pump
        placing a claim gives up the GIL once, not once per task.
        """
        with self._lock:
            local = self._local
            items = []
            new = []
            back = []
            for rec, executor, task_type, run_after, life_span, doomed in placements:
                if rec.id in local:
                    back.append(rec)
                    continue
                local[rec.id] = rec
                rec.doomed = doomed
                # Before it is live: a worker may run it to its end before
                # fill_many returns, and its ending reads the mark (Pump.end).
                rec.claimed = True
                new.append(rec)
                items.append(
                    {
                        "task_type": task_type,
                        "task_id": rec.id,
                        "data": rec,
                        "executor": executor,
                        "run_after": run_after,
                        "life_span": life_span,
                    }
                )
            try:
                outcomes: list[object] = list(self._bucket.fill_many(items))
            except BucketClosed:  # those filled before close began are live here
                outcomes = [self._bucket.get(rec.id) for rec in new]
            for rec, outcome in zip(new, outcomes, strict=True):
                if isinstance(outcome, TaskHandle):
                    rec.handle = outcome
                    self._claimed += 1
                    if rec.doomed:
                        self._exhausted_on_claim += 1
                else:  # full, closed, or refused (TaskExists, ValueError)
                    rec.claimed = False
                    del local[rec.id]
                    back.append(rec)
            return back

    def drain_here(self, task_id: str) -> Record | None:
        """Drain `task_id` from the local bucket if this process holds it: its record.

        None if it is not held here. The caller then releases it in Redis.

        Raises:
            TaskNotFound: it is held here but has just ended.
        """
        with self._lock:
            rec = self._local.get(task_id)
            if rec is None or rec.revoked:
                return None
            handle = rec.handle
            if handle is None or self._bucket.get(task_id) != handle:
                # It ended here; its release is on its way (or waits for Redis).
                raise TaskNotFound(f"no live task {safe_repr(task_id)}")
            self._bucket.drain(task_id)  # TaskNotFound if it just ended
        return rec

    def reset_here(
        self,
        task_id: str,
        run_after: float | datetime.timedelta | None,
        life_span: float | datetime.timedelta | None,
    ) -> TaskHandle | None:
        """`TaskBucket.reset` of `task_id` if this process holds it: its handle.

        None if it is not held here (the caller asks Redis). The arguments
        are checked already. A task claimed from the group gets the times
        it was *filled* with as defaults, not the rest it was placed with.

        Raises:
            TaskNotFound: it is held here but has just ended.
            TaskOutOfReach: its ending is decided (doomed when claimed).
            ValueError: as `TaskBucket.reset`; nothing changed.
        """
        with self._lock:
            rec = self._local.get(task_id)
            if rec is None or rec.revoked:
                return None
            handle = rec.handle
            if handle is None or self._bucket.get(task_id) != handle:
                raise TaskNotFound(f"no live task {safe_repr(task_id)}")
            if rec.doomed:
                raise TaskOutOfReach(
                    f"task {safe_repr(task_id)} cannot be reset: it was past its life span "
                    "(or taken from a dead process) when claimed, and it ends EXHAUSTED",
                    task_id=task_id,
                    owner="",
                )
            if not rec.claimed:
                # Filled here: the local bucket's defaults are the fill's.
                return self._bucket.reset(task_id, run_after=run_after, life_span=life_span)
            if life_span is None and rec.ls:
                life_span = int(rec.ls) / 1e6
            if run_after is not None or rec.typ != "t" or not rec.ra:
                return self._bucket.reset(task_id, run_after=run_after, life_span=life_span)
            # The default run-after applies while it waits to start; a
            # running task keeps its start (SPEC). Started meanwhile: the
            # core refused and changed nothing, so reset its deadline only.
            try:
                return self._bucket.reset(task_id, run_after=int(rec.ra) / 1e6, life_span=life_span)
            except ValueError:
                if handle.state is TaskState.PENDING:
                    raise  # the life span is not longer than the run-after
            return self._bucket.reset(task_id, run_after=None, life_span=life_span)

    # -- revocations and releases ---------------------------------------------------

    def note_moved(
        self,
        task_id: str,
        run_after: float | datetime.timedelta | None,
        life_span: float | datetime.timedelta | None,
    ) -> None:
        """A reset here moved `task_id`'s timers: remember the times it used.

        The defaults are the durations it was filled with (`reset_here`);
        only a TIME_BOMB's due time moves.
        """

        def seconds(value: float | datetime.timedelta | None, filled: str) -> float | None:
            if isinstance(value, datetime.timedelta):
                return value.total_seconds()
            if value is not None:
                return float(value)
            return int(filled) / 1e6 if filled else None

        with self._lock:
            rec = self._local.get(task_id)
            if rec is not None:
                delay = seconds(run_after, rec.ra) if rec.typ == "t" else None
                rec.moved = (time.monotonic(), delay, seconds(life_span, rec.ls))

    def revoke(self, rec: Record) -> None:
        """`rec` was taken from this process before it started: flag it (once)."""
        with self._lock:
            if not rec.revoked:
                rec.revoked = True
                self._revoked += 1

    def revoke_all(self, revocations: Sequence[tuple[str, str]]) -> None:
        """Drop the tasks other processes took from this one: (token, id) pairs."""
        with self._lock:
            taken = []
            for token, task_id in revocations:
                rec = self._local.get(task_id)
                if rec is not None and rec.token == token and not rec.revoked:
                    # All flagged before any is dropped: cancelling a running
                    # one frees a worker, which must not start another of them.
                    rec.revoked = True
                    taken.append(rec)
            for rec in taken:
                self._drop_revoked(rec)

    def forget(self, rec: Record, *, revoke: bool = False) -> None:
        """`rec` has left the group (taken from us, with `revoke`): a claim may use its room."""
        with self._lock:
            if revoke and not rec.revoked:
                rec.revoked = True
                self._revoked += 1
            if self._local.get(rec.id) == rec:
                del self._local[rec.id]

    def defer_release(self, rec: Record) -> None:
        """`rec` ended with `rec.ending` while Redis was unreachable: release it later."""
        with self._lock:
            self._unreleased.append(rec)

    @property
    def has_unreleased(self) -> bool:
        return bool(self._unreleased)

    def take_unreleased(self) -> list[Record]:
        """The endings waiting for Redis, to release now (or `put_back_unreleased`)."""
        with self._lock:
            recs, self._unreleased = self._unreleased, []
        return recs

    def put_back_unreleased(self, recs: list[Record]) -> None:
        with self._lock:
            self._unreleased[:0] = recs

    def take_for_sweep(self) -> list[Record]:
        """At close: every task still held here and every pending release, each with its ending.

        What the local close drained has no ending ('' : the pump hands it
        back to the group if it never started, or releases it as 'drained').
        """
        with self._lock:
            recs = [r for r in self._local.values() if not r.revoked] + [
                r for r in self._unreleased if r.id not in self._local
            ]
            self._unreleased = []
        return recs

    def note_reset(self) -> list[Record]:
        """Redis lost the group: count it; the records to write again."""
        with self._lock:
            self._redis_resets += 1
            return [r for r in self._local.values() if r.handle is not None and not r.revoked]

    def not_held(self, recs: Iterable[Record]) -> list[Record]:
        """Those of `recs` this process no longer holds."""
        with self._lock:
            return [rec for rec in recs if self._local.get(rec.id) != rec]

    # -- counters -------------------------------------------------------------------

    def count_rejected(self, *, full: bool) -> None:
        with self._lock:
            if full:
                self._rejected_full += 1
            else:
                self._rejected_duplicate += 1

    def count_overflowed(self) -> None:
        with self._lock:
            self._overflowed += 1

    def count_drained_remote(self) -> None:
        with self._lock:
            self._drained_remote += 1

    def count_reset_remote(self) -> None:
        with self._lock:
            self._reset_remote += 1

    def count_reaped(self, n: int, unstarted: int = 0) -> None:
        with self._lock:
            self._reaped += n
            self._reaped_unstarted += unstarted

    def count_handed_back(self, n: int) -> None:
        with self._lock:
            self._handed_back += n

    def count_marked(self, mark: str) -> None:
        """A claimed task ended EXHAUSTED here with `mark` ('started' or 'queued')."""
        with self._lock:
            self._marked[mark] += 1

    def count_redis_error(self) -> None:
        with self._lock:
            self._redis_errors += 1

    def stats(self, local: BucketStats, member: str, *, connected: bool) -> SharedStats:
        with self._lock:
            return SharedStats(
                local=local,
                member=member,
                filled_local=self._filled_local,
                overflowed=self._overflowed,
                claimed=self._claimed,
                exhausted_on_claim=self._exhausted_on_claim,
                reaped=self._reaped,
                drained_remote=self._drained_remote,
                reset_remote=self._reset_remote,
                revoked=self._revoked,
                rejected_duplicate=self._rejected_duplicate,
                rejected_full=self._rejected_full,
                unreleased=len(self._unreleased),
                redis_errors=self._redis_errors,
                redis_resets=self._redis_resets,
                connected=connected,
                handed_back=self._handed_back,
                reaped_unstarted=self._reaped_unstarted,
                exhausted_started=self._marked["started"],
                expired_queued=self._marked["queued"],
            )

    def after_fork_in_child(self) -> None:
        """In a forked child: hold nothing, with a fresh lock (the old one may be held)."""
        self._lock = threading.RLock()
        self._local.clear()
        self._unreleased.clear()

    # -- internals ------------------------------------------------------------------

    def _drop_revoked(self, rec: Record) -> None:
        """Another process took `rec` away: forget it and drop its local task. Under _lock."""
        rec.revoked = True
        if self._local.get(rec.id) == rec:
            del self._local[rec.id]
        self._revoked += 1
        handle = rec.handle
        if handle is not None and self._bucket.get(rec.id) == handle:
            with contextlib.suppress(TaskNotFound):
                self._bucket.drain(rec.id)

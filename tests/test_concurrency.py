"""Concurrency stress: eight threads race on one bucket; every task gets exactly one ending.

Eight threads fill, drain, rescue, read and take stats on a small set of
shared ids while tasks fire on the real clock (short run_after and life
span), finish, fail, get exhausted (some under a worker that ignores its
ctx, so stuck workers and replacements happen too) and drain themselves from
inside ``on_execute``. Then ``close(wait=True)``, and the books must balance:

* every successful fill has exactly one ending and exactly one hook for it
  (none for DRAINED), and its handle is done; a refused fill left no trace;
* nothing ended twice, nothing was lost, done callbacks ran exactly once;
* ``stats()`` agrees with what the threads and the hooks saw, every snapshot
  taken during the run was consistent, and ``len(bucket) == 0``;
* no ``on_execute`` started before its due time.

The default run does about 8 s of operations (marked ``slow``); the ``long``
run does 3,000,000 operations (figures in docs/reliability.md).
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from wheelbucket import (
    BucketFull,
    BucketStats,
    Executor,
    TaskBucket,
    TaskContext,
    TaskExists,
    TaskHandle,
    TaskNotFound,
    TaskState,
    TaskType,
)

THREADS = 8
IDS = [f"job-{i}" for i in range(256)]
MAX_BUCKET = 128  # fewer than the ids: BucketFull happens too
LONG_OPERATIONS = 3_000_000

# What on_execute does, chosen per task.
OK, FAIL, WAIT, SPIN, SELF_DRAIN = range(5)
MODES = [OK] * 50 + [FAIL] * 15 + [WAIT] * 15 + [SPIN] * 10 + [SELF_DRAIN] * 10

STATE_CODE = {
    TaskState.FINISHED: 1,
    TaskState.FAILED: 2,
    TaskState.EXHAUSTED: 3,
    TaskState.DRAINED: 4,
    TaskState.RESCUED: 5,
}
HOOK_CODE = {"on_finish": 1, "on_execute_error": 2, "on_task_exhausted": 3, "on_panic": 5}


@dataclass(slots=True)
class Job:
    """A task's data: who it is, when it may start at the earliest, what it does."""

    uid: int
    not_before: int  # monotonic ns taken before fill() + run_after: <= the real due time
    mode: int
    hold: float


class Books:
    """What the hooks saw, per task uid; fixed-size arrays, so a million tasks fit."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.filled = bytearray(capacity)  # 1: fill() returned a handle
        self.executed = bytearray(capacity)  # on_execute starts
        self.hooks = bytearray(capacity)  # ending hooks run
        self.hook_kind = bytearray(capacity)  # HOOK_CODE of the last one
        self.callbacks = bytearray(capacity)  # done callbacks run
        self.wants_callback = bytearray(capacity)
        self.ending = bytearray(capacity)  # STATE_CODE of the handle once done
        self.early = 0
        self.self_drains = 0
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 50:
                self.problems.append(text)

    def bump(self, counts: bytearray, uid: int) -> None:
        with self.lock:
            if counts[uid] < 255:
                counts[uid] += 1


class Stress(Executor):
    def __init__(self, books: Books) -> None:
        self.books = books
        self.bucket: TaskBucket | None = None

    def on_execute(self, ctx: TaskContext, task_id: str, job: Job) -> int:
        now = time.monotonic_ns()
        books = self.books
        books.bump(books.executed, job.uid)
        if now < job.not_before:
            with books.lock:
                books.early += 1
            books.problem(f"{task_id} (uid {job.uid}) started {job.not_before - now} ns early")
        mode = job.mode
        if mode == FAIL:
            raise ValueError(f"planned failure of {job.uid}")
        if mode == WAIT:
            ctx.wait(job.hold)  # gives up when drained, exhausted or rescued
        elif mode == SPIN:
            time.sleep(job.hold)  # ignores ctx: may be exhausted under it
        elif mode == SELF_DRAIN:
            assert self.bucket is not None
            try:
                self.bucket.drain(task_id)  # re-entrant drain, usually of itself
            except TaskNotFound:
                pass
            else:
                with books.lock:
                    books.self_drains += 1
        return job.uid

    def _hook(self, name: str, job: Job) -> None:
        books = self.books
        books.bump(books.hooks, job.uid)
        books.hook_kind[job.uid] = HOOK_CODE[name]

    def on_finish(self, ctx: TaskContext, task_id: str, job: Job) -> None:
        self._hook("on_finish", job)

    def on_execute_error(
        self, ctx: TaskContext, task_id: str, job: Job, error: BaseException
    ) -> None:
        self._hook("on_execute_error", job)

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, job: Job) -> None:
        self._hook("on_task_exhausted", job)

    def on_panic(self, ctx: TaskContext, task_id: str, job: Job) -> None:
        self._hook("on_panic", job)


@dataclass
class Tally:
    """One racing thread's own count of what it did."""

    ops: int = 0
    fills: int = 0
    rejected_duplicate: int = 0
    rejected_full: int = 0
    drains: int = 0
    not_found: int = 0
    rescues: int = 0
    rescued: int = 0
    stats_taken: int = 0
    reads: int = 0
    waits: int = 0
    handles: list[tuple[int, TaskHandle]] = field(default_factory=list)


def _check_snapshot(s: BucketStats, previous: BucketStats | None, books: Books) -> None:
    ended = s.finished + s.failed + s.exhausted + s.drained + s.rescued
    ok = (
        s.live == s.pending + s.running
        and min(s.live, s.pending, s.running) >= 0
        and s.filled == ended + s.live
        and s.live <= MAX_BUCKET
    )
    if not ok:
        books.problem(f"inconsistent stats snapshot: {s}")
    if previous is not None:
        for name in ("filled", "finished", "failed", "exhausted", "drained", "rescued"):
            if getattr(s, name) < getattr(previous, name):
                books.problem(f"stats.{name} went backwards: {previous} -> {s}")


def _sweep(tally: Tally, books: Books, *, final: bool) -> None:
    """Note the ending of each done handle and let go of it (memory stays flat)."""
    keep = []
    for uid, handle in tally.handles:
        if handle.done():
            books.ending[uid] = STATE_CODE[handle.state]
        elif final:
            books.problem(f"{handle!r} (uid {uid}) not done after close()")
        else:
            keep.append((uid, handle))
    tally.handles = keep


def _racer(
    bucket: TaskBucket,
    books: Books,
    uids: Callable[[], int],
    tally: Tally,
    seed: int,
    stop: Callable[[int], bool],
) -> None:
    rng = random.Random(seed)
    previous: BucketStats | None = None
    immediate, bomb = TaskType.IMMEDIATE, TaskType.TIME_BOMB
    try:
        while not stop(tally.ops):
            tally.ops += 1
            roll = rng.random()
            if roll < 0.45:
                uid = uids()
                if uid >= books.capacity:
                    continue
                task_id = IDS[rng.randrange(len(IDS))]
                before = time.monotonic_ns()
                if roll < 0.2:
                    task_type, run_after, not_before = immediate, None, before
                else:
                    run_after = 0.0 if roll < 0.25 else rng.uniform(0, 0.02)
                    task_type, not_before = bomb, before + math.ceil(run_after * 1e9)
                life = (run_after or 0.0) + rng.uniform(0.002, 0.2)
                mode = rng.choice(MODES)
                hold = rng.uniform(0, 0.03 if mode == WAIT else 0.01)
                job = Job(uid, not_before, mode, hold)
                try:
                    handle = bucket.fill(
                        task_type, task_id, job, run_after=run_after, life_span=life
                    )
                except TaskExists:
                    tally.rejected_duplicate += 1
                    continue
                except BucketFull:
                    tally.rejected_full += 1
                    continue
                tally.fills += 1
                books.filled[uid] = 1
                if rng.random() < 1 / 16:
                    books.wants_callback[uid] = 1
                    handle.add_done_callback(lambda h, uid=uid: books.bump(books.callbacks, uid))
                tally.handles.append((uid, handle))
            elif roll < 0.53:
                try:
                    bucket.drain(IDS[rng.randrange(len(IDS))])
                except TaskNotFound:
                    tally.not_found += 1
                else:
                    tally.drains += 1
            elif roll < 0.63:
                snapshot = bucket.stats()
                _check_snapshot(snapshot, previous, books)
                previous = snapshot
                tally.stats_taken += 1
            elif roll < 0.85:
                task_id = IDS[rng.randrange(len(IDS))]
                got = bucket.get(task_id)
                if got is not None and got.id != task_id:
                    books.problem(f"get({task_id!r}) returned {got!r}")
                _ = task_id in bucket, len(bucket)
                tally.reads += 1
            elif roll < 0.99997:
                if tally.handles:
                    _, handle = tally.handles[rng.randrange(len(tally.handles))]
                    handle.wait(0)
                    tally.waits += 1
            else:
                rescued = bucket.rescue()
                if len(set(rescued)) != len(rescued):
                    books.problem(f"rescue() returned an id twice: {rescued}")
                tally.rescues += 1
                tally.rescued += len(rescued)
            if tally.ops % 16 == 0:
                # Let go of the GIL now and then: eight threads that never
                # block would starve the workers of it (Python threads are
                # handed the GIL every 5 ms, not in turn).
                time.sleep(0)
            if tally.ops % 256 == 0:
                _sweep(tally, books, final=False)
    except BaseException as exc:  # a racer must report, never die silently
        books.problem(f"racer {seed} raised {exc!r}")


def run_stress(*, seconds: float | None = None, operations: int | None = None) -> dict[str, Any]:
    """Race THREADS threads on one bucket; return the figures; fail on any problem."""
    capacity = operations + 16 if operations is not None else 4_000_000
    books = Books(capacity)
    executor = Stress(books)
    counter = itertools.count()
    uids = counter.__next__  # atomic under the GIL
    name = f"stress{time.monotonic_ns()}"
    bucket = TaskBucket(executor=executor, workers=4, max_bucket=MAX_BUCKET, name=name)
    executor.bucket = bucket
    started = time.monotonic()
    if operations is not None:
        per_thread = -(-operations // THREADS)

        def stop(ops: int) -> bool:
            return ops >= per_thread
    else:
        assert seconds is not None
        end = started + seconds

        def stop(ops: int) -> bool:
            return ops % 64 == 0 and time.monotonic() >= end

    tallies = [Tally() for _ in range(THREADS)]
    racers = [
        threading.Thread(
            target=_racer,
            args=(bucket, books, uids, tally, seed, stop),
            name=f"racer-{seed}",
        )
        for seed, tally in enumerate(tallies)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    raced = time.monotonic() - started
    closing = time.monotonic()
    bucket.close(wait=True)
    close_seconds = time.monotonic() - closing
    for tally in tallies:
        _sweep(tally, books, final=True)
    stats = bucket.stats()
    left = len(bucket)
    for thread in [t for t in threading.enumerate() if t.name.startswith(name + "-")]:
        thread.join(10)
        if thread.is_alive():
            books.problem(f"thread {thread.name} still alive after close()")

    # -- the books must balance ---------------------------------------------
    total = sum
    filled = total(t.fills for t in tallies)
    issued = min(next(counter), capacity)
    by_state = dict.fromkeys(STATE_CODE.values(), 0)
    hook_for_state = {1: 1, 2: 2, 3: 3, 5: 5}
    for uid in range(issued):
        execs, hooks = books.executed[uid], books.hooks[uid]
        if not books.filled[uid]:
            if execs or hooks or books.callbacks[uid]:
                books.problem(f"uid {uid} was refused but ran ({execs}) or got hooks ({hooks})")
            continue
        state = books.ending[uid]
        if state == 0:
            books.problem(f"uid {uid} has no ending")
            continue
        by_state[state] += 1
        if execs > 1:
            books.problem(f"uid {uid} executed {execs} times")
        if state in (1, 2) and execs != 1:
            books.problem(f"uid {uid} ended {state} but executed {execs} times")
        if state == 4:
            if hooks:
                books.problem(f"uid {uid} was drained but got {hooks} hooks")
        elif hooks != 1 or books.hook_kind[uid] != hook_for_state[state]:
            books.problem(
                f"uid {uid} ended {state} with {hooks} hooks (last {books.hook_kind[uid]})"
            )
        if books.callbacks[uid] != books.wants_callback[uid]:
            books.problem(f"uid {uid}: {books.callbacks[uid]} done callbacks")
    expected = {
        "filled": filled,
        "finished": by_state[1],
        "failed": by_state[2],
        "exhausted": by_state[3],
        "drained": by_state[4],
        "rescued": by_state[5],
        "live": 0,
        "rejected_duplicate": total(t.rejected_duplicate for t in tallies),
        "rejected_full": total(t.rejected_full for t in tallies),
        "hook_errors": 0,
        "executed": total(books.executed[:issued]),
    }
    actual = {key: getattr(stats, key) for key in expected}
    if actual != expected:
        books.problem(f"stats disagree: expected {expected}, got {actual}")
    drains = total(t.drains for t in tallies) + books.self_drains
    if stats.drained != drains:
        books.problem(f"{drains} successful drains but stats.drained == {stats.drained}")
    if stats.rescued != total(t.rescued for t in tallies):
        books.problem("rescue() return values do not add up to stats.rescued")
    if left != 0:
        books.problem(f"len(bucket) == {left} after close()")
    assert books.problems == [], "\n".join(books.problems)
    assert books.early == 0
    ops = total(t.ops for t in tallies)
    return {
        "operations": ops,
        "seconds": raced,
        "ops_per_second": ops / raced,
        "close_seconds": close_seconds,
        "fills": filled,
        "refused_duplicate": expected["rejected_duplicate"],
        "refused_full": expected["rejected_full"],
        "drains": total(t.drains for t in tallies),
        "self_drains": books.self_drains,
        "drain_not_found": total(t.not_found for t in tallies),
        "rescue_calls": total(t.rescues for t in tallies),
        "stats_snapshots": total(t.stats_taken for t in tallies),
        "stats": stats,
    }


def _report(result: dict[str, Any]) -> None:
    s = result["stats"]
    print(
        f"\nstress: {result['operations']} operations by {THREADS} threads in "
        f"{result['seconds']:.1f} s ({result['ops_per_second']:.0f}/s), "
        f"close {result['close_seconds']:.2f} s\n"
        f"  fills {result['fills']} (refused: {result['refused_duplicate']} duplicate, "
        f"{result['refused_full']} full); drains {result['drains']} + {result['self_drains']} "
        f"from on_execute ({result['drain_not_found']} TaskNotFound); rescue() x "
        f"{result['rescue_calls']}; stats() x {result['stats_snapshots']}\n"
        f"  endings: finished {s.finished}, failed {s.failed}, exhausted {s.exhausted}, "
        f"drained {s.drained}, rescued {s.rescued}; executed {s.executed}; "
        f"workers_stuck {s.workers_stuck}, workers_replaced {s.workers_replaced}; "
        f"lateness p50 {s.lateness_p50 * 1e3:.2f} ms, p99 {s.lateness_p99 * 1e3:.2f} ms, "
        f"max {s.lateness_max * 1e3:.1f} ms"
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_eight_threads_racing_keep_every_invariant() -> None:
    result = run_stress(seconds=8.0)
    _report(result)
    s = result["stats"]
    # The run exercised what it claims to (generous floors: the machine is shared).
    assert result["fills"] >= 1000
    assert min(s.finished, s.failed, s.exhausted, s.drained) > 0
    assert result["refused_duplicate"] > 0


@pytest.mark.long
@pytest.mark.timeout(900)
@pytest.mark.usefixtures("long_only")
def test_three_million_operations_keep_every_invariant() -> None:
    result = run_stress(operations=LONG_OPERATIONS)
    _report(result)
    s = result["stats"]
    assert result["operations"] >= LONG_OPERATIONS
    assert min(s.finished, s.failed, s.exhausted, s.drained, s.rescued) > 0

"""The scheduler: one thread that drives the timing wheel.

It owns the wheel and its inbox, and nothing else:

* Callers change a task's state through `lifecycle`, then `submit` its id
  here: a lock-free deque append, and a wake-up only if the task's next
  deadline is earlier than the one the thread sleeps towards.
* The thread alone touches the wheel. It files each id from the inbox at
  the task's next deadline, with the generation of its timers, fires due
  filings (`Lifecycle.fired` drops the stale ones, hands tasks to start to
  `dispatch` and life-span endings to `exhausted`), then sleeps until the
  next occupied slot. Nothing ever takes a filing out: an ended or moved
  task's filing goes stale, and a purge drops the stale ones once they
  outnumber the live tasks. It never runs user code, so a slow hook cannot
  delay a timer.
* It watches the pool's queues while work waits (the stall watch), and adds
  a thread when they stop moving.

What it calls above itself is handed in as callables; the pool is a lower
layer it reads directly.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from .clock import Clock
from .lifecycle import Ending, Lifecycle
from .pool import WorkerPool
from .task import ENDED, R_DUE, R_GEN, Record, Task
from .wheel import TimingWheel

__all__ = ["AWAKE", "INBOX_BATCH", "NEVER", "Scheduler"]

# wake_at while the scheduler is awake: no caller needs to wake it, since it
# looks at the inbox again before it sleeps.
AWAKE = -(1 << 62)
# wake_at while it sleeps with an empty wheel.
NEVER = 1 << 62
# Wake the scheduler once this many submissions wait, so the inbox (and the
# time it takes to apply) stays bounded even when no deadline is near.
INBOX_BATCH = 4096
# A queue head that has not moved for this long, while the process stayed
# mostly idle, means the awake workers are blocked: wake one more (see
# Scheduler._watch_stall).
STALL_NS = 2_000_000
# Fired timers are handled under the lock in chunks of this size, so a
# storm never holds the lock long enough to stall a caller of fill.
FIRE_CHUNK = 512
# Purge stale filings when the wheel holds this many more than twice the
# live tasks (a live task has about one filing, so then more than half are
# stale), in steps of about PURGE_STEP filings per turn of the loop, so that
# a purge of millions never holds up a timer for long.
PURGE_SLACK = 1024
PURGE_STEP = 16384


class Scheduler:
    """The wheel, its inbox, and the thread that drives them."""

    def __init__(
        self,
        *,
        clock: Clock,
        tick_ns: int,
        wheel_bits: int,
        wheel_levels: int,
        lifecycle: Lifecycle,
        pool: WorkerPool,
        dispatch: Callable[[list[Task]], None],
        exhausted: Callable[[Ending], None],
        name: str,
    ) -> None:
        self.clock = clock
        self.tick_ns = tick_ns
        self.life = lifecycle
        self.pool = pool
        self._dispatch = dispatch
        self._exhausted = exhausted
        # Invariant: only the scheduler thread touches the wheel.
        self.wheel: TimingWheel[str] = TimingWheel(
            bits=wheel_bits, levels=wheel_levels, now=clock.monotonic_ns() // tick_ns
        )
        # deque.append and popleft are atomic across threads (documented):
        # callers append (task id, record or Task), the scheduler thread pops
        # them: the record itself, so that filing it costs no lookup in the
        # (big, and so cold in the CPU's caches) id map.
        self.inbox: deque[tuple[str, Record | Task]] = deque()
        # Ids of tasks whose timer reset() moved earlier: filed after the
        # inbox, once per batch however often they moved.
        self.moves: deque[str] = deque()
        self.wake = threading.Event()
        # Invariant: while the scheduler sleeps, wake_at is the monotonic ns it
        # sleeps towards; a caller whose deadline is earlier sets `wake`.
        self.wake_at = AWAKE
        self.asleep = False
        self.stopping = False
        self.purges = 0
        # Tasks fired on the last turn whose life-span timer is not filed yet,
        # and the earliest of their deadlines (see _arm).
        self.unarmed: list[Task] = []
        self.unarmed_soonest = NEVER
        # The stall watch: is the head of the pool's queues moving?
        self.watching = False
        self.stall_head: object = None
        self.stall_since = 0
        self.stall_cpu = 0
        self.thread = threading.Thread(target=self._run, name=f"{name}-scheduler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    # -- any thread ---------------------------------------------------------

    def submit(self, task_id: str, task: Task, due: int) -> None:
        """Have the thread file `task`, whose next deadline is `due` (ns). Never blocks."""
        inbox = self.inbox
        inbox.append((task_id, task))
        if due < self.wake_at or not len(inbox) % INBOX_BATCH:
            self.wake.set()

    def submit_timer(self, task_id: str, rec: Record, due: int, since: int) -> bool:
        """`submit` a new TIME_BOMB record, then `late(since)`: the whole hand-off of a fill.

        One call, since this runs once per fill. Never blocks.
        """
        inbox = self.inbox
        inbox.append((task_id, rec))
        wake_at = self.wake_at
        if due < wake_at or not len(inbox) % INBOX_BATCH:
            self.wake.set()
        if AWAKE < wake_at < since:
            return True
        work = self.pool.work
        if work:
            try:
                return work[0]._due < since
            except IndexError:  # a worker took it meanwhile
                pass
        return False

    def move(self, task_id: str, due: int) -> None:
        """`task_id`'s next deadline moved earlier, to `due` (ns): file it anew. Never blocks."""
        moves = self.moves
        moves.append(task_id)
        if due < self.wake_at or not len(moves) % INBOX_BATCH:
            self.wake.set()

    def watch(self) -> None:
        """Work was queued for the pool: make sure the stall watch looks at it."""
        if not self.watching:
            self.watching = True
            self.wake.set()

    def late(self, since: int) -> bool:
        """The thread oversleeps a deadline before `since` (ns), or the oldest task queued
        for the pool was due before it: due work is being starved (see TaskBucket.fill)."""
        if AWAKE < self.wake_at < since:
            return True
        work = self.pool.work
        if work:
            try:
                return work[0]._due < since
            except IndexError:  # a worker took it meanwhile
                pass
        return False

    def stop(self, join_timeout: float) -> None:
        self.stopping = True
        self.wake.set()
        if threading.current_thread() is not self.thread:
            self.thread.join(join_timeout)

    # -- the scheduler thread ---------------------------------------------

    def _run(self) -> None:
        clock = self.clock
        wheel = self.wheel
        inbox = self.inbox
        moves = self.moves
        tasks = self.life.tasks
        tick_ns = self.tick_ns
        wake = self.wake
        wheel_add = wheel.add
        wheel_add_many = wheel.add_many
        rec: Record | Task | None = None
        # This 'while' loop right here is the scheduler.
        while True:
            self.wake_at = AWAKE
            wake.clear()
            # File what callers submitted; a bounded batch, so producers
            # cannot keep the loop from firing timers. A record is filed as
            # submitted: if it changed or ended since, its filing is stale,
            # and dropped when it comes out (reset files a timer moved
            # earlier anew, through `moves`). A filling thread makes hundreds
            # of tasks due in the same tick: a run of them goes in with one
            # add_many (the slot found once, one shared tick int).
            run_keys: list[str] = []
            run_gens: list[int] = []
            last_tick = -1
            for _ in range(len(inbox)):
                task_id, rec = inbox.popleft()
                if isinstance(rec, tuple):
                    # Ceiling division: a deadline between two ticks belongs
                    # to the later one, so nothing ever fires early.
                    tick = -(-rec[1] // tick_ns)  # R_DUE (literals: the hot loop)
                    gen = rec[3]  # R_GEN
                else:
                    if rec._state >= ENDED:
                        continue
                    tick = -(-(rec._due + rec._life) // tick_ns)
                    gen = rec._gen
                if tick == last_tick:
                    run_keys.append(task_id)
                    run_gens.append(gen)
                    continue
                if run_keys:
                    wheel_add_many(last_tick, run_keys, run_gens)
                    run_keys = []
                    run_gens = []
                last_tick = tick
                wheel_add(tick, task_id, gen)
            if run_keys:
                wheel_add_many(last_tick, run_keys, run_gens)
            rec = None  # sleep holding no record (it holds the caller's data)
            run_keys = []
            run_gens = []
            if moves:
                self._file_moves()
            if self.unarmed:
                self._arm()
            now = clock.monotonic_ns()
            keys, gens = wheel.advance(now // tick_ns)
            if keys:
                self._fire(keys, gens, now)
            keys = []  # sleep holding nothing
            gens = []
            if wheel.purging or len(wheel) > 2 * len(tasks) + PURGE_SLACK:
                if not wheel.purging:
                    self.purges += 1
                wheel.purge(self.life.current, PURGE_STEP)
            if self.stopping:
                break
            nxt = wheel.next_tick()
            deadline = None if nxt is None else nxt * tick_ns
            if self.unarmed and (deadline is None or self.unarmed_soonest < deadline):
                deadline = self.unarmed_soonest
            stall_timeout = self._watch_stall() if self.watching else None
            self.wake_at = NEVER if deadline is None else deadline
            # Look again after publishing wake_at: a submission that came
            # before it saw AWAKE and did not wake us.
            if inbox or moves or wheel.purging or (deadline is not None and deadline <= now):
                continue
            self.asleep = True
            clock.wait(wake, deadline, stall_timeout)
            self.asleep = False
        self.wake_at = AWAKE

    def _file(self, task_id: str) -> None:
        """File live `task_id` at its next deadline, in its generation (scheduler thread)."""
        rec = self.life.tasks.get(task_id)
        if rec is None:
            return
        if isinstance(rec, tuple):
            due = rec[R_DUE]
            gen = rec[R_GEN]
        else:
            if rec._state >= ENDED:
                return
            due = rec._due + rec._life
            gen = rec._gen
        self.wheel.add(-(-due // self.tick_ns), task_id, gen)

    def _file_moves(self) -> None:
        """File the tasks whose timer moved earlier, each once (it may have moved often)."""
        moves = self.moves
        seen: set[str] = set()
        for _ in range(len(moves)):
            task_id = moves.popleft()
            if task_id not in seen:
                seen.add(task_id)
                self._file(task_id)

    def _arm(self) -> None:
        """File the life-span timers of tasks fired on the last turn, if still live."""
        unarmed = self.unarmed
        self.unarmed = []
        self.unarmed_soonest = NEVER
        tasks = self.life.tasks
        file = self._file
        for task in unarmed:
            if task._state < ENDED and tasks.get(task.id) is task:
                file(task.id)

    def _fire(self, keys: list[str], gens: list[int], now: int) -> None:
        """Handle filings that came due: start tasks, exhaust the overdue."""
        fired = self.life.fired
        file = self._file
        for start in range(0, len(keys), FIRE_CHUNK):
            stop = start + FIRE_CHUNK
            ready, endings, refile = fired(keys[start:stop], gens[start:stop], now)
            if ready:
                # Life-span timers are armed on the next turn of the loop (see
                # _arm), and only for tasks still live then: a short task has
                # ended by then and never costs a filing.
                soonest = self.unarmed_soonest
                for task in ready:
                    end = task._due + task._life
                    if end < soonest:
                        soonest = end
                self.unarmed.extend(ready)
                self.unarmed_soonest = soonest
                self._dispatch(ready)
            for task_id in refile:
                file(task_id)
            for ending in endings:
                self._exhausted(ending)

    def _watch_stall(self) -> float | None:
        """One more thread when the pool's queues are stuck.

        Tasks that block (I/O, sleep, waiting on a lock) release the GIL, and
        then more threads do help: this is how the pool finds out. The head
        of the work queue not moving for STALL_NS is not enough, since a
        worker that merely waits for the GIL (say, while another thread
        fills timers) does not move it either, and waking more threads then
        only lengthens the queue for the GIL (docs/design.md). So a worker is
        added only if, meanwhile, the process used less than half a core: its
        threads are blocked, not busy. An ending hook stuck behind a slow one
        gets a hook helper whatever the CPU does, since no ending may wait
        behind other work. While work is queued the scheduler wakes every
        STALL_NS to look; with nothing queued it does not. Thread progress is
        a matter of real time, so this reads the real clocks even when the
        bucket runs on a fake one. Returns the real seconds to sleep at most,
        or None.
        """
        now = time.monotonic_ns()
        pool = self.pool
        hook, work = pool.heads()
        head = hook if hook is not None else work
        if head is None:
            self.stall_head = None
            self.watching = False
            # Look again: a submit that saw watching=True did not wake us.
            hook, work = pool.heads()
            if hook is None and work is None:
                return None
            self.watching = True
        if head is not self.stall_head:
            self.stall_head = head
            self.stall_since = now
            self.stall_cpu = time.process_time_ns()
        elif now - self.stall_since >= STALL_NS:
            cpu = time.process_time_ns()
            if hook is not None:
                pool.add_helper()
            elif (cpu - self.stall_cpu) * 2 < now - self.stall_since:
                pool.add_worker()
            self.stall_since = now
            self.stall_cpu = cpu
        return max(0.0, (self.stall_since + STALL_NS - now) / 1e9)

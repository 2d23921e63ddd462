"""The worker pool: a few threads that run tasks and ending hooks.

Work arrives on two lock-free deques (``deque.append`` and ``deque.popleft``
are atomic across threads, as the CPython documentation promises): `hooks`
for ending hooks, served first, and `work` for tasks to execute. An idle
worker parks on its own lock; whoever adds work unparks one idle worker, and
a worker that takes a task while more is waiting unparks one more, so the
number of busy threads follows the backlog without a thundering herd.

An ending hook never waits behind live tasks: when every worker is busy,
`submit_hook` starts a *hook helper* at once, a thread that serves only the
hooks queue and exits when it is empty, within the same bound of extra
threads that replacements use.

A worker whose task ended under it (drained, exhausted or rescued while
``on_execute`` ran) is *stuck* in user code: a thread cannot be killed. It
stops counting as a worker and a replacement starts, up to `max_extra`
threads beyond `workers`. When the stuck thread comes back it rejoins the
pool if there is room, and exits otherwise.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._log import logger
from .task import Task

__all__ = ["Worker", "WorkerPool"]


class Worker:
    """One pool thread."""

    __slots__ = ("_park", "busy", "helper", "in_idle", "pool", "stuck", "thread")

    def __init__(self, pool: WorkerPool, name: str, *, helper: bool = False) -> None:
        self.pool = pool
        # A hook helper serves the hooks queue only, and exits when it is empty.
        self.helper = helper
        # Invariant: busy is False only while the worker is parked or about
        # to park with every queue seen empty (settle() relies on it).
        self.busy = True
        # Invariant: in_idle is True while this worker has an entry in pool.idle.
        self.in_idle = False
        # Invariant: stuck is True while the task it runs has ended under it.
        self.stuck = False
        self._park = threading.Lock()
        self._park.acquire()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def unpark(self) -> None:
        # Not contextlib.suppress: this runs on every wake-up, and the context
        # manager costs more than the release itself.
        try:  # noqa: SIM105
            self._park.release()
        except RuntimeError:  # already unparked: it will find the work anyway
            pass

    def _run(self) -> None:
        pool = self.pool
        if self.helper:
            pool.serve_hooks(self)
            return
        work = pool.work
        hooks = pool.hooks
        idle = pool.idle
        execute = pool.execute
        # This loop is the worker: hooks first, then tasks, then park.
        while True:
            if hooks:
                try:
                    job = hooks.popleft()
                except IndexError:
                    continue
                job()
                del job  # the ended task's data and executor go now, not at the next job
                continue
            try:
                task = work.popleft()
            except IndexError:
                if pool.stopping:
                    break
                self.busy = False
                if not self.in_idle:
                    self.in_idle = True
                    idle.append(self)
                if work or hooks or pool.stopping:  # re-check: no lost wake-up
                    self.busy = True
                    continue
                self._park.acquire()
                self.busy = True
                continue
            execute(task, self)
            del task  # an idle worker keeps no handle (nor its outcome) alive
            if self.stuck and not pool.rejoin(self):
                pool.exited(self, counted=False)
                return
        pool.exited(self, counted=True)


class WorkerPool:
    """`workers` threads (started on demand) plus bounded replacements."""

    def __init__(
        self,
        execute: Callable[[Task, Worker], None],
        workers: int,
        max_extra: int,
        name: str,
    ) -> None:
        #: Runs one task on the calling worker (`calls.Calls.execute`).
        self.execute = execute
        self.size = workers
        self.max_extra = max_extra
        self.name = name
        self.work: deque[Task] = deque()
        self.hooks: deque[Callable[[], None]] = deque()
        self.idle: deque[Worker] = deque()
        self.stopping = False
        self._lock = threading.RLock()  # re-entrant for rescue() in a signal handler
        # Invariant: threads == every started worker that has not exited;
        # active == threads - (workers stuck in user code).
        self.threads: list[Worker] = []
        self.active = 0
        self.helpers = 0  # hook helpers running (counted in threads, not active)
        self.stuck = 0
        self.replaced = 0
        self._serial = 0
        self._bound_logged = False  # see _grow

    def submit(self, task: Task) -> None:
        """Queue `task` for a worker. Never blocks."""
        self.work.append(task)
        self.nudge()

    def submit_hook(self, job: Callable[[], None]) -> None:
        """Queue an ending hook, served before any task, and see that a thread runs it now.

        An idle worker takes it; with none idle and the pool full, a hook
        helper starts (within the bound of extra threads), so the hook never
        waits for a busy worker to free up.
        """
        self.hooks.append(job)
        if self.idle:
            self.wake_one()
        elif self.active < self.size:
            self._grow()
        elif not self.helpers:
            self.add_helper()

    def add_helper(self) -> None:
        """Start a hook helper, unless the bound of extra threads is reached."""
        with self._lock:
            if self.stopping or not self.hooks:
                return
            if len(self.threads) >= self.size + self.max_extra:
                if not self._bound_logged:
                    self._bound_logged = True
                    logger.warning(
                        "%s: every thread is busy and the bound of %d extra threads is "
                        "reached; ending hooks wait for one",
                        self.name,
                        self.max_extra,
                    )
                return
            self._serial += 1
            worker = Worker(self, f"{self.name}-hooks-{self._serial}", helper=True)
            self.threads.append(worker)
            self.helpers += 1
            worker.thread.start()

    def serve_hooks(self, worker: Worker) -> None:
        """A hook helper's life: run queued hooks until there are none, then exit."""
        hooks = self.hooks
        while not self.stopping:
            try:
                job = hooks.popleft()
            except IndexError:
                with self._lock:
                    if hooks and not self.stopping:
                        continue  # one came in as we looked: serve it
                    self.helpers -= 1
                    self.threads.remove(worker)
                    self._bound_logged = False
                return
            job()
            del job
        with self._lock:
            self.helpers -= 1
            self.threads.remove(worker)

    def nudge(self) -> None:
        """Make sure one worker is awake for the queued work.

        Only one: under the GIL, threads that run Python code take turns, so
        waking every worker for a burst of short tasks only makes them fight
        over it (docs/design.md has the measurement). More workers join when the work
        stalls, that is when tasks block: see `add_worker` and the
        scheduler's stall watch.
        """
        if len(self.idle) >= self.active:  # every worker parked, or none yet
            self.add_worker()

    def add_worker(self) -> None:
        """Wake one more parked worker, or start one if the pool is not full yet."""
        if self.idle:
            self.wake_one()
        elif self.active < self.size:
            self._grow()

    def wake_one(self) -> None:
        try:
            worker = self.idle.popleft()
        except IndexError:
            return
        worker.in_idle = False
        worker.unpark()

    def _grow(self) -> None:
        with self._lock:
            if self.stopping or self.active >= self.size:
                return
            # Workers stuck in ended tasks still count against the bound: without
            # this, every stuck task would let a submit start one more thread.
            if len(self.threads) >= self.size + self.max_extra:
                if self.stuck and not self._bound_logged:
                    # Once until a thread exits: the stall watch calls this every ms.
                    self._bound_logged = True
                    logger.warning(
                        "%s: %d worker(s) stuck in tasks that already ended and the bound "
                        "of %d extra threads is reached; queued work waits for one to return",
                        self.name,
                        self.stuck,
                        self.max_extra,
                    )
                return
            self._start_locked()

    def _start_locked(self) -> None:
        if self.stuck:
            self.replaced += 1
            logger.info(
                "%s: %d worker(s) stuck in tasks that already ended; starting a "
                "replacement (%d threads, at most %d)",
                self.name,
                self.stuck,
                len(self.threads) + 1,
                self.size + self.max_extra,
            )
        self._serial += 1
        worker = Worker(self, f"{self.name}-worker-{self._serial}")
        self.threads.append(worker)
        self.active += 1
        worker.thread.start()

    def flag_stuck(self, worker: Worker) -> None:
        """The task `worker` runs has ended under it. Call with the bucket's lock held.

        Holding the bucket's lock orders this against the worker's own claim
        of its task's ending, so a worker that already moved on is never
        flagged. Starting a replacement is left to `replace()`.
        """
        with self._lock:
            if worker.stuck:
                return
            worker.stuck = True
            self.active -= 1
            self.stuck += 1

    def replace(self) -> None:
        """Start a replacement for stuck workers if queued work has nobody to run it.

        If nothing is queued, the next `submit` grows the pool instead, so a
        task that stops as soon as its ctx is cancelled costs no thread.
        """
        with self._lock:
            if self.stopping or self.active >= self.size or self.idle:
                return
            if not (self.work or self.hooks):
                return
            if len(self.threads) >= self.size + self.max_extra:
                logger.warning(
                    "%s: %d worker(s) stuck in tasks that already ended and the bound "
                    "of %d extra threads is reached; the pool runs with %d",
                    self.name,
                    self.stuck,
                    self.max_extra,
                    self.active,
                )
                return
            self._start_locked()

    def rejoin(self, worker: Worker) -> bool:
        """A stuck worker came back from user code: keep it if there is room."""
        with self._lock:
            worker.stuck = False
            self.stuck -= 1
            if self.stopping or self.active >= self.size:
                return False
            self.active += 1
            return True

    def exited(self, worker: Worker, *, counted: bool) -> None:
        with self._lock:
            self._bound_logged = False
            self.threads.remove(worker)
            if counted:
                self.active -= 1

    def heads(self) -> tuple[object, object]:
        """The oldest queued hook and task (None where a queue is empty), for the stall watch."""
        try:
            hook: object = self.hooks[0]
        except IndexError:
            hook = None
        try:
            task: object = self.work[0]
        except IndexError:
            task = None
        return hook, task

    def stop(self, timeout: float) -> list[Worker]:
        """Ask every worker to exit and join them; return those that did not."""
        with self._lock:
            self.stopping = True
            workers = list(self.threads)
        for worker in workers:
            worker.unpark()
        current = threading.current_thread()
        left = []
        deadline = time.monotonic() + timeout
        for worker in workers:
            if worker.thread is current or not worker.thread.is_alive():
                continue
            worker.thread.join(max(0.0, deadline - time.monotonic()))
            if worker.thread.is_alive():
                left.append(worker)
        return left

    def after_fork_in_child(self) -> None:
        """In a forked child: no thread of ours exists there; nothing queued may run."""
        self._lock = threading.RLock()
        self.stopping = True
        self.work.clear()
        self.hooks.clear()
        self.idle.clear()
        self.threads.clear()

    def busy_count(self) -> int:
        return sum(1 for worker in list(self.threads) if worker.busy)

    def describe(self) -> dict[str, Any]:
        return {
            "threads": len(self.threads),
            "active": self.active,
            "stuck": self.stuck,
            "busy": self.busy_count(),
            "work": len(self.work),
            "hooks": len(self.hooks),
        }

"""The peers: one small adapter per timer library, all with the same operations.

Every adapter has

* ``start()`` and ``stop()``;
* ``schedule(key, delay, callback)``: call ``callback(key)`` once, ``delay``
  seconds from now, unless cancelled first;
* ``cancel(key)``: the timer `key` must not fire (a key that already fired or
  is unknown is ignored);
* ``sync()``: block until every schedule/cancel issued so far has *taken
  effect* in the backend (for peers that apply them on another thread), so that
  the W1 timings include that work;
* ``drive(workload)``: run a workload generator (see `bench.workloads`) where
  the peer wants it run: on the calling thread, or inside the peer's event
  loop for the "in-loop" peers.

Every adapter keeps what a user keeps to cancel by key (a dict of handles),
except wheelbucket, which keeps that map itself. The callback is stored per
timer, as a user would store it.

The adapters are written the way a careful user would write them, not tuned:
the point is to compare what a user gets.
"""

from __future__ import annotations

import asyncio
import datetime
import heapq
import sched
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

__all__ = ["PEERS", "Peer", "make_peer"]

Callback = Callable[[str], object]
# A workload is a generator that yields commands to its driver:
#   ("sleep", seconds)  wait (the peer keeps firing meanwhile)
#   ("sync",)           wait until queued schedule/cancel work took effect
#   ("yield",)          let an in-loop peer's loop run once (no-op elsewhere)
Workload = Generator[tuple[Any, ...], None, Any]

# The workers of every pool-backed peer (wheelbucket, heapq+pool): the same
# number, so that no one wins by having more threads.
POOL_WORKERS = 4


class Peer:
    """Base adapter: the harness's view of a timer library."""

    name = "peer"
    #: Short description for the report.
    label = ""
    #: True when the workload runs inside the peer's event loop.
    in_loop = False
    #: False for the no-op adapter, which never fires.
    fires = True
    #: Largest N per workload this peer is asked to do, with the reason.
    limits: dict[str, tuple[int, str]] = {}  # noqa: RUF012 - read-only class data

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    def start(self) -> None:
        pass

    def schedule(self, key: str, delay: float, callback: Callback) -> None:
        raise NotImplementedError

    def cancel(self, key: str) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        """Return once every operation issued so far has taken effect."""

    def stop(self) -> None:
        pass

    def drive(self, workload: Workload) -> Any:
        """Run `workload` on the calling thread (the bench thread)."""
        try:
            command = next(workload)
            while True:
                op = command[0]
                if op == "sleep":
                    if command[1] > 0:
                        time.sleep(command[1])
                elif op == "sync":
                    self.sync()
                command = workload.send(None)
        except StopIteration as stop:
            return stop.value


# -- the harness's own cost -------------------------------------------------------


class NoopPeer(Peer):
    """Does nothing: the cost of the harness loop itself."""

    name = "noop"
    label = "no-op adapter (harness cost)"
    fires = False

    def schedule(self, key: str, delay: float, callback: Callback) -> None:
        pass

    def cancel(self, key: str) -> None:
        pass


# -- asyncio and uvloop ------------------------------------------------------------


def _new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


class InLoopPeer(Peer):
    """``loop.call_later`` from inside the loop: the workload is loop code."""

    in_loop = True
    loop_kind = "asyncio"

    def start(self) -> None:
        self.loop = _new_loop(self.loop_kind)
        self.handles: dict[str, asyncio.TimerHandle] = {}

    def _fire(self, key: str, callback: Callback) -> None:
        del self.handles[key]
        callback(key)

    def schedule(self, key: str, delay: float, callback: Callback) -> None:
        self.handles[key] = self.loop.call_later(delay, self._fire, key, callback)

    def cancel(self, key: str) -> None:
        handle = self.handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def drive(self, workload: Workload) -> Any:
        return self.loop.run_until_complete(self._drive(workload))

    async def _drive(self, workload: Workload) -> Any:
        sleep = asyncio.sleep
        try:
            command = next(workload)
            while True:
                op = command[0]
                if op == "sleep":
                    await sleep(max(0.0, command[1]))
                else:
                    # "sync" and "yield": one turn of the loop. asyncio removes
                    # cancelled timers from its heap there, so W1 cancel timings
                    # include that work.
                    await sleep(0)
                command = workload.send(None)
        except StopIteration as stop:
            return stop.value

    def stop(self) -> None:
        for handle in self.handles.values():
            handle.cancel()
        self.handles.clear()
        self.loop.close()


class CrossThreadPeer(Peer):
    """The loop runs on its own thread; the bench thread uses call_soon_threadsafe."""

    loop_kind = "asyncio"

    def start(self) -> None:
        self.loop = loop = _new_loop(self.loop_kind)
        self.handles: dict[str, asyncio.TimerHandle] = {}
        ready = threading.Event()
        loop.call_soon(ready.set)
        self.thread = threading.Thread(target=loop.run_forever, name=self.name, daemon=True)
        self.thread.start()
        ready.wait()
        self._call = loop.call_soon_threadsafe

    # These run on the loop thread.
    def _add(self, key: str, delay: float, callback: Callback) -> None:
        self.handles[key] = self.loop.call_later(delay, self._fire, key, callback)

    def _remove(self, key: str) -> None:
        handle = self.handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _fire(self, key: str, callback: Callback) -> None:
        del self.handles[key]
        callback(key)

    # These run on the bench thread.
    def schedule(self, key: str, delay: float, callback: Callback) -> None:
        self._call(self._add, key, delay, callback)

    def cancel(self, key: str) -> None:
        self._call(self._remove, key)

    def sync(self) -> None:
        # The loop runs call_soon_threadsafe callbacks in order, so once this
        # one ran, every earlier schedule/cancel has been applied.
        done: Future[None] = Future()
        self._call(done.set_result, None)
        done.result()

    def stop(self) -> None:
        def shutdown() -> None:
            for handle in self.handles.values():
                handle.cancel()
            self.handles.clear()
            self.loop.stop()

        self._call(shutdown)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class AsyncioInLoop(InLoopPeer):
    name = "asyncio-inloop"
    label = "asyncio loop.call_later, workload inside the loop"


class AsyncioCrossThread(CrossThreadPeer):
    name = "asyncio-xthread"
    label = "asyncio loop.call_later via call_soon_threadsafe from the bench thread"


class UvloopInLoop(InLoopPeer):
    name = "uvloop-inloop"
    label = "uvloop loop.call_later, workload inside the loop"
    loop_kind = "uvloop"


class UvloopCrossThread(CrossThreadPeer):
    name = "uvloop-xthread"
    label = "uvloop loop.call_later via call_soon_threadsafe from the bench thread"
    loop_kind = "uvloop"


# -- sched.scheduler on a thread ---------------------------------------------------

_AWAKE = float("-inf")


class SchedPeer(Peer):
    """`sched.scheduler` run by one thread that sleeps until the next event.

    The thread is woken only when a new event is earlier than the one it
    sleeps towards. Callbacks run on that thread (that is how sched works).
    ``sched.scheduler.cancel`` is ``list.remove`` + ``heapify``: O(n).
    """

    name = "sched"
    label = "sched.scheduler on a thread"

    def start(self) -> None:
        self.sched = sched.scheduler(time.monotonic, self._no_delay)
        self.events: dict[str, sched.Event] = {}
        self.wake = threading.Event()
        # The monotonic time the thread sleeps towards; _AWAKE while it runs.
        self.target = _AWAKE
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    @staticmethod
    def _no_delay(seconds: float) -> None:
        # run(blocking=False) calls delayfunc(0) between events; nothing to do.
        pass

    def _run(self) -> None:
        s = self.sched
        queue = s._queue  # the heap; peeked without sorting (s.queue sorts)
        while not self.stopping:
            self.target = _AWAKE
            self.wake.clear()
            delay = s.run(blocking=False)
            target = float("inf") if delay is None else time.monotonic() + delay
            self.target = target
            # An event added between run() and publishing target saw _AWAKE.
            head = queue[0].time if queue else float("inf")
            if head < target:
                continue
            self.wake.wait(None if delay is None else max(0.0, delay))

    def _fire(self, key: str, callback: Callback) -> None:
        self.events.pop(key, None)
        callback(key)

    def schedule(self, key: str, delay: float, callback: Callback) -> None:
        due = time.monotonic() + delay
        self.events[key] = self.sched.enterabs(due, 0, self._fire, (key, callback))
        if due < self.target:
            self.wake.set()

    def cancel(self, key: str) -> None:
        event = self.events.pop(key, None)
        if event is not None:
            try:  # noqa: SIM105 - cheaper than contextlib.suppress per call
                self.sched.cancel(event)
            except ValueError:  # it is firing right now
                pass

    def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        self.thread.join(10)


# -- threading.Timer ---------------------------------------------------------------

TIMER_MAX_THREADS = 10_000


class TimerPeer(Peer):
    """One `threading.Timer` (one OS thread) per timer."""

    name = "threading.Timer"
    label = "threading.Timer (one thread per timer)"
    limits = {  # noqa: RUF012
        "W1": (
            TIMER_MAX_THREADS,
            f"one OS thread per pending timer: more than {TIMER_MAX_THREADS:,} threads "
            "is past what a 2-core machine can start within the budget",
        ),
        "W2": (
            TIMER_MAX_THREADS,
            f"one OS thread per pending timer: more than {TIMER_MAX_THREADS:,} threads "
            "is past what a 2-core machine can start within the budget",
        ),
    }

    def start(self) -> None:
        self.timers: dict[str, threading.Timer] = {}
        self.cancelled: list[threading.Timer] = []

    def _fire(self, key: str, callback: Callback) -> None:
        self.timers.pop(key, None)
        callback(key)

    def schedule(self, key: str, delay: float, callback: Callback) -> None:
        timer = threading.Timer(delay, self._fire, (key, callback))
        timer.daemon = True
        self.timers[key] = timer
        timer.start()

    def cancel(self, key: str) -> None:
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
            self.cancelled.append(timer)

    def sync(self) -> None:
        # A cancel has taken effect once its thread has exited.
        cancelled, self.cancelled = self.cancelled, []
        for timer in cancelled:
            timer.join()

    def stop(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.cancelled.clear()


# -- APScheduler 3 -------------------------------------------------------------------


class APSchedulerPeer(Peer):
    """APScheduler 3 `BackgroundScheduler`, one date-trigger job per timer.

    ``misfire_grace_time=None`` so that a late job still runs (the default
    grace of 1 s would silently drop late jobs). Jobs run on APScheduler's
    default executor (a thread pool of 10).
    """

    name = "apscheduler"
    label = "APScheduler 3 BackgroundScheduler, date triggers, misfire_grace_time=None"

    def start(self) -> None:
        from apscheduler.jobstores.base import JobLookupError
        from apscheduler.schedulers.background import BackgroundScheduler

        self._lookup_error = JobLookupError

        self.scheduler = BackgroundScheduler(
            timezone=datetime.timezone.utc,
            job_defaults={"misfire_grace_time": None, "coalesce": False},
        )
        self.scheduler.start()
        self._utc = datetime.timezone.utc

    def schedule(self, key: str, delay: float, callback: Callback) -> None:
        run_date = datetime.datetime.now(self._utc) + datetime.timedelta(seconds=delay)
        self.scheduler.add_job(
            callback, "date", run_date=run_date, args=(key,), id=key, misfire_grace_time=None
        )

    def cancel(self, key: str) -> None:
        try:  # noqa: SIM105 - cheaper than contextlib.suppress per call
            self.scheduler.remove_job(key)
        except self._lookup_error:  # already ran
            pass

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)


# -- heapq + ThreadPoolExecutor ------------------------------------------------------


class HeapPoolPeer(Peer):
    """What a user writes by hand: a heap, a Condition, a thread, a thread pool.

    Cancel is lazy deletion: the entry is marked dead and stays in the heap
    until it comes to the top.
    """

    name = "heapq+pool"
    label = "heapq + threading.Condition thread + ThreadPoolExecutor(4), lazy cancel"

    def start(self) -> None:
        self.heap: list[list[Any]] = []
        self.entries: dict[str, list[Any]] = {}
        self.cond = threading.Condition()
        self.seq = 0
        self.stopping = False
        self.pool = ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="heapq-pool")
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def schedule(self, key: str, delay: float, callback: Callback) -> None:
        due = time.monotonic() + delay
        with self.cond:
            self.seq += 1
            entry = [due, self.seq, key, callback]
            self.entries[key] = entry
            heapq.heappush(self.heap, entry)
            if self.heap[0] is entry:
                self.cond.notify()

    def cancel(self, key: str) -> None:
        with self.cond:
            entry = self.entries.pop(key, None)
            if entry is not None:
                entry[3] = None  # dead: skipped when it reaches the top

    def _run(self) -> None:
        heap = self.heap
        cond = self.cond
        pop = heapq.heappop
        submit = self.pool.submit
        while True:
            with cond:
                while True:
                    if self.stopping:
                        return
                    while heap and heap[0][3] is None:
                        pop(heap)
                    if not heap:
                        cond.wait()
                        continue
                    wait = heap[0][0] - time.monotonic()
                    if wait <= 0:
                        break
                    cond.wait(wait)
                now = time.monotonic()
                due: list[tuple[Callback, str]] = []
                while heap and heap[0][0] <= now:
                    _, _, key, callback = pop(heap)
                    if callback is not None:
                        del self.entries[key]
                        due.append((callback, key))
            for callback, key in due:
                submit(callback, key)

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(10)
        self.pool.shutdown(wait=False, cancel_futures=True)


# -- wheelbucket ----------------------------------------------------------------------


class _CallbackExecutor:
    """wheelbucket's executor for one callback: ``on_execute`` calls it with the key."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callback) -> None:
        self.callback = callback

    def __call__(self, ctx: object, task_id: str, data: object) -> None:
        self.callback(task_id)


class WheelbucketPeer(Peer):
    """wheelbucket: ``fill(TIME_BOMB, key, executor=..., run_after=delay)`` / ``drain(key)``.

    A real executor on a real pool of 4 workers: the callback, made an
    executor once (a callable ``f(ctx, task_id, data)`` that calls it with
    the key), as a program passes the executor of each kind of work to
    `fill`; the data is None. ``max_bucket`` is sized to N.

    ``sync()`` adds nothing to the core: it fills a marker TIME_BOMB with
    ``run_after=0`` and waits for it to execute. The scheduler thread applies
    its submission queue in order, so once the marker has run every earlier
    fill/drain has been applied to the wheel. The price is that the marker's
    own path (one tick of at most 1 ms, a scheduler wake-up and a worker
    hand-off) is counted once per sync.
    """

    name = "wheelbucket"
    label = "wheelbucket TaskBucket(workers=4), fill TIME_BOMB / drain"

    def start(self) -> None:
        from wheelbucket import TaskBucket, TaskNotFound, TaskType

        self._not_found = TaskNotFound
        self.bucket = TaskBucket(max_bucket=self.capacity + 64, workers=POOL_WORKERS)
        self._executors: dict[Callback, _CallbackExecutor] = {}
        self._fill = self.bucket.fill
        self._drain = self.bucket.drain
        self._time_bomb = TaskType.TIME_BOMB
        self._markers = 0

    def schedule(self, key: str, delay: float, callback: Callback) -> None:
        executor = self._executors.get(callback)
        if executor is None:
            executor = self._executors[callback] = _CallbackExecutor(callback)
        self._fill(self._time_bomb, key, None, executor, run_after=delay, life_span=delay + 30.0)

    def cancel(self, key: str) -> None:
        # try/except, not contextlib.suppress: a context manager per call would
        # add a fraction of a microsecond to every cancel.
        try:  # noqa: SIM105
            self._drain(key)
        except self._not_found:  # already ran
            pass

    def sync(self) -> None:
        self._markers += 1
        done = threading.Event()
        self._fill(
            self._time_bomb,
            f"__bench_marker_{self._markers}",
            None,
            lambda _ctx, _key, _data: done.set(),
            run_after=0,
            life_span=60.0,
        )
        if not done.wait(120):
            raise RuntimeError("wheelbucket marker task did not run within 120 s")

    def stop(self) -> None:
        self.bucket.close(wait=False)


PEERS: dict[str, type[Peer]] = {
    cls.name: cls
    for cls in (
        NoopPeer,
        AsyncioInLoop,
        AsyncioCrossThread,
        UvloopInLoop,
        UvloopCrossThread,
        SchedPeer,
        TimerPeer,
        APSchedulerPeer,
        HeapPoolPeer,
        WheelbucketPeer,
    )
}


def make_peer(name: str, capacity: int) -> Peer:
    try:
        cls = PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}") from None
    return cls(capacity)

"""`TaskBucket`: the public face of wheelbucket.

It checks arguments and hands everything else to the `Core`: the task
lifecycle (the id map and every state change), the scheduler thread driving
the timing wheel, and the worker pool.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from ._aio import in_own_thread
from ._args import (
    MAX_DURATION,
    close_timeout,
    duration_ns,
    fill_item,
    positive_int,
    task_id_arg,
)
from ._log import logger, safe_repr
from .clock import Clock, MonotonicClock
from .core import Core, close_forgotten, live_cores
from .errors import BucketClosed, BucketFull, TaskNotFound
from .executor import HookPlan
from .stats import BucketStats
from .task import IMMEDIATE_FILL, QUEUED, Task, TaskHandle, TaskType, new_token

__all__ = ["TaskBucket"]

# Threads a stuck task may cost beyond `workers`, by default.
EXTRA_WORKERS_PER_WORKER = 4

_ceil = math.ceil
_sleep = time.sleep
get_ident = threading.get_ident
# How late the scheduler or the oldest queued task may be before fill()
# yields the GIL to them (see the end of TaskBucket.fill).
STARVED_NS = 2_000_000
_IMMEDIATE = TaskType.IMMEDIATE
_TIME_BOMB = TaskType.TIME_BOMB


class TaskBucket:
    """An in-memory bucket of tasks that run now or later, each within its life span.

    Args:
        life_span: default seconds (or timedelta) a task may live, counted
            from `fill`; past it the task is EXHAUSTED.
        run_after: default delay of a TIME_BOMB task before it runs.
        max_bucket: most live tasks at once; `fill` beyond it raises BucketFull.
        verbose: log every lifecycle event at INFO instead of DEBUG.
        executor: default executor for `fill` (an `Executor`, an object with
            ``on_execute``, or a callable ``f(ctx, task_id, data)``).
        workers: threads that run sync hooks.
        clock: where time comes from (default: the real monotonic clock);
            `wheelbucket.testing.FakeClock` for tests.
        max_extra_workers: threads allowed beyond `workers` to replace ones
            stuck in tasks that already ended (default 4 x workers).
        tick: the wheel's resolution in seconds (default 1 ms). Timers never
            fire early; they fire at most one tick plus scheduling delay late.
        use_uvloop: run async hooks on a uvloop loop (needs the extra).
        loop: the application's asyncio event loop: every ``async def``
            hook runs on it, as one of its tasks, so hooks may touch objects
            bound to it (streams, client sessions). Sync hooks still run on
            worker threads. Close such a bucket with ``await aclose()`` or
            ``async with``. Without it, async hooks run on a loop thread of
            the bucket's own.
        name: prefix of thread names and log lines.

    Raises:
        TypeError, ValueError: an argument is of the wrong type or out of
            range; the message names it.
    """

    def __init__(
        self,
        life_span: float | datetime.timedelta = 5.0,
        run_after: float | datetime.timedelta = 1.0,
        max_bucket: int = 1024,
        verbose: bool = False,
        executor: object = None,
        workers: int = 4,
        *,
        clock: Clock | None = None,
        max_extra_workers: int | None = None,
        tick: float | datetime.timedelta = 0.001,
        wheel_bits: int = 6,
        wheel_levels: int = 6,
        use_uvloop: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        name: str = "wheelbucket",
    ) -> None:
        self._life_span = duration_ns(life_span, "life_span", zero_ok=False)
        self._run_after = duration_ns(run_after, "run_after", zero_ok=True)
        self._max_bucket = positive_int(max_bucket, "max_bucket")
        # One shared int for every TIME_BOMB task filled with both defaults.
        self._bomb_life = self._life_span - self._run_after
        # What reset() falls back to for TIME_BOMB tasks filled with the
        # defaults: one tuple they all share (see Task._fill).
        self._bomb_fill = (self._run_after, self._life_span)
        # The last explicit (run_after, life_span) objects a TIME_BOMB fill
        # took, and their (delay, life) in ns. Programs fill in loops with
        # the same durations: a hit (by identity, so no type can slip in)
        # skips the conversions, and those tasks share one life int.
        self._last_durations: tuple[object, object, int, int, object] = (
            None,
            None,
            0,
            0,
            (0, 0),
        )
        if not isinstance(verbose, bool):
            raise TypeError(f"verbose must be a bool, got {type(verbose).__name__}")
        workers = positive_int(workers, "workers")
        if max_extra_workers is None:
            max_extra_workers = EXTRA_WORKERS_PER_WORKER * workers
        elif isinstance(max_extra_workers, bool) or not isinstance(max_extra_workers, int):
            raise TypeError(
                f"max_extra_workers must be an int, got {type(max_extra_workers).__name__}"
            )
        elif max_extra_workers < 0:
            raise ValueError(f"max_extra_workers must be >= 0, got {max_extra_workers!r}")
        tick_ns = duration_ns(tick, "tick", zero_ok=False)
        if clock is None:
            clock = MonotonicClock()
        elif isinstance(clock, type) or not isinstance(clock, Clock):  # a class passes the Protocol
            raise TypeError(
                "clock must have monotonic_ns(), monotonic() and wait(event, deadline_ns), "
                f"got {type(clock).__name__}"
            )
        if not isinstance(use_uvloop, bool):
            raise TypeError(f"use_uvloop must be a bool, got {type(use_uvloop).__name__}")
        if use_uvloop:
            from ._aio import require_uvloop

            require_uvloop()  # here, not at the first async hook (on the scheduler thread)
        if loop is not None:
            if not isinstance(loop, asyncio.AbstractEventLoop):
                raise TypeError(f"loop must be an asyncio event loop, got {type(loop).__name__}")
            if loop.is_closed():
                raise ValueError("loop is closed: async hooks could never run on it")
            if use_uvloop:
                raise ValueError(
                    "use_uvloop=True makes a loop of the bucket's own; with loop=, "
                    "the application chooses its loop (pass a uvloop loop there)"
                )
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {safe_repr(name)}")
        self._default_plan = None if executor is None else HookPlan(executor)
        # Plans of per-fill executors, by id(executor), held weakly: a plan lives
        # as long as a task uses it, and so does its executor, no longer.
        self._plans: weakref.WeakValueDictionary[int, HookPlan] = weakref.WeakValueDictionary()
        self._last_plan: weakref.ref[HookPlan] | Callable[[], None] = _no_plan
        self._verbose = verbose
        self._log_level = logging.INFO if verbose else logging.DEBUG
        # The thread in fill_many (its fills yield once per batch), and
        # whether one of them found due work starved.
        self._batching = 0
        self._starved = False
        self._clock_ns = clock.monotonic_ns
        for arg, value, top in (("wheel_bits", wheel_bits, 16), ("wheel_levels", wheel_levels, 64)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
            if not 1 <= value <= top:
                raise ValueError(f"{arg} must be in [1, {top}], got {value!r}")
        self._core = core = Core(
            clock=clock,
            tick_ns=tick_ns,
            workers=workers,
            max_extra_workers=max_extra_workers,
            wheel_bits=wheel_bits,
            wheel_levels=wheel_levels,
            log_level=self._log_level,
            name=name,
            use_uvloop=use_uvloop,
            loop=loop,
        )
        core.life.default_plan = self._default_plan
        live_cores.add(core)
        self._life_drain = core.life.drain
        self._admit = core.life.admit
        self._slot_of = core.life.slot_of
        self._book = core.life.book
        self._submit_timer = core.sched.submit_timer
        self._drained = core.calls.drained
        # Forgetting close() must neither leak threads nor hang the exit.
        self._finalizer = weakref.finalize(self, close_forgotten, core)
        # Not at interpreter exit, though: the threads are daemons, and the
        # program's own atexit handler may still want to rescue() the tasks.
        self._finalizer.atexit = False

    # -- the API ------------------------------------------------------------

    def fill(
        self,
        task_type: TaskType,
        task_id: str,
        data: Any = None,
        executor: object = None,
        *,
        run_after: float | datetime.timedelta | None = None,
        life_span: float | datetime.timedelta | None = None,
    ) -> TaskHandle:
        """Put a task in the bucket; return its handle at once.

        Args:
            task_type: IMMEDIATE (run as soon as a worker is free) or
                TIME_BOMB (run `run_after` seconds after this call).
            task_id: a non-empty str, unique among live tasks.
            data: passed to every hook as is.
            executor: overrides the bucket's executor for this task.
            run_after, life_span: override the bucket's defaults. The life
                span counts from now and must exceed run_after for TIME_BOMB.

        Raises:
            TaskExists: `task_id` is live. BucketFull: `max_bucket` tasks are
            live. BucketClosed: `close()` has begun. TypeError, ValueError: a
            bad argument. A refused fill changes nothing.

        Runtime complexity: O(1); it never waits for the scheduler or a worker.
        """
        if type(task_id) is not str:
            raise TypeError(
                f"task_id must be a str, got {type(task_id).__name__}: {safe_repr(task_id)}"
            )
        if not task_id:
            raise ValueError("task_id must be a non-empty str")
        # A record names the bucket's own executor by None: no object in it
        # for the collector to visit (see task.py).
        plan: HookPlan | None = None
        if executor is None:
            if self._default_plan is None:
                raise ValueError("no executor: pass executor= to fill() or to TaskBucket()")
        else:
            # The last per-fill executor's plan, held weakly (a plan lives as
            # long as a task uses it): programs fill many tasks in a row with
            # the executor of one kind of work.
            plan = self._last_plan()
            if plan is None or plan.executor is not executor:
                plan = self._plan_for(executor)
                self._last_plan = weakref.ref(plan)
            if plan is self._default_plan:
                plan = None
        now = self._clock_ns()
        if task_type is _TIME_BOMB:
            if run_after is None and life_span is None:
                delay = self._run_after
                life = self._bomb_life
                fill: object = self._bomb_fill
            else:
                last = self._last_durations
                if run_after is last[0] and life_span is last[1]:
                    delay = last[2]
                    life = last[3]
                    fill = last[4]
                else:
                    # Inline fast paths for a plain float in range (NaN fails
                    # the comparison); anything else gets full checks.
                    if run_after is None:
                        delay = self._run_after
                    elif type(run_after) is float and 0.0 <= run_after <= MAX_DURATION:
                        delay = _ceil(run_after * 1e9)
                    else:
                        delay = duration_ns(run_after, "run_after", zero_ok=True)
                    if life_span is None:
                        span = self._life_span
                    elif type(life_span) is float and 0.0 < life_span <= MAX_DURATION:
                        span = _ceil(life_span * 1e9)
                    else:
                        span = duration_ns(life_span, "life_span", zero_ok=False)
                    life = span - delay
                    # The caller's own run_after object: no allocation here.
                    fill = (delay, span) if run_after is None else run_after
                    if life > 0:
                        last = self._last_durations
                        if life == last[3]:
                            life = last[3]  # "due in d, live d + c more": one int for all
                        self._last_durations = (run_after, life_span, delay, life, fill)
            if life <= 0:
                raise ValueError(
                    f"life_span ({(life + delay) / 1e9:g} s) must be greater than run_after "
                    f"({delay / 1e9:g} s) for a TIME_BOMB task"
                )
            due = now + delay
        elif task_type is _IMMEDIATE:
            if run_after is not None:
                duration_ns(run_after, "run_after", zero_ok=True)  # still check it
            life = (
                self._life_span
                if life_span is None
                else duration_ns(life_span, "life_span", zero_ok=False)
            )
            fill = IMMEDIATE_FILL
            due = now
        else:
            raise TypeError(
                f"task_type must be TaskType.IMMEDIATE or TaskType.TIME_BOMB, "
                f"got {safe_repr(task_type)}"
            )
        core = self._core
        token = new_token()
        if task_type is _TIME_BOMB:
            # Its record (task.py); a TIME_BOMB's generation starts at its
            # token's low byte, so that a filing left from an earlier task of
            # the same id is stale at once.
            if plan is None:
                rec: Any = self._admit(
                    task_id, (token, due, life, token & 255, None, data, fill), self._max_bucket
                )
            else:
                slot = self._slot_of(plan)
                rec = self._admit(
                    task_id,
                    (token, due, life, token & 255, slot, data, fill),
                    self._max_bucket,
                    plan,
                )
        else:
            task = Task(
                task_id,
                token,
                data,
                self._default_plan if plan is None else plan,
                QUEUED,
                due,
                life,
                token & 255,
                fill,
            )
            self._admit(task_id, task, self._max_bucket)
        handle = TaskHandle(self._book, task_id, token)
        # Logged before the hand-off, so "filled" never follows "executing".
        level = self._log_level
        if logger.isEnabledFor(level):
            logger.log(level, "task %s filled (%s)", safe_repr(task_id), task_type.name)
        # Due work first. Under the GIL the scheduler and the workers only run
        # while this thread does not, so a program that fills flat out starves
        # its own timers. When the scheduler oversleeps its deadline, or the
        # oldest task queued for a worker is late, give up the GIL once: never
        # a wait on a lock or a task, at most one thread switch. A fill_many
        # does so once per batch, not once per item (see there).
        if task_type is _TIME_BOMB:
            # The wheel files it at its due time.
            if self._submit_timer(task_id, rec, due, now - STARVED_NS):
                self._yield_once()
        else:
            core.submit(task, due + life)
            if core.sched.late(now - STARVED_NS):
                self._yield_once()
        return handle

    def _yield_once(self) -> None:
        """Give up the GIL to starved due work, unless this thread is in a fill_many."""
        if self._batching != get_ident():
            _sleep(0)
        else:
            self._starved = True

    def fill_many(self, items: Iterable[object]) -> list[TaskHandle | BaseException | None]:
        """`fill` each item in order; an outcome per item, and never a partial refusal.

        An item is a tuple ``(task_type, task_id[, data[, executor]])`` or a
        mapping of `fill`'s argument names. Per item: its `TaskHandle`; None
        when the bucket was full (``BucketFull``: the caller may retry it or
        send it elsewhere); or the exception `fill` raised for it alone
        (TaskExists, TypeError, ValueError), with nothing filled for it.

        Raises:
            BucketClosed: close() has begun, before or during the batch (the
                items before it were filled).
        """
        fill = self.fill
        out: list[TaskHandle | BaseException | None] = []
        # The items' fills do not give up the GIL each (see fill): the batch
        # does, once, at its end, if any of them found due work starved.
        # Another thread's fill_many meanwhile takes the mark: then this one
        # yields per item, as fill does. A heuristic either way.
        outer, self._batching, self._starved = self._batching, get_ident(), False
        try:
            for item in items:
                try:
                    out.append(fill(**fill_item(item)))
                except BucketFull:  # noqa: PERF203 - an outcome per item, on purpose
                    out.append(None)
                except BucketClosed:
                    raise
                except Exception as exc:  # that item's refusal: the others go on
                    out.append(exc)
        finally:
            self._batching = outer
        if self._starved:
            self._starved = False
            _sleep(0)
        return out

    def drain(self, task_id: str) -> None:
        """Cancel a live task: it never runs (again) and no hook runs for it.

        A running task's ``ctx`` is cancelled and it leaves the bucket at
        once, so its id can be filled again.

        Raises:
            TaskNotFound: `task_id` is not live (unknown, or already ended).
        """
        if type(task_id) is not str or not task_id:
            task_id_arg(task_id)
        # Core.drain(), inlined for the common case (it runs once per drain).
        got = self._life_drain(task_id)
        if got is None:
            raise TaskNotFound(f"no live task {safe_repr(task_id)}")
        if isinstance(got, int):
            self._drained(task_id, got)
        else:
            self._core.calls.ending(got, here=True)  # it was running: stop that

    def reset(
        self,
        task_id: str,
        *,
        run_after: float | datetime.timedelta | None = None,
        life_span: float | datetime.timedelta | None = None,
    ) -> TaskHandle:
        """Move a live task's timers without ending it (Go's ``Timer.Reset``).

        A TIME_BOMB task still waiting to start is due `run_after` seconds
        from now and its life span ends `life_span` seconds from now; a task
        queued or running keeps its start and only its life span moves (its
        ``ctx.deadline`` follows). Each defaults to the value the task was
        filled with. Returns the task's handle; no ending, no hook.

        Raises:
            TaskNotFound: `task_id` is not live (unknown, or already ended).
            ValueError: `run_after` for a task not waiting to start, or a
                life span not longer than the run-after; TypeError,
                ValueError for a bad value. A refused reset changes nothing.

        Runtime complexity: O(1). A timer moved later stays where it is
        filed until then (docs/wheel.md), so touching a task often is cheap.
        """
        if type(task_id) is not str or not task_id:
            task_id_arg(task_id)
        delay = None if run_after is None else duration_ns(run_after, "run_after", zero_ok=True)
        span = None if life_span is None else duration_ns(life_span, "life_span", zero_ok=False)
        task = self._core.life.reset(task_id, delay, span)
        if task is None:
            raise TaskNotFound(f"no live task {safe_repr(task_id)}")
        return task

    def rescue(self) -> list[str]:
        """Hand every live task back to the program through ``on_panic``.

        Each live task (pending or running) is cancelled and its executor's
        ``on_panic(ctx, task_id, data)`` runs on the calling thread, so the
        program can persist it. The bucket stays open. Returns the ids in
        fill order; every on_panic has returned by then.
        """
        return self._core.rescue()

    def close(
        self, *, wait: bool = True, timeout: float | None = None, rescue: bool = False
    ) -> None:
        """Stop the bucket. Idempotent.

        New fills are refused at once. With `wait`, live tasks may end
        naturally (timers still fire) for up to `timeout` seconds of the
        bucket's clock (None: no limit). Whatever is live then is drained, or
        rescued when `rescue` is true. Then the scheduler and the workers
        stop; a worker stuck in user code is abandoned, not joined forever.
        When close() returns, every task that ended during it has had its
        hook, and its handle is done.

        A ``KeyboardInterrupt`` or ``SystemExit`` while it waits (Ctrl-C)
        ends the wait: what is live is rescued, the threads stop, and the
        exception goes on. Leaving a ``with`` block by one of those does not
        wait at all: ``close(wait=False, rescue=True)``.
        """
        timeout = close_timeout(wait, timeout, rescue)
        try:
            self._core.close(wait=wait, timeout=timeout, rescue=rescue, join_timeout=1.0)
        finally:
            self._finalizer.detach()
            live_cores.discard(self._core)

    def __enter__(self) -> TaskBucket:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            # Ctrl-C (or an exit) is a crash: do not wait for live tasks, hand
            # every one to on_panic and leave at once (SPEC, close).
            self.close(wait=False, rescue=True)
        else:
            self.close()

    async def aclose(
        self, *, wait: bool = True, timeout: float | None = None, rescue: bool = False
    ) -> None:
        """`close` for coroutines: it never blocks the event loop it is awaited on.

        The closing runs on a thread of its own while this coroutine awaits
        it, so hooks on this loop go on running (and are waited for) in the
        meantime. Cancelling the awaiting coroutine does not stop the close.
        """
        timeout = close_timeout(wait, timeout, rescue)
        await in_own_thread(
            lambda: self.close(wait=wait, timeout=timeout, rescue=rescue),
            f"{self._core.name}-aclose",
        )

    async def __aenter__(self) -> TaskBucket:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            await self.aclose(wait=False, rescue=True)
        elif exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            # The coroutine is being shut down: do not keep it waiting.
            await self.aclose(wait=False)
        else:
            await self.aclose()

    # -- introspection --------------------------------------------------------

    def __len__(self) -> int:
        """Number of live tasks (pending or running)."""
        return len(self._core.life.tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._core.life.tasks

    def get(self, task_id: str) -> TaskHandle | None:
        """The handle of live task `task_id`, or None."""
        if type(task_id) is not str or not task_id:
            task_id_arg(task_id)
        return self._core.life.handle_of(task_id)

    def stats(self) -> BucketStats:
        """A consistent snapshot of the counters (see `BucketStats`)."""
        return self._core.stats()

    @property
    def clock(self) -> Clock:
        """The clock the bucket runs on (fixed at construction)."""
        return self._core.clock

    @property
    def max_bucket(self) -> int:
        """The most live tasks at once (fixed at construction)."""
        return self._max_bucket

    @property
    def life_span(self) -> float:
        """The default life span of a task, in seconds."""
        return self._life_span / 1e9

    @property
    def run_after(self) -> float:
        """The default delay of a TIME_BOMB task, in seconds."""
        return self._run_after / 1e9

    @property
    def verbose(self) -> bool:
        """Whether lifecycle events are logged at INFO (else DEBUG). Fixed at construction."""
        return self._verbose

    @property
    def closed(self) -> bool:
        """True once close() has begun."""
        return self._core.life.closed

    def __repr__(self) -> str:
        state = "closed" if self._core.life.closed else "open"
        return f"<TaskBucket {self._core.name!r} {state} live={len(self)}>"

    # -- internals -------------------------------------------------------------

    def _plan_for(self, executor: object) -> HookPlan:
        if self._default_plan is not None and executor is self._default_plan.executor:
            return self._default_plan
        key = id(executor)
        plan = self._plans.get(key)
        if plan is None or plan.executor is not executor:
            plan = HookPlan(executor)
            # The plan holds the executor, so its id cannot be reused while cached.
            self._plans[key] = plan
        return plan


def _no_plan() -> None:
    return None

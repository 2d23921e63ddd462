"""Test helpers: a clock that only moves when told to, and `settle()`.

``FakeClock`` lets a test drive every timer of a bucket exactly::

    clock = FakeClock()
    bucket = TaskBucket(clock=clock, executor=...)
    bucket.fill(TaskType.TIME_BOMB, "t", run_after=1.0)
    clock.advance(0.999)
    settle(bucket)           # nothing ran yet
    clock.advance(0.001)
    settle(bucket)           # on_execute has run, and its ending hook

`settle()` waits (in real time, with a safety timeout) until the bucket has
nothing left to do at the current fake time: every submission applied, every
due timer fired, every queued task executed, every worker idle and every
coroutine on the bucket's event loop through, except the `running` ones the
test keeps blocked on purpose.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .bucket import TaskBucket

__all__ = ["FakeClock", "settle"]


class FakeClock:
    """A monotonic clock that stands still until `advance()` moves it.

    Thread-safe. Waiters (the bucket's scheduler, `ctx.wait`) are woken when
    the clock passes their deadline, so no test needs to sleep.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now_ns = round(start * 1e9)
        self._lock = threading.Lock()
        # Invariant: each entry is (deadline_ns, event) of a thread blocked in wait().
        self._sleepers: list[tuple[int, threading.Event]] = []

    def monotonic_ns(self) -> int:
        return self._now_ns

    def monotonic(self) -> float:
        return self._now_ns / 1e9

    def wait(
        self, event: threading.Event, deadline_ns: int | None, timeout: float | None = None
    ) -> None:
        if deadline_ns is None:
            event.wait(timeout)
            return
        entry = (deadline_ns, event)
        with self._lock:
            if deadline_ns <= self._now_ns:
                return
            self._sleepers.append(entry)
        try:
            event.wait(timeout)
        finally:
            with self._lock:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` (>= 0) and wake whoever is due."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now_ns += round(seconds * 1e9)
            due = [ev for deadline, ev in self._sleepers if deadline <= self._now_ns]
        for ev in due:
            ev.set()

    # Trio's name for the same thing.
    jump = advance

    def __repr__(self) -> str:
        return f"FakeClock(now={self.monotonic():.9f})"


def settle(bucket: TaskBucket, *, running: int = 0, timeout: float = 10.0) -> None:
    """Wait until `bucket` has nothing more to do at the current time.

    Args:
        running: how many hooks the test keeps blocked on purpose; they
            count as settled. A sync hook blocked on a worker counts one; so
            does an async task in flight on the bucket's event loop (its
            on_execute or ending hook awaiting something the test controls,
            or a coroutine that ignored its cancellation).
        timeout: real seconds to wait before raising TimeoutError (a safety
            net against a deadlock, not a timing assumption).
    """
    end = time.monotonic() + timeout
    core = bucket._core
    quiet_in_a_row = 0
    # Quiet on three looks in a row, a little apart: a thread between two
    # steps (a worker between hooks, a callback in flight) is never missed.
    while quiet_in_a_row < 3:
        if core.quiet(running):
            quiet_in_a_row += 1
        else:
            quiet_in_a_row = 0
            if time.monotonic() > end:
                raise TimeoutError(f"bucket did not settle within {timeout} s: {core.describe()}")
        time.sleep(0.0002)

"""Clocks: where the scheduler reads the time and sleeps.

Everything in wheelbucket runs on a monotonic clock in integer nanoseconds,
so changing the wall clock never moves a timer and deadline arithmetic is
exact. A clock is any object with the three methods of `Clock`;
`wheelbucket.testing.FakeClock` is one that tests advance by hand.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "MonotonicClock"]

# Event.wait() refuses timeouts past threading.TIMEOUT_MAX; a wait that long
# is the same as forever for a scheduler, which re-checks on every wake.
_MAX_WAIT = min(threading.TIMEOUT_MAX, 86400.0 * 365)


@runtime_checkable
class Clock(Protocol):
    """The clock protocol the bucket runs on."""

    def monotonic_ns(self) -> int:
        """Now, in nanoseconds, on a clock that never goes backwards."""
        ...

    def monotonic(self) -> float:
        """Now, in seconds (``monotonic_ns() / 1e9``)."""
        ...

    def wait(
        self, event: threading.Event, deadline_ns: int | None, timeout: float | None = None
    ) -> None:
        """Block until `event` is set or the clock reaches `deadline_ns`.

        With `timeout`, also return after that many *real* seconds, whatever
        the clock says (the scheduler watches thread progress this way). The
        clock may itself set `event` to wake the waiter, so callers treat the
        event as a hint and re-check whatever they wait for.
        """
        ...


class MonotonicClock:
    """The real clock: `time.monotonic_ns` and `threading.Event.wait`."""

    __slots__ = ()

    monotonic_ns = staticmethod(time.monotonic_ns)
    monotonic = staticmethod(time.monotonic)

    def wait(
        self, event: threading.Event, deadline_ns: int | None, timeout: float | None = None
    ) -> None:
        if deadline_ns is not None:
            left = (deadline_ns - time.monotonic_ns()) / 1e9
            if left <= 0:
                return
            if timeout is None or left < timeout:
                timeout = left
        event.wait(None if timeout is None else min(timeout, _MAX_WAIT))

    def __repr__(self) -> str:
        return "MonotonicClock()"

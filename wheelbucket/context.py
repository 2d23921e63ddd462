"""The `ctx` a running task's hooks get: its deadline and its cancellation."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import Clock

__all__ = ["TaskContext"]


class TaskContext:
    """What a running task's hooks get as `ctx`: its deadline and its cancellation.

    The Python form of Go's ``ctx``: long work checks ``ctx.cancelled`` or
    blocks in ``ctx.wait(timeout)`` so that it stops early when the task is
    drained, exhausted or rescued.
    """

    __slots__ = ("_aio_task", "_cancelled", "_clock", "_wake", "deadline", "task_id", "worker")

    def __init__(
        self, task_id: str, deadline: float, clock: Clock, worker: object | None = None
    ) -> None:
        self.task_id = task_id
        #: Monotonic time (seconds) at which the task's life span ends.
        self.deadline = deadline
        self._clock = clock
        self._cancelled = False
        self._wake: threading.Event | None = None
        #: The pool worker running on_execute (None for async hooks).
        self.worker = worker
        self._aio_task: asyncio.Task[Any] | None = None

    @property
    def cancelled(self) -> bool:
        """True once the task was drained, exhausted or rescued."""
        return self._cancelled

    def remaining(self) -> float:
        """Seconds left in the life span (never negative)."""
        return max(0.0, self.deadline - self._clock.monotonic())

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the task is cancelled or `timeout` seconds pass.

        Returns True if cancelled. The timeout runs on the bucket's clock.
        """
        clock = self._clock
        deadline = None if timeout is None else clock.monotonic_ns() + round(timeout * 1e9)
        while not self._cancelled:
            if deadline is not None and clock.monotonic_ns() >= deadline:
                return False
            wake = self._wake
            if wake is None:
                wake = self._wake = threading.Event()
            wake.clear()
            if self._cancelled:
                break
            clock.wait(wake, deadline)
        return True

    def _cancel(self) -> None:
        self._cancelled = True
        wake = self._wake
        if wake is not None:
            wake.set()

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "live"
        return f"<TaskContext {self.task_id!r} {state}>"

"""`Link`: the starts and releases of a process's workers share round trips.

Two moments of a shared task need Redis on the worker that runs it: its
start is recorded before ``on_execute`` begins (handback.py), and it leaves
the group before its ending hook runs (docs/shared.md, Ending). Both go
through one STEP script (lua/step.lua), and the workers that reach either
moment together share one call: the first to take the lock sends every start
and release queued by then, and the others find theirs answered (flat
combining, no extra thread).

A release whose ending has no hook waits for nothing: it is queued and rides
with the next step any worker sends, usually that worker's own next start.
Should no step come within `LINGER`, the pump sends it (`flush`). Its answer
goes to a callback: released, taken, or the error that stopped it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from .store import Released

__all__ = ["LINGER", "Link"]

logger = logging.getLogger("wheelbucket.redis")

# The longest a release nobody waits for stays queued before the pump sends it (s).
LINGER = 0.002
# Starts and releases in one step, at most.
STEP_BATCH = 256

# What a release nobody waits for is told: its status, or the error of its step.
Later = Callable[[Released | None, BaseException | None], None]


class _Ask:
    """One start or release, and its answer."""

    __slots__ = ("at", "done", "error", "later", "release", "status", "task")

    def __init__(self, task: tuple[str, str, str], release: bool, later: Later | None) -> None:
        self.task = task
        self.release = release
        self.later = later
        self.at = time.monotonic() if later is not None else 0.0
        self.done = False
        self.status = 0
        self.error: BaseException | None = None


class Link:
    """Sends the starts and releases of concurrent workers together.

    Args:
        step: the store's STEP: ``step(releases, starts)`` with releases as
            (id, token, ending) and starts as (id, token); the statuses,
            releases first. Raises as the store does.
        linger: ``linger()`` asks the pump to `flush` within `LINGER`; called
            when a release nobody waits for is queued while no step is on
            its way.
    """

    def __init__(
        self,
        step: Callable[[Sequence[tuple[str, str, str]], Sequence[tuple[str, str]]], list[int]],
        linger: Callable[[], None],
    ) -> None:
        self._step = step
        self._linger = linger
        # Waiting to be sent: appended by workers, taken by the thread that
        # holds _lock (deque append/popleft are atomic).
        self._asks: deque[_Ask] = deque()
        # Held by the one thread sending a step; the others queue behind it
        # and find theirs answered, or send the next step.
        # Invariant: an ask taken from _asks is done before _lock is released.
        self._lock = threading.Lock()

    @property
    def queued(self) -> bool:
        """Are starts or releases waiting to be sent?"""
        return bool(self._asks)

    def start(self, task_id: str, token: str) -> int:
        """Record a start (STEP); its status. One round trip, shared; raises as the store."""
        return self._wait(_Ask((task_id, token, ""), False, None))

    def release(self, task_id: str, token: str, ending: str) -> Released:
        """Release one task (STEP); its status. One round trip, shared; raises as the store."""
        return Released(self._wait(_Ask((task_id, token, ending), True, None)))

    def release_later(self, task_id: str, token: str, ending: str, later: Later) -> None:
        """Queue a release nobody waits for; `later(status, error)` gets its answer.

        `later` runs on the thread that sends it (a worker, or the pump) and
        must not raise.
        """
        self._asks.append(_Ask((task_id, token, ending), True, later))
        if not self._lock.locked():  # no step on its way to take it along
            self._linger()

    def flush(self, *, young: bool = True) -> float | None:
        """Send what is queued (the pump, `LINGER` after a release was queued). Never raises.

        Without `young`, not if the oldest is younger than `LINGER` (a worker's
        next start may take it along yet): then how long until it is not.
        """
        with self._lock:
            if not young and self._asks:
                wait = self._asks[0].at + LINGER - time.monotonic()
                if wait > 0:
                    return wait
            for _ in range(len(self._asks) // STEP_BATCH + 1):
                if not self._asks:
                    break
                self._send()
        self._left_over()
        return None

    def _wait(self, ask: _Ask) -> int:
        self._asks.append(ask)
        with self._lock:
            while not ask.done:  # sent by a thread before us, or ours to send
                self._send()
        self._left_over()
        if ask.error is not None:
            raise ask.error
        return ask.status

    def _left_over(self) -> None:
        """After a step: releases queued meanwhile, with no step on its way, linger."""
        if self._asks and not self._lock.locked():
            self._linger()

    def _send(self) -> None:
        """One step with what is queued (the caller holds _lock). Never raises."""
        batch = [self._asks.popleft() for _ in range(min(len(self._asks), STEP_BATCH))]
        releases = [a for a in batch if a.release]
        starts = [a for a in batch if not a.release]
        try:
            statuses = self._step([a.task for a in releases], [a.task[:2] for a in starts])
            answered = list(zip([*releases, *starts], statuses, strict=True))
        except BaseException as exc:  # every ask of the step gets it
            for a in batch:
                a.error = exc
                a.done = True
        else:
            for a, status in answered:
                a.status = status
                a.done = True
        for a in batch:
            if a.later is not None:
                try:
                    a.later(None if a.error else Released(a.status), a.error)
                except Exception:  # a bug: never lose the other answers for it
                    logger.exception("wheelbucket.redis: a release's answer was not applied")

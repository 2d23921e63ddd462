"""`FailureStreak`: what the pump logs of its failed rounds, once per streak, not per try."""

from __future__ import annotations

import logging
import time

from .errors import REDIS_FAILED, UNREACHABLE

__all__ = ["FailureStreak"]

logger = logging.getLogger("wheelbucket.redis")


class FailureStreak:
    """The current streak of the pump's failed rounds (used by the pump thread only).

    A streak is logged once per kind of failure (the error's class and its
    cause's class), and its end once: a Redis that refuses every call, or a
    bug met on every round, gives two lines, not a traceback per try.

    Args:
        group: the group's name, for the log.
        cap: seconds; the longest backoff, for the log.
    """

    def __init__(self, group: str, cap: float) -> None:
        self._group = group
        self._cap = cap
        self.failures = 0
        self._since = 0.0
        self._kind: tuple[type[object], type[object]] | None = None

    def failed(self, exc: Exception) -> None:
        """A round failed with `exc`: log it if it starts a streak or a new kind of failure."""
        self.failures += 1
        if self.failures == 1:
            self._since = time.monotonic()
        kind = (type(exc), type(exc.__cause__))
        if kind == self._kind:
            return
        self._kind = kind
        if isinstance(exc, UNREACHABLE):
            return  # Redis unreachable: the pump logs the outage and its end itself
        if isinstance(exc, REDIS_FAILED):
            logger.error(
                "group %r: %s; the pump backs off (up to %g s) until it works again",
                self._group,
                exc,
                self._cap,
            )
        else:  # a bug: say so with its traceback, once, and keep the group alive
            logger.error(
                "group %r: the shared-bucket pump failed; it backs off (up to %g s)",
                self._group,
                self._cap,
                exc_info=exc,
            )

    def recovered(self) -> None:
        """A round worked: end the streak (logged, unless it was only Redis unreachable)."""
        if self._kind is not None and not issubclass(self._kind[0], OSError):
            logger.warning(
                "group %r: the pump works again, after %d failed rounds in %.1f s",
                self._group,
                self.failures,
                time.monotonic() - self._since,
            )
        self.failures = 0
        self._kind = None

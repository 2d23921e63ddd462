"""The listener: a thread on the group's channels that wakes the pump when Redis has news."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from .errors import UNREACHABLE
from .store import _text

__all__ = ["Listener", "Subscription"]

logger = logging.getLogger("wheelbucket.redis")

# The first wait before subscribing again after an error; it doubles up to a heartbeat.
_FIRST_BACKOFF = 0.05


class Listener:
    """Hears the group's wake messages and passes them on; resubscribes after errors.

    Args:
        subscribe: opens a subscription to the group's channels.
        heard: ``heard(urgent)``, called for each message: `urgent` for one
            meant for this process (a revocation), else a task was queued.
            Also called (urgent) after each (re)subscription, since news may
            have come while nobody listened.
        group: the group's name, for the thread's name and the log.
        heartbeat: the longest wait for a message, and for a retry.
    """

    def __init__(
        self,
        subscribe: Callable[[], Subscription],
        heard: Callable[[bool], None],
        *,
        group: str,
        heartbeat: float,
    ) -> None:
        self._subscribe = subscribe
        self._heard = heard
        self._group = group
        self._heartbeat = heartbeat
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name=f"wheelbucket-shared-{group}-listen", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the loop: at once if a message comes, else within a heartbeat."""
        self._stopping = True

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        subscription: Subscription | None = None
        backoff = _FIRST_BACKOFF
        while not self._stopping:
            try:
                if subscription is None:
                    subscription = self._subscribe()
                    # News may have come while we were not listening.
                    self._heard(True)
                news = subscription.get(timeout=self._heartbeat)
                backoff = _FIRST_BACKOFF
                if news is None:
                    continue
                self._heard(news)
            except Exception as exc:
                if not isinstance(exc, UNREACHABLE):
                    logger.exception("group %r: the listener failed", self._group)
                if subscription is not None:
                    subscription.close()
                    subscription = None
                if self._stopping:
                    break
                time.sleep(backoff)
                backoff = min(backoff * 2, self._heartbeat)
        if subscription is not None:
            subscription.close()


class Subscription:
    """A member's subscription to the group's wake channel and its own (`GroupStore.channels`)."""

    def __init__(self, client: redis.Redis, wake_channel: str, my_channel: str) -> None:
        self._my_channel = my_channel
        self._pubsub: Any = cast(Any, client).pubsub(ignore_subscribe_messages=True)
        try:
            self._pubsub.subscribe(wake_channel, my_channel)
        except BaseException:
            self.close()
            raise

    def get(self, timeout: float) -> bool | None:
        """Wait up to `timeout` for news: None if none came, True if it is for this member."""
        message = self._pubsub.get_message(timeout=timeout)
        if message is None:
            return None
        return _text(message["channel"]) == self._my_channel

    def close(self) -> None:
        with contextlib.suppress(Exception):  # it is going away either way
            self._pubsub.close()

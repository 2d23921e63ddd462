"""The shared bucket's own error, and what "Redis cannot be reached" looks like."""

from __future__ import annotations

import redis

from ..errors import BucketError

__all__ = ["UNREACHABLE", "RedisUnavailable"]

# What "Redis cannot be reached" looks like: refused or reset connections,
# socket timeouts, a server still loading its data set (a ConnectionError).
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


class RedisUnavailable(BucketError, ConnectionError):
    """Redis could not be reached (refused, timed out) for an operation that needs it.

    Raised by `SharedBucket.fill` and `drain`. For a fill the outcome is not
    always known (the request may have reached Redis before the connection
    broke): fill the same id again once Redis is back; `TaskExists` then
    means the first attempt went through.
    """

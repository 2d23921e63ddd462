"""The shared bucket's own errors, and what "Redis cannot be reached" looks like."""

from __future__ import annotations

import redis

from ..errors import BucketError

__all__ = ["UNREACHABLE", "RedisUnavailable", "TaskOutOfReach"]

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


class TaskOutOfReach(BucketError):
    """The task is live in the group, but this call cannot act on it from here.

    Raised by `SharedBucket.reset` for a task held by another process (its
    timers live in that process's memory), for a task whose ending is already
    decided (its holder died, or its life span ran out while it waited in
    Redis: it ends EXHAUSTED where it is claimed), and by `reset` and `drain`
    for a task being placed in this process at that very moment (try again).
    The message says which. Unlike `TaskNotFound`, the id is live: a `fill`
    of it raises `TaskExists`.

    Attributes:
        task_id: the task's id.
        owner: the member that holds it, '' when it waits in Redis.
    """

    def __init__(self, message: str, *, task_id: str = "", owner: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.owner = owner

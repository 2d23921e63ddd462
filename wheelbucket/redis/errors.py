"""The shared bucket's own errors, and what "Redis cannot be reached" looks like."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from .._log import safe_repr
from ..errors import BucketError

__all__ = [
    "REDIS_FAILED",
    "UNREACHABLE",
    "RedisFailure",
    "RedisServerError",
    "RedisUnavailable",
    "TaskOutOfReach",
    "UnknownExecutor",
    "translated",
    "translating",
]

# What "Redis cannot be reached" looks like: refused or reset connections,
# socket timeouts, a server still loading its data set (a ConnectionError).
UNREACHABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)


class RedisFailure(BucketError):
    """A Redis call failed: the base of `RedisUnavailable` and `RedisServerError`.

    Every Redis failure reaches the caller of a `SharedBucket` method as one
    of them, with the redis client's exception as its ``__cause__``.

    Attributes:
        fill_token: set when `fill` raised it: the token to retry that fill
            with (``fill(..., fill_token=exc.fill_token)``).
        fill_tokens: set when `fill_many` raised it: each item's token (None
            for an item refused before Redis), in the items' order.
    """

    fill_token: str | None = None
    fill_tokens: list[str | None] | None = None


class RedisUnavailable(RedisFailure, ConnectionError):
    """Redis could not be reached (refused, timed out) for an operation that needs it.

    Raised by `SharedBucket.fill`, `drain`, `reset`... For a fill the outcome
    is not always known (the request may have reached Redis before the
    connection broke): fill the same id again with
    ``fill_token=exc.fill_token`` once Redis is back; the retry then returns
    the first attempt's outcome, and runs nothing twice (docs/shared.md,
    idempotent fills).
    """


class RedisServerError(RedisFailure):
    """Redis answered an operation with an error: out of memory under ``maxmemory``
    (``OutOfMemoryError``), a read-only replica, a script error...

    Nothing is half done: a script refused for lack of memory fails before
    its first write and changes nothing.
    """


class UnknownExecutor(BucketError, ValueError):
    """No live member of the group has registered this executor name.

    Raised by `SharedBucket.fill` (and per item by `fill_many`) of a
    producer-only member before anything is stored, so that no task waits
    forever for an executor nobody runs. A ValueError too, as for any bad
    argument.
    """


# What the store raises for a Redis failure: catch it around a store call.
REDIS_FAILED = (RedisFailure,)


def translated(exc: BaseException, what: str) -> BaseException:
    """The `BucketError` a redis client failure of step `what` reaches callers as.

    Connection errors and timeouts become `RedisUnavailable`, every other
    ``redis.RedisError`` a `RedisServerError`; anything else is returned as it is.
    The caller raises the result ``from exc``.
    """
    if isinstance(exc, UNREACHABLE):
        return RedisUnavailable(f"{what}: Redis unreachable ({exc})")
    if isinstance(exc, redis.exceptions.RedisError):
        return RedisServerError(f"{what}: Redis refused it ({type(exc).__name__}: {exc})")
    return exc


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


_C = TypeVar("_C", bound=type)

# What a method's failure says it could not do ("cannot <verb> <id>").
_VERBS = {
    "group_info": "read the state of the group",
    "holder": "look up the holder of",
    "owned_ids": "list the tasks held by this member",
    "executor_names": "read the executor names of the group",
    "register_executors": "register this member's executor names",
}


def translating(cls: _C) -> _C:
    """Wrap every public method of `cls`: redis client errors become `RedisFailure`s.

    `GroupStore` is decorated with it: the one place that does it, so that
    every step of the protocol, and every step added later, fails the same
    way: `RedisUnavailable` or `RedisServerError`, raised ``from`` the
    client's exception. The
    message names the group, the step and the task id (a method's first
    argument, when it is a str).
    """

    def wrap(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        verb = _VERBS.get(name, name.replace("_", " "))

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except (redis.exceptions.RedisError, OSError) as exc:
                subject = f" {safe_repr(args[0])}" if args and isinstance(args[0], str) else ""
                what = f"group {self.group!r}: cannot {verb}{subject}"
                raise translated(exc, what) from exc

        return call

    for name, value in list(vars(cls).items()):
        if not name.startswith("_") and callable(value):
            setattr(cls, name, wrap(name, value))
    return cls

"""The exception family. Every public error derives from `BucketError`.

The seven errors are siblings: none derives from another, so ``except
TaskNotFound`` never swallows a ``TaskExists``. Where a built-in base is
natural it is mixed in, so code that already catches ``KeyError`` or
``RuntimeError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "BucketClosed",
    "BucketError",
    "BucketFull",
    "TaskDrained",
    "TaskExhausted",
    "TaskExists",
    "TaskNotFound",
    "TaskRescued",
]


class BucketError(Exception):
    """Base class of every error wheelbucket raises on purpose."""


class TaskExists(BucketError, KeyError):
    """`fill` was given an id that is already live in the bucket."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TaskNotFound(BucketError, KeyError):
    """`drain` was given an id that is not live (unknown, or already ended)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class BucketFull(BucketError):
    """`fill` found `max_bucket` tasks already live."""


class BucketClosed(BucketError, RuntimeError):
    """`fill` was called after `close()` began."""


class TaskExhausted(BucketError):
    """The task's life span ended before it finished (from `TaskHandle.result`)."""


class TaskDrained(BucketError):
    """The task was drained (cancelled) before it finished (from `TaskHandle.result`)."""


class TaskRescued(BucketError):
    """The task was handed back to the program by `rescue()` (from `TaskHandle.result`)."""

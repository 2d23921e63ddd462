"""Filling the group: a fill's checked arguments, fill tokens, `fill_many` items, and
the executor names the live members of the group run.

None of it calls Redis itself: `ExecutorNames` is handed the store's read as a
callable.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from .._args import duration_ns, task_id_arg
from .._log import safe_repr
from ..task import TaskType
from .serializer import Serializer, encode

__all__ = ["ExecutorNames", "Prepared", "fill_token_arg", "item_args", "prepare"]

# The longest fill token accepted (it is stored with the task).
_MAX_TOKEN = 128

# The keys a fill_many item given as a mapping may have: fill()'s argument names.
_ITEM_KEYS = ("task_type", "task_id", "data", "executor", "run_after", "life_span", "fill_token")


class Prepared(NamedTuple):
    """A fill whose arguments passed every check, ready for the store."""

    task_id: str
    task_type: TaskType
    typ: str  # 'i' IMMEDIATE, 't' TIME_BOMB
    ex: str
    delay_ns: int
    span_ns: int
    payload: bytes | str
    data: Any
    # Unique per fill, or the caller's fill_token: what tells a retry from a new fill.
    token: str

    @property
    def delay_us(self) -> int:
        return -(-self.delay_ns // 1000)

    @property
    def span_us(self) -> int:
        return -(-self.span_ns // 1000)


def fill_token_arg(value: object) -> str | None:
    """`fill_token` checked: None, or a non-empty str without whitespace."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"fill_token must be a str, got {type(value).__name__}")
    if not value or len(value) > _MAX_TOKEN or any(c.isspace() for c in value):
        raise ValueError(
            f"fill_token must be 1 to {_MAX_TOKEN} characters without whitespace, "
            f"got {safe_repr(value)}"
        )
    return value


def prepare(
    task_type: object,
    task_id: object,
    data: Any,
    ex: str,
    *,
    run_after: float | datetime.timedelta | None,
    life_span: float | datetime.timedelta | None,
    run_after_ns: int,
    life_span_ns: int,
    serializer: Serializer,
    token: str,
) -> Prepared:
    """Check a fill's arguments as `TaskBucket.fill` does, and serialize its data.

    Raises:
        TypeError, ValueError: the message names the argument; or data the
            serializer refuses.
    """
    task_id = task_id_arg(task_id)
    span = life_span_ns if life_span is None else duration_ns(life_span, "life_span", zero_ok=False)
    if task_type is TaskType.TIME_BOMB:
        delay = (
            run_after_ns if run_after is None else duration_ns(run_after, "run_after", zero_ok=True)
        )
        if span <= delay:
            raise ValueError(
                f"life_span ({span / 1e9:g} s) must be greater than run_after "
                f"({delay / 1e9:g} s) for a TIME_BOMB task"
            )
        typ = "t"
    elif task_type is TaskType.IMMEDIATE:
        if run_after is not None:
            duration_ns(run_after, "run_after", zero_ok=True)
        delay = 0
        typ = "i"
    else:
        raise TypeError(
            "task_type must be TaskType.IMMEDIATE or TaskType.TIME_BOMB, "
            f"got {safe_repr(task_type)}"
        )
    payload = encode(serializer, task_id, data)
    return Prepared(task_id, task_type, typ, ex, delay, span, payload, data, token)


def item_args(item: object) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A `fill_many` item as fill()'s (positional, keyword) arguments.

    An item is a tuple ``(task_type, task_id[, data[, executor]])``, or a
    mapping of fill()'s argument names (``task_type`` and ``task_id``
    required; ``data``, ``executor``, ``run_after``, ``life_span``,
    ``fill_token`` optional).
    """
    if isinstance(item, tuple) and 2 <= len(item) <= 4:
        return item, {}
    if isinstance(item, Mapping):
        unknown = [k for k in item if k not in _ITEM_KEYS]
        if unknown:
            raise TypeError(f"fill_many item: unknown keys {unknown!r}; known are {_ITEM_KEYS!r}")
        if "task_type" not in item or "task_id" not in item:
            raise TypeError("fill_many item: task_type and task_id are required")
        kwargs = dict(item)
        args = (kwargs.pop("task_type"), kwargs.pop("task_id"))
        return args, kwargs
    raise TypeError(
        "fill_many item must be a tuple (task_type, task_id[, data[, executor]]) or a "
        f"mapping of fill()'s arguments, got {type(item).__name__}"
    )


class ExecutorNames:
    """The executor names the live members of the group run, cached for `ttl` seconds.

    Args:
        read: reads the names from Redis (one round trip; raises as the store does).
        ttl: how long a read is trusted. A name not in the cache is looked
            up again once before it is refused, so a member that just joined
            is seen at once; only refusals cost a round trip each.
    """

    def __init__(self, read: Callable[[], frozenset[str]], ttl: float) -> None:
        self._read = read
        self._ttl = ttl
        # (names, monotonic time of the read); replaced whole, so readers
        # on other threads see one consistent pair without a lock.
        self._cached: tuple[frozenset[str], float] = (frozenset(), -float("inf"))

    def has(self, name: str) -> bool:
        """Does a live member of the group run executor `name`? Cost: O(1), or one round trip."""
        names, at = self._cached
        fresh = time.monotonic() - at < self._ttl
        if fresh and name in names:
            return True
        return name in self.refresh()

    def refresh(self) -> frozenset[str]:
        """Read the names again (one round trip; concurrent refreshes are harmless)."""
        names = self._read()
        self._cached = (names, time.monotonic())
        return names

    def known(self) -> frozenset[str]:
        """The names as last read (no round trip)."""
        return self._cached[0]

"""Argument checks shared by every public entry point (TaskBucket, SharedBucket).

Each check either returns the value in the form the core uses (durations as
whole nanoseconds) or raises ``TypeError`` / ``ValueError`` with a message
that names the argument and the value it got.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

from ._log import safe_repr

__all__ = ["MAX_DURATION", "close_timeout", "duration_ns", "positive_int", "task_id_arg"]

# The longest duration accepted: ten years. Anything longer is surely a unit
# mistake (milliseconds passed as seconds) and is refused, not clamped.
MAX_DURATION = 10 * 365.25 * 86400.0


def duration_ns(value: object, name: str, *, zero_ok: bool) -> int:
    """Seconds (int, float) or a timedelta, as whole nanoseconds rounded up."""
    if isinstance(value, datetime.timedelta):
        seconds: float = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds or a datetime.timedelta, "
            f"got {type(value).__name__}: {safe_repr(value)}"
        )
    else:
        seconds = value
    if isinstance(seconds, float) and not math.isfinite(seconds):  # no float() of a huge int
        raise ValueError(f"{name} must be finite, got {seconds!r}")
    if seconds < 0 or (seconds == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {seconds!r}")
    if seconds > MAX_DURATION:
        raise ValueError(
            f"{name} must be at most ten years ({MAX_DURATION:.0f} s), got {seconds!r}"
        )
    if isinstance(seconds, int):
        return seconds * 1_000_000_000
    return math.ceil(seconds * 1e9)


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {safe_repr(value)}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def close_timeout(wait: object, timeout: object, rescue: object) -> float | None:
    """Check close()'s arguments; return the timeout in seconds, None for no limit."""
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(
                f"timeout must be a number of seconds or None, got {safe_repr(timeout)}"
            )
        if (isinstance(timeout, float) and math.isnan(timeout)) or timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout!r}")
        if timeout > MAX_DURATION:  # math.inf included: no limit, as None
            timeout = None
    if not isinstance(wait, bool):
        raise TypeError(f"wait must be a bool, got {type(wait).__name__}")
    if not isinstance(rescue, bool):
        raise TypeError(f"rescue must be a bool, got {type(rescue).__name__}")
    return timeout


def task_id_arg(task_id: object) -> str:
    """A task id: a non-empty str."""
    if type(task_id) is not str:
        raise TypeError(
            f"task_id must be a str, got {type(task_id).__name__}: {safe_repr(task_id)}"
        )
    if not task_id:
        raise ValueError("task_id must be a non-empty str")
    return task_id


#: The keyword arguments a `fill_many` item may give as a mapping.
FILL_KEYS = frozenset({"task_type", "task_id", "data", "executor", "run_after", "life_span"})


def fill_item(item: object, extra: frozenset[str] = frozenset()) -> dict[str, Any]:
    """One `fill_many` item as `fill`'s keyword arguments.

    An item is a tuple ``(task_type, task_id[, data[, executor]])`` or a
    mapping of `fill`'s argument names (plus `extra` ones). Raises TypeError
    for anything else, naming what is wrong.
    """
    if isinstance(item, tuple):
        if not 2 <= len(item) <= 4:
            raise TypeError(
                f"a fill_many item is (task_type, task_id[, data[, executor]]), "
                f"got a tuple of {len(item)}"
            )
        return dict(zip(("task_type", "task_id", "data", "executor"), item, strict=False))
    if isinstance(item, Mapping):
        unknown = set(item) - FILL_KEYS - extra
        if unknown:
            raise TypeError(
                f"a fill_many item has unknown keys: {', '.join(sorted(map(str, unknown)))}"
            )
        missing = {"task_type", "task_id"} - set(item)
        if missing:
            raise TypeError(f"a fill_many item needs {' and '.join(sorted(missing))}")
        return dict(item)
    raise TypeError(f"a fill_many item is a tuple or a mapping, got {type(item).__name__}")

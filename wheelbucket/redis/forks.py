"""Fork safety: a forked child has none of the parent's threads, so its shared buckets close.

Objects that hold threads register here; in the child each is told at once
(`os.register_at_fork`), before any code of the child runs.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "track", "untrack"]


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None:
        """Become closed without touching a lock or a thread of the parent."""
        ...


_live: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def track(obj: ForkAware) -> None:
    """Tell `obj` when this process forks (until `untrack`)."""
    _live.add(obj)


def untrack(obj: ForkAware) -> None:
    _live.discard(obj)


def _after_fork_in_child() -> None:
    for obj in list(_live):
        obj._after_fork_in_child()
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

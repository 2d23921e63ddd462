"""What `SharedBucket.stats()` and `SharedBucket.group_info()` return: frozen snapshots."""

from __future__ import annotations

from dataclasses import dataclass

from ..stats import BucketStats

__all__ = ["GroupInfo", "SharedStats"]


@dataclass(frozen=True)
class SharedStats:
    """A snapshot of one process's view of the group, as `SharedBucket.stats()` returns it.

    ``local`` holds the counters of the process's own bucket (every task this
    process ran or ended is counted there). The rest counts the group layer:
    ``filled_local + overflowed`` fills succeeded here; ``claimed`` tasks came
    from Redis, ``exhausted_on_claim`` of them already past their life span
    (or taken from a dead process) and ended EXHAUSTED at once.
    ``drained_remote`` and ``reset_remote`` count the drains and resets made
    from here of tasks not held here (a local reset counts in ``local.reset``).
    """

    local: BucketStats
    member: str
    filled_local: int
    overflowed: int
    claimed: int
    exhausted_on_claim: int
    reaped: int
    drained_remote: int
    reset_remote: int
    revoked: int
    rejected_duplicate: int
    rejected_full: int
    unreleased: int
    redis_errors: int
    redis_resets: int
    connected: bool


@dataclass(frozen=True)
class GroupInfo:
    """The whole group as Redis sees it (`SharedBucket.group_info()`)."""

    live: int
    queued: int
    members: tuple[str, ...]

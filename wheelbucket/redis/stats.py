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
    # Rollbacks this member noticed (Redis lost writes it relied on), and the
    # tasks it then had to take from another member, which may run twice.
    redis_rollbacks: int = 0
    may_run_twice: int = 0
    # Crashes and deploys (docs/shared.md, hand-backs): claimed tasks this
    # member gave back to the group unstarted when it closed; tasks of dead
    # members its reaps queued to run again (they had never started); and,
    # of its ``exhausted_on_claim``, those that had started on a member that
    # died (``exhausted_started``: never run twice) and those whose life span
    # ran out while they waited in the group's queue (``expired_queued``).
    handed_back: int = 0
    reaped_unstarted: int = 0
    exhausted_started: int = 0
    expired_queued: int = 0


@dataclass(frozen=True)
class GroupInfo:
    """The whole group as Redis sees it (`SharedBucket.group_info()`)."""

    live: int
    queued: int
    members: tuple[str, ...]
    # Since the group began (as long as Redis kept its data): tasks that ended
    # EXHAUSTED because their life span ran out while they waited in the
    # queue (never started), and tasks that ended EXHAUSTED after they had
    # started on a member that died (never run twice).
    expired_queued: int = 0
    exhausted_started: int = 0

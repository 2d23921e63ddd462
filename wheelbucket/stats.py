"""Bucket statistics: a frozen snapshot, and the bounded lateness histogram."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BucketStats", "LatenessHistogram"]


@dataclass(frozen=True)
class BucketStats:
    """A snapshot of a bucket's counters, as `TaskBucket.stats()` returns it.

    ``live == pending + running`` always, and once the bucket is quiet
    ``filled == finished + failed + exhausted + drained + rescued + live``.
    Lateness is how long after its due time ``on_execute`` started (seconds),
    from a histogram with 1/8-octave buckets: quantiles are exact to within
    12.5 % and never low, ``lateness_max`` is exact. ``reset`` counts the
    calls of `TaskBucket.reset` that moved a task (refused ones are not
    counted). ``loop_lateness_*`` is the same lateness for ``async def``
    on_execute starts alone: with ``TaskBucket(loop=...)``, how long the
    application's busy loop kept coroutines from starting.
    """

    live: int
    pending: int
    running: int
    filled: int
    finished: int
    failed: int
    exhausted: int
    drained: int
    rescued: int
    rejected_full: int
    rejected_duplicate: int
    hook_errors: int
    reset: int
    executed: int
    lateness_p50: float
    lateness_p99: float
    lateness_max: float
    loop_lateness_p50: float
    loop_lateness_p99: float
    loop_lateness_max: float
    workers: int
    workers_stuck: int
    workers_replaced: int


# 8 sub-buckets per power of two, up to 2**63 ns: 64 * 8 counters, whatever
# the number of tasks that ever ran.
_SUB_BITS = 3
_SUB = 1 << _SUB_BITS


class LatenessHistogram:
    """A log-linear histogram of nanosecond lateness, HDR-style.

    Not thread-safe: the bucket records under its lock.
    """

    __slots__ = ("count", "counts", "max_ns")

    def __init__(self) -> None:
        self.counts = [0] * (64 * _SUB)
        self.count = 0
        self.max_ns = 0

    def record(self, ns: int) -> None:
        """Add one sample. Runtime complexity: O(1)."""
        if ns < 0:
            ns = 0
        if ns > self.max_ns:
            self.max_ns = ns
        self.counts[_index(ns)] += 1
        self.count += 1

    def quantile(self, q: float) -> float:
        """The `q`-quantile in seconds (upper edge of its bucket, capped at the max)."""
        if not self.count:
            return 0.0
        rank = max(1, -(-round(q * self.count * 1_000_000) // 1_000_000))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(_upper(i), self.max_ns) / 1e9
        return self.max_ns / 1e9  # pragma: no cover - ranks never exceed count


def _index(ns: int) -> int:
    width = ns.bit_length()
    if width <= _SUB_BITS + 1:
        return ns
    shift = width - _SUB_BITS - 1
    return (shift + 1) * _SUB + ((ns >> shift) & (_SUB - 1))


def _upper(i: int) -> int:
    """The largest ns value that lands in bucket `i`."""
    if i < 2 * _SUB:
        return i
    shift = i // _SUB - 1
    return (((i % _SUB) | _SUB) + 1 << shift) - 1

"""The workloads W1 (burst), W2 (fire storm) and W3 (churn), and the warm-up.

Each workload is a generator that a peer's `drive()` runs: on the bench
thread, or inside the peer's event loop for the in-loop peers. It yields
commands (``("sleep", s)``, ``("sync",)``, ``("yield",)``) and returns a
dict of figures. Everything a workload needs (ids, delays, the random
cancel order) is built before the clock starts, so its cost is not counted.

Times: `time.perf_counter` for the cost of operations, `time.monotonic` for
due times and lateness (the clock asyncio, uvloop, sched, heapq+pool and
wheelbucket all run on), `time.process_time` for CPU (all threads of the
trial's process).

Lateness is measured against ``monotonic()`` read just *before* the
schedule call, plus the delay: the earliest due time the contract allows
(fill reads its own clock a little later). A negative value is therefore a
timer that certainly fired early.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from .memory import allocated_bytes, rss_bytes
from .peers import Peer

__all__ = ["BudgetExceeded", "warmup", "w1_burst", "w1_memory", "w2_storm", "w3_churn"]

Workload = Generator[tuple[Any, ...], None, dict[str, Any]]
CHUNK = 1024

# Quantiles kept for the lateness CDF plot.
CDF_POINTS = [i / 200 for i in range(201)] + [0.991, 0.993, 0.995, 0.997, 0.999, 0.9999]
CDF_POINTS.sort()


class BudgetExceeded(Exception):
    """The peer cannot do this size within the trial's time budget."""


def _check_budget(phase: str, started: float, done: int, total: int, budget: float) -> None:
    """Abort early when a phase is over budget, or clearly will be."""
    elapsed = time.perf_counter() - started
    if elapsed > budget:
        raise BudgetExceeded(
            f"{phase}: {done:,} of {total:,} ops took {elapsed:.1f} s, past the {budget:g} s budget"
        )
    if done and elapsed > min(2.0, budget / 5):
        projected = elapsed * total / done
        if projected > 2 * budget:
            raise BudgetExceeded(
                f"{phase}: {done:,} of {total:,} ops took {elapsed:.1f} s; at that rate all "
                f"{total:,} would take ~{projected:.0f} s, past the {budget:g} s budget"
            )


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def lateness_summary(values: list[float]) -> dict[str, Any]:
    values = sorted(values)
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "min": values[0],
        "p50": quantile(values, 0.50),
        "p99": quantile(values, 0.99),
        "max": values[-1],
        "cdf": [[q, quantile(values, q)] for q in CDF_POINTS],
    }


def _recorder() -> tuple[list[tuple[str, float]], Callable[[str], None]]:
    """A list of (key, fire time) and the callback that appends to it.

    ``list.append`` is atomic, so callbacks may run on any threads.
    """
    fired: list[tuple[str, float]] = []
    append = fired.append
    now = time.monotonic

    def callback(key: str) -> None:
        append((key, now()))

    return fired, callback


# -- warm-up ------------------------------------------------------------------------


def warmup(peer: Peer, n: int = 1000) -> Workload:
    """A small storm with cancels, so threads, pools and caches are up."""
    rng = random.Random(12345)
    fired, callback = _recorder()
    keys = [f"warm{i}" for i in range(n)]
    started = time.perf_counter()
    for key in keys:
        peer.schedule(key, 0.01 + 0.04 * rng.random(), callback)
    for key in keys[::2]:
        peer.cancel(key)
    yield ("sync",)
    if peer.fires:
        deadline = time.monotonic() + 5.0
        while len(fired) < n - len(keys[::2]) and time.monotonic() < deadline:
            yield ("sleep", 0.01)
    return {"warmup_s": time.perf_counter() - started, "warmup_fired": len(fired)}


# -- W1 burst ---------------------------------------------------------------------------


def _w1_inputs(n: int, seed: int) -> tuple[list[tuple[str, float]], random.Random]:
    """The (key, delay) pairs, and the generator that then shuffles the cancel order."""
    rng = random.Random(seed)
    items = [(f"t{i}", 10.0 + 10.0 * rng.random()) for i in range(n)]
    return items, rng


def _w1_cancel_order(items: list[tuple[str, float]], rng: random.Random) -> list[str]:
    # Made after the schedule phase: made before, it was one more big list,
    # in random memory order, for the collector to walk while schedule is
    # timed (about 0.35 µs a schedule at 1M for a peer that keeps an object
    # per timer).
    order = [key for key, _ in items]
    rng.shuffle(order)
    return order


def w1_burst(peer: Peer, n: int, seed: int, budget: float) -> Workload:
    """Schedule N timers due in 10-20 s, then cancel them all in random order.

    Each phase is timed from its first call to the end of a ``sync``: the
    backend has applied every operation. Also reports, taken outside the
    timed phases, the memory per pending timer by the allocators' books
    (`bench.memory.allocated_bytes`) and by RSS growth (psutil; counts
    thread stacks, but is coarse for small N).
    """
    items, rng = _w1_inputs(n, seed)
    fired, callback = _recorder()
    schedule = peer.schedule
    cancel = peer.cancel
    gc.collect()
    rss0 = rss_bytes()
    alloc0 = allocated_bytes()

    started = time.perf_counter()
    for start in range(0, n, CHUNK):
        for key, delay in items[start : start + CHUNK]:
            schedule(key, delay, callback)
        _check_budget("schedule", started, start + CHUNK, n, budget)
    yield ("sync",)
    schedule_s = time.perf_counter() - started
    rss1 = rss_bytes()
    gc.collect()
    alloc1 = allocated_bytes()
    pending_fired = len(fired)

    order = _w1_cancel_order(items, rng)
    gc.collect()
    started = time.perf_counter()
    for start in range(0, n, CHUNK):
        for key in order[start : start + CHUNK]:
            cancel(key)
        _check_budget("cancel", started, start + CHUNK, n, budget)
    yield ("sync",)
    cancel_s = time.perf_counter() - started
    return {
        "schedule_us": schedule_s / n * 1e6,
        "cancel_us": cancel_s / n * 1e6,
        "schedule_s": schedule_s,
        "cancel_s": cancel_s,
        "rss_bytes_per_timer": None if rss0 is None or rss1 is None else (rss1 - rss0) / n,
        "alloc_bytes_per_timer": None
        if alloc0 is None or alloc1 is None or pending_fired
        else (alloc1 - alloc0) / n,
        "spurious": len(fired),
    }


def w1_memory(peer: Peer, n: int, seed: int, budget: float) -> Workload:
    """Bytes per pending timer: tracemalloc growth over scheduling N timers.

    Ids and delays are built before tracing starts, so the caller's own
    objects are not counted; what is counted is what the peer (and, for the
    adapters, the key -> handle dict a user keeps) allocates per timer.
    Only Python-allocator memory is seen: not thread stacks. The timers are
    due in an hour (not 10-20 s), because tracing slows scheduling so much
    that early timers would otherwise fire before the measurement.
    """
    items, _ = _w1_inputs(n, seed)
    items = [(key, 3600.0 + delay) for key, delay in items]
    fired, callback = _recorder()
    schedule = peer.schedule
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        for start in range(0, n, CHUNK):
            for key, delay in items[start : start + CHUNK]:
                schedule(key, delay, callback)
            _check_budget("schedule (traced)", started, start + CHUNK, n, budget * 3)
        yield ("sync",)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    if fired:
        raise BudgetExceeded(f"{len(fired)} timers fired during the traced trial")
    return {"tracemalloc_bytes_per_timer": grown / n}


# -- W2 fire storm -------------------------------------------------------------------------


def w2_storm(peer: Peer, n: int, seed: int, budget: float) -> Workload:
    """N timers due uniformly over 0.5-2.5 s after they are scheduled.

    In-loop peers yield to their loop every 1,024 schedules, as loop code
    scheduling that many timers would, so early timers can fire while the
    rest are being scheduled. Counts: missed (never fired within the grace
    time), duplicate (fired more than once), spurious (a key nobody
    scheduled). CPU is the process's CPU time from the first schedule to the
    last fire.
    """
    rng = random.Random(seed)
    keys = [f"t{i}" for i in range(n)]
    delays = [0.5 + 2.0 * rng.random() for _ in range(n)]
    index = {key: i for i, key in enumerate(keys)}
    dues = [0.0] * n
    fired, callback = _recorder()
    schedule = peer.schedule
    monotonic = time.monotonic
    gc.collect()

    cpu0 = time.process_time()
    started = time.perf_counter()
    for start in range(0, n, CHUNK):
        for i in range(start, min(n, start + CHUNK)):
            delay = delays[i]
            now = monotonic()
            schedule(keys[i], delay, callback)
            dues[i] = now + delay
        _check_budget("schedule", started, start + CHUNK, n, budget)
        yield ("yield",)
    schedule_s = time.perf_counter() - started
    last_due = max(dues)
    give_up = last_due + budget
    while len(fired) < n and monotonic() < give_up:
        yield ("sleep", 0.01)
    cpu_s = time.process_time() - cpu0
    wall_s = time.perf_counter() - started
    yield ("sleep", 0.2)  # catch duplicates that come just after the last fire

    seen = [False] * n
    lateness: list[float] = []
    duplicates = spurious = 0
    for key, at in list(fired):
        i = index.get(key)
        if i is None:
            spurious += 1
        elif seen[i]:
            duplicates += 1
        else:
            seen[i] = True
            lateness.append(at - dues[i])
    return {
        "schedule_us": schedule_s / n * 1e6,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "missed": n - len(lateness),
        "duplicates": duplicates,
        "spurious": spurious,
        "lateness": lateness_summary(lateness),
    }


# -- W3 churn ----------------------------------------------------------------------------------


def w3_churn(
    peer: Peer,
    seed: int,
    budget: float,
    *,
    rate: float = 20_000.0,
    duration: float = 5.0,
    delay: float = 1.0,
    cancel_after: float = 0.1,
    cancel_fraction: float = 0.9,
    step: float = 0.005,
) -> Workload:
    """A steady stream of `delay`-s timers at `rate`/s; most cancelled soon after.

    Every `step` seconds: first the cancels that are due, then schedules up
    to ``rate x elapsed`` (at most two steps' worth at once, so a slow peer
    falls behind instead of bursting). Scheduling stops after `duration`;
    the achieved rate is what got scheduled divided by `duration`.
    CPU per 1,000 ops is process CPU time, from the first schedule until the
    last timer has fired, over schedules + cancels.
    """
    rng = random.Random(seed)
    total = int(rate * duration)
    keys = [f"t{i}" for i in range(total)]
    index = {key: i for i, key in enumerate(keys)}
    to_cancel = [rng.random() < cancel_fraction for _ in range(total)]
    scheduled_at = [0.0] * total
    cancelled_at = [0.0] * total  # monotonic time cancel() returned; 0: not cancelled
    fired, callback = _recorder()
    schedule = peer.schedule
    cancel = peer.cancel
    monotonic = time.monotonic
    pending_cancels: deque[tuple[float, int]] = deque()
    burst = max(1, int(rate * step * 2))
    gc.collect()

    cpu0 = time.process_time()
    t0 = monotonic()
    next_step = t0
    done = 0
    cancels = 0
    lag_max = 0.0
    final_step_done = False
    while True:
        now = monotonic()
        if now - t0 > duration + budget:
            raise BudgetExceeded(f"churn did not finish its cancels within {budget:g} s")
        while pending_cancels and pending_cancels[0][0] <= now:
            when, i = pending_cancels.popleft()
            lag_max = max(lag_max, now - when)
            cancel(keys[i])
            cancelled_at[i] = monotonic()
            cancels += 1
        elapsed = now - t0
        if done < total and (elapsed < duration or not final_step_done):
            # The step that crosses `duration` catches up to the full count.
            final_step_done = elapsed >= duration
            target = min(total, int(elapsed * rate) + 1, done + burst)
            while done < target:
                at = monotonic()
                schedule(keys[done], delay, callback)
                scheduled_at[done] = at
                if to_cancel[done]:
                    pending_cancels.append((at + cancel_after, done))
                done += 1
        elif elapsed >= duration and not pending_cancels:
            break
        next_step += step
        pause = next_step - monotonic()
        if pause < 0:
            next_step = monotonic()
            pause = 0.0
        yield ("sleep", pause)
    schedule_end = monotonic()

    expected = sum(1 for i in range(done) if not to_cancel[i])
    give_up = schedule_end + delay + budget if peer.fires else schedule_end
    fired_ok = 0
    seen_upto = 0
    while monotonic() < give_up:
        # Count the timers that should fire, incrementally.
        for key, _at in fired[seen_upto:]:
            if not cancelled_at[index[key]]:
                fired_ok += 1
        seen_upto = len(fired)
        if fired_ok >= expected:
            break
        yield ("sleep", 0.01)
    cpu_s = time.process_time() - cpu0
    wall_s = monotonic() - t0
    yield ("sleep", 0.2)

    seen = [False] * total
    lateness: list[float] = []
    duplicates = spurious = cancel_late = 0
    for key, at in list(fired):
        i = index[key]
        if seen[i]:
            duplicates += 1
            continue
        seen[i] = True
        if cancelled_at[i]:
            if at > cancelled_at[i]:
                spurious += 1  # fired after cancel() had returned
            else:
                cancel_late += 1  # the cancel came too late (peer far behind)
            continue
        lateness.append(at - (scheduled_at[i] + delay))
    ops = done + cancels
    return {
        "target_rate": rate,
        "duration_s": duration,
        "scheduled": done,
        "cancelled": cancels,
        "achieved_rate": done / duration,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "cpu_ms_per_1k_ops": cpu_s * 1e3 / ops * 1e3 if ops else None,
        "cancel_lag_max_s": lag_max,
        "expected_fires": expected,
        "missed": expected - len(lateness) if peer.fires else None,
        "duplicates": duplicates,
        "spurious": spurious,
        "cancel_late": cancel_late,
        "lateness": lateness_summary(lateness),
    }

"""SPEC W4 capacity: ``python -m bench.w4_capacity``.

    python -m bench.w4_capacity                          # 20k, 40k, ... 3 trials (~10 min)
    python -m bench.w4_capacity --rates 20k,40k,60k,80k --trials 1 --seconds 3

A steady stream of 1-s timers, none cancelled, with a trivial callback (it
appends the key and ``monotonic()`` to a list), at rising target rates in
steps of 20,000/s. For every rate and peer: lateness p50/p99/max of the
firings and the achieved fill rate. The stream is W3's machinery
(`bench.workloads.w3_churn`) with ``cancel_fraction=0``: the same 5-ms
pacing, at most two steps' worth of schedules at once, so a peer that cannot
keep up falls behind (its achieved rate drops) instead of bursting.

A peer *sustains* a rate when, over the trials at that rate, the median p99
lateness is <= 10 ms, the median achieved rate is >= 99 % of the target, and
no trial missed (a timer not fired ``--budget`` s after the last due time)
or doubled a timer. Its *capacity* is the highest rate it sustained. A peer is
not asked for higher rates after failing two rates in a row, a rate's
remaining trials are skipped once the median cannot pass, and no rate is
raised after ``--max-minutes``.

Every trial is a fresh process (``--run``), as in `bench.trial`: the peer
started, the standard warm-up, then the stream. The parent prints a
markdown table (rate x peer: p99 ms / achieved rate), the capacity per peer
and the ratio wheelbucket / best other peer (issue goal: >= 4x), and writes
``w4_capacity.json`` (every trial, with each full collection's time and
length) and ``w4_p99_vs_rate.png`` into ``--out``.

The collector decides this workload: a full collection stops every thread,
and its length grows with the tracked objects each pending timer keeps. So
that the harness's own per-timer lists (which grow with rate x duration,
not with the pending timers) are not in it, everything alive when the
stream starts is moved out of the collector's way with `gc.freeze()`
(``--no-freeze`` keeps it in). Lateness counts from ``monotonic()`` just
before the schedule call, so it includes the whole path to the callback
(for pool peers, the hand-off to a worker thread). On a shared 2-core
machine the tail is noisy: compare the load averages in the JSON.
"""

# The report is for people: its typographic dashes and signs are on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .peers import Workload

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"

PEERS = ["wheelbucket", "asyncio-inloop", "uvloop-inloop", "heapq+pool"]
RATE_STEP = 20_000
MAX_RATE = 400_000
P99_LIMIT_S = 0.010
ACHIEVED_FRACTION = 0.99
DELAY_S = 1.0
GOAL_RATIO = 4.0
DEFAULT_SECONDS = 4.0
MAX_MINUTES = 12.0
# Seconds a trial process spends beyond its stream, the 1-s delay and the
# straggler wait: start-up and imports, warm-up, building the ids, the 0.2-s
# duplicate watch, the analysis. Measured 0.4-0.6 s on the 2-core machine.
TRIAL_OVERHEAD_S = 0.6
# How long a trial waits, after the last due time, for timers still to fire
# (one later than that counts as missed and fails the rate); also how far
# past its duration the stream's own loop may run before W3 gives up on it
# ("over budget": seen for wheelbucket at 80k/s with a 1-s budget, likely
# because fill gives the GIL away while its scheduler is late). Not
# longer, because W3's wait loop in bench/workloads.py can lose count of
# firings that callbacks on other threads append while it reads the list
# (``seen_upto = len(fired)`` after iterating a slice), so for the threaded
# peers (wheelbucket, heapq+pool) it often waits the whole budget even when
# every timer fired (the final count is exact).
DEFAULT_BUDGET_S = 2.0


# -- one trial (in its own process) ---------------------------------------------------------


class _GcTimer:
    """Times every collection through `gc.callbacks`: count and longest pause per generation.

    Also keeps each full (generation 2) collection as ``[seconds since start, ms]``.
    """

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]
        self.total = [0.0, 0.0, 0.0]
        self.full: list[list[float]] = []
        self.origin = time.perf_counter()
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        gen = info["generation"]
        self.count[gen] += 1
        self.total[gen] += pause
        self.longest[gen] = max(self.longest[gen], pause)
        if gen == 2:
            self.full.append([round(self._started - self.origin, 3), round(pause * 1e3, 2)])

    def summary(self) -> dict[str, Any]:
        return {
            "gc_count": self.count,
            "gc_longest_ms": [s * 1e3 for s in self.longest],
            "gc_total_ms": [s * 1e3 for s in self.total],
            "gc_full_ms": self.full,
        }


def _timed_stream(workload: Workload, freeze: bool, timer: _GcTimer) -> Workload:
    """Run `workload`, timing collections from its first step on (after its set-up).

    W3's generator builds its per-timer lists (ids, schedule times, the list
    of firings) and runs a ``gc.collect()`` before its first step. With
    `freeze`, those and every other object alive at that point move to the
    permanent generation (`gc.freeze`), so full collections during the
    stream walk only what the peer and the stream add: the harness's lists
    grow with rate x duration, not with the pending timers, and walked they
    cost 5-10 ms a full collection at 60k/s x 3 s, for every peer alike.
    """
    first = next(workload)
    if freeze:
        gc.freeze()
    gc.callbacks.append(timer)
    timer.origin = time.perf_counter()
    try:
        sent = yield first
        while True:
            try:
                command = workload.send(sent)
            except StopIteration as stop:
                return stop.value
            sent = yield command
    finally:
        gc.callbacks.remove(timer)


def run_trial(
    peer_name: str, rate: float, seconds: float, seed: int, budget: float, freeze: bool = True
) -> dict[str, Any]:
    """One peer at one rate: warm-up, then the stream; the figures as a dict."""
    from .peers import make_peer
    from .workloads import BudgetExceeded, w3_churn, warmup

    result: dict[str, Any] = {
        "peer": peer_name,
        "rate": rate,
        "seconds": seconds,
        "seed": seed,
        "budget_s": budget,
        "freeze": freeze,
        "pid": os.getpid(),
    }
    started = time.perf_counter()
    peer = make_peer(peer_name, int(rate * seconds) + 2000)
    peer.start()
    result.update(peer.drive(warmup(peer)))
    timer = _GcTimer()
    stream = w3_churn(
        peer, seed, budget, rate=rate, duration=seconds, delay=DELAY_S, cancel_fraction=0.0
    )
    try:
        result.update(peer.drive(_timed_stream(stream, freeze, timer)))
        result["ok"] = True
    except BudgetExceeded as exc:
        result["ok"] = False
        result["skip"] = f"over budget: {exc}"
    result.update(timer.summary())
    result["trial_s"] = time.perf_counter() - started
    return result


def _child(args: argparse.Namespace) -> None:
    try:
        result = run_trial(
            args.run, args.rate, args.seconds, args.seed, args.budget, not args.no_freeze
        )
    except Exception as exc:
        import traceback

        result = {
            "peer": args.run,
            "rate": args.rate,
            "ok": False,
            "skip": f"error: {type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # The peer is not torn down: nothing is pending, and stop() is not measured.
    os._exit(0)


# -- the parent ---------------------------------------------------------------------------


def _spawn(peer: str, rate: float, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.w4_capacity",
        "--run",
        peer,
        "--rate",
        str(rate),
        "--seconds",
        str(args.seconds),
        "--seed",
        str(seed),
        "--budget",
        str(args.budget),
        *(["--no-freeze"] if args.no_freeze else []),
    ]
    timeout = trial_estimate_s(args.seconds, args.budget) + args.budget + 60
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"peer": peer, "rate": rate, "ok": False, "skip": f"killed after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"peer": peer, "rate": rate, "ok": False, "skip": f"crashed: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def _p99(trial: dict[str, Any]) -> float:
    """A trial's p99 lateness in seconds; inf for a trial that failed or fired nothing."""
    if not trial.get("ok"):
        return math.inf
    return float(trial["lateness"].get("p99", math.inf))


def _achieved(trial: dict[str, Any]) -> float:
    return float(trial["achieved_rate"]) if trial.get("ok") else 0.0


def _clean(trial: dict[str, Any]) -> bool:
    """Every expected timer fired exactly once."""
    return bool(trial.get("ok")) and not trial.get("missed") and not trial.get("duplicates")


def _p99_fails(trial: dict[str, Any]) -> bool:
    return _p99(trial) > P99_LIMIT_S


def _rate_fails(trial: dict[str, Any], rate: float) -> bool:
    return _achieved(trial) < ACHIEVED_FRACTION * rate


def hopeless(trials: list[dict[str, Any]], rate: float, planned: int) -> bool:
    """True once the verdict at `rate` is a failure whatever the remaining trials give."""
    majority = planned // 2 + 1
    return (
        any(not _clean(t) for t in trials)
        or sum(_p99_fails(t) for t in trials) >= majority
        or sum(_rate_fails(t, rate) for t in trials) >= majority
    )


def verdict(trials: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    """Median figures over `trials` at `rate`, and whether the peer sustained it."""
    p99 = statistics.median(_p99(t) for t in trials)
    achieved = statistics.median(_achieved(t) for t in trials)
    ok = [t for t in trials if t.get("ok")]

    def median_of(key: str) -> float | None:
        values = [t["lateness"][key] for t in ok if t["lateness"].get("count")]
        return statistics.median(values) if values else None

    gc2 = [t["gc_longest_ms"][2] for t in trials if "gc_longest_ms" in t]
    return {
        "rate": rate,
        "trials": len(trials),
        "p50_s": median_of("p50"),
        "p99_s": None if math.isinf(p99) else p99,
        "p99_range_s": [min(_p99(t) for t in trials), max(_p99(t) for t in trials)],
        "max_s": median_of("max"),
        "achieved_rate": achieved,
        "missed": max((t.get("missed") or 0) for t in ok) if ok else None,
        "cpu_s": statistics.median(t["cpu_s"] for t in ok) if ok else None,
        "gc2_longest_ms": max(gc2) if gc2 else None,
        "failures": [t.get("skip") for t in trials if not t.get("ok")],
        "sustained": p99 <= P99_LIMIT_S
        and achieved >= ACHIEVED_FRACTION * rate
        and all(_clean(t) for t in trials),
    }


def _rates(text: str) -> list[float]:
    rates = []
    for part in text.split(","):
        part = part.strip().lower()
        scale = 1_000 if part.endswith("k") else 1
        rates.append(float(part.rstrip("k")) * scale)
    return sorted(rates)


def _fmt_rate(rate: float) -> str:
    return f"{rate / 1000:g}k"


def _cell(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "–"
    if len(summary["failures"]) == summary["trials"]:
        reason = str(summary["failures"][0]).split(":")[0]
        return f"{reason} ✗"
    p99 = summary["p99_s"]
    p99_text = "fail" if p99 is None else f"{p99 * 1e3:.2f} ms"
    mark = "" if summary["sustained"] else " ✗"
    return f"{p99_text} / {summary['achieved_rate'] / 1000:.1f}k{mark}"


def table_lines(
    rates: list[float], peers: list[str], summaries: dict[str, dict[float, dict[str, Any]]]
) -> list[str]:
    header = ["target rate", *peers]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|" + "|".join("---:" for _ in peers) + "|",
    ]
    for rate in rates:
        if not any(rate in summaries[p] for p in peers):
            continue
        cells = [_cell(summaries[p].get(rate)) for p in peers]
        lines.append(f"| {_fmt_rate(rate)}/s | " + " | ".join(cells) + " |")
    return lines


def capacities(
    peers: list[str],
    summaries: dict[str, dict[float, dict[str, Any]]],
    still_rising: list[str],
) -> dict[str, dict[str, Any]]:
    """Per peer: the highest sustained rate, and whether it is only a lower bound.

    It is a lower bound for a peer that was still rising when the rates (or
    the time) ran out, rather than stopped by two failures in a row.
    """
    out = {}
    for peer in peers:
        sustained = [r for r, s in summaries[peer].items() if s["sustained"]]
        best = max(sustained) if sustained else 0.0
        out[peer] = {"capacity": best, "lower_bound": peer in still_rising}
    return out


def plot(path: Path, peers: list[str], summaries: dict[str, dict[float, dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for peer in peers:
        points = sorted(summaries[peer].items())
        if not points:
            continue
        xs = [r / 1000 for r, s in points if s["p99_s"] is not None]
        ys = [s["p99_s"] * 1e3 for r, s in points if s["p99_s"] is not None]
        lo = [(s["p99_s"] - s["p99_range_s"][0]) * 1e3 for r, s in points if s["p99_s"] is not None]
        hi = [
            (min(s["p99_range_s"][1], 1e3) - s["p99_s"]) * 1e3
            for r, s in points
            if s["p99_s"] is not None
        ]
        line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=peer)
        # Hollow markers where the peer fell behind its target rate.
        behind = [
            (r / 1000, s["p99_s"] * 1e3)
            for r, s in points
            if s["p99_s"] is not None and s["achieved_rate"] < ACHIEVED_FRACTION * r
        ]
        if behind:
            ax.plot(
                *zip(*behind, strict=True),
                linestyle="none",
                marker="o",
                markersize=11,
                markerfacecolor="none",
                color=line[0].get_color(),
            )
    ax.axhline(P99_LIMIT_S * 1e3, color="red", linestyle="--", linewidth=1, label="10 ms")
    ax.set_yscale("log")
    ax.set_xlabel("target fire rate (thousand 1-s timers per second; none cancelled)")
    ax.set_ylabel("p99 lateness (ms, median over trials, [min–max])")
    ax.set_title("W4 capacity: p99 lateness against fire rate (large ring: fell behind the rate)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trial_estimate_s(seconds: float, budget: float) -> float:
    """Seconds one trial process takes, the straggler wait included (see DEFAULT_BUDGET_S)."""
    return seconds + DELAY_S + TRIAL_OVERHEAD_S + budget


def estimate_s(n_rates: int, n_peers: int, trials: int, seconds: float, budget: float) -> float:
    """Seconds for `n_rates` rates with `n_peers` peers running every trial."""
    return n_rates * n_peers * trials * trial_estimate_s(seconds, budget)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.w4_capacity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rates",
        type=_rates,
        help=f"target rates, e.g. 20k,40k (default: 20k, 40k, ... up to {_fmt_rate(MAX_RATE)})",
    )
    parser.add_argument("--trials", type=int, default=3, help="trials per peer and rate (3)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"seconds of stream ({DEFAULT_SECONDS:g})",
    )
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated peer names")
    parser.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help=f"seconds after the last due time a trial waits for stragglers ({DEFAULT_BUDGET_S:g})",
    )
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="leave the harness's lists to the collector (default: gc.freeze() them)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=MAX_MINUTES,
        help=f"raise no rate after this many minutes ({MAX_MINUTES:g})",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        _child(args)
        return

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    rates = args.rates or [float(r) for r in range(RATE_STEP, MAX_RATE + 1, RATE_STEP)]
    given = sys.argv[1:] if argv is None else argv
    load_before = [round(x, 2) for x in os.getloadavg()]
    trial_s = trial_estimate_s(args.seconds, args.budget)
    step_s = len(peers) * args.trials * trial_s
    typical_rates = min(4, len(rates))
    typical = estimate_s(typical_rates, len(peers), args.trials, args.seconds, args.budget)
    whole = estimate_s(len(rates), len(peers), args.trials, args.seconds, args.budget)
    print(
        f"W4 capacity: peers {', '.join(peers)}; rates "
        f"{_fmt_rate(rates[0])}..{_fmt_rate(rates[-1])} ({len(rates)} steps of "
        f"{_fmt_rate(RATE_STEP)}/s); {args.trials} trial(s) of "
        f"{args.seconds:g} s of stream, ~{trial_s:.1f} s a trial process; load average "
        f"{load_before}.\n"
        f"  estimate: ~{step_s:.0f} s a rate while all {len(peers)} peers run; a peer stops after "
        f"two failed rates in a row, so if every peer stops within {typical_rates} rates the "
        f"run takes ~{typical / 60:.1f} min (the whole ladder for every peer: "
        f"{whole / 60:.1f} min; no rate is raised after {args.max_minutes:g} min)",
        file=sys.stderr,
        flush=True,
    )

    trials: list[dict[str, Any]] = []
    summaries: dict[str, dict[float, dict[str, Any]]] = {p: {} for p in peers}
    failed_in_a_row = dict.fromkeys(peers, 0)
    active = list(peers)
    started = time.perf_counter()
    out_of_time = False
    for step, rate in enumerate(rates):
        if not active:
            break
        if time.perf_counter() - started > args.max_minutes * 60:
            out_of_time = True
            print(
                f"  {args.max_minutes:g} min spent: not raising the rate above "
                f"{_fmt_rate(rates[step - 1])}/s for {', '.join(active)}",
                file=sys.stderr,
                flush=True,
            )
            break
        at_rate: dict[str, list[dict[str, Any]]] = {p: [] for p in active}
        for rep in range(args.trials):
            # Rotate the order so no peer always runs first (or just after another).
            shift = (step + rep) % len(active)
            for peer in active[shift:] + active[:shift]:
                done = at_rate[peer]
                if done and hopeless(done, rate, args.trials):
                    continue
                result = _spawn(peer, rate, args, args.seed + rep)
                result["rep"] = rep
                done.append(result)
                trials.append(result)
                elapsed = time.perf_counter() - started
                if result.get("ok"):
                    lat = result["lateness"]
                    text = (
                        f"p50 {lat.get('p50', math.nan) * 1e3:6.2f} ms  "
                        f"p99 {lat.get('p99', math.nan) * 1e3:7.2f} ms  "
                        f"achieved {result['achieved_rate'] / 1000:6.1f}k/s"
                        + (f"  missed {result['missed']}" if result.get("missed") else "")
                    )
                else:
                    text = str(result.get("skip"))
                print(
                    f"[{elapsed / 60:5.1f} min] {_fmt_rate(rate):>5}/s {peer:15s} "
                    f"trial {rep + 1}/{args.trials}  {text}",
                    file=sys.stderr,
                    flush=True,
                )
        for peer in list(active):
            summary = verdict(at_rate[peer], rate)
            summaries[peer][rate] = summary
            failed_in_a_row[peer] = 0 if summary["sustained"] else failed_in_a_row[peer] + 1
            if failed_in_a_row[peer] >= 2:
                active.remove(peer)
                print(
                    f"  {peer}: failed two rates in a row; not run above {_fmt_rate(rate)}/s",
                    file=sys.stderr,
                    flush=True,
                )
        left = estimate_s(
            len(rates) - step - 1, len(active), args.trials, args.seconds, args.budget
        )
        if active and step + 1 < len(rates):
            print(
                f"  after {_fmt_rate(rate)}/s: still rising: {', '.join(active)}; "
                f"at most {left / 60:.1f} min left",
                file=sys.stderr,
                flush=True,
            )
    load_after = [round(x, 2) for x in os.getloadavg()]
    caps = capacities(peers, summaries, active)

    lines = [
        f"W4 capacity: 1-s timers, none cancelled; cell = median p99 lateness / median "
        f"achieved rate over {args.trials} trial(s) of {args.seconds:g} s; ✗ = not sustained "
        f"(p99 > 10 ms, achieved < 99 % of the target, or a timer missed).",
        "",
        *table_lines(rates, peers, summaries),
        "",
        "| peer | capacity (highest rate sustained) |",
        "|---|---:|",
    ]
    for peer in peers:
        cap = caps[peer]
        text = f"{'≥ ' if cap['lower_bound'] else ''}{_fmt_rate(cap['capacity'])}/s"
        lines.append(f"| {peer} | {text if cap['capacity'] else 'none'} |")
    ratio: float | None = None
    if "wheelbucket" in caps:
        others = {p: c["capacity"] for p, c in caps.items() if p != "wheelbucket"}
        best_peer = max(others, key=lambda p: others[p]) if others else None
        lines.append("")
        if best_peer is None:
            lines.append("ratio wheelbucket / best peer: no other peer ran")
        elif others[best_peer] == 0:
            lines.append(
                f"ratio wheelbucket / best peer: no other peer sustained {_fmt_rate(rates[0])}/s"
            )
        else:
            ratio = caps["wheelbucket"]["capacity"] / others[best_peer]
            bound = [p for p, c in caps.items() if c["lower_bound"]]
            lines.append(
                f"ratio wheelbucket / best peer ({best_peer}): {ratio:.2f}× "
                f"(goal ≥ {GOAL_RATIO:g}×: {'met' if ratio >= GOAL_RATIO else 'NOT met'}"
                + (f"; lower bounds only for {', '.join(bound)}" if bound else "")
                + ")"
            )
    lines.append(f"load average before {load_before}, after {load_after} (2 shared cores)")
    print("\n".join(lines))

    from .__main__ import machine_info

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.w4_capacity", *given]),
        "machine": machine_info(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "peers": peers,
        "rates": rates,
        "trials": args.trials,
        "seconds": args.seconds,
        "budget_s": args.budget,
        "p99_limit_s": P99_LIMIT_S,
        "achieved_fraction": ACHIEVED_FRACTION,
        "freeze": not args.no_freeze,
        "max_minutes": args.max_minutes,
        "out_of_time": out_of_time,
        "wall_s": time.perf_counter() - started,
    }
    for trial in trials:  # the CDFs are for W2's plot; here they only bloat the file
        trial.get("lateness", {}).pop("cdf", None)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "w4_capacity.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": {p: {str(r): s for r, s in summaries[p].items()} for p in peers},
                "capacity": caps,
                "ratio_wheelbucket_best_peer": ratio,
                "trials": trials,
            },
            indent=1,
        )
        + "\n"
    )
    plot(args.out / "w4_p99_vs_rate.png", peers, summaries)
    print(
        f"wrote {args.out / 'w4_capacity.json'} and {args.out / 'w4_p99_vs_rate.png'}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

"""One trial in a fresh process: ``python -m bench.trial --peer P --workload W1 --n N``.

It starts the peer, runs the warm-up, runs the workload once, and prints one
line of JSON on stdout (``{"ok": false, "skip": reason}`` when the peer
cannot do it). The orchestrator (`python -m bench`) runs one process per
trial so that no trial inherits another's heap, threads or GC state.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

from .peers import make_peer
from .workloads import BudgetExceeded, w1_burst, w1_memory, w2_storm, w3_churn, warmup


def run_trial(
    peer_name: str,
    workload: str,
    n: int,
    kind: str,
    seed: int,
    budget: float,
    duration: float,
    rate: float,
    peer_box: list[Any],
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "peer": peer_name,
        "workload": workload,
        "n": n,
        "kind": kind,
        "seed": seed,
        "budget_s": budget,
        "pid": os.getpid(),
    }
    if workload == "W3":
        n = result["n"] = int(rate * duration)
    capacity = n + 2000
    peer = make_peer(peer_name, capacity)
    peer_box.append(peer)
    started = time.perf_counter()
    peer.start()
    result.update(peer.drive(warmup(peer)))
    if workload == "W1" and kind == "time":
        gen = w1_burst(peer, n, seed, budget)
    elif workload == "W1" and kind == "mem":
        gen = w1_memory(peer, n, seed, budget)
    elif workload == "W2":
        gen = w2_storm(peer, n, seed, budget)
    elif workload == "W3":
        gen = w3_churn(peer, seed, budget, rate=rate, duration=duration)
    else:
        raise ValueError(f"unknown workload/kind {workload}/{kind}")
    try:
        result.update(peer.drive(gen))
        result["ok"] = True
    except BudgetExceeded as exc:
        result["ok"] = False
        result["skip"] = f"over budget: {exc}"
    result["trial_s"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trial", description=__doc__)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--workload", required=True, choices=["W1", "W2", "W3"])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--kind", default="time", choices=["time", "mem"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--duration", type=float, default=5.0, help="W3 seconds of churn")
    parser.add_argument("--rate", type=float, default=20_000.0, help="W3 schedules per second")
    args = parser.parse_args(argv)
    peer_box: list[Any] = []
    try:
        result = run_trial(
            args.peer,
            args.workload,
            args.n,
            args.kind,
            args.seed,
            args.budget,
            args.duration,
            args.rate,
            peer_box,
        )
    except Exception as exc:
        result = {
            "peer": args.peer,
            "workload": args.workload,
            "n": args.n,
            "kind": args.kind,
            "ok": False,
            "skip": f"error: {type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    # stop() is exercised but not measured; a million pending timers (the
    # memory trial) are not worth tearing down one by one.
    if peer_box and args.kind == "time" and result.get("ok"):
        peer_box[0].stop()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

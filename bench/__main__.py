"""``python -m bench``: wheelbucket side by side with its peers, one process per trial.

    python -m bench --quick              # about 100 s: 10k, 1 repeat, 1 s of churn
    python -m bench                      # everything (full mode: 10k/100k/1M, 3 repeats)
    python -m bench --out docs/benchmarks  # the full run that refreshes the published report
    python -m bench --only wheelbucket,heapq+pool --workloads W1 --sizes 10000,100000
    python -m bench --targets            # issue 2's figures for wheelbucket alone

Writes ``<name>.json``, ``<name>.md`` and PNG plots to ``bench/results/``
(untracked) unless ``--out`` names another folder: only ``--out
docs/benchmarks`` changes the published report. The name is ``report`` for a
full run with default selections, ``report-quick`` for ``--quick`` and
``report-custom`` when peers, workloads, sizes or repeats were narrowed (so a
partial run never overwrites the full report). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .peers import PEERS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"  # in .gitignore: a run never touches tracked files
PUBLISHED = ROOT / "docs" / "benchmarks"  # the report the docs quote: --out docs/benchmarks

FULL = {"sizes": [10_000, 100_000, 1_000_000], "repeats": 3, "budget": 60.0, "duration": 5.0}
QUICK = {"sizes": [10_000], "repeats": 1, "budget": 10.0, "duration": 1.0}
WORKLOADS = ["W1", "W2", "W3"]
HEADINGS = {
    ("W1", "time"): "W1 burst: schedule N timers due in 10-20 s, then cancel them all",
    ("W1", "mem"): "W1 memory: bytes per pending timer, traced with tracemalloc",
    ("W2", "time"): "W2 fire storm: N timers due within 0.5-2.5 s, lateness of each",
    ("W3", "time"): "W3 churn: 1-s timers at a steady rate, 90 % cancelled 0.1 s later",
}


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _sizes(text: str) -> list[int]:
    sizes = []
    for part in _csv(text):
        part = part.lower().replace("_", "")
        scale = 1
        if part.endswith("k"):
            scale, part = 1_000, part[:-1]
        elif part.endswith("m"):
            scale, part = 1_000_000, part[:-1]
        sizes.append(int(float(part) * scale))
    return sizes


def _sizes_one(text: str) -> int:
    return _sizes(text)[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark wheelbucket against its peers (see bench/README.md).",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (~100 s)")
    parser.add_argument("--only", type=_csv, help=f"peers, comma-separated: {', '.join(PEERS)}")
    parser.add_argument("--skip", type=_csv, default=[], help="peers to leave out")
    parser.add_argument("--workloads", type=_csv, help="W1,W2,W3 (default: all)")
    parser.add_argument("--sizes", type=_sizes, help="N for W1 and W2, e.g. 10k,100k,1M")
    parser.add_argument("--repeats", type=int, help="trials per peer and size (3 full, 1 quick)")
    parser.add_argument("--budget", type=float, help="seconds a trial phase may take (60/10)")
    parser.add_argument("--w3-duration", type=float, help="seconds of churn (5 full, 1 quick)")
    parser.add_argument("--w3-rate", type=float, default=20_000.0, help="W3 schedules/s")
    parser.add_argument("--no-mem", action="store_true", help="skip the tracemalloc trials")
    parser.add_argument(
        "--tracemalloc-max",
        type=_sizes_one,
        default=100_000,
        help="largest N for the tracemalloc trials (default 100k; tracing is slow)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output directory (default bench/results/, untracked; "
        "docs/benchmarks/ refreshes the published report)",
    )
    parser.add_argument("--name", help="output file stem (default: report[-quick|-custom])")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--targets", action="store_true", help="run bench.core_targets (issue 2) instead"
    )
    return parser.parse_args(argv)


# -- machine facts ----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "wheelbucket"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}{' + uncommitted changes in wheelbucket/' if dirty else ''}" if rev else "unknown"


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("wheelbucket", "uvloop", "apscheduler", "sortedcontainers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine_info() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions(),
        "git": git_revision(),
    }


# -- running trials -----------------------------------------------------------------------


def plan_trials(args: argparse.Namespace, peers: list[str]) -> list[dict[str, Any]]:
    """Every trial, in run order: workload, size, repeat, then the rotated peers."""
    trials = []
    for workload in args.workloads:
        sizes = [int(args.w3_rate * args.w3_duration)] if workload == "W3" else args.sizes
        for size_index, n in enumerate(sizes):
            for rep in range(args.repeats):
                shift = (rep + size_index) % len(peers)
                for peer in peers[shift:] + peers[:shift]:
                    trials.append(
                        {"workload": workload, "n": n, "kind": "time", "rep": rep, "peer": peer}
                    )
            if workload == "W1" and not args.no_mem and n <= args.tracemalloc_max:
                # tracemalloc is deterministic enough: one traced trial per size.
                for peer in peers:
                    trials.append({"workload": "W1", "n": n, "kind": "mem", "rep": 0, "peer": peer})
    return trials


def static_skip(trial: dict[str, Any]) -> str | None:
    cls = PEERS[trial["peer"]]
    if not cls.fires and trial["workload"] == "W2":
        return "the no-op adapter fires nothing; it only measures the harness's own cost"
    limit = cls.limits.get(trial["workload"])
    if limit is not None and trial["n"] > limit[0]:
        return limit[1]
    return None


def estimate(trials: list[dict[str, Any]], args: argparse.Namespace) -> tuple[float, str]:
    """Seconds the planned trials should take, from the published run of the same mode.

    Each trial is priced at what the same (peer, workload, N, kind) took in
    docs/benchmarks/report[-quick].json; one not found there at the mean of its
    workload's known trials (or its budget). Returns (seconds, where from).
    """
    ref = PUBLISHED / ("report-quick.json" if args.quick else "report.json")
    took: dict[tuple[str, str, int, str], list[float]] = {}
    try:
        published = json.loads(ref.read_text())
        for t in published["trials"]:
            key = (t["peer"], t["workload"], int(t["n"]), t["kind"])
            took.setdefault(key, []).append(float(t.get("process_s") or 0.0))
        source = f"{ref.relative_to(ROOT)}, run {published['meta'].get('date', '?')[:10]}"
    except (OSError, ValueError, KeyError):
        source = "the time budgets (no published run to go by)"
    by_workload: dict[str, list[float]] = {}
    for (_, workload, _, _), times in took.items():
        by_workload.setdefault(workload, []).extend(times)
    total = 0.0
    for trial in trials:
        if static_skip(trial) is not None:
            continue
        same = took.get((trial["peer"], trial["workload"], trial["n"], trial["kind"]))
        if same:
            total += sum(same) / len(same)
        elif by_workload.get(trial["workload"]):
            known = by_workload[trial["workload"]]
            total += sum(known) / len(known)
        else:
            total += args.budget
    return total, source


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"


def run_one(trial: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "bench.trial",
        "--peer",
        trial["peer"],
        "--workload",
        trial["workload"],
        "--n",
        str(trial["n"]),
        "--kind",
        trial["kind"],
        "--seed",
        str(args.seed + trial["rep"]),
        "--budget",
        str(args.budget),
        "--duration",
        str(args.w3_duration),
        "--rate",
        str(args.w3_rate),
    ]
    timeout = 4 * args.budget + 60 + (args.w3_duration if trial["workload"] == "W3" else 0)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        stdout, stderr = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = ""
        if not stdout.strip():
            return {
                **trial,
                "ok": False,
                "skip": f"killed: the trial process ran past {timeout:.0f} s",
            }
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = stderr.strip().splitlines()[-3:]
        return {**trial, "ok": False, "skip": "crashed: " + " | ".join(tail)}
    result: dict[str, Any] = json.loads(lines[-1])
    result.update(rep=trial["rep"], process_s=time.perf_counter() - started)
    if stderr.strip():
        result["stderr_tail"] = stderr.strip().splitlines()[-5:]
    return result


def describe(result: dict[str, Any]) -> str:
    if not result.get("ok"):
        return "SKIP " + str(result.get("skip", "?"))[:140]
    w, kind = result["workload"], result["kind"]
    if w == "W1" and kind == "mem":
        return f"{result['tracemalloc_bytes_per_timer']:.0f} B/timer (tracemalloc)"
    if w == "W1":
        return (
            f"schedule {result['schedule_us']:.2f} us/op, cancel {result['cancel_us']:.2f} "
            f"us/op, {result.get('alloc_bytes_per_timer') or 0:.0f} B/timer (allocator), "
            f"RSS {result['rss_bytes_per_timer'] or 0:.0f} B/timer"
        )
    lat = result["lateness"]
    late = ""
    if lat.get("count"):
        late = (
            f"lateness p50 {lat['p50'] * 1e3:.2f} p99 {lat['p99'] * 1e3:.2f} "
            f"max {lat['max'] * 1e3:.1f} min {lat['min'] * 1e3:.3f} ms, "
        )
    if w == "W2":
        return (
            f"{late}CPU {result['cpu_s']:.2f} s, missed {result['missed']} "
            f"dup {result['duplicates']} spurious {result['spurious']}"
        )
    return (
        f"rate {result['achieved_rate']:.0f}/s, {result['cpu_ms_per_1k_ops']:.2f} CPU ms/1k "
        f"ops, {late}missed {result['missed']} spurious {result['spurious']}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.targets:
        from . import core_targets

        core_targets.main((["--quick"] if args.quick else []) + ["--out", str(args.out)])
        return
    mode = QUICK if args.quick else FULL
    custom = bool(
        args.only
        or args.skip
        or args.workloads
        or args.sizes
        or args.repeats
        or args.budget
        or args.w3_duration
        or args.w3_rate != 20_000.0
        or args.no_mem
    )
    args.sizes = args.sizes or mode["sizes"]
    args.repeats = args.repeats or mode["repeats"]
    args.budget = args.budget or mode["budget"]
    args.w3_duration = args.w3_duration or mode["duration"]
    args.workloads = [w.upper() for w in (args.workloads or WORKLOADS)]
    for w in args.workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    peers = args.only or list(PEERS)
    for peer in peers + args.skip:
        if peer not in PEERS:
            sys.exit(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
    peers = [p for p in peers if p not in args.skip]
    name = args.name or "report" + ("-quick" if args.quick else "") + ("-custom" if custom else "")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m bench", *given])
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(),
        "loadavg_before": loadavg(),
        "config": {
            "peers": peers,
            "workloads": args.workloads,
            "sizes": args.sizes,
            "repeats": args.repeats,
            "budget_s": args.budget,
            "w3_duration_s": args.w3_duration,
            "w3_rate": args.w3_rate,
            "seed": args.seed,
            "mem_trials": not args.no_mem,
            "tracemalloc_max": args.tracemalloc_max,
        },
        "peer_labels": {p: PEERS[p].label for p in peers},
    }
    trials = plan_trials(args, peers)
    expected, source = estimate(trials, args)
    print(
        f"bench: {len(trials)} trials, {len(peers)} peers, workloads {','.join(args.workloads)}"
        f", sizes {args.sizes}, {args.repeats} repeat(s), budget {args.budget:g} s/phase; "
        f"load average {meta['loadavg_before']}\n"
        f"bench: this should take about {_clock(expected)} (m:ss; from the trial times of "
        f"{source}; longer on a busier machine). Results go to {_shown(args.out)}/{name}.*; "
        "one line per trial as it ends.",
        file=sys.stderr,
        flush=True,
    )
    results: list[dict[str, Any]] = []
    # A peer over budget at some size is not asked again for that size or a larger one.
    over: dict[tuple[str, str, str], tuple[int, str]] = {}
    started = time.perf_counter()
    heading = None
    for i, trial in enumerate(trials, 1):
        if (trial["workload"], trial["kind"]) != heading:
            heading = (trial["workload"], trial["kind"])
            print(f"== {HEADINGS[heading]}", file=sys.stderr, flush=True)
        key = (trial["peer"], trial["workload"], trial["kind"])
        reason = static_skip(trial)
        if reason is None and key in over and trial["n"] >= over[key][0]:
            n0, why = over[key]
            reason = (
                why if n0 == trial["n"] else f"not run: over budget already at N={n0:,} ({why})"
            )
        if reason is not None:
            result = {**trial, "ok": False, "skip": reason, "static": True}
        else:
            result = run_one(trial, args)
            if not result.get("ok"):
                over[key] = (trial["n"], str(result.get("skip")))
        results.append(result)
        label = f"{trial['workload']}{'/mem' if trial['kind'] == 'mem' else ''}"
        took = result.get("process_s")
        print(
            f"[{i:3d}/{len(trials)} {_clock(time.perf_counter() - started):>5}] "
            f"{label:6s} N={trial['n']:>9,} {trial['peer']:16s} "
            f"rep {trial['rep'] + 1}/{args.repeats if trial['kind'] == 'time' else 1}  "
            f"{describe(result)}" + (f"  ({took:.1f} s)" if took else ""),
            file=sys.stderr,
            flush=True,
        )
    meta["loadavg_after"] = loadavg()
    meta["elapsed_s"] = round(time.perf_counter() - started, 1)

    from .report import goal_lines, write_report

    paths = write_report(meta, results, args.out, name, plots=not args.no_plots)
    print(
        f"bench: done in {meta['elapsed_s']:.0f} s (expected {expected:.0f} s); "
        f"load average {meta['loadavg_after']}",
        file=sys.stderr,
    )
    for path in paths:
        print(f"  wrote {_shown(Path(path))}", file=sys.stderr)
    print("", file=sys.stderr)
    for line in goal_lines(results):
        print(line, file=sys.stderr)


def _shown(path: Path) -> str:
    """`path` relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()

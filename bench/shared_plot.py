"""Plot the figures of ``bench/shared_fill_many.py --json`` (wheelbucket, saq and RQ).

``python bench/shared_plot.py docs/benchmarks/shared_fill_many.json
docs/benchmarks/shared_vs_peers.png``: one bar per system for fills/s from one
producer and for end to end with 1 and 3 worker processes, the median with
its min-max range, on a log scale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# (figure, row label per system); a system without the row is left out.
FIGURES = [
    (
        "fills/s, one producer",
        {
            "wheelbucket": "wheelbucket fill_many/s, idle group",
            "saq": "saq enqueue/s, idle",
            "RQ": "RQ enqueue_many/s, idle",
        },
    ),
    *(
        (
            f"end to end/s, {n} worker process{'es' if n > 1 else ''}",
            {
                "wheelbucket": f"wheelbucket end to end/s, {n} workers",
                "saq": f"saq end to end/s, {n} workers",
                "RQ": f"RQ SimpleWorker end to end/s, {n} workers",
            },
        )
        for n in (1, 3)
    ),
]
COLOURS = {"wheelbucket": "tab:blue", "saq": "tab:orange", "RQ": "tab:green"}


def main(src: str, out: str) -> None:
    results = json.loads(Path(src).read_text())
    rows = results["rows"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.27
    for f, (_, labels) in enumerate(FIGURES):
        for s, (system, label) in enumerate(labels.items()):
            if label not in rows:
                continue
            row = rows[label]
            x = f + (s - 1) * width
            err = [[row["median"] - row["min"]], [row["max"] - row["median"]]]
            legend = system if f == 0 else None
            ax.bar(x, row["median"], width, yerr=err, color=COLOURS[system], label=legend)
            ax.annotate(
                f"{row['median']:,.0f}",
                (x, row["median"]),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 3),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(FIGURES)), [name for name, _ in FIGURES])
    ax.set_yscale("log")
    ax.set_ylabel(f"tasks/s (median of {results['repeats']}, min-max)")
    ax.set_title(
        f"No-op tasks on one redis-server {results['redis']}, {results['cpus']} CPUs, "
        f"Python {results['python']}"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

# docs/examples/run_all.py
"""Run every example of the docs and check the docs quote them exactly.

    python docs/examples/run_all.py [--limit SECONDS] [--sync]

Each example runs in a fresh interpreter and must exit 0 within the limit
(2 s by default). Where the docs show an example's output, that output is
checked line by line. Every ```python block in the docs this runner covers
must name its example on its first line, as ``# docs/examples/NAME.py``
(the whole file) or ``# from docs/examples/NAME.py`` (a verbatim excerpt).
``--sync`` first copies each example into the whole-file blocks that name it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent
REPO = DOCS.parent
PAGES = ("README.md", "guide.md", "gobucket.md", "decisions.md")

# Output the docs show for an example (stdout, line by line).
EXPECTED = {
    "quickstart.py": ["mail sent to Johnson", "mail sent to Ada", "TaskState.DRAINED"],
    "executors.py": [
        "[42, 42, 42, 42, 42, 'fetched /index.html']",
        "no executor: pass executor= to fill() or to TaskBucket()",
    ],
    "handles.py": [
        "failed: nothing to shout",
        "not yet",
        "task 'later' was drained",
        "rescued",
        "FROM A COROUTINE",
    ],
    "context.py": ["poller True"],
    "cooperative.py": ["task 'crawl' was exhausted"],
    "drain.py": ["no live task 'invoice::7'"],
    "rescue.py": ["['export::1', 'export::2']"],
    "close.py": ["bucket is closed: cannot fill 'too-late'"],
    "errors.py": [
        "task 'only' is already in the bucket",
        "bucket is full (max_bucket=1 live tasks): cannot fill 'second'",
        "no live task 'second'",
        "ValueError: run_after must be finite, got nan",
        "ValueError: life_span (1 s) must be greater than run_after (2 s) for a TIME_BOMB task",
        "ValueError: task_id must be a non-empty str",
        "TypeError: task_id must be a str, got int: 42",
        "TypeError: task_type must be TaskType.IMMEDIATE or TaskType.TIME_BOMB, got 'now'",
        "ValueError: workers must be >= 1, got 0",
        "TypeError: life_span must be a number of seconds or a datetime.timedelta, got str: '5s'",
        "BucketClosed(\"bucket is closed: cannot fill 'after-close'\")",
    ],
    "verbose_logging.py": [
        "INFO task 'job::1' filled (IMMEDIATE)",
        "INFO task 'job::1' executing",
        "INFO task 'job::1' finished",
        "INFO task 'job::2' filled (TIME_BOMB)",
        "INFO task 'job::2' drained",
        "DEBUG task 'job::3' filled (IMMEDIATE)",
        "DEBUG task 'job::3' executing",
        "DEBUG task 'job::3' finished",
    ],
    "overrun.py": [
        "INFO wheelbucket: 1 worker(s) stuck in tasks that already ended; "
        "starting a replacement (2 threads, at most 5)",
        "1 1 2",
        "task 'stubborn' was exhausted",
    ],
    "crash_handler.py": ["['report::acme', 'report::globex', 'report::initech']"],
    "gobucket_port.py": ["2 1 1"],
    "fake_clock_test.py": ["all passed"],
    "sessions.py": [
        "s4 (dave) signed out",
        "s3 (carol) expired",
        "s2 (bob) expired",
        "s1 (alice) still signed in after 12 requests",
        "touch s3 after it expired: False",
        "s1 (alice) expired",
        "resets: 13, expired: 3, signed out: 1",
    ],
    "echo_idle.py": [
        "chatty: 10 echoes, then it left; the server never timed it out",
        "quiet: 0 echoes, then quiet, and the server said b'idle timeout, bye\\n'",
        "bursty: 3 echoes, then quiet, and the server said b'idle timeout, bye\\n'",
        "closed for idleness: 2; drained when the client left: 1; resets: 13",
    ],
    "aiohttp_deadlines.py": [
        "GET /hello -> 200 hello, visit 1 of session 1",
        "GET /slow?seconds=0.01 -> 200 slept 0.01 s",
        "GET /slow?seconds=30 -> 504 deadline of 0.1 s exceeded",
        "GET /report?seconds=0.15 -> 200 report ready",
        "GET /hello -> 200 hello, visit 8 of session 1",
        "GET /hello -> 200 hello, visit 1 of session 2",
        "server: /slow?seconds=30: handler cancelled",
        "server: GET /slow?seconds=30: deadline exceeded",
        "server: session 1 expired after 8 visits",
    ],
    "fill_many.py": ["['TaskHandle', 'TaskHandle', 'TaskExists', 'NoneType']"],
    "decisions.py": [
        "life_span must be at most ten years (315576000 s), got 315576001.0",
        "run_after must be >= 0 seconds, got -1",
        "life_span (1 s) must be greater than run_after (2 s) for a TIME_BOMB task",
        "WARNING forgotten was garbage-collected with 1 live tasks and no close(); "
        "they were drained",
        "all decisions checked",
    ],
}

MARKER = re.compile(r"^# (from )?docs/examples/([\w.]+\.py)\b")
BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)


def sync_pages() -> None:
    """Copy each example file into the whole-file blocks that name it."""

    def fill(match: re.Match[str]) -> str:
        first = match.group(1).split("\n", 1)[0]
        marker = MARKER.match(first)
        if marker is None or marker.group(1) or not (HERE / marker.group(2)).exists():
            return match.group(0)
        return "```python\n" + (HERE / marker.group(2)).read_text() + "```"

    for page in PAGES:
        path = DOCS / page
        if path.exists():
            path.write_text(BLOCK.sub(fill, path.read_text()))


def check_pages() -> list[str]:
    """Every python block of the pages is an example file or a verbatim excerpt of one."""
    problems = []
    for page in PAGES:
        path = DOCS / page
        if not path.exists():
            problems.append(f"{page}: missing")
            continue
        blocks = BLOCK.findall(path.read_text())
        for block in blocks:
            first = block.split("\n", 1)[0]
            match = MARKER.match(first)
            if match is None:
                problems.append(f"{page}: a python block does not name its example: {first!r}")
                continue
            source = HERE / match.group(2)
            if not source.exists():
                problems.append(f"{page}: {source.name} does not exist")
                continue
            text = source.read_text()
            if match.group(1):  # an excerpt
                body = block.split("\n", 1)[1] if "\n" in block else ""
                if body not in text:
                    problems.append(f"{page}: an excerpt is not in {source.name}: {body[:60]!r}")
            elif block != text:
                problems.append(f"{page}: the block differs from {source.name}")
    return problems


def run(example: Path, limit: float) -> str | None:
    start = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, str(example)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=max(30.0, 10 * limit),
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        return f"exit {done.returncode}\n{done.stdout}{done.stderr}"
    expected = EXPECTED.get(example.name)
    if expected is not None and done.stdout.splitlines() != expected:
        return f"output differs:\n{done.stdout}\nexpected:\n" + "\n".join(expected)
    print(f"ok    {example.name:<22} {elapsed:5.2f} s")
    if elapsed > limit:
        return f"took {elapsed:.2f} s (limit {limit} s)"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=float, default=2.0, help="seconds allowed per example")
    parser.add_argument("--sync", action="store_true", help="copy the examples into the docs first")
    args = parser.parse_args()
    if args.sync:
        sync_pages()
    failures = 0
    for problem in check_pages():
        print(f"DOCS  {problem}")
        failures += 1
    examples = sorted(p for p in HERE.glob("*.py") if p.name != Path(__file__).name)
    for name in sorted(set(EXPECTED) - {p.name for p in examples}):
        print(f"FAIL  {name}: listed with output but missing")
        failures += 1
    for example in examples:
        problem = run(example, args.limit)
        if problem is not None:
            print(f"FAIL  {example.name}: {problem}")
            failures += 1
    print(f"{len(examples)} examples, {failures} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Ctrl-C in a ``with TaskBucket(...)`` block, and a misspelt hook (SPEC, close and fill).

Ctrl-C is tested as a user meets it: a real subprocess running a real
``with`` block, sent a real SIGINT. Leaving the block by KeyboardInterrupt
must not wait for the live tasks: every one goes through ``on_panic`` and
the program ends within about a second (bounds here are generous).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from wheelbucket import Executor, TaskBucket, TaskContext, TaskType

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from wheelbucket import Executor, TaskBucket, TaskType

    class Slow(Executor):
        def on_execute(self, ctx, task_id, data):
            time.sleep(50)  # ignores ctx, as the user's program did

        def on_panic(self, ctx, task_id, data):
            print("panic", task_id, flush=True)

    mode = sys.argv[1]
    try:
        with TaskBucket(executor=Slow(), workers=2, life_span=60, max_bucket=100) as bucket:
            for i in range(2):
                bucket.fill(TaskType.IMMEDIATE, f"run{i}")
            for i in range(3):
                bucket.fill(TaskType.TIME_BOMB, f"later{i}", run_after=30)
            while bucket.stats().running < 2:
                time.sleep(0.01)
            if mode == "in-block":
                print("ready", flush=True)
                time.sleep(60)
            else:  # the block ends normally; close() waits for the tasks
                print("ready", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
    print("left normally", flush=True)
    """
)


def _run_and_interrupt(mode: str) -> tuple[float, str, int]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", (line, proc.stderr.read() if proc.stderr else "")
        time.sleep(0.3)  # in the sleep (in-block), or in close()'s wait
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        return time.monotonic() - sent, line + out + err, proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in-block", "in-close"])
def test_ctrl_c_in_a_with_block_rescues_everything_and_leaves_at_once(mode: str) -> None:
    elapsed, out, code = _run_and_interrupt(mode)
    assert code == 3, out
    lines = out.split()
    panics = sorted(lines[i + 1] for i, word in enumerate(lines) if word == "panic")
    assert panics == ["later0", "later1", "later2", "run0", "run1"], out
    assert "interrupted" in out
    # About a second (the joins of stuck workers) plus the hooks; 50 s before.
    assert elapsed < 10.0, f"took {elapsed:.1f} s to leave the block"


def test_a_subclass_without_its_own_on_execute_is_refused() -> None:
    class Misspelt(Executor):
        def on_exec(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
            return "never called"

    with pytest.raises(TypeError, match=r"Misspelt defines no on_execute.*on_exec.*misspelt"):
        TaskBucket(executor=Misspelt())
    bucket = TaskBucket(executor=lambda ctx, tid, d: None)
    try:
        with pytest.raises(TypeError, match="no on_execute"):
            bucket.fill(TaskType.IMMEDIATE, "t", executor=Misspelt())
        assert "t" not in bucket
        assert bucket.stats().filled == 0, "a refused fill changes nothing"
    finally:
        bucket.close(wait=False)


def test_a_subclass_with_only_ending_hooks_is_refused_but_a_plain_object_is_not() -> None:
    class OnlyFinish(Executor):
        def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
            pass

    with pytest.raises(TypeError, match="OnlyFinish defines no on_execute"):
        TaskBucket(executor=OnlyFinish())

    class Plain:  # not a subclass: it has its own on_execute, as it must
        def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
            return data

    with TaskBucket(executor=Plain()) as bucket:
        assert bucket.fill(TaskType.IMMEDIATE, "t", 5).result(timeout=10) == 5


def test_an_instance_attribute_on_execute_counts() -> None:
    executor = Executor()
    executor.on_execute = lambda ctx, tid, data: data * 2  # type: ignore[method-assign]
    with TaskBucket(executor=executor) as bucket:
        assert bucket.fill(TaskType.IMMEDIATE, "t", 21).result(timeout=10) == 42

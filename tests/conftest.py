"""Shared fixtures: a fake clock, a bucket factory that cleans up, a recording executor.

* ``clock``: a `FakeClock` (start 1000.0 s); time moves only by ``clock.advance``.
* ``recorder``: a `helpers.RecordingExecutor` whose timestamps read ``clock``.
* ``make_bucket(**kwargs)``: a `TaskBucket` on ``clock`` unless a ``clock=``
  is given (``clock=None`` means the real clock); every bucket it made is
  closed (``wait=False``) at teardown, so no test leaks threads.
* ``bucket``: ``make_bucket(executor=recorder)``.
* ``gate()``: a `threading.Event` for a test to hold a hook on; every gate is
  opened at teardown, before the buckets are closed.
* ``long_only``: skips a ``long`` test unless ``-m long`` asked for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helpers import RecordingExecutor

from wheelbucket import TaskBucket
from wheelbucket.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder(clock: FakeClock) -> RecordingExecutor:
    return RecordingExecutor(now=clock.monotonic)


@pytest.fixture
def make_bucket(clock: FakeClock) -> Iterator[Callable[..., TaskBucket]]:
    made: list[TaskBucket] = []

    def make(**kwargs: Any) -> TaskBucket:
        kwargs.setdefault("clock", clock)
        bucket = TaskBucket(**kwargs)
        made.append(bucket)
        return bucket

    yield make
    for bucket in made:
        bucket.close(wait=False)


@pytest.fixture
def bucket(make_bucket: Callable[..., TaskBucket], recorder: RecordingExecutor) -> TaskBucket:
    return make_bucket(executor=recorder)


@pytest.fixture
def gate(make_bucket: Callable[..., TaskBucket]) -> Iterator[Callable[[], threading.Event]]:
    # Depends on make_bucket so that it is torn down first: hooks held on a
    # gate are let go before their bucket closes, and no worker is abandoned.
    gates: list[threading.Event] = []

    def new_gate() -> threading.Event:
        event = threading.Event()
        gates.append(event)
        return event

    yield new_gate
    for event in gates:
        event.set()


def _requested_long(config: pytest.Config) -> bool:
    expr = str(config.getoption("markexpr") or "")
    return "long" in expr and "not long" not in expr


@pytest.fixture
def long_only(request: pytest.FixtureRequest) -> None:
    """Long runs only when asked for (``-m long``), whatever the default selection."""
    if not _requested_long(request.config):
        pytest.skip("long run: select it with -m long")

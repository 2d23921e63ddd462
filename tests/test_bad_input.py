"""Bad input, table-driven over every public argument.

Every bad value given to the constructor, `fill`, `drain`, `close` or `get`
must raise a `TypeError` or `ValueError` whose message names the argument,
and must leave the bucket exactly as it was (live tasks, ids, counters,
open/closed). Valid edge values (zero delays, very long ids) must work.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import fractions
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from wheelbucket import TaskBucket, TaskNotFound, TaskState, TaskType
from wheelbucket.testing import FakeClock, settle

NAN = math.nan
INF = math.inf
HUGE_INT = 10**400  # float() of it overflows
HUGE_FLOAT = 1e300
LONG_ID = "x" * (1 << 20)  # 1 MB


class _NoRepr:
    """An object whose repr raises: error messages must still be built."""

    def __repr__(self) -> str:
        raise RuntimeError("repr refused")


class _StrSub(str):
    pass


def _noop(ctx: Any, task_id: str, data: Any) -> Any:
    return data


class _NotCallableHook:
    on_execute = 5


class _NotCallableHookNoRepr(_NotCallableHook):
    def __repr__(self) -> str:
        raise RuntimeError("repr refused")


class _NotCallableFinish:
    def on_execute(self, ctx: Any, task_id: str, data: Any) -> None:
        return None

    on_finish = "not a function"


# -- the table ------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad call: `target` is ctor, fill, drain, close or get."""

    target: str
    arg: str
    value: Any
    errors: tuple[type[Exception], ...] = (TypeError, ValueError)

    def __str__(self) -> str:
        try:
            text = repr(self.value)
        except RuntimeError:
            text = f"<{type(self.value).__name__}>"
        if len(text) > 30:
            text = text[:27] + "..."
        return f"{self.target}-{self.arg}={text}"


DURATION_BAD = [
    None,
    "1",
    b"1",
    True,
    False,
    NAN,
    INF,
    -INF,
    -1,
    -0.5,
    HUGE_FLOAT,
    HUGE_INT,
    10**30,
    1 + 0j,
    decimal.Decimal("1"),
    fractions.Fraction(1, 2),
    [1],
    _NoRepr(),
    datetime.timedelta(seconds=-1),
    datetime.timedelta.max,
]
# None means "the default" where a duration is optional, so it is not bad there.
OPTIONAL_DURATION_BAD = [v for v in DURATION_BAD if v is not None]
INT_BAD = [None, "4", 1.0, 1.5, True, False, NAN, INF, 0, -1, [4], _NoRepr()]
BOOL_BAD = [None, 1, 0, "yes", "", 1.0, [True]]
ID_BAD = [None, 1, 0, 1.5, True, b"id", ["id"], ("id",), "", _StrSub("id"), _NoRepr(), {"id": 1}]

CASES: list[Bad] = []
# TaskBucket(...)
CASES += [Bad("ctor", "life_span", v) for v in [*DURATION_BAD, 0, 0.0, datetime.timedelta(0)]]
CASES += [Bad("ctor", "run_after", v) for v in DURATION_BAD]
CASES += [Bad("ctor", "max_bucket", v) for v in INT_BAD]
CASES += [Bad("ctor", "verbose", v) for v in BOOL_BAD]
CASES += [
    Bad("ctor", "executor", v)
    for v in [5, "on_execute", b"x", 1.5, True, object(), _NotCallableHook(), _NotCallableFinish()]
]
CASES += [Bad("ctor", "executor", _NotCallableHookNoRepr())]
CASES += [Bad("ctor", "workers", v) for v in INT_BAD]
CASES += [Bad("ctor", "clock", v) for v in [5, "monotonic", object(), _NoRepr(), FakeClock]]
CASES += [
    Bad("ctor", "max_extra_workers", v) for v in ["4", 1.5, True, False, NAN, -1, [1], _NoRepr()]
]
CASES += [Bad("ctor", "tick", v) for v in [*DURATION_BAD, 0, 0.0]]
CASES += [Bad("ctor", "wheel_bits", v) for v in [None, "6", 6.0, True, 0, -1, 17, HUGE_INT]]
CASES += [Bad("ctor", "wheel_levels", v) for v in [None, "6", 6.0, True, 0, -1, 65, HUGE_INT]]
CASES += [Bad("ctor", "use_uvloop", v) for v in BOOL_BAD]
CASES += [Bad("ctor", "name", v) for v in [None, "", 5, b"name", ["n"], _NoRepr()]]


def _closed_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.close()
    return loop


CASES += [
    Bad("ctor", "loop", v)
    for v in [5, "loop", object(), _NoRepr(), asyncio.AbstractEventLoop, _closed_loop()]
]
# fill(...)
CASES += [
    Bad("fill", "task_type", v)
    for v in [None, "immediate", "IMMEDIATE", 0, 1, True, TaskType, TaskState.PENDING, _NoRepr()]
]
CASES += [Bad("fill", "task_id", v) for v in ID_BAD]
CASES += [
    Bad("fill", "executor", v)
    for v in [5, "f", 1.5, True, object(), _NotCallableHook(), _NotCallableHookNoRepr()]
]
CASES += [Bad("fill", "executor", _NotCallableFinish())]
CASES += [Bad("fill", "run_after", v) for v in OPTIONAL_DURATION_BAD]
CASES += [
    Bad("fill", "life_span", v)
    for v in [*OPTIONAL_DURATION_BAD, 0, 0.0, datetime.timedelta(0), 1e-12]
]
# drain(...), get(...)
CASES += [Bad("drain", "task_id", v) for v in ID_BAD]
CASES += [Bad("get", "task_id", v) for v in ID_BAD]
# close(...)
CASES += [Bad("close", "wait", v) for v in BOOL_BAD]
CASES += [Bad("close", "rescue", v) for v in BOOL_BAD]
CASES += [
    Bad("close", "timeout", v)
    for v in ["1", b"1", True, False, NAN, -INF, -1, -0.001, 1 + 0j, [1], _NoRepr()]
]


# -- fixtures -----------------------------------------------------------------


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def populated(fake_clock: FakeClock) -> Iterator[TaskBucket]:
    """A settled bucket with two pending tasks, one finished and one drained."""
    with TaskBucket(executor=_noop, clock=fake_clock, workers=2) as bucket:
        bucket.fill(TaskType.TIME_BOMB, "pending-1", run_after=10.0, life_span=20.0)
        bucket.fill(TaskType.TIME_BOMB, "pending-2", run_after=10.0, life_span=20.0)
        bucket.fill(TaskType.IMMEDIATE, "done")
        bucket.fill(TaskType.TIME_BOMB, "drained", run_after=10.0, life_span=20.0)
        bucket.drain("drained")
        settle(bucket)
        yield bucket
        bucket.close(wait=False)


def _snapshot(bucket: TaskBucket) -> tuple[Any, ...]:
    handles = {tid: bucket.get(tid) for tid in ("pending-1", "pending-2", "done", "drained")}
    return (
        len(bucket),
        bucket.stats(),
        list(bucket._core.tasks),
        {tid: (h.state if h is not None else None) for tid, h in handles.items()},
        bucket.closed,
    )


def _bucket_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("badinput")}


def _call(case: Bad, bucket: TaskBucket) -> None:
    if case.target == "ctor":
        made = TaskBucket(
            **{"executor": _noop, "clock": FakeClock(), "name": "badinput", case.arg: case.value}
        )
        made.close(wait=False)  # only reached when the case failed
    elif case.target == "fill":
        kwargs: dict[str, Any] = {
            "task_type": TaskType.TIME_BOMB,
            "task_id": "new",
            "run_after": 1.0,
            "life_span": 2.0,
        }
        kwargs[case.arg] = case.value
        bucket.fill(**kwargs)
    elif case.target == "drain":
        bucket.drain(case.value)
    elif case.target == "get":
        bucket.get(case.value)
    elif case.target == "close":
        bucket.close(**{case.arg: case.value})
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(case.target)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_argument_raises_naming_it_and_changes_nothing(
    case: Bad, populated: TaskBucket
) -> None:
    before = _snapshot(populated)
    threads_before = _bucket_threads()
    with pytest.raises(case.errors) as info:
        _call(case, populated)
    assert type(info.value) in (TypeError, ValueError), info.value
    message = str(info.value)
    assert case.arg in message, f"message does not name {case.arg!r}: {message!r}"
    assert len(message) < 1000
    assert _snapshot(populated) == before
    assert _bucket_threads() == threads_before  # a refused constructor starts nothing


def test_the_table_covers_every_public_argument() -> None:
    import inspect

    covered = {(c.target, c.arg) for c in CASES}
    signatures = {
        "ctor": inspect.signature(TaskBucket.__init__),
        "fill": inspect.signature(TaskBucket.fill),
        "drain": inspect.signature(TaskBucket.drain),
        "close": inspect.signature(TaskBucket.close),
        "get": inspect.signature(TaskBucket.get),
    }
    # `data` is any object by design; nothing about it can be wrong.
    expected = {
        (target, name)
        for target, sig in signatures.items()
        for name in sig.parameters
        if name != "self" and (target, name) != ("fill", "data")
    }
    assert expected - covered == set()


def test_a_refused_fill_counts_nothing_and_a_good_fill_still_works(
    populated: TaskBucket,
) -> None:
    for value in (NAN, -1, "x", True):
        with pytest.raises((TypeError, ValueError)):
            populated.fill(TaskType.TIME_BOMB, "new", run_after=value, life_span=2.0)
    handle = populated.fill(TaskType.TIME_BOMB, "new", run_after=1.0, life_span=2.0)
    stats = populated.stats()
    assert stats.filled == 5
    assert stats.rejected_duplicate == stats.rejected_full == 0
    assert populated.get("new") == handle


def test_life_span_must_exceed_run_after_for_a_time_bomb(populated: TaskBucket) -> None:
    before = _snapshot(populated)
    for run_after, life_span in [(1.0, 1.0), (2.0, 1.0), (0.5, datetime.timedelta(seconds=0.5))]:
        with pytest.raises(ValueError, match=r"life_span.*run_after"):
            populated.fill(TaskType.TIME_BOMB, "new", run_after=run_after, life_span=life_span)
    assert _snapshot(populated) == before


def test_a_bad_duration_is_refused_even_right_after_a_good_one(populated: TaskBucket) -> None:
    # fill() remembers the last good (run_after, life_span) objects; a value
    # equal to them but of a refused type, or a bad pair sharing one of
    # them, must still be refused.
    one, two = 1, 2.0
    populated.fill(TaskType.TIME_BOMB, "good", run_after=one, life_span=two)
    before = _snapshot(populated)
    with pytest.raises(TypeError):
        populated.fill(TaskType.TIME_BOMB, "new", run_after=True, life_span=two)
    with pytest.raises(ValueError, match=r"life_span.*run_after"):
        populated.fill(TaskType.TIME_BOMB, "new", run_after=one, life_span=one)
    with pytest.raises(ValueError, match=r"life_span.*run_after"):
        populated.fill(TaskType.TIME_BOMB, "new", run_after=two, life_span=two)
    assert _snapshot(populated) == before


def test_immediate_task_still_checks_run_after(populated: TaskBucket) -> None:
    before = _snapshot(populated)
    with pytest.raises(ValueError, match="run_after"):
        populated.fill(TaskType.IMMEDIATE, "new", run_after=-1)
    assert _snapshot(populated) == before


# -- valid edge values -------------------------------------------------------


def test_a_one_megabyte_id_is_a_valid_id(populated: TaskBucket, fake_clock: FakeClock) -> None:
    handle = populated.fill(TaskType.TIME_BOMB, LONG_ID, run_after=1.0, life_span=2.0)
    assert LONG_ID in populated
    assert populated.get(LONG_ID) == handle
    assert handle.id == LONG_ID
    populated.drain(LONG_ID)
    assert handle.state is TaskState.DRAINED
    with pytest.raises(TaskNotFound) as info:
        populated.drain(LONG_ID)
    assert len(str(info.value)) < 1000  # the message shows a shortened id
    # And it runs and finishes like any id.
    handle = populated.fill(TaskType.TIME_BOMB, LONG_ID, run_after=1.0, life_span=2.0)
    fake_clock.advance(1.0)
    settle(populated)
    assert handle.state is TaskState.FINISHED
    assert populated.get(LONG_ID) is None


def test_unicode_and_whitespace_ids_are_valid(populated: TaskBucket) -> None:
    ids = [" ", "\x00", "\u00e9t\u00e9", "\U0001f600", "a" * 1000, "\n\t"]
    for task_id in ids:
        populated.fill(TaskType.TIME_BOMB, task_id, run_after=1.0, life_span=2.0)
    assert all(task_id in populated for task_id in ids)
    for task_id in ids:
        populated.drain(task_id)
    assert len(populated) == 2


def test_zero_run_after_is_valid_and_due_at_once(fake_clock: FakeClock) -> None:
    with TaskBucket(executor=_noop, clock=fake_clock) as bucket:
        handle = bucket.fill(TaskType.TIME_BOMB, "now", run_after=0, life_span=1)
        timedelta_handle = bucket.fill(
            TaskType.TIME_BOMB, "td", run_after=datetime.timedelta(0), life_span=1
        )
        settle(bucket)
        assert handle.state is TaskState.FINISHED
        assert timedelta_handle.state is TaskState.FINISHED


@pytest.mark.parametrize("timeout", [INF, HUGE_FLOAT, HUGE_INT, 0, 0.0])
def test_close_accepts_any_non_negative_timeout(timeout: Any, fake_clock: FakeClock) -> None:
    bucket = TaskBucket(executor=_noop, clock=fake_clock)
    bucket.fill(TaskType.IMMEDIATE, "a")
    settle(bucket)
    bucket.close(timeout=timeout)
    assert bucket.closed
    assert len(bucket) == 0
    bucket.close(timeout=timeout)  # idempotent, and a second call never hangs


@pytest.mark.parametrize(
    ("arg", "value"),
    [
        ("max_bucket", 10**30),
        ("workers", 10**6),
        ("max_extra_workers", 0),
        ("tick", 1e-9),
        ("life_span", 10 * 365 * 86400),
        ("life_span", datetime.timedelta(days=3650)),
        ("wheel_bits", 1),
        ("wheel_levels", 64),
    ],
)
def test_large_and_tiny_but_valid_constructor_values_work(
    arg: str, value: Any, fake_clock: FakeClock
) -> None:
    kwargs: dict[str, Any] = {"executor": _noop, "clock": fake_clock, arg: value}
    with TaskBucket(**kwargs) as bucket:
        handle = bucket.fill(TaskType.TIME_BOMB, "a", run_after=0.5, life_span=1.0)
        fake_clock.advance(0.5)
        settle(bucket)
        assert handle.state is TaskState.FINISHED
        assert bucket.stats().workers <= 1  # workers are started on demand

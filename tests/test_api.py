"""The public surface of wheelbucket (SPEC sections 2 and 4), checked deterministically.

Names and aliases, the error family, argument validation of `TaskBucket` and
`fill`, the executor forms, introspection, the context manager and logging.
Lifecycle behaviour lives in test_lifecycle.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import itertools
import logging
import math
import re
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest
from helpers import RecordingExecutor, raises, wait_cancelled, wait_gate, wait_until

import wheelbucket
from wheelbucket import (
    BucketClosed,
    BucketError,
    BucketFull,
    Executor,
    TaskBucket,
    TaskDrained,
    TaskExhausted,
    TaskExists,
    TaskHandle,
    TaskNotFound,
    TaskRescued,
    TaskState,
    TaskType,
)
from wheelbucket.testing import FakeClock, settle

MakeBucket = Callable[..., TaskBucket]

TEN_YEARS = 10 * 365.25 * 86400.0
IMMEDIATE = TaskType.IMMEDIATE
TIME_BOMB = TaskType.TIME_BOMB


# -- names ----------------------------------------------------------------------

PUBLIC_NAMES = {
    "BucketClosed",
    "BucketError",
    "BucketFull",
    "BucketStats",
    "Clock",
    "Executor",
    "ImmediateTask",
    "ImmidiateTask",
    "MonotonicClock",
    "TaskBucket",
    "TaskContext",
    "TaskDrained",
    "TaskExhausted",
    "TaskExists",
    "TaskHandle",
    "TaskNotFound",
    "TaskRescued",
    "TaskState",
    "TaskType",
    "TimeBombTask",
    "__version__",
}

ERRORS = [
    TaskExists,
    BucketFull,
    TaskNotFound,
    BucketClosed,
    TaskExhausted,
    TaskDrained,
    TaskRescued,
]


def test_all_lists_exactly_the_public_names() -> None:
    assert len(wheelbucket.__all__) == len(set(wheelbucket.__all__)), "duplicates in __all__"
    assert set(wheelbucket.__all__) == PUBLIC_NAMES


@pytest.mark.parametrize("name", sorted(PUBLIC_NAMES))
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(wheelbucket, name) is not None


def test_star_import_gives_the_public_names() -> None:
    namespace: dict[str, Any] = {}
    exec("from wheelbucket import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC_NAMES


def test_version_is_a_string() -> None:
    assert isinstance(wheelbucket.__version__, str)
    assert wheelbucket.__version__


def test_gobucket_aliases_are_the_task_types() -> None:
    assert wheelbucket.ImmediateTask is TaskType.IMMEDIATE
    assert wheelbucket.ImmidiateTask is TaskType.IMMEDIATE
    assert wheelbucket.TimeBombTask is TaskType.TIME_BOMB


def test_gobucket_aliases_fill_like_the_task_types(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    bucket.fill(wheelbucket.ImmidiateTask, "now")
    bucket.fill(wheelbucket.TimeBombTask, "later", run_after=1.0)
    settle(bucket)
    assert recorder.ids("on_execute") == ["now"]
    clock.advance(1.0)
    settle(bucket)
    assert recorder.ids("on_execute") == ["now", "later"]


def test_task_types_have_exactly_two_members() -> None:
    assert [t.name for t in TaskType] == ["IMMEDIATE", "TIME_BOMB"]


def test_task_state_has_exactly_the_spec_members() -> None:
    assert [s.name for s in TaskState] == [
        "PENDING",
        "RUNNING",
        "FINISHED",
        "FAILED",
        "EXHAUSTED",
        "DRAINED",
        "RESCUED",
    ]


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_every_error_derives_from_bucket_error(error: type[Exception]) -> None:
    assert issubclass(error, BucketError)
    assert issubclass(error, Exception)
    assert error.__module__.startswith("wheelbucket")


@pytest.mark.parametrize(
    ("one", "other"),
    list(itertools.permutations(ERRORS, 2)),
    ids=lambda e: e.__name__,
)
def test_errors_are_siblings(one: type[Exception], other: type[Exception]) -> None:
    assert not issubclass(one, other)


def test_lookup_errors_are_key_errors_and_closed_is_a_runtime_error() -> None:
    assert issubclass(TaskExists, KeyError)
    assert issubclass(TaskNotFound, KeyError)
    assert issubclass(BucketClosed, RuntimeError)
    # KeyError's str() is the repr of its argument; ours read as plain messages.
    assert str(TaskNotFound("no live task 'x'")) == "no live task 'x'"
    assert str(TaskExists("task 'x' is live")) == "task 'x' is live"


def test_bucket_error_derives_from_exception_only() -> None:
    assert issubclass(BucketError, Exception)
    assert not issubclass(BucketError, (KeyError, RuntimeError, ValueError))


# -- TaskBucket() arguments ----------------------------------------------------------

BAD_DURATIONS: list[tuple[object, type[Exception]]] = [
    (math.nan, ValueError),
    (math.inf, ValueError),
    (-math.inf, ValueError),
    (-1, ValueError),
    (-0.001, ValueError),
    (TEN_YEARS + 1, ValueError),
    (10**12, ValueError),
    (datetime.timedelta(seconds=-1), ValueError),
    (datetime.timedelta(days=366 * 11), ValueError),
    (True, TypeError),
    (False, TypeError),
    ("1", TypeError),
    (None, TypeError),
    ([1.0], TypeError),
    (1 + 0j, TypeError),
]
BAD_COUNTS: list[tuple[object, type[Exception]]] = [
    (0, ValueError),
    (-1, ValueError),
    (True, TypeError),
    (1.0, TypeError),
    (1.5, TypeError),
    (math.nan, TypeError),
    ("4", TypeError),
    (None, TypeError),
]


def _constructor_cases() -> list[Any]:
    cases = []
    for value, error in [
        *BAD_DURATIONS,
        (0, ValueError),
        (0.0, ValueError),
        (datetime.timedelta(0), ValueError),
    ]:
        cases.append(pytest.param("life_span", value, error, id=f"life_span={value!r}"))
    for value, error in BAD_DURATIONS:
        cases.append(pytest.param("run_after", value, error, id=f"run_after={value!r}"))
    for name in ("max_bucket", "workers"):
        for value, error in BAD_COUNTS:
            cases.append(pytest.param(name, value, error, id=f"{name}={value!r}"))
    return cases


@pytest.mark.parametrize(("name", "value", "error"), _constructor_cases())
def test_bad_constructor_argument_is_refused_by_name(
    name: str, value: object, error: type[Exception], clock: FakeClock
) -> None:
    threads_before = threading.active_count()
    with pytest.raises(error, match=name):
        TaskBucket(clock=clock, **{name: value})
    assert threading.active_count() == threads_before, "a refused bucket started threads"


@pytest.mark.parametrize(
    "executor", [42, "not callable", types.SimpleNamespace(on_execute=42)], ids=repr
)
def test_bad_executor_is_refused_by_name(executor: object, clock: FakeClock) -> None:
    with pytest.raises(TypeError, match="executor"):
        TaskBucket(clock=clock, executor=executor)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"life_span": 1e-9, "run_after": 0},
        {"life_span": 1, "run_after": 0.0},
        {"life_span": TEN_YEARS, "run_after": TEN_YEARS - 1},
        {"max_bucket": 1, "workers": 1},
        {"life_span": datetime.timedelta(seconds=3), "run_after": datetime.timedelta(0)},
    ],
    ids=repr,
)
def test_edge_constructor_arguments_are_accepted(
    kwargs: dict[str, Any], make_bucket: MakeBucket
) -> None:
    bucket = make_bucket(**kwargs)
    assert not bucket.closed
    assert len(bucket) == 0


def test_timedelta_durations_behave_as_seconds(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    bucket = make_bucket(
        executor=recorder,
        life_span=datetime.timedelta(seconds=2),
        run_after=datetime.timedelta(milliseconds=500),
    )
    start = clock.monotonic()
    recorder.behave("t", wait_cancelled())
    bucket.fill(TIME_BOMB, "t")
    clock.advance(0.499)
    settle(bucket)
    assert recorder.hooks("t") == []
    clock.advance(0.001)
    recorder.wait_for("on_execute", "t")
    settle(bucket, running=1)
    assert recorder.detail("on_execute", "t") == pytest.approx(start + 0.5, abs=1e-9)
    assert recorder.contexts["t"].deadline == pytest.approx(start + 2.0, abs=1e-9)
    clock.advance(1.5)
    settle(bucket)
    assert recorder.endings("t") == ["on_task_exhausted"]


def test_fill_overrides_accept_timedelta(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    handle = bucket.fill(
        TIME_BOMB,
        "t",
        run_after=datetime.timedelta(seconds=3),
        life_span=datetime.timedelta(seconds=4),
    )
    clock.advance(2.999)
    settle(bucket)
    assert handle.state is TaskState.PENDING
    clock.advance(0.001)
    settle(bucket)
    assert handle.state is TaskState.FINISHED


# -- fill() arguments ------------------------------------------------------------------


def _fill_cases() -> list[Any]:
    cases = [
        pytest.param((IMMEDIATE, 1), {}, TypeError, "task_id", id="task_id=1"),
        pytest.param((IMMEDIATE, None), {}, TypeError, "task_id", id="task_id=None"),
        pytest.param((IMMEDIATE, b"x"), {}, TypeError, "task_id", id="task_id=bytes"),
        pytest.param((IMMEDIATE, ("x",)), {}, TypeError, "task_id", id="task_id=tuple"),
        pytest.param((IMMEDIATE, ""), {}, ValueError, "task_id", id="task_id=empty"),
        pytest.param(("immediate", "x"), {}, TypeError, "task_type", id="task_type=str"),
        pytest.param((None, "x"), {}, TypeError, "task_type", id="task_type=None"),
        pytest.param((1, "x"), {}, TypeError, "task_type", id="task_type=1"),
        pytest.param((TaskState.PENDING, "x"), {}, TypeError, "task_type", id="task_type=state"),
        # TIME_BOMB needs life_span > run_after (bucket defaults: 5.0 and 1.0).
        pytest.param(
            (TIME_BOMB, "x"), {"run_after": 5.0}, ValueError, "life_span", id="run_after=life"
        ),
        pytest.param(
            (TIME_BOMB, "x"), {"run_after": 6.0}, ValueError, "life_span", id="run_after>life"
        ),
        pytest.param(
            (TIME_BOMB, "x"), {"life_span": 1.0}, ValueError, "life_span", id="life=run_after"
        ),
        pytest.param(
            (TIME_BOMB, "x"),
            {"life_span": 2, "run_after": 3},
            ValueError,
            "life_span",
            id="life<run_after",
        ),
    ]
    for value, error in BAD_DURATIONS:
        if value is None:
            continue  # None means "the bucket's default"
        cases.append(
            pytest.param(
                (TIME_BOMB, "x"),
                {"run_after": value},
                error,
                "run_after",
                id=f"run_after={value!r}",
            )
        )
    for value, error in [*BAD_DURATIONS, (0, ValueError), (0.0, ValueError)]:
        if value is None:
            continue
        for task_type in (IMMEDIATE, TIME_BOMB):
            cases.append(
                pytest.param(
                    (task_type, "x"),
                    {"life_span": value},
                    error,
                    "life_span",
                    id=f"{task_type.name}-life_span={value!r}",
                )
            )
    return cases


def _unchanged(bucket: TaskBucket, before: wheelbucket.BucketStats) -> None:
    after = bucket.stats()
    assert after == before
    assert len(bucket) == before.live
    assert "x" not in bucket
    assert bucket.get("x") is None


@pytest.mark.parametrize(("args", "kwargs", "error", "name"), _fill_cases())
def test_bad_fill_is_refused_by_name_and_changes_nothing(
    bucket: TaskBucket,
    recorder: RecordingExecutor,
    clock: FakeClock,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    name: str,
) -> None:
    bucket.fill(TIME_BOMB, "other")
    settle(bucket)
    before = bucket.stats()
    with pytest.raises(error, match=name):
        bucket.fill(*args, **kwargs)
    settle(bucket)
    _unchanged(bucket, before)
    # Nothing runs later either (within "other"'s life span, so that it runs).
    clock.advance(2.0)
    settle(bucket)
    assert recorder.ids("on_execute") == ["other"]


def test_fill_without_any_executor_is_refused(make_bucket: MakeBucket) -> None:
    bucket = make_bucket()
    before = bucket.stats()
    with pytest.raises(ValueError, match="executor"):
        bucket.fill(IMMEDIATE, "x")
    _unchanged(bucket, before)
    # An executor given to fill is enough.
    handle = bucket.fill(IMMEDIATE, "y", 21, lambda ctx, task_id, data: data * 2)
    assert handle.result(timeout=10) == 42


@pytest.mark.parametrize("executor", [42, "nope"], ids=repr)
def test_fill_with_bad_executor_is_refused(bucket: TaskBucket, executor: object) -> None:
    before = bucket.stats()
    with pytest.raises(TypeError, match="executor"):
        bucket.fill(IMMEDIATE, "x", None, executor)
    _unchanged(bucket, before)


def test_immediate_life_span_may_be_shorter_than_the_default_run_after(
    bucket: TaskBucket,
) -> None:
    handle = bucket.fill(IMMEDIATE, "x", "d", life_span=0.5)  # run_after default is 1.0
    assert handle.result(timeout=10) == "d"


def test_duplicate_fill_is_refused_and_counted(bucket: TaskBucket, clock: FakeClock) -> None:
    first = bucket.fill(TIME_BOMB, "x", "first")
    settle(bucket)
    before = bucket.stats()
    with pytest.raises(TaskExists, match="x"):
        bucket.fill(IMMEDIATE, "x", "second")
    settle(bucket)
    after = bucket.stats()
    assert after.rejected_duplicate == before.rejected_duplicate + 1
    assert after == _with(before, rejected_duplicate=before.rejected_duplicate + 1)
    assert bucket.get("x") == first
    assert len(bucket) == 1
    clock.advance(1.0)
    settle(bucket)
    assert first.result(timeout=10) == "first"


def test_fill_beyond_max_bucket_is_refused_and_counted(
    make_bucket: MakeBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    bucket = make_bucket(executor=recorder, max_bucket=2)
    bucket.fill(TIME_BOMB, "a")
    bucket.fill(TIME_BOMB, "b")
    settle(bucket)
    before = bucket.stats()
    with pytest.raises(BucketFull):
        bucket.fill(IMMEDIATE, "x")
    settle(bucket)
    assert bucket.stats() == _with(before, rejected_full=1)
    assert "x" not in bucket
    assert len(bucket) == 2
    # Room again once a task has left.
    bucket.drain("a")
    bucket.fill(IMMEDIATE, "x")
    settle(bucket)
    assert recorder.ids("on_execute") == ["x"]


def test_fill_after_close_is_refused(bucket: TaskBucket) -> None:
    bucket.close()
    before = bucket.stats()
    with pytest.raises(BucketClosed):
        bucket.fill(IMMEDIATE, "x")
    _unchanged(bucket, before)


def _with(stats: wheelbucket.BucketStats, **changes: Any) -> wheelbucket.BucketStats:
    return dataclasses.replace(stats, **changes)


def test_fill_returns_a_handle_at_once(bucket: TaskBucket) -> None:
    handle = bucket.fill(TIME_BOMB, "x", {"n": 1})
    assert isinstance(handle, TaskHandle)
    assert handle.id == "x"
    assert handle.state is TaskState.PENDING
    assert not handle.done()


# -- executor forms -----------------------------------------------------------------------


class FullExecutor(Executor):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> Any:
        self.calls.append(("on_execute", task_id))
        if data == "fail":
            raise ValueError(task_id)
        if data == "block":
            ctx.wait()
        return data

    def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
        self.calls.append(("on_finish", task_id))

    def on_execute_error(self, ctx: Any, task_id: str, data: Any, error: BaseException) -> None:
        self.calls.append(("on_execute_error", task_id))

    def on_task_exhausted(self, ctx: Any, task_id: str, data: Any) -> None:
        self.calls.append(("on_task_exhausted", task_id))

    def on_panic(self, ctx: Any, task_id: str, data: Any) -> None:
        self.calls.append(("on_panic", task_id))


class OnlyExecute:
    """Not an Executor subclass: just an object with on_execute."""

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> Any:
        return _work(ctx, task_id, data)


class CallableObject:
    def __call__(self, ctx: Any, task_id: str, data: Any) -> Any:
        return _work(ctx, task_id, data)


class PartialExecutor(Executor):
    """Overrides on_execute only: Executor's other hooks are no-ops."""

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> Any:
        return _work(ctx, task_id, data)


def _work(ctx: Any, task_id: str, data: Any) -> Any:
    if data == "fail":
        raise ValueError(task_id)
    if data == "block":
        ctx.wait()
    return data


def _work_with_extra(extra: int, ctx: Any, task_id: str, data: Any) -> Any:
    return _work(ctx, task_id, data)


EXECUTOR_FORMS: dict[str, Callable[[], object]] = {
    "Executor subclass": FullExecutor,
    "Executor subclass, on_execute only": PartialExecutor,
    "object with only on_execute": OnlyExecute,
    "namespace with on_execute": lambda: types.SimpleNamespace(on_execute=_work),
    "plain function": lambda: _work,
    "lambda": lambda: lambda ctx, task_id, data: _work(ctx, task_id, data),
    "functools.partial": lambda: functools.partial(_work_with_extra, 1),
    "callable object": CallableObject,
}


@pytest.mark.parametrize("form", list(EXECUTOR_FORMS))
@pytest.mark.parametrize("where", ["bucket", "fill"])
def test_every_executor_form_runs_the_contract(
    make_bucket: MakeBucket, clock: FakeClock, form: str, where: str
) -> None:
    executor = EXECUTOR_FORMS[form]()
    if where == "bucket":
        bucket = make_bucket(executor=executor)
        via: tuple[Any, ...] = ()
    else:
        bucket = make_bucket()
        via = (executor,)
    ok = bucket.fill(IMMEDIATE, "ok", "value", *via)
    failed = bucket.fill(IMMEDIATE, "fail", "fail", *via)
    blocked = bucket.fill(IMMEDIATE, "block", "block", *via, life_span=1.0)
    queued = bucket.fill(TIME_BOMB, "queued", "value", *via, run_after=1.0, life_span=2.0)
    drained = bucket.fill(TIME_BOMB, "drained", "value", *via, run_after=10.0, life_span=20.0)
    rescued = bucket.fill(TIME_BOMB, "rescued", "value", *via, run_after=10.0, life_span=20.0)
    bucket.drain("drained")
    settle(bucket, running=1)
    assert ok.result(timeout=0) == "value"
    with pytest.raises(ValueError, match="fail"):
        failed.result(timeout=0)
    clock.advance(1.0)  # "block" is exhausted while it runs, "queued" runs
    settle(bucket)
    assert blocked.state is TaskState.EXHAUSTED
    assert queued.result(timeout=0) == "value"
    assert bucket.rescue() == ["rescued"]
    assert rescued.state is TaskState.RESCUED
    assert drained.state is TaskState.DRAINED
    stats = bucket.stats()
    assert (stats.finished, stats.failed, stats.exhausted, stats.drained, stats.rescued) == (
        2,
        1,
        1,
        1,
        1,
    )
    assert stats.hook_errors == 0, "a missing hook must be a silent no-op"
    if isinstance(executor, FullExecutor):
        assert sorted(executor.calls) == sorted(
            [
                ("on_execute", "ok"),
                ("on_finish", "ok"),
                ("on_execute", "fail"),
                ("on_execute_error", "fail"),
                ("on_execute", "block"),
                ("on_task_exhausted", "block"),
                ("on_execute", "queued"),
                ("on_finish", "queued"),
                ("on_panic", "rescued"),
            ]
        )


def test_fill_executor_overrides_the_bucket_executor(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    handle = bucket.fill(IMMEDIATE, "x", 1, lambda ctx, task_id, data: "override")
    assert handle.result(timeout=10) == "override"
    settle(bucket)
    assert recorder.hooks("x") == []
    assert bucket.fill(IMMEDIATE, "y", 2).result(timeout=10) == 2
    settle(bucket)
    assert recorder.hooks("y") == ["on_execute", "on_finish"]


def test_hook_given_as_instance_attribute_is_used(make_bucket: MakeBucket) -> None:
    finished: list[str] = []
    executor = types.SimpleNamespace(
        on_execute=lambda ctx, task_id, data: data,
        on_finish=lambda ctx, task_id, data: finished.append(task_id),
    )
    bucket = make_bucket(executor=executor)
    bucket.fill(IMMEDIATE, "x")
    settle(bucket)
    assert finished == ["x"]


# -- introspection -------------------------------------------------------------------


def test_get_in_and_len_follow_live_tasks(
    bucket: TaskBucket, recorder: RecordingExecutor, clock: FakeClock
) -> None:
    assert len(bucket) == 0
    assert "a" not in bucket
    assert bucket.get("a") is None
    recorder.behave("run", wait_cancelled())
    a = bucket.fill(TIME_BOMB, "a")
    run = bucket.fill(IMMEDIATE, "run")
    recorder.wait_for("on_execute", "run")
    settle(bucket, running=1)
    assert len(bucket) == 2
    assert "a" in bucket
    assert "run" in bucket
    assert bucket.get("a") == a
    assert bucket.get("run") == run
    assert 1 not in bucket
    assert None not in bucket
    bucket.drain("run")
    assert len(bucket) == 1
    assert "run" not in bucket
    assert bucket.get("run") is None
    clock.advance(1.0)
    settle(bucket)
    assert len(bucket) == 0
    assert "a" not in bucket
    assert bucket.get("a") is None
    assert a.state is TaskState.FINISHED


def test_stats_is_a_frozen_snapshot(bucket: TaskBucket) -> None:
    stats = bucket.stats()
    assert isinstance(stats, wheelbucket.BucketStats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.live = 3  # type: ignore[misc]
    for field in (
        "live",
        "pending",
        "running",
        "filled",
        "finished",
        "failed",
        "exhausted",
        "drained",
        "rescued",
        "rejected_full",
        "rejected_duplicate",
        "hook_errors",
        "lateness_p50",
        "lateness_p99",
        "lateness_max",
    ):
        assert getattr(stats, field) == 0, field
    bucket.fill(TIME_BOMB, "x")
    assert stats.live == 0, "a snapshot must not change"
    assert bucket.stats().live == 1


# -- context manager -------------------------------------------------------------------


def test_context_manager_returns_the_bucket_and_closes_it(clock: FakeClock) -> None:
    with TaskBucket(clock=clock, executor=lambda ctx, task_id, data: data) as bucket:
        assert isinstance(bucket, TaskBucket)
        handle = bucket.fill(IMMEDIATE, "x", 7)
        assert not bucket.closed
    assert bucket.closed
    assert handle.result(timeout=0) == 7
    with pytest.raises(BucketClosed):
        bucket.fill(IMMEDIATE, "y")


def test_context_manager_closes_on_an_exception(clock: FakeClock) -> None:
    def fail_inside() -> None:
        with TaskBucket(clock=clock, executor=lambda ctx, task_id, data: data) as bucket:
            bucket.fill(IMMEDIATE, "x")
            made.append(bucket)
            raise ZeroDivisionError

    made: list[TaskBucket] = []
    with pytest.raises(ZeroDivisionError):
        fail_inside()
    assert made[0].closed
    assert made[0].get("x") is None


def test_close_stops_the_bucket_threads(clock: FakeClock) -> None:
    before = set(threading.enumerate())
    bucket = TaskBucket(clock=clock, executor=lambda ctx, task_id, data: data, name="closing")
    for i in range(8):
        bucket.fill(IMMEDIATE, f"t{i}")
    settle(bucket)
    bucket.close()
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []


def test_a_forgotten_bucket_does_not_keep_the_interpreter_alive() -> None:
    code = """
import threading
from wheelbucket import TaskBucket, TaskType
stuck = threading.Event()
b = TaskBucket(executor=lambda ctx, task_id, data: stuck.wait())
b.fill(TaskType.IMMEDIATE, "stuck-in-user-code", life_span=600)
b.fill(TaskType.TIME_BOMB, "pending", run_after=300, life_span=600)
print("bye")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["bye"]


# -- logging ---------------------------------------------------------------------------------

EVENTS = ["filled", "executing", "finished", "failed", "exhausted", "drained", "rescued"]


# The task that shows each event in the test below.
EVENT_TASK = {
    "filled": "gone",
    "executing": "ok",
    "finished": "ok",
    "failed": "bad",
    "exhausted": "late",
    "drained": "gone",
    "rescued": "saved",
}
LIFECYCLE_MESSAGE = re.compile(r"^task '[^']*' ({})\b".format("|".join(EVENT_TASK)))


@pytest.mark.parametrize(("verbose", "level"), [(True, logging.INFO), (False, logging.DEBUG)])
def test_lifecycle_events_are_logged_at_info_when_verbose_else_debug(
    make_bucket: MakeBucket,
    recorder: RecordingExecutor,
    clock: FakeClock,
    gate: Callable[[], threading.Event],
    caplog: pytest.LogCaptureFixture,
    verbose: bool,
    level: int,
) -> None:
    caplog.set_level(logging.DEBUG, logger="wheelbucket")
    bucket = make_bucket(executor=recorder, workers=1, verbose=verbose)
    hold = gate()
    recorder.behave("bad", raises(RuntimeError("boom")))
    recorder.behave("blocker", wait_gate(hold))
    bucket.fill(IMMEDIATE, "ok")
    bucket.fill(IMMEDIATE, "bad")
    settle(bucket)
    # One worker, held: "late" stays queued until its life span ends.
    bucket.fill(IMMEDIATE, "blocker", life_span=100.0)
    recorder.wait_for("on_execute", "blocker")
    late = bucket.fill(IMMEDIATE, "late", life_span=1.0)
    bucket.fill(TIME_BOMB, "gone", run_after=10.0, life_span=20.0)
    bucket.fill(TIME_BOMB, "saved", run_after=10.0, life_span=20.0)
    bucket.drain("gone")
    clock.advance(1.0)
    wait_until(lambda: late.state is TaskState.EXHAUSTED, what="late exhausted")
    hold.set()
    settle(bucket)
    assert bucket.rescue() == ["saved"]
    assert recorder.endings("late") == ["on_task_exhausted"]

    records = [r for r in caplog.records if r.name == "wheelbucket"]
    for event, task_id in EVENT_TASK.items():
        found = [r for r in records if r.getMessage().startswith(f"task {task_id!r} {event}")]
        assert found, f"no log record for {event} of {task_id!r}"
        assert [r.levelno for r in found] == [level] * len(found), event
    lifecycle = [r for r in records if LIFECYCLE_MESSAGE.match(r.getMessage())]
    assert {r.levelno for r in lifecycle} == {level}


def test_nothing_is_logged_at_info_when_not_verbose(
    bucket: TaskBucket, recorder: RecordingExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wheelbucket")
    bucket.fill(IMMEDIATE, "x")
    bucket.fill(TIME_BOMB, "y")
    bucket.drain("y")
    settle(bucket)
    assert recorder.ids("on_execute") == ["x"]
    assert [r for r in caplog.records if r.name == "wheelbucket"] == []


def test_the_library_adds_no_logging_handlers(
    bucket: TaskBucket, recorder: RecordingExecutor
) -> None:
    root_before = list(logging.getLogger().handlers)
    recorder.behave("x", raises(RuntimeError("boom")))
    bucket.fill(IMMEDIATE, "x")
    bucket.fill(TIME_BOMB, "y")
    settle(bucket)
    bucket.rescue()
    logger = logging.getLogger("wheelbucket")
    assert logger.handlers == []
    assert logger.propagate
    assert logging.getLogger().handlers == root_before


def test_the_library_configures_no_logging_in_a_fresh_interpreter() -> None:
    code = """
import logging
from wheelbucket import TaskBucket, TaskType
with TaskBucket(verbose=True, executor=lambda ctx, task_id, data: 1 / 0) as b:
    b.fill(TaskType.IMMEDIATE, "x").wait(10)
    b.fill(TaskType.TIME_BOMB, "y")
    b.rescue()
loggers = [logging.getLogger()] + [
    logging.getLogger(name) for name in logging.root.manager.loggerDict
    if name.startswith("wheelbucket")
]
print(sum(len(lg.handlers) for lg in loggers), logging.getLogger().level)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["0", str(logging.WARNING)]
    # With a handler of the library's own, the verbose INFO lines would be on stderr.
    assert out.stderr == ""

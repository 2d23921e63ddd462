"""Reusable test helpers: a recording executor and a few `on_execute` behaviours.

A plain module (not a conftest) so that any test file can import it::

    from helpers import RecordingExecutor, raises, returns, wait_cancelled

`RecordingExecutor` appends one ``(hook, task_id, detail)`` tuple per hook call
to ``events``, from whatever thread calls the hook:

* ``("on_execute", id, now)``: `now` is the executor's clock when it started;
* ``("on_finish", id, None)``;
* ``("on_execute_error", id, error)``;
* ``("on_task_exhausted", id, ctx.cancelled)``;
* ``("on_panic", id, thread)``: the thread that ran the hook.

What ``on_execute`` does per task is chosen with `behave` (default: return
`data`); a behaviour may add its own events with `record`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from wheelbucket import Executor, TaskContext

__all__ = [
    "ENDING_HOOKS",
    "Behaviour",
    "RecordingExecutor",
    "raises",
    "returns",
    "wait_cancelled",
    "wait_gate",
    "wait_until",
]

Event = tuple[str, str, Any]
Behaviour = Callable[[TaskContext, str, Any], Any]

#: The hooks that mark a task's ending (on_execute is not one of them).
ENDING_HOOKS = ("on_finish", "on_execute_error", "on_task_exhausted", "on_panic")


class RecordingExecutor(Executor):
    """An executor that records every hook call, and can wait for one."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.events: list[Event] = []
        #: The ctx each task's on_execute got, by task id (the latest one).
        self.contexts: dict[str, TaskContext] = {}
        self._behaviours: dict[str, Behaviour] = {}
        self.default: Behaviour | None = None
        self._cond = threading.Condition()

    # -- configuring ------------------------------------------------------

    def behave(self, task_id: str, behaviour: Behaviour) -> None:
        """Make `task_id`'s on_execute call ``behaviour(ctx, task_id, data)``."""
        self._behaviours[task_id] = behaviour

    # -- recording --------------------------------------------------------

    def record(self, hook: str, task_id: str, detail: Any = None) -> None:
        with self._cond:
            self.events.append((hook, task_id, detail))
            self._cond.notify_all()

    def on_execute(self, ctx: TaskContext, task_id: str, data: Any) -> Any:
        self.contexts[task_id] = ctx
        self.record("on_execute", task_id, self.now())
        behaviour = self._behaviours.get(task_id, self.default)
        if behaviour is None:
            return data
        return behaviour(ctx, task_id, data)

    def on_finish(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self.record("on_finish", task_id)

    def on_execute_error(
        self, ctx: TaskContext, task_id: str, data: Any, error: BaseException
    ) -> None:
        self.record("on_execute_error", task_id, error)

    def on_task_exhausted(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self.record("on_task_exhausted", task_id, ctx.cancelled)

    def on_panic(self, ctx: TaskContext, task_id: str, data: Any) -> None:
        self.record("on_panic", task_id, threading.current_thread())

    # -- querying ---------------------------------------------------------

    def snapshot(self) -> list[Event]:
        with self._cond:
            return list(self.events)

    def hooks(self, task_id: str) -> list[str]:
        """The hooks called for `task_id`, in order."""
        return [hook for hook, tid, _ in self.snapshot() if tid == task_id]

    def endings(self, task_id: str) -> list[str]:
        """The ending hooks called for `task_id`, in order."""
        return [hook for hook in self.hooks(task_id) if hook in ENDING_HOOKS]

    def ids(self, hook: str) -> list[str]:
        """The task ids `hook` was called for, in order."""
        return [tid for h, tid, _ in self.snapshot() if h == hook]

    def count(self, hook: str) -> Counter[str]:
        return Counter(self.ids(hook))

    def detail(self, hook: str, task_id: str) -> Any:
        """The detail of the one `hook` event of `task_id` (asserts there is one)."""
        found = [d for h, tid, d in self.snapshot() if h == hook and tid == task_id]
        assert len(found) == 1, f"{hook} of {task_id!r} called {len(found)} times"
        return found[0]

    def wait_for(self, hook: str, task_id: str, timeout: float = 10.0) -> Any:
        """Block (real time) until `hook` was called for `task_id`; return its detail.

        A synchronisation point, not a timing assumption: the timeout is a
        safety net against a hang.
        """

        def seen() -> list[Any]:
            return [d for h, tid, d in self.events if h == hook and tid == task_id]

        with self._cond:
            if not self._cond.wait_for(seen, timeout):
                raise AssertionError(f"{hook} of {task_id!r} not called within {timeout} s")
            return seen()[0]


# -- on_execute behaviours ---------------------------------------------------


def returns(value: Any) -> Behaviour:
    def behaviour(ctx: TaskContext, task_id: str, data: Any) -> Any:
        return value

    return behaviour


def raises(error: BaseException) -> Behaviour:
    def behaviour(ctx: TaskContext, task_id: str, data: Any) -> Any:
        raise error

    return behaviour


def wait_cancelled(then: Behaviour | None = None) -> Behaviour:
    """Block in ``ctx.wait()`` until the task is cancelled, then run `then`."""

    def behaviour(ctx: TaskContext, task_id: str, data: Any) -> Any:
        ctx.wait()
        return None if then is None else then(ctx, task_id, data)

    return behaviour


def wait_gate(
    gate: threading.Event, then: Behaviour | None = None, *, timeout: float = 30.0
) -> Behaviour:
    """Block until the test sets `gate` (ignoring cancellation), then run `then`.

    Models user code that does not look at ``ctx``: it keeps its worker busy
    after the task ended under it.
    """

    def behaviour(ctx: TaskContext, task_id: str, data: Any) -> Any:
        if not gate.wait(timeout):
            raise AssertionError(f"gate of {task_id!r} was never opened")
        return None if then is None else then(ctx, task_id, data)

    return behaviour


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll `predicate` (real time) until it holds; a safety timeout, not a delay.

    For states that `settle()` cannot wait for, e.g. a task queued behind
    workers the test keeps blocked on purpose.
    """
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"condition not reached within {timeout} s: {what or predicate}")
        time.sleep(0.0005)

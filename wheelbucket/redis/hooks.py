"""The executors the local bucket runs shared tasks with: each ending first leaves the group.

A `SharedExecutor` stands for one user executor. Its ending hooks take the
task out of the group (one Redis round trip, through `end`) and then call the
user's hook, only if this process still held the task: that is what gives
each task one ending in the whole group. Its ``on_execute`` asks `may_start`
first, so a task taken from this process never starts here. Both callables
come from the pump, which knows the state of the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..executor import HookPlan
from ..task import TaskContext
from .records import Record

__all__ = ["SharedExecutor"]


class SharedExecutor:
    """The executor the local bucket sees for shared tasks of one user executor.

    The local bucket passes the task's `Record` as its data; the user's hooks
    get the decoded data. The hooks are instance attributes, so that
    `HookPlan` sees exactly these.

    Args:
        plan: the user's executor, resolved.
        doomed: for tasks past their life span, which must end EXHAUSTED
            without running.
        end: ``end(rec, ending, wait)`` takes the task out of the group;
            True if this process still held it (then the user's hook runs).
            Without `wait`, when there is no hook, it does not wait to know.
        may_start: ``may_start(rec, ctx)``: records the start in Redis; False
            if the task was taken from this process or cancelled meanwhile (it
            may block, and runs on a thread for an async ``on_execute``).
    """

    def __init__(
        self,
        plan: HookPlan,
        *,
        doomed: bool,
        end: Callable[[Record, str, bool], bool],
        may_start: Callable[[Record, TaskContext], bool],
    ) -> None:
        self.user = plan.executor

        if doomed:
            # It is filled with a tiny life span; should a worker pick it up
            # before the wheel expires it, it waits for that.
            def guard(ctx: TaskContext, task_id: str, rec: Record) -> None:
                ctx.wait()

            self.on_execute: Callable[..., Any] = guard
        elif plan.is_async:
            user_execute = plan.on_execute
            assert user_execute is not None

            async def on_execute_async(ctx: TaskContext, task_id: str, rec: Record) -> Any:
                if rec.error is not None:
                    raise rec.error
                if not await asyncio.to_thread(may_start, rec, ctx):
                    return None
                return await user_execute(ctx, task_id, rec.data)

            self.on_execute = on_execute_async
        else:
            user_sync = plan.on_execute

            def on_execute(ctx: TaskContext, task_id: str, rec: Record) -> Any:
                if rec.error is not None:
                    raise rec.error
                if user_sync is None or not may_start(rec, ctx):
                    return None
                return user_sync(ctx, task_id, rec.data)

            self.on_execute = on_execute

        def ending_hook(name: str, ending: str) -> Callable[..., Any]:
            user_hook = getattr(plan, name)

            if user_hook is None:  # no hook waits for the release (Link.release_later)

                def hook(ctx: TaskContext, task_id: str, rec: Record, *extra: Any) -> Any:
                    end(rec, ending, False)

            else:

                def hook(ctx: TaskContext, task_id: str, rec: Record, *extra: Any) -> Any:
                    if end(rec, ending, True):
                        return user_hook(ctx, task_id, rec.data, *extra)
                    return None

            hook.__name__ = name
            return hook

        self.on_finish = ending_hook("on_finish", "finished")
        self.on_execute_error = ending_hook("on_execute_error", "failed")
        self.on_task_exhausted = ending_hook("on_task_exhausted", "exhausted")
        self.on_panic = ending_hook("on_panic", "rescued")

    def __repr__(self) -> str:
        return f"<shared executor for {self.user!r}>"

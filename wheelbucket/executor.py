"""Executors: the user's hooks, and the `HookPlan` that resolves them once.

An executor is any object with an ``on_execute`` method (subclassing
`Executor` is optional; hooks it lacks are no-ops), or a plain callable
``f(ctx, task_id, data)`` used as ``on_execute``. Each hook may be a plain
function or an ``async def``.

The bucket resolves an executor into a `HookPlan` once: which hooks exist,
bound, and which are coroutine functions. Per task it then costs one
reference, and a hook nobody defined costs nothing at all.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ._log import safe_repr

__all__ = ["Executor", "HookPlan"]

HOOK_NAMES = ("on_execute", "on_finish", "on_execute_error", "on_task_exhausted", "on_panic")


class Executor:
    """Base class for executors. Override the hooks you need.

    Every hook receives ``ctx`` (a `TaskContext`), the task id and its data.
    Any hook may be ``async def``.
    """

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> Any:
        """The work. Its return value is the task's result."""
        return None

    def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
        """`on_execute` returned normally."""

    def on_execute_error(self, ctx: Any, task_id: str, data: Any, error: BaseException) -> None:
        """`on_execute` raised `error`."""

    def on_task_exhausted(self, ctx: Any, task_id: str, data: Any) -> None:
        """The life span ended before the task finished."""

    def on_panic(self, ctx: Any, task_id: str, data: Any) -> None:
        """The task was rescued: persist it before the program dies."""


Hook = Callable[..., Any]

# Per executor class: the hook names it really defines (not Executor's no-ops).
_defined_by_class: dict[type, tuple[str, ...]] = {}


def _defined_hooks(cls: type) -> tuple[str, ...]:
    names = _defined_by_class.get(cls)
    if names is None:
        names = tuple(
            name
            for name in HOOK_NAMES
            if getattr(cls, name, None) is not None
            and getattr(cls, name, None) is not getattr(Executor, name)
        )
        _defined_by_class[cls] = names
    return names


class HookPlan:
    """An executor resolved: bound hooks (None when absent) and which are async."""

    __slots__ = (
        "__weakref__",
        "async_hooks",
        "executor",
        "is_async",
        "on_execute",
        "on_execute_error",
        "on_finish",
        "on_panic",
        "on_task_exhausted",
    )

    on_execute: Hook | None
    on_finish: Hook | None
    on_execute_error: Hook | None
    on_task_exhausted: Hook | None
    on_panic: Hook | None

    def __init__(self, executor: object) -> None:
        self.executor = executor
        hooks: dict[str, Hook | None] = dict.fromkeys(HOOK_NAMES)
        if isinstance(executor, Executor) or hasattr(executor, "on_execute"):
            names = _defined_hooks(type(executor))
            if (
                isinstance(executor, Executor)
                and type(executor) is not Executor  # the base itself: a no-op on purpose
                and "on_execute" not in names
                and "on_execute" not in getattr(executor, "__dict__", {})
            ):
                # Executor's own on_execute does nothing: a subclass that does
                # not define one has surely misspelt it, and would "finish"
                # every task having done nothing.
                others = sorted(
                    n for n in dir(type(executor)) if n.startswith("on_") and n not in HOOK_NAMES
                )
                hint = f" (it defines {', '.join(others)}: misspelt?)" if others else ""
                raise TypeError(
                    f"{type(executor).__name__} defines no on_execute of its own{hint}; "
                    f"an executor must define on_execute(ctx, task_id, data)"
                )
            for name in names:
                hooks[name] = getattr(executor, name)
            # Instance attributes (an object built by hand) count too.
            for name in HOOK_NAMES:
                if name not in names and name in getattr(executor, "__dict__", {}):
                    hooks[name] = getattr(executor, name)
            if not callable(hooks["on_execute"]) and hooks["on_execute"] is not None:
                raise TypeError(f"executor.on_execute must be callable, got {safe_repr(executor)}")
        elif callable(executor):
            hooks["on_execute"] = executor
        else:
            raise TypeError(
                "executor must be an Executor, an object with on_execute, or a callable "
                f"f(ctx, task_id, data); got {type(executor).__name__}"
            )
        for name, hook in hooks.items():
            if hook is not None and not callable(hook):
                raise TypeError(f"executor.{name} must be callable, got {type(hook).__name__}")
            setattr(self, name, hook)
        self.async_hooks = frozenset(
            name for name, hook in hooks.items() if hook is not None and _is_async(hook)
        )
        #: on_execute is a coroutine function: it runs on the bucket's event loop.
        self.is_async = "on_execute" in self.async_hooks

    def __repr__(self) -> str:
        return f"<HookPlan for {self.executor!r}>"


def _is_async(fn: Hook) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ counts
    return call is not None and inspect.iscoroutinefunction(call)


class PlanTable:
    """Plans of per-fill executors by slot, counted: what a record names its executor by.

    Invariant: uses[s] is the number of records that hold slot s, and a slot
    with no use is free (plans[s] None, in the free list). Changed under the
    lifecycle's lock; `slot_of` may be read without it (admit checks it).
    """

    __slots__ = ("_free", "_slots", "plans", "uses")

    def __init__(self) -> None:
        self.plans: list[HookPlan | None] = []
        self.uses: list[int] = []
        self._slots: dict[int, int] = {}  # id(plan) -> slot
        self._free: list[int] = []

    def slot_of(self, plan: HookPlan) -> int:
        """The slot of `plan`, or -1."""
        return self._slots.get(id(plan), -1)

    def intern(self, plan: HookPlan) -> int:
        """One more record uses `plan`: its slot."""
        slot = self._slots.get(id(plan))
        if slot is None:
            if self._free:
                slot = self._free.pop()
                self.plans[slot] = plan
            else:
                slot = len(self.plans)
                self.plans.append(plan)
                self.uses.append(0)
            self._slots[id(plan)] = slot
        self.uses[slot] += 1
        return slot

    def unintern(self, slot: int) -> HookPlan | None:
        """A record of `slot` is gone: its plan (the slot freed if now unused)."""
        plan = self.plans[slot]
        uses = self.uses[slot] - 1
        self.uses[slot] = uses
        if not uses:
            self.plans[slot] = None
            del self._slots[id(plan)]
            self._free.append(slot)
        return plan

    def check(self) -> None:
        """Assert that free slots and unused ones agree. For tests."""
        for slot, plan in enumerate(self.plans):
            assert (plan is None) == (slot in self._free), slot
            assert (plan is None) == (self.uses[slot] == 0), slot

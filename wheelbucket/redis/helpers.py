"""Helpers of `SharedBucket` that need none of its state: reply to error, argument to plan."""

from __future__ import annotations

from typing import Any

from .._args import duration_ns
from .._log import safe_repr
from ..errors import TaskNotFound
from ..executor import HookPlan
from .errors import TaskOutOfReach
from .store import Reset, ResetReply

__all__ = ["_executor_name", "_plan", "_reset_refused", "_seconds"]


def _reset_refused(task_id: str, reply: ResetReply) -> Exception:
    """The error for a reset that Redis refused (nothing changed)."""
    shown = safe_repr(task_id)
    status = reply.status
    if status is Reset.UNKNOWN:
        return TaskNotFound(f"no live task {shown} in the group")
    if status is Reset.NOT_WAITING:
        return ValueError(
            f"run_after applies only to a TIME_BOMB task waiting to start; task {shown} "
            "is an IMMEDIATE task waiting in the group"
        )
    if status is Reset.SPAN:
        return ValueError(
            f"life_span ({reply.span_us / 1e6:g} s) must be greater than run_after "
            f"({reply.delay_us / 1e6:g} s) for a TIME_BOMB task"
        )
    if status is Reset.HELD_ELSEWHERE:
        why = (
            f"it is held by another process of the group ({reply.owner}), and its timers "
            "live in that process's memory"
        )
    elif status is Reset.DOOMED:
        why = "it was taken from a dead process and ends EXHAUSTED where it is claimed"
    else:
        why = (
            "its life span ran out while it waited in the group; it ends EXHAUSTED "
            "where it is claimed"
        )
    return TaskOutOfReach(
        f"task {shown} cannot be reset from here: {why}", task_id=task_id, owner=reply.owner
    )


def _seconds(value: object, name: str) -> float:
    return duration_ns(value, name, zero_ok=False) / 1e9


def _plan(executor: object, what: str) -> HookPlan:
    try:
        return HookPlan(executor)
    except TypeError as exc:
        raise TypeError(f"{what}: {exc}") from None


def _executor_name(
    executor: object, plans: dict[str, Any], names: list[str], producer_only: bool
) -> str:
    """The name under which `executor` travels to other members; checks it."""
    # A producer runs nothing: any name will do, some other process has it.
    if executor is None:
        if "" not in plans and not producer_only:
            raise ValueError(
                "no executor: pass executor= to SharedBucket(), or the name of one of "
                "its executors= to fill()"
            )
        return ""
    if isinstance(executor, str):
        if not executor or " " in executor:
            raise ValueError(f"bad executor name {executor!r}")
        if executor not in plans and not producer_only:
            raise ValueError(f"unknown executor name {executor!r}: known are {names!r}")
        return executor
    for name, plan in plans.items():
        if plan.executor is executor:
            return name
    raise TypeError(
        "a shared task's executor must be the name of one given to executors= (an "
        "executor object cannot travel to another process), got "
        f"{type(executor).__name__}"
    )

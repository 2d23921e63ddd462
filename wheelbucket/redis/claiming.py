"""`Placer`: tasks claimed from the group become tasks of the local bucket.

A claimed task comes as its fields in Redis (`store.Claimed`). It is placed
in the local bucket with the executor that stands for its user executor
(`hooks.SharedExecutor`), with its due time and deadline turned into local
durations from the Redis clock's now. A task already past its deadline, or
one that had started on a member that died (doomed by reap.lua), is placed
to end EXHAUSTED at once, marked so (docs/shared.md, Backlogs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ..executor import HookPlan
from ..task import TaskType
from .handback import started_executors
from .hooks import SharedExecutor
from .records import Holdings, Placement, Record
from .serializer import Serializer, decode
from .store import Claimed

__all__ = ["Placer"]

# The life span given to a task that is already past its deadline when it
# is claimed: it ends EXHAUSTED on the first tick of the local wheel.
_DOOMED_SPAN = 1e-6


class Placer:
    """Places claimed tasks in the local bucket.

    Args:
        plans: the user's executors by name.
        holdings: the tasks this process holds (it places them).
        serializer: decodes the data of claimed tasks.
        make: ``make(plan, doomed)``: the shared executor of a user executor,
            for tasks that run (doomed False) or end at once (True).
    """

    def __init__(
        self,
        plans: Mapping[str, HookPlan],
        holdings: Holdings,
        serializer: Serializer,
        make: Callable[[HookPlan, bool], SharedExecutor],
    ) -> None:
        self._holdings = holdings
        self._serializer = serializer
        # Per executor name: that of tasks that had started on a member that died.
        self._started = started_executors(plans, lambda plan: make(plan, True))
        # Per executor name: the executor of normal tasks, and of doomed ones.
        self._executors = {
            name: (make(plan, False), make(plan, True)) for name, plan in plans.items()
        }

    def executor_for(self, name: str) -> SharedExecutor:
        """The executor the local bucket runs a shared task of executor `name` with."""
        return self._executors[name][0]

    def place(self, now_us: int, tasks: list[Claimed]) -> list[Record]:
        """Put claimed tasks into the local bucket; the records of those that did not fit."""
        placements: list[Placement] = []
        for task in tasks:
            data, error = decode(self._serializer, task.id, task.payload)
            rec = Record(
                task.id,
                task.token,
                data,
                task.typ,
                task.due,
                task.dl,
                task.ex,
                task.payload,
                task.ra,
                task.ls,
            )
            rec.error = error
            due_us, dl_us = int(rec.due), int(rec.dl)
            normal, doomed_executor = self._executors[rec.ex]
            if task.doomed or dl_us <= now_us:
                # Doomed in Redis: it had started on a member that died (reap.lua).
                rec.mark = "started" if task.doomed else "queued"
                executor: object = self._started[rec.ex] if task.doomed else doomed_executor
                placements.append((rec, executor, TaskType.IMMEDIATE, None, _DOOMED_SPAN, True))
            elif due_us > now_us or rec.typ == "t":
                # A TIME_BOMB claimed late is placed as one all the same (due
                # at once), so that a reset sends it back to waiting (SPEC).
                run_after = max(0, due_us - now_us) / 1e6
                life_span = (dl_us - now_us) / 1e6
                placements.append((rec, normal, TaskType.TIME_BOMB, run_after, life_span, False))
            else:
                life_span = (dl_us - now_us) / 1e6
                placements.append((rec, normal, TaskType.IMMEDIATE, None, life_span, False))
        return self._holdings.place_claimed(placements)

"""`Filler`: how a `SharedBucket` places fills, one at a time or many in one round trip.

It checks a fill's arguments (nothing is stored for a refused one), records
the task in Redis (held here while the local bucket has room, else queued
for the group), and puts the tasks recorded as held here into the local
bucket. Fill tokens make a retried fill return the first one's outcome.
"""

from __future__ import annotations

import datetime
import itertools
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from .._args import task_id_arg
from .._log import safe_repr
from ..bucket import TaskBucket
from ..errors import BucketFull, TaskExists
from ..executor import HookPlan
from ..task import TaskHandle, TaskType
from .errors import REDIS_FAILED, UnknownExecutor
from .filling import ExecutorNames, Prepared, fill_token_arg, item_args, prepare
from .helpers import _executor_name
from .pump import Pump
from .records import Holdings, Record
from .serializer import Serializer
from .store import Filled, FillReply, GroupStore, NewTask

__all__ = ["Filler"]


class Filler:
    """Places the fills of one `SharedBucket`: `fill` and `fill_many`.

    Args:
        store, holdings, pump, bucket: the shared bucket's pieces.
        serializer: encodes the data.
        plans: the user's executors by name.
        producer_only: every fill goes to the group, and the executor name
            must be one a live member runs.
        group_limit: the group's limit (0: none), for messages.
        dead_after: seconds; a member with an older heartbeat runs nothing.
        heartbeat: seconds; how long the group's executor names are cached.
    """

    def __init__(
        self,
        store: GroupStore,
        holdings: Holdings,
        pump: Pump,
        bucket: TaskBucket,
        serializer: Serializer,
        plans: Mapping[str, HookPlan],
        *,
        producer_only: bool,
        group_limit: int,
        dead_after: float,
        heartbeat: float,
        run_after_ns: int,
        life_span_ns: int,
    ) -> None:
        self._store = store
        self._holdings = holdings
        self._pump = pump
        self._bucket = bucket
        self._max_bucket = bucket.max_bucket
        self._serializer = serializer
        self._plans = dict(plans)
        self._names = sorted(plans)
        self._producer_only = producer_only
        self._group = store.group
        self._group_limit = group_limit
        self._run_after_ns = run_after_ns
        self._life_span_ns = life_span_ns
        self._tokens = itertools.count(1)
        self._token_prefix = secrets.token_hex(6) + "."
        dead_after_us = round(dead_after * 1e6)
        self._group_names = ExecutorNames(
            lambda: store.executor_names(dead_after_us), ttl=heartbeat
        )

    def fill(
        self,
        task_type: object,
        task_id: object,
        data: Any = None,
        executor: object = None,
        *,
        run_after: float | datetime.timedelta | None = None,
        life_span: float | datetime.timedelta | None = None,
        fill_token: str | None = None,
    ) -> TaskHandle | None:
        """`SharedBucket.fill` once the bucket is known to be open."""
        p = self._prepare(
            task_type,
            task_id,
            data,
            executor,
            run_after=run_after,
            life_span=life_span,
            fill_token=fill_token,
        )
        here = not self._producer_only and len(self._bucket) < self._max_bucket
        if here:
            self._holdings.begin_fill(p.task_id)
            self._pump.reserve(1)
        try:
            reply = self._store.fill(
                p.task_id,
                p.token,
                here=here,
                typ=p.typ,
                delay_us=p.delay_us,
                span_us=p.span_us,
                ex=p.ex,
                payload=p.payload,
            )
            return self._filled(p, here, reply)
        except REDIS_FAILED as exc:
            self._pump.note_error(exc)
            if here:
                self._pump.suspect_orphans()  # the record may exist without its task
            exc.fill_token = p.token
            raise
        finally:
            if here:
                self._pump.unreserve(1)
                self._holdings.end_fill(p.task_id)

    def fill_many(self, items: Iterable[Any]) -> list[TaskHandle | BaseException | None]:
        """`SharedBucket.fill_many` once the bucket is known to be open."""
        out: list[TaskHandle | BaseException | None] = []
        ready: list[tuple[int, Prepared]] = []
        for item in items:
            prepared = self._prepare_item(item)
            if isinstance(prepared, Prepared):
                ready.append((len(out), prepared))
                out.append(None)
            else:
                out.append(prepared)
        room = 0 if self._producer_only else max(0, self._max_bucket - len(self._bucket))
        here = [n < room for n in range(len(ready))]
        for (_i, p), h in zip(ready, here, strict=True):
            if h:
                self._holdings.begin_fill(p.task_id)
        placing = min(room, len(ready))
        self._pump.reserve(placing)  # a claim meanwhile must not take their room
        try:
            try:
                replies = self._store.fill_many(
                    [
                        NewTask(
                            p.task_id, p.token, h, p.typ, p.delay_us, p.span_us, p.ex, p.payload
                        )
                        for (_i, p), h in zip(ready, here, strict=True)
                    ]
                )
            except REDIS_FAILED as exc:
                self._pump.note_error(exc)
                if room:
                    self._pump.suspect_orphans()
                tokens: list[str | None] = [None] * len(out)
                for i, p in ready:
                    tokens[i] = p.token
                exc.fill_tokens = tokens
                raise
            for (i, p), h, reply in zip(ready, here, replies, strict=True):
                out[i] = self._outcome(p, h, reply)
        finally:
            self._pump.unreserve(placing)
            for (_i, p), h in zip(ready, here, strict=True):
                if h:
                    self._holdings.end_fill(p.task_id)
        return out

    # -- the steps ----------------------------------------------------------------

    def _prepare_item(self, item: object) -> Prepared | Exception:
        """A fill_many item checked, or the error fill() would raise for it."""
        try:
            args, kwargs = item_args(item)
            return self._prepare(*args, **kwargs)
        except (TypeError, ValueError) as exc:  # UnknownExecutor is a ValueError
            return exc

    def _outcome(self, p: Prepared, here: bool, reply: FillReply) -> TaskHandle | Exception | None:
        """`_filled`, with its refusal (TaskExists, BucketFull...) returned, not raised."""
        try:
            return self._filled(p, here, reply)
        except Exception as exc:
            return exc

    def _executor_name(self, executor: object) -> str:
        name = _executor_name(executor, self._plans, self._names, self._producer_only)
        # A producer runs nothing: some live member must run the name, or the
        # task would wait in Redis, blocking its id, forever.
        if self._producer_only and not self._group_names.has(name):
            shown = "the default executor" if name == "" else f"executor {name!r}"
            raise UnknownExecutor(
                f"no live member of group {self._group!r} runs {shown} (they run "
                f"{sorted(self._group_names.known())!r}; '' is the default executor)"
            )
        return name

    def _prepare(
        self,
        task_type: object,
        task_id: object,
        data: Any = None,
        executor: object = None,
        *,
        run_after: float | datetime.timedelta | None = None,
        life_span: float | datetime.timedelta | None = None,
        fill_token: str | None = None,
    ) -> Prepared:
        """`fill`'s arguments checked (nothing is stored before), with the fill's token."""
        task_id_arg(task_id)
        token = fill_token_arg(fill_token) or self._token_prefix + format(next(self._tokens), "x")
        return prepare(
            task_type,
            task_id,
            data,
            self._executor_name(executor),
            run_after=run_after,
            life_span=life_span,
            run_after_ns=self._run_after_ns,
            life_span_ns=self._life_span_ns,
            serializer=self._serializer,
            token=token,
        )

    def _filled(self, p: Prepared, here: bool, reply: FillReply) -> TaskHandle | None:
        """The outcome of a fill Redis answered: place it here, or raise its refusal."""
        if reply.status is Filled.EXISTS:
            if reply.token != p.token:
                self._holdings.count_rejected(full=False)
                raise TaskExists(f"task {safe_repr(p.task_id)} is already live in the group")
            # A retry of a fill that went in: its first outcome, nothing placed
            # twice. Held here: its handle. Else it is in the group (an orphan
            # of a broken fill here goes back to the queue: the pump sees to it).
            self._pump.suspect_orphans()
            return self._bucket.get(p.task_id)
        if reply.status is Filled.FULL:
            self._holdings.count_rejected(full=True)
            raise BucketFull(
                f"group {self._group!r} is full ({self._group_limit} live tasks): "
                f"cannot fill {safe_repr(p.task_id)}"
            )
        if not here:
            self._holdings.count_overflowed()
            return None
        rec = Record(
            p.task_id,
            p.token,
            p.data,
            p.typ,
            reply.due,
            reply.dl,
            p.ex,
            p.payload,
            str(p.delay_us),
            str(p.span_us),
        )
        return self._place(rec, p.task_type, p.delay_ns, p.span_ns)

    def _place(self, rec: Record, task_type: TaskType, delay: int, span: int) -> TaskHandle | None:
        """Put a task just recorded in Redis as ours into the local bucket."""
        try:
            handle = self._holdings.place_filled(
                rec,
                self._pump.executor_for(rec.ex),
                task_type,
                run_after=delay / 1e9 if task_type is TaskType.TIME_BOMB else None,
                life_span=span / 1e9,
            )
        except BaseException:  # BucketClosed, or an id the local bucket holds outside the group
            self._pump.release_quietly(rec)
            raise
        if handle is not None:
            return handle
        # The local bucket filled up since we looked: hand the task to the group.
        self._pump.hand_back(rec)
        self._holdings.count_overflowed()
        return None

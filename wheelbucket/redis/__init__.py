"""A bucket shared by many processes through Redis: GoBucket's bucket group.

Each process keeps its own in-memory `TaskBucket`. A `SharedBucket` puts a
group layer on top of it, named by `group`, on one Redis server::

    from wheelbucket import TaskType
    from wheelbucket.redis import SharedBucket

    with SharedBucket("mail", "redis://127.0.0.1:6379/0", executor=Mailer()) as bucket:
        bucket.fill(TaskType.IMMEDIATE, "mail::1", {"to": "ann@example.com"})

* A fill goes to the local bucket when it has room; when it is full the task
  *overflows* into Redis, and any process of the group with room claims it
  (atomically, in a Lua script) and runs it with its own executor.
* Every live task of the group has a record in Redis from its fill to its
  ending, whoever holds it: ids are unique across the group, `drain` reaches
  a task wherever it is, and a process that dies (``kill -9``) leaves its
  tasks behind for the survivors, who notice its lapsed heartbeat: a task it
  had not started goes back to the queue and runs once elsewhere; one it had
  started ends EXHAUSTED there (``on_task_exhausted`` runs, and
  `had_started()` is True in it). A graceful ``close()`` hands back what it
  has not started, too.
* Redis Cluster (``redis+cluster://``) and Sentinel (``redis+sentinel://``)
  work; a member notices when Redis lost writes it relied on, and says so.
* Deadlines of tasks that cross processes are on the Redis server's clock.

See docs/shared.md for the design, the Redis keys and the delivery guarantees.
"""

from __future__ import annotations

try:
    import redis  # noqa: F401 - only to say what is missing
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "wheelbucket.redis needs the redis client: pip install 'wheelbucket[redis]'"
    ) from exc

from .errors import (
    RedisFailure,
    RedisServerError,
    RedisUnavailable,
    TaskOutOfReach,
    UnknownExecutor,
)
from .handback import had_started
from .rollback import RollbackReport
from .serializer import JSONSerializer, Serializer
from .shared import SharedBucket
from .stats import GroupInfo, SharedStats

__all__ = [
    "GroupInfo",
    "JSONSerializer",
    "RedisFailure",
    "RedisServerError",
    "RedisUnavailable",
    "RollbackReport",
    "Serializer",
    "SharedBucket",
    "SharedStats",
    "TaskOutOfReach",
    "UnknownExecutor",
    "had_started",
]

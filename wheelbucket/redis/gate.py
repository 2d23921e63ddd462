"""The incarnation gate: after Redis became another server process, nobody claims ghosts.

A member's epoch (epoch.py) proves that Redis lost writes *this member* saw
answered. A member that made no call since the point Redis went back to (a
snapshot, a lagging replica) has nothing to notice, and may claim a ghost:
a task another member ran and released after that point, queued again by
the rollback, before that member reconciled (docs/shared.md, Failures).

Every Redis server process has its own ``run_id``; a restart, from a
snapshot or not, and a promoted replica bring another. claim.lua,
heartbeat.lua and reap.lua read it (``INFO server``) and keep the gate in
``wb:{G}:run`` (gate.lua). When the run_id changed, the first of them
to see it records it and the server time, and closes the gate. A member's
heartbeat confirms the new run_id when its epoch is not behind, so after it
reconciled. The gate opens once every member in the registry (as Redis holds
it, whatever its heartbeat's age) has confirmed and `hold` has passed (a
live member that is not in the registry, because it joined after the
snapshot, heartbeats within that), or once `dead_after` has passed. Until
then CLAIM takes nothing, and tells a member that has not confirmed yet to
heartbeat at once (as when its epoch is behind); REAP takes nothing either.
A Redis that refuses INFO to the client (an ACL) gives the run_id '?': the
gate is off, and each member says so once (WARNING).

`RunGate` is the member's side: the run_id it last heard, the gate's
arguments, and the warning when the server changed under it. Its
`GatedScript` adds the gate's keys and arguments to each call of a gated
script and takes the run_id off the reply, so the store's steps do not
change: KEYS[2] and KEYS[3] are ``wb:{G}:run`` and the registry
``wb:{G}:m``; the last three ARGV are the known run_id, dead_after and the
hold (µs); the reply's last element is the server's run_id, or '' when it
is the known one. No round trip is added; each of these calls takes about
9 µs more of Redis's time (measured on Redis 7.0: INFO server alone is 6).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from .epoch import Epoch, GroupScript

__all__ = ["GatedScript", "RunGate", "gate_source"]

logger = logging.getLogger("wheelbucket.redis")

# The scripts that read the server's run_id and check the gate.
_GATED = frozenset({"claim", "heartbeat", "reap"})
_SOURCE = (resources.files("wheelbucket.redis") / "lua" / "gate.lua").read_text(encoding="utf-8")


def gate_source(name: str) -> str:
    """The gate's Lua helpers, for script `name` if it is gated, else ''."""
    return _SOURCE if name in _GATED else ""


class RunGate:
    """The Redis server process this member last heard, and the gate's arguments.

    Used on the pump thread only (claim, heartbeat, reap; and the first
    heartbeat, before that thread starts).

    Args:
        prefix: ``wb:{G}:``.
        group: the group's name, for the log.
    """

    def __init__(self, prefix: str, group: str) -> None:
        self._group = group
        # KEYS[2:] of the gated scripts: the gate's record and the registry.
        self.keys = [prefix + "run", prefix + "m"]
        # The run_id of the server this member last talked to ('' before its first call).
        self._known = ""
        self._dead_after_us = 0
        self._hold_us = 0
        self._held: Callable[[], int] = lambda: 0

    def configure(self, *, dead_after: float, hold: float, held: Callable[[], int]) -> None:
        """Set the gate's times (seconds) and how to count the tasks held here.

        `dead_after`: the gate opens at the latest that long after a new
        run_id was first seen. `hold`: it stays closed at least that long
        for this member. Until this is called both are 0: no gate.
        """
        self._dead_after_us = round(dead_after * 1e6)
        self._hold_us = round(hold * 1e6)
        self._held = held

    @property
    def known(self) -> str:
        """The run_id of the Redis server this member last heard ('' before any)."""
        return self._known

    def args(self) -> list[Any]:
        """The gated scripts' last arguments: known_run dead_us hold_us."""
        return [self._known, self._dead_after_us, self._hold_us]

    def script(
        self, client: Any, name: str, source: str, epoch_key: str, epoch: Epoch
    ) -> GroupScript:
        """Script `name` of the group: a `GatedScript` if it is gated (see `gate_source`)."""
        if name in _GATED:
            return GatedScript(client, source, epoch_key, epoch, self)
        return GroupScript(client, source, epoch_key, epoch)

    def heard(self, run_id: Any) -> None:
        """A gated script's reply named the server's run_id ('' when it is the known one)."""
        run = run_id.decode() if isinstance(run_id, bytes) else str(run_id)
        if not run or run == self._known:
            return
        was, self._known = self._known, run
        if run == "?":
            logger.warning(
                "group %r: Redis refuses INFO to this client (an ACL?): the incarnation gate "
                "is off, and after a rollback a member that lost no calls of its own may claim "
                "tasks that already ran (docs/shared.md, Failures)",
                self._group,
            )
        elif was and (held := self._held()):
            logger.warning(
                "group %r: Redis is another server process (run_id %s, was %s: a restart or "
                "a failover) while this member holds %d tasks; the group claims nothing until "
                "every member has checked its epoch on it, or for %g s at most",
                self._group,
                run,
                was,
                held,
                self._dead_after_us / 1e6,
            )


class GatedScript(GroupScript):
    """A `GroupScript` that checks the gate: its keys and arguments, and the run_id replied.

    Called at once only, never queued in a pipeline (its reply is read here).
    """

    def __init__(
        self, client: Any, source: str, epoch_key: str, epoch: Epoch, gate: RunGate
    ) -> None:
        super().__init__(client, source, epoch_key, epoch)
        self._gate = gate

    def __call__(
        self, keys: Sequence[str | bytes] = (), args: Sequence[Any] = (), client: Any = None
    ) -> Any:
        if client is not None:
            raise TypeError("a gated script is not pipelined: its reply names the server")
        gate = self._gate
        reply = super().__call__([*gate.keys, *keys], [*args, *gate.args()])
        gate.heard(reply.pop())
        return reply

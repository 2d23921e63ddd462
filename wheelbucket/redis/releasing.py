"""`ReleaseBatcher`: the releases of endings that come together share one round trip.

A task's ending hook may run only after RELEASE said so (docs/shared.md,
Ending), so each worker waits for its own release. Workers ending at the
same moment do not each make a round trip: the first to take the lock sends
every release queued by then in one pipeline, and the others find theirs
answered (group commit, as the starts in `handback.StartBook`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence

from .store import Released

__all__ = ["ReleaseBatcher"]


class _Ask:
    __slots__ = ("args", "done", "error", "status")

    def __init__(self, args: tuple[str, str, str]) -> None:
        self.args = args
        self.done = False
        self.status = Released.UNKNOWN
        self.error: BaseException | None = None


class ReleaseBatcher:
    """Sends the releases queued by concurrent endings together.

    Args:
        release: the store's RELEASE of one task (id, token, ending).
        release_many: the store's RELEASE of many (id, token, ending), in
            one pipeline. Both raise as the store does.
    """

    def __init__(
        self,
        release: Callable[[str, str, str], Released],
        release_many: Callable[[Sequence[tuple[str, str, str]]], list[Released]],
    ) -> None:
        self._release = release
        self._release_many = release_many
        # Releases waiting to be sent: appended by workers, taken by the
        # worker that holds _lock (deque append/popleft are atomic).
        self._asks: deque[_Ask] = deque()
        # Held by the one worker sending a batch; the others queue behind it
        # and find their release answered, or send the next batch.
        self._lock = threading.Lock()

    def release(self, task_id: str, token: str, ending: str) -> Released:
        """RELEASE one task (see `GroupStore.release`); one round trip shared with others.

        Raises what the store raises; every release of a failed batch gets the error.
        """
        ask = _Ask((task_id, token, ending))
        self._asks.append(ask)
        with self._lock:
            # Invariant: an ask taken from _asks is done before _lock is released.
            if not ask.done:
                batch = [self._asks.popleft() for _ in range(len(self._asks))]
                try:
                    # One alone goes as it is: a pipeline of scripts costs redis-py
                    # a SCRIPT EXISTS round trip first.
                    if len(batch) == 1:
                        statuses = [self._release(*batch[0].args)]
                    else:
                        statuses = self._release_many([a.args for a in batch])
                except BaseException as exc:
                    for a in batch:
                        a.error = exc
                        a.done = True
                else:
                    for a, status in zip(batch, statuses, strict=True):
                        a.status = status
                        a.done = True
        if ask.error is not None:
            raise ask.error
        return ask.status

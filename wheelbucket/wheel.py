"""A hierarchical timing wheel: a pure data structure with no threads and no clock.

Time is an integer *tick*. The caller owns the clock and passes "now" in;
nothing here reads the time or sleeps, so the wheel is tested exactly.

What it holds
-------------
A *filing* is a promise to look at something at a tick: a key (any object;
the bucket files task ids) and a small int tag (the bucket's generation of
the task's timers). The wheel hands both back, unchanged, once the tick has
come. It never looks inside them, and it holds nothing else: no node object
per filing, no links. That is the point. A filing costs three list cells,
and a million of them are a handful of list objects that the cyclic garbage
collector walks in one pass over plain ints and strings (the bucket's GC
burden, docs/design.md). Linked nodes would be a million tracked objects,
each a visit at every full collection.

There is no `remove`. A filing that went stale (its task ended, or its timer
moved) stays until its tick, and the caller drops it then, by comparing the
tag with what it knows now: *lazy deletion*, as in Kafka's purgatory. When
stale filings outnumber the live ones, the caller `purge`s them in one O(n)
pass, so they never cost more than the live ones do.

Layout
------
Level ``L`` has ``2**bits`` slots, each ``2**(L*bits)`` ticks wide. A filing
goes in the lowest level whose slot can tell its tick apart from "now": the
level of the highest bit in which ``now`` and the tick differ. The slot is
named by its *key*, the first tick it covers (the tick with the low
``L*bits`` bits cleared), and the key is always after ``now``. When the key's
tick comes, the slot is taken out whole: filings whose tick has come expire,
the rest are filed again, necessarily one level lower or more. A filing
moves down at most ``levels - 1`` times, and only when its slot comes due.
Ticks past the top level's span stay in top-level slots (their keys simply
lie further out), so there is no overflow list and no horizon.

Slots live in a dict keyed by slot key, and a ``SortedList`` indexes the keys
of the occupied slots, so the next thing to do is ``index[0]``: the caller
sleeps straight to it and never ticks through empty slots. A slot is three
parallel sequences: the keys in a list, the ticks and the tags in arrays of
64-bit ints (a list instead, for a slot that meets one past 64 bits). An
array holds plain machine ints: no int object per filing, and nothing in it
for the collector to visit. Appending costs three appends, and a slot's
filings come out in the order they went in.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from sortedcontainers import SortedList

__all__ = ["TimingWheel"]

K = TypeVar("K", bound=Hashable)


class TimingWheel(Generic[K]):
    """A hierarchical timing wheel of (key, tag) filings over integer ticks.

    Args:
        bits: each level has ``2**bits`` slots (default 6: 64 slots).
        levels: number of levels (default 6: with 1 ms ticks the first five
            levels span 2**30 ms, about 12 days; later ticks ride in the top
            level and cost at most one extra cascade).
        now: the starting tick.

    Small values (``bits=1, levels=2``) make cascades happen all the time,
    which is what the property tests use.
    """

    __slots__ = (
        "_bits",
        "_count",
        "_index",
        "_levels",
        "_now",
        "_purge_left",
        "_shift_for",
        "_slots",
    )

    def __init__(self, *, bits: int = 6, levels: int = 6, now: int = 0) -> None:
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
        if not isinstance(levels, int) or isinstance(levels, bool) or not 1 <= levels <= 64:
            raise ValueError(f"levels must be an int in [1, 64], got {levels!r}")
        self._bits = bits
        self._levels = levels
        # Invariant: _now only grows; every slot key is >= _now, and a key
        # equal to _now holds only filings already due (added "in the past").
        self._now = now
        # Invariant: _slots holds exactly the non-empty slots, by key, each
        #   as [ticks, keys, tags]: three sequences of the same length (see
        #   the module docstring).
        self._slots: dict[int, list[Any]] = {}
        # Invariant: the keys of _index are exactly the keys of _slots.
        self._index: SortedList = SortedList()
        # Invariant: _count is the number of filings in all slots.
        self._count = 0
        # The slot keys a purge in steps has not looked at yet.
        self._purge_left: list[int] = []
        # _shift_for[n] is the low-bit count to clear from a tick whose
        # highest bit differing from "now" is bit n - 1: a table lookup
        # instead of a division and a min() on every add.
        top = (levels - 1) * bits
        self._shift_for = [min((n - 1) // bits * bits, top) if n else 0 for n in range(129)]

    # -- queries ----------------------------------------------------------

    @property
    def now(self) -> int:
        """The tick of the last `advance` (or the starting tick)."""
        return self._now

    def __len__(self) -> int:
        """Number of filings in the wheel, stale ones included. O(1)."""
        return self._count

    def next_tick(self) -> int | None:
        """The earliest tick at which `advance` has work to do, or None if empty.

        It may be earlier than any filing's tick (a slot that only
        cascades), and it is never later than ``max(now, earliest tick)``: a
        filing added with a tick already past shows as `now`. O(1).
        """
        index = self._index
        return index[0] if index else None

    # -- updates ----------------------------------------------------------

    def add(self, tick: int, key: K, tag: int = 0) -> None:
        """File `key` with `tag`, to come back out at `tick`.

        A tick at or before `now` makes it due at the next `advance`. The
        same key may be filed any number of times. Runtime complexity: O(1),
        plus O(log s) when it occupies an empty slot (s = occupied slots: at
        most ``2**bits`` per level, plus one per top-level span in use).
        """
        # The slot rule lives here and in add_many (inline: this runs once
        # per fill and per cascade).
        now = self._now
        if tick <= now:
            slot_key = now
        else:
            width = (now ^ tick).bit_length()
            shift = self._shift_for[width] if width < 129 else self._far_shift(width)
            slot_key = tick >> shift << shift
        slot = self._slots.get(slot_key)
        if slot is None:
            self._slots[slot_key] = [_ints((tick,)), [key], _ints((tag,))]
            self._index.add(slot_key)
        else:
            try:
                slot[0].append(tick)
            except (OverflowError, TypeError):  # past 64 bits: a list from now on
                slot[0] = [*slot[0], tick]
            slot[1].append(key)
            try:
                slot[2].append(tag)
            except (OverflowError, TypeError):
                slot[2] = [*slot[2], tag]
        self._count += 1

    def add_many(self, tick: int, keys: Sequence[K], tags: Sequence[int]) -> None:
        """File each of `keys` with the tag at the same index, all at `tick`.

        The same as calling `add` for each, for less: the slot is found once
        and each list grows by one ``extend``. Raises ValueError (and files
        nothing) if the two sequences differ in length. O(k) for k filings.
        """
        n = len(keys)
        if len(tags) != n:
            raise ValueError(f"{n} keys but {len(tags)} tags")
        if not n:
            return
        now = self._now
        if tick <= now:
            slot_key = now
        else:
            width = (now ^ tick).bit_length()
            shift = self._shift_for[width] if width < 129 else self._far_shift(width)
            slot_key = tick >> shift << shift
        new_ticks = _ints((tick,)) * n
        new_tags = _ints(tags)
        slot = self._slots.get(slot_key)
        if slot is None:
            self._slots[slot_key] = [new_ticks, list(keys), new_tags]
            self._index.add(slot_key)
        else:
            _extend(slot, 0, new_ticks)
            slot[1].extend(keys)
            _extend(slot, 2, new_tags)
        self._count += n

    def advance(self, now: int) -> tuple[list[K], list[int]]:
        """Move time to `now`; return the keys and tags of every filing whose tick is <= `now`.

        Expired filings leave the wheel; slots that come due but hold later
        ticks cascade to lower levels. Moving time backwards raises
        ValueError. The result is two lists of the same length, in slot
        order (earliest slot first) and, within a slot, in filing order.
        Runtime complexity: O(k + c + d log s) for k expired filings, c
        cascaded filings and d due slots; empty slots cost nothing.
        """
        if now < self._now:
            raise ValueError(f"time cannot go backwards: {now} < {self._now}")
        self._now = now
        index = self._index
        keys: list[K] = []
        tags: list[int] = []
        if not index or index[0] > now:
            return keys, tags
        slots = self._slots
        add = self.add
        count = self._count
        while index and index[0] <= now:
            slot_key = index.pop(0)
            ticks, skeys, stags = slots.pop(slot_key)
            count -= len(ticks)
            if max(ticks) <= now:
                # All of it is due (the common case: a level-0 slot, whose
                # filings share one tick, or the "past" slot). Not "the key
                # is now": a higher level's slot may start at now.
                keys.extend(skeys)
                tags.extend(stags)
                continue
            self._count = count
            for i, tick in enumerate(ticks):
                if tick <= now:
                    keys.append(skeys[i])
                    tags.append(stags[i])
                else:
                    # Cascade: filing again at the same now puts it strictly
                    # lower, at a key > now, so this loop will not meet it again.
                    add(tick, skeys[i], stags[i])
            count = self._count
        self._count = count
        return keys, tags

    def purge(self, keep: Callable[[K, int], bool], limit: int | None = None) -> int:
        """Drop every filing for which ``keep(key, tag)`` is false; return how many.

        The clean-up of lazy deletion: O(n) for n filings, meant to run when
        the stale filings are about as many as the live ones, so its cost is
        O(1) per stale filing. Order within a slot is kept. With `limit`, a
        purge goes in steps: each call looks at whole slots until about
        `limit` filings, and the next call goes on where it stopped (see
        `purging`), so that no single call stalls the caller for long.
        Filings added meanwhile may be left for the next purge.
        """
        if not self._purge_left:
            self._purge_left = list(self._slots)
        left = self._purge_left
        slots = self._slots
        dropped = 0
        looked = 0
        # Slot by slot, the wheel consistent after each: a `keep` that
        # raises leaves it whole (with what was purged so far gone).
        while left and (limit is None or looked < limit):
            slot_key = left.pop()
            slot = slots.get(slot_key)
            if slot is None:
                continue
            ticks, keys, tags = slot
            looked += len(keys)
            kept = [i for i, key in enumerate(keys) if keep(key, tags[i])]
            if len(kept) == len(keys):
                continue
            gone = len(keys) - len(kept)
            if kept:
                slot[0] = _ints([ticks[i] for i in kept])
                slot[1] = [keys[i] for i in kept]
                slot[2] = _ints([tags[i] for i in kept])
            else:
                del slots[slot_key]
                self._index.remove(slot_key)
            self._count -= gone
            dropped += gone
        return dropped

    @property
    def purging(self) -> bool:
        """A purge in steps is under way (see `purge`)."""
        return bool(self._purge_left)

    def clear(self) -> tuple[list[K], list[int]]:
        """Remove every filing; return their keys and tags. O(n)."""
        keys: list[K] = []
        tags: list[int] = []
        for _, skeys, stags in self._slots.values():
            keys.extend(skeys)
            tags.extend(stags)
        self._slots.clear()
        self._index.clear()
        self._count = 0
        self._purge_left = []
        return keys, tags

    def filings(self) -> Iterable[tuple[int, K, int]]:
        """Every filing as (tick, key, tag), slot by slot. O(n). For tests and purges."""
        for ticks, keys, tags in list(self._slots.values()):
            yield from zip(ticks, keys, tags, strict=True)

    # -- internals ---------------------------------------------------------

    def _far_shift(self, width: int) -> int:
        """_shift_for[width] for a tick more than 2**128 ticks from now."""
        bits = self._bits
        return min((width - 1) // bits * bits, (self._levels - 1) * bits)

    def _check(self) -> None:
        """Assert every invariant. Runtime complexity: O(n). For tests."""
        assert list(self._index) == sorted(self._slots), "index != slot keys"
        total = 0
        aligns = [(self._levels - 1 - level) * self._bits for level in range(self._levels)]
        for slot_key, slot in self._slots.items():
            assert slot_key >= self._now, f"slot {slot_key} is behind now {self._now}"
            ticks, keys, tags = slot
            assert len(ticks) == len(keys) == len(tags), "slot lists differ in length"
            assert ticks, f"empty slot {slot_key} kept"
            for tick in ticks:
                assert isinstance(tick, int)
                if slot_key == self._now:
                    # Only filings added at or before now share now's key.
                    assert tick <= slot_key, f"tick {tick} in the due slot {slot_key}"
                else:
                    assert any(tick >> s << s == slot_key for s in aligns), (
                        f"tick {tick} does not belong in slot {slot_key}"
                    )
                    assert tick >= slot_key, f"tick {tick} before its slot {slot_key}"
            total += len(ticks)
        assert total == self._count, f"count {self._count} != {total} filings"


def _ints(values: Sequence[int]) -> Any:
    """`values` as an array of 64-bit ints, or a list if one does not fit."""
    try:
        return array("q", values)
    except (OverflowError, TypeError):
        return list(values)


def _extend(slot: list[Any], i: int, values: Any) -> None:
    """Extend sequence `i` of `slot` with `values` (see _ints), all or nothing."""
    seq = slot[i]
    if type(seq) is array and type(values) is not array:
        slot[i] = [*seq, *values]
    else:
        seq.extend(values)

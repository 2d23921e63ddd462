"""A hierarchical timing wheel: a pure data structure with no threads and no clock.

Time is an integer *tick*. The caller owns the clock and passes "now" in;
nothing here reads the time or sleeps, so the wheel is tested exactly.

Layout
------
Level ``L`` has ``2**bits`` slots, each ``2**(L*bits)`` ticks wide. An entry
is filed in the lowest level whose slot can tell its deadline apart from
"now": the level of the highest bit in which ``now`` and ``deadline`` differ.
The slot is named by its *key*, the first tick it covers (the deadline with
the low ``L*bits`` bits cleared), and the key is always after ``now``. When
the key's tick comes, the slot is taken out whole: entries whose deadline has
come expire, the rest are filed again, necessarily one level lower or more.
An entry therefore moves down at most ``levels - 1`` times, and only when its
slot comes due. Deadlines past the top level's span stay in top-level slots
(their keys simply lie further out), so there is no separate overflow list
and no horizon: a deadline days or years away costs the same as one a second
away, plus at most one cascade per level.

Slots live in a dict keyed by slot key, and a ``SortedList`` indexes the keys
of the occupied slots, so the next thing to do is ``index[0]``: the caller
sleeps straight to it and never ticks through empty slots.

Each slot is an intrusive, circular, doubly linked list through the entries
themselves (as in the Linux kernel, Kafka's purgatory and Tokio): adding and
removing cost O(1) with no hashing, an entry costs three pointer-sized
fields, and entries come out of a slot in the order they went in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sortedcontainers import SortedList

__all__ = ["TimerEntry", "TimingWheel"]


class TimerEntry:
    """Something that can sit in a `TimingWheel`.

    Subclass it (with ``__slots__``) to carry a payload. The three fields are
    the wheel's own; do not touch them while the entry is in a wheel.
    """

    __slots__ = ("_wheel_next", "_wheel_prev", "_wheel_tick")

    # Invariant: _wheel_prev is None  <=>  the entry is in no wheel.
    # Invariant: while in a wheel, _wheel_tick is its deadline tick.
    _wheel_tick: int
    _wheel_prev: TimerEntry | None
    _wheel_next: TimerEntry | None

    def __init__(self) -> None:
        self._wheel_tick = 0
        self._wheel_prev = None
        self._wheel_next = None

    @property
    def in_wheel(self) -> bool:
        """True while the entry is filed in a wheel."""
        return self._wheel_prev is not None


class _Slot(TimerEntry):
    """The sentinel head of one slot's circular list."""

    __slots__ = ()

    def __init__(self, key: int) -> None:
        self._wheel_tick = key
        self._wheel_prev = self
        self._wheel_next = self

    def __iter__(self) -> Iterator[TimerEntry]:
        node = self._wheel_next
        while node is not self:
            assert node is not None
            yield node
            node = node._wheel_next


class TimingWheel:
    """A hierarchical timing wheel over integer ticks.

    Args:
        bits: each level has ``2**bits`` slots (default 6: 64 slots).
        levels: number of levels (default 6: with 1 ms ticks the first five
            levels span 2**30 ms, about 12 days; later deadlines ride in the
            top level and cost at most one extra cascade).
        now: the starting tick.

    Small values (``bits=1, levels=2``) make cascades happen all the time,
    which is what the property tests use.
    """

    __slots__ = ("_bits", "_count", "_index", "_levels", "_now", "_shift_for", "_slots")

    def __init__(self, *, bits: int = 6, levels: int = 6, now: int = 0) -> None:
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 16:
            raise ValueError(f"bits must be an int in [1, 16], got {bits!r}")
        if not isinstance(levels, int) or isinstance(levels, bool) or not 1 <= levels <= 64:
            raise ValueError(f"levels must be an int in [1, 64], got {levels!r}")
        self._bits = bits
        self._levels = levels
        # Invariant: _now only grows; every slot key is >= _now, and a key
        # equal to _now holds only entries already due (added "in the past").
        self._now = now
        # Invariant: _slots holds exactly the non-empty slots, by key.
        self._slots: dict[int, _Slot] = {}
        # Invariant: the keys of _index are exactly the keys of _slots.
        self._index: SortedList = SortedList()
        # Invariant: _count is the number of entries in all slots.
        self._count = 0
        # _shift_for[n] is the low-bit count to clear from a deadline whose
        # highest bit differing from "now" is bit n - 1: a table lookup instead
        # of a division and a min() on every add.
        top = (levels - 1) * bits
        self._shift_for = [min((n - 1) // bits * bits, top) if n else 0 for n in range(129)]

    # -- queries ----------------------------------------------------------

    @property
    def now(self) -> int:
        """The tick of the last `advance` (or the starting tick)."""
        return self._now

    def __len__(self) -> int:
        """Number of entries in the wheel. Runtime complexity: O(1)."""
        return self._count

    def next_tick(self) -> int | None:
        """The earliest tick at which `advance` has work to do, or None if empty.

        It may be earlier than any deadline (a slot that only cascades), and
        it is never later than ``max(now, earliest deadline)``: an entry added
        with a deadline already past shows as `now`. Runtime complexity: O(1).
        """
        index = self._index
        return index[0] if index else None

    # -- updates ----------------------------------------------------------

    def add(self, entry: TimerEntry, tick: int) -> None:
        """File `entry` to expire at `tick`.

        A tick at or before `now` makes the entry due at the next `advance`.
        Raises ValueError if the entry is already in a wheel.
        Runtime complexity: O(1), plus O(log s) when it occupies an empty
        slot (s = occupied slots: at most ``2**bits`` per level, plus one per
        top-level span in use for deadlines beyond the top level; about 600
        with the defaults and the bucket's ten-year cap).
        """
        if entry._wheel_prev is not None:
            raise ValueError("entry is already in a wheel")
        entry._wheel_tick = tick
        # The slot rule lives here only (inline: this runs once per fill and
        # per cascade); add_many and cascades (_file) go through here.
        now = self._now
        if tick <= now:
            key = now
        else:
            width = (now ^ tick).bit_length()
            shift = self._shift_for[width] if width < 129 else self._shift_for[128]
            key = tick >> shift << shift
        head = self._slots.get(key)
        if head is None:
            head = self._slots[key] = _Slot(key)
            self._index.add(key)
        tail = head._wheel_prev
        entry._wheel_prev = tail
        entry._wheel_next = head
        tail._wheel_next = entry  # type: ignore[union-attr]
        head._wheel_prev = entry
        self._count += 1

    def add_many(self, entries: Iterable[TimerEntry], tick: int) -> None:
        """File every entry in `entries`, in order, to expire at `tick`.

        The same as calling `add` for each, for less: the slot is found
        once, and each entry after the first costs three field writes. If
        one of them is already in a wheel (or comes twice), ValueError is
        raised and the wheel is unchanged. Runtime complexity: O(k) for k
        entries, plus O(log s) when they occupy an empty slot.
        """
        it = iter(entries)
        first = next(it, None)
        if first is None:
            return
        if first._wheel_prev is not None:
            raise ValueError("entry is already in a wheel")
        # Chain the others behind a scratch head; the wheel is only touched
        # once all of them are known to be free.
        start = _Slot(tick)
        prev: TimerEntry = start
        count = 0
        for entry in it:
            if entry._wheel_prev is not None or entry is first:
                node = start._wheel_next
                while node is not start and node is not None:
                    after = node._wheel_next
                    node._wheel_prev = node._wheel_next = None
                    node = after
                raise ValueError("entry is already in a wheel")
            entry._wheel_tick = tick
            entry._wheel_prev = prev
            prev._wheel_next = entry
            prev = entry
            count += 1
        self.add(first, tick)
        if count:
            # first went in at the tail: splice the chain in behind it.
            head = first._wheel_next
            rest = start._wheel_next
            first._wheel_next = rest
            rest._wheel_prev = first  # type: ignore[union-attr]
            prev._wheel_next = head
            head._wheel_prev = prev  # type: ignore[union-attr]
            self._count += count

    def remove(self, entry: TimerEntry) -> None:
        """Take `entry` out of the wheel.

        Raises ValueError if it is in no wheel. Runtime complexity: O(1),
        plus O(log s) when its slot becomes empty.
        """
        prev = entry._wheel_prev
        if prev is None:
            raise ValueError("entry is not in a wheel")
        nxt = entry._wheel_next
        assert nxt is not None
        prev._wheel_next = nxt
        nxt._wheel_prev = prev
        entry._wheel_prev = entry._wheel_next = None
        self._count -= 1
        if prev is nxt and type(prev) is _Slot:
            # The slot is empty now: forget it so next_tick() stays exact.
            key = prev._wheel_tick
            del self._slots[key]
            self._index.remove(key)

    def advance(self, now: int) -> list[TimerEntry]:
        """Move time to `now` and return every entry whose tick is <= `now`.

        Expired entries leave the wheel. Slots that come due but hold later
        deadlines cascade to lower levels. Moving time backwards raises
        ValueError. The result is in slot order (earliest slot first) and,
        within a slot, in the order entries were added.
        Runtime complexity: O(k + c + d log s) for k expired entries,
        c cascaded entries and d due slots; empty slots cost nothing.
        """
        if now < self._now:
            raise ValueError(f"time cannot go backwards: {now} < {self._now}")
        self._now = now
        index = self._index
        expired: list[TimerEntry] = []
        if not index or index[0] > now:
            return expired
        slots = self._slots
        while index and index[0] <= now:
            key = index.pop(0)
            head = slots.pop(key)
            node = head._wheel_next
            assert node is not None
            while node is not head:
                assert node is not None
                nxt = node._wheel_next
                if node._wheel_tick <= now:
                    node._wheel_prev = node._wheel_next = None
                    expired.append(node)
                else:
                    # Cascade: same-now filing puts it strictly lower, at a
                    # key > now, so this loop will not meet it again.
                    self._file(node, node._wheel_tick)
                node = nxt
        self._count -= len(expired)
        return expired

    def clear(self) -> list[TimerEntry]:
        """Remove and return every entry. Runtime complexity: O(n)."""
        out: list[TimerEntry] = []
        for head in self._slots.values():
            for node in list(head):
                node._wheel_prev = node._wheel_next = None
                out.append(node)
        self._slots.clear()
        self._index.clear()
        self._count = 0
        return out

    # -- internals ---------------------------------------------------------

    def _file(self, entry: TimerEntry, tick: int) -> None:
        """File again an entry that `advance` took out of a due slot (a cascade)."""
        # Its links are stale (the whole slot was taken out) and it was
        # counted already: add() links it relative to the new now.
        entry._wheel_prev = None
        self._count -= 1
        self.add(entry, tick)

    def _check(self) -> None:
        """Assert every invariant. Runtime complexity: O(n). For tests."""
        assert list(self._index) == sorted(self._slots), "index != slot keys"
        total = 0
        aligns = [(self._levels - 1 - level) * self._bits for level in range(self._levels)]
        for key, head in self._slots.items():
            assert type(head) is _Slot
            assert head._wheel_tick == key
            assert key >= self._now, f"slot {key} is behind now {self._now}"
            prev: TimerEntry = head
            count = 0
            for node in head:
                assert node._wheel_prev is prev, "broken back link"
                tick = node._wheel_tick
                if key == self._now:
                    # Only entries added at or before now share now's key.
                    assert tick <= key, f"entry tick {tick} in the due slot {key}"
                else:
                    assert any(tick >> s << s == key for s in aligns), (
                        f"entry tick {tick} does not belong in slot {key}"
                    )
                    assert tick >= key, f"entry tick {tick} before its slot {key}"
                prev = node
                count += 1
            assert head._wheel_prev is prev, "broken tail link"
            assert count > 0, f"empty slot {key} kept"
            total += count
        assert total == self._count, f"count {self._count} != {total} entries"

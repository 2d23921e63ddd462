"""The workers' starts and releases share one STEP (wheelbucket/redis/link.py, lua/step.lua).

* `Link` alone, with a fake step and no Redis: what concurrent workers queue
  while a step is in flight goes in the next single step, each answer reaches
  its caller, an error reaches all of them, and the releases nobody waits for
  (`release_later`) ask the pump to flush them only when no step will take
  them along. Steps are held on events the tests control, so every batch is
  deterministic.
* `GroupStore.step` against a real redis-server (the fixtures of
  tests/test_redis.py): the statuses step.lua documents, ids that are not
  ASCII, the ledger and ``wb:{G}:counts``.
* Members end to end: the release of a claimed task with no ending hook
  rides with the next start or leaves within `LINGER`, and a close flushes
  what still lingers; an ending hook runs only once its record is gone.
  A claimed task that ends before the pump has finished placing its claim
  is still released as a claimed one (it lingers).
* `OwnLine`, the step's connection of its own: SCRIPT FLUSH and a restart.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import pytest
from redis_server import RedisServer

redis = pytest.importorskip("redis")

from test_redis import (  # noqa: E402 - the fixtures of the shared-bucket tests
    group,
    make,
    r,
    redis_server,
    server,
    wait_for,
)
from test_redis_handback import ghost  # noqa: E402 - a member that died holding tasks

from wheelbucket import BucketError, TaskBucket, TaskHandle, TaskState, TaskType  # noqa: E402
from wheelbucket.redis import RedisUnavailable, SharedBucket  # noqa: E402
from wheelbucket.redis import link as link_module  # noqa: E402
from wheelbucket.redis import pump as pump_module  # noqa: E402
from wheelbucket.redis.connect import connect  # noqa: E402
from wheelbucket.redis.link import LINGER, STEP_BATCH, Link  # noqa: E402
from wheelbucket.redis.store import Filled, GroupStore, NewTask, Released  # noqa: E402

__all__ = ["group", "make", "r", "redis_server", "server"]  # fixtures, used by name

IMMEDIATE = TaskType.IMMEDIATE
# The longest a test waits for a thread or a step it controls (a safety net).
WAIT = 10.0

Rel = tuple[str, str, str]
Start = tuple[str, str]


# -- Link, with a fake step ------------------------------------------------------------


class FakeStep:
    """A store's ``step(releases, starts)`` without Redis.

    Records each call, answers ``statuses[id]`` (1 by default) for each task,
    releases first; a call can be held on an event (`hold`) or made to raise
    (`fail`), by its number (0: the first call).
    """

    def __init__(self, statuses: Mapping[str, int] | None = None) -> None:
        self.statuses = dict(statuses or {})
        self.calls: list[tuple[list[Rel], list[Start]]] = []
        self.fail: dict[int, BaseException] = {}
        self._holds: dict[int, threading.Event] = {}
        self._cond = threading.Condition()

    def hold(self, call: int) -> threading.Event:
        """Call number `call` waits, once it has begun, until the returned event is set."""
        gate = self._holds[call] = threading.Event()
        return gate

    def __call__(self, releases: Sequence[Rel], starts: Sequence[Start]) -> list[int]:
        with self._cond:
            n = len(self.calls)
            self.calls.append((list(releases), list(starts)))
            gate = self._holds.get(n)
            self._cond.notify_all()
        if gate is not None and not gate.wait(WAIT):
            raise AssertionError(f"step {n} was held for more than {WAIT} s")
        if n in self.fail:
            raise self.fail[n]
        return [self.statuses.get(task[0], 1) for task in [*releases, *starts]]

    def wait_calls(self, n: int) -> None:
        """Until `n` calls have begun."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.calls) >= n, WAIT):
                pytest.fail(f"{n} steps did not begin within {WAIT} s: {self.calls}")

    def let_all_go(self) -> None:
        for gate in self._holds.values():
            gate.set()


@pytest.fixture
def fake_step() -> Iterator[Callable[..., FakeStep]]:
    """Makes `FakeStep`s; a test that failed with a step held lets it go at teardown."""
    made: list[FakeStep] = []

    def make_one(statuses: Mapping[str, int] | None = None) -> FakeStep:
        made.append(FakeStep(statuses))
        return made[-1]

    yield make_one
    for fake in made:
        fake.let_all_go()


class Caller(threading.Thread):
    """Runs `fn` on a thread of its own (a worker), keeping what it returned or raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    def _joined(self) -> None:
        self.join(WAIT)
        assert not self.is_alive(), f"a caller of the link was still blocked after {WAIT} s"

    def value(self) -> Any:
        """What `fn` returned (re-raises what it raised)."""
        self._joined()
        if self.error is not None:
            raise self.error
        return self.result

    def raised(self) -> BaseException:
        """What `fn` raised (fails if it returned)."""
        self._joined()
        assert self.error is not None, f"it returned {self.result!r}"
        return self.error


class Answers:
    """The `later` callbacks of release_later: what each task was told, and on which thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.got: dict[str, list[tuple[Released | None, BaseException | None]]] = {}
        self.threads: dict[str, threading.Thread] = {}

    def later(self, task_id: str) -> Callable[[Released | None, BaseException | None], None]:
        return partial(self._note, task_id)

    def _note(self, task_id: str, status: Released | None, error: BaseException | None) -> None:
        with self._lock:
            self.got.setdefault(task_id, []).append((status, error))
            self.threads[task_id] = threading.current_thread()


def queued(link: Link) -> int:
    """How many starts and releases wait in `link` (private: how a test sees a thread queue)."""
    return len(link._asks)


def test_starts_and_releases_queued_during_a_step_go_together_in_the_next_one(
    fake_step: Callable[..., FakeStep],
) -> None:
    # The starts answer with values no release can have: a status given to
    # the wrong caller shows (and a release would not even take it).
    statuses = {"s1": 11, "s2": 12, "s3": 13, "r1": 0, "r2": -1, "later": 1}
    fake = fake_step(statuses)
    lingers: list[int] = []
    link = Link(fake, lambda: lingers.append(1))
    gate = fake.hold(0)
    first = Caller(partial(link.start, "first", "k-first"))
    fake.wait_calls(1)  # the first step is in flight, and held
    callers = {
        "s1": Caller(partial(link.start, "s1", "k-s1")),
        "s2": Caller(partial(link.start, "s2", "k-s2")),
        "s3": Caller(partial(link.start, "s3", "k-s3")),
        "r1": Caller(partial(link.release, "r1", "k-r1", "finished")),
        "r2": Caller(partial(link.release, "r2", "k-r2", "failed")),
    }
    answers = Answers()
    link.release_later("later", "k-later", "exhausted:queued", answers.later("later"))
    assert lingers == []  # a step is on its way: the pump need not send it
    wait_for(lambda: queued(link) == 6, timeout=WAIT, what="every caller to queue")
    assert len(fake.calls) == 1
    gate.set()

    results = {name: c.value() for name, c in callers.items()}
    assert first.value() == 1
    assert len(fake.calls) == 2  # all six in one step
    releases, starts = fake.calls[1]
    assert sorted(releases) == [
        ("later", "k-later", "exhausted:queued"),
        ("r1", "k-r1", "finished"),
        ("r2", "k-r2", "failed"),
    ]
    assert sorted(starts) == [("s1", "k-s1"), ("s2", "k-s2"), ("s3", "k-s3")]
    assert results == {"s1": 11, "s2": 12, "s3": 13, "r1": 0, "r2": -1}
    assert type(results["r1"]) is Released
    assert type(results["r2"]) is Released
    assert answers.got == {"later": [(Released.RELEASED, None)]}
    assert not link.queued


def test_an_error_of_a_step_reaches_every_caller_and_every_later_callback_of_it(
    fake_step: Callable[..., FakeStep],
) -> None:
    fake = fake_step()
    boom = RedisUnavailable("group 'g': cannot step: Redis unreachable (test)")
    fake.fail[1] = boom
    link = Link(fake, lambda: None)
    answers = Answers()
    gate = fake.hold(0)
    first = Caller(partial(link.start, "first", "k"))
    fake.wait_calls(1)
    start = Caller(partial(link.start, "s", "k-s"))
    release = Caller(partial(link.release, "r", "k-r", "finished"))
    link.release_later("l1", "k-l1", "finished", answers.later("l1"))
    link.release_later("l2", "k-l2", "", answers.later("l2"))
    wait_for(lambda: queued(link) == 4, timeout=WAIT, what="every caller to queue")
    gate.set()

    assert first.value() == 1  # its own step went through
    assert start.raised() is boom
    assert release.raised() is boom
    assert answers.got == {"l1": [(None, boom)], "l2": [(None, boom)]}
    assert len(fake.calls) == 2
    # The link goes on: the next step is sent as any other.
    assert link.start("again", "k") == 1
    assert fake.calls[2] == ([], [("again", "k")])


def test_an_error_of_a_callers_own_step_is_raised_to_it_and_told_to_the_releases_it_took(
    fake_step: Callable[..., FakeStep],
) -> None:
    fake = fake_step()
    boom = RedisUnavailable("down (test)")
    fake.fail[0] = boom
    link = Link(fake, lambda: None)
    answers = Answers()
    link.release_later("l", "k-l", "finished", answers.later("l"))
    with pytest.raises(RedisUnavailable) as info:
        link.release("r", "k-r", "drained")
    assert info.value is boom
    assert fake.calls == [([("l", "k-l", "finished"), ("r", "k-r", "drained")], [])]
    assert answers.got == {"l": [(None, boom)]}
    # flush never raises: a failed step is told to the callbacks only.
    fake.fail[1] = boom
    link.release_later("m", "k-m", "finished", answers.later("m"))
    assert link.flush() is None
    assert answers.got["m"] == [(None, boom)]
    assert not link.queued


def test_release_later_lingers_when_no_step_is_on_its_way_and_not_when_one_is(
    fake_step: Callable[..., FakeStep],
) -> None:
    fake = fake_step()
    lingers: list[int] = []
    link = Link(fake, lambda: lingers.append(1))
    answers = Answers()

    link.release_later("a", "k-a", "finished", answers.later("a"))
    assert lingers == [1]  # no step on its way: the pump is asked to send it
    assert fake.calls == []  # nothing waits for it: it is not sent at once
    assert link.queued
    assert answers.got == {}
    assert link.flush() is None
    assert fake.calls == [([("a", "k-a", "finished")], [])]
    assert answers.got == {"a": [(Released.RELEASED, None)]}

    gate = fake.hold(1)
    start = Caller(partial(link.start, "s", "k-s"))
    fake.wait_calls(2)
    link.release_later("b", "k-b", "finished", answers.later("b"))
    assert lingers == [1]  # a step is in flight: no linger asked for
    gate.set()
    assert start.value() == 1
    # That step had left already: no other came, so once it ended the
    # pump was asked to send `b` (before start() returned).
    assert lingers == [1, 1]
    assert len(fake.calls) == 2
    assert link.queued
    assert "b" not in answers.got
    assert link.flush() is None
    assert fake.calls[2] == ([("b", "k-b", "finished")], [])
    assert answers.got["b"] == [(Released.RELEASED, None)]


def test_a_release_later_queued_during_a_step_rides_with_the_next_one(
    fake_step: Callable[..., FakeStep],
) -> None:
    fake = fake_step({"l": 0})
    link = Link(fake, lambda: None)
    answers = Answers()
    gate = fake.hold(0)
    first = Caller(partial(link.start, "a", "k-a"))
    fake.wait_calls(1)
    link.release_later("l", "k-l", "finished", answers.later("l"))
    second = Caller(partial(link.start, "b", "k-b"))
    wait_for(lambda: queued(link) == 2, timeout=WAIT, what="the second start to queue")
    gate.set()
    assert first.value() == 1
    assert second.value() == 1
    assert fake.calls == [([], [("a", "k-a")]), ([("l", "k-l", "finished")], [("b", "k-b")])]
    assert answers.got == {"l": [(Released.TAKEN, None)]}
    assert answers.threads["l"] is second  # told on the thread that sent it


class FakeTime:
    """Stands for the `time` module in link.py: a monotonic clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_the_pumps_flush_leaves_a_young_release_for_a_start_and_sends_an_old_one(
    fake_step: Callable[..., FakeStep],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeTime(1000.0)
    monkeypatch.setattr(link_module, "time", clock)
    fake = fake_step()
    link = Link(fake, lambda: None)
    answers = Answers()

    link.release_later("a", "k-a", "finished", answers.later("a"))
    clock.now = 1000.0 + LINGER / 4
    wait = link.flush(young=False)
    assert wait == pytest.approx(LINGER * 3 / 4)  # how long until it is old
    assert fake.calls == []
    assert link.queued

    clock.now = 1000.0 + LINGER / 2
    link.release_later("b", "k-b", "finished", answers.later("b"))
    clock.now = 1000.0 + LINGER * 1.25  # a is old now, b is not: the oldest decides
    assert link.flush(young=False) is None
    assert fake.calls == [([("a", "k-a", "finished"), ("b", "k-b", "finished")], [])]
    assert set(answers.got) == {"a", "b"}

    link.release_later("c", "k-c", "finished", answers.later("c"))
    assert link.flush() is None  # young or not (close, the pump's last flush)
    assert fake.calls[1] == ([("c", "k-c", "finished")], [])
    assert not link.queued


def test_a_flush_sends_at_most_step_batch_tasks_per_step(
    fake_step: Callable[..., FakeStep],
) -> None:
    fake = fake_step()
    link = Link(fake, lambda: None)
    answers = Answers()
    ids = [f"t{i}" for i in range(2 * STEP_BATCH + 3)]
    for task_id in ids:
        link.release_later(task_id, "k", "finished", answers.later(task_id))
    assert link.flush() is None
    assert [len(releases) for releases, _ in fake.calls] == [STEP_BATCH, STEP_BATCH, 3]
    assert [rel[0] for releases, _ in fake.calls for rel in releases] == ids  # in order
    assert answers.got == {task_id: [(Released.RELEASED, None)] for task_id in ids}
    assert not link.queued


def test_a_caller_behind_a_long_queue_sends_it_in_steps_of_at_most_step_batch(
    fake_step: Callable[..., FakeStep],
) -> None:
    fake = fake_step()
    link = Link(fake, lambda: None)
    answers = Answers()
    gate = fake.hold(0)
    first = Caller(partial(link.start, "first", "k"))
    fake.wait_calls(1)
    ids = [f"t{i}" for i in range(STEP_BATCH + 10)]
    for task_id in ids:
        link.release_later(task_id, "k", "finished", answers.later(task_id))
    last = Caller(partial(link.start, "last", "k"))
    wait_for(lambda: queued(link) == len(ids) + 1, timeout=WAIT, what="the last start to queue")
    gate.set()
    assert first.value() == 1
    assert last.value() == 1
    assert [len(rel) + len(st) for rel, st in fake.calls] == [1, STEP_BATCH, 11]
    assert fake.calls[2][1] == [("last", "k")]
    assert len(answers.got) == len(ids)


def test_a_later_callback_that_raises_is_logged_and_loses_no_other_answer(
    fake_step: Callable[..., FakeStep],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="wheelbucket.redis")
    fake = fake_step({"s": -1})
    link = Link(fake, lambda: None)
    answers = Answers()
    bug = RuntimeError("a bug in a callback")

    def broken(status: Released | None, error: BaseException | None) -> None:
        raise bug

    link.release_later("a", "k-a", "finished", answers.later("a"))
    link.release_later("bad", "k-bad", "finished", broken)
    link.release_later("c", "k-c", "finished", answers.later("c"))
    assert link.start("s", "k-s") == -1  # it sent all four; the bug did not reach it
    assert len(fake.calls) == 1
    assert answers.got == {"a": [(Released.RELEASED, None)], "c": [(Released.RELEASED, None)]}
    logged = [
        rec
        for rec in caplog.records
        if rec.name == "wheelbucket.redis" and rec.levelno == logging.ERROR
    ]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[1] is bug
    # The pump's flush does not raise for it either.
    link.release_later("bad2", "k", "finished", broken)
    assert link.flush() is None
    assert not link.queued


# -- GroupStore.step, against Redis -------------------------------------------------------

DAY_US = 86_400_000_000


@pytest.fixture
def client(server: RedisServer) -> Iterator[Any]:
    """A client as a SharedBucket builds one from a URL (no retries, 1 s timeouts)."""
    made, _ = connect(server.url, 1.0)
    yield made
    made.close()


@pytest.fixture
def stores(client: Any, group: str) -> Iterator[Callable[..., GroupStore]]:
    """GroupStores of the test's group, by member name; their step connections hung up after."""
    made: list[GroupStore] = []

    def store(member: str, ledger: int = 1000) -> GroupStore:
        s = GroupStore(client, group, member, ledger=ledger, limit=0)
        made.append(s)
        return s

    yield store
    for s in made:
        s.hang_up()


def hold(store: GroupStore, task_id: str, token: str) -> None:
    """Record `task_id` in the group as held by `store`'s member."""
    reply = store.fill(
        task_id, token, here=True, typ="i", delay_us=0, span_us=DAY_US, ex="", payload="null"
    )
    assert reply.status is Filled.RECORDED


def entries(r: Any, group: str) -> list[dict[str, str]]:
    """The group's ledger, each entry with all its fields."""
    return [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in r.xrange(f"wb:{{{group}}}:ledger")
    ]


@pytest.mark.redis
def test_one_step_releases_and_starts_with_the_statuses_step_lua_documents(
    stores: Callable[..., GroupStore], r: Any, group: str
) -> None:
    me, other = stores("me"), stores("other")
    p = f"wb:{{{group}}}:"
    hold(me, "rel-own", "a1")
    hold(me, "start-own", "b1")
    hold(other, "rel-other", "c1")
    hold(other, "start-other", "d1")
    hold(me, "rel-revoked", "e1")
    hold(me, "start-revoked", "f1")
    hold(me, "start-refilled", "old")
    for task_id in ("rel-revoked", "start-revoked", "start-refilled"):
        assert other.drain(task_id, force=True).owner == "me"  # revoked: ctl:me has it
    me.ack_revocations([("old", "start-refilled")])  # applied here already
    hold(other, "start-refilled", "new")  # and the id lives again, another fill of it
    assert r.lrange(p + "ctl:me", 0, -1) == [b"e1 rel-revoked", b"f1 start-revoked"]

    statuses = me.step(
        [
            ("rel-own", "a1", "finished"),
            ("rel-other", "c1", "finished"),
            ("rel-unknown", "x1", "finished"),
            ("rel-revoked", "e1", "finished"),
        ],
        [
            ("start-own", "b1"),
            ("start-other", "d1"),
            ("start-unknown", "y1"),
            ("start-revoked", "f1"),
            ("start-refilled", "old"),
        ],
    )
    assert statuses == [1, 0, -1, 0, 1, 0, -1, 0, 0]

    assert r.exists(p + "t:rel-own") == 0
    assert not r.sismember(p + "ids", "rel-own")
    assert not r.sismember(p + "by:me", "rel-own")
    assert r.hmget(p + "t:rel-other", "tok", "own") == [b"c1", b"other"]  # left alone
    assert r.hget(p + "t:start-own", "st") == b"1"
    assert r.hget(p + "t:start-other", "st") is None
    assert r.hget(p + "t:start-refilled", "st") is None
    assert r.exists(p + "t:start-unknown", p + "t:rel-unknown") == 0  # nothing made
    # A release takes its revocation off the list (it ended there, no hook);
    # a start only looks, the pump applies it.
    assert r.lrange(p + "ctl:me", 0, -1) == [b"f1 start-revoked"]
    ended = [(e["id"], e["end"], e["by"]) for e in entries(r, group) if e["end"] != "drained"]
    assert ended == [("rel-own", "finished", "me")]
    # release and release_many are the same step.
    assert me.release("rel-unknown", "x1") is Released.UNKNOWN
    assert me.release_many([("rel-other", "c1", ""), ("start-own", "b1", "")]) == [
        Released.TAKEN,
        Released.RELEASED,
    ]


@pytest.mark.redis
@pytest.mark.parametrize(
    "task_id",
    ["über straße", "日本語のタスク", "🚀 launch 2", "12 34 digits first", "  spaced  ", "a\tb"],
    ids=["latin", "cjk", "emoji", "digits-first", "spaced", "tab"],
)
def test_ids_that_are_not_ascii_or_hold_spaces_step_through(
    stores: Callable[..., GroupStore], r: Any, group: str, task_id: str
) -> None:
    me = stores("me")
    p = f"wb:{{{group}}}:"
    token = "tök-✓ 7"  # the packing counts bytes, for the token too
    hold(me, task_id, token)
    hold(me, "plain", "k")  # packed next to it in the same step
    assert me.step([], [(task_id, token), ("plain", "k")]) == [1, 1]
    assert r.hget(p + "t:" + task_id, "st") == b"1"
    assert me.step([(task_id, token, "finished"), ("plain", "k", "failed")], []) == [1, 1]
    assert r.exists(p + "t:" + task_id) == 0
    assert r.smembers(p + "ids") == set()
    assert r.smembers(p + "by:me") == set()
    assert [(e["id"], e["end"]) for e in entries(r, group)] == [
        (task_id, "finished"),
        ("plain", "failed"),
    ]


@pytest.mark.redis
def test_the_ledger_has_only_non_empty_endings_and_marked_exhaustions_are_counted(
    stores: Callable[..., GroupStore], r: Any, group: str
) -> None:
    me = stores("me")
    quiet = stores("quiet", ledger=0)  # keeps no ledger: the counts all the same
    p = f"wb:{{{group}}}:"
    for task_id in ("fin", "empty", "ex-s1", "ex-s2", "ex-q", "ex"):
        hold(me, task_id, "k")
    hold(quiet, "quiet-ex", "k")
    endings = [
        ("fin", "k", "finished"),
        ("empty", "k", ""),
        ("ex-s1", "k", "exhausted:started"),
        ("ex-q", "k", "exhausted:queued"),
        ("ex-s2", "k", "exhausted:started"),
        ("ex", "k", "exhausted"),
    ]
    assert me.release_many(endings) == [Released.RELEASED] * 6
    assert quiet.release("quiet-ex", "k", "exhausted:started") is Released.RELEASED
    assert entries(r, group) == [
        {"id": "fin", "end": "finished", "by": "me"},
        {"id": "ex-s1", "end": "exhausted", "by": "me", "started": "1"},
        {"id": "ex-q", "end": "exhausted", "by": "me", "queued": "1"},
        {"id": "ex-s2", "end": "exhausted", "by": "me", "started": "1"},
        {"id": "ex", "end": "exhausted", "by": "me"},
    ]
    assert r.hgetall(p + "counts") == {b"started": b"3", b"queued": b"1"}
    assert r.scard(p + "ids") == 0


@pytest.mark.redis
def test_release_many_takes_the_endings_of_a_whole_bucket_at_once(
    stores: Callable[..., GroupStore], r: Any, group: str
) -> None:
    # The pump's release of what ended while Redis was down, and the sweep
    # at close, send every ending they have in one release_many.
    n = 8000
    me = stores("me")
    tasks = [NewTask(f"t{i}", "k", True, "i", 0, DAY_US, "", "null") for i in range(n)]
    assert {reply.status for reply in me.fill_many(tasks)} == {Filled.RECORDED}
    assert (
        me.release_many([(f"t{i}", "k", "finished") for i in range(n)]) == [Released.RELEASED] * n
    )
    assert r.scard(f"wb:{{{group}}}:ids") == 0


# -- OwnLine: the step's own connection ---------------------------------------------------


@pytest.mark.redis
def test_the_step_loads_its_script_again_after_a_script_flush(
    stores: Callable[..., GroupStore], r: Any, group: str
) -> None:
    me = stores("me")
    assert me._step_line is not None  # a plain redis.Redis: the step has its own line
    hold(me, "a", "k")
    assert me.step([], [("a", "k")]) == [1]
    r.script_flush()
    assert me.step([("a", "k", "finished")], []) == [1]
    hold(me, "b", "k")
    r.script_flush()
    assert me.release_many([("b", "k", "finished"), ("a", "k", "finished")]) == [
        Released.RELEASED,
        Released.UNKNOWN,
    ]
    # Each step ran once (the refused EVALSHA ran nothing) and was counted once.
    assert int(r.get(f"wb:{{{group}}}:ep:me")) == me.epoch.answered == 5


@pytest.mark.redis
@pytest.mark.parametrize("save", [True, False], ids=["saved", "lost"])
def test_the_step_raises_redis_unavailable_while_redis_is_down_and_works_once_it_is_back(
    stores: Callable[..., GroupStore], server: RedisServer, save: bool
) -> None:
    me = stores("me")
    hold(me, "a", "k")
    assert me.step([], [("a", "k")]) == [1]
    answered = me.epoch.answered
    server.stop(save=save)
    try:
        # The broken connection first, then connections refused.
        for _ in range(3):
            with pytest.raises(RedisUnavailable) as info:
                me.step([("a", "k", "finished")], [])
            assert isinstance(info.value, BucketError)
            assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        server.start()
    assert me.epoch.answered == answered  # nothing answered while down
    # Back (without its scripts): saved, the task is there; lost, unknown.
    assert me.step([("a", "k", "finished")], []) == [1 if save else -1]
    hold(me, "b", "k")
    assert me.step([], [("b", "k")]) == [1]
    assert me.step([("b", "k", "finished")], []) == [1]


@pytest.mark.redis
def test_the_first_step_after_a_restart_between_two_steps_works(
    stores: Callable[..., GroupStore], server: RedisServer
) -> None:
    me = stores("me")
    hold(me, "a", "k")
    assert me.step([], [("a", "k")]) == [1]
    server.stop(save=True)
    server.start()
    assert me.holder("a").owner == "me"  # the pool's connection: fine at once
    assert me.step([("a", "k", "finished")], []) == [1]


# -- members, end to end ------------------------------------------------------------------


class Plain:
    """An executor with no ending hook: nothing waits for a claimed task's release.

    With `placed`, each task ends only once ``placed()`` is true (a bounded wait).
    """

    def __init__(self, placed: Callable[[], bool] | None = None) -> None:
        self.lock = threading.Lock()
        self.ran: list[str] = []
        self._placed = placed

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> str:
        with self.lock:
            self.ran.append(task_id)
        if self._placed is not None:
            wait_for(self._placed, timeout=WAIT, what="the pump to have placed the claim")
        return task_id


class Hooked(Plain):
    """Checks in Redis, from inside its hooks, what the group says of the task."""

    def __init__(self, r: Any, group: str) -> None:
        super().__init__()
        self._r = r
        self._p = f"wb:{{{group}}}:t:"
        self.started: list[tuple[str, bytes | None]] = []
        self.finished: list[tuple[str, int]] = []

    def on_execute(self, ctx: Any, task_id: str, data: Any) -> str:
        st = self._r.hget(self._p + task_id, "st")  # its start is recorded before
        with self.lock:
            self.started.append((task_id, st))
        return super().on_execute(ctx, task_id, data)

    def on_finish(self, ctx: Any, task_id: str, data: Any) -> None:
        exists = self._r.exists(self._p + task_id)  # its release is done before
        with self.lock:
            self.finished.append((task_id, exists))


def gone(r: Any, group: str, ids: Sequence[str]) -> bool:
    """Has every task of `ids` left Redis (its record, and the group's id set)?"""
    p = f"wb:{{{group}}}:"
    return r.exists(*[p + "t:" + i for i in ids]) == 0 and r.scard(p + "ids") == 0


@pytest.mark.redis
def test_claimed_tasks_without_an_ending_hook_leave_redis_soon_after_they_end(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    n = 200
    plain = Plain()
    w = make(executor=plain, local={"max_bucket": 50, "workers": 4})
    p = make(producer_only=True)
    ids = [f"job-{i}" for i in range(n)]
    for task_id in ids:
        assert p.fill(IMMEDIATE, task_id, life_span=60) is None  # queued: w claims them
    wait_for(lambda: len(plain.ran) == n, what="w to run them all")
    # The last releases linger for LINGER (2 ms), or ride with a start.
    wait_for(lambda: gone(r, group, ids), timeout=5.0, what="every record to leave Redis")
    assert Counter(plain.ran) == dict.fromkeys(ids, 1)
    assert sorted((e["id"], e["end"], e["by"]) for e in entries(r, group)) == sorted(
        (task_id, "finished", w.member) for task_id in ids
    )
    assert w.stats().claimed == n
    assert r.scard(f"wb:{{{group}}}:by:{w.member}") == 0


@pytest.fixture
def long_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Releases nobody waits for linger a minute: only a start or a close sends them."""
    monkeypatch.setattr(pump_module, "LINGER", 60.0)
    monkeypatch.setattr(link_module, "LINGER", 60.0)


@pytest.mark.redis
def test_a_claimed_tasks_release_rides_with_the_next_start(
    long_linger: None, make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    seen: list[int] = []

    def second(ctx: Any, task_id: str, data: Any) -> None:
        seen.append(r.exists(f"wb:{{{group}}}:t:first"))

    # The first ends once its claim is placed (see the next test for why).
    first = Plain(placed=lambda: w.stats().claimed == 1)
    w = make(executor=first, executors={"second": second}, local={"workers": 1})
    p = make(producer_only=True)
    assert p.fill(IMMEDIATE, "first", life_span=60) is None
    wait_for(lambda: w.stats().local.finished == 1, what="the first task to end")
    assert r.exists(f"wb:{{{group}}}:t:first") == 1  # its release lingers
    assert p.fill(IMMEDIATE, "second", executor="second", life_span=60) is None
    wait_for(lambda: seen, what="the second task to start")
    assert seen == [0]  # the second's start took the first's release along
    assert [(e["id"], e["end"]) for e in entries(r, group)] == [("first", "finished")]


class PlacesSlowly(TaskBucket):
    """A local bucket whose fill_many returns only once the tasks it filled have ended.

    (Or after 2 s each.) As when the pump loses the CPU right after it put a
    claim in the local bucket and the workers run those tasks at once: seen
    under load (4 test runs at once on 2 CPUs).
    """

    def fill_many(self, items: Iterable[object]) -> list[TaskHandle | BaseException | None]:
        outcomes = super().fill_many(items)
        for outcome in outcomes:
            if isinstance(outcome, TaskHandle):
                outcome.wait(2.0)
        return outcomes


@pytest.mark.redis
def test_a_claimed_task_that_ends_before_its_claim_is_placed_still_lingers(
    long_linger: None, make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    w = make(executor=Plain(), local=PlacesSlowly(workers=1))
    p = make(producer_only=True)
    assert p.fill(IMMEDIATE, "quick", life_span=60) is None
    wait_for(lambda: w.stats().claimed == 1, what="the claim to be placed")
    wait_for(lambda: w.stats().local.finished == 1, what="the task to end")
    assert r.exists(f"wb:{{{group}}}:t:quick") == 1  # its release lingers, as a claimed task's


@pytest.mark.redis
def test_a_close_right_after_the_last_ending_flushes_the_lingering_releases_first(
    long_linger: None, make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    n = 5
    plain = Plain(placed=lambda: w.stats().claimed == n)
    w = make(executor=plain, local={"workers": 1})
    p = make(producer_only=True)
    ids = [f"job-{i}" for i in range(n)]
    for task_id in ids:
        assert p.fill(IMMEDIATE, task_id, life_span=60) is None
    wait_for(lambda: len(plain.ran) == n, what="w to run them all")
    # Each start took the release before it along: the last one's lingers.
    assert r.scard(f"wb:{{{group}}}:ids") == 1
    w.close()
    assert gone(r, group, ids)
    ended = [(e["id"], e["end"]) for e in entries(r, group)]
    assert sorted(ended) == sorted((task_id, "finished") for task_id in ids)  # none drained
    assert w.stats().local.finished == n


@pytest.mark.redis
def test_an_ending_hook_runs_once_per_task_and_only_after_its_record_left_redis(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    n = 60
    hooked = Hooked(r, group)
    w = make(executor=hooked, local={"max_bucket": 20, "workers": 4})
    p = make(producer_only=True)
    ids = [f"job-{i}" for i in range(n)]
    for task_id in ids:
        assert p.fill(IMMEDIATE, task_id, life_span=60) is None
    wait_for(lambda: len(hooked.finished) == n, what="every on_finish")
    w.close()  # every hook has returned: none may come twice later
    assert sorted(hooked.finished) == sorted((task_id, 0) for task_id in ids)
    assert sorted(hooked.started) == sorted((task_id, b"1") for task_id in ids)
    assert gone(r, group, ids)
    assert Counter(e["id"] for e in entries(r, group)) == dict.fromkeys(ids, 1)


@pytest.mark.redis
@pytest.mark.parametrize("with_hook", [False, True], ids=["no-hook", "on_finish"])
def test_a_task_filled_here_has_left_redis_when_its_result_is_ready(
    long_linger: None, make: Callable[..., SharedBucket], r: Any, group: str, with_hook: bool
) -> None:
    # A handle waits for its task's release (it does not linger, however long LINGER is).
    executor = Hooked(r, group) if with_hook else Plain()
    shared = make(executor=executor)
    p = f"wb:{{{group}}}:"
    for i in range(20):
        task_id = f"here-{i}"
        handle = shared.fill(IMMEDIATE, task_id, i)
        assert handle is not None  # room here: it runs here, not claimed
        assert handle.result(WAIT) == task_id
        assert handle.state is TaskState.FINISHED
        assert r.exists(p + "t:" + task_id) == 0
        assert not r.sismember(p + "ids", task_id)
    assert [e["end"] for e in entries(r, group)] == ["finished"] * 20


@pytest.mark.redis
def test_releases_nobody_waits_for_that_fail_are_sent_again_once_redis_is_back(
    make: Callable[..., SharedBucket], server: RedisServer, r: Any, group: str
) -> None:
    go = threading.Event()
    started: list[str] = []

    def blocked(ctx: Any, task_id: str, data: Any) -> None:
        started.append(task_id)
        while not go.is_set() and not ctx.cancelled:
            ctx.wait(0.01)

    w = make(executor=blocked, local={"workers": 4})
    p = make(producer_only=True)
    ids = [f"job-{i}" for i in range(4)]
    for task_id in ids:
        assert p.fill(IMMEDIATE, task_id, life_span=60) is None
    wait_for(lambda: len(started) == 4, what="w to start all four")
    server.stop(save=True)  # their records survive the restart
    try:
        go.set()  # they end while Redis is down: their releases fail, or wait
        wait_for(lambda: w.stats().local.finished == 4, what="them to end")
    finally:
        server.start()
    wait_for(lambda: gone(r, group, ids), what="their releases once Redis is back")
    assert sorted((e["id"], e["end"], e["by"]) for e in entries(r, group)) == sorted(
        (task_id, "finished", w.member) for task_id in ids
    )


@pytest.mark.redis
def test_a_dead_members_started_task_ends_exhausted_marked_with_no_hook_waiting(
    make: Callable[..., SharedBucket], r: Any, group: str
) -> None:
    ghost(r, group, {"ran": True, "waited": False})
    plain = Plain()
    s = make(executor=plain, dead_after=0.5)
    wait_for(lambda: gone(r, group, ["ran", "waited"]), what="both to leave the group")
    assert plain.ran == ["waited"]
    assert sorted((e["id"], e["end"], e.get("started")) for e in entries(r, group)) == [
        ("ran", "exhausted", "1"),
        ("waited", "finished", None),
    ]
    assert r.hget(f"wb:{{{group}}}:counts", "started") == b"1"
    assert s.stats().exhausted_started == 1

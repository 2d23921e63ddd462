# docs/examples/sessions.py
"""Sessions and idle timeouts: one TIME_BOMB per session, pushed back by every touch.

A session expires after IDLE seconds without activity. Each one is a
TIME_BOMB task due IDLE seconds after its last touch: touch() calls
bucket.reset(), which makes it due IDLE seconds from now again. Only a
session left alone that long reaches on_execute, which expires it.
"""

import contextlib
import threading
import time

from wheelbucket import Executor, TaskBucket, TaskNotFound, TaskType

IDLE = 0.2  # seconds without a touch before a session expires


class Sessions(Executor):
    """A session store with idle expiry: the bucket keeps the timers, this class the data."""

    def __init__(self, idle):
        self.idle = idle
        self.users = {}  # session id -> user, for the sessions still signed in
        self.expired_at = {}  # session id -> monotonic time it expired
        self.lock = threading.Lock()
        # run_after is the idle timeout; the life span only bounds the expiry hook.
        self.bucket = TaskBucket(executor=self, run_after=idle, life_span=idle + 5.0)

    def login(self, sid, user):
        with self.lock:
            self.users[sid] = user
        self.bucket.fill(TaskType.TIME_BOMB, sid, user)  # due IDLE seconds from now

    def touch(self, sid):
        """Activity on session `sid`: push its expiry back. False if it has expired."""
        try:
            # Due IDLE seconds from now again. run_after is given on purpose:
            # if the expiry has just begun, reset() refuses it (ValueError)
            # rather than stretch an expiry that is already under way.
            self.bucket.reset(sid, run_after=self.idle)
        except (TaskNotFound, ValueError):
            return False  # expired, or expiring right now: sign in again
        return True

    def logout(self, sid):
        with self.lock:
            user = self.users.pop(sid, None)
        with contextlib.suppress(TaskNotFound):  # it may have expired already
            self.bucket.drain(sid)  # its timer goes too: no expiry for it
        print(f"{sid} ({user}) signed out")

    def on_execute(self, ctx, sid, user):
        # Idle for IDLE seconds: the session expires.
        with self.lock:
            self.users.pop(sid, None)
            self.expired_at[sid] = time.monotonic()
        print(f"{sid} ({user}) expired")

    def close(self):
        self.bucket.close()


sessions = Sessions(IDLE)
for sid, user in [("s1", "alice"), ("s2", "bob"), ("s3", "carol"), ("s4", "dave")]:
    sessions.login(sid, user)

# alice sends a request every 50 ms for 0.6 s: three times her idle timeout.
# bob makes one request at 0.1 s, carol none; dave signs out at once.
last_touch = {}
for request in range(12):
    time.sleep(0.05)
    last_touch["s1"] = time.monotonic()  # read before the touch: its due time is later
    assert sessions.touch("s1")
    if request == 0:
        sessions.logout("s4")
    if request == 1:
        last_touch["s2"] = time.monotonic()
        assert sessions.touch("s2")
# Here carol (idle since her login) and bob (idle since 0.1 s) have expired.
print(f"s1 ({sessions.users['s1']}) still signed in after 12 requests")
print(f"touch s3 after it expired: {sessions.touch('s3')}")

sessions.bucket.get("s1").wait(timeout=5)  # alice goes idle now: she expires in 0.2 s
for sid, touched in last_touch.items():
    assert sessions.expired_at[sid] - touched >= IDLE  # never before the idle timeout
stats = sessions.bucket.stats()
print(f"resets: {stats.reset}, expired: {stats.finished}, signed out: {stats.drained}")
sessions.close()

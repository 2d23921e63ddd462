# docs/examples/aiohttp_deadlines.py
"""An aiohttp app with a deadline per request and an idle expiry per session.

    python docs/examples/aiohttp_deadlines.py              # a short demo over loopback
    python docs/examples/aiohttp_deadlines.py 8080         # serve on port 8080

One bucket, its async hooks on the app's own event loop (`loop=`):

* Deadlines: a middleware runs each request's handler as an IMMEDIATE task
  whose life span is the request's deadline. When it runs out, the bucket
  cancels the handler for real and the middleware answers 504.
* Sessions: each session is a TIME_BOMB task due after the idle time. Every
  request of the session resets it; once it runs, the session is gone.
"""

import asyncio
import collections
import contextlib
import itertools
import secrets
import sys

import aiohttp
from aiohttp import web

from wheelbucket import BucketFull, Executor, TaskBucket, TaskExhausted, TaskNotFound, TaskType

BUCKET = web.AppKey("bucket", TaskBucket)
SESSIONS = web.AppKey("sessions", dict)
EVENTS = web.AppKey("events", collections.deque)  # the latest things the hooks did
SESSION = web.RequestKey("session", dict)


def deadline(seconds):
    """Give one handler its own deadline instead of the app's."""

    def mark(handler):
        handler.deadline = seconds
        return handler

    return mark


class RunHandler(Executor):
    """A request's task: the handler itself, cut off when the life span ends."""

    def __init__(self, events):
        self.events = events

    async def on_execute(self, ctx, task_id, call):
        handler, request = call
        return await handler(request)  # the bucket cancels this at the deadline

    async def on_task_exhausted(self, ctx, task_id, call):
        _, request = call
        self.events.append(f"{request.method} {request.path_qs}: deadline exceeded")


class ExpireSession(Executor):
    """A session's timer: it runs once the session was idle for the idle time."""

    def __init__(self, sessions, events):
        self.sessions = sessions
        self.events = events

    async def on_execute(self, ctx, task_id, session_id):
        # On the app's loop: close what the session holds here (a client, a cursor...).
        session = self.sessions.pop(session_id)
        self.events.append(f"session {session['number']} expired after {session['visits']} visits")


def touch(bucket, session_id, seconds):
    """Make the session expire `seconds` from now; False if its timer has fired already."""
    try:
        bucket.reset(f"session:{session_id}", run_after=seconds, life_span=seconds + 10.0)
    except (TaskNotFound, ValueError):  # ended, or started (too late to move its start)
        return False
    return True


def make_app(*, request_deadline=10.0, session_idle=600.0, max_live=100_000):
    """The app: deadlines of `request_deadline` s, sessions expired after `session_idle` s idle.

    `max_live`: most sessions plus requests in flight; past it, requests get 503.
    """
    sessions = {}
    events = collections.deque(maxlen=1000)
    run_handler = RunHandler(events)
    expire_session = ExpireSession(sessions, events)
    requests = itertools.count(1)
    numbers = itertools.count(1)

    def deadline_of(request):
        return getattr(request.match_info.handler, "deadline", request_deadline)

    @web.middleware
    async def session_middleware(request, handler):
        bucket = request.app[BUCKET]
        session_id = request.cookies.get("session")
        session = sessions.get(session_id)
        # No expiry while a request of the session runs: it ends by its deadline at the latest.
        busy = deadline_of(request) + session_idle
        if session is not None and not touch(bucket, session_id, busy):
            session = None  # its timer fired as this request came in
        if session is None:
            session_id = secrets.token_urlsafe(16)
            try:
                bucket.fill(
                    TaskType.TIME_BOMB,
                    f"session:{session_id}",
                    session_id,
                    expire_session,
                    run_after=busy,
                    life_span=busy + 10.0,
                )
            except BucketFull:
                raise web.HTTPServiceUnavailable(text="too busy, try again later") from None
            session = sessions[session_id] = {"number": next(numbers), "visits": 0}
        session["visits"] += 1
        request[SESSION] = session
        try:
            response = await handler(request)
        finally:
            touch(bucket, session_id, session_idle)  # idle from now on
        response.set_cookie("session", session_id, httponly=True, samesite="Lax")
        return response

    @web.middleware
    async def deadline_middleware(request, handler):
        bucket = request.app[BUCKET]
        seconds = deadline_of(request)
        task_id = f"request:{next(requests)}"
        try:
            handle = bucket.fill(
                TaskType.IMMEDIATE, task_id, (handler, request), run_handler, life_span=seconds
            )
        except BucketFull:
            raise web.HTTPServiceUnavailable(text="too busy, try again later") from None
        try:
            return await handle  # the handler's response, or what it raised
        except TaskExhausted:
            raise web.HTTPGatewayTimeout(text=f"deadline of {seconds} s exceeded") from None
        except asyncio.CancelledError:
            # This request is cancelled (the server shuts down): so is its handler.
            with contextlib.suppress(TaskNotFound):
                bucket.drain(task_id)
            raise

    async def bucket_context(app):
        app[BUCKET] = bucket = TaskBucket(
            loop=asyncio.get_running_loop(), max_bucket=max_live, name="web"
        )
        yield
        # Requests are over by now; the sessions still live die with the app.
        await bucket.aclose(wait=False)

    app = web.Application(middlewares=[session_middleware, deadline_middleware])
    app[SESSIONS] = sessions
    app[EVENTS] = events
    app.cleanup_ctx.append(bucket_context)
    app.router.add_get("/hello", hello)
    app.router.add_get("/slow", slow)
    app.router.add_get("/report", report)
    return app


async def hello(request):
    session = request[SESSION]
    return web.Response(text=f"hello, visit {session['visits']} of session {session['number']}")


async def slow(request):
    seconds = float(request.query.get("seconds", "1"))
    try:
        await asyncio.sleep(seconds)  # a slow database, a slow upstream...
    except asyncio.CancelledError:
        request.app[EVENTS].append(f"{request.path_qs}: handler cancelled")
        raise
    return web.Response(text=f"slept {seconds} s")


@deadline(30.0)
async def report(request):
    await asyncio.sleep(float(request.query.get("seconds", "0")))
    return web.Response(text="report ready")


# -- the demo ------------------------------------------------------------------


async def demo(request_deadline=0.1, session_idle=0.2):
    runner = web.AppRunner(make_app(request_deadline=request_deadline, session_idle=session_idle))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    # unsafe=True: the default cookie jar keeps no cookie from an IP address like 127.0.0.1.
    async with aiohttp.ClientSession(
        f"http://127.0.0.1:{port}", cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as client:

        async def get(path):
            async with client.get(path) as response:
                return f"GET {path} -> {response.status} {await response.text()}"

        print(await get("/hello"))
        print(await get("/slow?seconds=0.01"))
        print(await get("/slow?seconds=30"))  # cut off at the deadline
        print(await get("/report?seconds=0.15"))  # its own, longer deadline
        for _ in range(4):  # more than the idle time in all, but each request resets it
            await asyncio.sleep(session_idle / 3)
            last = await get("/hello")
        print(last)
        await asyncio.sleep(2 * session_idle)  # idle: the session expires
        print(await get("/hello"))
    events = sorted(runner.app[EVENTS])  # the hooks' and the handler's, in any order
    await runner.cleanup()
    for event in events:
        print("server:", event)


async def serve(port, request_deadline=10.0, session_idle=600.0):
    """Run the app on 127.0.0.1:port until cancelled."""
    runner = web.AppRunner(make_app(request_deadline=request_deadline, session_idle=session_idle))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"serving on http://127.0.0.1:{port}/hello")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    if len(sys.argv) > 1:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(int(sys.argv[1])))
    else:
        asyncio.run(demo())

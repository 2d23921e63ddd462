# docs/examples/echo_idle.py
"""An echo server that closes idle connections: one TIME_BOMB per connection.

    python docs/examples/echo_idle.py              # a short demo with three clients
    python docs/examples/echo_idle.py 8888 30      # serve on port 8888, 30 s idle timeout

Each connection gets a TIME_BOMB task due after the idle timeout. Every line
the client sends resets it (`bucket.reset`), so only a connection that stays
quiet that long reaches its `on_execute`, which closes it. The bucket runs its
async hooks on the server's own event loop (`loop=`): a StreamWriter belongs
to that loop, and only code on that loop may touch it.
"""

import asyncio
import contextlib
import itertools
import sys
import time

from wheelbucket import BucketFull, Executor, TaskBucket, TaskNotFound, TaskType

BYE = b"idle timeout, bye\n"


class CloseWhenIdle(Executor):
    """A connection's timer: it runs only once the connection was idle for the timeout."""

    def __init__(self):
        self.closing = set()  # connections it closed whose handler has not yet seen the end
        self.closed = 0  # connections closed for idleness, in all

    async def on_execute(self, ctx, conn_id, writer):
        # On the server's loop, the one the writer belongs to.
        self.closing.add(conn_id)
        self.closed += 1
        writer.write(BYE)
        writer.close()  # the handler's readline() sees the end and returns


class EchoServer:
    """What `echo_server` yields: the asyncio server, its bucket and its timers."""

    def __init__(self, server, bucket, timers):
        self.server = server
        self.bucket = bucket
        self.timers = timers

    @property
    def port(self):
        return self.server.sockets[0].getsockname()[1]

    @property
    def closed_idle(self):
        """How many connections the server closed because they were idle."""
        return self.timers.closed


@contextlib.asynccontextmanager
async def echo_server(port=0, idle_timeout=30.0, *, host="127.0.0.1", max_connections=1024):
    """Serve a line echo on host:port while the block runs; yields an `EchoServer`.

    A connection that sends nothing for `idle_timeout` seconds is closed by the
    server. Leaving the block closes the connections still open.
    """
    timers = CloseWhenIdle()
    writers = {}  # conn_id -> StreamWriter of the open connections
    handlers = set()
    ids = itertools.count(1)

    async def handle(reader, writer):
        conn_id = f"conn-{next(ids)}"
        try:
            bucket.fill(TaskType.TIME_BOMB, conn_id, writer)  # due after idle_timeout
        except BucketFull:
            writer.close()  # too many connections: refuse this one
            return
        writers[conn_id] = writer
        handlers.add(asyncio.current_task())
        try:
            while line := await reader.readline():
                bucket.reset(conn_id)  # due idle_timeout from now again
                writer.write(line)
                await writer.drain()
        except (ConnectionError, TaskNotFound):
            pass  # the client went away, or its timer fired as this line arrived
        finally:
            del writers[conn_id]
            handlers.discard(asyncio.current_task())
            if conn_id in timers.closing:
                timers.closing.discard(conn_id)  # its timer closed it
            else:
                with contextlib.suppress(TaskNotFound):  # the timer may have fired just now
                    bucket.drain(conn_id)  # the client left first: its timer goes too
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    loop = asyncio.get_running_loop()
    # The life span only bounds the hook itself: idle_timeout plus a margin.
    # reset() with no arguments reuses both of the values the task was filled with.
    async with TaskBucket(
        executor=timers,
        loop=loop,
        run_after=idle_timeout,
        life_span=idle_timeout + 5.0,
        max_bucket=max_connections,
        name="echo",
    ) as bucket:
        server = await asyncio.start_server(handle, host, port)
        try:
            yield EchoServer(server, bucket, timers)
        finally:
            server.close()
            for writer in list(writers.values()):
                writer.close()  # each handler sees the end and drains its timer
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()
    # Leaving `async with` ran `await bucket.aclose()`: every timer has ended.


async def serve(port, idle_timeout, host="127.0.0.1"):
    """Run the echo server until cancelled."""
    async with echo_server(port, idle_timeout, host=host) as server:
        print(f"echo server on {host}:{server.port}, idle timeout {idle_timeout} s")
        await server.server.serve_forever()


# -- the demo ------------------------------------------------------------------


async def client(port, name, lines, every, leave=False):
    """Send `lines` lines, `every` seconds apart; then leave, or stay quiet until closed.

    Returns what happened, and how long the connection was quiet before the
    server closed it (None if the client left).
    """
    last_sent = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    echoes = 0
    for i in range(lines):
        last_sent = time.monotonic()
        writer.write(f"{name} {i}\n".encode())
        if await reader.readline() == f"{name} {i}\n".encode():
            echoes += 1
        await asyncio.sleep(every)
    if leave:
        writer.close()
        await writer.wait_closed()
        return f"{name}: {echoes} echoes, then it left; the server never timed it out", None
    farewell = await reader.readline()
    idle = time.monotonic() - last_sent
    assert await reader.read() == b""  # the server closed the connection
    writer.close()
    return f"{name}: {echoes} echoes, then quiet, and the server said {farewell!r}", idle


async def demo(idle_timeout=0.3):
    async with echo_server(idle_timeout=idle_timeout) as server:
        (chatty, _), (quiet, quiet_idle), (bursty, bursty_idle) = await asyncio.gather(
            client(server.port, "chatty", lines=10, every=idle_timeout / 4, leave=True),
            client(server.port, "quiet", lines=0, every=0),
            client(server.port, "bursty", lines=3, every=0.01),
        )
    print(chatty)
    print(quiet)
    print(bursty)
    assert min(quiet_idle, bursty_idle) >= idle_timeout  # never closed early
    stats = server.bucket.stats()
    print(
        f"closed for idleness: {server.closed_idle}; drained when the client left: "
        f"{stats.drained}; resets: {stats.reset}"
    )
    assert (stats.finished, stats.drained, stats.hook_errors) == (2, 1, 0)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 30.0))
    else:
        asyncio.run(demo())

"""A throwaway redis-server for the shared-bucket tests (and bench/shared_throughput.py).

It listens on 127.0.0.1 on a non-default port (6391, or $WHEELBUCKET_REDIS_PORT,
or a free port if that one is taken), keeps its files in a temporary
directory, and has persistence off (``--save '' --appendonly no``). Tests can
stop it, kill it, pause it and start it again on the same port and directory::

    server = RedisServer()
    server.start()
    ...
    server.stop(save=True)   # SHUTDOWN SAVE: the data set survives the restart
    server.start()
    server.close()           # stop it for good and remove its directory
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["DEFAULT_PORT", "RedisServer", "find_redis_server"]

DEFAULT_PORT = 6391


def find_redis_server() -> str | None:
    """The redis-server binary, or None when it is not installed."""
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process that the tests own."""

    def __init__(self, port: int | None = None, binary: str | None = None) -> None:
        binary = binary or find_redis_server()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        if port is None:
            port = int(os.environ.get("WHEELBUCKET_REDIS_PORT", DEFAULT_PORT))
            if not _port_is_free(port):
                port = _free_port()
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="wheelbucket-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again) and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self.dir,
                "--dbfilename", "dump.rdb",
                "--daemonize", "no",
                "--protected-mode", "no",
                "--logfile", os.path.join(self.dir, "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        end = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at once; see {self.dir}/redis.log")
            if time.monotonic() > end:
                self.kill()
                raise TimeoutError(f"redis-server did not answer within {timeout} s")
            time.sleep(0.02)

    def ping(self) -> bool:
        """True if the server answers PING now (with its data set loaded)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _command(self, *args: str) -> bytes:
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        with socket.create_connection(("127.0.0.1", self.port), timeout=5.0) as s:
            s.sendall(b"".join(parts))
            try:
                return s.recv(256)
            except OSError:
                return b""

    def stop(self, *, save: bool = False, timeout: float = 10.0) -> None:
        """Stop the server. With `save`, it writes its data set first (SHUTDOWN SAVE),
        so `start()` brings it back as it was; without, a restart starts empty."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self.resume()
        if save:
            self._command("SHUTDOWN", "SAVE")
        else:
            proc.terminate()  # SIGTERM: no save points are configured, so nothing is saved
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not save:
            rdb = os.path.join(self.dir, "dump.rdb")
            if os.path.exists(rdb):
                os.remove(rdb)

    def kill(self) -> None:
        """SIGKILL the server (nothing saved)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        """Stop the server for good and remove its directory."""
        self.resume()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""A throwaway 3-master Redis Cluster on loopback for the shared-bucket tests.

Three cluster-enabled redis-servers on free ports of 127.0.0.1, each in its
own temporary directory, persistence off. The slots are split in three with
CLUSTER ADDSLOTSRANGE and the nodes meet each other (no redis-cli needed)::

    with RedisCluster() as cluster:
        cluster.url          # "redis+cluster://127.0.0.1:<port>"
        cluster.ports        # the three nodes
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from redis_server import find_redis_server

__all__ = ["RedisClusterServers"]

_SLOTS = 16384


def _free_ports(n: int) -> list[int]:
    """`n` distinct free ports whose cluster-bus ports (+10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535 or port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _command(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """One command in RESP over a fresh socket; the raw reply."""
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(parts))
        chunks = []
        while True:
            chunk = s.recv(65536)
            chunks.append(chunk)
            if not chunk or chunk.endswith(b"\r\n"):
                break
        return b"".join(chunks)


class RedisClusterServers:
    """Three cluster-enabled redis-server processes that the tests own."""

    def __init__(self, masters: int = 3, binary: str | None = None) -> None:
        binary = binary or find_redis_server()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.ports = _free_ports(masters)
        self.dir = tempfile.mkdtemp(prefix="wheelbucket-cluster-")
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the nodes and make them one cluster; on failure stop them all."""
        try:
            self._start(timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, timeout: float) -> None:
        for port in self.ports:
            node_dir = os.path.join(self.dir, str(port))
            os.makedirs(node_dir, exist_ok=True)
            self.procs.append(
                subprocess.Popen(
                    [
                        self.binary,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", "nodes.conf",
                        "--cluster-node-timeout", "2000",
                        "--save", "",
                        "--appendonly", "no",
                        "--dir", node_dir,
                        "--daemonize", "no",
                        "--protected-mode", "no",
                        "--logfile", os.path.join(node_dir, "redis.log"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        end = time.monotonic() + timeout
        for port in self.ports:
            self._wait(lambda p=port: self._ping(p), end, f"node {port} to answer PING")
        n = len(self.ports)
        for i, port in enumerate(self.ports):
            first = i * _SLOTS // n
            last = (i + 1) * _SLOTS // n - 1
            reply = _command(port, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
            if not reply.startswith(b"+OK"):
                raise RuntimeError(f"CLUSTER ADDSLOTSRANGE on {port}: {reply!r}")
        for port in self.ports[1:]:
            _command(self.ports[0], "CLUSTER", "MEET", "127.0.0.1", str(port))
        for port in self.ports:
            self._wait(lambda p=port: self._ok(p), end, f"node {port} to see cluster_state:ok")

    def _wait(self, predicate: object, end: float, what: str) -> None:
        assert callable(predicate)
        while not predicate():
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a cluster node exited; see {self.dir}/*/redis.log")
            if time.monotonic() > end:
                self.close()
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)

    @staticmethod
    def _ping(port: int) -> bool:
        try:
            return _command(port, "PING", timeout=0.5).startswith(b"+PONG")
        except OSError:
            return False

    @staticmethod
    def _ok(port: int) -> bool:
        try:
            info = _command(port, "CLUSTER", "INFO", timeout=0.5)
        except OSError:
            return False
        return b"cluster_state:ok" in info

    def close(self) -> None:
        """Stop every node for good and remove their directories."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisClusterServers:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""A throwaway primary + replica + Sentinel on loopback for the failover tests.

Two redis-servers (the second a replica of the first) and one Sentinel
(``redis-server --sentinel``) that watches them under the name ``wbmaster``,
with quorum 1 and short timeouts, so that a failover takes a second or two::

    with SentinelSet() as s:
        s.url             # "redis+sentinel://127.0.0.1:<sentinel port>/wbmaster"
        s.primary_port()  # asks the Sentinel
        s.kill_primary()  # SIGKILL; the Sentinel promotes the replica
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from redis_server import find_redis_server

__all__ = ["MASTER", "SentinelSet"]

MASTER = "wbmaster"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(port: int, *args: str, timeout: float = 5.0) -> bytes:
    """One command in RESP over a fresh socket; the raw reply (first chunk)."""
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(parts))
        return s.recv(65536)


class SentinelSet:
    """A primary, its replica and a Sentinel, owned by the tests."""

    def __init__(self, binary: str | None = None) -> None:
        binary = binary or find_redis_server()
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self._pick_ports()
        self.dir = tempfile.mkdtemp(prefix="wheelbucket-sentinel-")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _pick_ports(self) -> None:
        ports: list[int] = []
        while len(ports) < 3:  # three distinct ones
            if (port := _free_port()) not in ports:
                ports.append(port)
        self.ports = ports[:2]  # the first starts as the primary
        self.sentinel_port = ports[2]

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{MASTER}"

    def _start_server(self, port: int, *extra: str) -> None:
        node_dir = os.path.join(self.dir, str(port))
        os.makedirs(node_dir, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                self.binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", node_dir,
                "--daemonize", "no",
                "--protected-mode", "no",
                "--repl-ping-replica-period", "1",
                "--repl-diskless-sync-delay", "0",
                "--logfile", os.path.join(node_dir, "redis.log"),
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self, timeout: float = 20.0, tries: int = 3) -> None:
        """Start all three and wait until the Sentinel knows the replica; on failure stop them.

        A free port picked here can be taken by another process before a
        server binds it (then that server exits, and the replica never
        links): such a start is tried again on fresh ports, up to `tries`.
        """
        for attempt in range(tries):
            try:
                self._start(timeout)
                return
            except TimeoutError as exc:
                logs = self._log_tails()
                self._stop_procs()
                if attempt == tries - 1:
                    self.close()
                    raise TimeoutError(f"{exc}\n{logs}") from None
                self._pick_ports()
            except BaseException:
                self.close()
                raise

    def _start(self, timeout: float) -> None:
        primary, replica = self.ports
        self._start_server(primary)
        self._start_server(replica, "--replicaof", "127.0.0.1", str(primary))
        conf = os.path.join(self.dir, "sentinel.conf")
        with open(conf, "w") as f:
            f.write(
                f"port {self.sentinel_port}\n"
                "bind 127.0.0.1\n"
                "protected-mode no\n"
                f"dir {self.dir}\n"
                f"logfile {os.path.join(self.dir, 'sentinel.log')}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n"
                f"sentinel down-after-milliseconds {MASTER} 500\n"
                f"sentinel failover-timeout {MASTER} 2000\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
                # Known at once: no wait for the Sentinel to discover it (up to 10 s).
                f"sentinel known-replica {MASTER} 127.0.0.1 {replica}\n"
            )
        self.procs[self.sentinel_port] = subprocess.Popen(
            [self.binary, conf, "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + timeout
        self.wait(lambda: b"master_link_status:up" in self._linked(replica), end, "the replica")
        self.wait(lambda: self._sentinel_knows_replica(), end, "the Sentinel to see the replica")

    def wait(self, predicate: object, end: float, what: str) -> None:
        assert callable(predicate)
        while not predicate():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out waiting for {what}; see {self.dir}")
            time.sleep(0.05)

    def _linked(self, replica: int) -> bytes:
        """The replica's INFO; TimeoutError at once if a server of the set has exited."""
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                raise TimeoutError(f"redis-server on port {port} exited (port taken?)")
        return self.info(replica)

    def info(self, port: int) -> bytes:
        try:
            return command(port, "INFO", "replication", timeout=0.5)
        except OSError:
            return b""

    def _sentinel_knows_replica(self) -> bool:
        try:
            reply = command(self.sentinel_port, "SENTINEL", "REPLICAS", MASTER, timeout=0.5)
        except OSError:
            return False
        return str(self.ports[1]).encode() in reply and b"s_down" not in reply

    def primary_port(self) -> int:
        """The primary's port, as the Sentinel says."""
        reply = command(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        return int(reply.split(b"\r\n")[-2])

    def replica_port(self) -> int:
        primary = self.primary_port()
        return next(p for p in self.ports if p != primary)

    def kill_primary(self) -> int:
        """SIGKILL the primary; its port."""
        port = self.primary_port()
        proc = self.procs[port]
        proc.kill()
        proc.wait()
        return port

    def wait_for_failover(self, old: int, timeout: float = 30.0) -> int:
        """Wait until the Sentinel names a new primary that accepts writes; its port."""
        end = time.monotonic() + timeout

        def promoted() -> bool:
            try:
                port = self.primary_port()
            except (OSError, ValueError, IndexError):
                return False
            return port != old and b"role:master" in self.info(port)

        self.wait(promoted, end, "the Sentinel to promote the replica")
        return self.primary_port()

    def cut_replication(self) -> None:
        """Close the primary's links to its replicas (a paused replica cannot reconnect)."""
        command(self.primary_port(), "CLIENT", "KILL", "TYPE", "replica")

    def pause(self, port: int) -> None:
        os.kill(self.procs[port].pid, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)

    def _log_tails(self) -> str:
        """The last lines of each server's log, for a failure's message."""
        out = []
        for port in self.procs:
            path = os.path.join(self.dir, str(port), "redis.log")
            if not os.path.exists(path):
                path = os.path.join(self.dir, "sentinel.log")
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    tail = f.readlines()[-8:]
            except OSError:
                continue
            out.append(f"--- {port}: {path}\n" + "".join(tail))
        return "\n".join(out)

    def _stop_procs(self) -> None:
        for port, proc in self.procs.items():
            self.resume(port)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def close(self) -> None:
        self._stop_procs()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

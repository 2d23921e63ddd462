"""The client a `SharedBucket` talks through: from a client object, or from a URL.

Accepted (docs/shared.md, "Which Redis"):

- a ``redis.Redis`` (a Sentinel-managed one too: ``Sentinel(...).master_for(name)``);
- a ``redis.cluster.RedisCluster``;
- a URL:
  - ``redis://[user:pass@]host:port/db``, ``rediss://...``, ``unix:///path?db=0``;
  - ``redis+cluster://host:port[,host:port...]``: a Redis Cluster, found from
    these seed nodes;
  - ``redis+sentinel://host:port[,host:port...]/master_name[/db]``: the primary
    that these Sentinels name `master_name`; after a failover the client asks
    them again. (``rediss+cluster://`` uses TLS; for Sentinel with TLS, pass
    your own ``master_for`` client.)

A client built from a URL has `timeout` as socket and connect timeouts and no
retries of its own (the pump retries, with backoff): a call fails fast.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

__all__ = ["connect", "durable_fills"]


def _nodes(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """'h1:p1,h2:p2' (after any 'user:pass@') as (host, port) pairs."""
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = port, str(default_port)
        host = host.strip("[]")  # an IPv6 literal
        if not host or not port.isdigit():
            raise ValueError(f"bad host:port {item!r} in a Redis URL")
        nodes.append((host, int(port)))
    return nodes


def _credentials(netloc: str) -> dict[str, Any]:
    userinfo, sep, _ = netloc.rpartition("@")
    if not sep:
        return {}
    user, has_password, password = userinfo.partition(":")
    creds: dict[str, Any] = {}
    if user:
        creds["username"] = unquote(user)
    if has_password:
        creds["password"] = unquote(password)
    return creds


def connect(client: object, timeout: float) -> tuple[Any, bool]:
    """The client to use, and whether the shared bucket owns it (and closes it).

    Raises:
        TypeError: `client` is neither a client nor a str.
        ValueError: a URL this function cannot read.
    """
    if isinstance(client, (redis.Redis, RedisCluster)):
        return client, False
    if not isinstance(client, str):
        raise TypeError(
            "client must be a redis.Redis, a redis.cluster.RedisCluster or a URL "
            "(redis://, redis+cluster://, redis+sentinel://), "
            f"got {type(client).__name__}"
        )
    kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    url = urlsplit(client)
    scheme = url.scheme.lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        if url.path not in ("", "/", "/0"):
            raise ValueError(f"a Redis Cluster has only database 0, got {client!r}")
        node: Any = ClusterNode  # untyped in redis-py
        nodes = [node(host, port) for host, port in _nodes(url.netloc, 6379)]
        cluster = RedisCluster(
            startup_nodes=nodes,
            ssl=scheme.startswith("rediss"),
            **_credentials(url.netloc),
            **kwargs,
        )
        return cluster, True
    if scheme == "redis+sentinel":
        parts = [p for p in url.path.split("/") if p]
        if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError(
                "a Sentinel URL is redis+sentinel://host:port[,host:port...]/master_name[/db], "
                f"got {client!r}"
            )
        make_sentinel: Any = Sentinel  # untyped in redis-py
        sentinel = make_sentinel(
            _nodes(url.netloc, 26379),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
            **_credentials(url.netloc),
            **kwargs,
        )
        db = int(parts[1]) if len(parts) == 2 else 0
        return sentinel.master_for(unquote(parts[0]), db=db), True
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            "client URL must start with redis://, rediss://, unix://, redis+cluster:// or "
            f"redis+sentinel://, got {client!r}"
        )
    return redis.Redis.from_url(client, **kwargs), True


def durable_fills(store: Any, client: object, replicas: int, timeout: float) -> None:
    """Make every fill of `store` wait until `replicas` replicas have it (min_replicas).

    Raises:
        ValueError: on a Redis Cluster (its client cannot send WAIT on the
            connection of the write).
    """
    if isinstance(client, RedisCluster):
        raise ValueError("min_replicas is not supported on a Redis Cluster")
    # WAIT gets half the socket timeout, so that its answer comes before the socket gives up.
    store.durable_fills(replicas, max(1, round(timeout * 500)))

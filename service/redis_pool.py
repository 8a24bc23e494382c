"""One Redis connection pool per URL for the whole process (ledger, series cache, upload jobs and limits), and a
count of the round trips made to it.

A round trip is one write of commands to a connection followed by their replies: one command, one script
(``EVALSHA``), or one pipeline/``MULTI``. It is counted where redis-py sends, so retries, health-check pings and
script reloads count too. The count is kept in total and, while a request runs, for that request (see
:func:`tally`): ``gateway_redis_round_trips_per_request`` shows it per route.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError

#: The round trips of the request being served (a one-element list, shared by the tasks it starts); None outside.
_TALLY: Final[contextvars.ContextVar[list[int] | None]] = contextvars.ContextVar("redis_round_trips", default=None)


class RoundTrips:
    """Every round trip this process made to Redis (read by the metrics collector)."""

    total = 0


def _count() -> None:
    RoundTrips.total += 1
    tally = _TALLY.get()
    if tally is not None:
        tally[0] += 1


class _Counting:
    """Counts each send, except a new connection's handshake (``HELLO``/``AUTH``/``SELECT``/``CLIENT SETINFO``:
    once per connection, not per request)."""

    _handshake = False

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        self._handshake = True
        try:
            await super().on_connect_check_health(check_health)  # type: ignore[misc]
        finally:
            self._handshake = False

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        if not self._handshake:
            _count()
        await super().send_packed_command(command, check_health)  # type: ignore[misc]


class _CountingConnection(_Counting, Connection):
    pass


class _CountingSSLConnection(_Counting, SSLConnection):
    pass


def start_tally() -> tuple[contextvars.Token[list[int] | None], list[int]]:
    """Count the round trips made from now on in this context (and by tasks started in it) in ``[n]``, until
    :func:`end_tally`."""
    counted = [0]
    return _TALLY.set(counted), counted


def end_tally(token: contextvars.Token[list[int] | None]) -> None:
    _TALLY.reset(token)


class _CountingSentinelConnection(_Counting, SentinelManagedConnection):
    pass


class _CountingSentinelSSLConnection(_Counting, SentinelManagedSSLConnection):
    pass


def _hosts(netloc: str, default_port: int, what: str) -> tuple[str | None, str | None, tuple[tuple[str, int], ...]]:
    """``[[user]:password@]host[:port][,host[:port]...]``: (user, password, the hosts and ports)."""
    userinfo, _, hosts = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    found = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":") if ":" in host else (host.strip(), "", str(default_port))
        if not name or not port.isdigit():
            raise ValueError(f"{what} {host!r}: give host:port")
        found.append((name, int(port)))
    return unquote(user) if user else None, unquote(password) if password else None, tuple(found)


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names: the sentinels, the primary's service name, the database."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    password: str | None
    username: str | None
    tls: bool


def parse_sentinel_url(url: str) -> SentinelTarget:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`` (``rediss+sentinel``:
    TLS to the primary). The password is the primary's; the sentinels are asked without one."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+sentinel", "rediss+sentinel"):
        raise ValueError("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")
    user, password, sentinels = _hosts(parts.netloc, 26379, "sentinel")
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            "give the primary's service name after the sentinels: redis+sentinel://host:26379/mymaster[/db]"
        )
    return SentinelTarget(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        password=password,
        username=user,
        tls=parts.scheme.startswith("rediss"),
    )


@dataclass(frozen=True)
class ClusterTarget:
    """What a ``redis+cluster://`` URL names: some of the cluster's nodes (the rest are discovered from them)."""

    nodes: tuple[tuple[str, int], ...]
    password: str | None
    username: str | None
    tls: bool


def parse_cluster_url(url: str) -> ClusterTarget:
    """``redis+cluster://[[user]:password@]host[:port][,host[:port]...]`` (``rediss+cluster``: TLS). A cluster has
    database 0 only, so no path is taken."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+cluster", "rediss+cluster"):
        raise ValueError("a Cluster URL starts with redis+cluster:// or rediss+cluster://")
    user, password, nodes = _hosts(parts.netloc, 6379, "cluster node")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has database 0 only: give no database after the nodes")
    return ClusterTarget(
        nodes=nodes,
        password=password,
        username=user,
        tls=parts.scheme.startswith("rediss"),
    )


def is_cluster_url(url: str | None) -> bool:
    return url is not None and "+cluster://" in url


def is_cluster(client: object) -> bool:
    """Whether ``client`` talks to a Redis Cluster (keys of one script or ``MULTI`` must share a hash slot)."""
    return isinstance(client, RedisCluster)


def socket_timeout(client: object, default: float) -> float:
    """The read timeout ``client``'s connections are made with (:func:`connect` sets it), else ``default``: a
    command that blocks on the server (``WAIT``) must answer well within it."""
    if isinstance(client, RedisCluster):
        options = client.nodes_manager.connection_kwargs
    else:
        options = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    found = options.get("socket_timeout")
    return float(found) if found else default


async def mget(client: redis.Redis, keys: list[str]) -> list[Any]:
    """``MGET``: one command on one Redis; on a Cluster, one per hash slot (not atomic across slots)."""
    found: Any = client
    if isinstance(found, RedisCluster):
        return await found.mget_nonatomic(keys)
    return await client.mget(keys)


@contextlib.contextmanager
def untallied() -> Iterator[None]:
    """Round trips made inside count in the total, not for the request: work shared by many requests (a lease of
    rate-limit tokens serves the next few)."""
    token = _TALLY.set(None)
    try:
        yield
    finally:
        _TALLY.reset(token)


@contextlib.contextmanager
def tally() -> Iterator[list[int]]:
    """Count the round trips made while inside (and by tasks started inside): ``[n]``."""
    token, counted = start_tally()
    try:
        yield counted
    finally:
        end_tally(token)


def connect(url: str, *, timeout: float, **options: Any) -> redis.Redis:
    """A client for ``url`` (``redis://``, ``rediss://``, ``redis+sentinel://`` for the primary a group of
    sentinels names, or ``redis+cluster://`` for a Redis Cluster) with its own pool. A pooled connection a restarted
    Redis no longer knows fails its next command: each call is tried once more on a fresh connection, so every
    caller must be able to run a call twice (the ledger's scripts are written so)."""
    if "+sentinel://" in url:
        return _sentinel_client(parse_sentinel_url(url), timeout, **options)
    if "+cluster://" in url:
        return _cluster_client(parse_cluster_url(url), timeout, **options)
    tls = url.startswith("rediss://")
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
        connection_class=_CountingSSLConnection if tls else _CountingConnection,
        **options,
    )


def _sentinel_client(target: SentinelTarget, timeout: float, **options: Any) -> redis.Redis:
    """The primary of a Sentinel-watched group: asked of the sentinels at connect time and again after a failover
    (a connection to a demoted primary is dropped on its first READONLY answer, and the call is tried once more)."""
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), socket_timeout=timeout, socket_connect_timeout=timeout, min_other_sentinels=0
    )
    client: redis.Redis = sentinel.master_for(
        target.service,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        db=target.db,
        password=target.password,
        username=target.username,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError, ReadOnlyError],
        connection_class=_CountingSentinelSSLConnection if target.tls else _CountingSentinelConnection,
        **options,
    )
    return client


def _cluster_client(target: ClusterTarget, timeout: float, **options: Any) -> redis.Redis:
    """A Redis Cluster client: it learns which node serves which hash slot from the nodes given, follows
    ``MOVED``/``ASK`` redirections, and after a failover (a node down, the cluster briefly down) learns the
    slots again and tries the call again, twice, with a short backoff: a call may run more than once, as
    with the other clients. Typed as :class:`redis.asyncio.Redis`: the callers use the commands both have
    (and :func:`is_cluster` where a command must differ)."""
    counting = _CountingSSLConnection if target.tls else _CountingConnection
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
        password=target.password,
        username=target.username,
        ssl=target.tls,
        **options,
    )
    # Count round trips as on one Redis: the nodes discovered later are made with these connection options.
    client.nodes_manager.connection_kwargs["connection_class"] = counting
    for node in client.startup_nodes:
        node.connection_class = counting
    return cast("redis.Redis", client)


class RedisPools:
    """The process's clients, one per URL: the ledger, the jobs and the limits on ``REDIS_URL`` share one pool,
    and the series cache shares it too when ``CACHE_URL`` is the same URL. Closed once, by the application."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._clients: dict[str, redis.Redis] = {}

    def client(self, url: str) -> redis.Redis:
        found = self._clients.get(url)
        if found is None:
            found = self._clients[url] = connect(url, timeout=self._timeout)
        return found

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.aclose()

"""How the Redis backend reaches Redis: one server, a Redis Cluster, or a primary that
Redis Sentinel manages (and fails over); the clients for each, described without secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff

from sidecar.config.model import REDIS_MODES, redis_urls, url_passwords

#: A client of any mode: both speak the commands the backend uses.
Client = Redis | RedisCluster

SCHEMES = ("redis", "rediss", "unix")
#: Ports a URL without one means: Redis Sentinel's own, else Redis's.
DEFAULT_PORTS = {"sentinel": 26379, "cluster": 6379, "standalone": 6379}
#: Retries of a command after a connection error or timeout, with backoff.
RETRIES = 3


def describe_url(url: str) -> str:
    """``url`` without credentials or query: safe for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ":<invalid port>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def cluster_prefix(prefix: str) -> str:
    """``prefix`` with a hash tag, so every key of a deployment lands in one cluster slot.

    Redis hashes only the part between the first ``{`` and the next ``}`` when that part
    is not empty; a prefix holding such a tag is kept, any other is wrapped in braces
    before its trailing ``:`` (``sidecar:`` -> ``{sidecar}:``).
    """
    start = prefix.find("{")
    if start >= 0 and prefix.find("}", start + 1) > start + 1:
        return prefix
    body = prefix[:-1] if prefix.endswith(":") and len(prefix) > 1 else prefix
    return "{" + body + "}" + prefix[len(body):]


class _QueuedCluster(RedisCluster):
    """A Redis Cluster client whose calls wait, up to ``wait`` seconds, for one of
    ``max_in_flight`` places, as the standalone and Sentinel pools wait for a connection.
    redis-py's cluster pools fail a call at once when a node's connections are all in
    use: a burst (webhooks, publishes) would get errors instead of queueing. With at
    most ``max_in_flight`` calls out in all, no node's pool is ever short."""

    def __init__(self, *args: Any, max_in_flight: int, wait: float, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "max_connections": max_in_flight})
        self._places = asyncio.Semaphore(max_in_flight)
        self._wait = wait

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        places = self._places
        if places.locked():
            try:
                async with asyncio.timeout(self._wait):
                    await places.acquire()
            except TimeoutError:
                raise redis_errors.ConnectionError(
                    f"no free connection to the cluster within {self._wait:g}s") from None
        else:
            await places.acquire()
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            places.release()


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The primary's pool under Sentinel: asks the sentinels where the primary is (and
    drops connections to a demoted one) and, like the standalone pool, waits for a
    free connection instead of failing a burst."""


def _settings(urls: list[str]) -> dict[str, Any]:
    """Connection settings of a URL list but the addresses: credentials, database, TLS
    and query options (configuration checks that the URLs agree on them)."""
    out: dict[str, Any] = {}
    for url in urls:
        kwargs: dict[str, Any] = dict(parse_url(url))
        kwargs.pop("host", None)
        kwargs.pop("port", None)
        if kwargs.pop("connection_class", None) is SSLConnection:
            kwargs["ssl"] = True
        out.update({k: v for k, v in kwargs.items() if v not in (None, "")})
    return out


class RedisEndpoint:
    """Where Redis is (``mode`` and URL, or comma-separated URLs for the cluster's seed
    nodes or the sentinels) and the clients that reach it."""

    def __init__(self, url: str, *, mode: str = "standalone", master_name: str = "",
                 sentinel_password: str = "", socket_timeout: float,
                 max_connections: int, health_check_interval: float) -> None:
        if mode not in REDIS_MODES:
            raise ValueError(f"the redis mode must be one of {', '.join(REDIS_MODES)}; "
                             f"got {mode!r}")
        self.urls = [url] if mode == "standalone" else redis_urls(url)
        schemes = SCHEMES if mode == "standalone" else ("redis", "rediss")
        for part in self.urls or [""]:
            scheme = urllib.parse.urlsplit(part).scheme
            if scheme not in schemes:
                # Never echo the URL: it may hold a password.
                raise ValueError(
                    f"a redis URL in {mode} mode must start with "
                    f"{', '.join(s + '://' for s in schemes)}; got a "
                    f"{scheme or 'scheme-less'} URL")
        if mode == "sentinel" and not master_name:
            raise ValueError("sentinel mode needs the name of the master the sentinels monitor")
        self.mode = mode
        self.master_name = master_name
        self._sentinel_password = sentinel_password
        self.passwords = [p for u in self.urls for p in url_passwords(u)]
        if sentinel_password:
            self.passwords.append(sentinel_password)
        where = ", ".join(describe_url(u) for u in self.urls)
        self.where = {"standalone": where, "cluster": f"cluster {where}",
                      "sentinel": f"sentinel master {master_name!r} via {where}"}[mode]
        self._timeouts: dict[str, Any] = {
            "socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout,
            "health_check_interval": health_check_interval}
        self._socket_timeout = socket_timeout
        self._max_connections = max_connections
        self._sentinel: Sentinel | None = None

    def _addresses(self) -> list[tuple[str, int]]:
        default = DEFAULT_PORTS[self.mode]
        return [(parts.hostname or "localhost", parts.port or default)
                for parts in map(urllib.parse.urlsplit, self.urls)]

    def _retry(self) -> Retry:
        return Retry(ExponentialBackoff(), RETRIES)

    def _sentinels(self) -> Sentinel:
        if self._sentinel is None:
            settings = _settings(self.urls)
            # The sentinels share the URLs' TLS settings, not the primary's credentials.
            for key in ("username", "password", "db"):
                settings.pop(key, None)
            self._sentinel = Sentinel(
                self._addresses(),
                sentinel_kwargs={**settings, **self._timeouts,
                                 "password": self._sentinel_password or None})
        return self._sentinel

    def _cluster(self, queued: bool = False) -> RedisCluster:
        nodes = [ClusterNode(h, p) for h, p in self._addresses()]
        settings = {"retry": self._retry(), **self._timeouts, **_settings(self.urls)}
        if queued:
            return _QueuedCluster(startup_nodes=nodes, max_in_flight=self._max_connections,
                                  wait=self._socket_timeout, **settings)
        return RedisCluster(startup_nodes=nodes, **settings)

    def _master(self, **pool: Any) -> Redis:
        client: Redis = self._sentinels().master_for(
            self.master_name, retry=self._retry(), **self._timeouts, **_settings(self.urls),
            **pool)
        return client

    def client(self) -> Client:
        """The pooled client every call shares."""
        if self.mode == "cluster":
            return self._cluster(queued=True)
        if self.mode == "sentinel":
            return self._master(connection_pool_class=_BlockingSentinelPool,
                                max_connections=self._max_connections,
                                timeout=self._socket_timeout)
        pool = BlockingConnectionPool.from_url(
            self.urls[0], max_connections=self._max_connections, timeout=self._socket_timeout,
            retry=self._retry(), **self._timeouts)
        return Redis.from_pool(pool)

    def follower(self) -> Client:
        """A client of its own for blocking reads, which must not hold a pooled
        connection that calls need."""
        if self.mode == "cluster":
            return self._cluster()
        if self.mode == "sentinel":
            return self._master()
        return Redis.from_url(self.urls[0], retry=self._retry(), **self._timeouts)

    async def close(self) -> None:
        """Closes the connections to the sentinels (the clients close their own)."""
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await sentinel.aclose()

"""The multi-replica storage backend: one Redis shared by every sidecar replica.

Same semantics as ``SqliteStorage`` (both pass ``tests/contract``); each step
that must be atomic is one Lua script, so replicas never race. Times are the
callers' (``now``), compared in the scripts; key TTLs are only a backstop that
frees memory a little after a record expired (``EXPIRY_GRACE``, in ``redis_keys``).

Key layout (``{p}`` is the key prefix, ``<x>`` an escaped name, see
``redis_keys``)::

    {p}schema                   string  version of this layout
    {p}topics                   hash    topic -> last offset (the per-topic counter)
    {p}log:<topic>              stream  the topic's events; entry id ``0-<offset>``,
                                        fields id, type, data, ct, attrs, time
    {p}evt:<event id>           string  offset, for 60 s: a retried append is a no-op
    {p}idem:<scope>:<key>       hash    fp, state, resp, created, exp    (TTL)
    {p}idx:idem                 zset    "<scope>:<key>" by exp, for prune
    {p}wh:<source>:<dedup key>  hash    event_id, topic, seq, headers, received, exp (TTL)
    {p}idx:wh                   zset    "<source>:<dedup key>" by exp, for prune
    {p}groups                   set     consumer group names
    {p}g:<group>:cur            hash    topic -> cursor (last offset handed to the group)
    {p}g:<group>:rec            hash    event id -> JSON record: t topic, s offset,
                                        st status, a attempts, c consumer, d due, e error,
                                        u updated at
    {p}g:<group>:due:<topic>    zset    event id by due time (delivered and failed only)
    {p}g:<group>:cnt            hash    "<topic>:<status>" -> records in that status

Events beyond a group's cursor are its PENDING ones, as in SQLite. Durable
groups live on these plain structures rather than on stream consumer groups:
a per-record due time, attempt count, dead state and replay are exactly the
contract's, which XPENDING/XAUTOCLAIM would only approximate.

The pool retries a command (``RETRIES``, exponential backoff) after a
connection error or timeout, so a command may run twice: appends and ingests
recognise their own event id and store it once; a repeated claim's first
deliveries come back after the ack timeout, as at-least-once allows.

Scripts build key names from the prefix, so this needs one Redis (or a
Sentinel-managed primary), not a Cluster. For durability run Redis with AOF
(``appendonly yes``). In-flight deliveries are not reset on ``open``: other
replicas may hold them; a dead replica's come back after the ack timeout.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from sidecar.clock import Clock
from sidecar.core.resilience.rate_limit import RateLimiter, RateLimitPolicy
from sidecar.errors import StorageUnavailable
from sidecar.storage.base import ClaimStatus, IdempotencyClaim
from sidecar.storage.migrations import SchemaTooNew
from sidecar.storage.redis_events import RedisEventsMixin
from sidecar.storage.redis_keys import RedisKeys, num, ttl_ms
from sidecar.storage.redis_ratelimit import SharedTokenBucket
from sidecar.storage.redis_scripts import RedisScripts

#: Version of the key layout above; bump it with a conversion when it changes.
SCHEMA_VERSION = 1
DEFAULT_KEY_PREFIX = "sidecar:"
#: Seconds a command may take before the call fails (and the pool retries).
DEFAULT_SOCKET_TIMEOUT = 2.0
#: Connections per replica, at least the webhook edge's default concurrency (256), so
#: a burst never waits on the pool; a caller waits up to the socket timeout for one.
DEFAULT_MAX_CONNECTIONS = 256
#: Seconds a pooled connection may idle before it is PINGed on reuse, so a
#: connection Redis dropped (restart, idle timeout) is replaced, not failed on.
DEFAULT_HEALTH_CHECK_INTERVAL = 30.0
#: Retries of a command after a connection error or timeout, with backoff.
RETRIES = 3
SCHEMES = ("redis", "rediss", "unix")


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


class RedisStorage(RedisEventsMixin):
    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in SCHEMES:
            # Never echo the URL: it may hold a password.
            raise ValueError(f"redis URL must start with redis://, rediss:// or unix://; "
                             f"got a {parts.scheme or 'scheme-less'} URL")
        if not key_prefix:
            raise ValueError("the key prefix must not be empty")
        self._url = url
        self._passwords = [p for p in (urllib.parse.unquote(parts.password or ""),
                                       *urllib.parse.parse_qs(parts.query).get("password", []))
                           if p]
        self.where = describe_url(url)
        self.key_prefix = key_prefix
        self._socket_timeout = socket_timeout
        self._max_connections = max_connections
        self._health_check_interval = health_check_interval
        self._keys = RedisKeys(key_prefix)
        self._client: Redis | None = None
        self._follower: Redis | None = None
        self._scripts_obj: RedisScripts | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._client is not None:
            return
        pool = BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            timeout=self._socket_timeout,
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._socket_timeout,
            retry=Retry(ExponentialBackoff(), RETRIES),
            health_check_interval=self._health_check_interval,
        )
        client = Redis.from_pool(pool)
        try:
            with self._errors():
                await client.ping()
                await self._ensure_schema(client)
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._scripts_obj = RedisScripts(client)

    async def _ensure_schema(self, client: Redis) -> None:
        await client.set(self._keys.schema, SCHEMA_VERSION, nx=True)
        have = int(await client.get(self._keys.schema) or 0)
        if have > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the redis keys under prefix {self.key_prefix!r} are at layout version {have} "
                f"but this sidecar knows versions up to {SCHEMA_VERSION}; upgrade the sidecar "
                "or use another key prefix")

    async def close(self) -> None:
        client, self._client = self._client, None
        follower, self._follower = self._follower, None
        self._scripts_obj = None
        for c in (client, follower):
            if c is not None:
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    await c.aclose()

    def rate_limiter(self, name: str, policy: RateLimitPolicy, clock: Clock) -> RateLimiter:
        """A bucket shared by every replica on this Redis (and key prefix)."""
        return SharedTokenBucket(lambda: self.redis, f"{self.key_prefix}rl:{name}", policy,
                                 clock, self._errors)

    def _follow_client(self) -> Redis:
        if self._client is None:
            raise StorageUnavailable("storage is closed")
        if self._follower is None:
            self._follower = Redis.from_url(
                self._url, socket_timeout=self._socket_timeout,
                socket_connect_timeout=self._socket_timeout,
                retry=Retry(ExponentialBackoff(), RETRIES),
                health_check_interval=self._health_check_interval)
        return self._follower

    @property
    def redis(self) -> Redis:
        if self._client is None:
            raise StorageUnavailable("storage is closed")
        return self._client

    @property
    def _scripts(self) -> RedisScripts:
        if self._scripts_obj is None:
            raise StorageUnavailable("storage is closed")
        return self._scripts_obj

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Translate redis-py's errors into ``StorageUnavailable`` (never a raw one)."""
        try:
            yield
        except redis_errors.AuthenticationError as exc:
            raise StorageUnavailable(
                f"redis at {self.where} refused the credentials: {self._scrub(exc)}") from exc
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise StorageUnavailable(
                f"redis at {self.where} is unreachable: {self._scrub(exc)}") from exc
        except redis_errors.RedisError as exc:
            raise StorageUnavailable(
                f"redis at {self.where} failed: {self._scrub(exc)}") from exc

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        for password in self._passwords:
            text = text.replace(password, "<redacted>")
        return text

    async def check(self) -> None:
        with self._errors():
            await self.redis.ping()

    async def schema_version(self) -> int:
        with self._errors():
            return int(await self.redis.get(self._keys.schema) or 0)

    # ------------------------------------------------------------------ idempotency

    def _idempotency_keys(self, scope: str, key: str) -> tuple[list[str], str]:
        member = RedisKeys.member(scope, key)
        return [self._keys.idempotency_base + member, self._keys.idempotency_index], member

    async def idempotency_claim(
        self, scope: str, key: str, fingerprint: str, *, now: float, lease: float
    ) -> IdempotencyClaim:
        keys, member = self._idempotency_keys(scope, key)
        with self._errors():
            reply: list[Any] = await self._scripts.idempotency_claim(
                keys=keys, args=[member, fingerprint, num(now), num(now + lease), ttl_ms(lease)])
        status = ClaimStatus(reply[0].decode())
        return IdempotencyClaim(status, bytes(reply[1]) if len(reply) > 1 else None)

    async def idempotency_complete(
        self, scope: str, key: str, response: bytes, *, now: float, ttl: float
    ) -> None:
        keys, member = self._idempotency_keys(scope, key)
        with self._errors():
            await self._scripts.idempotency_complete(
                keys=keys, args=[member, response, num(now + ttl), ttl_ms(ttl)])

    async def idempotency_release(self, scope: str, key: str) -> None:
        keys, member = self._idempotency_keys(scope, key)
        with self._errors():
            await self._scripts.idempotency_release(keys=keys, args=[member])

    # ------------------------------------------------------------------ retention

    async def prune(self, *, now: float, limit: int = 1000,
                    events_before: float | None = None,
                    durable_topics: Mapping[str, float] | None = None,
                    max_per_topic: int | None = None) -> int:
        """Expired idempotency and de-duplication records (at most ``limit`` each),
        then the head of each topic's stream (at most ``limit`` events per topic)."""
        keys = self._keys
        with self._errors():
            removed = 0
            for index, base in ((keys.idempotency_index, keys.idempotency_base),
                                (keys.webhook_index, keys.webhook_base)):
                removed += int(await self._scripts.prune_expired(
                    keys=[index], args=[base, num(now), limit]))
            removed += await self._prune_events(limit, events_before, dict(durable_topics or {}),
                                                max_per_topic)
        return removed

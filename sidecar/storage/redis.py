"""The multi-replica storage backend: one Redis (a server, a Sentinel-managed primary or
a Redis Cluster) shared by every sidecar replica.

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
    {p}q:...                    queued calls (see ``redis_queue``)

Events beyond a group's cursor are its PENDING ones, as in SQLite. Durable
groups live on these plain structures rather than on stream consumer groups:
a per-record due time, attempt count, dead state and replay are exactly the
contract's, which XPENDING/XAUTOCLAIM would only approximate.

The pool retries a command (``RETRIES``, exponential backoff) after a
connection error or timeout, so a command may run twice: appends and ingests
recognise their own event id and store it once; a repeated claim's first
deliveries come back after the ack timeout, as at-least-once allows.

Modes (``redis_endpoint``): ``standalone``, one Redis URL; ``sentinel``, the
primary that Redis Sentinel names (the client asks the sentinels again after a
failover and follows it); ``cluster``, a Redis Cluster (cluster-mode ElastiCache,
MemoryDB, Memorystore Cluster, a self-run one). Scripts build key names from the
prefix, and a cluster runs a script only when all its keys share one hash slot:
in cluster mode the prefix carries a hash tag (``sidecar:`` becomes
``{sidecar}:``, see ``cluster_prefix``), every script names one real key in
KEYS so the client sends it to that slot's node, and blocking reads span one
slot too. So a cluster works, but all of one deployment's keys live on one
shard: the cluster gives availability and room for other apps' keys, not
sharding of the sidecar's own data. For durability run Redis with AOF
(``appendonly yes``). In-flight deliveries are not reset on ``open``: other
replicas may hold them; a dead replica's come back after the ack timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from redis import exceptions as redis_errors

from sidecar.clock import Clock
from sidecar.core.idempotency import ClaimStatus, IdempotencyClaim
from sidecar.core.resilience.rate_limit import RateLimiter, RateLimitPolicy
from sidecar.errors import StorageUnavailable
from sidecar.storage.migrations import SchemaTooNew
from sidecar.storage.redis_endpoint import Client, RedisEndpoint, cluster_prefix
from sidecar.storage.redis_events import RedisEventsMixin
from sidecar.storage.redis_keys import RedisKeys, num, ttl_ms
from sidecar.storage.redis_queue import QueueScripts, RedisQueueMixin
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


class RedisStorage(RedisEventsMixin, RedisQueueMixin):
    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        health_check_interval: float = DEFAULT_HEALTH_CHECK_INTERVAL,
        mode: str = "standalone",
        master_name: str = "",
        sentinel_password: str = "",
    ) -> None:
        """``url``: one URL; in ``cluster`` mode the seed nodes', in ``sentinel`` mode
        the sentinels' URLs, comma separated (``master_name`` names the primary)."""
        if not key_prefix:
            raise ValueError("the key prefix must not be empty")
        self._endpoint = RedisEndpoint(
            url, mode=mode, master_name=master_name, sentinel_password=sentinel_password,
            socket_timeout=socket_timeout, max_connections=max_connections,
            health_check_interval=health_check_interval)
        self._passwords = self._endpoint.passwords
        self.where = self._endpoint.where
        self.mode = mode
        #: In cluster mode with a hash tag (``cluster_prefix``): one slot for all keys.
        self.key_prefix = cluster_prefix(key_prefix) if mode == "cluster" else key_prefix
        self._keys = RedisKeys(self.key_prefix)
        self._client: Client | None = None
        self._follower: Client | None = None
        self._scripts_obj: RedisScripts | None = None
        self._queue_scripts_obj: QueueScripts | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._client is not None:
            return
        with self._errors():
            client = self._endpoint.client()
        try:
            with self._errors():
                await client.ping()
                await self._ensure_schema(client)
        except BaseException:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await client.aclose()
            await self._endpoint.close()
            raise
        self._client = client
        self._scripts_obj = RedisScripts(client)
        self._queue_scripts_obj = QueueScripts(client)

    async def _ensure_schema(self, client: Client) -> None:
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
        self._queue_scripts_obj = None
        for c in (client, follower):
            if c is not None:
                with contextlib.suppress(redis_errors.RedisError, OSError):
                    await c.aclose()
        await self._endpoint.close()

    def rate_limiter(self, name: str, policy: RateLimitPolicy, clock: Clock) -> RateLimiter:
        """A bucket shared by every replica on this Redis (and key prefix)."""
        return SharedTokenBucket(lambda: self.redis, f"{self.key_prefix}rl:{name}", policy,
                                 clock, self._errors)

    def _follow_client(self) -> Client:
        if self._client is None:
            raise StorageUnavailable("storage is closed")
        if self._follower is None:
            self._follower = self._endpoint.follower()
        return self._follower

    @property
    def redis(self) -> Client:
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
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        try:
            yield
            if task is not None and task.cancelling() > cancelling:
                # A cancellation that came during the command and did not end it was
                # lost: on Python 3.11, redis-py's commands run under asyncio.wait_for,
                # which drops one landing in the turn the answer arrives. Hand it on
                # (as 3.12 would), or a task being stopped would run on. One that came
                # before (clean-up in an except block) is no concern of this command.
                raise asyncio.CancelledError
        except redis_errors.AuthenticationError as exc:
            raise StorageUnavailable(
                f"redis at {self.where} refused the credentials: {self._scrub(exc)}") from exc
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            raise StorageUnavailable(
                f"redis at {self.where} is unreachable: {self._scrub(exc)}") from exc
        except (redis_errors.RedisError, redis_errors.RedisClusterException) as exc:
            # RedisClusterException (no reachable node, slot not covered) is no RedisError.
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

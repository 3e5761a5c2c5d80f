"""A token bucket every replica shares (GCRA in one Lua script, on Redis's clock).

Same policy and answers as the local ``TokenBucket``: a call takes a token now,
or reserves the next free slot and waits for it within its ``max_wait``, or is
refused with a retry delay. Redis's own ``TIME`` is the clock, so replicas
with skewed clocks still agree.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from redis.commands.core import AsyncScript

from sidecar.clock import Clock
from sidecar.core.resilience.rate_limit import RateLimitedError, RateLimitPolicy
from sidecar.storage.redis_endpoint import Client

# KEYS[1] the bucket's TAT. ARGV: interval, span (burst as time), tokens,
# max_wait (-1: never wait), ttl ms. Returns {status, seconds}: status 0 taken
# now, 1 reserved (wait seconds), -1 refused (retry after seconds).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, span = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, max_wait = tonumber(ARGV[3]), tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + tokens * interval
local wait = new - span - now
if wait <= 1e-9 then
  redis.call('SET', KEYS[1], tostring(new), 'PX', ARGV[5])
  return {0, '0'}
end
if max_wait < 0 or wait > max_wait then
  return {-1, tostring(wait)}
end
redis.call('SET', KEYS[1], tostring(new), 'PX', ARGV[5])
return {1, tostring(wait)}
"""

# KEYS[1] the bucket's TAT. ARGV: seconds, span, interval, ttl ms.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local target = now + tonumber(ARGV[1]) + tonumber(ARGV[2]) - tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if target > tat then
  redis.call('SET', KEYS[1], tostring(target), 'PX', ARGV[4])
end
return 1
"""


class SharedTokenBucket:
    def __init__(self, redis: Callable[[], Client], key: str, policy: RateLimitPolicy,
                 clock: Clock,
                 errors: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        self._errors = errors
        # A getter: buckets are built with the pipeline, before storage connects.
        self._redis = redis
        self._key = key
        self._policy = policy
        self._clock = clock
        self._interval = 1.0 / policy.rate
        self._span = policy.burst * self._interval
        # The key outlives the longest state it can hold, then frees itself.
        self._ttl_ms = int((self._span + 3600.0) * 1000)
        self._scripts: tuple[AsyncScript, AsyncScript] | None = None

    def _script(self, index: int) -> AsyncScript:
        if self._scripts is None:
            client = self._redis()
            self._scripts = (client.register_script(_ACQUIRE), client.register_script(_PAUSE))
        return self._scripts[index]

    @property
    def policy(self) -> RateLimitPolicy:
        return self._policy

    async def acquire(self, max_wait: float, tokens: int = 1) -> float:
        if not 1 <= tokens <= self._policy.burst:
            raise ValueError(f"tokens must be between 1 and burst ({self._policy.burst})")
        limit = -1.0 if self._policy.on_limit == "reject" else max(0.0, max_wait)
        with self._errors():
            status, seconds = await self._script(0)(
                keys=[self._key], args=[repr(self._interval), repr(self._span), tokens,
                                        repr(limit), self._ttl_ms])
        wait = float(seconds)
        if int(status) < 0:
            raise RateLimitedError(f"shared rate limit of {self._policy.rate:g}/s reached",
                                   retry_after=wait)
        if int(status) == 1:
            await self._clock.sleep(wait)
            return wait
        return 0.0

    async def pause_for(self, seconds: float) -> None:
        with self._errors():
            await self._script(1)(keys=[self._key], args=[repr(seconds), repr(self._span),
                                                      repr(self._interval), self._ttl_ms])

"""Redis queued calls (``sidecar.core.calls.queue.store.QueueStore``), shared by replicas.

A mixin of ``RedisStorage``. Every state change is one Lua script, so two replicas
never take the same call: a call RUNNING is leased to one replica until ``lease
until``; the replica renews its leases while its attempts run, and a dead replica's
calls are taken over (due again) once their lease runs out.

Key layout (``{p}`` the prefix, ``<x>`` escaped as in ``redis_keys``)::

    {p}q:c:<id>            hash    doc (the call, codec JSON, as last written),
                                   st state, i integration, ok ordering key, seq,
                                   own owner, lu lease until, cr cancel requested,
                                   an announced, ik idempotency key
    {p}q:idem              hash    "<integration>:<key>" -> id
    {p}q:due:<integration> zset    QUEUED ids by due time
    {p}q:run               zset    RUNNING ids by lease until
    {p}q:ord:<i>:<key>     zset    unfinished ids of an ordering key, by seq
    {p}q:all               zset    every id by seq (listings)
    {p}q:cnt               hash    "<integration>:<state>" -> calls
    {p}q:ints              set     integrations with calls
    {p}q:unann             set     finished ids whose outcome is not yet appended
    {p}q:done              zset    finished ids by finish time (pruning)
    {p}q:seq               string  enqueue counter

The ``st`` field is the truth about a call's state (a take changes it without
rewriting ``doc``); everything else a transition changes, Python computes and
hands over as the new ``doc`` (compare-and-set on ``st``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from redis.commands.core import AsyncScript

from sidecar.core.calls.queue.codec import decode_call, encode_call
from sidecar.core.calls.queue.models import QueuedCall, QueuedState
from sidecar.core.calls.queue.store import settled
from sidecar.errors import StorageUnavailable
from sidecar.storage.redis_endpoint import Client
from sidecar.storage.redis_keys import escape, num, unescape
from sidecar.storage.redis_scripts import _PRELUDE

#: Due calls one take or next-due script looks at per integration.
SCAN = 500
#: Compare-and-set retries of a cancel or replay racing with an attempt.
CAS_TRIES = 5

_Q = _PRELUDE + r"""
local function ckey(id) return P .. 'q:c:' .. esc(id) end
local function due_key(i) return P .. 'q:due:' .. esc(i) end
local function ord_key(i, k) return P .. 'q:ord:' .. esc(i) .. ':' .. esc(k) end
local FINAL = {succeeded = true, failed = true, dead = true, cancelled = true}
local function count(i, st, d)
  local f = esc(i) .. ':' .. st
  if redis.call('HINCRBY', P .. 'q:cnt', f, d) <= 0 then redis.call('HDEL', P .. 'q:cnt', f) end
end
local function view(id)
  return redis.call('HMGET', ckey(id), 'doc', 'st', 'cr', 'an')
end
-- Move call ``id`` to state ``st`` (doc: its new JSON, or false to keep it), keeping
-- every index in step. ``at``: its due time when QUEUED, lease end when RUNNING, the
-- time it finished when final.
local function move(id, st, doc, at, owner)
  local c = ckey(id)
  local old = redis.call('HMGET', c, 'st', 'i', 'ok', 'seq')
  local ost, i, ok, seq = old[1], old[2], old[3], old[4]
  count(i, ost, -1)
  count(i, st, 1)
  redis.call('ZREM', due_key(i), id)
  redis.call('ZREM', P .. 'q:run', id)
  if st == 'queued' then redis.call('ZADD', due_key(i), at, id) end
  if st == 'running' then
    redis.call('ZADD', P .. 'q:run', at, id)
    redis.call('HSET', c, 'own', owner, 'lu', num(at))
  end
  if ok ~= '' then
    if FINAL[st] then redis.call('ZREM', ord_key(i, ok), id)
    else redis.call('ZADD', ord_key(i, ok), seq, id) end
  end
  if FINAL[st] then redis.call('ZADD', P .. 'q:done', at, id)
  else redis.call('ZREM', P .. 'q:done', id) end
  if FINAL[st] and st ~= 'cancelled' then
    redis.call('SADD', P .. 'q:unann', id)
    redis.call('HSET', c, 'an', '0')
  else
    redis.call('SREM', P .. 'q:unann', id)
  end
  redis.call('HSET', c, 'st', st)
  if doc then redis.call('HSET', c, 'doc', doc) end
end
local function head(i, ok, id)
  if ok == '' then return true end
  local first = redis.call('ZRANGE', ord_key(i, ok), 0, 0)
  return first[1] == id
end
"""

# KEYS: {p}q:seq. ARGV: P, id, integration, key, ordering key, due, doc.
# Returns {1} when added, else {0, view of the call holding the key}.
ADD = _Q + r"""
local id, i, key, ok, due, doc = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local m = esc(i) .. ':' .. esc(key)
local held = redis.call('HGET', P .. 'q:idem', m)
if held then return {0, view(held)} end
local seq = redis.call('INCR', P .. 'q:seq')
redis.call('HSET', P .. 'q:idem', m, id)
redis.call('HSET', ckey(id), 'doc', doc, 'st', 'queued', 'i', i, 'ok', ok, 'seq', seq,
           'own', '', 'lu', '0', 'cr', '0', 'an', '0', 'ik', key)
redis.call('ZADD', P .. 'q:all', seq, id)
redis.call('SADD', P .. 'q:ints', i)
count(i, 'queued', 1)
redis.call('ZADD', due_key(i), due, id)
if ok ~= '' then redis.call('ZADD', ord_key(i, ok), seq, id) end
return {1}
"""

# KEYS: {p}q:seq. ARGV: P, now, owner, lease until, scan, then integration, wanted pairs.
# First makes calls whose lease ran out (a dead replica's) due again, then leases due
# calls: {taken over, {id, view}...}.
TAKE = _Q + r"""
local now, owner, lu, scan = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local over = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. 'q:run', '-inf', now, 'LIMIT', 0, scan)) do
  move(id, 'queued', false, now, '')
  over = over + 1
end
local out = {}
for a = 6, #ARGV, 2 do
  local i, want = ARGV[a], tonumber(ARGV[a + 1])
  local ids = redis.call('ZRANGEBYSCORE', due_key(i), '-inf', now, 'LIMIT', 0, scan)
  for _, id in ipairs(ids) do
    if want <= 0 then break end
    local ok = redis.call('HGET', ckey(id), 'ok')
    if head(i, ok, id) then
      move(id, 'running', false, lu, owner)
      out[#out + 1] = {id, view(id)}
      want = want - 1
    end
  end
end
return {over, out}
"""

# KEYS: {p}q:seq. ARGV: P, id, owner, doc, state, due, doc if cancelled meanwhile.
# Settles an attempt of a call leased to ``owner``: {1, view} or {0} (lease lost).
SETTLE = _Q + r"""
local id, owner = ARGV[2], ARGV[3]
local cur = redis.call('HMGET', ckey(id), 'st', 'own', 'cr')
if cur[1] ~= 'running' or cur[2] ~= owner then return {0} end
local doc, st, at = ARGV[4], ARGV[5], tonumber(ARGV[6])
if cur[3] == '1' and not FINAL[st] then doc, st = ARGV[7], 'cancelled' end
move(id, st, doc, at, '')
return {1, view(id)}
"""

# KEYS: {p}q:seq. ARGV: P, id, expected state, new state ('' : only set cr), doc, due.
# A cancel or replay, if the call is still in the expected state: {1, view} or {0, view}.
CHANGE = _Q + r"""
local id, expect, st, doc, at = ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6])
local cur = redis.call('HGET', ckey(id), 'st')
if not cur then return {0} end
if cur ~= expect then return {0, view(id)} end
if st == '' then
  redis.call('HSET', ckey(id), 'cr', '1')
else
  redis.call('HSET', ckey(id), 'cr', '0')
  move(id, st, doc, at, '')
end
return {1, view(id)}
"""

# KEYS: {p}q:seq. ARGV: P, owner, lease until, ids... Renews the owner's leases.
RENEW = _Q + r"""
local owner, lu = ARGV[2], tonumber(ARGV[3])
local n = 0
for a = 4, #ARGV do
  local id = ARGV[a]
  local cur = redis.call('HMGET', ckey(id), 'st', 'own')
  if cur[1] == 'running' and cur[2] == owner then
    redis.call('ZADD', P .. 'q:run', lu, id)
    redis.call('HSET', ckey(id), 'lu', num(lu))
    n = n + 1
  end
end
return n
"""

# KEYS: {p}q:seq. ARGV: P, scan, integrations... The earliest due time of a call that
# could be taken then (the head of its ordering key), or of a lease that runs out.
NEXT_DUE = _Q + r"""
local scan = tonumber(ARGV[2])
local best = nil
local function consider(t) if best == nil or t < best then best = t end end
local run = redis.call('ZRANGE', P .. 'q:run', 0, 0, 'WITHSCORES')
if run[2] then consider(tonumber(run[2])) end
for a = 3, #ARGV do
  local i = ARGV[a]
  local ids = redis.call('ZRANGE', due_key(i), 0, scan - 1, 'WITHSCORES')
  for k = 1, #ids, 2 do
    local id, t = ids[k], tonumber(ids[k + 1])
    -- A follower is taken once its head settles, which wakes the loop; a head beyond
    -- the scan is seen at the loop's next look (at most a minute).
    if head(i, redis.call('HGET', ckey(id), 'ok'), id) then consider(t) break end
  end
end
if best == nil then return false end
return num(best)
"""

# KEYS: {p}q:seq. ARGV: P, cutoff, limit. Deletes calls finished before the cutoff (their
# idempotency keys are free again); returns how many.
PRUNE = _Q + r"""
local ids = redis.call('ZRANGEBYSCORE', P .. 'q:done', '-inf', '(' .. ARGV[2], 'LIMIT', 0,
                       tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local c = redis.call('HMGET', ckey(id), 'st', 'i', 'ik')
  if c[1] then
    count(c[2], c[1], -1)
    redis.call('HDEL', P .. 'q:idem', esc(c[2]) .. ':' .. esc(c[3]))
    redis.call('DEL', ckey(id))
  end
  redis.call('ZREM', P .. 'q:done', id)
  redis.call('ZREM', P .. 'q:all', id)
  redis.call('SREM', P .. 'q:unann', id)
end
return #ids
"""

# KEYS: {p}q:seq. ARGV: P, id. Marks a finished call's outcome as appended.
ANNOUNCED = _Q + r"""
redis.call('SREM', P .. 'q:unann', ARGV[2])
if redis.call('EXISTS', ckey(ARGV[2])) == 1 then redis.call('HSET', ckey(ARGV[2]), 'an', '1') end
return 1
"""


class QueueScripts:
    def __init__(self, client: Client) -> None:
        self.add: AsyncScript = client.register_script(ADD)
        self.take: AsyncScript = client.register_script(TAKE)
        self.settle: AsyncScript = client.register_script(SETTLE)
        self.change: AsyncScript = client.register_script(CHANGE)
        self.renew: AsyncScript = client.register_script(RENEW)
        self.next_due: AsyncScript = client.register_script(NEXT_DUE)
        self.announced: AsyncScript = client.register_script(ANNOUNCED)
        self.prune: AsyncScript = client.register_script(PRUNE)


def _call(view: list[Any]) -> QueuedCall:
    """A call from its ``view`` (doc, st, cr, an): the state fields are the truth."""
    doc, st, cr, an = view
    return decode_call(bytes(doc)).moved(state=QueuedState(_s(st)), cancel_requested=_s(cr) == "1",
                                         announced=_s(an) == "1")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _due(call: QueuedCall) -> str:
    """The time a transition files the call under: when it is due, or finished."""
    at = call.finished_at if call.state.final else call.next_attempt_at
    return num(at if at is not None else 0.0)


class RedisQueueMixin:
    """Needs ``self.redis``, ``self._keys``, ``self._errors`` and ``self._queue_scripts``."""

    key_prefix: str
    _queue_scripts_obj: QueueScripts | None
    #: Calls made due again because their replica's lease ran out (a dead replica).
    takeovers: int = 0

    @property
    def redis(self) -> Client:  # pragma: no cover - provided by the host
        raise NotImplementedError

    def _errors(self) -> Any:  # pragma: no cover - provided by the host
        raise NotImplementedError

    @property
    def _q(self) -> QueueScripts:
        if self._queue_scripts_obj is None:
            raise StorageUnavailable("storage is closed")
        return self._queue_scripts_obj

    def _qkeys(self) -> list[str]:
        return [f"{self.key_prefix}q:seq"]

    async def _script(self, script: Callable[..., Any], *args: Any) -> Any:
        with self._errors():
            return await script(keys=self._qkeys(), args=[self.key_prefix, *args])

    async def queue_add(self, call: QueuedCall) -> tuple[QueuedCall, bool]:
        reply = await self._script(self._q.add, call.id, call.integration,
                                   call.idempotency_key, call.ordering_key, _due(call),
                                   encode_call(call))
        if int(reply[0]) == 1:
            return call, True
        return _call(reply[1]), False

    async def queue_get(self, call_id: str) -> QueuedCall | None:
        with self._errors():
            view = await self.redis.hmget(f"{self.key_prefix}q:c:{escape(call_id)}",
                                          ["doc", "st", "cr", "an"])
        return None if view[0] is None else _call(view)

    async def queue_take(self, *, now: float, wants: Mapping[str, int], owner: str,
                         lease: float, scan: int = SCAN) -> list[QueuedCall]:
        pairs = [x for name, n in wants.items() if n > 0 for x in (name, n)]
        if not pairs:
            return []
        reply = await self._script(self._q.take, num(now), owner, num(now + lease), scan,
                                   *pairs)
        self.takeovers += int(reply[0])
        return [_call(view) for _, view in reply[1]]

    async def queue_settle(self, call: QueuedCall, *, owner: str,
                           now: float) -> QueuedCall | None:
        plain = settled(call, call.moved(cancel_requested=False), now)
        cancelled = settled(call, call.moved(cancel_requested=True), now)
        reply = await self._script(self._q.settle, call.id, owner, encode_call(plain),
                                   plain.state.value, _due(plain), encode_call(cancelled))
        return _call(reply[1]) if int(reply[0]) == 1 else None

    async def queue_renew(self, ids: Collection[str], *, owner: str, until: float) -> int:
        if not ids:
            return 0
        return int(await self._script(self._q.renew, owner, num(until), *ids))

    async def queue_mark_announced(self, call_id: str) -> None:
        await self._script(self._q.announced, call_id)

    async def queue_next_due(self, *, integrations: Collection[str]) -> float | None:
        if not integrations:
            return None
        reply = await self._script(self._q.next_due, SCAN, *integrations)
        return None if reply is None else float(_s(reply))

    async def _change(self, call_id: str,
                      compute: Callable[[QueuedCall], tuple[str, QueuedCall] | None]
                      ) -> QueuedCall | None:
        """Apply ``compute`` (current -> (new state or '' for "cancel requested", the
        new call), or None for no change) as a compare-and-set on the state."""
        for _ in range(CAS_TRIES):
            current = await self.queue_get(call_id)
            if current is None:
                return None
            change = compute(current)
            if change is None:
                return current
            state, new = change
            reply = await self._script(self._q.change, call_id, current.state.value, state,
                                       encode_call(new), _due(new))
            if int(reply[0]) == 1:
                return _call(reply[1])
        return await self.queue_get(call_id)

    async def queue_cancel(self, call_id: str, *, now: float) -> QueuedCall | None:
        def cancel(call: QueuedCall) -> tuple[str, QueuedCall] | None:
            if call.state.final:
                return None
            if call.state is QueuedState.QUEUED:
                return "cancelled", call.moved(state=QueuedState.CANCELLED,
                                               next_attempt_at=None, finished_at=now)
            return "", call.moved(cancel_requested=True)

        return await self._change(call_id, cancel)

    async def queue_replay(self, call_id: str, *, now: float) -> QueuedCall | None:
        def replay(call: QueuedCall) -> tuple[str, QueuedCall] | None:
            if call.state not in (QueuedState.FAILED, QueuedState.DEAD, QueuedState.CANCELLED):
                return None
            return "queued", call.moved(state=QueuedState.QUEUED, attempts=0,
                                        next_attempt_at=now, finished_at=None, response=None,
                                        announced=False, cancel_requested=False,
                                        created_at=now)

        return await self._change(call_id, replay)

    async def _views(self, ids: list[Any]) -> list[QueuedCall]:
        with self._errors():
            pipe = self.redis.pipeline(transaction=False)
            for call_id in ids:
                pipe.hmget(f"{self.key_prefix}q:c:{escape(_s(call_id))}",
                           ["doc", "st", "cr", "an"])
            views = await pipe.execute()
        return [_call(v) for v in views if v[0] is not None]

    async def queue_unannounced(self, *, limit: int = 100) -> list[QueuedCall]:
        with self._errors():
            ids = await self.redis.srandmember(f"{self.key_prefix}q:unann", limit)
        return [c for c in await self._views(list(ids or [])) if not c.announced]

    async def queue_recover(self, *, now: float) -> int:
        # Other replicas may hold RUNNING calls: a dead one's are taken over once their
        # lease runs out (see TAKE), never at a start-up.
        return 0

    async def queue_list(self, *, state: QueuedState | None = None,
                         integration: str | None = None,
                         limit: int = 100) -> list[QueuedCall]:
        found: list[QueuedCall] = []
        start, batch = 0, 500
        while len(found) < limit and start < 20 * batch:  # bounded work per listing
            with self._errors():
                ids = await self.redis.zrange(f"{self.key_prefix}q:all", start,
                                              start + batch - 1)
            if not ids:
                break
            found += [c for c in await self._views(list(ids))
                      if (state is None or c.state is state)
                      and (integration is None or c.integration == integration)]
            start += batch
        return found[:limit]

    async def queue_counts(self) -> dict[tuple[str, str], int]:
        with self._errors():
            raw = await self.redis.hgetall(f"{self.key_prefix}q:cnt")
        out: dict[tuple[str, str], int] = {}
        for field, n in raw.items():
            integration, _, state = _s(field).rpartition(":")
            out[(unescape(integration), state)] = int(n)
        return out

    async def queue_prune(self, *, before: float, limit: int = 1000) -> int:
        return int(await self._script(self._q.prune, num(before), limit))

    async def queue_overdue(self, *, now: float) -> dict[str, float]:
        with self._errors():
            names = [_s(n) for n in await self.redis.smembers(f"{self.key_prefix}q:ints")]
            pipe = self.redis.pipeline(transaction=False)
            for name in names:
                pipe.zrange(f"{self.key_prefix}q:due:{escape(name)}", 0, 0, withscores=True)
            firsts = await pipe.execute()
        return {name: float(first[0][1]) for name, first in zip(names, firsts, strict=True)
                if first and float(first[0][1]) <= now}


"""The Lua scripts of the Redis backend: each storage step that must be atomic.

Redis runs a script alone, so a claim, an ack or an ingest never interleaves
with another replica's. Group and event scripts take the key prefix as
``ARGV[1]`` and build their key names with the same escaping as
``sidecar.storage.redis_keys``; their ``KEYS[1]`` is one of the keys they
touch, there only so that a cluster client sends the script to the node that
holds the prefix's slot (in cluster mode every key shares the prefix's hash
tag, so whatever a script builds is in that slot too). Numbers the caller passes (times) travel as
Python ``repr`` strings and are formatted back with ``%.17g``: no precision
is lost on the way.
"""

from __future__ import annotations

from redis.commands.core import AsyncScript

from sidecar.storage.redis_endpoint import Client

_PRELUDE = r"""
local P = ARGV[1]
local function esc(s)
  return (string.gsub(s, '[%%:{}]', function(c) return string.format('%%%02X', string.byte(c)) end))
end
local function num(x) return string.format('%.17g', x) end
local function int(x) return string.format('%d', x) end
local function stream_key(topic) return P .. 'log:' .. esc(topic) end
local function gkey(group, suffix) return P .. 'g:' .. esc(group) .. ':' .. suffix end
local function due_key(group, topic) return gkey(group, 'due:' .. esc(topic)) end
local function field(flat, name)
  for i = 1, #flat, 2 do
    if flat[i] == name then return flat[i + 1] end
  end
  return nil
end
local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end
-- A group's record of one event: t topic, s offset, st status, a attempts,
-- c consumer, d due time ('' when none), e last error, u updated at.
local function load(group, id)
  local raw = redis.call('HGET', gkey(group, 'rec'), id)
  if raw then return cjson.decode(raw) end
  return nil
end
-- Every change of a record goes through here, so the due index and the
-- per-status counters never drift from the records.
local function save(group, id, old, new)
  local cnt = gkey(group, 'cnt')
  if old then
    local f = esc(old.t) .. ':' .. old.st
    if redis.call('HINCRBY', cnt, f, -1) <= 0 then redis.call('HDEL', cnt, f) end
    if old.d ~= '' then redis.call('ZREM', due_key(group, old.t), id) end
  end
  if new then
    redis.call('HSET', gkey(group, 'rec'), id, cjson.encode(new))
    redis.call('HINCRBY', cnt, esc(new.t) .. ':' .. new.st, 1)
    if new.d ~= '' then redis.call('ZADD', due_key(group, new.t), new.d, id) end
  else
    redis.call('HDEL', gkey(group, 'rec'), id)
  end
end
local function append(topic, id, ty, data, ct, attrs, time)
  local seq = redis.call('HINCRBY', P .. 'topics', topic, 1)
  redis.call('XADD', stream_key(topic), '0-' .. int(seq), 'id', id, 'type', ty, 'data', data,
             'ct', ct, 'attrs', attrs, 'time', time)
  return seq
end
"""

# KEYS: record, index. ARGV: member, fingerprint, now, expires_at, ttl_ms.
IDEMPOTENCY_CLAIM = r"""
local r = redis.call('HMGET', KEYS[1], 'fp', 'state', 'resp', 'exp')
if r[4] and tonumber(r[4]) > tonumber(ARGV[3]) then
  if r[1] ~= ARGV[2] then return {'conflict'} end
  if r[2] == 'completed' then return {'completed', r[3]} end
  return {'in_flight'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fp', ARGV[2], 'state', 'in_flight', 'created', ARGV[3],
           'exp', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return {'claimed'}
"""

# KEYS: record, index. ARGV: member, response, expires_at, ttl_ms.
IDEMPOTENCY_COMPLETE = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'completed', 'resp', ARGV[2], 'exp', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS: record, index. ARGV: member.
IDEMPOTENCY_RELEASE = r"""
if redis.call('HGET', KEYS[1], 'state') ~= 'in_flight' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: index. ARGV: record key base, now, limit. Drops records expired by ``now``.
PRUNE_EXPIRED = r"""
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, m in ipairs(members) do
  local k = ARGV[1] .. m
  local exp = redis.call('HGET', k, 'exp')
  if (not exp) or tonumber(exp) <= tonumber(ARGV[2]) then redis.call('DEL', k) end
  redis.call('ZREM', KEYS[1], m)
end
return #members
"""

# KEYS: the topic's stream. ARGV: P, topic, id, type, data, content type, attributes,
#       time, marker ttl_ms.
# The marker makes a client-side retry of the same append (after a timeout
# whose command did run) return the first offset instead of appending twice.
APPEND = _PRELUDE + r"""
local marker = P .. 'evt:' .. esc(ARGV[3])
local seen = redis.call('GET', marker)
if seen then return tonumber(seen) end
local seq = append(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
redis.call('SET', marker, int(seq), 'PX', ARGV[9])
return seq
"""

# KEYS: the topic's stream. ARGV: P, topic, id, type, data, content type, attributes, time,
#       dedup member, now, expires_at, ttl_ms, audit headers.
# Returns {0, offset} when stored, {1, event id, topic, offset, entry or false}
# for a duplicate (entry is false once the first event left the log).
INGEST_WEBHOOK = _PRELUDE + r"""
local dk = P .. 'wh:' .. ARGV[9]
local r = redis.call('HMGET', dk, 'event_id', 'topic', 'seq', 'exp')
if r[1] and tonumber(r[4]) > tonumber(ARGV[10]) then
  if r[1] == ARGV[3] then return {0, tonumber(r[3])} end  -- a retry of this very ingest
  local e = redis.call('XRANGE', stream_key(r[2]), '0-' .. r[3], '0-' .. r[3])
  return {1, r[1], r[2], tonumber(r[3]), e[1] or false}
end
local seq = append(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
redis.call('DEL', dk)
redis.call('HSET', dk, 'event_id', ARGV[3], 'topic', ARGV[2], 'seq', int(seq),
           'headers', ARGV[13], 'received', ARGV[10], 'exp', ARGV[11])
redis.call('PEXPIRE', dk, ARGV[12])
redis.call('ZADD', P .. 'idx:wh', ARGV[11], ARGV[9])
return {0, seq}
"""

# KEYS: the group's cursors.
# ARGV: P, group, consumer, now, ack_timeout, max_attempts, start, limit, due_scan,
#       n, n topics (as asked), m, m topics (sorted, unique).
# Returns {topic, entry id, entry fields, attempt} per delivery.
CLAIM = _PRELUDE + r"""
local group, consumer = ARGV[2], ARGV[3]
local now = tonumber(ARGV[4])
local stamp, due_at = num(now), num(now + tonumber(ARGV[5]))
local max_attempts, start = tonumber(ARGV[6]), ARGV[7]
local limit, scan = tonumber(ARGV[8]), tonumber(ARGV[9])
local n = tonumber(ARGV[10])
local m = tonumber(ARGV[11 + n])
local out = {}

-- Redeliveries first: acks that timed out and retries now due, by topic then offset.
local due = {}
for i = 1, m do
  if #due >= limit then break end
  local t = ARGV[11 + n + i]
  local rows = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', due_key(group, t), '-inf', ARGV[4],
                                 'LIMIT', 0, scan)) do
    local rec = load(group, id)
    if rec then rows[#rows + 1] = {id, rec} end
  end
  table.sort(rows, function(a, b) return a[2].s < b[2].s end)
  for _, row in ipairs(rows) do due[#due + 1] = row end
end
for i = 1, math.min(limit, #due) do
  local id, rec = due[i][1], due[i][2]
  local new = copy(rec)
  new.u = stamp
  local e = redis.call('XRANGE', stream_key(rec.t), '0-' .. int(rec.s), '0-' .. int(rec.s))[1]
  if not e then
    new.st, new.d, new.e = 'dead', '', 'the event left the log (retention)'
  elseif rec.a >= max_attempts then
    local why = 'retry requested'
    if rec.st == 'delivered' then why = 'ack timeout' end
    local err = string.format('gave up after %d attempts (%s)', rec.a, why)
    if rec.e ~= '' then err = rec.e .. '; ' .. err end
    new.st, new.d, new.e = 'dead', '', err
  else
    new.st, new.a, new.c, new.d = 'delivered', rec.a + 1, consumer, due_at
    out[#out + 1] = {rec.t, e[1], e[2], rec.a + 1}
  end
  save(group, id, rec, new)
end

-- Then new events past the group's cursor on each topic.
local cur_key = gkey(group, 'cur')
for i = 1, n do
  if #out >= limit then break end
  local t = ARGV[10 + i]
  local cursor = redis.call('HGET', cur_key, t)
  if cursor then
    cursor = tonumber(cursor)
  else
    cursor = 0
    if start == 'latest' then cursor = tonumber(redis.call('HGET', P .. 'topics', t) or '0') end
    redis.call('HSET', cur_key, t, int(cursor))
    redis.call('SADD', P .. 'groups', group)
  end
  local entries = redis.call('XRANGE', stream_key(t), '0-' .. int(cursor + 1), '+',
                             'COUNT', limit - #out)
  for _, e in ipairs(entries) do
    local seq = tonumber(string.sub(e[1], 3))
    local id = field(e[2], 'id')
    save(group, id, load(group, id),
         {t = t, s = seq, st = 'delivered', a = 1, c = consumer, d = due_at, e = '', u = stamp})
    out[#out + 1] = {t, e[1], e[2], 1}
    cursor = seq
  end
  if #entries > 0 then redis.call('HSET', cur_key, t, int(cursor)) end
end
return out
"""

# KEYS: the group's records.
# ARGV: P, group, outcome, error, now, max_attempts, n, n x (attempts, retry delay), ids...
# Returns {settled, unknown ids...}.
SETTLE = _PRELUDE + r"""
local group, outcome, err = ARGV[2], ARGV[3], ARGV[4]
local now = tonumber(ARGV[5])
local stamp, max_attempts = num(now), tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local delays, top, fallback = {}, -1, 0
for i = 1, n do
  local a, d = tonumber(ARGV[6 + 2 * i]), tonumber(ARGV[7 + 2 * i])
  delays[a] = d
  if a > top then top, fallback = a, d end
end
local settled, res = 0, {0}
for i = 8 + 2 * n, #ARGV do
  local id = ARGV[i]
  local rec = load(group, id)
  if not rec or rec.st ~= 'delivered' then
    res[#res + 1] = id
  else
    local new = copy(rec)
    new.u = stamp
    if outcome == 'success' then
      new.st, new.d = 'completed', ''
    elseif outcome == 'dead_letter' or rec.a >= max_attempts then
      new.st, new.d = 'dead', ''
      if err ~= '' then new.e = err else new.e = 'dead-lettered by the app' end
    else
      new.st, new.e = 'failed', err
      new.d = num(now + (delays[rec.a] or fallback))
    end
    save(group, id, rec, new)
    settled = settled + 1
  end
end
res[1] = settled
return res
"""

# KEYS: the group's cursors. ARGV: P, group, consumer, now.
# The member's in-flight events become due now.
RELEASE_CONSUMER = _PRELUDE + r"""
local group, consumer = ARGV[2], ARGV[3]
local n = 0
for _, t in ipairs(redis.call('HKEYS', gkey(group, 'cur'))) do
  for _, id in ipairs(redis.call('ZRANGE', due_key(group, t), 0, -1)) do
    local rec = load(group, id)
    if rec and rec.c == consumer and rec.st == 'delivered' then
      local new = copy(rec)
      new.d = ARGV[4]
      save(group, id, rec, new)
      n = n + 1
    end
  end
end
return n
"""

# KEYS: the group's records. ARGV: P, group, now, n, n statuses, ids...
# Returns how many were requeued.
REQUEUE = _PRELUDE + r"""
local group = ARGV[2]
local n = tonumber(ARGV[4])
local want = {}
for i = 1, n do want[ARGV[4 + i]] = true end
local count = 0
for i = 5 + n, #ARGV do
  local rec = load(group, ARGV[i])
  if rec and want[rec.st] then
    local new = copy(rec)
    new.st, new.a, new.d, new.u = 'failed', 0, ARGV[3], ARGV[3]
    save(group, ARGV[i], rec, new)
    count = count + 1
  end
end
return count
"""

# KEYS: the topic's stream. ARGV: P, topic, time cutoff or '', offset cutoff or '', budget.
# Trims the head of the topic's stream: at most ``budget`` leading events
# older than the time cutoff or at/below the offset cutoff, with every
# group's record of them. Returns {events, records}.
PRUNE_TOPIC = _PRELUDE + r"""
local topic = ARGV[2]
local cutoff, max_seq, budget = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if budget <= 0 then return {0, 0} end
local sk = stream_key(topic)
local entries = redis.call('XRANGE', sk, '-', '+', 'COUNT', budget)
local k, last = 0, 0
for i, e in ipairs(entries) do
  local seq = tonumber(string.sub(e[1], 3))
  local old = (max_seq ~= nil and seq <= max_seq)
              or (cutoff ~= nil and tonumber(field(e[2], 'time')) < cutoff)
  if not old then break end
  k, last = i, seq
end
if k == 0 then return {0, 0} end
local on = {}
for _, g in ipairs(redis.call('SMEMBERS', P .. 'groups')) do
  if redis.call('HEXISTS', gkey(g, 'cur'), topic) == 1 then on[#on + 1] = g end
end
local records = 0
for i = 1, k do
  local id = field(entries[i][2], 'id')
  for _, g in ipairs(on) do
    local rec = load(g, id)
    if rec then
      save(g, id, rec, nil)
      records = records + 1
    end
  end
end
redis.call('XTRIM', sk, 'MINID', '0-' .. int(last + 1))
return {k, records}
"""


class RedisScripts:
    """The scripts, registered on one client (EVALSHA, reloaded after a Redis restart)."""

    def __init__(self, client: Client) -> None:
        self.idempotency_claim: AsyncScript = client.register_script(IDEMPOTENCY_CLAIM)
        self.idempotency_complete: AsyncScript = client.register_script(IDEMPOTENCY_COMPLETE)
        self.idempotency_release: AsyncScript = client.register_script(IDEMPOTENCY_RELEASE)
        self.prune_expired: AsyncScript = client.register_script(PRUNE_EXPIRED)
        self.append: AsyncScript = client.register_script(APPEND)
        self.ingest_webhook: AsyncScript = client.register_script(INGEST_WEBHOOK)
        self.claim: AsyncScript = client.register_script(CLAIM)
        self.settle: AsyncScript = client.register_script(SETTLE)
        self.release_consumer: AsyncScript = client.register_script(RELEASE_CONSUMER)
        self.requeue: AsyncScript = client.register_script(REQUEUE)
        self.prune_topic: AsyncScript = client.register_script(PRUNE_TOPIC)

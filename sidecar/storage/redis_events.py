"""Redis event log, webhook de-duplication and durable consumer groups.

A mixin of ``RedisStorage``. Writes are single Lua scripts (``redis_scripts``);
reads for operators (listings, counts) are plain commands.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster

from sidecar.core.events.models import (
    AckOutcome,
    Delivery,
    DeliveryRecord,
    DeliveryStatus,
    GroupPolicy,
    IngestResult,
    NewEvent,
    StoredEvent,
)
from sidecar.storage.redis_endpoint import Client
from sidecar.storage.redis_keys import RedisKeys, num, ttl_ms, unescape
from sidecar.storage.redis_scripts import RedisScripts

#: Of more due redeliveries than this in one topic, a claim considers the
#: earliest-due ones (then lowest offset first), so a backlog of retries
#: never makes one script call long.
DUE_SCAN = 1000
#: Milliseconds an append remembers its event id, covering the client's retries.
APPEND_MARKER_MS = 60_000
#: Script calls sent in one round trip while pruning many topics.
PRUNE_PIPELINE = 100
#: Ids per requeue script call.
REQUEUE_BATCH = 1000


#: A stream entry as redis-py returns it: (entry id, fields).
Entry = tuple[bytes, dict[bytes, bytes]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _offset(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[1])


def _event(topic: str, entry_id: bytes, fields: Mapping[bytes, bytes]) -> StoredEvent:
    return StoredEvent(id=fields[b"id"].decode(), topic=topic, offset=_offset(entry_id),
                       type=fields[b"type"].decode(), data=bytes(fields[b"data"]),
                       content_type=fields[b"ct"].decode(),
                       attributes=json.loads(fields[b"attrs"]), time=float(fields[b"time"]))


def _limited(items: list[Any], limit: int) -> list[Any]:
    """SQL's ``LIMIT``: a negative limit means none."""
    return items if limit < 0 else items[:limit]


def _record(group: str, event_id: str, rec: Mapping[str, Any], type_: str,
            received_at: float) -> DeliveryRecord:
    return DeliveryRecord(group, event_id, rec["t"], int(rec["s"]), type_,
                          DeliveryStatus(rec["st"]), int(rec["a"]), rec["c"], rec["e"],
                          float(rec["d"]) if rec["d"] != "" else None, received_at)


class RedisEventsMixin:
    """Needs ``redis``, ``_keys``, ``_scripts`` and ``_errors`` from ``RedisStorage``."""

    _keys: RedisKeys

    @property
    def redis(self) -> Client:  # pragma: no cover - provided by the host
        raise NotImplementedError

    @property
    def _scripts(self) -> RedisScripts:  # pragma: no cover - provided by the host
        raise NotImplementedError

    def _errors(self) -> contextlib.AbstractContextManager[None]:  # pragma: no cover
        raise NotImplementedError

    def _follow_client(self) -> Client:  # pragma: no cover - provided by the host
        raise NotImplementedError

    async def _xrange(self, topic: str, start: str, end: str = "+",
                      count: int | None = None) -> list[Entry]:
        entries = await self.redis.xrange(self._keys.stream(topic), min=start, max=end,
                                          count=count)
        return cast(list[Entry], entries or [])

    def _event_args(self, event: NewEvent, now: float) -> list[Any]:
        return [self._keys.prefix, event.topic, event.id, event.type, event.data,
                event.content_type, json.dumps(event.attributes, separators=(",", ":")),
                num(now)]

    @staticmethod
    def _stored(event: NewEvent, offset: int, now: float) -> StoredEvent:
        return StoredEvent(event.id, event.topic, offset, event.type, event.data,
                           event.content_type, dict(event.attributes), now)

    # ------------------------------------------------------------------ event log

    #: Replicas learn of each other's events by following the topic streams.
    follows_events = True

    async def follow(self, positions: Mapping[str, int], *, block: float,
                     count: int = 500) -> list[StoredEvent]:
        """Events after each topic's offset, waiting up to ``block`` seconds for one."""
        if not positions:
            return []
        by_key = {self._keys.stream(t): t for t in positions}
        streams: dict[Any, Any] = {self._keys.stream(t): f"0-{after}"
                                   for t, after in positions.items()}
        with self._errors():
            # A connection of its own: a blocking read must not hold a pooled one
            # that calls need.
            reply = cast(list[tuple[bytes, list[Entry]]], await self._follow_client().xread(
                streams, count=count, block=max(1, int(block * 1000))))
        out: list[StoredEvent] = []
        for key, entries in reply or []:
            topic = by_key[_text(key)]
            for entry_id, fields in entries:
                out.append(_event(topic, entry_id, fields))
        return out

    async def append_event(self, event: NewEvent, *, now: float,
                           durable: bool = True) -> StoredEvent:
        # ``durable`` is Redis's own persistence setting (appendfsync) here.
        with self._errors():
            offset = await self._scripts.append(
                keys=[self._keys.stream(event.topic)],
                args=[*self._event_args(event, now), APPEND_MARKER_MS])
        return self._stored(event, int(offset), now)

    async def ingest_webhook(self, event: NewEvent, *, source: str, dedup_key: str,
                             audit_headers: dict[str, str], now: float,
                             dedup_ttl: float) -> IngestResult:
        args = [*self._event_args(event, now), RedisKeys.member(source, dedup_key), num(now),
                num(now + dedup_ttl), ttl_ms(dedup_ttl), json.dumps(audit_headers)]
        with self._errors():
            reply = await self._scripts.ingest_webhook(keys=[self._keys.stream(event.topic)],
                                                       args=args)
        if int(reply[0]) == 0:
            return IngestResult(self._stored(event, int(reply[1]), now), duplicate=False)
        first_id, topic, entry = reply[1].decode(), reply[2].decode(), reply[4]
        if entry:
            stored = _event(topic, entry[0], _pairs(entry[1]))
        else:  # the first event already left the log
            stored = StoredEvent(first_id, event.topic, 0, event.type, b"", event.content_type,
                                 {}, now)
        return IngestResult(stored, duplicate=True)

    async def read_events(self, topic: str, *, after: int, limit: int) -> list[StoredEvent]:
        if limit == 0:
            return []
        with self._errors():
            entries = await self._xrange(topic, f"0-{max(after, -1) + 1}",
                                         count=limit if limit > 0 else None)
        return [_event(topic, entry_id, fields) for entry_id, fields in entries]

    async def topic_bounds(self, topic: str) -> tuple[int, int]:
        """(first retained offset, last offset); (last + 1, last) for an empty topic."""
        with self._errors():
            pipe = self.redis.pipeline(transaction=True)
            pipe.hget(self._keys.topics, topic)
            pipe.xrange(self._keys.stream(topic), count=1)
            last_raw, head = await pipe.execute()
        last = int(last_raw or 0)
        return (_offset(head[0][0]) if head else last + 1, last)

    # ------------------------------------------------------------------ consumer groups

    async def claim(self, group: str, topics: Sequence[str], consumer: str, *, now: float,
                    policy: GroupPolicy, limit: int) -> list[Delivery]:
        asked = list(topics)
        ordered = sorted(set(asked))  # code-point order, as SQLite's ORDER BY topic
        args: list[str | int] = [
            self._keys.prefix, group, consumer, num(now), num(policy.ack_timeout),
            policy.max_attempts, policy.start, limit, DUE_SCAN, len(asked), *asked,
            len(ordered), *ordered]
        with self._errors():
            rows = await self._scripts.claim(keys=[self._keys.group(group, "cur")], args=args)
        return [Delivery(_event(topic.decode(), entry_id, _pairs(flat)), int(attempt))
                for topic, entry_id, flat, attempt in rows]

    async def settle(self, group: str, event_ids: Sequence[str], outcome: AckOutcome, *,
                     error: str, now: float, policy: GroupPolicy,
                     retry_delay: Callable[[int], float]) -> tuple[int, list[str]]:
        with self._errors():
            delays: list[Any] = []
            if outcome is AckOutcome.RETRY and event_ids:
                # The script cannot call ``retry_delay``: hand it the delay for each
                # attempt count these events are at (and one more, should one of
                # them be redelivered in between).
                raw = await self.redis.hmget(self._keys.group(group, "rec"), list(event_ids))
                seen = {int(json.loads(r)["a"]) for r in raw if r}
                for attempts in sorted(seen | {a + 1 for a in seen}):
                    if 1 <= attempts < policy.max_attempts:
                        delays += [attempts, num(retry_delay(attempts))]
            args: list[Any] = [self._keys.prefix, group, outcome.value, error, num(now),
                               policy.max_attempts, len(delays) // 2, *delays, *event_ids]
            reply = await self._scripts.settle(keys=[self._keys.group(group, "rec")], args=args)
        return int(reply[0]), [x.decode() for x in reply[1:]]

    async def release_consumer(self, group: str, consumer: str, *, now: float) -> int:
        """A member left: its in-flight events become due now, for the others."""
        with self._errors():
            return int(await self._scripts.release_consumer(
                keys=[self._keys.group(group, "cur")],
                args=[self._keys.prefix, group, consumer, num(now)]))

    async def next_due(self, group: str, topics: Sequence[str]) -> float | None:
        unique = sorted(set(topics))
        if not unique:
            return None
        with self._errors():
            pipe = self.redis.pipeline(transaction=True)
            for topic in unique:
                pipe.zrange(self._keys.group_due(group, topic), 0, 0, withscores=True)
            heads = await pipe.execute()
        scores = [float(head[0][1]) for head in heads if head]
        return min(scores) if scores else None

    async def group_exists(self, group: str) -> bool:
        with self._errors():
            return int(await self.redis.exists(self._keys.group(group, "cur"))) > 0

    async def _group_names(self, group: str | None) -> list[str]:
        if group is not None:
            return [group]
        return sorted(_text(m) for m in await self.redis.smembers(self._keys.groups))

    async def list_deliveries(self, *, group: str | None = None, topic: str | None = None,
                              status: DeliveryStatus | None = None,
                              limit: int = 100) -> list[DeliveryRecord]:
        if limit == 0:
            return []
        with self._errors():
            if status is DeliveryStatus.PENDING:
                return await self._pending_records(group, topic, limit)
            found: list[tuple[str, str, dict[str, Any]]] = []
            for name in await self._group_names(group):
                async for event_id, raw in self.redis.hscan_iter(
                        self._keys.group(name, "rec"), count=500):
                    rec = json.loads(raw)
                    if (topic is None or rec["t"] == topic) and (
                            status is None or rec["st"] == status.value):
                        found.append((name, event_id.decode(), rec))
            found.sort(key=lambda f: (f[2]["t"], int(f[2]["s"])))
            found = _limited(found, limit)
            pipe = self.redis.pipeline(transaction=False)
            for _, _, rec in found:
                at = f"0-{int(rec['s'])}"
                pipe.xrange(self._keys.stream(rec["t"]), min=at, max=at)
            entries = await pipe.execute() if found else []
        out = []
        for (name, event_id, rec), entry in zip(found, entries, strict=True):
            fields = entry[0][1] if entry else {}
            out.append(_record(name, event_id, rec, fields.get(b"type", b"").decode(),
                               float(fields.get(b"time", 0))))
        return out

    async def _pending_records(self, group: str | None, topic: str | None,
                               limit: int) -> list[DeliveryRecord]:
        """Events beyond each group's cursor: not handed to any member yet."""
        found: list[tuple[str, int, str, dict[bytes, bytes]]] = []
        for name in await self._group_names(group):
            cursors = await self.redis.hgetall(self._keys.group(name, "cur"))
            for raw_topic, cursor in cursors.items():
                t = _text(raw_topic)
                if topic is not None and t != topic:
                    continue
                entries = await self._xrange(t, f"0-{int(cursor) + 1}",
                                             count=limit if limit > 0 else None)
                found += [(t, _offset(entry_id), name, fields) for entry_id, fields in entries]
        found.sort(key=lambda f: (f[0], f[1]))
        return [DeliveryRecord(name, fields[b"id"].decode(), t, offset,
                               fields[b"type"].decode(), DeliveryStatus.PENDING, 0, "", "", None,
                               float(fields[b"time"]))
                for t, offset, name, fields in _limited(found, limit)]

    async def count_deliveries(self) -> dict[tuple[str, str, str], int]:
        """(group, topic, status) -> count, for gauges; pending = beyond the cursor."""
        with self._errors():
            names = await self._group_names(None)
            pipe = self.redis.pipeline(transaction=True)
            pipe.hgetall(self._keys.topics)
            for name in names:
                pipe.hgetall(self._keys.group(name, "cnt"))
                pipe.hgetall(self._keys.group(name, "cur"))
            replies = await pipe.execute()
        last = {t.decode(): int(n) for t, n in replies[0].items()}
        out: dict[tuple[str, str, str], int] = {}
        for i, name in enumerate(names):
            counts, cursors = replies[1 + 2 * i], replies[2 + 2 * i]
            for key, n in counts.items():
                topic, _, state = key.decode().rpartition(":")
                if int(n) > 0:
                    out[(name, unescape(topic), state)] = int(n)
            for raw_topic, cursor in cursors.items():
                t = raw_topic.decode()
                out[(name, t, "pending")] = max(0, last.get(t, 0) - int(cursor))
        return out

    async def requeue(self, group: str, *, event_ids: Sequence[str] = (),
                      statuses: Sequence[DeliveryStatus] = (DeliveryStatus.DEAD,),
                      now: float) -> int:
        """Replay: dead (or failed) events become due now with a fresh attempt count."""
        wanted = [s.value for s in statuses]
        if not wanted:
            return 0
        with self._errors():
            if event_ids:
                ids = list(dict.fromkeys(event_ids))
            else:
                ids = [event_id.decode() async for event_id, raw in self.redis.hscan_iter(
                    self._keys.group(group, "rec"), count=500)
                    if json.loads(raw)["st"] in wanted]
            count = 0
            # The script re-checks each status: one that changed meanwhile is left alone.
            for i in range(0, len(ids), REQUEUE_BATCH):
                count += int(await self._scripts.requeue(
                    keys=[self._keys.group(group, "rec")],
                    args=[self._keys.prefix, group, num(now), len(wanted), *wanted,
                          *ids[i:i + REQUEUE_BATCH]]))
        return count

    # ------------------------------------------------------------------ retention

    async def _prune_events(self, limit: int, events_before: float | None,
                            durable: dict[str, float], max_per_topic: int | None) -> int:
        jobs: list[list[Any]] = [[topic, num(before), ""] for topic, before in durable.items()]
        if events_before is not None or max_per_topic is not None:
            for raw_topic, last in (await self.redis.hgetall(self._keys.topics)).items():
                topic = _text(raw_topic)
                if topic in durable:
                    continue
                max_seq = int(last) - max_per_topic if max_per_topic is not None else 0
                if max_seq < 1 and events_before is None:
                    continue
                jobs.append([topic, "" if events_before is None else num(events_before),
                             max_seq if max_seq >= 1 else ""])
        removed = 0
        for i in range(0, len(jobs), PRUNE_PIPELINE):
            calls = [([self._keys.stream(topic)],
                      [self._keys.prefix, topic, cutoff, max_seq, limit])
                     for topic, cutoff, max_seq in jobs[i:i + PRUNE_PIPELINE]]
            if isinstance(self.redis, RedisCluster):
                # A cluster pipeline refuses scripts: one call after the other.
                replies = [await self._scripts.prune_topic(keys=keys, args=args)
                           for keys, args in calls]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for keys, args in calls:
                    await self._scripts.prune_topic(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
            for events, records in replies:
                removed += int(events) + int(records)
        return removed

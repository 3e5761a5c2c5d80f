"""Live fan-out: Publish appends to the log and pushes to every live subscriber.

A subscriber registers *before* it replays history, so events published while
it catches up wait in its queue; at the seam, queued events at or below the
last replayed offset are dropped: no gap, no duplicate. A subscription that
asks for it is first told where it starts per topic (:class:`Subscribed`), so a
client can resume after a break that came before any event. Each subscriber's
queue is bounded; one that falls behind is disconnected or loses its oldest
events with a gap marker, so it never slows publishers or other subscribers.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sidecar.clock import Clock
from sidecar.core.events.follow import EventFeed, EventFollower
from sidecar.core.events.models import NewEvent, StoredEvent, new_event_id
from sidecar.core.events.topics import topic_class, validate_topic, validate_topics
from sidecar.core.idempotency import ClaimStatus, IdempotencyClaim
from sidecar.core.tracing import TRACEPARENT, TRACESTATE
from sidecar.errors import (
    Aborted,
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

log = logging.getLogger("sidecar.live")

MAX_TYPE = 200
MAX_ATTRIBUTES = 64
MAX_ATTR_KEY = 128
MAX_ATTR_VALUE = 1024
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
#: Events fetched from the log per read while replaying.
REPLAY_BATCH = 500


class LiveStore(Protocol):
    async def append_event(self, event: NewEvent, *, now: float,
                           durable: bool = True) -> StoredEvent: ...

    async def read_events(self, topic: str, *, after: int, limit: int) -> list[StoredEvent]: ...

    async def topic_bounds(self, topic: str) -> tuple[int, int]: ...

    async def idempotency_claim(self, scope: str, key: str, fingerprint: str, *, now: float,
                                lease: float) -> IdempotencyClaim: ...

    async def idempotency_complete(self, scope: str, key: str, response: bytes, *, now: float,
                                   ttl: float) -> None: ...

    async def idempotency_release(self, scope: str, key: str) -> None: ...


class Sink(Protocol):
    """Takes every live event of one topic as it is published, in the publisher's call.

    For edges that write to many connections at once (the WebSocket rooms): one sink
    per topic instead of a subscriber (a queue and a task) per connection.
    """

    def deliver(self, event: StoredEvent) -> None: ...

    def __len__(self) -> int: ...


class LiveObserver(Protocol):
    def published(self, topic_class: str) -> None: ...

    def delivered_live(self, transport: str, count: int, latency: float) -> None: ...

    def delivery_recorder(self, transport: str) -> Callable[[float], None]:
        """``delivered_live(transport, 1, latency)`` as one call taking the latency."""
        ...

    def subscribers_changed(self, transport: str, delta: int) -> None: ...

    def slow_consumer(self, transport: str, policy: str) -> None: ...

    def gap(self, reason: str) -> None: ...


@dataclass(frozen=True)
class LivePolicy:
    #: Events a subscriber may have queued before the slow-consumer policy acts.
    queue_size: int = 1000
    #: ``disconnect`` or ``drop_oldest`` (with a gap marker).
    slow_consumer: str = "disconnect"
    heartbeat: float = 15.0
    max_data_bytes: int = 1024 * 1024
    #: Seconds a publish idempotency key is remembered.
    idempotency_retention: float = 24 * 3600.0
    #: Answer Publish only once the event is safe from power loss (an fsync per
    #: commit); else once it survives a crash or restart of the sidecar.
    durable_publish: bool = False


@dataclass(frozen=True)
class Gap:
    topic: str
    reason: str  # "retention" | "slow_consumer"
    from_offset: int
    to_offset: int


@dataclass(frozen=True)
class Subscribed:
    """Where a live subscription starts: per topic, the offset it continues after (it
    yields every later event, or a gap for it, and nothing at or below it)."""

    offsets: Mapping[str, int]


@dataclass(frozen=True)
class Published:
    event_id: str
    offset: int
    replayed: bool


class SlowConsumer(ResourceExhausted):
    default_reason = "SLOW_CONSUMER"


Item = StoredEvent | Gap | Subscribed | None  # None: heartbeat


@dataclass(eq=False)
class Subscriber:
    topics: frozenset[str]
    transport: str
    capacity: int
    policy: str
    queue: collections.deque[StoredEvent | Gap] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed_reason: str = ""
    #: topic -> last offset handed out or reported in a Gap (seam de-duplication).
    seen: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, list[int]] = field(default_factory=dict)

    def offer(self, event: StoredEvent) -> bool:
        """Queue ``event``; False when the subscriber must be disconnected."""
        if self.closed_reason:
            return True
        if len(self.queue) >= self.capacity:
            if self.policy != "drop_oldest":
                self.closed_reason = "slow consumer"
                self.wake.set()
                return False
            old = self.queue.popleft()
            if isinstance(old, StoredEvent):
                span = self.dropped.setdefault(old.topic, [old.offset, old.offset])
                span[0], span[1] = min(span[0], old.offset), max(span[1], old.offset)
        self.queue.append(event)
        self.wake.set()
        return True


class _IdleTimer:
    """A live subscriber's heartbeat: ``due`` (and ``wake`` set) once ``interval``
    seconds pass on the clock with no :meth:`active`. One timer per interval, not one
    per wait: a subscriber that keeps up waits once per delivery, and idle ones spend
    their life waiting."""

    __slots__ = ("_clock", "_handle", "_interval", "_last", "_wake", "due")

    def __init__(self, wake: asyncio.Event, interval: float, clock: Clock) -> None:
        self._clock = clock
        self._wake = wake
        self._interval = interval
        self._last = clock.monotonic()
        self.due = False
        self._handle = clock.call_later(interval, self._check)

    def active(self) -> None:
        self._last = self._clock.monotonic()
        self.due = False

    def _check(self) -> None:
        now = self._clock.monotonic()
        at = self._last + self._interval
        if now >= at - 0.001:  # timers may fire a little early
            self.due = True
            self._wake.set()
            self._last = now
            at = now + self._interval
        self._handle = self._clock.call_later(at - now, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


class LiveBus:
    def __init__(self, store: LiveStore, clock: Clock, policy: LivePolicy,
                 observer: LiveObserver, notify: Callable[[str], None]) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._observer = observer
        self._notify = notify
        self._by_topic: dict[str, set[Subscriber]] = collections.defaultdict(set)
        self._sinks: dict[str, list[Sink]] = {}
        self._follower: EventFollower | None = None

    # ------------------------------------------------------------------ publish

    def _validate(self, topic: str, type_: str, data: bytes, attributes: Mapping[str, str],
                  key: str) -> None:
        problems = validate_topic(topic)
        if len(type_) > MAX_TYPE:
            problems.append(FieldViolation("type", f"at most {MAX_TYPE} characters"))
        if len(data) > self._policy.max_data_bytes:
            problems.append(FieldViolation("data", f"{len(data)} bytes is over the limit of "
                                                   f"{self._policy.max_data_bytes}"))
        # The trace context the sidecar adds does not count against the caller.
        if len(attributes) - (TRACEPARENT in attributes) - (TRACESTATE in attributes) \
                > MAX_ATTRIBUTES:
            problems.append(FieldViolation("attributes", f"at most {MAX_ATTRIBUTES} entries"))
        for k, v in attributes.items():
            if not k or len(k) > MAX_ATTR_KEY or len(v) > MAX_ATTR_VALUE:
                problems.append(FieldViolation(
                    f"attributes[{k[:40]}]", f"keys 1-{MAX_ATTR_KEY} characters, values up to "
                                             f"{MAX_ATTR_VALUE}"))
                break
        if key and not _KEY.match(key):
            problems.append(FieldViolation("idempotency_key",
                                           "must be 1-255 printable ASCII characters"))
        if problems:
            raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems),
                                  violations=problems)

    async def publish(self, topic: str, type_: str = "", data: bytes = b"",
                      content_type: str = "", attributes: Mapping[str, str] | None = None,
                      idempotency_key: str = "") -> Published:
        attrs = dict(attributes or {})
        self._validate(topic, type_, data, attrs, idempotency_key)
        now = self._clock.time()
        scope = f"publish:{topic}"
        if idempotency_key:
            claim = await self._store.idempotency_claim(scope, idempotency_key, "publish",
                                                        now=now, lease=30.0)
            if claim.status is ClaimStatus.COMPLETED and claim.response is not None:
                doc = json.loads(claim.response)
                return Published(doc["event_id"], int(doc["offset"]), replayed=True)
            if claim.status is not ClaimStatus.CLAIMED:
                raise Aborted("a publish with this idempotency key is still in progress",
                              reason="IDEMPOTENCY_IN_FLIGHT", metadata={"topic": topic})
        try:
            stored = await self._store.append_event(
                NewEvent(new_event_id(now), topic, type_, data, content_type, attrs), now=now,
                durable=self._policy.durable_publish)
        except BaseException:
            if idempotency_key:
                await self._store.idempotency_release(scope, idempotency_key)
            raise
        # Fan out before anything else awaits: live subscribers get events in the order
        # their appends finished (a subscriber drops an offset at or below one it had).
        self._observer.published(topic_class(topic))
        self.deliver(stored)
        if idempotency_key:
            await self._store.idempotency_complete(
                scope, idempotency_key,
                json.dumps({"event_id": stored.id, "offset": stored.offset}).encode(),
                now=now, ttl=self._policy.idempotency_retention)
        return Published(stored.id, stored.offset, replayed=False)

    def follow(self, feed: EventFeed, more_interest: Callable[[], Iterable[str]]) -> None:
        """Take events from a shared log instead of from this process alone.

        Every replica then hears of every event (its own included) through the
        feed, in offset order; ``more_interest`` adds topics group members wait on.
        """
        self._follower = EventFollower(
            feed, self._fan_out,
            lambda: [*self._by_topic, *self._sinks, *more_interest()])

    async def start(self) -> None:
        if self._follower is not None:
            self._follower.start()

    async def ensure_following(self, topics: Sequence[str]) -> None:
        """With a shared feed: follow ``topics`` from their current end, starting now."""
        if self._follower is not None:
            await self._follower.ensure(topics)

    async def stop_following(self) -> None:
        if self._follower is not None:
            await self._follower.stop()

    def deliver(self, event: StoredEvent) -> None:
        """A new event from this process: fan it out (unless a shared feed will)."""
        if self._follower is None:
            self._fan_out(event)

    def _fan_out(self, event: StoredEvent) -> None:
        """Hand ``event`` to this process's live subscribers and wake group members."""
        self._notify(event.topic)
        subs = self._by_topic.get(event.topic)
        if subs:
            for sub in list(subs):
                if not sub.offer(event):
                    self._observer.slow_consumer(sub.transport, sub.policy)
                    self._remove(sub)
        sinks = self._sinks.get(event.topic)
        if sinks:
            for sink in list(sinks):
                sink.deliver(event)

    # ------------------------------------------------------------------ sinks

    @property
    def observer(self) -> LiveObserver:
        return self._observer

    @property
    def policy(self) -> LivePolicy:
        return self._policy

    def attach(self, topic: str, sink: Sink) -> None:
        """Hand every live event of ``topic`` to ``sink`` from now on."""
        self._sinks.setdefault(topic, []).append(sink)

    def detach(self, topic: str, sink: Sink) -> None:
        sinks = self._sinks.get(topic)
        if sinks is not None and sink in sinks:
            sinks.remove(sink)
            if not sinks:
                del self._sinks[topic]

    def latency(self, event: StoredEvent) -> float:
        """Seconds from publish to now (for the publish-to-delivery histogram)."""
        return max(0.0, self._clock.time() - event.time)

    async def history(self, topic: str, after: int) -> AsyncIterator[StoredEvent | Gap]:
        """Retained events of ``topic`` after offset ``after`` (a gap first if some left
        the log). A sink attached before this is called sees every later event: the
        overlap is the caller's to drop (offsets at or below the last one replayed)."""
        if self._follower is not None:
            await self._follower.ensure([topic])
        async for item in self._replay(topic, after):
            yield item

    # ------------------------------------------------------------------ subscribe

    def _add(self, sub: Subscriber) -> None:
        for t in sub.topics:
            self._by_topic[t].add(sub)
        self._observer.subscribers_changed(sub.transport, 1)

    def _remove(self, sub: Subscriber) -> None:
        removed = False
        for t in sub.topics:
            subs = self._by_topic.get(t)
            if subs is not None and sub in subs:
                subs.discard(sub)
                removed = True
                if not subs:
                    del self._by_topic[t]
        if removed:
            self._observer.subscribers_changed(sub.transport, -1)

    def subscriber_count(self, topic: str) -> int:
        """Live subscribers of ``topic``: streams, plus the connections of its sinks."""
        return (len(self._by_topic.get(topic, ()))
                + sum(len(s) for s in self._sinks.get(topic, ())))

    async def subscribe(self, topics: Sequence[str], *, start: str = "latest",
                        after_offsets: Mapping[str, int] | None = None,
                        after_event_id: str = "", transport: str = "grpc",
                        heartbeat: float | None = None, announce: bool = False
                        ) -> AsyncGenerator[Item, None]:
        """Replay from ``start``, then tail live. Yields events, gaps and None (heartbeat).

        ``heartbeat``: seconds of idleness before a None; ``math.inf`` for none at all.
        ``announce``: yield a :class:`Subscribed` first. Topics that start at the latest
        position then start after their last offset read once the subscriber is
        registered (one storage read each), and events at or below it that reach the
        queue are dropped, so the announced offsets are exact.
        """
        problems = validate_topics(topics)
        if start not in ("latest", "earliest", "after_offset", "after_event_id"):
            problems.append(FieldViolation("start", f"unknown start position {start!r}"))
        if start == "after_event_id" and not after_event_id:
            problems.append(FieldViolation("after_event_id", "is required with "
                                                             "START_POSITION_AFTER_EVENT_ID"))
        unknown = set(after_offsets or {}) - set(topics)
        if unknown:
            problems.append(FieldViolation("after_offsets", "names topics not subscribed to: "
                                                            + ", ".join(sorted(unknown))))
        if problems:
            raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems),
                                  violations=problems)
        sub = Subscriber(frozenset(topics), transport, self._policy.queue_size,
                         self._policy.slow_consumer)
        self._add(sub)
        try:
            if self._follower is not None:
                # Fix where following starts before replaying, so the replay and
                # the feed overlap (duplicates are dropped at the seam) with no gap.
                await self._follower.ensure(topics)
            positions = await self._positions(list(topics), start, dict(after_offsets or {}),
                                              after_event_id)
            if announce:
                latest = [t for t in topics if positions.get(t) is None]
                # Read after registering: every event past these offsets reaches the queue.
                heads = await asyncio.gather(*(self.head(t) for t in latest))
                sub.seen.update(zip(latest, heads, strict=True))
                yield Subscribed({t: sub.seen[t] if (p := positions.get(t)) is None else p
                                  for t in topics})
            for topic in topics:
                after = positions.get(topic)
                if after is None:
                    continue
                sub.seen[topic] = after
                async for item in self._replay(topic, after):
                    sub.seen[topic] = (item.offset if isinstance(item, StoredEvent)
                                       else item.to_offset)
                    yield item
            # Tail live events (inline, not a nested generator: this runs per delivery).
            beat = heartbeat or self._policy.heartbeat
            idle = _IdleTimer(sub.wake, beat, self._clock) if beat != math.inf else None
            delivered = self._observer.delivery_recorder(transport)
            now = self._clock.time
            try:
                while True:
                    if sub.closed_reason == "slow consumer":
                        raise SlowConsumer(
                            f"subscriber fell more than {sub.capacity} events behind and was "
                            "disconnected; resubscribe from the last offset received",
                            metadata={"queue_size": str(sub.capacity)})
                    if sub.closed_reason:
                        raise Unavailable("the sidecar is shutting down; resubscribe",
                                          reason="SHUTTING_DOWN")
                    if sub.dropped:
                        # Taken before yielding: what is dropped while a Gap is handed
                        # out goes to a fresh record, reported before any queued event.
                        dropped, sub.dropped = sub.dropped, {}
                        for topic, (lo, hi) in sorted(dropped.items()):
                            if (gap := self._slow_gap(sub, topic, lo, hi)) is not None:
                                yield gap
                        continue
                    if sub.queue:
                        item = sub.queue.popleft()
                        if type(item) is StoredEvent:
                            if item.offset <= sub.seen.get(item.topic, 0):
                                continue  # already replayed: the seam
                            sub.seen[item.topic] = item.offset
                            delivered(max(0.0, now() - item.time))
                        if idle is not None:
                            idle.active()
                        yield item
                        continue
                    if idle is not None and idle.due:
                        idle.due = False
                        yield None
                        continue
                    sub.wake.clear()
                    await sub.wake.wait()
            finally:
                if idle is not None:
                    idle.cancel()
        finally:
            self._remove(sub)

    def _slow_gap(self, sub: Subscriber, topic: str, lo: int, hi: int) -> Gap | None:
        """The Gap for ``topic``'s dropped offsets ``lo``..``hi``, less those at or below
        the last one ``sub`` handed out (events queued while it replayed or read its
        start, then dropped, that it had from the log anyway); None if that is all."""
        last = sub.seen.get(topic, 0)
        if hi <= last:
            return None
        sub.seen[topic] = hi
        self._observer.gap("slow_consumer")
        return Gap(topic, "slow_consumer", max(lo, last + 1), hi)

    async def head(self, topic: str) -> int:
        """The last offset of ``topic`` (0 before its first event)."""
        return (await self._store.topic_bounds(topic))[1]

    async def _positions(self, topics: list[str], start: str, offsets: dict[str, int],
                         after_event_id: str) -> dict[str, int | None]:
        """Per topic: replay after this offset, or None for 'latest' (no replay)."""
        out: dict[str, int | None] = {}
        for topic in topics:
            if start == "earliest":
                out[topic] = 0
            elif start == "after_offset" and topic in offsets:
                out[topic] = offsets[topic]
            else:
                out[topic] = None
        if start == "after_event_id":
            found = await self._find(topics, after_event_id)
            if found is None:
                raise InvalidArgument.of("after_event_id", "no retained event with this id in "
                                                           "the subscribed topics")
            out[found.topic] = found.offset
        return out

    async def _find(self, topics: list[str], event_id: str) -> StoredEvent | None:
        for topic in topics:
            after = 0
            while True:
                batch = await self._store.read_events(topic, after=after, limit=REPLAY_BATCH)
                for e in batch:
                    if e.id == event_id:
                        return e
                if len(batch) < REPLAY_BATCH:
                    break
                after = batch[-1].offset
        return None

    async def _replay(self, topic: str, after: int) -> AsyncIterator[StoredEvent | Gap]:
        first, _ = await self._store.topic_bounds(topic)
        if after + 1 < first:
            self._observer.gap("retention")
            yield Gap(topic, "retention", after + 1, first - 1)
            after = first - 1
        while True:
            batch = await self._store.read_events(topic, after=after, limit=REPLAY_BATCH)
            for e in batch:
                if e.offset > after + 1:
                    # A topic's offsets have no holes: retention pruned these while
                    # the replay read (between pages, or since the bounds above).
                    self._observer.gap("retention")
                    yield Gap(topic, "retention", after + 1, e.offset - 1)
                yield e
                after = e.offset
            if len(batch) < REPLAY_BATCH:
                return

    async def close(self) -> None:
        for subs in list(self._by_topic.values()):
            for sub in list(subs):
                sub.closed_reason = "shutting down"
                sub.wake.set()

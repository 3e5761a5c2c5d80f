"""Live fan-out: Publish appends to the log and hands each event to every live feed.

The bus owns what all subscribers share: publishing, the registry of feeds per
topic, where a subscription starts (and each topic's last offset, known without
reading the log while a feed stays on it) and reading the log to replay. What
each subscriber sees -- replay, seam, bounded backlog, slow-consumer policy, gaps,
its transport's encoding -- is its :class:`~sidecar.core.events.feed.Feed`, the
same for gRPC streams and WebSocket connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sidecar.clock import Clock
from sidecar.core.events.feed import (
    Encoder,
    Feed,
    Gap,
    SlowConsumer,
    Subscribed,
    shutting_down,
)
from sidecar.core.events.follow import EventFeed, EventFollower
from sidecar.core.events.models import NewEvent, StoredEvent, new_event_id
from sidecar.core.events.topics import topic_class, validate_topic, validate_topics
from sidecar.core.idempotency import ClaimStatus, IdempotencyClaim
from sidecar.core.tracing import TRACEPARENT, TRACESTATE
from sidecar.errors import Aborted, FieldViolation, InvalidArgument

__all__ = ["Gap", "Item", "LiveBus", "LivePolicy", "Published", "SlowConsumer", "Subscribed"]

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
class Published:
    event_id: str
    offset: int
    replayed: bool


Item = StoredEvent | Gap | Subscribed | None  # None: heartbeat


class _Items:
    """The encoder of :meth:`LiveBus.subscribe` by default: the items themselves."""

    @staticmethod
    def event(event: StoredEvent) -> Item:
        return event

    @staticmethod
    def gap(gap: Gap) -> Item:
        return gap

    @staticmethod
    def subscribed(offsets: Mapping[str, int]) -> Item:
        return Subscribed(offsets)

    @staticmethod
    def heartbeat() -> Item:
        return None


ITEMS: Encoder[Item] = _Items()


class LiveBus:
    def __init__(self, store: LiveStore, clock: Clock, policy: LivePolicy,
                 observer: LiveObserver, notify: Callable[[str], None]) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._observer = observer
        self._notify = notify
        #: topic -> its feeds in this process (a dict: ordered, and one lookup to remove).
        self._feeds: dict[str, dict[Feed[Any], None]] = {}
        #: topic -> its last offset, while known without reading the log (see heads()).
        self._heads: dict[str, int] = {}
        #: Feeds that overflowed their backlog in the fan-out under way.
        self._overflowed: list[Feed[Any]] = []
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
            lambda: [*self._feeds, *more_interest()])

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
        """Hand ``event`` to this process's live feeds and wake group members."""
        topic = event.topic
        self._notify(topic)
        feeds = self._feeds.get(topic)
        if not feeds:
            return
        heads = self._heads
        if topic in heads and event.offset > heads[topic]:
            heads[topic] = event.offset
        # Feeds that write straight to their transport are counted per transport, once
        # per event (not once per subscriber: this loop runs per delivery).
        written, transport = 0, ""
        for feed in feeds:
            if feed.offer(event):
                if feed.transport != transport:
                    if written:
                        self._observer.delivered_live(transport, written, self.latency(event))
                    written, transport = 0, feed.transport
                written += 1
        if written:
            self._observer.delivered_live(transport, written, self.latency(event))
        if self._overflowed:
            overflowed, self._overflowed = self._overflowed, []
            for feed in overflowed:
                self._observer.slow_consumer(feed.transport, feed.backlog.policy)
                self.unregister(feed)
                if feed.closed is not None:
                    feed.end(feed.closed)

    def overflowed(self, feed: Feed[Any]) -> None:
        """``feed`` overflowed its backlog in this fan-out: it is ended after it."""
        self._overflowed.append(feed)

    # ------------------------------------------------------------------ feeds

    @property
    def observer(self) -> LiveObserver:
        return self._observer

    @property
    def policy(self) -> LivePolicy:
        return self._policy

    @property
    def clock(self) -> Clock:
        return self._clock

    def latency(self, event: StoredEvent) -> float:
        """Seconds from publish to now (for the publish-to-delivery histogram)."""
        return max(0.0, self._clock.time() - event.time)

    def register(self, feed: Feed[Any]) -> None:
        """Hand ``feed`` every live event of its topics from now on."""
        for t in feed.topics:
            self._feeds.setdefault(t, {})[feed] = None
        self._observer.subscribers_changed(feed.transport, 1)

    def unregister(self, feed: Feed[Any]) -> None:
        removed = False
        for t in feed.topics:
            feeds = self._feeds.get(t)
            if feeds is not None and feed in feeds:
                del feeds[feed]
                removed = True
                if not feeds:
                    del self._feeds[t]
                    self._heads.pop(t, None)  # no longer fanned out here: unknown
        if removed:
            self._observer.subscribers_changed(feed.transport, -1)

    def feeds(self, topic: str) -> tuple[Feed[Any], ...]:
        """The live feeds of ``topic`` in this process."""
        return tuple(self._feeds.get(topic, ()))

    def subscriber_count(self, topic: str) -> int:
        """Live feeds of ``topic`` in this process (streams and WebSocket rooms alike)."""
        return len(self._feeds.get(topic, ()))

    def subscribe(self, topics: Sequence[str], *, start: str = "latest",
                  after_offsets: Mapping[str, int] | None = None,
                  after_event_id: str = "", transport: str = "grpc",
                  heartbeat: float | None = None, announce: bool = False,
                  encoder: Encoder[Any] = ITEMS) -> AsyncGenerator[Any, None]:
        """Replay from ``start``, then tail live: a :class:`Feed` pulled as a stream of
        ``encoder``'s frames; by default the items themselves (events, gaps, a
        :class:`Subscribed` first with ``announce``, None for a heartbeat)."""
        return Feed(self, topics, transport, encoder).stream(
            start, after_offsets, after_event_id, heartbeat=heartbeat, announce=announce)

    def check(self, topics: Sequence[str], start: str, after_offsets: Mapping[str, int],
              after_event_id: str) -> None:
        """Refuse a subscription that names no valid start (every problem at once)."""
        problems = validate_topics(topics)
        if start not in ("latest", "earliest", "after_offset", "after_event_id"):
            problems.append(FieldViolation("start", f"unknown start position {start!r}"))
        if start == "after_event_id" and not after_event_id:
            problems.append(FieldViolation("after_event_id", "is required with "
                                                             "START_POSITION_AFTER_EVENT_ID"))
        unknown = set(after_offsets) - set(topics)
        if unknown:
            problems.append(FieldViolation("after_offsets", "names topics not subscribed to: "
                                                            + ", ".join(sorted(unknown))))
        if problems:
            raise InvalidArgument("; ".join(f"{p.field}: {p.description}" for p in problems),
                                  violations=problems)

    def known_heads(self, topics: Sequence[str]) -> dict[str, int] | None:
        """Each topic's last offset without reading the log, when this process has fanned
        out every event of every one of them since it last read it; else None."""
        heads = self._heads
        if all(t in heads for t in topics):
            return {t: heads[t] for t in topics}
        return None

    async def heads(self, topics: Sequence[str]) -> dict[str, int]:
        """Each topic's last offset, for a feed registered on them: every later event
        reaches it. Read from the log (once, while a feed stays on the topic)."""
        if not topics:
            return {}
        known = self.known_heads(topics)
        if known is not None:
            return known
        if self._follower is not None:
            # Fix where following starts before reading, so the read and the feed
            # overlap (duplicates are dropped at the seam) with no gap.
            await self._follower.ensure(topics)
        registries = [self._feeds.get(t) for t in topics]
        read = await asyncio.gather(*(self.head(t) for t in topics))
        out = {}
        for topic, registry, head in zip(topics, registries, read, strict=True):
            if registry is not None and self._feeds.get(topic) is registry:
                # A feed stayed on the topic throughout: every event past the read
                # was fanned out here, so the head is known from now on.
                head = self._heads[topic] = max(self._heads.get(topic, 0), head)
            out[topic] = head
        return out

    async def history(self, topic: str, after: int) -> AsyncIterator[StoredEvent | Gap]:
        """Retained events of ``topic`` after offset ``after`` (a gap first if some left
        the log). A feed registered before this is called sees every later event: the
        overlap is dropped at its seam."""
        if self._follower is not None:
            await self._follower.ensure([topic])
        async for item in self._replay(topic, after):
            yield item

    async def head(self, topic: str) -> int:
        """The last offset of ``topic`` (0 before its first event)."""
        return (await self._store.topic_bounds(topic))[1]

    async def positions(self, topics: Sequence[str], start: str, offsets: dict[str, int],
                        after_event_id: str) -> dict[str, int | None]:
        """Per topic: replay after this offset, or None for 'latest' (no replay)."""
        if self._follower is not None:
            # Fix where following starts before replaying, so the replay and the feed
            # overlap (duplicates are dropped at the seam) with no gap.
            await self._follower.ensure(topics)
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

    async def _find(self, topics: Sequence[str], event_id: str) -> StoredEvent | None:
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
        """Shutting down: every feed ends (``SHUTTING_DOWN``), so clients resubscribe
        elsewhere instead of holding the drain open."""
        feeds = {feed: None for registry in self._feeds.values() for feed in registry}
        for feed in feeds:
            self.unregister(feed)
            feed.end(shutting_down())

"""One live subscriber's feed, the same for every transport: where it starts, its replay,
the seam to live events, its bounded backlog with the slow-consumer policy and gap
accounting, and each item encoded once, by the transport's encoder.

A transport adapter supplies an :class:`Encoder` (its wire format) and either pulls the
feed's frames (:meth:`Feed.stream`, a gRPC stream) or gives it an :class:`Outlet`
(:meth:`Feed.start`, a WebSocket): the feed then writes each live event straight into
the outlet, in the publisher's call, while the outlet keeps up, and sends the rest (the
replay, and a backlog once the outlet is backed up) from a task of its own, with
backpressure, until it is caught up again. The adapter only frames and writes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from sidecar.clock import Clock
from sidecar.core.events.models import StoredEvent
from sidecar.errors import ResourceExhausted, SidecarError, Unavailable

if TYPE_CHECKING:
    from sidecar.core.events.live import LiveBus

F = TypeVar("F")
F_co = TypeVar("F_co", covariant=True)
F_contra = TypeVar("F_contra", contravariant=True)


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


class SlowConsumer(ResourceExhausted):
    default_reason = "SLOW_CONSUMER"


def shutting_down() -> Unavailable:
    return Unavailable("the sidecar is shutting down; resubscribe", reason="SHUTTING_DOWN")


class Encoder(Protocol[F_co]):
    """A transport's wire format: each item a feed hands out, as the frame it writes.

    ``event`` is called for every subscriber an event goes to: wrap it in a
    :class:`FrameCache` so that an event is serialised once for all of them."""

    def event(self, event: StoredEvent) -> F_co: ...

    def gap(self, gap: Gap) -> F_co: ...

    def subscribed(self, offsets: Mapping[str, int]) -> F_co: ...

    def heartbeat(self) -> F_co: ...


class Outlet(Protocol[F_contra]):
    """A transport that a feed writes to itself (:meth:`Feed.start`)."""

    def ready(self) -> bool:
        """True while a frame can be written at once (the send buffer is under its mark,
        or the transport is closing and drops what it is given)."""
        ...

    def write(self, frame: F_contra) -> None:
        """Take ``frame`` without waiting (called in the publisher's call)."""
        ...

    async def send(self, frame: F_contra) -> None:
        """Write ``frame`` with backpressure; ``ConnectionError`` once the peer is gone."""
        ...

    def ended(self, feed: Feed[Any], error: SidecarError) -> None:
        """The feed is over (no longer registered): :class:`SlowConsumer`, shutting down
        (``SHUTTING_DOWN``), or its replay failed."""
        ...


class FrameCache(Generic[F]):
    """The frames of the latest events, so that each is encoded once for every feed it
    goes to: keyed by event id (an id names one immutable event), bounded by entries
    and by the bytes of event data they hold, the oldest going first."""

    __slots__ = ("_data_bytes", "_encode", "_entries", "_held", "_items", "_last")

    def __init__(self, encode: Callable[[StoredEvent], F], entries: int = 256,
                 data_bytes: int = 8 * 1024 * 1024) -> None:
        self._encode = encode
        self._entries = entries
        self._data_bytes = data_bytes
        self._items: dict[str, tuple[F, int]] = {}
        self._held = 0
        self._last: tuple[StoredEvent | None, F | None] = (None, None)

    def __call__(self, event: StoredEvent) -> F:
        last, frame = self._last
        if last is event:  # fan-out: one event to many feeds in a row
            return frame  # type: ignore[return-value]
        item = self._items.get(event.id)
        if item is None:
            encoded = self._encode(event)
            size = len(event.data)
            if size <= self._data_bytes // 2:  # a default max-size event (1 MiB) fits
                self._items[event.id] = (encoded, size)
                self._held += size
                while len(self._items) > self._entries or self._held > self._data_bytes:
                    self._held -= self._items.pop(next(iter(self._items)))[1]
        else:
            encoded = item[0]
        self._last = (event, encoded)
        return encoded


class Backlog:
    """A subscriber's bounded queue of live events: once full, ``disconnect`` refuses
    the next event, ``drop_oldest`` drops the oldest and records its offset per topic."""

    __slots__ = ("_queue", "capacity", "dropped", "policy")

    def __init__(self, capacity: int, policy: str) -> None:
        self.capacity = capacity
        self.policy = policy
        # Made on first use: most WebSocket feeds never fall behind, and an idle
        # connection's memory is mostly its feeds'.
        self._queue: collections.deque[StoredEvent] | None = None
        #: topic -> [lowest, highest] offset dropped since the last gap was handed out.
        self.dropped: dict[str, list[int]] = {}

    @property
    def queue(self) -> collections.deque[StoredEvent]:
        queue = self._queue
        if queue is None:
            queue = self._queue = collections.deque()
        return queue

    def offer(self, event: StoredEvent) -> bool:
        """Queue ``event``; False when the subscriber must be disconnected."""
        queue = self._queue
        if queue is None:
            queue = self._queue = collections.deque()
        if len(queue) >= self.capacity:
            if self.policy != "drop_oldest":
                return False
            old = queue.popleft()
            span = self.dropped.setdefault(old.topic, [old.offset, old.offset])
            span[0], span[1] = min(span[0], old.offset), max(span[1], old.offset)
        queue.append(event)
        return True


class IdleTimer:
    """A pulled feed's heartbeat: ``due`` (and ``wake`` set) once ``interval`` seconds
    pass on the clock with no :meth:`active`. One timer per interval, not one per wait:
    a subscriber that keeps up waits once per delivery, and idle ones spend their life
    waiting."""

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


class Feed(Generic[F]):
    """One subscriber of some topics on the live bus (see the module docstring).

    The feed registers with the bus *before* it reads where it starts or replays, so
    events published meanwhile wait in its backlog; ``seen`` (per topic, the last offset
    handed out, replayed, announced or reported in a Gap) drops those at the seam: no
    gap, no duplicate.
    """

    __slots__ = ("_bus", "backlog", "closed", "direct", "encoder", "left", "outlet", "seen",
                 "task", "topics", "transport", "wake")

    def __init__(self, bus: LiveBus, topics: Sequence[str], transport: str,
                 encoder: Encoder[F], outlet: Outlet[F] | None = None) -> None:
        self._bus = bus
        self.topics = tuple(dict.fromkeys(topics))
        self.transport = transport
        self.encoder = encoder
        self.outlet = outlet
        policy = bus.policy
        self.backlog = Backlog(policy.queue_size, policy.slow_consumer)
        self.seen: dict[str, int] = {}
        #: Live events go straight to the outlet (caught up, and it keeps up).
        self.direct = False
        #: Set when a pulled feed has something new to hand out (pushed feeds wait on
        #: their outlet instead).
        self.wake: asyncio.Event | None = None
        #: Why the feed ended (it is no longer registered).
        self.closed: SidecarError | None = None
        #: The task sending to the outlet (replay, backlog), while there is one.
        self.task: asyncio.Task[None] | None = None
        #: The subscriber left (:meth:`close`): nothing more is sent.
        self.left = False

    # ------------------------------------------------------------------ fan-out

    def offer(self, event: StoredEvent) -> bool:
        """A live event, in the publisher's call: True if written to the outlet now.
        A feed that overflows its backlog under ``disconnect`` is reported to the bus."""
        if self.direct:
            topic = event.topic
            if event.offset <= self.seen.get(topic, 0):
                return False  # already sent by its replay: the seam
            outlet = self.outlet
            assert outlet is not None
            if outlet.ready():
                self.seen[topic] = event.offset
                outlet.write(self.encoder.event(event))
                return True
            # Backed up: later events wait in the backlog, sent with backpressure.
            self.direct = False
            self.task = asyncio.ensure_future(self._push(None))
        if self.closed is None:
            if not self.backlog.offer(event):
                self.closed = SlowConsumer(
                    f"subscriber fell more than {self.backlog.capacity} events behind and "
                    "was disconnected; resubscribe from the last offset received",
                    metadata={"queue_size": str(self.backlog.capacity)})
                self._bus.overflowed(self)
            if self.wake is not None:
                self.wake.set()
        return False

    def end(self, error: SidecarError) -> None:
        """Ended by the bus (already unregistered): slow consumer, or shutting down."""
        if self.closed is None or self.closed is error:
            self.closed = error
            if self.wake is not None:
                self.wake.set()
            if self.outlet is not None:
                self.outlet.ended(self, error)

    # ------------------------------------------------------------------ pulled

    async def stream(self, start: str = "latest", after_offsets: Mapping[str, int] | None = None,
                     after_event_id: str = "", *, heartbeat: float | None = None,
                     announce: bool = False) -> AsyncGenerator[F, None]:
        """Replay from ``start``, then tail live: the frames to hand out, in order.

        ``heartbeat``: seconds of idleness before a heartbeat frame; ``math.inf`` for
        none. ``announce``: a subscribed frame first, naming the exact offset each topic
        continues after. Ends by raising :class:`SlowConsumer` or ``Unavailable``
        (``SHUTTING_DOWN``)."""
        bus = self._bus
        bus.check(self.topics, start, after_offsets or {}, after_event_id)
        wake = self.wake = asyncio.Event()
        bus.register(self)
        try:
            positions = await bus.positions(self.topics, start, dict(after_offsets or {}),
                                            after_event_id)
            async for frame in self._catch_up(positions, announce):
                yield frame
            beat = heartbeat or bus.policy.heartbeat
            idle = IdleTimer(wake, beat, bus.clock) if beat != math.inf else None
            try:
                async for frame in self._drain(idle):
                    yield frame
            finally:
                if idle is not None:
                    idle.cancel()
        finally:
            bus.unregister(self)

    # ------------------------------------------------------------------ pushed

    def start(self, after: Mapping[str, int]) -> None:
        """Register, and send to the outlet: a subscribed frame, then what follows.

        Topics in ``after`` replay the retained events after that offset; the others
        start at the latest position, which the bus often knows without reading the
        log: then the subscribed frame is written now and the feed is live at once."""
        bus = self._bus
        bus.register(self)
        if not after:
            heads = bus.known_heads(self.topics)
            outlet = self.outlet
            assert outlet is not None
            if heads is not None:
                self.seen.update(heads)
                self.direct = True
                outlet.write(self.encoder.subscribed(heads))
                return
        self.task = asyncio.ensure_future(self._push(dict(after)))

    def close(self) -> asyncio.Task[None] | None:
        """The subscriber leaves: unregister, and send nothing more; the sending task
        if there is one, for the caller to await (it ends at its next step).

        Not cancelled: a task waiting for the transport to drain may share that wait
        with a close handshake under way on the same connection (aiohttp keeps one
        drain waiter per connection), and cancelling one cancels both."""
        self._bus.unregister(self)
        self.left = True
        self.direct = False
        task, self.task = self.task, None
        return task if task is not asyncio.current_task() else None

    async def _push(self, after: dict[str, int] | None) -> None:
        """Send the subscribed frame and replay (``after`` given), then the backlog;
        once it is empty the outlet is written to directly again."""
        outlet = self.outlet
        assert outlet is not None
        try:
            if after is not None:
                positions: dict[str, int | None] = {t: after.get(t) for t in self.topics}
                async with contextlib.aclosing(self._catch_up(positions, True)) as frames:
                    async for frame in frames:
                        if self.left:
                            return
                        await outlet.send(frame)
            async with contextlib.aclosing(self._drain(None, until_empty=True)) as frames:
                async for frame in frames:
                    if self.left:
                        return
                    await outlet.send(frame)
        except SidecarError as exc:  # e.g. storage unavailable: this feed ends
            if self.closed is None and not self.left:
                self._bus.unregister(self)
                self.end(exc)
        except (ConnectionError, RuntimeError):
            return  # the peer went away mid-send: its adapter takes it out
        finally:
            if self.task is asyncio.current_task():
                self.task = None

    # ------------------------------------------------------------------ shared

    async def _catch_up(self, positions: Mapping[str, int | None],
                        announce: bool) -> AsyncGenerator[F, None]:
        """The subscribed frame (``announce``), then each replayed topic's retained
        events (gaps for what retention removed)."""
        bus, seen, encoder = self._bus, self.seen, self.encoder
        if announce:
            latest = [t for t in self.topics if positions.get(t) is None]
            # Read after registering: every event past these offsets reaches the backlog.
            seen.update(await bus.heads(latest))
            yield encoder.subscribed({t: seen[t] if (p := positions.get(t)) is None else p
                                      for t in self.topics})
        for topic in self.topics:
            after = positions.get(topic)
            if after is None:
                continue
            seen[topic] = after
            async for item in bus.history(topic, after):
                if isinstance(item, Gap):
                    seen[topic] = item.to_offset
                    yield encoder.gap(item)
                else:
                    seen[topic] = item.offset
                    yield encoder.event(item)

    async def _drain(self, idle: IdleTimer | None, *,
                     until_empty: bool = False) -> AsyncGenerator[F, None]:
        """The backlog: gaps for what the policy dropped, then the queued events less
        those already replayed. Waits for more (heartbeats from ``idle``), or with
        ``until_empty`` switches the feed to direct writes once it is empty."""
        backlog, seen, wake = self.backlog, self.seen, self.wake
        queue = backlog.queue
        encode = self.encoder.event
        delivered = self._bus.observer.delivery_recorder(self.transport)
        now = self._bus.clock.time
        while True:
            if self.closed is not None:
                raise self.closed
            if backlog.dropped:
                # Taken before handing out: what is dropped while a Gap is sent goes
                # to a fresh record, reported before any queued event.
                dropped, backlog.dropped = backlog.dropped, {}
                for topic, (lo, hi) in sorted(dropped.items()):
                    if (gap := self._slow_gap(topic, lo, hi)) is not None:
                        yield self.encoder.gap(gap)
                continue
            if queue:
                event = queue.popleft()
                if event.offset <= seen.get(event.topic, 0):
                    continue  # already replayed: the seam
                seen[event.topic] = event.offset
                delivered(max(0.0, now() - event.time))
                if idle is not None:
                    idle.active()
                yield encode(event)
                continue
            if until_empty:
                # Empty, and no await since: later events go direct.
                self.direct = not self.left
                return
            if idle is not None and idle.due:
                idle.due = False
                yield self.encoder.heartbeat()
                continue
            assert wake is not None  # a pulled feed
            wake.clear()
            await wake.wait()

    def _slow_gap(self, topic: str, lo: int, hi: int) -> Gap | None:
        """The Gap for ``topic``'s dropped offsets ``lo``..``hi``, less those at or below
        the last one handed out (events queued while the feed replayed or read its
        start, then dropped, that it had from the log anyway); None if that is all."""
        last = self.seen.get(topic, 0)
        if hi <= last:
            return None
        self.seen[topic] = hi
        self._bus.observer.gap("slow_consumer")
        return Gap(topic, "slow_consumer", max(lo, last + 1), hi)

"""Slow-consumer gaps on a live subscription (``drop_oldest``): every offset after the
start is delivered or reported in a Gap, once, in order; drops made while the
subscriber is handing out a Gap, replaying or reading its start are not lost, and a
Gap never covers an offset the subscriber delivers.

Driven step by step: the log answers without suspending, and the clock's timers fire
as soon as the loop turns, so a read that finds nothing to hand out yields a heartbeat
(None) instead of waiting: the schedule alone decides what happens when.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.core.events import live
from sidecar.core.events.live import Gap, Item, LiveBus, LivePolicy, Subscribed
from sidecar.core.events.models import NewEvent, StoredEvent
from sidecar.core.idempotency import IdempotencyClaim
from tests.clocks import JumpingClock
from tests.fuzzing import examples


class _Log:
    """An in-memory event log with per-topic offsets. Callbacks in ``during_read`` run
    when the bus next reads the log, before the read answers: publishes that race it."""

    def __init__(self) -> None:
        self.events: dict[str, list[StoredEvent]] = collections.defaultdict(list)
        self.during_read: list[Callable[[], Awaitable[object]]] = []

    def head(self, topic: str) -> int:
        return len(self.events[topic])

    async def interleave(self) -> None:
        hooks, self.during_read = self.during_read, []
        for hook in hooks:
            await hook()

    async def append_event(self, event: NewEvent, *, now: float,
                           durable: bool = True) -> StoredEvent:
        events = self.events[event.topic]
        stored = StoredEvent(event.id, event.topic, len(events) + 1, event.type, event.data,
                             event.content_type, event.attributes, now)
        events.append(stored)
        return stored

    async def read_events(self, topic: str, *, after: int, limit: int) -> list[StoredEvent]:
        await self.interleave()
        return self.events[topic][after:after + limit]

    async def topic_bounds(self, topic: str) -> tuple[int, int]:
        await self.interleave()
        return 1, self.head(topic)  # nothing is ever trimmed

    async def idempotency_claim(self, scope: str, key: str, fingerprint: str, *, now: float,
                                lease: float) -> IdempotencyClaim:
        raise AssertionError("these publishes carry no idempotency key")

    async def idempotency_complete(self, scope: str, key: str, response: bytes, *, now: float,
                                   ttl: float) -> None:
        raise AssertionError("these publishes carry no idempotency key")

    async def idempotency_release(self, scope: str, key: str) -> None:
        raise AssertionError("these publishes carry no idempotency key")


class _Observer:
    def __init__(self) -> None:
        self.gaps = 0

    def published(self, topic_class: str) -> None:
        pass

    def delivered_live(self, transport: str, count: int, latency: float) -> None:
        pass

    def delivery_recorder(self, transport: str) -> Callable[[float], None]:
        return lambda latency: None

    def subscribers_changed(self, transport: str, delta: int) -> None:
        pass

    def slow_consumer(self, transport: str, policy: str) -> None:
        pass

    def gap(self, reason: str) -> None:
        assert reason == "slow_consumer"
        self.gaps += 1


def _bus(log: _Log, queue_size: int, observer: _Observer | None = None) -> LiveBus:
    return LiveBus(log, JumpingClock(), LivePolicy(queue_size=queue_size,
                                                    slow_consumer="drop_oldest"),
                   observer or _Observer(), lambda topic: None)


def _shown(item: Item) -> tuple[object, ...] | None:
    """An item as a client sees it, briefly: (topic, offset) or (topic, from, to)."""
    if isinstance(item, StoredEvent):
        return item.topic, item.offset
    if isinstance(item, Gap):
        assert item.reason == "slow_consumer"
        return item.topic, item.from_offset, item.to_offset
    assert not isinstance(item, Subscribed)
    return None


async def _until_idle(stream: AsyncGenerator[Item, None]) -> list[tuple[object, ...] | None]:
    """Items up to and including the first heartbeat (nothing left to hand out)."""
    out = [_shown(await anext(stream))]
    while out[-1] is not None:
        out.append(_shown(await anext(stream)))
    return out


async def test_drops_while_a_gap_is_handed_out_are_reported_next() -> None:
    # The reported defect: the consumer held a Gap, a publish dropped the next offset,
    # and the drop record was cleared after the Gap: that offset was never reported.
    log = _Log()
    bus = _bus(log, queue_size=2)
    stream = bus.subscribe(["t"], announce=True)
    assert await anext(stream) == Subscribed({"t": 0})
    for _ in range(4):
        await bus.publish("t")  # the queue keeps 3 and 4
    assert _shown(await anext(stream)) == ("t", 1, 2)
    await bus.publish("t")  # while the consumer holds that Gap: 3 is dropped for 5
    assert await _until_idle(stream) == [("t", 3, 3), ("t", 4), ("t", 5), None]
    await stream.aclose()


async def test_drops_of_events_the_replay_then_delivers_are_not_reported() -> None:
    log = _Log()
    bus = _bus(log, queue_size=2)
    await bus.publish("a")
    stream = bus.subscribe(["a", "b"], start="earliest", announce=True)
    assert await anext(stream) == Subscribed({"a": 0, "b": 0})
    assert _shown(await anext(stream)) == ("a", 1)
    for _ in range(3):
        await bus.publish("b")  # queued while "a" replays; b:1 is dropped for b:3
    # The replay of "b" reads all three from the log: none is missing.
    assert await _until_idle(stream) == [("b", 1), ("b", 2), ("b", 3), None]
    await stream.aclose()


async def test_drops_at_or_below_the_announced_start_are_not_reported() -> None:
    log = _Log()
    bus = _bus(log, queue_size=2)
    stream = bus.subscribe(["t"], announce=True)
    # Published while the subscriber (registered) reads where it starts: queued, and
    # the first one dropped, yet all at or below the start it announces.
    log.during_read += [partial(bus.publish, "t")] * 3
    assert await anext(stream) == Subscribed({"t": 3})
    assert await _until_idle(stream) == [None]
    await bus.publish("t")
    assert await _until_idle(stream) == [("t", 4), None]
    await stream.aclose()


# --------------------------------------------------------------------------- property

TOPICS = ("a", "b", "c")


@dataclass(frozen=True)
class _Scenario:
    queue_size: int
    replay_batch: int
    history: list[str]
    topics: list[str]
    start: str
    after_offsets: dict[str, int]
    #: ("read", "") advances the stream by one item; ("publish", topic) publishes now;
    #: ("race", topic) publishes during the bus's next read of the log.
    steps: list[tuple[str, str]]


_HISTORY = st.lists(st.sampled_from(TOPICS), max_size=6)
_TOPICS = st.lists(st.sampled_from(TOPICS), min_size=1, max_size=len(TOPICS), unique=True)
_STARTS = st.sampled_from(("latest", "earliest", "after_offset"))
#: (what, which topic): an index into the subscribed topics, then "x" that nobody
#: subscribes to (mostly the subscribed ones, so that queues fill).
_STEPS = st.lists(st.tuples(st.sampled_from(("read", "publish", "publish", "race")),
                            st.integers(0, len(TOPICS))), max_size=40)


@st.composite
def _scenarios(draw: st.DrawFn) -> _Scenario:
    history, topics, start = draw(_HISTORY), draw(_TOPICS), draw(_STARTS)
    after_offsets = {}
    if start == "after_offset":
        for t in topics:
            if draw(st.booleans()):
                after_offsets[t] = draw(st.integers(0, history.count(t)))
    targets = [*topics, "x"]
    steps = [(what, "" if what == "read" else targets[i % len(targets)])
             for what, i in draw(_STEPS)]
    return _Scenario(draw(st.integers(1, 3)), draw(st.integers(1, 3)), history, topics, start,
                     after_offsets, steps)


class _Client:
    """What a client relies on, checked per item: per topic, each event or Gap begins
    right after the last offset it had (none lost, none twice, never backwards), and at
    a heartbeat it has every offset published."""

    def __init__(self, log: _Log, scenario: _Scenario) -> None:
        self.log = log
        self.scenario = scenario
        self.at: dict[str, int] | None = None
        self.got: list[tuple[object, ...] | None] = []
        self.gaps = 0

    def take(self, item: Item) -> None:
        if self.at is None:
            assert isinstance(item, Subscribed), item
            assert set(item.offsets) == set(self.scenario.topics)
            if self.scenario.start == "earliest":
                assert all(v == 0 for v in item.offsets.values()), item
            for t, offset in self.scenario.after_offsets.items():
                assert item.offsets[t] == offset, item
            assert all(0 <= v <= self.log.head(t) for t, v in item.offsets.items()), item
            self.at = dict(item.offsets)
            return
        shown = _shown(item)
        self.got.append(shown)
        if shown is None:
            assert self.at == {t: self.log.head(t) for t in self.at}, self.got
            return
        topic, lo, hi = (*shown, shown[1]) if len(shown) == 2 else shown
        assert isinstance(topic, str) and isinstance(lo, int) and isinstance(hi, int)
        assert topic in self.at and lo == self.at[topic] + 1 and hi >= lo, (
            f"{shown} after offset {self.at.get(topic)} of {topic!r}; got {self.got}")
        self.at[topic] = hi
        self.gaps += isinstance(item, Gap)


async def _run(scenario: _Scenario) -> None:
    log, observer = _Log(), _Observer()
    bus = _bus(log, scenario.queue_size, observer)
    for topic in scenario.history:
        await bus.publish(topic)
    stream = bus.subscribe(scenario.topics, start=scenario.start,
                           after_offsets=scenario.after_offsets, announce=True)
    client = _Client(log, scenario)
    for op, topic in scenario.steps:
        if op == "read":
            client.take(await anext(stream))
        elif op == "publish":
            await bus.publish(topic)
        else:
            log.during_read.append(partial(bus.publish, topic))
    if client.at is None:
        client.take(await anext(stream))
    await log.interleave()  # races the stream never gave a chance: publish them now
    published = sum(len(events) for events in log.events.values())
    for _ in range(published + 1):  # at most one item per offset, then a heartbeat
        item = await anext(stream)
        client.take(item)
        if item is None:
            break
    else:
        raise AssertionError(f"no heartbeat after every offset: {client.got}")
    assert observer.gaps == client.gaps
    await stream.aclose()
    assert bus.subscriber_count(scenario.topics[0]) == 0


@settings(max_examples=examples(600), deadline=None)
@given(_scenarios())
async def test_every_offset_is_delivered_or_in_one_gap_in_order(scenario: _Scenario) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(live, "REPLAY_BATCH", scenario.replay_batch)  # replays read in pages
        await _run(scenario)


"""A live subscription's announced start (``Subscribed``) on every backend: the offsets
per start position, and an exact seam when publishes race the join. On Redis the bus
follows the shared log (as the app wires it), and publishes come from a second
replica's handle, so events reach the subscriber only through the follower."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from sidecar.clock import SystemClock
from sidecar.core.events.live import LiveBus, LivePolicy, Subscribed
from sidecar.core.events.models import NewEvent, StoredEvent, new_event_id
from sidecar.metrics import LiveMetrics, Metrics
from sidecar.storage import Storage
from tests.contract.conftest import OpenStore


@contextlib.asynccontextmanager
async def live_bus(store: Storage) -> AsyncIterator[LiveBus]:
    bus = LiveBus(store, SystemClock(), LivePolicy(heartbeat=30.0),
                  LiveMetrics(Metrics()), lambda topic: None)
    if getattr(store, "follows_events", False):
        bus.follow(store, lambda: ())  # type: ignore[arg-type]
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop_following()


async def append(store: Storage, topic: str) -> StoredEvent:
    now = SystemClock().time()
    return await store.append_event(NewEvent(new_event_id(now), topic, "", b"{}", "", {}),
                                    now=now)


async def announced(stream: AsyncIterator[Any]) -> dict[str, int]:
    first = await asyncio.wait_for(anext(stream), 5)
    assert isinstance(first, Subscribed), first
    return dict(first.offsets)


async def events(stream: AsyncIterator[Any], n: int) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    while len(out) < n:
        item = await asyncio.wait_for(anext(stream), 5)
        if isinstance(item, StoredEvent):
            out.append(item)
    return out


async def test_subscribed_offsets_per_start_position(open_store: OpenStore) -> None:
    store = await open_store()
    written = [await append(store, "orders") for _ in range(3)]
    topics: Sequence[str] = ["orders", "quiet"]
    cases: list[tuple[dict[str, Any], dict[str, int]]] = [
        ({"start": "latest"}, {"orders": 3, "quiet": 0}),
        ({"start": "earliest"}, {"orders": 0, "quiet": 0}),
        ({"start": "after_offset", "after_offsets": {"orders": 2}}, {"orders": 2, "quiet": 0}),
        ({"start": "after_event_id", "after_event_id": written[0].id},
         {"orders": 1, "quiet": 0}),
    ]
    async with live_bus(store) as bus:
        for kwargs, expected in cases:
            stream = bus.subscribe(topics, announce=True, **kwargs)
            assert await announced(stream) == expected, kwargs
            await stream.aclose()
        # Without announce (in-process callers that need no offsets): no Subscribed.
        stream = bus.subscribe(["orders"], start="earliest")
        assert [e.offset for e in await events(stream, 3)] == [1, 2, 3]
        await stream.aclose()


async def test_latest_seam_is_exact_while_publishes_race_the_join(
        open_store: OpenStore) -> None:
    store, other_replica = await open_store(), await open_store()
    async with live_bus(store) as bus:
        async def publish() -> int:
            if getattr(store, "follows_events", False):  # reaches the bus via the follower
                return (await append(other_replica, "orders")).offset
            return (await bus.publish("orders")).offset  # one process: the bus fans out

        for _ in range(3):
            await publish()
        racing = asyncio.gather(*(publish() for _ in range(30)))
        stream = bus.subscribe(["orders"], announce=True)
        start = (await announced(stream))["orders"]
        await racing
        last = await publish()
        got = [e.offset for e in await events(stream, last - start)]
        assert got == list(range(start + 1, last + 1))
        await stream.aclose()


@pytest.mark.parametrize("topics", [["a"], ["a", "b", "c"]])
async def test_a_resume_after_the_announced_offsets_gets_what_came_in_between(
        open_store: OpenStore, topics: list[str]) -> None:
    store = await open_store()
    await append(store, "a")
    async with live_bus(store) as bus:
        stream = bus.subscribe(topics, announce=True)
        offsets = await announced(stream)
        await stream.aclose()  # the stream breaks before any event
        missed = [await append(store, t) for t in topics for _ in range(2)]
        resumed = bus.subscribe(topics, start="after_offset", after_offsets=offsets,
                                announce=True)
        assert await announced(resumed) == offsets
        got = await events(resumed, len(missed))
        assert [e.id for e in got] == [e.id for e in missed]
        await resumed.aclose()

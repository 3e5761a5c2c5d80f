"""Live heartbeats on the real clock (one timer per interval, not one per wait): a beat
comes only after a whole interval with nothing delivered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

from sidecar.clock import SystemClock
from sidecar.core.events.live import LiveBus, LivePolicy
from sidecar.core.events.models import NewEvent, StoredEvent
from sidecar.metrics import LiveMetrics, Metrics

INTERVAL = 0.05


class _Store:
    def __init__(self) -> None:
        self.offset = 0

    async def append_event(self, event: NewEvent, *, now: float,
                           durable: bool = True) -> StoredEvent:
        self.offset += 1
        return StoredEvent(event.id, event.topic, self.offset, event.type, event.data,
                           event.content_type, event.attributes, now)


async def test_heartbeats_follow_a_whole_idle_interval() -> None:
    # _Store has only append_event, all that publishing needs, not the whole LiveStore.
    bus = LiveBus(_Store(), SystemClock(), LivePolicy(heartbeat=INTERVAL),  # type: ignore[arg-type]
                  LiveMetrics(Metrics()), lambda topic: None)
    stream = bus.subscribe(["t"])
    items: list[tuple[float, Any]] = []

    async def read(n: int) -> None:
        async for item in stream:
            items.append((time.monotonic(), item))
            if len(items) == n:
                return

    started = time.monotonic()
    await asyncio.wait_for(read(1), 5)
    assert items[0][1] is None and items[0][0] - started >= INTERVAL - 0.002
    reader = asyncio.ensure_future(asyncio.wait_for(read(3), 5))
    # Half an interval into the next idle stretch (not waiting for anything: placing the
    # event where a timer that ignored deliveries would beat too early).
    await asyncio.sleep(INTERVAL / 2)
    published = await bus.publish("t", data=b"1")
    await reader
    event_at, event = items[1]
    assert isinstance(event, StoredEvent) and event.offset == published.offset
    beat_at, beat = items[2]
    assert beat is None and beat_at - event_at >= INTERVAL - 0.002
    assert isinstance(stream, AsyncGenerator)  # declared an AsyncIterator; has aclose()
    await stream.aclose()
    assert bus.subscriber_count("t") == 0

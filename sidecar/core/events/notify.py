"""Wakes waiters when a topic gets new events (in-process; Redis fans out across replicas)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable

from sidecar.clock import Clock


class TopicNotifier:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = collections.defaultdict(set)

    def notify(self, topic: str) -> None:
        for event in self._waiters.get(topic, ()):
            event.set()

    def subscribe(self, topics: Iterable[str], event: asyncio.Event) -> None:
        for t in topics:
            self._waiters[t].add(event)

    def topics(self) -> list[str]:
        """Topics someone in this process waits on."""
        return list(self._waiters)

    def unsubscribe(self, topics: Iterable[str], event: asyncio.Event) -> None:
        for t in topics:
            waiters = self._waiters.get(t)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[t]


async def wait_for_event(wake: asyncio.Event, clock: Clock, until: float) -> bool:
    """Wait for ``wake`` or until the clock's wall time reaches ``until``; True if woken."""
    if wake.is_set():
        return True

    async def sleep_until() -> None:
        # Measured when the timer starts, so time that passed meanwhile counts.
        await clock.sleep(max(0.0, until - clock.time()))

    waiter = asyncio.ensure_future(wake.wait())
    timer = asyncio.ensure_future(sleep_until())
    try:
        await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        timer.cancel()
    return wake.is_set()

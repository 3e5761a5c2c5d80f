"""Wakes waiters when a topic gets new events (in-process; Redis fans out across replicas)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable


class TopicNotifier:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = collections.defaultdict(set)

    def notify(self, topic: str) -> None:
        for event in self._waiters.get(topic, ()):
            event.set()

    def subscribe(self, topics: Iterable[str], event: asyncio.Event) -> None:
        for t in topics:
            self._waiters[t].add(event)

    def unsubscribe(self, topics: Iterable[str], event: asyncio.Event) -> None:
        for t in topics:
            waiters = self._waiters.get(t)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[t]

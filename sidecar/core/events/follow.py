"""Cross-replica fan-out: follow the shared event log and feed local subscribers.

With a shared backend (Redis) an event published or received on another
replica must reach this replica's live subscribers and wake its group
members. One follower per process reads every topic someone here is
interested in, in offset order, from where interest began.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from sidecar.core.events.models import StoredEvent
from sidecar.core.tasks import stop_task
from sidecar.errors import SidecarError

log = logging.getLogger("sidecar.follow")

#: How long one read waits for new events; also how soon a newly interesting
#: topic joins the read (its start position is fixed at once, so nothing is
#: missed meanwhile).
BLOCK = 0.25
#: Pause after a failed read (backend unreachable) before trying again.
RETRY_PAUSE = 1.0
#: How long stop() waits for the loop to end: a read returns within BLOCK.
STOP_TIMEOUT = 2.0


class EventFeed(Protocol):
    async def follow(self, positions: Mapping[str, int], *, block: float,
                     count: int = 500) -> list[StoredEvent]: ...

    async def topic_bounds(self, topic: str) -> tuple[int, int]: ...


class EventFollower:
    def __init__(self, feed: EventFeed, fan_out: Callable[[StoredEvent], None],
                 interest: Callable[[], Iterable[str]]) -> None:
        self._feed = feed
        self._fan_out = fan_out
        self._interest = interest
        self._positions: dict[str, int] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def ensure(self, topics: Iterable[str]) -> None:
        """Start following ``topics`` from their current end (before a replay reads)."""
        for topic in topics:
            if topic not in self._positions:
                _, last = await self._feed.topic_bounds(topic)
                self._positions.setdefault(topic, last)
                self._changed.set()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="event-follower")

    async def stop(self, bound: float = STOP_TIMEOUT) -> None:
        """End the loop within ``bound`` seconds, even if a cancellation is lost
        (see ``sidecar.core.tasks``): the loop checks a flag, and the cancellation
        is repeated."""
        task, self._task = self._task, None
        self._stopping = True
        self._changed.set()
        await stop_task(task, bound, "the event follower")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except SidecarError as exc:
                log.warning("following the shared event log failed: %s", exc.message)
                await asyncio.sleep(RETRY_PAUSE)
            except Exception:
                log.exception("event follower error")
                await asyncio.sleep(RETRY_PAUSE)

    async def _round(self) -> None:
        wanted = set(self._interest())
        for topic in list(self._positions):
            if topic not in wanted:
                del self._positions[topic]
        await self.ensure(wanted)
        if not self._positions:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BLOCK):
                    await self._changed.wait()
            return
        events = await self._feed.follow(dict(self._positions), block=BLOCK)
        for event in events:
            if event.offset > self._positions.get(event.topic, event.offset):
                self._positions[event.topic] = event.offset
                self._fan_out(event)

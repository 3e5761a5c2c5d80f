"""Resubscribing after a broken stream: the backoff policy (exponential, full
jitter, injectable sleep and randomness) and the per-topic resume point."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from integration_sidecar_client import _wire
from integration_sidecar_client.models import Event, Gap, StartPosition, Subscribed


@dataclass(frozen=True)
class Reconnect:
    """How a subscription waits between attempts to reopen a broken stream.

    Attempt ``n`` (from 1) waits ``random() * min(maximum, initial * multiplier**(n-1))``
    seconds ("full jitter"), so many clients restarting with the sidecar do not
    reconnect in lockstep. The count starts over once a stream delivers a message.
    """

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    #: Consecutive failed attempts before the last error is raised; None: never give up.
    max_attempts: int | None = None
    #: Injected so tests do not wait; ``sync_sleep`` is used by the sync client.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    sync_sleep: Callable[[float], None] = time.sleep
    random: Callable[[], float] = random.random

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (1, 2, ...)."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** max(0, attempt - 1))
        return max(0.0, self.random() * ceiling)

    def gives_up(self, attempt: int) -> bool:
        return self.max_attempts is not None and attempt > self.max_attempts


class ResumePoint:
    """Where a live subscription is: the last offset yielded per topic, or where the
    stream said it started (its ``Subscribed`` message) for a topic with nothing yet.

    The first request asks for what the caller asked; every later one asks for the
    events after those offsets (``START_POSITION_AFTER_OFFSET``), so a reconnect
    neither loses nor repeats an event, even on a LATEST topic that had no event
    before the stream broke. (A sidecar too old to announce its start leaves such a
    topic at the latest position again.)
    """

    def __init__(self, topics: Iterable[str], start: StartPosition,
                 after_offsets: Mapping[str, int] | None, after_event_id: str | None) -> None:
        self.topics = list(topics)
        self._offsets: dict[str, int] = {}
        if start is StartPosition.EARLIEST:
            self._offsets = dict.fromkeys(self.topics, 0)
        self._explicit = after_offsets is not None
        if after_offsets is not None:
            self._offsets.update(after_offsets)
        self._after_event_id = after_event_id or ""

    @property
    def offsets(self) -> dict[str, int]:
        """Per topic, the last offset yielded (or covered by a gap, or where the stream
        started when nothing came yet): store it to resume
        in a later process with ``subscribe(after_offsets=...)``."""
        return {t: o for t, o in self._offsets.items() if o > 0}

    def request(self) -> Any:
        if self._explicit or self._offsets:
            return _wire.live_subscribe_request(self.topics, earliest=False,
                                                after_offsets=self._offsets,
                                                after_event_id=None)
        return _wire.live_subscribe_request(self.topics, earliest=False, after_offsets=None,
                                            after_event_id=self._after_event_id)

    def accept(self, item: Event | Gap | Subscribed) -> bool:
        """Record ``item``; False for an event at or before what was already yielded
        (and for the stream's opening, which is only recorded)."""
        if isinstance(item, Subscribed):
            for topic, offset in item.offsets.items():
                self._offsets.setdefault(topic, offset)
            return False
        if isinstance(item, Gap):
            self._offsets[item.topic] = max(self._offsets.get(item.topic, 0), item.to_offset)
            return True
        if item.offset <= self._offsets.get(item.topic, -1):
            return False
        self._offsets[item.topic] = item.offset
        return True

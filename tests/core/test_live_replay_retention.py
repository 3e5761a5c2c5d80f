"""A replay that the log's retention overtakes says so: events pruned between the pages
a replay reads are reported in a retention Gap, never skipped in silence."""

from __future__ import annotations

import pytest

from sidecar.core.events import live
from sidecar.core.events.live import Gap, LiveBus, LivePolicy
from sidecar.core.events.models import StoredEvent
from tests.clocks import SkippingClock
from tests.core.test_live_gaps import _Log, _Observer


class _PruningLog(_Log):
    """Retention deletes the topic's oldest events after the replay's first page."""

    def __init__(self, prune_to: int) -> None:
        super().__init__()
        self.prune_to = prune_to
        self.pages = 0

    async def read_events(self, topic: str, *, after: int, limit: int) -> list[StoredEvent]:
        self.pages += 1
        if self.pages == 2:  # the replay is one page in: retention moves on meanwhile
            self.events[topic] = [e for e in self.events[topic] if e.offset > self.prune_to]
        return [e for e in self.events[topic] if e.offset > after][:limit]

    async def topic_bounds(self, topic: str) -> tuple[int, int]:
        events = self.events[topic]
        return (events[0].offset if events else 1), len(events)


class _GapObserver(_Observer):
    def gap(self, reason: str) -> None:
        self.gaps += 1


async def test_events_pruned_between_replay_pages_are_a_retention_gap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "REPLAY_BATCH", 2)
    log = _PruningLog(prune_to=5)
    observer = _GapObserver()
    bus = LiveBus(log, SkippingClock(), LivePolicy(), observer, lambda topic: None)
    for _ in range(8):
        await bus.publish("t", data=b"x")
    seen: list[tuple[object, ...]] = []
    async for item in bus.history("t", after=0):
        if isinstance(item, Gap):
            seen.append((item.reason, item.from_offset, item.to_offset))
        else:
            seen.append((item.offset,))
    # Page 1 had 1-2; 3-5 went before page 2 was read.
    assert seen == [(1,), (2,), ("retention", 3, 5), (6,), (7,), (8,)]
    assert observer.gaps == 1

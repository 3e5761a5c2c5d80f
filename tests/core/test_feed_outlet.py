"""A feed that writes to an outlet itself (what a WebSocket connection is to it): live
events straight into the outlet while it keeps up, a bounded backlog sent with
backpressure while it does not, then direct writes again; a slow consumer ended through
the outlet; a leaving feed's sending task left to finish, not cancelled.

An in-memory log and outlet; every wait is on an event the test sets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from sidecar.core.events.feed import Feed, Gap, SlowConsumer
from sidecar.core.events.live import LiveBus, LivePolicy
from sidecar.core.events.models import StoredEvent
from sidecar.errors import SidecarError
from tests.clocks import JumpingClock
from tests.core.test_live_gaps import _Log, _Observer


class _Frames:
    @staticmethod
    def event(event: StoredEvent) -> str:
        return f"{event.topic}:{event.offset}"

    @staticmethod
    def gap(gap: Gap) -> str:
        return f"gap {gap.topic}:{gap.from_offset}-{gap.to_offset}"

    @staticmethod
    def subscribed(offsets: Mapping[str, int]) -> str:
        return "subscribed " + ",".join(f"{t}:{o}" for t, o in offsets.items())

    @staticmethod
    def heartbeat() -> str:
        return "heartbeat"


class _Outlet:
    """Takes writes while ``keeping_up``; ``send`` waits until ``drained`` is set."""

    def __init__(self) -> None:
        self.keeping_up = True
        self.written: list[str] = []  # direct writes
        self.sent: list[str] = []  # sent with backpressure
        self.drained = asyncio.Event()
        self.drained.set()
        self.sending = asyncio.Event()
        self.ends: list[SidecarError] = []

    def ready(self) -> bool:
        return self.keeping_up

    def write(self, frame: str) -> None:
        self.written.append(frame)

    async def send(self, frame: str) -> None:
        self.sent.append(frame)
        self.sending.set()
        await self.drained.wait()

    def ended(self, feed: Feed[Any], error: SidecarError) -> None:
        self.ends.append(error)


def _bus(log: _Log, policy: str = "drop_oldest", queue_size: int = 2) -> LiveBus:
    return LiveBus(log, JumpingClock(), LivePolicy(queue_size=queue_size, slow_consumer=policy),
                   _Observer(), lambda topic: None)


async def _settled(feed: Feed[Any]) -> None:
    """Until the feed's sending task (if any) is done."""
    if feed.task is not None:
        await feed.task


async def test_direct_then_backlog_with_a_gap_then_direct_again() -> None:
    log, outlet = _Log(), _Outlet()
    bus = _bus(log)
    await bus.publish("t")
    feed = Feed(bus, ["t"], "ws", _Frames(), outlet)
    feed.start({})  # the head is not known yet: read, then announced by the task
    await _settled(feed)
    assert outlet.sent == ["subscribed t:1"] and feed.direct
    await bus.publish("t")
    assert outlet.written == ["t:2"]
    # A second feed on the topic now starts live at once: the bus knows the head.
    other = Feed(bus, ["t"], "ws", _Frames(), _Outlet())
    other.start({})
    assert other.task is None and other.direct
    # Backed up: the next events wait in the backlog (2), the oldest dropped for a gap.
    outlet.keeping_up = False
    outlet.drained.clear()
    outlet.sending.clear()
    for _ in range(4):
        await bus.publish("t")
    assert not feed.direct and feed.task is not None
    await outlet.sending.wait()  # the task sends the gap, and waits for the drain
    await bus.publish("t")  # 5 is dropped for 7 meanwhile: reported before 6
    outlet.keeping_up = True
    outlet.drained.set()
    await _settled(feed)
    assert outlet.sent == ["subscribed t:1", "gap t:3-4", "gap t:5-5", "t:6", "t:7"]
    assert feed.direct and feed.task is None
    await bus.publish("t")
    assert outlet.written == ["t:2", "t:8"]


async def test_a_resume_replays_then_goes_live_without_a_duplicate() -> None:
    log, outlet = _Log(), _Outlet()
    bus = _bus(log, queue_size=10)
    for _ in range(3):
        await bus.publish("t")
    feed = Feed(bus, ["t"], "ws", _Frames(), outlet)
    # Published while the replay reads the log: queued, and dropped at the seam.
    log.during_read.append(lambda: bus.publish("t"))
    feed.start({"t": 1})
    await _settled(feed)
    assert outlet.sent == ["subscribed t:1", "t:2", "t:3", "t:4"]
    await bus.publish("t")
    assert outlet.written == ["t:5"]


async def test_a_slow_consumer_is_ended_through_its_outlet() -> None:
    log, outlet = _Log(), _Outlet()
    bus = _bus(log, policy="disconnect")
    feed = Feed(bus, ["t"], "ws", _Frames(), outlet)
    feed.start({"t": 0})
    await _settled(feed)
    outlet.keeping_up = False
    outlet.drained.clear()
    for _ in range(4):  # one sent (waiting), two queued, the fourth overflows
        await bus.publish("t")
    assert [type(e) for e in outlet.ends] == [SlowConsumer]
    assert bus.subscriber_count("t") == 0


async def test_a_leaving_feed_is_not_cancelled_mid_send() -> None:
    # A send waiting for the transport to drain may share that wait with the close
    # handshake on the same connection: cancelling it would cancel the close.
    log, outlet = _Log(), _Outlet()
    bus = _bus(log)
    feed = Feed(bus, ["t"], "ws", _Frames(), outlet)
    feed.start({"t": 0})
    await _settled(feed)
    outlet.keeping_up = False
    outlet.drained.clear()
    outlet.sending.clear()
    await bus.publish("t")
    await bus.publish("t")
    await outlet.sending.wait()  # sending event 1, waiting for the drain
    task = feed.close()
    assert task is not None and not task.cancelled()
    outlet.drained.set()
    await task
    assert outlet.sent == ["subscribed t:0", "t:1"]  # nothing after it left
    assert not feed.direct and bus.subscriber_count("t") == 0

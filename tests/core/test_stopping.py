"""Background work stops for sure, even when Python 3.11 loses a cancellation.

On 3.11, a ``cancel()`` that lands in the same loop turn as the operation a task
awaits under ``asyncio.wait_for`` completing is swallowed: ``wait_for`` returns the
result. redis-py awaits every command that way, so the event follower's read can
swallow the one cancellation its ``stop()`` sends. These tests produce exactly that
interleaving (a feed whose read finishes in the turn ``stop()`` cancels it).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping

import pytest

from sidecar.core.events.follow import EventFollower
from sidecar.core.events.models import StoredEvent
from sidecar.core.tasks import stop_task, within

#: A bound for a stop that should take milliseconds; passing it means the stop hung.
HUNG = 5.0


class RacingFeed:
    """A feed whose reads run under ``wait_for`` (as redis-py's do) and finish when the
    test says, so the test can complete one in the same turn as a cancellation."""

    def __init__(self) -> None:
        self.reads = 0
        self.read_started = asyncio.Event()
        self._pending: asyncio.Future[list[StoredEvent]] | None = None

    async def follow(self, positions: Mapping[str, int], *, block: float,
                     count: int = 500) -> list[StoredEvent]:
        self.reads += 1
        self._pending = asyncio.get_running_loop().create_future()
        self.read_started.set()
        return await asyncio.wait_for(self._pending, 60)

    def finish_read(self) -> None:
        assert self._pending is not None
        self._pending.set_result([])

    async def topic_bounds(self, topic: str) -> tuple[int, int]:
        return 0, 0


async def test_a_cancellation_lost_inside_wait_for_still_stops_the_follower() -> None:
    feed = RacingFeed()
    follower = EventFollower(feed, lambda e: None, lambda: ["t"])
    follower.start()
    await feed.read_started.wait()
    # The read completes and the stop's cancel() arrives in the same loop turn.
    feed.finish_read()
    stopping = asyncio.ensure_future(follower.stop())
    done, _ = await asyncio.wait({stopping}, timeout=HUNG)
    assert stopping in done, "EventFollower.stop() hung after a lost cancellation"
    await stopping
    assert feed.reads <= 2


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the race this guards is 3.11's")
async def test_the_race_is_real_on_this_interpreter() -> None:
    """Without the repeat, the same interleaving loses the cancellation: the guard
    above is needed, not decoration."""
    feed = RacingFeed()

    async def loop_until_cancelled() -> None:
        while True:
            await feed.follow({}, block=0.25)

    task = asyncio.ensure_future(loop_until_cancelled())
    await feed.read_started.wait()
    feed.read_started.clear()
    feed.finish_read()
    cancel_once = asyncio.ensure_future(_cancel(task))
    await cancel_once
    await feed.read_started.wait()  # the loop went on to read again: the cancel was lost
    assert not task.done()
    assert await stop_task(task, HUNG)


async def _cancel(task: asyncio.Future[None]) -> None:
    task.cancel()


async def test_stop_task_gives_up_at_its_deadline_on_a_task_that_ignores_cancellation() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    assert not await stop_task(task, 0.2, "stubborn")
    release.set()
    await task


async def test_within_returns_at_its_deadline_and_later_steps_still_run() -> None:
    ran: list[str] = []
    never = asyncio.Event()

    async def hangs() -> None:
        await never.wait()

    async def fails() -> None:
        raise RuntimeError("boom")

    assert not await within(hangs(), 0.1, "a hung step")
    assert await within(fails(), 1.0, "a failing step")  # logged, not raised
    ran.append("next")
    assert ran == ["next"]

"""A cancelled Redis command always ends the task that awaited it, on every Redis mode.

On Python 3.11 redis-py runs each command under ``asyncio.wait_for``, which drops a
cancellation that lands in the loop turn the reply arrives: a loop of reads stopped
by one ``cancel()`` then runs on. Measured before the storage handed such a lost
cancellation on: a standalone loop of XREADs lost most of 300 cancels.
"""

from __future__ import annotations

import asyncio

from sidecar.core.events.models import NewEvent, new_event_id
from sidecar.storage import Storage
from sidecar.storage.redis import RedisStorage

BACKENDS = ["redis", "redis-cluster"]
ALSO_ON_SENTINEL = True
#: Tries per test: the race is hit in most of them on 3.11 (when unguarded).
TRIES = 100
#: A cancelled read ends in milliseconds; reaching this means it ran on.
HUNG = 1.0


async def test_every_cancel_of_a_loop_of_reads_ends_it(store: Storage) -> None:
    assert isinstance(store, RedisStorage)
    await store.append_event(NewEvent(new_event_id(1.0), "t", "", b"", "", {}), now=1.0)
    reads = 0
    target = 0
    reached = asyncio.Event()

    async def read_forever() -> None:
        nonlocal reads
        while True:
            # Returns at once (an event is there): the reply races the cancel.
            await store.follow({"t": 0}, block=0.001)
            reads += 1
            if reads >= target:
                reached.set()

    lost = 0
    for i in range(TRIES):
        reached.clear()
        target = reads + 1 + i % 3  # cancel at varying points of the reply
        task = asyncio.ensure_future(read_forever())
        await reached.wait()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=HUNG)
        if task not in done:
            lost += 1
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.05)
    assert lost == 0, f"{lost} of {TRIES} cancellations were lost"


async def test_clean_up_after_a_cancellation_can_still_use_storage(store: Storage) -> None:
    """Only a cancellation *during* a command is handed on: code that caught an
    earlier one (clean-up in an except block) still runs its commands."""
    started = asyncio.Event()
    cleaned: list[int] = []

    async def work() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaned.append((await store.topic_bounds("t"))[1])
            cleaned.append((await store.topic_bounds("t"))[1])
            raise

    task = asyncio.ensure_future(work())
    await started.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=HUNG)
    assert task in done and task.cancelled()
    assert cleaned == [0, 0]

"""Bulkhead: caps concurrent upstream requests per integration; excess waits in order."""

from __future__ import annotations

import asyncio
import collections

from sidecar.clock import Clock
from sidecar.errors import ResourceExhausted


class BulkheadFullError(ResourceExhausted):
    default_reason = "BULKHEAD_FULL"


class Bulkhead:
    """A FIFO semaphore whose waits are bounded by the injected clock."""

    def __init__(self, limit: int, clock: Clock, *, name: str = "") -> None:
        self.limit = limit
        self.name = name
        self._clock = clock
        self._in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued for it; never waits."""
        # Waiters that gave up leave their futures behind; drop them first.
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        if self._in_use < self.limit and not self._waiters:
            self._in_use += 1
            return True
        return False

    async def acquire(self, max_wait: float) -> None:
        if self.try_acquire():
            return
        if max_wait <= 0:
            raise self._full()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        timer = asyncio.ensure_future(self._clock.sleep(max_wait))
        try:
            await asyncio.wait({fut, timer}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us as we were cancelled
            fut.cancel()
            raise
        finally:
            timer.cancel()
        if fut.done() and not fut.cancelled():
            return  # release() handed its slot to us
        fut.cancel()
        raise self._full()

    def _full(self) -> BulkheadFullError:
        return BulkheadFullError(
            f"integration {self.name!r} already has {self.limit} upstream requests in flight "
            "and none finished within the deadline",
            metadata={"integration": self.name, "limit": str(self.limit)},
        )

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # hand the slot over; in_use stays the same
                return
        self._in_use -= 1

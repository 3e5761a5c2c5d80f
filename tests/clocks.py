"""Test clocks: time that jumps instead of passing."""

from __future__ import annotations

import asyncio
import time


class SkippingClock:
    """Real time plus every sleep taken, which returns at once.

    For end-to-end tests where the sidecar should *decide* to wait (Retry-After,
    backoff, rate limits) without the test actually waiting; ``sleeps`` records
    each wait asked for.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += max(0.0, seconds)
        await asyncio.sleep(0)

"""Test clocks: time that jumps instead of passing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


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

    def call_later(self, seconds: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        """Timers are not skipped: they run after ``seconds`` of real time."""
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)


class JumpingClock(SkippingClock):
    """A SkippingClock whose timers do not wait either: each fires on the next turn
    of the event loop, the clock jumping to its time. For step-by-step tests where
    anything waiting on a timer (a heartbeat) should happen as soon as nothing else
    can, so the schedule alone decides what happens when."""

    def call_later(self, seconds: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        def fire() -> None:
            self.offset += max(0.0, seconds)
            callback()

        return asyncio.get_running_loop().call_later(0, fire)

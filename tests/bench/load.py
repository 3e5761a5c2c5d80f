"""Load generators: closed loop (max throughput) and open loop (latency at a rate).

A *call* is an ``async () -> None`` that raises on any failure. Latencies are
measured with ``time.perf_counter`` around the awaited call.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

CallFn = Callable[[], Awaitable[None]]
Probe = Callable[[], dict[str, float]]


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (``p`` in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Errors:
    count: int = 0
    first: str = ""

    def add(self, exc: BaseException) -> None:
        self.count += 1
        if not self.first:
            self.first = f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class ClosedResult:
    calls: int
    seconds: float
    latencies_ms: list[float]
    errors: Errors
    #: CPU seconds used by each probed process during the window.
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0


async def closed_loop(call: CallFn, *, concurrency: int, warmup: float, duration: float,
                      probe: Probe | None = None) -> ClosedResult:
    """``concurrency`` workers each send the next call as soon as one finishes.

    Only calls that *complete* inside the measurement window (after the
    warm-up) are counted; CPU of the probed processes is sampled at its edges.
    """
    stop = False
    measuring = False
    completed = 0
    latencies: list[float] = []
    errors = Errors()

    async def worker() -> None:
        nonlocal completed
        perf = time.perf_counter
        while not stop:
            t0 = perf()
            try:
                await call()
            except Exception as exc:
                errors.add(exc)
                await asyncio.sleep(0.01)  # a broken target must not spin the loop
                continue
            if measuring:
                latencies.append((perf() - t0) * 1000)
                completed += 1

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        cpu0 = probe() if probe else {}
        measuring = True
        t_start = time.perf_counter()
        await asyncio.sleep(duration)
        measuring = False
        t_end = time.perf_counter()
        cpu1 = probe() if probe else {}
        calls = completed
    finally:
        stop = True
        await asyncio.gather(*workers, return_exceptions=True)
    latencies.sort()
    return ClosedResult(calls, t_end - t_start, latencies, errors,
                        {k: cpu1[k] - cpu0[k] for k in cpu1})


@dataclass
class OpenResult:
    rate: float
    sent: int
    seconds: float
    latencies_ms: list[float]
    #: How late each call started against its schedule (generator health), ms.
    lag_ms: list[float]
    errors: Errors
    #: CPU seconds used by each probed process during the measured part.
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def achieved(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


async def open_loop(call: CallFn, *, rate: float, warmup: float, duration: float,
                    probe: Probe | None = None) -> OpenResult:
    """Start call *i* at ``t0 + i / rate`` whether or not earlier calls finished.

    Latency runs from the moment a call actually starts; ``lag_ms`` records how
    far that start was behind schedule (event-loop timer granularity, a busy
    loop), so a generator that cannot keep up is visible. CPU is sampled when
    the first measured call is due and after the last one has finished.
    """
    interval = 1.0 / rate
    n_warm = round(warmup * rate)
    n_total = n_warm + round(duration * rate)
    latencies: list[float] = []
    lags: list[float] = []
    errors = Errors()
    pending: set[asyncio.Task[None]] = set()
    perf = time.perf_counter

    async def one(due: float, measured: bool) -> None:
        t0 = perf()
        try:
            await call()
        except Exception as exc:
            errors.add(exc)
            return
        if measured:
            latencies.append((perf() - t0) * 1000)
            lags.append((t0 - due) * 1000)

    t_start = perf() + 0.005
    t_measure = t_start + n_warm * interval
    cpu0: dict[str, float] | None = None
    i = 0
    while i < n_total:
        now = perf()
        if cpu0 is None and i >= n_warm:
            cpu0 = probe() if probe else {}
        due = t_start + i * interval
        if due > now:
            await asyncio.sleep(due - now)
            continue
        while i < n_total and t_start + i * interval <= now:
            task = asyncio.create_task(one(t_start + i * interval, i >= n_warm))
            pending.add(task)
            task.add_done_callback(pending.discard)
            i += 1
    t_last = perf()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    cpu1 = probe() if probe else {}
    latencies.sort()
    lags.sort()
    seconds = max(t_last - t_measure + interval, 1e-9)  # n sends span n intervals
    return OpenResult(rate, n_total - n_warm, seconds, latencies, lags, errors,
                      {k: cpu1[k] - (cpu0 or cpu1)[k] for k in cpu1})

"""The health service's Watch under shutdown, driven directly (its context is a seam):
a watcher always gets the final NOT_SERVING before its stream ends, however the
shutdown interleaves with a write still on its way."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2

from sidecar.rpc.health import NOT_SERVING, SERVING, HealthService


class SlowContext:
    """A stream context whose first write completes only when the test lets it."""

    def __init__(self) -> None:
        self.written: list[int] = []
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def write(self, message: health_pb2.HealthCheckResponse) -> None:
        self.written.append(message.status)
        self.writing.set()
        await self.release.wait()


async def test_a_shutdown_during_a_write_still_sends_not_serving_before_the_end() -> None:
    health = HealthService()
    await health.set("readiness", SERVING)
    context = SlowContext()
    watch = asyncio.ensure_future(
        health.Watch(health_pb2.HealthCheckRequest(service="readiness"), context))
    await context.writing.wait()  # SERVING is on its way to the client...
    await health.enter_graceful_shutdown()  # ...when the shutdown begins
    context.release.set()
    await asyncio.wait_for(watch, 5)
    assert context.written == [SERVING, NOT_SERVING]


async def test_a_watch_that_starts_after_shutdown_gets_not_serving_and_ends() -> None:
    health = HealthService()
    await health.set("readiness", SERVING)
    await health.enter_graceful_shutdown()
    context = SlowContext()
    context.release.set()
    await asyncio.wait_for(
        health.Watch(health_pb2.HealthCheckRequest(service="readiness"), context), 5)
    assert context.written == [NOT_SERVING]

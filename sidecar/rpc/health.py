"""``grpc.health.v1.Health`` (Check, List, Watch) that lets go of its watchers at shutdown.

The reference servicer keeps every ``Watch`` stream open until the server cancels
it, and gRPC's client-side health checking keeps one open per connection: each
SIGTERM then waited out the whole shutdown grace. Here a shutdown sends every
watcher NOT_SERVING and then ends its stream (status OK, which the protocol tells
clients to retry elsewhere with backoff), so an idle sidecar exits at once.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
#: List answers RESOURCE_EXHAUSTED beyond this many services (the protocol allows it).
MAX_LISTED = 100


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Serving status per service name ("" for the whole server)."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": SERVING}
        #: Set and replaced on every change: watchers wait on the current one.
        self._changed = asyncio.Event()
        self._shutting_down = False

    async def set(self, service: str, status: int) -> None:
        """Set ``service``'s status; ignored once shutdown has begun."""
        if self._shutting_down or self._status.get(service) == status:
            return
        self._status[service] = status
        self._notify()

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING for good; watchers get that, then their streams end."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for service in self._status:
            self._status[service] = NOT_SERVING
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext
                    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: health_pb2.HealthListRequest,
                   context: grpc.aio.ServicerContext
                   ) -> health_pb2.HealthListResponse:
        if len(self._status) > MAX_LISTED:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many services")
        response = health_pb2.HealthListResponse()
        for service, status in self._status.items():
            response.statuses[service].status = status
        return response

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> None:
        last: int | None = None
        while True:
            changed = self._changed
            status = self._status.get(request.service, SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
                continue  # the status may have changed while the write was on its way
            if self._shutting_down:
                return  # the final status is out; the stream ends OK
            await changed.wait()

"""The admin listener: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from sidecar.http_common import count_responses
from sidecar.metrics import CONTENT_TYPE, Metrics


@dataclass(frozen=True)
class Readiness:
    ready: bool
    #: Check name -> "ok" or why it failed.
    checks: dict[str, str] = field(default_factory=dict)


ReadinessProbe = Callable[[], Awaitable[Readiness]]


def build_admin_app(metrics: Metrics, readiness: ReadinessProbe) -> web.Application:
    async def metrics_handler(request: web.Request) -> web.Response:
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(request: web.Request) -> web.Response:
        # Liveness: the event loop answers. Dependencies belong in /readyz, so a
        # storage outage never gets the container restarted in a loop.
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        state = await readiness()
        return web.json_response(
            {"status": "ready" if state.ready else "not_ready", "checks": state.checks},
            status=200 if state.ready else 503,
        )

    app = web.Application(middlewares=[count_responses(metrics, "admin")])
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app

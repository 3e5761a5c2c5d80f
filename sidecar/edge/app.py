"""Routes of the public edge listener (``POST /webhooks/{source}``, ``GET /ws``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from sidecar.config import EdgeConfig
from sidecar.edge.webhooks import WebhookEdge
from sidecar.http_common import count_responses, json_error
from sidecar.metrics import Metrics

if TYPE_CHECKING:
    from sidecar.edge.websocket import WebSocketEdge


async def _webhooks(request: web.Request) -> web.Response:
    return json_error(404, "WEBHOOK_SOURCE_NOT_FOUND", "no webhook sources are configured")


async def _websocket(request: web.Request) -> web.Response:
    return json_error(404, "WEBSOCKET_DISABLED",
                      "the WebSocket edge is off: configure realtime.websocket.jwt keys")


def build_edge_app(config: EdgeConfig, metrics: Metrics,
                   webhooks: WebhookEdge | None = None,
                   websocket: WebSocketEdge | None = None) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[count_responses(metrics, "edge")])
    app.router.add_post("/webhooks/{source}", webhooks.handle if webhooks else _webhooks)
    app.router.add_get("/ws", websocket.handle if websocket else _websocket)
    return app

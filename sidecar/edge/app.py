"""Routes of the public edge listener (``POST /webhooks/{source}``, ``GET /ws``).

The WebSocket edge arrives with its feature; until then ``/ws`` answers 501
saying so, never a fake success.
"""

from __future__ import annotations

from aiohttp import web

from sidecar import __version__
from sidecar.config import EdgeConfig
from sidecar.edge.webhooks import WebhookEdge
from sidecar.http_common import count_responses, json_error
from sidecar.metrics import Metrics


async def _webhooks(request: web.Request) -> web.Response:
    return json_error(404, "WEBHOOK_SOURCE_NOT_FOUND", "no webhook sources are configured")


async def _websocket(request: web.Request) -> web.Response:
    return json_error(501, "NOT_IMPLEMENTED",
                      f"the WebSocket edge is not implemented in integration-sidecar "
                      f"{__version__}")


def build_edge_app(config: EdgeConfig, metrics: Metrics,
                   webhooks: WebhookEdge | None = None) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[count_responses(metrics, "edge")])
    app.router.add_post("/webhooks/{source}", webhooks.handle if webhooks else _webhooks)
    app.router.add_get("/ws", _websocket)
    return app

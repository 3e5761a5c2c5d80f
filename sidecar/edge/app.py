"""Routes of the public edge listener (``POST /webhooks/{source}``, ``GET /ws``).

Webhook ingest and the WebSocket edge arrive with their features; until then
the routes answer 501 saying so, never a fake success.
"""

from __future__ import annotations

from aiohttp import web

from sidecar import __version__
from sidecar.config import EdgeConfig
from sidecar.http_common import count_responses, json_error
from sidecar.metrics import Metrics


async def _webhooks(request: web.Request) -> web.Response:
    return json_error(501, "NOT_IMPLEMENTED",
                      f"webhook ingest is not implemented in integration-sidecar {__version__}")


async def _websocket(request: web.Request) -> web.Response:
    return json_error(501, "NOT_IMPLEMENTED",
                      f"the WebSocket edge is not implemented in integration-sidecar "
                      f"{__version__}")


def build_edge_app(config: EdgeConfig, metrics: Metrics) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[count_responses(metrics, "edge")])
    app.router.add_post("/webhooks/{source}", _webhooks)
    app.router.add_get("/ws", _websocket)
    return app

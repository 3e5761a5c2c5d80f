"""Small pieces shared by the edge and admin HTTP applications."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from sidecar.metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, reason: str, message: str) -> web.Response:
    """The error body every HTTP listener uses: ``{"error": {"reason", "message"}}``."""
    return web.json_response({"error": {"reason": reason, "message": message}}, status=status)


def count_responses(metrics: Metrics, listener: str) -> Callable[..., Awaitable[
        web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            metrics.http_requests.labels(listener, str(exc.status)).inc()
            raise
        except Exception:
            metrics.http_requests.labels(listener, "500").inc()
            raise
        metrics.http_requests.labels(listener, str(response.status)).inc()
        return response

    return middleware

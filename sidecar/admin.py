"""The admin listener: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for
probes, and the operator endpoints for webhook events (list, replay) and queued calls
(list, show, replay, cancel); the status page (``sidecar.status``) shares their access
rule."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from sidecar.clock import Clock
from sidecar.core.calls.queue.models import QueuedCall, QueuedState
from sidecar.core.calls.queue.runner import CallQueue
from sidecar.core.events.models import DeliveryRecord, DeliveryStatus
from sidecar.core.events.presence import Presence
from sidecar.errors import NotFound
from sidecar.http_common import count_responses, json_error
from sidecar.metrics import CONTENT_TYPE, Metrics
from sidecar.storage import Storage


@dataclass(frozen=True)
class Readiness:
    ready: bool
    #: Check name -> "ok" or why it failed.
    checks: dict[str, str] = field(default_factory=dict)


ReadinessProbe = Callable[[], Awaitable[Readiness]]


def _record(r: DeliveryRecord) -> dict[str, object]:
    return {"group": r.group, "event_id": r.event_id, "topic": r.topic, "offset": r.offset,
            "type": r.type, "status": r.status.value, "attempts": r.attempts,
            "consumer": r.consumer, "last_error": r.last_error, "due_at": r.due_at,
            "received_at": r.received_at}


def authorised(request: web.Request, token: str | None) -> bool:
    """The operator endpoints' rule: with a token configured, ``Bearer <token>``, or
    the token as the password of Basic credentials (what a browser can send)."""
    if token is None:
        return True
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        try:
            value = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except ValueError:  # bad base64 or not UTF-8
            return False
    elif scheme != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def event_routes(app: web.Application, storage: Storage, clock: Clock,
                 token: str | None, presence_source: Presence | None = None) -> None:
    """Operator endpoints: list events by status, replay dead or failed ones."""

    async def list_events(request: web.Request) -> web.Response:
        if not authorised(request, token):
            return json_error(401, "API_TOKEN_INVALID", "send Authorization: Bearer <token>")
        q = request.query
        try:
            status = DeliveryStatus(q["status"]) if q.get("status") else None
            limit = int(q.get("limit", "100"))
            if limit < 1:  # a negative LIMIT is no limit at all in SQLite
                raise ValueError
            limit = min(limit, 1000)
        except ValueError:
            return json_error(400, "INVALID_ARGUMENT", "status must be one of " + ", ".join(
                s.value for s in DeliveryStatus) + "; limit an integer from 1 (at most 1000)")
        topic = q.get("topic") or (f"webhooks.{q['source']}" if q.get("source") else None)
        records = await storage.list_deliveries(group=q.get("group"), topic=topic,
                                                status=status, limit=limit)
        return web.json_response({"events": [_record(r) for r in records]})

    async def replay(request: web.Request) -> web.Response:
        if not authorised(request, token):
            return json_error(401, "API_TOKEN_INVALID", "send Authorization: Bearer <token>")
        try:
            body = await request.json()
            group = str(body["group"])
            ids = [str(i) for i in body.get("event_ids", [])]
            statuses = [DeliveryStatus(s) for s in body.get("statuses", ["dead"])]
        except (ValueError, KeyError, TypeError):
            return json_error(400, "INVALID_ARGUMENT",
                              'body must be {"group": ..., "event_ids": [...], '
                              '"statuses": ["dead", "failed"]}')
        if any(s not in (DeliveryStatus.DEAD, DeliveryStatus.FAILED) for s in statuses):
            return json_error(400, "INVALID_ARGUMENT", "only dead or failed events replay")
        count = await storage.requeue(group, event_ids=ids, statuses=statuses, now=clock.time())
        return web.json_response({"requeued": count})

    async def presence(request: web.Request) -> web.Response:
        # Room names carry user ids (user:<sub>): operators only.
        if not authorised(request, token):
            return json_error(401, "API_TOKEN_INVALID", "send Authorization: Bearer <token>")
        topic = request.query.get("topic")
        if presence_source is None:
            return json_error(404, "WEBSOCKET_DISABLED", "the WebSocket edge is off")
        if topic:
            stats = presence_source.stats(topic)
            return web.json_response({"topic": topic, "connections": stats.connections,
                                      "users": stats.users})
        return web.json_response({"rooms": [
            {"topic": s.topic, "connections": s.connections, "users": s.users}
            for s in presence_source.topics()]})

    app.router.add_get("/presence", presence)
    app.router.add_get("/webhooks/events", list_events)
    app.router.add_post("/webhooks/replay", replay)


def queue_routes(app: web.Application, queue: CallQueue, token: str | None,
                 describe: Callable[[QueuedCall], dict[str, object]]) -> None:
    """Operator endpoints for queued calls: list, show, replay, cancel (``describe``:
    a call as JSON, the proto3 mapping of QueuedCall)."""

    def denied(request: web.Request) -> web.Response | None:
        if authorised(request, token):
            return None
        return json_error(401, "API_TOKEN_INVALID", "send Authorization: Bearer <token>")

    async def list_calls(request: web.Request) -> web.Response:
        if (refused := denied(request)) is not None:
            return refused
        q = request.query
        try:
            state = QueuedState(q["state"]) if q.get("state") else None
            limit = int(q.get("limit", "100"))
            if not limit >= 1:
                raise ValueError
        except ValueError:
            return json_error(400, "INVALID_ARGUMENT", "state must be one of " + ", ".join(
                s.value for s in QueuedState) + "; limit an integer from 1 (at most 1000)")
        calls = await queue.list_calls(state=state, integration=q.get("integration") or None,
                                 limit=min(limit, 1000))
        return web.json_response({"calls": [describe(c) for c in calls]})

    def one(action: Callable[[str], Awaitable[QueuedCall]]
            ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if (refused := denied(request)) is not None:
                return refused
            try:
                call = await action(request.match_info["id"])
            except NotFound as exc:
                return json_error(404, exc.reason, exc.message)
            return web.json_response(describe(call))

        return handle

    app.router.add_get("/calls", list_calls)
    app.router.add_get("/calls/{id}", one(queue.get))
    app.router.add_post("/calls/{id}/replay", one(queue.replay))
    app.router.add_post("/calls/{id}/cancel", one(queue.cancel))


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

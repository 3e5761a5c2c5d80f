"""``GET /ws``: authenticated WebSocket clients in rooms, fed by the live bus.

Authentication happens before the upgrade: a JWT from ``Authorization: Bearer``
or, for browsers (which cannot set headers on a WebSocket), the ``token`` query
parameter. The connection joins ``user:<sub>``, ``role:<r>`` per role claim and
``broadcast``, and may subscribe to topics its token lists.

Client -> server frames (JSON):
    {"type": "subscribe", "topic": "orders:42", "offset": 17}   offset optional
    {"type": "unsubscribe", "topic": "orders:42"}
Server -> client frames (JSON):
    {"id", "topic", "type", "data", "offset", "time", "attributes"}   an event
    {"control": "subscribed" | "unsubscribed", "topic"}
    {"control": "gap", "topic", "from_offset", "to_offset", "reason"}
    {"control": "error", "reason", "message"}
Resume on connect: ``?offsets={"user:alice": 12}`` (JSON) replays what was missed.
Close codes: 4001 token expired, 4008 slow consumer, 1001 server shutting down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from sidecar.clock import Clock, SystemClock
from sidecar.config import WebSocketConfig
from sidecar.core.events.live import Gap, LiveBus, SlowConsumer
from sidecar.core.events.models import StoredEvent
from sidecar.core.events.presence import Presence
from sidecar.edge.jwt_auth import AuthError, Identity, TokenVerifier, topic_allowed
from sidecar.errors import SidecarError
from sidecar.http_common import json_error
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.ws")

CLOSE_TOKEN_EXPIRED = 4001
CLOSE_SLOW_CONSUMER = 4008
MAX_SUBSCRIPTIONS = 100


def event_frame(event: StoredEvent) -> str:
    frame: dict[str, object] = {
        "id": event.id, "topic": event.topic, "type": event.type, "offset": event.offset,
        "time": event.time, "attributes": event.attributes,
    }
    if event.content_type.startswith("application/json") or event.content_type.endswith("+json"):
        try:
            frame["data"] = json.loads(event.data)
        except ValueError:
            frame["data_base64"] = base64.b64encode(event.data).decode()
    elif event.content_type.startswith("text/"):
        frame["data"] = event.data.decode("utf-8", "replace")
    else:
        frame["data_base64"] = base64.b64encode(event.data).decode()
    return json.dumps(frame, separators=(",", ":"))


class _FrameCache:
    """Frames of the latest events: an event goes to every connection in its room, so
    its frame is serialised once, not once per connection.

    Holds frames only, never events: a frame depends on nothing but the event, and an
    event id names one immutable event. Bounded by entries and by characters (frames
    are ASCII: ``json.dumps`` escapes the rest), the oldest going first.
    """

    def __init__(self, entries: int = 64, chars: int = 8 * 1024 * 1024) -> None:
        self._entries = entries
        self._chars = chars
        self._frames: dict[str, str] = {}
        self._held = 0

    def frame(self, event: StoredEvent) -> str:
        text = self._frames.get(event.id)
        if text is not None:
            return text
        text = event_frame(event)
        if len(text) <= self._chars // 2:  # a default max-size event (1 MiB) fits
            self._frames[event.id] = text
            self._held += len(text)
            while len(self._frames) > self._entries or self._held > self._chars:
                self._held -= len(self._frames.pop(next(iter(self._frames))))
        return text


@dataclass(eq=False)
class _Connection:
    ws: web.WebSocketResponse
    identity: Identity
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    #: The token-expiry timer, then the task closing the connection with 4001.
    expiry: asyncio.TimerHandle | asyncio.Task[None] | None = None


class WebSocketEdge:
    def __init__(self, config: WebSocketConfig, live: LiveBus, presence: Presence,
                 clock: Clock, metrics: Metrics) -> None:
        self._config = config
        self._live = live
        self._presence = presence
        self._clock = clock
        self._metrics = metrics
        self._verifier = TokenVerifier(config.jwt)
        self._connections: set[_Connection] = set()
        self._frames = _FrameCache()

    def update(self, config: WebSocketConfig) -> None:
        """Reload: keys, origins and limits apply to connections made from now on."""
        self._verifier = TokenVerifier(config.jwt)
        self._config = config

    def _refuse(self, status: int, reason: str, message: str) -> web.Response:
        self._metrics.ws_auth_failures.labels(reason).inc()
        return json_error(status, reason.upper(), message)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and self._config.allowed_origins and (
                origin.rstrip("/") not in self._config.allowed_origins):
            return self._refuse(403, "origin", "origin not allowed")
        if len(self._connections) >= self._config.max_connections:
            return json_error(503, "OVERLOADED", "too many WebSocket connections")
        scheme, _, header_token = request.headers.get("Authorization", "").partition(" ")
        token = header_token.strip() if scheme.lower() == "bearer" else ""
        token = token or request.query.get("token", "")
        if not token:
            return self._refuse(401, "missing", "send a JWT as Authorization: Bearer <token> "
                                                "or the token query parameter")
        try:
            identity = self._verifier.verify(token, self._clock.time())
        except AuthError as exc:
            return self._refuse(401, exc.reason, str(exc))
        try:
            resume = json.loads(request.query.get("offsets", "{}"))
            if not isinstance(resume, dict):
                raise ValueError
            offsets = {str(k): int(v) for k, v in resume.items()}
        except (ValueError, TypeError):
            return json_error(400, "INVALID_ARGUMENT",
                              'offsets must be JSON like {"user:alice": 12}')
        ws = web.WebSocketResponse(heartbeat=self._config.ping_interval,
                                   max_msg_size=self._config.max_message_bytes)
        await ws.prepare(request)
        conn = _Connection(ws, identity)
        self._connections.add(conn)
        self._metrics.ws_connections.inc()
        self._schedule_expiry(conn)
        try:
            rooms = [f"user:{identity.user}", *(f"role:{r}" for r in identity.roles),
                     "broadcast"]
            for room in rooms:
                self._subscribe(conn, room, offsets.get(room))
            for topic, offset in offsets.items():
                if topic not in conn.tasks:
                    await self._client_subscribe(conn, topic, offset)
            await self._read(conn)
        finally:
            if conn.expiry is not None:
                conn.expiry.cancel()
            for topic, task in list(conn.tasks.items()):
                task.cancel()
                self._presence.leave(topic, identity.user)
            for task in conn.tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._connections.discard(conn)
            self._metrics.ws_connections.dec()
        return ws

    async def _read(self, conn: _Connection) -> None:
        async for msg in conn.ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(msg.data)
                kind, topic = frame.get("type"), str(frame.get("topic", ""))
                offset = frame.get("offset")
                offset = None if offset is None else int(offset)
            except (ValueError, TypeError, AttributeError):
                await self._send_error(conn, "INVALID_ARGUMENT", "frames are JSON objects like "
                                       '{"type": "subscribe", "topic": "..."}')
                continue
            if kind == "subscribe":
                await self._client_subscribe(conn, topic, offset)
            elif kind == "unsubscribe":
                task = conn.tasks.pop(topic, None)
                if task is not None:
                    task.cancel()
                    self._presence.leave(topic, conn.identity.user)
                await conn.ws.send_str(json.dumps({"control": "unsubscribed", "topic": topic}))
            else:
                await self._send_error(conn, "INVALID_ARGUMENT", f"unknown frame type {kind!r}")

    async def _client_subscribe(self, conn: _Connection, topic: str, offset: int | None) -> None:
        if not topic_allowed(conn.identity, topic):
            await self._send_error(conn, "PERMISSION_DENIED",
                                   f"the token does not allow topic {topic!r}")
            return
        if len(conn.tasks) >= MAX_SUBSCRIPTIONS:
            await self._send_error(conn, "RESOURCE_EXHAUSTED",
                                   f"at most {MAX_SUBSCRIPTIONS} subscriptions")
            return
        if topic not in conn.tasks:
            self._subscribe(conn, topic, offset)

    def _subscribe(self, conn: _Connection, topic: str, offset: int | None) -> None:
        self._presence.join(topic, conn.identity.user)
        conn.tasks[topic] = asyncio.ensure_future(self._pump(conn, topic, offset))

    async def _pump(self, conn: _Connection, topic: str, offset: int | None) -> None:
        ws = conn.ws
        if offset is not None:
            self._metrics.resumes.labels("ws").inc()
        try:
            await ws.send_str(json.dumps({"control": "subscribed", "topic": topic}))
            async for item in self._live.subscribe(
                    [topic], start="latest" if offset is None else "after_offset",
                    after_offsets={} if offset is None else {topic: offset}, transport="ws",
                    heartbeat=math.inf):
                if item is None:
                    continue  # WebSocket pings are the heartbeat
                if isinstance(item, Gap):
                    await ws.send_str(json.dumps({
                        "control": "gap", "topic": item.topic, "from_offset": item.from_offset,
                        "to_offset": item.to_offset, "reason": item.reason}))
                else:
                    await ws.send_str(self._frames.frame(item))
        except SlowConsumer:
            log.warning("closing slow WebSocket client", extra={"user": conn.identity.user})
            await ws.close(code=CLOSE_SLOW_CONSUMER, message=b"slow consumer")
        except SidecarError as exc:
            if exc.reason == "SHUTTING_DOWN":
                await ws.close(code=1001, message=b"server shutting down")
            else:
                await self._send_error(conn, exc.reason, exc.message)
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away mid-send

    async def _send_error(self, conn: _Connection, reason: str, message: str) -> None:
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await conn.ws.send_str(json.dumps({"control": "error", "reason": reason,
                                               "message": message}))

    def _schedule_expiry(self, conn: _Connection) -> None:
        """Close the connection with 4001 when its token expires."""
        exp = conn.identity.expires_at
        if exp is None:
            return
        if type(self._clock) is SystemClock:
            # A timer handle, not a sleeping task, for every connection's lifetime.
            conn.expiry = asyncio.get_running_loop().call_later(
                max(0.0, exp - self._clock.time()), self._close_expired, conn)
        else:
            conn.expiry = asyncio.ensure_future(self._expire(conn, exp))

    def _close_expired(self, conn: _Connection) -> None:
        conn.expiry = asyncio.ensure_future(self._close_token_expired(conn))

    async def _expire(self, conn: _Connection, exp: float) -> None:
        await self._clock.sleep(max(0.0, exp - self._clock.time()))
        await self._close_token_expired(conn)

    async def _close_token_expired(self, conn: _Connection) -> None:
        await conn.ws.close(code=CLOSE_TOKEN_EXPIRED, message=b"token expired")

    async def close_all(self) -> None:
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutting down")

    def presence(self, topic: str) -> Mapping[str, int]:
        stats = self._presence.stats(topic)
        return {"connections": stats.connections, "users": stats.users}

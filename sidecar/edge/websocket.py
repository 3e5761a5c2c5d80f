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
    {"control": "subscribed", "topic", "offset"}   offset: events after it follow
    {"control": "unsubscribed", "topic"}
    {"control": "gap", "topic", "from_offset", "to_offset", "reason"}
    {"control": "error", "reason", "message", "topic"}   topic: when a (un)subscribe failed
Resume on connect: ``?offsets={"user:alice": 12}`` (JSON) replays what was missed.
Close codes: 4001 token expired, 4008 slow consumer, 1001 server shutting down.

Fan-out is the live bus's (``sidecar.core.events.feed``): each subscription of a
connection is a feed, with the connection as its outlet. This module frames (an
event's frame is built once for every connection: JSON and WebSocket framing) and
writes: while a socket's send buffer is under the high-water mark, frames go
straight into it, with no task or queue per connection, and frames for one socket
within one turn of the event loop (a group commit releases several events at once)
go out in one write; otherwise the feed sends its replay or backlog with
backpressure. Frames are not compressed: one frame for every socket is the point
(permessage-deflate is not negotiated).

Closing: every close (token expiry 4001, slow consumer 4008, shutdown 1001) only
marks the connection and interrupts its handler's ``receive()``; the handler closes
the socket itself. aiohttp's ``close()`` from another task while the handler waits in
``receive()`` cuts the connection without waiting for the client's close reply. Nor is
a feed's sending task cancelled before the close is done: aiohttp keeps one drain
waiter per connection, and cancelling a send waiting on it cancels the close too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from sidecar.clock import Clock, Timer
from sidecar.config import WebSocketConfig
from sidecar.core.events.feed import Feed, FrameCache, Gap, SlowConsumer
from sidecar.core.events.live import LiveBus
from sidecar.core.events.models import StoredEvent
from sidecar.core.events.presence import Presence
from sidecar.core.events.topics import BROADCAST, media_kind, role_room, topic_problem, user_room
from sidecar.edge.jwt_auth import AuthError, Identity, TokenVerifier, topic_allowed
from sidecar.errors import SidecarError
from sidecar.http_common import json_error
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.ws")

CLOSE_TOKEN_EXPIRED = 4001
CLOSE_SLOW_CONSUMER = 4008
CLOSE_GOING_AWAY = 1001
MAX_SUBSCRIPTIONS = 100
#: Bytes a socket's send buffer may hold before its events wait in a bounded backlog
#: (the transport's usual high-water mark).
WRITE_HIGH_WATER = 64 * 1024
#: Frames for one socket in one turn are joined into one write up to this many bytes.
JOIN_LIMIT = 64 * 1024


def event_frame(event: StoredEvent) -> str:
    frame: dict[str, object] = {
        "id": event.id, "topic": event.topic, "type": event.type, "offset": event.offset,
        "time": event.time, "attributes": event.attributes,
    }
    kind = media_kind(event.content_type)
    if kind == "json":
        try:
            frame["data"] = json.loads(event.data)
        except ValueError:
            frame["data_base64"] = base64.b64encode(event.data).decode()
    elif kind == "text":
        try:
            frame["data"] = event.data.decode("utf-8")
        except UnicodeDecodeError:  # another charset: sent as it is, not mangled
            frame["data_base64"] = base64.b64encode(event.data).decode()
    else:
        frame["data_base64"] = base64.b64encode(event.data).decode()
    return json.dumps(frame, separators=(",", ":"))


def _subscribed(topic: str, offset: int) -> str:
    """The frame saying ``topic`` is joined: the events after ``offset`` follow it."""
    return json.dumps({"control": "subscribed", "topic": topic, "offset": offset})


def wire_frame(text: str) -> bytes:
    """``text`` as one whole WebSocket text frame as a server sends it (unmasked, not
    compressed): the same bytes go to every connection."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 65536:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


def frame_payload(wire: bytes) -> bytes:
    """The payload of a frame made by :func:`wire_frame`."""
    size = wire[1] & 0x7F
    return wire[2 if size < 126 else 4 if size == 126 else 10:]


class _Frames:
    """The WebSocket wire format of a feed: whole frames (:func:`wire_frame`), an
    event's built once for every connection it goes to."""

    def __init__(self) -> None:
        self.event = FrameCache(_event_wire, entries=64)

    @staticmethod
    def gap(gap: Gap) -> bytes:
        return wire_frame(json.dumps({"control": "gap", "topic": gap.topic,
                                      "from_offset": gap.from_offset,
                                      "to_offset": gap.to_offset, "reason": gap.reason}))

    @staticmethod
    def subscribed(offsets: Mapping[str, int]) -> bytes:
        ((topic, offset),) = offsets.items()  # one topic a feed
        return wire_frame(_subscribed(topic, offset))

    @staticmethod
    def heartbeat() -> bytes:
        return _PING  # feeds with an outlet have none: aiohttp pings (``ping_interval``)


def _event_wire(event: StoredEvent) -> bytes:
    return wire_frame(event_frame(event))


_PING = bytes((0x89, 0))


@dataclass(eq=False, slots=True)
class _Connection:
    """One client: the outlet its feeds write to."""

    edge: WebSocketEdge
    ws: web.WebSocketResponse
    transport: asyncio.Transport
    identity: Identity
    #: topic -> the feed of this connection's subscription to it.
    members: dict[str, Feed[bytes]] = field(default_factory=dict)
    #: The token-expiry timer.
    expiry: Timer | None = None
    #: (code, message) once the connection is to be closed: its handler closes it.
    closing: tuple[int, bytes] | None = None
    #: The handler is waiting in ``receive()`` (a close interrupts it there).
    receiving: bool = False
    #: The task handling the connection (the aiohttp request handler).
    handler: asyncio.Task[Any] | None = None
    #: Tasks of feeds that left, still sending a frame: ended with the connection.
    senders: list[asyncio.Task[None]] = field(default_factory=list)
    #: Done once the handler is done with the connection (made when awaited).
    finished: asyncio.Future[None] | None = None
    #: Frames fanned out in this turn of the event loop, written together at its end.
    pending: list[bytes] | None = None

    def ready(self) -> bool:
        transport = self.transport
        # A closing socket takes frames and drops them (its handler is leaving).
        return (transport.get_write_buffer_size() <= WRITE_HIGH_WATER
                or transport.is_closing() or self.ws.closed)

    def write(self, frame: bytes) -> None:
        pending = self.pending
        if pending is None:
            self.pending = [frame]
            self.edge.unflushed(self)
        else:
            pending.append(frame)

    async def send(self, frame: bytes) -> None:
        self.edge.flush(self)  # what is pending goes first
        await self.ws.send_frame(frame_payload(frame), WSMsgType.TEXT)

    def ended(self, feed: Feed[Any], error: SidecarError) -> None:
        self.edge.feed_ended(self, feed, error)


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
        self._frames = _Frames()
        #: Connections with pending frames, and whether their flush is scheduled.
        self._unflushed: list[_Connection] = []
        self._flush_due = False

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
                                   max_msg_size=self._config.max_message_bytes, compress=False)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:  # the client left during the upgrade
            return ws
        conn = _Connection(self, ws, transport, identity)
        conn.handler = asyncio.current_task()
        self._connections.add(conn)
        self._metrics.ws_connections.inc()
        self._schedule_expiry(conn)
        try:
            rooms = [user_room(identity.user), *(role_room(r) for r in identity.roles),
                     BROADCAST]
            for room in rooms:
                await self._join(conn, room, offsets.get(room))
            for topic, offset in offsets.items():
                if topic not in conn.members:
                    await self._client_subscribe(conn, topic, offset)
            await self._read(conn)
            if conn.closing is not None:
                code, message = conn.closing
                await ws.close(code=code, message=message)
        finally:
            if conn.expiry is not None:
                conn.expiry.cancel()
            self._leave_all(conn)
            # Only now, with no close handshake left to share their drain wait with.
            for task in conn.senders:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._connections.discard(conn)
            self._metrics.ws_connections.dec()
            if conn.finished is not None and not conn.finished.done():
                conn.finished.set_result(None)
        return ws

    async def _read(self, conn: _Connection) -> None:
        """Handle the client's frames until it closes, or the connection is to be closed."""
        while conn.closing is None:
            conn.receiving = True
            try:
                msg = await conn.ws.receive()
            except asyncio.CancelledError:
                # A close interrupts a receive() this way (see :meth:`_close`).
                task = asyncio.current_task()
                if conn.closing is None or task is None or task.uncancel() > 0:
                    raise
                return
            finally:
                conn.receiving = False
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED,
                            WSMsgType.ERROR):
                return
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
                self._leave(conn, topic)
                self.flush(conn)
                await conn.ws.send_str(json.dumps({"control": "unsubscribed", "topic": topic}))
            else:
                await self._send_error(conn, "INVALID_ARGUMENT", f"unknown frame type {kind!r}")

    async def _client_subscribe(self, conn: _Connection, topic: str, offset: int | None) -> None:
        problem = topic_problem(topic)
        if problem:
            await self._send_error(conn, "INVALID_ARGUMENT", f"topic {problem}", topic[:100])
            return
        if not topic_allowed(conn.identity, topic):
            await self._send_error(conn, "PERMISSION_DENIED",
                                   f"the token does not allow topic {topic!r}", topic)
            return
        if len(conn.members) >= MAX_SUBSCRIPTIONS:
            await self._send_error(conn, "RESOURCE_EXHAUSTED",
                                   f"at most {MAX_SUBSCRIPTIONS} subscriptions", topic)
            return
        if topic not in conn.members:
            await self._join(conn, topic, offset)

    # ------------------------------------------------------------------ feeds

    async def _join(self, conn: _Connection, topic: str, offset: int | None) -> None:
        """Subscribe ``conn`` to ``topic``: live from now, or replaying after ``offset``."""
        # With a shared log, fix where this process follows the topic first.
        await self._live.ensure_following([topic])
        if topic in conn.members or conn.ws.closed or conn.closing is not None:
            return
        if offset is not None:
            self._metrics.resumes.labels("ws").inc()
        feed = conn.members[topic] = Feed(self._live, (topic,), "ws", self._frames, conn)
        self._presence.join(topic, conn.identity.user)
        feed.start({} if offset is None else {topic: offset})

    def _leave(self, conn: _Connection, topic: str) -> None:
        """Take ``conn`` off ``topic``. The feed's task, if it has one, sends nothing
        more; the handler ends it when the connection is done (see :meth:`Feed.close`)."""
        feed = conn.members.pop(topic, None)
        if feed is None:
            return
        self._presence.leave(topic, conn.identity.user)
        task = feed.close()
        if task is not None and not task.done():
            conn.senders = [t for t in conn.senders if not t.done()]
            conn.senders.append(task)

    def _leave_all(self, conn: _Connection) -> None:
        for topic in list(conn.members):
            self._leave(conn, topic)

    def feed_ended(self, conn: _Connection, feed: Feed[Any], error: SidecarError) -> None:
        """A feed of ``conn`` was ended by the bus, or its replay failed."""
        if isinstance(error, SlowConsumer):
            log.warning("closing slow WebSocket client", extra={"user": conn.identity.user})
            self._close(conn, CLOSE_SLOW_CONSUMER, b"slow consumer")
        elif error.reason == "SHUTTING_DOWN":
            self._close(conn, CLOSE_GOING_AWAY, b"server shutting down")
        else:  # e.g. storage unavailable: this subscription ends
            (topic,) = feed.topics
            if conn.members.get(topic) is feed:
                self._leave(conn, topic)
                self._write_error(conn, error.reason, error.message, topic)

    # ------------------------------------------------------------------ writing

    def unflushed(self, conn: _Connection) -> None:
        """``conn`` has pending frames: written together at the end of this turn."""
        self._unflushed.append(conn)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_all)

    def _flush_all(self) -> None:
        """End of the turn: each connection's frames in one write."""
        self._flush_due = False
        unflushed, self._unflushed = self._unflushed, []
        for conn in unflushed:
            self.flush(conn)

    @staticmethod
    def flush(conn: _Connection) -> None:
        pending = conn.pending
        if pending is None:
            return
        conn.pending = None
        transport = conn.transport
        if conn.ws.closed or transport.is_closing():
            return
        if len(pending) == 1:
            transport.write(pending[0])
        elif sum(map(len, pending)) <= JOIN_LIMIT:
            transport.write(b"".join(pending))
        else:  # big frames: no copy per connection (the transport keeps the shared bytes)
            for wire in pending:
                transport.write(wire)

    @staticmethod
    def _error_frame(reason: str, message: str, topic: str | None) -> str:
        frame = {"control": "error", "reason": reason, "message": message}
        if topic is not None:
            frame["topic"] = topic
        return json.dumps(frame)

    def _write_error(self, conn: _Connection, reason: str, message: str, topic: str) -> None:
        if conn.closing is None and not conn.ws.closed:
            conn.write(wire_frame(self._error_frame(reason, message, topic)))

    async def _send_error(self, conn: _Connection, reason: str, message: str,
                          topic: str | None = None) -> None:
        """An error frame; ``topic`` names the subscription a refusal or failure ended."""
        self.flush(conn)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await conn.ws.send_str(self._error_frame(reason, message, topic))

    # ------------------------------------------------------------------ closing

    def _close(self, conn: _Connection, code: int, message: bytes) -> None:
        """Close ``conn`` with ``code``: its feeds end now, and its handler closes the
        socket, at once if it is waiting for a frame, else once it is done with what it
        is doing. Never ``ws.close()`` from here: from another task than the handler's,
        aiohttp cuts the connection without waiting for the client's close reply (or
        the handler's own ending cancels the close mid-handshake)."""
        if conn.closing is not None:
            return
        conn.closing = (code, message)
        self._leave_all(conn)
        if conn.receiving and conn.handler is not None:
            conn.handler.cancel()

    def _schedule_expiry(self, conn: _Connection) -> None:
        """Close the connection with 4001 when its token expires."""
        exp = conn.identity.expires_at
        if exp is None:
            return
        # A timer, not a sleeping task, for every connection's lifetime.
        conn.expiry = self._clock.call_later(
            max(0.0, exp - self._clock.time()),
            functools.partial(self._close, conn, CLOSE_TOKEN_EXPIRED, b"token expired"))

    async def close_all(self) -> None:
        """Close every connection with 1001, all at once (each handler closes its own):
        each close waits for the client's answer (up to aiohttp's close timeout), so one
        at a time a few silent clients would use up the shutdown grace before the rest
        heard anything."""
        loop = asyncio.get_running_loop()
        finished = []
        for conn in list(self._connections):
            if conn.finished is None:
                conn.finished = loop.create_future()
            finished.append(conn.finished)
            self._close(conn, CLOSE_GOING_AWAY, b"server shutting down")
        await asyncio.gather(*finished)

    def presence(self, topic: str) -> Mapping[str, int]:
        stats = self._presence.stats(topic)
        return {"connections": stats.connections, "users": stats.users}

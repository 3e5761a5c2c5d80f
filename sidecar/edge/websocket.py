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

Fan-out: the connections in one topic on this process form a room, one sink on
the live bus. An event's frame is built once (JSON and WebSocket framing) and
written straight to every socket whose send buffer is under the high-water
mark, with no task or queue per connection; frames for one socket within one
turn of the event loop (a group commit releases several events at once) go out
in one write. A socket over the mark gets a
bounded backlog (the live bus's slow-consumer queue: disconnect, or drop the
oldest with a gap marker) and a task that drains it with backpressure, after
which the connection writes directly again. A resume (``offset``) replays into
the same kind of backlog. Frames are not compressed: one frame for every
socket is the point (permessage-deflate is not negotiated).
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
from sidecar.core.events.live import Gap, LiveBus, Subscriber
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


class _FrameCache:
    """Frames of the latest events: an event goes to every connection in its room, so
    its frame is serialised once, not once per connection.

    Holds frames only, never events: a frame depends on nothing but the event, and an
    event id names one immutable event. Frames are whole WebSocket frames
    (:func:`wire_frame`). Bounded by entries and by bytes, the oldest going first.
    """

    def __init__(self, entries: int = 64, chars: int = 8 * 1024 * 1024) -> None:
        self._entries = entries
        self._chars = chars
        self._frames: dict[str, bytes] = {}
        self._held = 0

    def frame(self, event: StoredEvent) -> bytes:
        wire = self._frames.get(event.id)
        if wire is not None:
            return wire
        wire = wire_frame(event_frame(event))
        if len(wire) <= self._chars // 2:  # a default max-size event (1 MiB) fits
            self._frames[event.id] = wire
            self._held += len(wire)
            while len(self._frames) > self._entries or self._held > self._chars:
                self._held -= len(self._frames.pop(next(iter(self._frames))))
        return wire


@dataclass(eq=False, slots=True)
class _Connection:
    ws: web.WebSocketResponse
    transport: asyncio.Transport
    identity: Identity
    #: topic -> this connection's place in the topic's room.
    members: dict[str, _Member] = field(default_factory=dict)
    #: The token-expiry timer.
    expiry: Timer | None = None
    #: The token expired: the connection's own handler closes it with 4001.
    expired: bool = False
    #: The handler is waiting in ``receive()`` (the expiry interrupts it there).
    receiving: bool = False
    #: The task handling the connection (the aiohttp request handler).
    handler: asyncio.Task[Any] | None = None
    #: The task closing the connection as a slow consumer.
    closer: asyncio.Task[bool] | None = None
    #: Frames fanned out in this turn of the event loop, written together at its end.
    pending: list[bytes] | None = None


class _Member:
    """One connection in one room."""

    __slots__ = ("backlog", "conn", "sent", "task", "topic")

    def __init__(self, conn: _Connection, topic: str) -> None:
        self.conn = conn
        self.topic = topic
        #: The last offset a backlog sent (or a replay): an event fanned out later at or
        #: below it (committed while the replay read it) is not sent again.
        self.sent = 0
        #: None while the socket keeps up: events are written to it directly. Else the
        #: bounded queue they wait in (replaying, or the socket backed up), and the task
        #: sending it.
        self.backlog: Subscriber | None = None
        self.task: asyncio.Task[None] | None = None


class _Room:
    """The connections of this process in one topic: the live bus's sink for it."""

    __slots__ = ("edge", "head_known", "members", "top", "topic")

    def __init__(self, edge: WebSocketEdge, topic: str) -> None:
        self.edge = edge
        self.topic = topic
        self.members: dict[_Member, None] = {}
        #: The highest offset fanned out to the room, and (once ``head_known``) at least
        #: the topic's last offset read after the room was attached: every later event
        #: comes through the room, so a member joining live starts after ``top``.
        self.top = 0
        self.head_known = False

    def __len__(self) -> int:
        return len(self.members)

    def deliver(self, event: StoredEvent) -> None:
        self.edge.fan_out(self, event)


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
        self._rooms: dict[str, _Room] = {}
        self._observer = live.observer
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
        conn = _Connection(ws, transport, identity)
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
            if conn.expired:
                await self._close_token_expired(conn)
        finally:
            if conn.expiry is not None:
                conn.expiry.cancel()
            for task in self._leave_all(conn):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._connections.discard(conn)
            self._metrics.ws_connections.dec()
        return ws

    async def _read(self, conn: _Connection) -> None:
        """Handle the client's frames until it closes, or its token expires."""
        while not conn.expired:
            conn.receiving = True
            try:
                msg = await conn.ws.receive()
            except asyncio.CancelledError:
                # The expiry interrupts a receive() this way, so that the close with 4001
                # happens in this task: aiohttp's close() from another task cuts the
                # connection without waiting for the client's close reply.
                task = asyncio.current_task()
                if not conn.expired or task is None or task.uncancel() > 0:
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
                self._flush(conn)
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

    # ------------------------------------------------------------------ rooms

    async def _join(self, conn: _Connection, topic: str, offset: int | None) -> None:
        """Put ``conn`` in ``topic``'s room: live from now, or replaying after ``offset``."""
        # With a shared log, fix where this process follows the topic first.
        await self._live.ensure_following([topic])
        if topic in conn.members or conn.ws.closed or conn.closer is not None or conn.expired:
            return
        member = _Member(conn, topic)
        room = self._rooms.get(topic)
        if offset is None and room is not None and room.head_known:
            # In the room and told so in one step: every event after this frame follows it.
            member.sent = room.top
            self._enter(member)
            self._flush(conn)
            conn.transport.write(wire_frame(_subscribed(topic, room.top)))
            return
        member.backlog = self._new_backlog(topic)
        if offset is not None:
            self._metrics.resumes.labels("ws").inc()
            member.backlog.seen[topic] = offset
        self._enter(member)
        member.task = asyncio.ensure_future(self._replay(member, offset))

    def _new_backlog(self, topic: str) -> Subscriber:
        policy = self._live.policy
        return Subscriber(frozenset((topic,)), "ws", policy.queue_size, policy.slow_consumer)

    def _enter(self, member: _Member) -> None:
        conn, topic = member.conn, member.topic
        conn.members[topic] = member
        room = self._rooms.get(topic)
        if room is None:
            room = self._rooms[topic] = _Room(self, topic)
            self._live.attach(topic, room)
        room.members[member] = None
        self._presence.join(topic, conn.identity.user)
        self._observer.subscribers_changed("ws", 1)

    def _leave(self, conn: _Connection, topic: str) -> asyncio.Task[None] | None:
        """Take ``conn`` out of ``topic``'s room; the member's task (cancelled) if any."""
        member = conn.members.pop(topic, None)
        if member is None:
            return None
        room = self._rooms.get(topic)
        if room is not None:
            room.members.pop(member, None)
            if not room.members:
                del self._rooms[topic]
                self._live.detach(topic, room)
        self._presence.leave(topic, conn.identity.user)
        self._observer.subscribers_changed("ws", -1)
        task, member.task = member.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            return task
        return None

    def _leave_all(self, conn: _Connection) -> list[asyncio.Task[None]]:
        tasks = [self._leave(conn, topic) for topic in list(conn.members)]
        return [t for t in tasks if t is not None]

    def fan_out(self, room: _Room, event: StoredEvent) -> None:
        """One live event to everyone in ``room``: the same bytes to every socket that
        keeps up, the bounded backlog for the others."""
        wire = self._frames.frame(event)
        if event.offset > room.top:
            room.top = event.offset
        sent = 0
        slow: list[_Member] = []
        unflushed = self._unflushed
        for member in room.members:
            backlog = member.backlog
            if backlog is None:
                if event.offset <= member.sent:
                    continue  # already sent by its replay: the seam
                conn = member.conn
                transport = conn.transport
                if conn.ws.closed or transport.is_closing():
                    continue  # leaving: its handler takes it out of the room
                if transport.get_write_buffer_size() <= WRITE_HIGH_WATER:
                    pending = conn.pending
                    if pending is None:
                        conn.pending = [wire]
                        unflushed.append(conn)
                    else:
                        pending.append(wire)
                    sent += 1
                    continue
                self._flush(conn)  # what is pending goes before the backlog
                backlog = member.backlog = self._new_backlog(member.topic)
                backlog.seen[member.topic] = member.sent
                member.task = asyncio.ensure_future(self._send_backlog(member))
            if not backlog.offer(event):
                slow.append(member)
        if sent:
            self._observer.delivered_live("ws", sent, self._live.latency(event))
            if not self._flush_due:
                self._flush_due = True
                asyncio.get_running_loop().call_soon(self._flush_all)
        for member in slow:
            self._slow_consumer(member)

    def _flush_all(self) -> None:
        """End of the turn: each connection's frames in one write."""
        self._flush_due = False
        unflushed, self._unflushed = self._unflushed, []
        for conn in unflushed:
            self._flush(conn)

    @staticmethod
    def _flush(conn: _Connection) -> None:
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

    def _slow_consumer(self, member: _Member) -> None:
        conn = member.conn
        assert member.backlog is not None
        self._observer.slow_consumer("ws", member.backlog.policy)
        log.warning("closing slow WebSocket client", extra={"user": conn.identity.user})
        self._leave_all(conn)
        if conn.closer is None:
            conn.closer = asyncio.ensure_future(
                conn.ws.close(code=CLOSE_SLOW_CONSUMER, message=b"slow consumer"))

    async def _replay(self, member: _Member, offset: int | None) -> None:
        """Resume: the retained events after ``offset``, then what queued meanwhile.
        Without an offset: the room's head (read once per room), then what queued."""
        ws, backlog, topic = member.conn.ws, member.backlog, member.topic
        assert backlog is not None
        try:
            if offset is None:
                head = await self._live.head(topic)
                room = self._rooms.get(topic)
                if room is not None and member in room.members:
                    room.top = max(room.top, head)
                    room.head_known = True
                    head = room.top
                backlog.seen[topic] = head
                await ws.send_str(_subscribed(topic, head))
                await self._send_backlog(member)
                return
            await ws.send_str(_subscribed(topic, offset))
            async for item in self._live.history(member.topic, offset):
                if isinstance(item, Gap):
                    backlog.seen[item.topic] = item.to_offset
                    await self._send_gap(ws, item.topic, item.from_offset, item.to_offset,
                                         item.reason)
                else:
                    backlog.seen[item.topic] = item.offset
                    await ws.send_frame(frame_payload(self._frames.frame(item)),
                                        WSMsgType.TEXT)
        except SidecarError as exc:  # e.g. storage unavailable: this subscription ends
            self._leave(member.conn, member.topic)
            await self._send_error(member.conn, exc.reason, exc.message, member.topic)
            return
        except (ConnectionResetError, RuntimeError):
            return  # the client went away mid-send
        await self._send_backlog(member)

    async def _send_backlog(self, member: _Member) -> None:
        """Send ``member``'s backlog with backpressure (gap markers for what the
        drop-oldest policy dropped; events already replayed skipped); once it is empty,
        the connection is written to directly again."""
        ws, backlog, topic = member.conn.ws, member.backlog, member.topic
        assert backlog is not None
        try:
            while True:
                if backlog.dropped:
                    spans = sorted(backlog.dropped.items())
                    backlog.dropped.clear()
                    for gap_topic, (lo, hi) in spans:
                        # Less what the client has from the log (replayed, or at or below
                        # its subscribed offset): dropped events it had anyway.
                        last = backlog.seen.get(gap_topic, 0)
                        if hi <= last:
                            continue
                        backlog.seen[gap_topic] = hi
                        self._observer.gap("slow_consumer")
                        await self._send_gap(ws, gap_topic, max(lo, last + 1), hi,
                                             "slow_consumer")
                    continue
                if not backlog.queue:
                    break
                item = backlog.queue.popleft()
                if not isinstance(item, StoredEvent) or item.offset <= backlog.seen.get(topic, 0):
                    continue  # already replayed: the seam
                backlog.seen[topic] = item.offset
                await ws.send_frame(frame_payload(self._frames.frame(item)), WSMsgType.TEXT)
                self._observer.delivered_live("ws", 1, self._live.latency(item))
        except (ConnectionResetError, RuntimeError):
            return  # the client went away mid-send
        # Empty, and no await since: later events go straight to the socket again.
        member.sent = backlog.seen.get(topic, member.sent)
        member.backlog = None
        member.task = None

    async def _send_gap(self, ws: web.WebSocketResponse, topic: str, lo: int, hi: int,
                        reason: str) -> None:
        await ws.send_str(json.dumps({"control": "gap", "topic": topic, "from_offset": lo,
                                      "to_offset": hi, "reason": reason}))

    async def _send_error(self, conn: _Connection, reason: str, message: str,
                          topic: str | None = None) -> None:
        """An error frame; ``topic`` names the subscription a refusal or failure ended."""
        self._flush(conn)
        frame = {"control": "error", "reason": reason, "message": message}
        if topic is not None:
            frame["topic"] = topic
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await conn.ws.send_str(json.dumps(frame))

    def _schedule_expiry(self, conn: _Connection) -> None:
        """Close the connection with 4001 when its token expires."""
        exp = conn.identity.expires_at
        if exp is None:
            return
        # A timer, not a sleeping task, for every connection's lifetime.
        conn.expiry = self._clock.call_later(max(0.0, exp - self._clock.time()),
                                             functools.partial(self._close_expired, conn))

    def _close_expired(self, conn: _Connection) -> None:
        """The token's time is up: the handler closes the connection with 4001, now if
        it is waiting for a frame, else once it is done with what it is doing."""
        conn.expired = True
        if conn.receiving and conn.handler is not None:
            conn.handler.cancel()

    async def _close_token_expired(self, conn: _Connection) -> None:
        self._leave_all(conn)
        await conn.ws.close(code=CLOSE_TOKEN_EXPIRED, message=b"token expired")

    async def close_all(self) -> None:
        """Close every connection with 1001, all at once: each close waits for the
        client's answer (up to aiohttp's close timeout), so one at a time a few silent
        clients would use up the shutdown grace before the rest heard anything."""

        async def close(conn: _Connection) -> None:
            self._leave_all(conn)
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"server shutting down")

        await asyncio.gather(*(close(conn) for conn in list(self._connections)))

    def presence(self, topic: str) -> Mapping[str, int]:
        stats = self._presence.stats(topic)
        return {"connections": stats.connections, "users": stats.users}

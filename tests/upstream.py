"""A real aiohttp upstream on 127.0.0.1 that misbehaves on purpose.

Each request is answered by the next scripted action (or the default), and
recorded so tests can assert on what actually reached the upstream.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Self

from aiohttp import web

Action = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


def reply(status: int = 200, body: bytes = b"ok", headers: dict[str, str] | None = None
          ) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers or {})

    return act


def hang() -> Action:
    """Never answers (until the server closes)."""

    async def act(request: web.Request) -> web.StreamResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return act


def reset() -> Action:
    """Drops the connection without an answer."""

    async def act(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        sock = transport.get_extra_info("socket")
        if sock is not None:  # RST instead of FIN
            linger_zero = b"\x01\x00\x00\x00\x00\x00\x00\x00"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger_zero)
        transport.close()
        raise asyncio.CancelledError

    return act


def slow(seconds: float, then: Action | None = None) -> Action:
    async def act(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await (then or reply())(request)

    return act


@dataclass
class Upstream:
    default: Action = field(default_factory=reply)
    script: collections.deque[Action] = field(default_factory=collections.deque)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    def then(self, *actions: Action) -> Upstream:
        self.script.extend(actions)
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(Seen(request.method, request.path, request.query_string,
                              dict(request.headers), body))
        self.arrived.set()
        action = self.script.popleft() if self.script else self.default
        return await action(request)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

"""A fake OpenTelemetry Collector: a real aiohttp server on 127.0.0.1 that accepts
``POST /v1/traces`` in OTLP/JSON (gzip too), keeps the decoded spans, and answers
with whatever a test scripts (503, 429 with Retry-After, a hang)."""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.upstream import Action, reply

GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Collector:
    script: collections.deque[Action] = field(default_factory=collections.deque)
    #: Every export request as received: headers and the decoded JSON body.
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    #: Every span accepted (answered 2xx), with its resource's attributes.
    spans: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    def then(self, *actions: Action) -> Collector:
        self.script.extend(actions)
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        # aiohttp inflates a gzip body itself (Content-Encoding); a body still
        # compressed would mean the sender compressed it twice.
        raw = await request.read()
        assert not raw.startswith(GZIP_MAGIC)
        assert request.content_type == "application/json"
        body = json.loads(raw)
        self.requests.append((dict(request.headers), body))
        action = self.script.popleft() if self.script else reply(200, b"{}")
        resp = await action(request)
        if 200 <= resp.status < 300:
            for rs in body["resourceSpans"]:
                self.resources.append(attributes(rs["resource"]))
                for ss in rs["scopeSpans"]:
                    self.spans += ss["spans"]
        async with self.changed:
            self.changed.notify_all()
        return resp

    async def wait_requests(self, count: int, timeout: float = 5.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.requests) >= count),
                                   timeout)

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def attributes(item: dict[str, Any]) -> dict[str, Any]:
    """An OTLP/JSON ``attributes`` list as a dict; ``intValue`` (a string) back to int."""
    out: dict[str, Any] = {}
    for kv in item.get("attributes", []):
        ((kind, value),) = kv["value"].items()
        out[kv["key"]] = int(value) if kind == "intValue" else value
    return out

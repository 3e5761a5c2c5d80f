"""A fake payment gateway: the third party the orders service integrates with.

It behaves like a real one where it matters for the demo:
- ``POST /v1/charges`` needs the API key (the sidecar injects it) and an
  ``Idempotency-Key``; the first attempt of each new key answers 503 once (a blip
  the sidecar retries through, with the same key), then the charge is created;
- a key seen before returns the charge it created (no second charge);
- after a charge, it sends a ``charge.succeeded`` webhook signed the way Stripe
  signs (``Stripe-Signature: t=..,v1=hex(HMAC-SHA256(secret, "t.body"))``) to the
  sidecar's edge, retrying until it gets a 2xx, and sends it a second time, as
  providers do (at-least-once), to show the sidecar's de-duplication.

Run alone: ``python examples/orders/gateway.py --port 8081 --webhook-url ...``
(``PAYMENTS_API_KEY`` and ``PAYMENTS_WEBHOOK_SECRET`` from the environment).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

#: How many times a webhook is attempted before the gateway gives up on it.
WEBHOOK_ATTEMPTS = 8
#: Ceiling of the first retry delay (s); doubles per attempt.
WEBHOOK_BACKOFF = 0.1


def stripe_signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass
class WebhookDelivery:
    event_id: str
    attempts: int = 0
    #: HTTP status and JSON body of each answered attempt.
    answers: list[tuple[int, Any]] = field(default_factory=list)


class FakeGateway:
    def __init__(self, api_key: str, webhook_secret: str, webhook_url: str = "", *,
                 webhook_delay: float = 0.2, duplicate_webhooks: bool = True) -> None:
        self.api_key = api_key
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.webhook_delay = webhook_delay
        self.duplicate_webhooks = duplicate_webhooks
        #: Idempotency-Key -> the charge it created.
        self.charges: dict[str, dict[str, Any]] = {}
        #: Requests per idempotency key, answered or not.
        self.requests: dict[str, int] = {}
        self.deliveries: list[WebhookDelivery] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    # ------------------------------------------------------------------ HTTP API

    async def _create_charge(self, request: web.Request) -> web.Response:
        expected = f"Bearer {self.api_key}"
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            return web.json_response({"error": "invalid api key"}, status=401)
        key = request.headers.get("Idempotency-Key", "")
        if not key:
            return web.json_response({"error": "Idempotency-Key required"}, status=400)
        seen = self.requests.get(key, 0)
        self.requests[key] = seen + 1
        if key in self.charges:
            return web.json_response(self.charges[key], status=200)
        if seen == 0:
            return web.json_response({"error": "temporarily unavailable"}, status=503,
                                     headers={"Retry-After": "0"})
        order = await request.json()
        charge = {"id": f"ch_{secrets.token_hex(8)}", "status": "succeeded",
                  "amount": order["amount"], "currency": order.get("currency", "eur"),
                  "metadata": order.get("metadata", {})}
        self.charges[key] = charge
        self._spawn(self._send_webhook(charge))
        return web.json_response(charge, status=201)

    async def _list_charges(self, request: web.Request) -> web.Response:
        return web.json_response({"charges": list(self.charges.values())})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/charges", self._create_charge)
        app.router.add_get("/v1/charges", self._list_charges)
        return app

    # ------------------------------------------------------------------ webhooks

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_webhook(self, charge: dict[str, Any]) -> None:
        await asyncio.sleep(self.webhook_delay)  # providers send webhooks a moment later
        event: dict[str, Any] = {"id": f"evt_{secrets.token_hex(8)}", "type": "charge.succeeded",
                 "created": int(time.time()), "data": {"object": charge}}
        body = json.dumps(event).encode()
        for _ in range(2 if self.duplicate_webhooks else 1):
            delivery = WebhookDelivery(event["id"])
            self.deliveries.append(delivery)
            await self._deliver(delivery, body)

    async def _deliver(self, delivery: WebhookDelivery, body: bytes) -> None:
        assert self._session is not None
        for attempt in range(WEBHOOK_ATTEMPTS):
            delivery.attempts += 1
            headers = {"Content-Type": "application/json",
                       "Stripe-Signature": stripe_signature(self.webhook_secret, body,
                                                            int(time.time()))}
            try:
                async with self._session.post(self.webhook_url, data=body,
                                              headers=headers) as resp:
                    answer = await resp.json(content_type=None)
                    delivery.answers.append((resp.status, answer))
                    if resp.status < 300:
                        return
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass
            await asyncio.sleep(secrets.SystemRandom().uniform(0, WEBHOOK_BACKOFF * 2 ** attempt))

    async def webhooks_sent(self) -> list[WebhookDelivery]:
        """Wait for every webhook in progress to be delivered (or given up on)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.deliveries

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


async def _serve(args: argparse.Namespace) -> None:
    gateway = FakeGateway(os.environ["PAYMENTS_API_KEY"], os.environ["PAYMENTS_WEBHOOK_SECRET"],
                          args.webhook_url)
    url = await gateway.start(args.host, args.port)
    print(f"fake payment gateway on {url}, webhooks to {args.webhook_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--webhook-url", default="http://127.0.0.1:8080/webhooks/payments")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()

"""The orders service: an app that uses the sidecar for everything third-party.

- pays an order with ``Call`` to the ``payments`` integration, with an idempotency
  key derived from the order, so paying the same order twice charges it once;
- receives the gateway's ``charge.succeeded`` webhooks through a durable
  ``Subscribe`` (group ``orders``) and acks each one after handling it;
- ``Publish``es ``order:status_changed`` to the buyer's room ``user:<id>``, which
  the browser page (static/index.html, clients/web/sidecar-ws.js) shows live.

It serves the page and a small JSON API:
    POST /api/orders             {"user_id", "amount"} -> the order (status "created")
    POST /api/orders/{id}/pay    charge it (again: the same key, no second charge)
    GET  /api/orders/{id}        the order and the offset of its last status event
    GET  /api/token?user=<id>    a short-lived JWT for the page's WebSocket
    GET  /api/config             where the page connects (the sidecar's /ws)

Run alone: ``python examples/orders/service.py --sidecar 127.0.0.1:50051 --ws-url
ws://127.0.0.1:8080/ws`` with ``ORDERS_JWT_SECRET`` in the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STATIC = HERE / "static"
WEB_CLIENT = REPO / "clients" / "web" / "sidecar-ws.js"


def use_checkout_client() -> None:
    """Import the Python client from this checkout when it is not installed."""
    try:
        import integration_sidecar_client  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(REPO / "clients" / "python" / "src"))


use_checkout_client()

from integration_sidecar_client import (  # noqa: E402
    AsyncSidecarClient,
    DeadLetter,
    Event,
    SidecarError,
)

log = logging.getLogger("orders")

GROUP = "orders"
WEBHOOK_TOPIC = "webhooks.payments"
STATUS_EVENT = "order:status_changed"
#: Lifetime of the page's WebSocket token; the page asks for a new one on reconnect.
TOKEN_TTL = 600


class PaymentFailed(Exception):
    """The gateway refused the charge, or no answer could be had from it."""


@dataclass
class Order:
    id: str
    user_id: str
    amount: int
    currency: str = "eur"
    status: str = "created"
    charge_id: str = ""
    #: Offset of the order's last status event in ``user:<user_id>``.
    offset: int = 0
    history: list[str] = field(default_factory=list)


class OrdersService:
    def __init__(self, jwt_secret: str, *, consumer: str = "orders-1") -> None:
        self.jwt_secret = jwt_secret
        self.consumer = consumer
        self.orders: dict[str, Order] = {}
        #: Webhook event ids handled (and so acked), in order.
        self.handled: list[str] = []
        self.sidecar: AsyncSidecarClient | None = None
        self.ws_url = ""
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()

    # ------------------------------------------------------------------ the business

    async def create_order(self, user_id: str, amount: int) -> Order:
        order = Order(id=f"ord_{secrets.token_hex(6)}", user_id=user_id, amount=amount)
        self.orders[order.id] = order
        await self._set_status(order, "created", f"{order.id}:created")
        return order

    async def pay(self, order: Order) -> dict[str, Any]:
        """Charge the order. The idempotency key names the order, so a retry of this
        request (a double click, a timeout on our side) replays the first answer."""
        assert self.sidecar is not None
        body = json.dumps({"amount": order.amount, "currency": order.currency,
                           "metadata": {"order_id": order.id, "user_id": order.user_id}})
        try:
            resp = await self.sidecar.call(
                "payments", "POST", "/charges", body=body.encode(),
                headers={"Content-Type": "application/json"},
                idempotency_key=f"{order.id}:charge")
        except SidecarError as exc:
            # Circuit open, rate limited, gateway unreachable...: the sidecar already
            # retried what was worth retrying. The same key is safe to try again later.
            raise PaymentFailed(f"no answer from the gateway ({exc.reason or exc.code.name})"
                                ) from None
        if not resp.ok:
            raise PaymentFailed(f"the gateway answered {resp.status}")
        charge = resp.json()
        async with self._lock:
            order.charge_id = charge["id"]
            if order.status == "created":  # the webhook may have been faster
                await self._set_status(order, "payment_pending", f"{order.id}:pending")
        return {"order": asdict(order), "charge": charge, "replayed": resp.replayed,
                "attempts": resp.attempts}

    async def on_webhook(self, event: Event) -> None:
        """A gateway webhook from the durable group; returning acks it."""
        payload = event.json()
        if payload.get("type") != "charge.succeeded":
            return  # not ours to act on: acked and forgotten
        charge = payload["data"]["object"]
        order = self.orders.get(charge.get("metadata", {}).get("order_id", ""))
        if order is None:
            raise DeadLetter(f"no order for charge {charge.get('id')}")
        async with self._lock:
            order.charge_id = charge["id"]
            if order.status != "paid":
                # The key makes a redelivered webhook publish nothing new.
                await self._set_status(order, "paid", f"{event.id}:paid")
        self.handled.append(event.id)

    async def _set_status(self, order: Order, status: str, key: str) -> None:
        assert self.sidecar is not None
        order.status = status
        order.history.append(status)
        data = {"order_id": order.id, "status": status, "charge_id": order.charge_id,
                "amount": order.amount, "currency": order.currency}
        result = await self.sidecar.publish(
            f"user:{order.user_id}", json.dumps(data).encode(), type=STATUS_EVENT,
            content_type="application/json", idempotency_key=key)
        order.offset = max(order.offset, result.offset)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_status(self, order_id: str, status: str) -> Order:
        """Wait until order ``order_id`` reaches ``status`` (bound it with a timeout)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.orders[order_id].status == status)
        return self.orders[order_id]

    # ------------------------------------------------------------------ HTTP

    def _order(self, request: web.Request) -> Order:
        order = self.orders.get(request.match_info["id"])
        if order is None:
            raise web.HTTPNotFound(text="no such order")
        return order

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            user_id, amount = str(body["user_id"]), int(body["amount"])
        except (KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text='send {"user_id": "...", "amount": 1200}') from None
        order = await self.create_order(user_id, amount)
        return web.json_response(asdict(order), status=201)

    async def _pay(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self.pay(self._order(request)))
        except PaymentFailed as exc:
            return web.json_response({"error": str(exc)}, status=502)

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self._order(request)))

    async def _token(self, request: web.Request) -> web.Response:
        # Demo only: a real app takes the user from its own session, never a parameter.
        user = request.query.get("user", "")
        if not user:
            raise web.HTTPBadRequest(text="user required")
        token = jwt.encode({"sub": user, "exp": int(time.time()) + TOKEN_TTL},
                           self.jwt_secret, algorithm="HS256")
        return web.Response(text=token, headers={"Cache-Control": "no-store"})

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response({"ws_url": self.ws_url})

    async def _page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _web_client(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_CLIENT, headers={"Content-Type": "text/javascript"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/sidecar-ws.js", self._web_client)
        app.router.add_get("/api/config", self._config)
        app.router.add_get("/api/token", self._token)
        app.router.add_post("/api/orders", self._create)
        app.router.add_get("/api/orders/{id}", self._get)
        app.router.add_post("/api/orders/{id}/pay", self._pay)
        return app

    # ------------------------------------------------------------------ lifecycle

    async def start_http(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen first: the page's origin goes into the sidecar's allowed origins."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def connect(self, sidecar_target: str, ws_url: str) -> None:
        """Use the sidecar at ``sidecar_target`` and start consuming webhooks."""
        self.ws_url = ws_url
        self.sidecar = AsyncSidecarClient(sidecar_target, timeout=15)
        self._consumer = asyncio.create_task(
            self.sidecar.consume(GROUP, self.consumer, WEBHOOK_TOPIC, self.on_webhook),
            name="orders-consumer")

    async def stop(self) -> None:
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
        if self._runner is not None:
            await self._runner.cleanup()
        if self.sidecar is not None:
            await self.sidecar.close()


async def _serve(args: argparse.Namespace) -> None:
    service = OrdersService(os.environ["ORDERS_JWT_SECRET"])
    url = await service.start_http(args.host, args.port)
    await service.connect(args.sidecar, args.ws_url)
    print(f"orders service on {url} (sidecar {args.sidecar})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--sidecar", default="127.0.0.1:50051")
    parser.add_argument("--ws-url", default="ws://127.0.0.1:8080/ws")
    logging.basicConfig(level=logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()

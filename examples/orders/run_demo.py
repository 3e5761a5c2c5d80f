"""Run the orders example end to end and check every step.

Starts the sidecar (a separate process, on examples/orders/sidecar.yaml with free
loopback ports and a temporary data directory), the fake payment gateway and the
orders service (in this process), then: creates an order, pays it through ``Call``
(the gateway fails the first attempt; the retry carries the same idempotency key),
pays it again (replayed, no second charge), lets the gateway send its signed
webhook twice (stored once, the duplicate refused), waits for the service to
receive it through its durable group and ack it, and reads the
``order:status_changed`` events the service published to the buyer's room. With
``--browser <chromium>`` a headless Chromium page shows the order going to "paid"
live, with its live/offline badge.

One line per step; exits 1 at the first failed step (with the sidecar's log tail),
0 when all pass.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import service  # first: it finds the Python client in this checkout if not installed
import yaml
from gateway import FakeGateway
from integration_sidecar_client import AsyncSidecarClient, Event, StartPosition
from service import OrdersService

HERE = Path(__file__).resolve().parent
USER = "u_ada"
AMOUNT = 4200
STATUSES = ["created", "payment_pending", "paid"]


class StepFailed(Exception):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def ok(message: str) -> None:
    print(f"ok    {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SidecarProcess:
    """``python -m sidecar serve`` on a config written for this run."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.grpc = f"127.0.0.1:{free_port()}"
        self.edge_port = free_port()
        self.admin = f"http://127.0.0.1:{free_port()}"
        self.log_path = workdir / "sidecar.log"
        self.proc: asyncio.subprocess.Process | None = None

    def write_config(self, gateway_url: str, page_origin: str) -> Path:
        config = yaml.safe_load((HERE / "sidecar.yaml").read_text())
        server = config["server"]
        server["grpc"]["address"] = self.grpc
        server["edge"]["port"] = self.edge_port
        server["admin"]["port"] = int(self.admin.rpartition(":")[2])
        config["storage"]["data_dir"] = str(self.workdir / "data")
        config["integrations"]["payments"]["base_url"] = f"{gateway_url}/v1"
        config["realtime"]["websocket"]["allowed_origins"] = [page_origin]
        path = self.workdir / "sidecar.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    async def start(self, config: Path, within: float) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sidecar", "serve", "--config", str(config),
                cwd=service.REPO, env={**os.environ, **self.env}, stdout=log,
                stderr=asyncio.subprocess.STDOUT)
        # An external process: poll readiness within a deadline.
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                check(self.proc.returncode is None,
                      f"the sidecar exited with {self.proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.admin}/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise StepFailed(f"the sidecar was not ready within {within:.0f}s")

    async def stop(self, grace: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                return None
        return self.proc.returncode


@contextlib.asynccontextmanager
async def browser_page(executable: str, args: list[str]) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        # Always the given executable: the demo never downloads a browser.
        browser = await pw.chromium.launch(executable_path=executable, args=args)
        try:
            yield await browser.new_page()
        finally:
            await browser.close()


async def status_events(sidecar: AsyncSidecarClient, count: int) -> list[Event]:
    """The first ``count`` events of the buyer's room, from the start of its log."""
    events: list[Event] = []
    async with contextlib.aclosing(sidecar.subscribe(
            f"user:{USER}", start=StartPosition.EARLIEST)) as subscription:
        async for item in subscription:
            if isinstance(item, Event):
                events.append(item)
                if len(events) == count:
                    break
    return events


async def admin_events(admin: str, group: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
            f"{admin}/webhooks/events", params={"group": group}) as resp:
        body: dict[str, Any] = await resp.json()
        return list(body["events"])


async def acked(admin: str, event_id: str, within: float) -> dict[str, Any]:
    """The group's record of ``event_id`` once it is completed (the ack is sent
    right after the handler returns; the sidecar is another process: poll)."""
    deadline = time.monotonic() + within
    while True:
        records = [e for e in await admin_events(admin, "orders") if e["event_id"] == event_id]
        if records and records[0]["status"] == "completed":
            return records[0]
        check(time.monotonic() < deadline,
              f"webhook {event_id} not acked in time: {records}")
        await asyncio.sleep(0.05)


async def demo(args: argparse.Namespace, workdir: Path) -> None:
    env = {"PAYMENTS_API_KEY": secrets.token_urlsafe(24),
           "PAYMENTS_WEBHOOK_SECRET": "whsec_" + secrets.token_urlsafe(24),
           "ORDERS_JWT_SECRET": secrets.token_urlsafe(32)}
    gateway = FakeGateway(env["PAYMENTS_API_KEY"], env["PAYMENTS_WEBHOOK_SECRET"])
    service = OrdersService(env["ORDERS_JWT_SECRET"])
    sidecar = SidecarProcess(workdir, env)
    http = aiohttp.ClientSession()
    try:
        gateway_url = await gateway.start()
        page_origin = await service.start_http()
        config = sidecar.write_config(gateway_url, page_origin)
        await sidecar.start(config, within=20)
        assert sidecar.proc is not None
        ok(f"sidecar ready (pid {sidecar.proc.pid}): grpc {sidecar.grpc}, "
           f"edge :{sidecar.edge_port}, admin {sidecar.admin}")

        edge = f"127.0.0.1:{sidecar.edge_port}"
        gateway.webhook_url = f"http://{edge}/webhooks/payments"
        await service.connect(sidecar.grpc, f"ws://{edge}/ws")
        ok(f"fake gateway on {gateway_url}, orders service on {page_origin}")

        async with http.post(f"{page_origin}/api/orders",
                             json={"user_id": USER, "amount": AMOUNT}) as resp:
            check(resp.status == 201, f"creating the order answered {resp.status}")
            order = await resp.json()
        check(order["status"] == "created", f"new order is {order['status']}")
        ok(f"order {order['id']} created for {USER} ({AMOUNT} cents)")

        async with contextlib.AsyncExitStack() as stack:
            page = None
            if args.browser:
                page = await stack.enter_async_context(
                    browser_page(args.browser, args.browser_arg))
                await page.goto(f"{page_origin}/?order={order['id']}")
                await page.wait_for_function(
                    "document.getElementById('badge').textContent === 'live' && "
                    "document.getElementById('status').textContent === 'created'",
                    timeout=10_000)
                ok("page open: status 'created', badge 'live'")

            await pay_twice(http, page_origin, order["id"], gateway)
            await webhook_flow(service, gateway, sidecar, order["id"])
            await published(service, order["id"])

            if page is not None:
                await page.wait_for_function(
                    "document.getElementById('status').textContent === 'paid'",
                    timeout=10_000)
                history = await page.locator("#history li").all_text_contents()
                badge = await page.text_content("#badge")
                check(history == STATUSES, f"the page went through {history}")
                check(badge == "live", f"badge says {badge!r}")
                presence = await service.sidecar.get_presence(f"user:{USER}") \
                    if service.sidecar else None
                check(presence is not None and presence.connections == 1,
                      f"presence in user:{USER}: {presence}")
                ok(f"page shows 'paid' live ({' -> '.join(history)}), badge 'live', "
                   f"1 connection in user:{USER}")
    finally:
        await http.close()
        await service.stop()
        await gateway.stop()
        code = await sidecar.stop()
    check(code == 0, f"the sidecar exited with {code} on SIGTERM")
    ok("sidecar stopped cleanly on SIGTERM (exit 0)")


async def pay_twice(http: aiohttp.ClientSession, origin: str, order_id: str,
                    gateway: FakeGateway) -> None:
    key = f"{order_id}:charge"
    async with http.post(f"{origin}/api/orders/{order_id}/pay") as resp:
        check(resp.status == 200, f"paying answered {resp.status}: {await resp.text()}")
        first = await resp.json()
    check(not first["replayed"] and first["attempts"] == 2,
          f"first payment: replayed={first['replayed']} attempts={first['attempts']}")
    check(gateway.requests.get(key) == 2 and len(gateway.charges) == 1,
          f"gateway saw {gateway.requests} and holds {len(gateway.charges)} charge(s)")
    charge = first["charge"]
    ok(f"paid through Call: charge {charge['id']} after 2 attempts (503, then 201), "
       f"both with Idempotency-Key {key}")

    async with http.post(f"{origin}/api/orders/{order_id}/pay") as resp:
        check(resp.status == 200, f"paying again answered {resp.status}")
        again = await resp.json()
    check(again["replayed"] and again["charge"]["id"] == charge["id"],
          f"second payment: replayed={again['replayed']} charge {again['charge']['id']}")
    check(gateway.requests.get(key) == 2 and len(gateway.charges) == 1,
          f"gateway saw {gateway.requests} and holds {len(gateway.charges)} charge(s)")
    ok("paying the same order again replays the stored answer: the gateway was not "
       "called, still 1 charge")


async def webhook_flow(service: OrdersService, gateway: FakeGateway, sidecar: SidecarProcess,
                       order_id: str) -> None:
    deliveries = await gateway.webhooks_sent()
    check(len(deliveries) == 2, f"{len(deliveries)} webhook deliveries")
    first, second = deliveries
    check(first.event_id == second.event_id, "the two deliveries differ")
    answers = [d.answers[-1] if d.answers else None for d in deliveries]
    check(answers[0] is not None and answers[0][0] == 200
          and answers[0][1].get("status") == "accepted", f"first delivery answered {answers[0]}")
    check(answers[1] is not None and answers[1][0] == 200
          and answers[1][1].get("status") == "duplicate", f"second delivery answered {answers[1]}")
    assert answers[0] is not None
    event_id = answers[0][1]["event_id"]
    ok(f"gateway sent webhook {first.event_id} (Stripe-signed) twice: stored as {event_id}, "
       "then refused as a duplicate")

    await service.wait_for_status(order_id, "paid")
    record = await acked(sidecar.admin, event_id, within=10)
    check(service.handled == [event_id], f"the service handled {service.handled}")
    check(record["attempts"] == 1, f"delivered {record['attempts']} times")
    ok(f"service got {event_id} through durable group 'orders' (1 delivery) and "
       "acked it: completed")


async def published(service: OrdersService, order_id: str) -> None:
    assert service.sidecar is not None
    events = await status_events(service.sidecar, len(STATUSES))
    got = [(e.type, json.loads(e.data)["status"], json.loads(e.data)["order_id"])
           for e in events]
    check(got == [("order:status_changed", s, order_id) for s in STATUSES],
          f"user:{USER} holds {got}")
    check([e.offset for e in events] == list(range(1, len(STATUSES) + 1)),
          f"offsets {[e.offset for e in events]}")
    ok(f"service published order:status_changed to user:{USER}: {' -> '.join(STATUSES)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--browser", metavar="CHROMIUM",
                        help="path of a Chromium to check the page with (headless)")
    parser.add_argument("--browser-arg", action="append", default=[],
                        help="extra Chromium flag (repeatable)")
    parser.add_argument("--timeout", type=float, default=60, help="seconds for the whole demo")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="orders-demo-") as tmp:
        try:
            asyncio.run(asyncio.wait_for(demo(args, Path(tmp)), args.timeout))
        except StepFailed as exc:
            print(f"FAIL  {exc}", flush=True)
            log = Path(tmp) / "sidecar.log"
            if log.exists():
                print("--- sidecar log (last lines) ---")
                print("\n".join(log.read_text(errors="replace").splitlines()[-20:]))
            return 1
        except TimeoutError:
            print(f"FAIL  the demo did not finish within {args.timeout:g}s", flush=True)
            return 1
    print("all steps passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

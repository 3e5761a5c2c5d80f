"""Crash safety of webhook ingest and delivery, with the real sidecar process.

A webhook answered 2xx is committed before the answer, so a SIGKILL right after it
loses nothing; an event a member held unacked when the process died is delivered
again as soon as a new process serves the group, not after the ack timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from tests.webhook_support import STRIPE_SECRET, stripe_event, stripe_headers

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
TOPIC = "webhooks.stripe"
WAIT = 15.0  # seconds any single step may take before the test fails


class Child:
    """One sidecar process; its stdout is drained so a full pipe never stalls it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._drain: asyncio.Task[None] | None = None

    async def started(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        async def read() -> dict[str, Any]:
            while True:
                raw = await stdout.readline()
                if not raw:
                    raise AssertionError(f"sidecar exited before starting: {self.lines}")
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(raw))
                    if self.lines[-1].get("msg") == "sidecar started":
                        return self.lines[-1]

        line = await asyncio.wait_for(read(), WAIT)
        self._drain = asyncio.create_task(self._drain_forever(stdout))
        return line

    async def _drain_forever(self, stdout: asyncio.StreamReader) -> None:
        while raw := await stdout.readline():
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    async def sigkill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.proc.wait(), WAIT) == -signal.SIGKILL

    async def reap(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), WAIT)
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


class Sidecar:
    """Addresses of a started child."""

    def __init__(self, child: Child, started: dict[str, Any]) -> None:
        self.child = child
        self.edge: str = started["edge"]
        self.grpc: str = started["grpc"]


Start = Callable[[], Awaitable[Sidecar]]


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump({
        "server": {
            "grpc": {"address": "127.0.0.1:0"},
            "edge": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "shutdown_grace": "1s",
        },
        "storage": {"data_dir": str(tmp_path / "data")},
        "webhooks": {
            "sources": {"stripe": {"scheme": "stripe", "secrets_env": ["STRIPE_WHSEC"]}},
            # A redelivery that waited for the ack timeout would hang the test.
            "delivery": {"ack_timeout": "1h", "heartbeat": "1h"},
        },
    }))
    return path


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Start sidecar processes on one data_dir; every one is killed at the end."""
    config = write_config(tmp_path)
    children: list[Child] = []

    async def spawn() -> Sidecar:
        env = {**os.environ, "STRIPE_WHSEC": STRIPE_SECRET,
               "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve", "--config", str(config), cwd=ROOT,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        child = Child(proc)
        children.append(child)
        return Sidecar(child, await child.started())

    try:
        yield spawn
    finally:
        for child in children:
            await child.reap()


async def post_webhook(session: aiohttp.ClientSession, sc: Sidecar, provider_id: str
                       ) -> tuple[int, dict[str, Any]]:
    body = stripe_event(provider_id)
    async with session.post(f"http://{sc.edge}/webhooks/stripe", data=body,
                            headers=stripe_headers(body)) as resp:
        return resp.status, await resp.json(content_type=None)


@contextlib.asynccontextmanager
async def subscribe(sc: Sidecar, max_in_flight: int = 10) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(sc.grpc) as channel:
        stream = pb_grpc.SidecarServiceStub(channel).Subscribe(pb.SubscribeRequest(
            topics=[TOPIC], group="app", consumer="worker", max_in_flight=max_in_flight))
        try:
            yield stream
        finally:
            stream.cancel()


async def next_event(stream: Any) -> pb.Event:
    async def read() -> pb.Event:
        while True:
            msg = await stream.read()
            assert msg is not grpc.aio.EOF, "the stream ended"
            if msg.HasField("event"):
                event: pb.Event = msg.event
                return event

    return await asyncio.wait_for(read(), WAIT)


async def test_webhook_answered_2xx_survives_sigkill(start: Start) -> None:
    first = await start()
    async with aiohttp.ClientSession() as session:
        status, payload = await asyncio.wait_for(post_webhook(session, first, "evt_crash"), WAIT)
        assert status == 200, payload
        await first.child.sigkill()  # nothing gets a chance to flush or close
    assert payload["status"] == "accepted"

    second = await start()
    async with subscribe(second) as stream:
        event = await next_event(stream)
        assert (event.id, event.topic, event.type, event.delivery_attempt) == (
            payload["event_id"], TOPIC, "invoice.paid", 1)
        assert event.data == stripe_event("evt_crash")
        assert event.attributes["provider_event_id"] == "evt_crash"
    # Still de-duplicated after the crash: Stripe retrying the same event is not new.
    async with aiohttp.ClientSession() as session:
        status, again = await asyncio.wait_for(post_webhook(session, second, "evt_crash"), WAIT)
    assert (status, again["status"], again["event_id"]) == (
        200, "duplicate", payload["event_id"])


async def test_every_webhook_answered_before_a_sigkill_under_load_survives(
        start: Start) -> None:
    first = await start()
    answered: dict[str, str] = {}  # sidecar event id -> provider id
    enough = asyncio.Event()

    async def send(session: aiohttp.ClientSession, provider_id: str) -> None:
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            status, payload = await post_webhook(session, first, provider_id)
            if status == 200:
                answered[payload["event_id"]] = provider_id
                if len(answered) >= 10:
                    enough.set()

    async with aiohttp.ClientSession() as session:
        senders = [asyncio.create_task(send(session, f"evt_load{i}")) for i in range(40)]
        try:
            await asyncio.wait_for(enough.wait(), WAIT)
            await first.child.sigkill()  # while the others are still in flight
            await asyncio.wait_for(asyncio.gather(*senders), WAIT)
        finally:
            for task in senders:
                task.cancel()
    assert len(answered) >= 10

    second = await start()
    seen: dict[str, str] = {}
    async with subscribe(second, max_in_flight=100) as stream:
        while not set(answered) <= set(seen):
            event = await next_event(stream)
            assert event.delivery_attempt == 1
            seen[event.id] = event.attributes["provider_event_id"]
    assert {k: seen[k] for k in answered} == answered


async def test_unacked_event_is_redelivered_promptly_after_sigkill(start: Start) -> None:
    first = await start()
    async with aiohttp.ClientSession() as session:
        status, payload = await asyncio.wait_for(post_webhook(session, first, "evt_held"), WAIT)
    assert status == 200
    async with subscribe(first) as stream:
        held = await next_event(stream)
        assert (held.id, held.delivery_attempt) == (payload["event_id"], 1)
        await first.child.sigkill()  # the app got it but never acked

    second = await start()
    async with subscribe(second) as stream:
        # ack_timeout is an hour: this arrives only because a restart frees in-flight events.
        again = await next_event(stream)
        assert (again.id, again.delivery_attempt) == (held.id, 2)
        assert again.data == held.data
        async with grpc.aio.insecure_channel(second.grpc) as channel:
            ack = await pb_grpc.SidecarServiceStub(channel).Ack(pb.AckRequest(
                group="app", event_ids=[again.id], outcome=pb.ACK_OUTCOME_SUCCESS), timeout=WAIT)
        assert (ack.settled, list(ack.unknown_event_ids)) == (1, [])


async def test_restart_frees_in_flight_events_on_the_sidecars_clock(tmp_path: Path) -> None:
    from sidecar.clock import FakeClock
    from sidecar.core.events.models import GroupPolicy, NewEvent
    from sidecar.storage import SqliteStorage

    clock = FakeClock()  # its wall time is in 2023, behind time.time()
    policy = GroupPolicy(ack_timeout=3600.0)
    before = SqliteStorage(tmp_path / "data")
    await before.open()
    try:
        await before.append_event(NewEvent(id="evt_1", topic=TOPIC), now=clock.time())
        (held,) = await before.claim("app", [TOPIC], "worker", now=clock.time(),
                                     policy=policy, limit=10)
        assert held.attempt == 1
    finally:
        await before.close()  # like a crash: the member never released it
    after = SqliteStorage(tmp_path / "data")
    await after.open()
    try:
        again = await after.claim("app", [TOPIC], "worker", now=clock.time(),
                                  policy=policy, limit=10)
        assert [(d.event.id, d.attempt) for d in again] == [("evt_1", 2)]
    finally:
        await after.close()

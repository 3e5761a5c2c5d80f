"""Several real sidecar processes on one Redis, for the multi-replica tests.

Each replica is ``python -m sidecar serve --config <its own file>`` with every
listener on an ephemeral loopback port, its own ``data_dir``, ``storage.backend:
redis`` and a key prefix shared by the replicas of one test (and by no other
test). The Redis URL reaches the child through ``REDIS_URL`` in its environment,
as in production. ``Cluster.close`` kills every child, then deletes the keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import redis.asyncio
import yaml
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.redis_support import delete_prefix
from tests.webhook_support import STRIPE_SECRET, stripe_event, stripe_headers

ROOT = Path(__file__).resolve().parent.parent
#: Seconds any single step may take before the test fails.
WAIT = 15.0
WS_SECRET = "replica-test-hs256-secret-0123456789abcdef"
WEBHOOK_TOPIC = "webhooks.stripe"


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def replica_config(directory: Path, prefix: str, extra: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """One replica's config: loopback ephemeral ports, Redis under ``prefix``."""
    base: dict[str, Any] = {
        "server": {
            "grpc": {"address": "127.0.0.1:0"},
            "edge": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "shutdown_grace": "1s",
        },
        "storage": {
            "backend": "redis",
            "data_dir": str(directory / "data"),
            "redis": {"url_env": "REDIS_URL", "key_prefix": prefix, "socket_timeout": "1s"},
        },
        "webhooks": {
            "sources": {"stripe": {"scheme": "stripe", "secrets_env": ["STRIPE_WHSEC"]}},
            "delivery": {"ack_timeout": "2s", "heartbeat": "1h"},
        },
        "realtime": {"websocket": {"jwt": {"algorithms": ["HS256"],
                                           "hs256_secret_env": "WS_SECRET"}}},
    }
    return _merge(base, extra or {})


class Replica:
    """One started sidecar process and its addresses; stdout is drained continuously
    (so a full pipe never stalls the child) and kept for failure messages."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.grpc = self.edge = self.admin = ""
        self._drain: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None

    async def wait_started(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None

        async def read() -> dict[str, Any]:
            while True:
                raw = await stdout.readline()
                if not raw:
                    raise AssertionError(f"{self.name} exited before starting: {self.lines}")
                with contextlib.suppress(ValueError):
                    self.lines.append(json.loads(raw))
                    if self.lines[-1].get("msg") == "sidecar started":
                        return self.lines[-1]

        line = await asyncio.wait_for(read(), WAIT)
        assert line["storage"] == "redis", line
        self.grpc, self.edge, self.admin = line["grpc"], line["edge"], line["admin"]
        self._drain = asyncio.create_task(self._drain_forever(stdout))

    async def _drain_forever(self, stdout: asyncio.StreamReader) -> None:
        while raw := await stdout.readline():
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    @property
    def stub(self) -> pb_grpc.SidecarServiceStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.grpc)
        return pb_grpc.SidecarServiceStub(self._channel)

    async def connect(self) -> None:
        """Open the gRPC channel now, so the first call does not pay for it."""
        self.stub  # noqa: B018 - creates the channel
        assert self._channel is not None
        await asyncio.wait_for(self._channel.channel_ready(), WAIT)

    async def sigkill(self) -> None:
        """Kill without any chance to flush, release or close anything."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(self.proc.wait(), WAIT) == -signal.SIGKILL

    async def reap(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(Exception):
                await self._channel.close(grace=None)
            self._channel = None
        if self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), WAIT)
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


class Cluster:
    """Starts replicas that share one Redis and one key prefix; cleans up after."""

    def __init__(self, tmp_path: Path, redis_url: str) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.prefix = f"test-replicas:{secrets.token_hex(6)}:"
        self.replicas: list[Replica] = []
        self._urls_used: set[str] = set()

    async def start(self, count: int = 2, extra: dict[str, Any] | None = None, *,
                    redis_url: str | None = None) -> list[Replica]:
        """``count`` replicas, started concurrently; each has its own config file
        and data_dir."""
        url = redis_url or self.redis_url
        self._urls_used.add(url)
        new = []
        for _ in range(count):
            name = f"replica-{len(self.replicas)}"
            directory = self.tmp_path / name
            directory.mkdir(parents=True)
            config = directory / "sidecar.yaml"
            config.write_text(yaml.safe_dump(replica_config(directory, self.prefix, extra)))
            env = {**os.environ, "REDIS_URL": url, "STRIPE_WHSEC": STRIPE_SECRET,
                   "WS_SECRET": WS_SECRET,
                   "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sidecar", "serve", "--config", str(config), cwd=ROOT,
                env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT)
            replica = Replica(name, proc)
            self.replicas.append(replica)  # registered first: reaped even if start fails
            new.append(replica)
        await asyncio.gather(*(r.wait_started() for r in new))
        return new

    async def close(self) -> None:
        """Kill every child, then delete the keys; safe to call more than once."""
        errors: list[BaseException] = []
        replicas, self.replicas = self.replicas, []
        for replica in replicas:
            try:
                await replica.reap()
            except BaseException as exc:  # keep reaping the others
                errors.append(exc)
        # Only once no child can write any more.
        for url in self._urls_used:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(delete_prefix(url, self.prefix), WAIT)
        if errors:
            raise errors[0]


# ---------------------------------------------------------------------- webhooks


async def post_webhook(session: aiohttp.ClientSession, replica: Replica, provider_id: str, *,
                       body: bytes | None = None, headers: dict[str, str] | None = None
                       ) -> tuple[int, dict[str, Any]]:
    """POST a Stripe-signed webhook to ``replica``'s edge: (HTTP status, JSON body)."""
    body = stripe_event(provider_id) if body is None else body
    headers = stripe_headers(body) if headers is None else headers

    async def send() -> tuple[int, dict[str, Any]]:
        async with session.post(f"http://{replica.edge}/webhooks/stripe", data=body,
                                headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    return await asyncio.wait_for(send(), WAIT)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async def get() -> tuple[int, dict[str, Any]]:
        async with session.get(url) as resp:
            return resp.status, await resp.json(content_type=None)

    return await asyncio.wait_for(get(), WAIT)


# ---------------------------------------------------------------------- streams


class EventStream:
    """A gRPC Subscribe stream read by a background task into a queue, so waiting
    for an event with a timeout never cancels a read on the call itself."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self._queue: asyncio.Queue[pb.Event | BaseException | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    self._queue.put_nowait(None)
                    return
                if msg.HasField("event"):
                    self._queue.put_nowait(msg.event)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # the RPC failed: hand it to the reader
            self._queue.put_nowait(exc)

    async def next(self, timeout: float = WAIT) -> pb.Event:
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if item is None:
            raise AssertionError("the stream ended")
        if isinstance(item, BaseException):
            raise AssertionError(f"the stream failed: {item!r}") from item
        return item

    def pending(self) -> int:
        return self._queue.qsize()

    async def close(self) -> None:
        self.call.cancel()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def subscribed(replica: Replica, request: pb.SubscribeRequest
                     ) -> AsyncIterator[EventStream]:
    stream = EventStream(replica.stub.Subscribe(request))
    try:
        yield stream
    finally:
        await stream.close()


def group_request(consumer: str, max_in_flight: int = 1, group: str = "app"
                  ) -> pb.SubscribeRequest:
    return pb.SubscribeRequest(topics=[WEBHOOK_TOPIC], group=group, consumer=consumer,
                               max_in_flight=max_in_flight)


async def ack(replica: Replica, event_ids: list[str], group: str = "app") -> pb.AckResponse:
    resp: pb.AckResponse = await replica.stub.Ack(
        pb.AckRequest(group=group, event_ids=event_ids, outcome=pb.ACK_OUTCOME_SUCCESS),
        timeout=WAIT)
    return resp


# ---------------------------------------------------------------------- barriers


async def subscribes_started(session: aiohttp.ClientSession, replica: Replica, count: int
                             ) -> None:
    """Wait until ``replica`` has started ``count`` Subscribe RPCs (its metrics say so)."""

    async def started() -> float:
        async with session.get(f"http://{replica.admin}/metrics") as resp:
            text = await resp.text()
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == "grpc_server_started_total"
                   and sample.labels.get("grpc_method") == "Subscribe")

    async def poll() -> None:
        while True:  # polled: the sidecar offers nothing to wait on
            if await started() >= count:
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), WAIT)


async def group_registered(url: str, prefix: str, group: str) -> None:
    """Wait until ``group`` exists in Redis: a member's first claim has run."""
    client = redis.asyncio.Redis.from_url(url)

    async def poll() -> None:
        while True:  # polled: Redis offers nothing to wait on here
            if await client.sismember(f"{prefix}groups", group):
                return
            await asyncio.sleep(0.002)

    try:
        await asyncio.wait_for(poll(), WAIT)
    finally:
        await client.aclose()

"""SIGHUP on a real sidecar process: the retry policy changes for the next call while a
Subscribe stream and a WebSocket opened before stay live; a broken file changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
import yaml
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from tests.call_support import call, integration
from tests.test_lifecycle import ROOT, Proc
from tests.upstream import Upstream, reply

pytestmark = pytest.mark.slow
WS_SECRET = "reload-test-hmac-secret-0123456789abcdef"


def write(path: Path, tmp_path: Path, upstream_url: str, *, max_attempts: Any) -> None:
    path.write_text(yaml.safe_dump({
        "server": {"grpc": {"address": "127.0.0.1:0"}, "edge": {"host": "127.0.0.1", "port": 0},
                   "admin": {"host": "127.0.0.1", "port": 0}, "shutdown_grace": "1s"},
        "storage": {"data_dir": str(tmp_path / "data")},
        # Only the retry policy decides how many attempts go out here.
        "integrations": {"svc": integration(upstream_url, retry={
            "max_attempts": max_attempts, "backoff": {"initial": "1ms", "max": "2ms"}},
            retry_budget={"enabled": False}, circuit_breaker={"enabled": False})},
        "realtime": {"websocket": {"jwt": {"hs256_secret_env": "WS_SECRET"}}},
    }))


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream(default=reply(503, b"down")).start()
    yield up
    await up.stop()


@pytest.fixture
async def sidecar_process(tmp_path: Path, upstream: Upstream) -> AsyncIterator[tuple[Proc,
                                                                                     Path]]:
    config = tmp_path / "sidecar.yaml"
    write(config, tmp_path, upstream.url, max_attempts=1)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}",
           "WS_SECRET": WS_SECRET}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "serve", "--config", str(config), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        yield Proc(proc), config
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def reload_count(http: aiohttp.ClientSession, admin: str, result: str) -> float:
    async with http.get(f"http://{admin}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(f'sidecar_config_reloads_total{{result="{result}"}}'):
            return float(line.split()[-1])
    raise AssertionError("sidecar_config_reloads_total missing")


async def next_event(stream: Any) -> pb.Event:
    while True:
        msg = await asyncio.wait_for(stream.read(), 5)
        if msg.HasField("event"):
            event: pb.Event = msg.event
            return event


async def next_ws_event(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        frame: dict[str, Any] = await asyncio.wait_for(ws.receive_json(), 5)
        if "control" not in frame:
            return frame


async def test_sighup_reloads_retry_policy_keeps_streams_and_rejects_a_broken_file(
        tmp_path: Path, upstream: Upstream, sidecar_process: tuple[Proc, Path]) -> None:
    p, config = sidecar_process
    started = await p.wait_for("sidecar started")
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, WS_SECRET,
                       algorithm="HS256")
    async with grpc.aio.insecure_channel(started["grpc"]) as ch, aiohttp.ClientSession() as http:
        stub = pb_grpc.SidecarServiceStub(ch)
        first = await stub.Call(call(), timeout=5)
        assert (first.status, first.attempts, len(upstream.seen)) == (503, 1, 1)

        # A live stream and a WebSocket, each shown to be receiving before the reload.
        stream = stub.Subscribe(pb.SubscribeRequest(topics=["orders"]))
        ws = await http.ws_connect(f"http://{started['edge']}/ws",
                                   headers={"Authorization": f"Bearer {token}"})
        # A live stream's first message (Subscribed) comes once it is registered.
        assert (await asyncio.wait_for(stream.read(), 5)).HasField("subscribed")
        while True:  # the stream is registered once an event published now reaches it
            sent = await stub.Publish(pb.PublishRequest(topic="orders", data=b"{}"), timeout=5)
            got = await asyncio.wait_for(stream.read(), 5)
            if got.HasField("event") and got.event.id == sent.event_id:
                break
        sent = await stub.Publish(pb.PublishRequest(topic="user:alice", data=b"{}"), timeout=5)
        assert (await next_ws_event(ws))["id"] == sent.event_id

        write(config, tmp_path, upstream.url, max_attempts=3)
        p.proc.send_signal(signal.SIGHUP)
        reloaded = await p.wait_for("config reloaded")
        assert reloaded["integrations_changed"] == ["svc"]
        assert await reload_count(http, started["admin"], "success") == 1
        second = await stub.Call(call(), timeout=5)
        assert (second.attempts, len(upstream.seen)) == (3, 4)

        sent = await stub.Publish(pb.PublishRequest(topic="orders", data=b"{}"), timeout=5)
        assert (await next_event(stream)).id == sent.event_id
        sent = await stub.Publish(pb.PublishRequest(topic="user:alice", data=b"{}"), timeout=5)
        assert (await next_ws_event(ws))["id"] == sent.event_id

        write(config, tmp_path, upstream.url, max_attempts="lots")
        p.proc.send_signal(signal.SIGHUP)
        failed = await p.wait_for(
            "config reload failed; the previous configuration stays in force")
        assert failed["level"] == "error"
        assert any(problem.startswith("integrations.svc.retry.max_attempts:")
                   for problem in failed["problems"])
        assert await reload_count(http, started["admin"], "failure") == 1
        third = await stub.Call(call(), timeout=5)
        assert (third.attempts, len(upstream.seen)) == (3, 7)
        assert not ws.closed
        await ws.close()
        stream.cancel()
    p.proc.send_signal(signal.SIGTERM)
    assert await p.exit_code() == 0

"""Queued calls survive a SIGKILL of the real sidecar process (#16): a call stored is
never lost, and one killed mid-attempt is attempted again after the restart (at least
once upstream; its idempotency key makes that one effect)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from tests.test_webhooks_crash import WAIT, Child
from tests.upstream import Upstream, hang, reply, slow

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

Start = Callable[[], Awaitable[str]]


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


@pytest.fixture
async def start(tmp_path: Path, upstream: Upstream) -> AsyncIterator[tuple[Start, list[Child]]]:
    """Start sidecar processes on one data_dir (answer: the gRPC address); every one is
    killed at the end."""
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"grpc": {"address": "127.0.0.1:0"},
                   "edge": {"host": "127.0.0.1", "port": 0},
                   "admin": {"host": "127.0.0.1", "port": 0}, "shutdown_grace": "1s"},
        "storage": {"data_dir": str(tmp_path / "data")},
        "integrations": {"svc": {"base_url": upstream.url, "allow_insecure_http": True,
                                 "timeouts": {"attempt": "30s", "total": "30s"}}},
    }))
    children: list[Child] = []

    async def spawn() -> str:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve", "--config", str(config), cwd=ROOT,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        child = Child(proc)
        children.append(child)
        address: str = (await child.started())["grpc"]
        return address

    try:
        yield spawn, children
    finally:
        for child in children:
            await child.reap()


async def enqueue(address: str, key: str) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await pb_grpc.SidecarServiceStub(channel).EnqueueCall(pb.EnqueueCallRequest(
            call=pb.CallRequest(integration="svc", method="POST", path=f"/orders/{key}",
                                body=b"{}", idempotency_key=key)), timeout=WAIT)
    call_id: str = answer.id
    return call_id


async def outcomes(address: str, ids: set[str]) -> dict[str, str]:
    """Read the outcome events until every id in ``ids`` has one: id -> state."""
    found: dict[str, str] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stream = pb_grpc.SidecarServiceStub(channel).Subscribe(pb.SubscribeRequest(
            topics=["calls.svc"], start=pb.START_POSITION_EARLIEST))

        async def read() -> None:
            while not ids <= found.keys():
                msg: Any = await stream.read()
                assert msg is not grpc.aio.EOF, "the stream ended"
                if msg.HasField("event"):
                    doc = json.loads(msg.event.data)
                    found[doc["id"]] = doc["state"]

        try:
            await asyncio.wait_for(read(), WAIT)
        finally:
            stream.cancel()
    return found


async def test_a_call_killed_mid_attempt_is_attempted_again_after_restart(
        start: tuple[Start, list[Child]], upstream: Upstream) -> None:
    spawn, children = start
    upstream.then(hang())
    call_id = await enqueue(await spawn(), "order-9")
    await asyncio.wait_for(upstream.arrived.wait(), WAIT)  # the attempt is in flight
    await children[0].sigkill()
    upstream.default = reply(201)
    again = await spawn()
    assert await outcomes(again, {call_id}) == {call_id: "QUEUED_CALL_STATE_SUCCEEDED"}
    assert [s.headers.get("Idempotency-Key") for s in upstream.seen] == ["order-9"] * 2


async def test_sigkill_mid_drain_loses_no_call(start: tuple[Start, list[Child]],
                                               upstream: Upstream) -> None:
    spawn, children = start
    upstream.default = slow(0.05, reply(200))
    first = await spawn()
    ids = {await enqueue(first, f"drain-{i}") for i in range(40)}
    while len(upstream.seen) < 10:  # well into the drain
        upstream.arrived.clear()
        await asyncio.wait_for(upstream.arrived.wait(), WAIT)
    await children[0].sigkill()
    assert len(upstream.seen) < 40
    states = await outcomes(await spawn(), ids)
    assert set(states) == ids and set(states.values()) == {"QUEUED_CALL_STATE_SUCCEEDED"}
    # At least once upstream: every call arrived, with its own key.
    assert {s.path for s in upstream.seen} == {f"/orders/drain-{i}" for i in range(40)}

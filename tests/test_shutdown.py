"""SIGTERM always ends the process in time: with streams, group members and publishers
busy, on SQLite and on Redis, again and again; at once when idle with a health watch
open; and by force when something will not stop.

The bound the sidecar promises: exit 0 within ``server.shutdown_grace`` + 2 s. Shutdown
races (a lost cancellation, a stream that holds the drain open) show up in some tries
only, so the main test loops: ``SHUTDOWN_TRIES`` (default 50 on Redis, 10 on SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import EXIT_MARGIN, EXIT_OVERDUE, STOP_MARGIN
from tests.redis_support import delete_prefix, redis_url  # noqa: F401 - fixture
from tests.test_lifecycle import ROOT, Proc, write_config

pytestmark = pytest.mark.slow

#: What the sidecar promises beyond the grace (stop() plus the process's own exit).
BOUND_BEYOND_GRACE = 2.0
GRACE = 3.0
#: Seconds any setup step may take before the test fails.
WAIT = 20.0
TOPIC = "orders"
#: Sidecars shut down side by side: the tries go faster, and the load adds races.
AT_ONCE = 3


def tries(default: int) -> int:
    return int(os.environ.get("SHUTDOWN_TRIES", default))


def config_file(directory: Path, storage: dict[str, Any], grace: float) -> Path:
    return write_config(directory, f"{grace}s", storage,
                        webhooks={"delivery": {"ack_timeout": "2s", "heartbeat": "1h"}})


@contextlib.asynccontextmanager
async def sidecar_process(config: Path, *module: str, env: dict[str, str] | None = None
                          ) -> AsyncIterator[tuple[Proc, dict[str, Any]]]:
    """A started ``serve`` process (``module`` replaces ``-m sidecar serve --config``);
    killed on the way out if the test left it running."""
    args = module or ("-m", "sidecar", "serve", "--config")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, str(config), cwd=ROOT,
        env={**os.environ, **(env or {}),
             "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    p = Proc(proc)
    try:
        started = await p.wait_for("sidecar started", WAIT)
        yield p, started
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def until_exit(p: Proc, bound: float) -> tuple[int, float]:
    """SIGTERM, then (exit status, seconds until the process was gone)."""
    t0 = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    code = await p.exit_code(bound + WAIT)
    return code, time.monotonic() - t0


# ---------------------------------------------------------------------- busy sidecars


async def _ignore_rpc_end(call: Any) -> None:
    """Read a stream until the sidecar ends it (shutdown ends every stream)."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        async for _ in call:
            pass


async def live_subscriber(stub: pb_grpc.SidecarServiceStub, first: asyncio.Event) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(topics=[TOPIC]))
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        async for msg in call:
            if msg.HasField("event"):
                first.set()


async def group_member(stub: pb_grpc.SidecarServiceStub, consumer: str,
                       first: asyncio.Event) -> None:
    call = stub.Subscribe(pb.SubscribeRequest(topics=[TOPIC], group="shipping",
                                              consumer=consumer, max_in_flight=4))
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        async for msg in call:
            if msg.HasField("event"):
                first.set()
                await stub.Ack(pb.AckRequest(group="shipping", event_ids=[msg.event.id],
                                             outcome=pb.ACK_OUTCOME_SUCCESS), timeout=WAIT)


async def publisher(stub: pb_grpc.SidecarServiceStub) -> None:
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
        while True:
            await stub.Publish(pb.PublishRequest(topic=TOPIC, type="order.paid",
                                                 data=b'{"id": 1}'), timeout=WAIT)


async def one_busy_shutdown(config: Path, env: dict[str, str]) -> tuple[int, float, Proc]:
    """Start, get every kind of client busy, SIGTERM mid-traffic; (status, seconds, proc)."""
    async with sidecar_process(config, env=env) as (p, started):
        async with grpc.aio.insecure_channel(started["grpc"]) as channel:
            stub = pb_grpc.SidecarServiceStub(channel)
            firsts = [asyncio.Event() for _ in range(4)]
            clients = [
                asyncio.ensure_future(live_subscriber(stub, firsts[0])),
                asyncio.ensure_future(live_subscriber(stub, firsts[1])),
                asyncio.ensure_future(group_member(stub, "a", firsts[2])),
                asyncio.ensure_future(group_member(stub, "b", firsts[3])),
                *(asyncio.ensure_future(publisher(stub)) for _ in range(3)),
            ]
            try:
                # Every stream has had an event: all of them are in the middle of work.
                await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts[:3])), WAIT)
                code, seconds = await until_exit(p, GRACE + BOUND_BEYOND_GRACE)
            finally:
                for task in clients:
                    task.cancel()
                await asyncio.gather(*clients, return_exceptions=True)
        return code, seconds, p


def report(codes_and_seconds: list[tuple[int, float]]) -> str:
    seconds = sorted(s for _, s in codes_and_seconds)
    return (f"{len(seconds)} tries: exit codes {sorted({c for c, _ in codes_and_seconds})}, "
            f"seconds to exit min {seconds[0]:.2f} median {seconds[len(seconds) // 2]:.2f} "
            f"max {seconds[-1]:.2f}")


def copies(config: Path, count: int) -> list[Path]:
    """``count`` copies of ``config``, each with a data directory of its own."""
    text = config.read_text()
    out = []
    for i in range(count):
        own = config.parent / f"try-{i}" / config.name
        own.parent.mkdir()
        own.write_text(text.replace(str(config.parent / "data"), str(own.parent / "data")))
        out.append(own)
    return out


async def busy_shutdowns(config: Path, env: dict[str, str], count: int) -> None:
    """``count`` tries, :data:`AT_ONCE` sidecars at a time (on one Redis key prefix or
    one SQLite file each: separate data directories)."""
    results: list[tuple[int, float]] = []
    failures: list[str] = []
    limit = asyncio.Semaphore(AT_ONCE)

    configs = copies(config, count)

    async def one(i: int) -> None:
        async with limit:
            code, seconds, p = await one_busy_shutdown(configs[i], env)
        results.append((code, seconds))
        overran = [line for line in p.lines if "did not" in str(line.get("msg", ""))]
        if code != 0 or seconds > GRACE + BOUND_BEYOND_GRACE or overran:
            failures.append(f"try {i + 1}: exit {code} after {seconds:.2f}s (grace {GRACE}s); "
                            f"log: {p.lines[-15:]}")

    await asyncio.gather(*(one(i) for i in range(count)))
    assert not failures, f"{len(failures)} of {count} failed ({report(results)}): {failures}"
    print(report(results))


@pytest.mark.timeout(600)
async def test_sigterm_on_redis_with_busy_streams_exits_zero_in_time_every_time(
        tmp_path: Path, redis_url: str) -> None:  # noqa: F811 - the fixture
    prefix = f"test-shutdown:{secrets.token_hex(6)}:"
    config = config_file(tmp_path, {"backend": "redis", "redis": {
        "url_env": "REDIS_URL", "key_prefix": prefix, "socket_timeout": "1s"}}, GRACE)
    try:
        await busy_shutdowns(config, {"REDIS_URL": redis_url}, tries(50))
    finally:
        await delete_prefix(redis_url, prefix)


@pytest.mark.timeout(300)
async def test_sigterm_on_sqlite_with_busy_streams_exits_zero_in_time_every_time(
        tmp_path: Path) -> None:
    await busy_shutdowns(config_file(tmp_path, {}, GRACE), {}, tries(10))


# ---------------------------------------------------------------------- health watches


async def test_an_idle_sidecar_with_a_health_watch_open_exits_at_once(tmp_path: Path) -> None:
    """gRPC client-side health checking keeps a Watch open per connection: it gets
    NOT_SERVING, then its stream ends, and it holds up no drain (the grace is long)."""
    grace = 30.0
    async with sidecar_process(config_file(tmp_path, {}, grace)) as (p, started), \
            grpc.aio.insecure_channel(started["grpc"]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=s))
                   for s in ("", "readiness", "liveness", "no-such-service")]
        firsts = [await asyncio.wait_for(w.read(), WAIT) for w in watches]
        assert [f.status for f in firsts] == [
            health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.SERVICE_UNKNOWN]
        code, seconds = await until_exit(p, grace)
        for watch, first in zip(watches, firsts, strict=True):
            rest = []
            while (msg := await asyncio.wait_for(watch.read(), WAIT)) is not grpc.aio.EOF:
                rest.append(msg.status)
            if first.status != health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
                assert rest == [health_pb2.HealthCheckResponse.NOT_SERVING]
            assert await watch.code() == grpc.StatusCode.OK
    assert code == 0
    # Far inside the grace: nothing waited for it (measured: well under a second).
    assert seconds < grace / 10, f"exit took {seconds:.2f}s with a {grace}s grace"
    print(f"idle sidecar with 4 health watches open: exit {seconds:.3f}s after SIGTERM")


# ---------------------------------------------------------------------- the last resort


async def test_a_shutdown_that_cannot_finish_is_ended_at_its_bound(tmp_path: Path) -> None:
    """An RPC handler that ignores every cancellation: stop() gives up on it at its
    bounds, and the process is ended at grace + margins with EXIT_OVERDUE."""
    grace = 0.5
    config = config_file(tmp_path, {}, grace)
    async with sidecar_process(config, "-m", "tests.slow_sidecar") as (p, started), \
            grpc.aio.insecure_channel(started["grpc"]) as channel:
        stubborn = channel.unary_unary("/test.Slow/Stubborn")(b"", timeout=WAIT)
        await p.wait_for("stubborn rpc started")
        code, seconds = await until_exit(p, grace + STOP_MARGIN + EXIT_MARGIN)
        stubborn.cancel()
    assert code == EXIT_OVERDUE
    assert grace + STOP_MARGIN < seconds <= grace + BOUND_BEYOND_GRACE + 1.0, seconds
    assert any(str(line.get("msg", "")).startswith("exiting now") for line in p.lines)

"""The sidecar as a process: start-up output, SIGTERM draining, exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


_running: list[asyncio.subprocess.Process] = []


@pytest.fixture(autouse=True)
async def _reap() -> AsyncIterator[None]:
    """Kill any sidecar a failed test left behind."""
    yield
    while _running:
        proc = _running.pop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class Proc:
    """A sidecar subprocess whose JSON log lines can be awaited."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        _running.append(proc)

    async def wait_for(self, msg: str, timeout: float = 20.0) -> dict[str, Any]:
        for line in self.lines:
            if line.get("msg") == msg:
                return line

        async def read() -> dict[str, Any]:
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"process exited before logging {msg!r}: "
                                         f"{self.lines}")
                try:
                    line: dict[str, Any] = json.loads(raw)
                except ValueError:
                    continue
                self.lines.append(line)
                if line.get("msg") == msg:
                    return line

        return await asyncio.wait_for(read(), timeout)

    async def exit_code(self, timeout: float = 20.0) -> int:
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        for raw in rest.splitlines():
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))
        return await asyncio.wait_for(self.proc.wait(), timeout)


def write_config(tmp_path: Path, grace: str, storage: dict[str, Any] | None = None,
                 **sections: Any) -> Path:
    """A config file with every listener on an ephemeral loopback port; ``storage``
    settings beside the data directory, other top-level ``sections`` as given."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump({
        "server": {
            "grpc": {"address": "127.0.0.1:0"},
            "edge": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "shutdown_grace": grace,
        },
        "storage": {"data_dir": str(tmp_path / "data"), **(storage or {})},
        **sections,
    }))
    return path


async def spawn(*args: str) -> Proc:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    return Proc(proc)


async def start_slow_sidecar(tmp_path: Path, grace: str) -> tuple[Proc, str]:
    p = await spawn("-m", "tests.slow_sidecar", str(write_config(tmp_path, grace)))
    started = await p.wait_for("sidecar started")
    return p, started["grpc"]


def slow_call(channel: grpc.aio.Channel, seconds: float) -> grpc.aio.UnaryUnaryCall:
    sleep = channel.unary_unary("/test.Slow/Sleep")
    return sleep(str(seconds).encode(), timeout=30)


async def test_sigterm_lets_in_flight_rpc_finish_then_exits_zero(tmp_path: Path) -> None:
    p, address = await start_slow_sidecar(tmp_path, grace="10s")
    async with grpc.aio.insecure_channel(address) as ch:
        call = slow_call(ch, 1.0)
        await p.wait_for("slow rpc started")
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="readiness"), timeout=30)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        p.proc.send_signal(signal.SIGTERM)
        # health flips to NOT_SERVING as soon as the drain begins
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert await call == b"done"
    assert await p.exit_code() == 0
    msgs = [line.get("msg") for line in p.lines]
    assert msgs.index("slow rpc finished") < msgs.index("sidecar stopped")


async def test_sigterm_refuses_new_rpcs_while_draining(tmp_path: Path) -> None:
    p, address = await start_slow_sidecar(tmp_path, grace="10s")
    async with grpc.aio.insecure_channel(address) as ch:
        call = slow_call(ch, 1.0)
        await p.wait_for("slow rpc started")
        p.proc.send_signal(signal.SIGTERM)
        await p.wait_for("sidecar draining")
        async with grpc.aio.insecure_channel(address) as fresh:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await slow_call(fresh, 0.0)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert await call == b"done"
    assert await p.exit_code() == 0
    started = [line for line in p.lines if line.get("msg") == "slow rpc started"]
    assert [line["seconds"] for line in started] == [1.0]  # the refused call never ran


async def test_rpc_outliving_the_grace_is_cancelled(tmp_path: Path) -> None:
    p, address = await start_slow_sidecar(tmp_path, grace="0.5s")
    async with grpc.aio.insecure_channel(address) as ch:
        call = slow_call(ch, 30.0)
        await p.wait_for("slow rpc started")
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert await p.exit_code() == 0
        elapsed = time.monotonic() - t0
    assert elapsed < 10, f"shutdown took {elapsed:.1f}s with a 0.5s grace"
    await p.wait_for("slow rpc cancelled")


async def test_sigint_also_drains_and_exits_zero(tmp_path: Path) -> None:
    p, _ = await start_slow_sidecar(tmp_path, grace="1s")
    p.proc.send_signal(signal.SIGINT)
    assert await p.exit_code() == 0
    assert any(line.get("msg") == "sidecar stopped" for line in p.lines)


async def test_console_entry_point_serves_and_stops(tmp_path: Path) -> None:
    p = await spawn("-m", "sidecar", "serve", "--config", str(write_config(tmp_path, "1s")))
    started = await p.wait_for("sidecar started")
    async with grpc.aio.insecure_channel(started["grpc"]) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    p.proc.send_signal(signal.SIGTERM)
    assert await p.exit_code() == 0
    assert (tmp_path / "data" / "sidecar.db").exists()


async def test_invalid_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  shutdown_grace: -3s\n")
    p = await spawn("-m", "sidecar", "serve", "--config", str(path))
    assert p.proc.stdout is not None
    out = (await p.proc.stdout.read()).decode()
    assert await p.proc.wait() == 2
    assert "server.shutdown_grace: must be zero or more; got '-3s'" in out


async def test_busy_port_exits_1(tmp_path: Path) -> None:
    first, _ = await start_slow_sidecar(tmp_path / "a", grace="1s")
    admin = (await first.wait_for("sidecar started"))["admin"]
    cfg = write_config(tmp_path, "1s")
    raw = yaml.safe_load(cfg.read_text())
    raw["server"]["admin"]["port"] = int(admin.rpartition(":")[2])
    cfg.write_text(yaml.safe_dump(raw))
    second = await spawn("-m", "sidecar", "serve", "--config", str(cfg))
    assert await second.exit_code() == 1
    assert any("failed to start" in str(line.get("msg")) for line in second.lines)
    first.proc.send_signal(signal.SIGTERM)
    assert await first.exit_code() == 0

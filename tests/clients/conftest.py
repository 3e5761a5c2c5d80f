"""Shared by the client tests: a real in-process sidecar with a client connected to it,
a real upstream, and a real sidecar process on a fixed loopback port that can be
stopped and started again on the same port and data directory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from integration_sidecar_client import AsyncSidecarClient

from sidecar.app import Sidecar
from tests.conftest import make_config
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]
#: Seconds a sidecar process may take to start or stop before the test fails.
PROCESS_WAIT = 20.0


@contextlib.asynccontextmanager
async def running(tmp_path: Path, extra: dict[str, Any] | None = None,
                  env: dict[str, str] | None = None, **client: Any
                  ) -> AsyncIterator[tuple[Sidecar, AsyncSidecarClient]]:
    """An in-process sidecar on ephemeral ports (SQLite in ``tmp_path``) and an
    ``AsyncSidecarClient`` (``client``: its arguments) talking to it over gRPC."""
    sc = Sidecar(make_config(tmp_path, extra, env))
    await sc.start()
    try:
        async with AsyncSidecarClient(sc.grpc.address, **client) as sidecar:
            yield sc, sidecar
    finally:
        await sc.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    try:
        yield up
    finally:
        await up.stop()


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS's next ephemeral one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SidecarProcess:
    """``python -m sidecar serve`` on a fixed gRPC port; ``restart()`` keeps the port
    and the data directory, so clients see the same sidecar come back."""

    def __init__(self, directory: Path, extra: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.config = directory / "sidecar.yaml"
        directory.mkdir(parents=True, exist_ok=True)
        raw: dict[str, Any] = {
            "server": {"grpc": {"address": self.address},
                       "edge": {"host": "127.0.0.1", "port": 0},
                       "admin": {"host": "127.0.0.1", "port": 0},
                       "shutdown_grace": "1s"},
            "storage": {"data_dir": str(directory / "data")},
        }
        raw.update(extra or {})
        self.config.write_text(yaml.safe_dump(raw))
        self.env = {**os.environ, **(env or {}),
                    "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'generated'}"}
        self.proc: asyncio.subprocess.Process | None = None
        self.output: list[str] = []

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve", "--config", str(self.config), cwd=ROOT,
            env=self.env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        stdout = self.proc.stdout
        assert stdout is not None

        async def started() -> None:
            while raw := await stdout.readline():
                self.output.append(raw.decode(errors="replace"))
                with contextlib.suppress(ValueError):
                    if json.loads(raw).get("msg") == "sidecar started":
                        return
            raise AssertionError("sidecar exited before starting:\n" + "".join(self.output))

        try:
            await asyncio.wait_for(started(), PROCESS_WAIT)
        except BaseException:  # not started (or the test was cancelled): not left running
            proc, self.proc = self.proc, None
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise
        # Keep draining so a full pipe never stalls the child.
        self._drain = asyncio.create_task(self._drain_output(stdout))

    async def _drain_output(self, stdout: asyncio.StreamReader) -> None:
        while raw := await stdout.readline():
            self.output.append(raw.decode(errors="replace"))

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(sig)
        code = await asyncio.wait_for(proc.wait(), PROCESS_WAIT)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._drain, PROCESS_WAIT)
        return code

    async def restart(self) -> None:
        await self.stop()
        await self.start()


@pytest.fixture
async def sidecar_process(tmp_path: Path) -> AsyncIterator[SidecarProcess]:
    """A started sidecar process (SQLite in ``tmp_path``), killed after the test."""
    process = SidecarProcess(tmp_path / "sidecar")
    await process.start()
    try:
        yield process
    finally:
        await process.stop(signal.SIGKILL)

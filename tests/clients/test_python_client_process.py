"""The Python client against a real sidecar process that is restarted mid-stream,
and the client's wheel installed into a fresh virtual environment."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import grpc
import pytest
from integration_sidecar_client import (
    AsyncSidecarClient,
    Event,
    Gap,
    Reconnect,
    StartPosition,
)

from tests.clients.conftest import ROOT, SidecarProcess

pytestmark = pytest.mark.slow
WAIT = 20.0


async def test_subscribe_resumes_after_the_sidecar_process_restarts(
        sidecar_process: SidecarProcess) -> None:
    """Publish N, restart the process (SIGTERM: the stream ends with SHUTTING_DOWN),
    publish M more: the subscriber gets exactly N+M, in order, none twice."""
    n, m = 5, 5
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    reconnect = Reconnect(initial=0.05, maximum=0.2, sleep=sleep, random=lambda: 1.0)
    received: asyncio.Queue[Event | Gap] = asyncio.Queue()
    async with AsyncSidecarClient(sidecar_process.address, reconnect=reconnect, timeout=5,
                                  wait_for_ready=True) as sidecar:

        async def read() -> None:
            async for item in sidecar.subscribe("orders", start=StartPosition.EARLIEST):
                received.put_nowait(item)

        async def take(count: int) -> list[Event | Gap]:
            return [await asyncio.wait_for(received.get(), WAIT) for _ in range(count)]

        reader = asyncio.create_task(read())
        try:
            before = [await sidecar.publish("orders", f"before-{i}".encode())
                      for i in range(n)]
            got = await take(n)
            assert await sidecar_process.stop() == 0  # graceful: SHUTTING_DOWN
            await sidecar_process.start()
            # wait_for_ready: the channel may still be in its reconnect backoff.
            after = [await sidecar.publish("orders", f"after-{i}".encode()) for i in range(m)]
            got += await take(m)
            # Nothing repeated: the next item is the next event published.
            last = await sidecar.publish("orders", b"sentinel")
            (sentinel,) = await take(1)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    assert all(isinstance(e, Event) for e in got)
    assert [(e.offset, e.id) for e in got if isinstance(e, Event)] == [
        (p.offset, p.event_id) for p in before + after]
    assert [e.offset for e in got if isinstance(e, Event)] == list(range(1, n + m + 1))
    assert isinstance(sentinel, Event) and sentinel.id == last.event_id
    assert waits and waits[0] == 0.05  # it did reconnect, after the policy's first delay


async def test_subscribe_resumes_after_sigkill(sidecar_process: SidecarProcess) -> None:
    reconnect = Reconnect(initial=0.05, maximum=0.2)
    async with AsyncSidecarClient(sidecar_process.address, reconnect=reconnect, timeout=5,
                                  wait_for_ready=True) as sidecar:
        sub = sidecar.subscribe("t", start=StartPosition.EARLIEST)
        first = await sidecar.publish("t", b"1")
        got = await asyncio.wait_for(anext(sub), WAIT)
        assert isinstance(got, Event) and got.id == first.event_id
        assert await sidecar_process.stop(signal.SIGKILL) == -signal.SIGKILL
        await sidecar_process.start()
        second = await sidecar.publish("t", b"2")
        item = await asyncio.wait_for(anext(sub), WAIT)
        await sub.aclose()
    assert isinstance(item, Event) and (item.id, item.offset) == (second.event_id, 2)


def test_wheel_installs_into_a_fresh_venv_and_imports_outside_the_checkout(
        tmp_path: Path) -> None:
    """Built from a copy holding only clients/python and generated/ (what a fresh
    clone has), so the wheel cannot pick anything else up from the checkout."""
    clone = tmp_path / "clone"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT / "clients" / "python", clone / "clients" / "python", ignore=ignore)
    shutil.copytree(ROOT / "generated", clone / "generated", ignore=ignore)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(clone / "clients" / "python")],
                   check=True, capture_output=True)
    (wheel,) = dist.glob("integration_sidecar_client-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("integration_sidecar_client/aio.py", "integration_sidecar_client/py.typed",
                     "integration_sidecar/v1/sidecar_pb2.py",
                     "integration_sidecar/v1/sidecar_pb2_grpc.py",
                     "integration_sidecar/v1/sidecar_pb2.pyi"):
        assert required in names, required
    with zipfile.ZipFile(wheel) as zf:
        for name in names:
            if name.startswith("integration_sidecar/"):  # byte-identical to generated/
                assert zf.read(name) == (ROOT / "generated" / name).read_bytes(), name

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   capture_output=True)
    python = venv / "bin" / "python"
    # The dependencies (grpcio, protobuf, googleapis-common-protos) come from the test's
    # environment through a .pth line, which adds their directory but runs none of its
    # .pth files, so the server's editable install does not leak into the new venv.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig."
                              "get_paths()['purelib'])"], check=True, capture_output=True,
                             text=True).stdout.strip()
    Path(purelib, "deps.pth").write_text(str(Path(grpc.__file__).parent.parent) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--no-build-isolation", "-q", str(wheel)],
                   check=True, capture_output=True)
    probe = ("import integration_sidecar_client as c, integration_sidecar.v1.sidecar_pb2 as pb;"
             "print(c.__file__); print(pb.__file__); print(c.AsyncSidecarClient().target)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SIDECAR_ADDRESS")}
    out = subprocess.run([str(python), "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].startswith(str(venv)) and out[1].startswith(str(venv)), out
    assert out[2] == "127.0.0.1:50051"

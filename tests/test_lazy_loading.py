"""What the sidecar loads only when it is used: gRPC reflection, the status page's
HTML, modules of its dependencies that it never calls (``sidecar.lazy_modules``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sidecar.config import GrpcListenerConfig
from sidecar.metrics import Metrics
from sidecar.rpc.server import GrpcServer
from sidecar.rpc.servicer import SidecarServicer
from tests.test_lifecycle import spawn, write_config

#: Loaded only by a feature this test's config does not use, or on first use.
UNUSED_AT_IDLE = (
    "jwt", "cryptography", "redis",  # WebSocket auth, Redis storage: not configured
    "grpc_reflection.v1alpha.reflection",  # no reflection request made
    "sidecar.status_html",  # no status page viewed
    "dateutil.parser._parser", "dateutil.tz", "zoneinfo",  # sqlite-utils' date recipes
    "importlib.metadata",  # sqlite-utils looks for plugins only when asked
    "sidecar.otlp",  # span export: tracing is off
    "sidecar.upstream.oauth2",  # no integration with OAuth2 client credentials
)

# Reports, as the process exits, which of UNUSED_AT_IDLE it imported.
SERVE_AND_REPORT = f"""
import atexit, json, sys
watched = {UNUSED_AT_IDLE!r}
atexit.register(lambda: print(json.dumps(
    {{"msg": "imported", "modules": [m for m in watched if m in sys.modules]}}), flush=True))
from sidecar.cli import main
sys.exit(main(["serve", "--config", sys.argv[1]]))
"""


async def reflect_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    responses = [r async for r in stub.ServerReflectionInfo(requests(), timeout=5)]
    return {s.name for s in responses[0].list_services_response.service}


@pytest.mark.slow
async def test_serve_does_not_import_what_its_config_leaves_unused(tmp_path: Path) -> None:
    p = await spawn("-c", SERVE_AND_REPORT, str(write_config(tmp_path, "1s")))
    try:
        await p.wait_for("sidecar started")
        p.proc.send_signal(signal.SIGTERM)
        assert await p.exit_code() == 0
    finally:
        if p.proc.returncode is None:
            p.proc.kill()
            await p.proc.wait()
    reports = [line for line in p.lines if line.get("msg") == "imported"]
    assert reports == [{"msg": "imported", "modules": []}]


def test_deferred_modules_work_when_used() -> None:
    """dateutil's parser loads when sqlite-utils' recipe calls it; mimetypes' tables
    are the same as in a process that never deferred anything."""
    probe = """
import json, sys, mimetypes
if sys.argv[1] == "deferred":
    from sidecar.lazy_modules import defer_unused_modules
    defer_unused_modules()
import aiohttp.web, sqlite_utils
from sqlite_utils.recipes import parsedate
before = "dateutil.parser._parser" in sys.modules
print(json.dumps({"loaded_before_use": before, "parsed": parsedate("03/01/2024", dayfirst=True),
                  "guess": mimetypes.guess_type("a.tar.gz"), "types": mimetypes.types_map}))
"""

    def run(mode: str) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True,
                             text=True, check=True, timeout=60)
        report: dict[str, Any] = json.loads(out.stdout)
        return report

    deferred, plain = run("deferred"), run("plain")
    assert deferred["loaded_before_use"] is False and plain["loaded_before_use"] is True
    assert deferred["parsed"] == plain["parsed"] == "2024-01-03"
    assert deferred["guess"] == plain["guess"] == ["application/x-tar", "gzip"]
    assert deferred["types"] == plain["types"]


async def test_reflection_is_served_through_the_interceptors_when_first_asked() -> None:
    metrics = Metrics()
    server = GrpcServer(GrpcListenerConfig(address="127.0.0.1:0"), SidecarServicer(), metrics)
    address = await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            for _ in range(2):  # the second request reuses the handler built for the first
                assert await reflect_services(ch) == {
                    "integration_sidecar.v1.SidecarService", "grpc.health.v1.Health",
                    "grpc.reflection.v1alpha.ServerReflection"}
    finally:
        await server.stop(0)
    assert metrics.registry.get_sample_value("grpc_server_handled_total", {
        "grpc_type": "bidi_stream", "grpc_service": "grpc.reflection.v1alpha.ServerReflection",
        "grpc_method": "ServerReflectionInfo", "grpc_code": "OK"}) == 2


async def test_reflection_off_leaves_the_service_unknown() -> None:
    server = GrpcServer(GrpcListenerConfig(address="127.0.0.1:0", reflection=False),
                        SidecarServicer(), Metrics())
    address = await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await reflect_services(ch)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)

"""Start a sidecar whose integrations point at test upstreams, and call it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.clock import Clock
from tests.conftest import make_config


def integration(url: str, **overrides: Any) -> dict[str, Any]:
    """An integration section for a local upstream, fast retries by default."""
    body: dict[str, Any] = {
        "base_url": url,
        "allow_insecure_http": url.startswith("http:"),
        "retry": {"backoff": {"initial": "1ms", "max": "5ms"}},
    }
    body.update(overrides)
    return body


@contextlib.asynccontextmanager
async def running(tmp_path: Path, integrations: dict[str, Any], *,
                  routes: list[dict[str, Any]] | None = None, env: dict[str, str] | None = None,
                  clock: Clock | None = None) -> AsyncIterator[tuple[Sidecar,
                                                                    pb_grpc.SidecarServiceStub]]:
    extra: dict[str, Any] = {"integrations": integrations}
    if routes:
        extra["routes"] = routes
    sc = Sidecar(make_config(tmp_path, extra, env), clock=clock)
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(sc.grpc.address) as channel:
            yield sc, pb_grpc.SidecarServiceStub(channel)
    finally:
        await sc.stop()


def call(integration: str = "svc", method: str = "GET", path: str = "/", **kw: Any
         ) -> pb.CallRequest:
    headers = kw.pop("headers", {})
    query = kw.pop("query", {})
    return pb.CallRequest(
        integration=integration, method=method, path=path,
        headers=[pb.Header(name=k, value=v) for k, v in headers.items()],
        query=[pb.QueryParam(name=k, value=v) for k, v in query.items()],
        **kw,
    )

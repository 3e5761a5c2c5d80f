"""Call end to end: a real gRPC server, real aiohttp upstreams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from tests.call_support import call, integration, running
from tests.rpc_support import rich_error
from tests.upstream import Upstream, reply


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = await Upstream().start()
    yield up
    await up.stop()


async def test_get_passes_status_headers_body_through(tmp_path: Path, upstream: Upstream) -> None:
    upstream.then(reply(201, b'{"id": 7}', {"Content-Type": "application/json", "X-Req": "1"}))
    async with running(tmp_path, {"svc": integration(upstream.url + "/v1",
                                                     headers={"Accept": "application/json"})}
                       ) as (_, stub):
        resp = await stub.Call(call(path="items/7", query={"expand": "a b"},
                                    headers={"X-Trace": "t"}), timeout=5)
    assert resp.status == 201 and resp.body == b'{"id": 7}' and resp.attempts == 1
    assert ("X-Req", "1") in [(h.name, h.value) for h in resp.headers]
    seen = upstream.seen[0]
    assert (seen.method, seen.path, seen.query) == ("GET", "/v1/items/7", "expand=a b")
    assert seen.headers["Accept"] == "application/json" and seen.headers["X-Trace"] == "t"


async def test_unknown_integration_is_not_found(tmp_path: Path, upstream: Upstream) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(integration="nope"), timeout=5)
    err = rich_error(info.value)
    assert err.code == grpc.StatusCode.NOT_FOUND and err.reason == "INTEGRATION_NOT_FOUND"
    assert err.metadata == {"integration": "nope", "attempts": "0", "upstream_reached": "no"}


async def test_bad_arguments_carry_bad_request_details(tmp_path: Path,
                                                      upstream: Upstream) -> None:
    async with running(tmp_path, {"svc": integration(upstream.url)}) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Call(call(method="FETCH", headers={"Host": "evil.example"}), timeout=5)
    err = rich_error(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "INVALID_ARGUMENT"
    assert [f for f, _ in err.violations] == ["method", "headers[0].name"]
    assert upstream.seen == []

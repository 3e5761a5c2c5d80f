"""The real server on ephemeral ports: health, reflection, metrics, admin, edge, auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.rpc.calls import SERVICE_NAME
from tests.conftest import make_config
from tests.rpc_support import rich_error

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_of(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    status: int = resp.status
    return status


async def http_get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_health_serving_for_overall_liveness_readiness(channel: grpc.aio.Channel) -> None:
    for service in ("", "liveness", "readiness", SERVICE_NAME):
        assert await health_of(channel, service) == SERVING, service


async def test_unknown_health_service_is_not_found(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await health_of(channel, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_list_names_every_service_with_its_status(sidecar: Sidecar,
                                                              channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    listed = await stub.List(health_pb2.HealthListRequest(), timeout=5)
    assert {name: r.status for name, r in listed.statuses.items()} == {
        "": SERVING, "liveness": SERVING, "readiness": SERVING,
        "integration_sidecar.v1.SidecarService": SERVING}
    await sidecar.grpc.set_ready(False)
    listed = await stub.List(health_pb2.HealthListRequest(), timeout=5)
    assert listed.statuses["readiness"].status == NOT_SERVING
    assert listed.statuses["liveness"].status == SERVING


async def test_reflection_lists_v1_service_and_health(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        yield reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME)

    responses = [r async for r in stub.ServerReflectionInfo(requests(), timeout=5)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"integration_sidecar.v1.SidecarService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert responses[1].file_descriptor_response.file_descriptor_proto


async def test_rpcs_without_their_feature_answer_unimplemented(tmp_path: Path) -> None:
    from sidecar.config import GrpcListenerConfig
    from sidecar.metrics import Metrics
    from sidecar.rpc.server import GrpcServer
    from sidecar.rpc.servicer import SidecarServicer

    server = GrpcServer(GrpcListenerConfig(address="127.0.0.1:0"), SidecarServicer(), Metrics())
    address = await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as ch:
            stub = pb_grpc.SidecarServiceStub(ch)
            for rpc, request in [("Call", pb.CallRequest()), ("Publish", pb.PublishRequest()),
                                 ("Ack", pb.AckRequest()),
                                 ("VerifyWebhook", pb.VerifyWebhookRequest())]:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await getattr(stub, rpc)(request, timeout=5)
                err = rich_error(info.value)
                assert err.code == grpc.StatusCode.UNIMPLEMENTED, rpc
                assert err.reason == "NOT_IMPLEMENTED" and err.domain == "integration-sidecar"
                assert err.message.startswith(f"{rpc} is not implemented in integration-sidecar")
            sub = stub.Subscribe(pb.SubscribeRequest(topics=["t"]), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in sub:
                    pass
            assert rich_error(info.value).reason == "NOT_IMPLEMENTED"
    finally:
        await server.stop(0)


async def test_metrics_show_build_info_and_grpc_counters(sidecar: Sidecar,
                                                         channel: grpc.aio.Channel) -> None:
    await health_of(channel, "")
    with pytest.raises(grpc.aio.AioRpcError):
        await pb_grpc.SidecarServiceStub(channel).Publish(pb.PublishRequest(), timeout=5)
    status, ctype, body = await http_get(f"http://{sidecar.admin.address}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert 'sidecar_build_info{grpcio="' in body and 'version="0.1.0"' in body
    assert ('grpc_server_handled_total{grpc_code="OK",grpc_method="Check",'
            'grpc_service="grpc.health.v1.Health",grpc_type="unary"} 1.0') in body
    assert ('grpc_server_handled_total{grpc_code="INVALID_ARGUMENT",grpc_method="Publish",'
            'grpc_service="integration_sidecar.v1.SidecarService",grpc_type="unary"} 1.0') in body
    assert ('grpc_server_handling_seconds_count{grpc_code="INVALID_ARGUMENT",grpc_method="Publish",'
            'grpc_service="integration_sidecar.v1.SidecarService",grpc_type="unary"} 1.0') in body
    assert "sidecar_ready 1.0" in body


async def test_healthz_and_readyz(sidecar: Sidecar) -> None:
    status, _, body = await http_get(f"http://{sidecar.admin.address}/healthz")
    assert status == 200 and '"ok"' in body
    status, _, body = await http_get(f"http://{sidecar.admin.address}/readyz")
    assert status == 200 and '"storage": "ok"' in body


async def test_readiness_follows_storage(sidecar: Sidecar, channel: grpc.aio.Channel) -> None:
    await sidecar.storage.close()  # the database goes away underneath the server
    await sidecar._refresh_readiness()
    status, _, body = await http_get(f"http://{sidecar.admin.address}/readyz")
    assert status == 503 and "storage is closed" in body
    assert await health_of(channel, "readiness") == NOT_SERVING
    assert await health_of(channel, "liveness") == SERVING
    await sidecar.storage.open()
    await sidecar._refresh_readiness()
    assert await health_of(channel, "readiness") == SERVING


async def test_edge_routes(sidecar: Sidecar) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{sidecar.edge.address}/webhooks/stripe",
                                data=b"{}") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["reason"] == "WEBHOOK_SOURCE_NOT_FOUND"
        async with session.get(f"http://{sidecar.edge.address}/ws") as resp:
            assert resp.status == 404  # no JWT keys configured: the WebSocket edge is off
            assert (await resp.json())["error"]["reason"] == "WEBSOCKET_DISABLED"
        async with session.get(f"http://{sidecar.edge.address}/nope") as resp:
            assert resp.status == 404


async def test_api_token_required_except_for_health(tmp_path: Path) -> None:
    config = make_config(tmp_path, {"server": {"grpc": {"api_token_env": "TOKEN"}}},
                         env={"TOKEN": "s3cret-token"})
    sc = Sidecar(config)
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(sc.grpc.address) as ch:
            stub = pb_grpc.SidecarServiceStub(ch)
            assert await health_of(ch, "readiness") == SERVING  # probes need no token
            for metadata in [(), (("authorization", "Bearer wrong-token"),),
                             (("authorization", "s3cret-token"),)]:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Publish(pb.PublishRequest(), metadata=metadata, timeout=5)
                err = rich_error(info.value)
                assert err.code == grpc.StatusCode.UNAUTHENTICATED, metadata
                assert err.reason == "API_TOKEN_INVALID"
                assert "s3cret-token" not in err.message
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Publish(pb.PublishRequest(),
                                   metadata=(("authorization", "Bearer s3cret-token"),), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # got through
            sub = stub.Subscribe(pb.SubscribeRequest(topics=["t"]), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in sub:
                    pass
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        _, _, body = await http_get(f"http://{sc.admin.address}/metrics")
        assert "sidecar_grpc_auth_failures_total 4.0" in body
    finally:
        await sc.stop()


async def test_unix_socket_listener(tmp_path: Path) -> None:
    sock = tmp_path / "sidecar.sock"
    config = make_config(tmp_path, {"server": {"grpc": {"address": f"unix://{sock}"}}})
    sc = Sidecar(config)
    await sc.start()
    try:
        assert sock.exists()
        async with grpc.aio.insecure_channel(f"unix://{sock}") as ch:
            assert await health_of(ch, "") == SERVING
    finally:
        await sc.stop()


async def test_port_in_use_fails_start_and_releases_everything(sidecar: Sidecar,
                                                               tmp_path: Path) -> None:
    busy = sidecar.admin.port
    config = make_config(tmp_path / "b", {"server": {"admin": {"port": busy}}})
    other = Sidecar(config)
    with pytest.raises(OSError):
        await other.start()
    # the partially started sidecar let go of its gRPC port and database
    async with grpc.aio.insecure_channel(other.grpc.address) as ch:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_of(ch, "")

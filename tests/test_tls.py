"""TLS on the sidecar's own listeners over real sockets: gRPC (and mTLS), the edge
and the admin port; certificates replaced on disk and reloaded without a restart."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.app import Sidecar
from sidecar.config import Config, ConfigError
from tests.certs import Pki, _new_key_and_csr, _sign, make_pki
from tests.conftest import make_config
from tests.system_tools import require_binary

FIRST_SERIAL = 1001  # what tests.certs gives the server certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_binary("openssl")
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def rotated(pki: Pki) -> tuple[Path, Path]:
    """A second server certificate from the same CA: new key, serial 2002."""
    directory = pki.ca_cert.parent
    cnf = directory / "openssl.cnf"
    _new_key_and_csr("rotated", "/CN=127.0.0.1 rotated", cnf, directory)
    _sign("rotated", "server", 2002, cnf, directory)
    return directory / "rotated.crt", directory / "rotated.key"


class Files:
    """The listener's certificate and key at fixed paths, replaceable like a
    Kubernetes secret volume."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = directory / "tls.crt", directory / "tls.key"
        self.replace(pki.server_cert, pki.server_key)

    def replace(self, cert: Path, key: Path) -> None:
        shutil.copyfile(cert, self.cert)
        shutil.copyfile(key, self.key)

    def tls(self, **extra: str) -> dict[str, str]:
        return {"cert_file": str(self.cert), "key_file": str(self.key), **extra}


def tls_config(tmp_path: Path, *, grpc_tls: dict[str, Any] | None = None,
               edge_tls: dict[str, Any] | None = None,
               admin_tls: dict[str, Any] | None = None) -> Config:
    server: dict[str, Any] = {}
    for name, tls in (("grpc", grpc_tls), ("edge", edge_tls), ("admin", admin_tls)):
        if tls is not None:
            server[name] = {"tls": tls}
    return make_config(tmp_path, {"server": server})


@pytest.fixture
async def sidecars() -> AsyncIterator[list[Sidecar]]:
    started: list[Sidecar] = []
    yield started
    for sc in started:
        await sc.stop()


async def start(sidecars: list[Sidecar], config: Config) -> Sidecar:
    sc = Sidecar(config)
    await sc.start()
    sidecars.append(sc)
    return sc


def client_context(pki: Pki, *, with_client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_cert)
    if with_client_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


async def served_certificate(address: str, ctx: ssl.SSLContext) -> dict[str, Any]:
    """The certificate a brand-new TLS connection to ``address`` is shown."""
    host, _, port = address.rpartition(":")
    _reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=host), 5)
    try:
        cert = writer.get_extra_info("peercert")
    finally:
        writer.close()
    assert cert
    return dict(cert)


def serial(cert: dict[str, Any]) -> int:
    return int(cert["serialNumber"], 16)


def secure_channel(pki: Pki, address: str, *, with_client_cert: bool = False
                   ) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=pki.client_key.read_bytes() if with_client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if with_client_cert else None)
    return grpc.aio.secure_channel(address, creds)


async def health(channel: grpc.aio.Channel) -> int:
    resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=5)
    return int(resp.status)


async def test_grpc_over_tls_works_and_plaintext_is_refused(
        tmp_path: Path, pki: Pki, sidecars: list[Sidecar]) -> None:
    files = Files(pki, tmp_path / "tls")
    sc = await start(sidecars, tls_config(tmp_path, grpc_tls=files.tls()))
    async with secure_channel(pki, sc.grpc.address) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING
        published = await pb_grpc.SidecarServiceStub(ch).Publish(
            pb.PublishRequest(topic="orders", data=b"{}"), timeout=5)
        assert published.offset == 1
    async with grpc.aio.insecure_channel(sc.grpc.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health(plain)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_signed_by_the_ca(
        tmp_path: Path, pki: Pki, sidecars: list[Sidecar]) -> None:
    files = Files(pki, tmp_path / "tls")
    sc = await start(sidecars, tls_config(tmp_path, grpc_tls=files.tls(
        client_ca_file=str(pki.ca_cert))))
    async with secure_channel(pki, sc.grpc.address) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health(anonymous)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    async with secure_channel(pki, sc.grpc.address, with_client_cert=True) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING


async def test_edge_and_admin_over_https(tmp_path: Path, pki: Pki,
                                         sidecars: list[Sidecar]) -> None:
    files = Files(pki, tmp_path / "tls")
    sc = await start(sidecars, tls_config(tmp_path, edge_tls=files.tls(),
                                          admin_tls=files.tls()))
    async with aiohttp.ClientSession() as http:
        ctx = client_context(pki)
        async with http.get(f"https://{sc.edge.address}/ws", ssl=ctx) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["reason"] == "WEBSOCKET_DISABLED"
        async with http.get(f"https://{sc.admin.address}/healthz", ssl=ctx) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://{sc.edge.address}/ws") as resp:
                await resp.read()


async def test_replaced_certificate_is_served_after_reload_and_streams_carry_on(
        tmp_path: Path, pki: Pki, rotated: tuple[Path, Path], sidecars: list[Sidecar]) -> None:
    files = Files(pki, tmp_path / "tls")
    config = tls_config(tmp_path, grpc_tls=files.tls(), edge_tls=files.tls())
    sc = await start(sidecars, config)
    ctx = client_context(pki)
    assert serial(await served_certificate(sc.grpc.address, ctx)) == FIRST_SERIAL
    async with secure_channel(pki, sc.grpc.address) as ch:
        stub = pb_grpc.SidecarServiceStub(ch)
        stream = stub.Subscribe(pb.SubscribeRequest(topics=["orders"]))
        await wait_subscribed(sc, "orders")
        files.replace(*rotated)
        outcome = await sc.reload(config)
        assert outcome.ok, outcome.problems
        for address in (sc.grpc.address, sc.edge.address):
            cert = await served_certificate(address, ctx)
            assert serial(cert) == 2002
            assert cert["subject"] == ((("commonName", "127.0.0.1 rotated"),),)
        # The stream opened under the old certificate is still live.
        published = await stub.Publish(pb.PublishRequest(topic="orders", data=b"{}"),
                                       timeout=5)
        assert (await asyncio.wait_for(stream.read(), 5)).HasField("subscribed")
        msg = await asyncio.wait_for(stream.read(), 5)
        assert msg.event.id == published.event_id
        stream.cancel()
    async with secure_channel(pki, sc.grpc.address) as fresh:
        assert await health(fresh) == health_pb2.HealthCheckResponse.SERVING


async def wait_subscribed(sc: Sidecar, topic: str) -> None:
    for _ in range(500):
        if sc.live.subscriber_count(topic):
            return
        await asyncio.sleep(0.002)
    raise AssertionError("subscriber never registered")


async def test_broken_certificate_on_reload_keeps_the_old_one(
        tmp_path: Path, pki: Pki, sidecars: list[Sidecar]) -> None:
    files = Files(pki, tmp_path / "tls")
    config = tls_config(tmp_path, grpc_tls=files.tls(), edge_tls=files.tls())
    sc = await start(sidecars, config)
    files.replace(pki.server_cert, pki.client_key)  # the key of another certificate
    outcome = await sc.reload(config)
    assert not outcome.ok
    assert outcome.problems[0].startswith("server.grpc.tls.cert_file: cannot load")
    assert "KEY_VALUES_MISMATCH" in outcome.problems[0]
    assert sc.metrics.registry.get_sample_value("sidecar_config_reloads_total",
                                                {"result": "failure"}) == 1
    ctx = client_context(pki)
    for address in (sc.grpc.address, sc.edge.address):
        assert serial(await served_certificate(address, ctx)) == FIRST_SERIAL
    files.key.unlink()
    outcome = await sc.reload(config)
    assert outcome.problems[0].startswith("server.grpc.tls.key_file: cannot read")
    async with secure_channel(pki, sc.grpc.address) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING


async def test_turning_tls_on_needs_a_restart(tmp_path: Path, pki: Pki,
                                              sidecars: list[Sidecar]) -> None:
    sc = await start(sidecars, make_config(tmp_path))
    files = Files(pki, tmp_path / "tls")
    outcome = await sc.reload(tls_config(tmp_path, grpc_tls=files.tls()))
    assert outcome.ok and outcome.restart_required == ("server.grpc.tls",)
    async with grpc.aio.insecure_channel(sc.grpc.address) as plain:
        assert await health(plain) == health_pb2.HealthCheckResponse.SERVING


def test_unusable_files_at_start_up_are_config_errors_naming_the_field(
        tmp_path: Path, pki: Pki) -> None:
    files = Files(pki, tmp_path / "tls")

    def problems(**server: Any) -> list[str]:
        with pytest.raises(ConfigError) as info:
            make_config(tmp_path, {"server": server})
        return [str(p) for p in info.value.problems]

    missing = problems(grpc={"tls": files.tls(key_file=str(tmp_path / "nope.key"))})
    assert missing == [f"server.grpc.tls.key_file: cannot read {tmp_path / 'nope.key'}: "
                       "No such file or directory"]
    mismatch = problems(edge={"tls": files.tls(key_file=str(pki.client_key))})
    assert len(mismatch) == 1 and mismatch[0].startswith("server.edge.tls.cert_file:")
    assert problems(admin={"tls": {"cert_file": str(files.cert)}}) == [
        "server.admin.tls.key_file: is required"]
    not_ca = problems(grpc={"tls": files.tls(client_ca_file=str(files.key))})
    assert not_ca[0].startswith("server.grpc.tls.client_ca_file:")
    edge_mtls = problems(edge={"tls": files.tls(client_ca_file=str(pki.ca_cert))})
    assert edge_mtls == ["server.edge.tls.client_ca_file: unknown field; client certificates "
                         "are checked on the gRPC listener only"]

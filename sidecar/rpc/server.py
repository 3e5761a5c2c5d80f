"""The grpc.aio server: SidecarService, standard health and reflection, interceptors."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar.config import GrpcListenerConfig
from sidecar.metrics import Metrics
from sidecar.rpc.calls import SERVICE_NAME
from sidecar.rpc.guard import RequestGuard
from sidecar.rpc.health import NOT_SERVING, SERVING, HealthService
from sidecar.rpc.interceptors import (
    ApiTokenInterceptor,
    HandlerWrapper,
    InterceptedServer,
    MetricsInterceptor,
)
from sidecar.rpc.reflection import REFLECTION_SERVICE, LazyReflection
from sidecar.rpc.servicer import SidecarServicer
from sidecar.server_tls import TlsMaterial, read_material

#: Named health services, as Kubernetes gRPC probes ask for them
#: (``grpc: {port: 50051, service: readiness}``); "" is the overall status.
LIVENESS = "liveness"
READINESS = "readiness"
HEALTH_SERVICES = ("", LIVENESS, READINESS, SERVICE_NAME)

#: Registers further services on the server (embedding, tests).
ServiceRegistrar = Callable[[grpc.aio.Server], None]

TLS_FIELD = "server.grpc.tls"


def _certificate_config(material: TlsMaterial) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(material.key, material.cert_chain)], root_certificates=material.client_ca)


class GrpcServer:
    def __init__(
        self,
        config: GrpcListenerConfig,
        servicer: SidecarServicer,
        metrics: Metrics,
        extra_services: Sequence[ServiceRegistrar] = (),
    ) -> None:
        self.config = config
        self.health = HealthService()
        wrappers: list[HandlerWrapper] = [MetricsInterceptor(metrics)]
        if config.api_token is not None:
            wrappers.append(ApiTokenInterceptor(config.api_token.value, metrics))
        # Innermost: the wrappers above see the status it sets.
        wrappers.append(RequestGuard())
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", config.max_message_bytes),
                # Never share a port with another process by accident.
                ("grpc.so_reuseport", 0),
                # Let idle client connections be pinged; tolerate client keepalives.
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ],
        )
        target: Any = InterceptedServer(self.server, wrappers)
        pb_grpc.add_SidecarServiceServicer_to_server(servicer, target)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, target)
        names: list[str] = [SERVICE_NAME, health.SERVICE_NAME]
        for register in extra_services:
            register(target)
        if config.reflection:
            names.append(REFLECTION_SERVICE)
            target.add_generic_rpc_handlers((LazyReflection(names),))
        self.address = ""
        self._tls_lock = threading.Lock()
        self._next_tls: Any = None

    async def start(self) -> str:
        """Bind and start; returns the bound address (the real port if 0 was asked)."""
        tls = self.config.tls
        if tls is None:
            port = self.server.add_insecure_port(self.config.address)
        else:
            material = read_material(tls, TLS_FIELD)
            # Dynamic credentials: gRPC asks _next_certificates before each
            # handshake, so a reload changes the certificate without a restart.
            credentials = grpc.dynamic_ssl_server_credentials(
                _certificate_config(material), self._next_certificates,
                require_client_authentication=material.client_ca is not None)
            port = self.server.add_secure_port(self.config.address, credentials)
        if self.config.address.startswith("unix:"):
            self.address = self.config.address
        else:
            host = self.config.address.rpartition(":")[0]
            self.address = f"{host}:{port}"
        await self.server.start()
        await self.set_status(LIVENESS, serving=True)
        return self.address

    def reload_tls(self, material: TlsMaterial) -> None:
        """New connections get ``material``; open ones (and their streams) keep theirs."""
        with self._tls_lock:
            self._next_tls = _certificate_config(material)

    def _next_certificates(self) -> Any:
        # Called by gRPC's core, off the event loop: None keeps the current ones.
        with self._tls_lock:
            config, self._next_tls = self._next_tls, None
        return config

    async def set_status(self, service: str, *, serving: bool) -> None:
        await self.health.set(service, SERVING if serving else NOT_SERVING)

    async def set_ready(self, ready: bool) -> None:
        for service in ("", READINESS, SERVICE_NAME):
            await self.set_status(service, serving=ready)

    async def begin_shutdown(self) -> None:
        """Every health service to NOT_SERVING, and no further changes; open Watch
        streams get that, then end (so they hold up no drain)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Stop accepting; let in-flight RPCs finish within ``grace``, then cancel them."""
        await self.server.stop(grace)



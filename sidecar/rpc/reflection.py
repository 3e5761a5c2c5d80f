"""gRPC server reflection, loaded on the first reflection request.

Most sidecars never see one (grpcurl and similar tools do), so grpc_reflection
and its descriptors are imported only then instead of at start-up.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

#: ``grpc_reflection.v1alpha.reflection.SERVICE_NAME``, without importing it.
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
METHOD = f"/{REFLECTION_SERVICE}/ServerReflectionInfo"


class LazyReflection(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Serves ``ServerReflectionInfo`` for ``service_names``; builds it when first asked."""

    def __init__(self, service_names: Sequence[str]) -> None:
        self._names = tuple(service_names)
        self._handler: grpc.RpcMethodHandler | None = None

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != METHOD:
            return None
        if self._handler is None:
            from grpc_reflection.v1alpha import reflection, reflection_pb2

            servicer = reflection.aio.ReflectionServicer(self._names)
            self._handler = grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString)
        return self._handler

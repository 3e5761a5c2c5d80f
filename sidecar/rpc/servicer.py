"""SidecarService over gRPC: converts protos to domain calls and errors to statuses.

RPCs whose feature has not landed answer UNIMPLEMENTED naming what is missing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from integration_sidecar.v1 import sidecar_pb2 as pb
from integration_sidecar.v1 import sidecar_pb2_grpc as pb_grpc

from sidecar import __version__
from sidecar.errors import Internal, NotImplementedYet, SidecarError
from sidecar.rpc.status import abort_with

log = logging.getLogger("sidecar.rpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SidecarService"].full_name


def _not_yet(rpc: str, what: str) -> NotImplementedYet:
    return NotImplementedYet(
        f"{rpc} is not implemented in integration-sidecar {__version__}: {what}",
        metadata={"rpc": rpc},
    )


async def _fail(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    if isinstance(exc, SidecarError):
        await abort_with(context, exc)
    log.exception("unexpected error in RPC handler")
    await abort_with(context, Internal("internal error; see the sidecar's log"))


class SidecarServicer(pb_grpc.SidecarServiceServicer):
    async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext
                   ) -> pb.CallResponse:
        try:
            raise _not_yet("Call", "outbound integration calls (retries, circuit breakers, "
                                   "rate limits, idempotency) are not available yet")
        except Exception as exc:
            await _fail(context, exc)
            raise

    async def VerifyWebhook(self, request: pb.VerifyWebhookRequest,
                            context: grpc.aio.ServicerContext) -> pb.VerifyWebhookResponse:
        try:
            raise _not_yet("VerifyWebhook", "webhook signature verification is not "
                                            "available yet")
        except Exception as exc:
            await _fail(context, exc)
            raise

    async def Publish(self, request: pb.PublishRequest, context: grpc.aio.ServicerContext
                      ) -> pb.PublishResponse:
        try:
            raise _not_yet("Publish", "the event log and fan-out are not available yet")
        except Exception as exc:
            await _fail(context, exc)
            raise

    async def Subscribe(self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext
                        ) -> AsyncIterator[pb.SubscribeResponse]:
        try:
            raise _not_yet("Subscribe", "live and durable subscriptions are not available yet")
        except Exception as exc:
            await _fail(context, exc)
            raise
        yield  # pragma: no cover - makes this an async generator

    async def Ack(self, request: pb.AckRequest, context: grpc.aio.ServicerContext
                  ) -> pb.AckResponse:
        try:
            raise _not_yet("Ack", "durable consumer groups are not available yet")
        except Exception as exc:
            await _fail(context, exc)
            raise

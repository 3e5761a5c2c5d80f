"""Any bytes sent as a request, to any RPC: never ``UNKNOWN``, never an exception's text,
always a status with ErrorInfo (#14). Bytes that do not decode as the RPC's request
message are ``INVALID_ARGUMENT`` / ``MALFORMED_REQUEST``; bytes that decode get the
RPC's ordinary answer (often a validation error, also with ErrorInfo)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from integration_sidecar.v1 import sidecar_pb2 as pb

from sidecar.app import Sidecar
from sidecar.rpc.guard import MALFORMED_REQUEST
from tests.conftest import make_config
from tests.fuzzing import examples
from tests.rpc_support import rich_error

SERVICE = pb.DESCRIPTOR.services_by_name["SidecarService"]
METHODS = [(f"/{SERVICE.full_name}/{m.name}", m.server_streaming) for m in SERVICE.methods]
#: A string field (1: the first field of every request here) that is not UTF-8.
NOT_UTF8 = b"\x0a\x02\xff\xfe"


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    sc = Sidecar(make_config(tmp_path))
    await sc.start()
    try:
        async with grpc.aio.insecure_channel(sc.grpc.address) as ch:
            yield ch
    finally:
        await sc.stop()


async def send(channel: grpc.aio.Channel, method: str, streaming: bool, raw: bytes
               ) -> grpc.aio.AioRpcError | None:
    """The RPC's error, or None if it answered (a stream: its first message) in time."""
    try:
        if streaming:
            call = channel.unary_stream(method)(raw, timeout=2)
            await call.read()
            call.cancel()
        else:
            await channel.unary_unary(method)(raw, timeout=2)
    except grpc.aio.AioRpcError as err:
        return err
    return None


def assert_documented(err: grpc.aio.AioRpcError | None, method: str, raw: bytes) -> None:
    if err is None or err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return  # an answer (a live stream waiting for events runs into the deadline)
    rich = rich_error(err)
    assert rich.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), \
        (method, raw, rich)
    assert rich.domain == "integration-sidecar" and rich.reason, (method, raw, rich)
    assert "Exception" not in rich.message and "Traceback" not in rich.message, rich


@settings(max_examples=examples(150), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(METHODS), raw=st.binary(max_size=64))
@example(target=METHODS[0], raw=NOT_UTF8)
@example(target=METHODS[0], raw=b"\xff\xff\xff")
async def test_no_request_bytes_get_unknown_or_an_exception_text(
        channel: grpc.aio.Channel, target: tuple[str, bool], raw: bytes) -> None:
    method, streaming = target
    assert_documented(await send(channel, method, streaming, raw), method, raw)


@pytest.mark.parametrize(("method", "streaming"), METHODS)
async def test_undecodable_bytes_are_malformed_request(channel: grpc.aio.Channel, method: str,
                                                       streaming: bool) -> None:
    for raw in (NOT_UTF8, b"\xff\xff\xff"):
        err = await send(channel, method, streaming, raw)
        assert err is not None
        rich = rich_error(err)
        assert (rich.code, rich.reason) == (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED_REQUEST)
        assert rich.metadata == {"method": method}


async def test_an_enum_value_this_proto_does_not_know_is_refused(
        channel: grpc.aio.Channel) -> None:
    """A newer client's start position is not silently taken as LATEST."""
    request = pb.SubscribeRequest(topics=["t"])
    request.start = 99  # type: ignore[assignment] # proto3 keeps unknown enum numbers
    call = channel.unary_stream(f"/{SERVICE.full_name}/Subscribe")(
        request.SerializeToString(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    rich = rich_error(info.value)
    assert (rich.code, [f for f, _ in rich.violations]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                            ["start"])
    ack = pb.AckRequest(group="g", event_ids=["e"])
    ack.outcome = 7  # type: ignore[assignment]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{SERVICE.full_name}/Ack")(ack.SerializeToString(),
                                                               timeout=5)
    rich = rich_error(info.value)
    assert (rich.code, [f for f, _ in rich.violations]) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                            ["outcome"])

"""Live SubscribeResponses are built and serialised once per event for every stream,
within bounds."""

from __future__ import annotations

from integration_sidecar.v1 import sidecar_pb2 as pb

from sidecar.core.events.models import StoredEvent
from sidecar.rpc.servicer import SubscribeFrames


def ev(offset: int, data: bytes = b"{}") -> StoredEvent:
    return StoredEvent(f"evt_{offset}", "orders", offset, "created", data, "application/json",
                       {"k": "v"}, 1_700_000_000.25)


def test_one_message_per_event_with_every_field() -> None:
    responses = SubscribeFrames()
    first = responses.event(ev(1))
    assert responses.event(ev(1)) is first
    e = pb.SubscribeResponse.FromString(first).event
    assert (e.id, e.topic, e.offset, e.type, e.data, e.content_type, dict(e.attributes)) == (
        "evt_1", "orders", 1, "created", b"{}", "application/json", {"k": "v"})
    assert abs(e.time.ToNanoseconds() - 1_700_000_000_250_000_000) < 1000


def test_bounded_by_entries() -> None:
    responses = SubscribeFrames(entries=2)
    kept = [responses.event(ev(i)) for i in (1, 2, 3)]
    assert responses.event(ev(3)) is kept[2] and responses.event(ev(2)) is kept[1]
    assert responses.event(ev(1)) is not kept[0]  # the oldest went first


def test_bounded_by_data_bytes() -> None:
    responses = SubscribeFrames(entries=10, data_bytes=100)
    big = responses.event(ev(4, b"x" * 60))  # over half the bound: never kept
    assert responses.event(ev(4, b"x" * 60)) is not big
    a, b = responses.event(ev(5, b"x" * 45)), responses.event(ev(6, b"x" * 45))
    c = responses.event(ev(7, b"x" * 45))  # 135 bytes would be over 100: the oldest goes
    assert responses.event(ev(7, b"x" * 45)) is c and responses.event(ev(6, b"x" * 45)) is b
    assert responses.event(ev(5, b"x" * 45)) is not a

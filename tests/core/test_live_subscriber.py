"""A live subscriber's bounded queue and slow-consumer policies."""

from __future__ import annotations

from sidecar.core.events.live import Subscriber
from sidecar.core.events.models import StoredEvent
from sidecar.core.events.topics import topic_class


def ev(offset: int, topic: str = "t") -> StoredEvent:
    return StoredEvent(f"e{offset}", topic, offset, "", b"", "", {}, 0.0)


def test_disconnect_policy_refuses_once_full() -> None:
    sub = Subscriber(frozenset({"t"}), "grpc", 3, "disconnect")
    assert all(sub.offer(ev(i)) for i in range(1, 4))
    assert not sub.offer(ev(4))
    assert sub.closed_reason == "slow consumer" and len(sub.queue) == 3


def test_drop_oldest_keeps_the_newest_and_records_the_gap() -> None:
    sub = Subscriber(frozenset({"t"}), "ws", 3, "drop_oldest")
    assert all(sub.offer(ev(i)) for i in range(1, 7))
    assert list(sub.queue) == [ev(4), ev(5), ev(6)]
    assert sub.dropped == {"t": [1, 3]} and not sub.closed_reason


def test_topic_classes_are_bounded() -> None:
    assert [topic_class(t) for t in ("user:1", "role:admin", "broadcast", "webhooks.s", "x")] == [
        "user", "role", "broadcast", "webhooks", "other"]

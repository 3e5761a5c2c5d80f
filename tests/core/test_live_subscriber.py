"""A live subscriber's bounded backlog and slow-consumer policies."""

from __future__ import annotations

from sidecar.core.events.feed import Backlog
from sidecar.core.events.models import StoredEvent
from sidecar.core.events.topics import topic_class


def ev(offset: int, topic: str = "t") -> StoredEvent:
    return StoredEvent(f"e{offset}", topic, offset, "", b"", "", {}, 0.0)


def test_disconnect_policy_refuses_once_full() -> None:
    backlog = Backlog(3, "disconnect")
    assert all(backlog.offer(ev(i)) for i in range(1, 4))
    assert not backlog.offer(ev(4))
    assert len(backlog.queue) == 3 and not backlog.dropped


def test_drop_oldest_keeps_the_newest_and_records_the_gap() -> None:
    backlog = Backlog(3, "drop_oldest")
    assert all(backlog.offer(ev(i)) for i in range(1, 7))
    assert list(backlog.queue) == [ev(4), ev(5), ev(6)]
    assert backlog.dropped == {"t": [1, 3]}


def test_topic_classes_are_bounded() -> None:
    assert [topic_class(t) for t in ("user:1", "role:admin", "broadcast", "webhooks.s", "x")] == [
        "user", "role", "broadcast", "webhooks", "other"]

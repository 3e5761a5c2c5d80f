"""Contract: retention (by age, by count, durable topics) and operator views."""

from __future__ import annotations

from sidecar.core.events.models import AckOutcome, DeliveryStatus, GroupPolicy
from sidecar.storage import Storage
from tests.contract.test_event_store import POLICY, ev, no_delay


async def fill(store: Storage, topic: str, times: list[float]) -> list[str]:
    return [(await store.append_event(ev(topic), now=t)).id for t in times]


async def test_prune_by_age_takes_the_group_records_along(store: Storage) -> None:
    a = await fill(store, "a", [1.0, 2.0, 3.0, 4.0, 5.0])
    await fill(store, "b", [1.0, 2.0, 3.0])
    await store.claim("g", ["a"], "m", now=6.0, policy=POLICY, limit=2)
    # a1, a2, b1, b2 are older than 3.0; g's records of a1 and a2 go with them
    assert await store.prune(now=100.0, events_before=3.0) == 6
    assert await store.topic_bounds("a") == (3, 5)
    assert await store.topic_bounds("b") == (3, 3)
    assert await store.list_deliveries(group="g") == []
    assert [e.id for e in await store.read_events("a", after=0, limit=10)] == a[2:]
    counts = await store.count_deliveries()
    assert counts == {("g", "a", "pending"): 3}
    assert await store.settle("g", [a[0]], AckOutcome.SUCCESS, error="", now=7.0,
                              policy=POLICY, retry_delay=no_delay) == (0, [a[0]])
    assert await store.prune(now=100.0, events_before=3.0) == 0


async def test_prune_by_count_keeps_the_newest(store: Storage) -> None:
    await fill(store, "a", [1.0] * 5)
    await fill(store, "b", [1.0] * 2)
    assert await store.prune(now=10.0, max_per_topic=2) == 3
    assert await store.topic_bounds("a") == (4, 5)
    assert await store.topic_bounds("b") == (1, 2)
    # offsets continue after the trimmed ones
    assert (await store.append_event(ev("a"), now=2.0)).offset == 6
    assert await store.prune(now=10.0, max_per_topic=0) == 5
    assert await store.topic_bounds("a") == (7, 6)
    assert await store.read_events("a", after=0, limit=10) == []


async def test_durable_topics_keep_events_until_their_own_cutoff(store: Storage) -> None:
    await fill(store, "webhooks.s", [1.0, 2.0, 3.0])
    await fill(store, "live", [1.0, 2.0, 3.0])
    durable = {"webhooks.s": 0.5}
    assert await store.prune(now=10.0, events_before=5.0, max_per_topic=1,
                             durable_topics=durable) == 3
    assert await store.topic_bounds("webhooks.s") == (1, 3)
    assert await store.topic_bounds("live") == (4, 3)
    assert await store.prune(now=10.0, durable_topics={"webhooks.s": 2.5}) == 2
    assert await store.topic_bounds("webhooks.s") == (3, 3)


async def test_prune_limit_bounds_each_topic_per_call(store: Storage) -> None:
    await fill(store, "a", [1.0] * 5)
    assert await store.prune(now=10.0, limit=2, max_per_topic=0) == 2
    assert await store.topic_bounds("a") == (3, 5)


async def test_webhook_dedup_records_expire_and_are_pruned(store: Storage) -> None:
    first = await store.ingest_webhook(ev("webhooks.s"), source="s", dedup_key="e1",
                                       audit_headers={}, now=100.0, dedup_ttl=50.0)
    assert await store.prune(now=149.0) == 0
    assert await store.prune(now=150.0) == 1
    again = await store.ingest_webhook(ev("webhooks.s"), source="s", dedup_key="e1",
                                       audit_headers={}, now=150.0, dedup_ttl=50.0)
    assert not again.duplicate and again.event.offset == first.event.offset + 1


async def test_duplicate_of_a_pruned_event_still_names_the_first_id(store: Storage) -> None:
    first = await store.ingest_webhook(ev("webhooks.s", type="t", data=b"x"), source="s",
                                       dedup_key="e1", audit_headers={}, now=1.0,
                                       dedup_ttl=1000.0)
    await store.prune(now=2.0, events_before=2.0)
    dup = await store.ingest_webhook(ev("webhooks.s", type="t2"), source="s", dedup_key="e1",
                                     audit_headers={}, now=3.0, dedup_ttl=1000.0)
    assert dup.duplicate and dup.event.id == first.event.id
    assert (dup.event.offset, dup.event.data, dup.event.type) == (0, b"", "t2")


async def test_topics_with_separators_are_kept_apart(store: Storage) -> None:
    e1 = await store.append_event(ev("user:1"), now=1.0)
    e2 = await store.append_event(ev("user:1:x"), now=1.0)
    e3 = await store.append_event(ev("user:1"), now=1.0)
    assert (e1.offset, e2.offset, e3.offset) == (1, 1, 2)
    got = await store.claim("g.1", ["user:1", "user:1:x"], "m", now=2.0, policy=POLICY, limit=5)
    assert [d.event.id for d in got] == [e1.id, e3.id, e2.id]
    counts = await store.count_deliveries()
    assert counts[("g.1", "user:1", "delivered")] == 2
    assert counts[("g.1", "user:1:x", "delivered")] == 1


async def test_listing_filters_and_order(store: Storage) -> None:
    ids_b = await fill(store, "b", [1.0, 2.0])
    ids_a = await fill(store, "a", [3.0, 4.0, 5.0])
    await store.claim("g1", ["b", "a"], "m", now=6.0, policy=POLICY, limit=3)
    await store.claim("g2", ["a"], "m", now=6.0, policy=GroupPolicy(start="latest"), limit=3)
    listed = await store.list_deliveries()
    assert [(r.group, r.topic, r.offset) for r in listed] == [
        ("g1", "a", 1), ("g1", "b", 1), ("g1", "b", 2)]
    rec = listed[0]
    assert (rec.event_id, rec.status, rec.attempts, rec.consumer, rec.due_at,
            rec.received_at) == (ids_a[0], DeliveryStatus.DELIVERED, 1, "m", 36.0, 3.0)
    assert [r.event_id for r in await store.list_deliveries(topic="b", limit=1)] == ids_b[:1]
    pending = await store.list_deliveries(status=DeliveryStatus.PENDING)
    assert [(r.group, r.topic, r.offset) for r in pending] == [("g1", "a", 2), ("g1", "a", 3)]
    assert await store.list_deliveries(group="g2", status=DeliveryStatus.PENDING) == []
    assert await store.list_deliveries(group="nope") == []
    assert await store.count_deliveries() == {
        ("g1", "a", "delivered"): 1, ("g1", "b", "delivered"): 2, ("g1", "a", "pending"): 2,
        ("g1", "b", "pending"): 0, ("g2", "a", "pending"): 0}


async def test_requeue_by_id_and_status(store: Storage) -> None:
    ids = await fill(store, "t", [1.0, 2.0, 3.0])
    await store.claim("g", ["t"], "m", now=4.0, policy=POLICY, limit=3)
    await store.settle("g", ids[:2], AckOutcome.DEAD_LETTER, error="bad", now=5.0,
                       policy=POLICY, retry_delay=no_delay)
    await store.settle("g", ids[2:], AckOutcome.RETRY, error="later", now=5.0,
                       policy=POLICY, retry_delay=lambda n: 100.0)
    assert await store.requeue("g", event_ids=[ids[0], "evt_nope"], now=6.0) == 1
    # a requeued event is "failed" (due now) until claimed: it matches again
    assert await store.requeue("g", statuses=[DeliveryStatus.FAILED], now=6.0) == 2
    assert await store.requeue("g", statuses=[], now=6.0) == 0
    got = await store.claim("g", ["t"], "m2", now=6.0, policy=POLICY, limit=5)
    assert [(d.event.id, d.attempt) for d in got] == [(ids[0], 1), (ids[2], 1)]
    (dead,) = await store.list_deliveries(group="g", status=DeliveryStatus.DEAD)
    assert (dead.event_id, dead.last_error, dead.due_at) == (ids[1], "bad", None)


async def test_retry_delay_follows_the_attempt_count(store: Storage) -> None:
    (e,) = await fill(store, "t", [1.0])
    delays = {1: 10.0, 2: 20.0}
    now = 2.0
    for attempt in (1, 2):
        (d,) = await store.claim("g", ["t"], "m", now=now, policy=POLICY, limit=1)
        assert d.attempt == attempt
        await store.settle("g", [e], AckOutcome.RETRY, error=f"e{attempt}", now=now,
                           policy=POLICY, retry_delay=delays.__getitem__)
        now += delays[attempt]
        assert await store.next_due("g", ["t"]) == now
    (d,) = await store.claim("g", ["t"], "m", now=now, policy=POLICY, limit=1)
    # the last allowed attempt failing dead-letters it
    assert await store.settle("g", [e], AckOutcome.RETRY, error="e3", now=now, policy=POLICY,
                              retry_delay=delays.__getitem__) == (1, [])
    (rec,) = await store.list_deliveries(group="g")
    assert (rec.status, rec.attempts, rec.last_error) == (DeliveryStatus.DEAD, 3, "e3")
    assert await store.next_due("g", ["t"]) is None

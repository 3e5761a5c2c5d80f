"""Contract: event log, webhook de-duplication and durable consumer groups."""

from __future__ import annotations

from sidecar.core.events.models import (
    AckOutcome,
    DeliveryStatus,
    GroupPolicy,
    NewEvent,
    new_event_id,
)

POLICY = GroupPolicy(ack_timeout=30.0, max_attempts=3)

#: The event store and idempotency run on a Sentinel-managed Redis too.
ALSO_ON_SENTINEL = True


def ev(topic: str = "t", **kw: object) -> NewEvent:
    return NewEvent(id=new_event_id(), topic=topic, **kw)  # type: ignore[arg-type]


def no_delay(_: int) -> float:
    return 0.0


async def test_offsets_increase_per_topic_and_read_resumes(store) -> None:  # type: ignore[no-untyped-def]
    a1 = await store.append_event(ev("a", type="x", data=b"1", attributes={"k": "v"}), now=10.0)
    a2 = await store.append_event(ev("a"), now=11.0)
    b1 = await store.append_event(ev("b"), now=12.0)
    assert (a1.offset, a2.offset, b1.offset) == (1, 2, 1)
    got = await store.read_events("a", after=1, limit=10)
    assert [e.id for e in got] == [a2.id]
    first = (await store.read_events("a", after=0, limit=1))[0]
    assert (first.type, first.data, first.attributes, first.time) == ("x", b"1", {"k": "v"}, 10.0)
    assert await store.topic_bounds("a") == (1, 2)
    assert await store.topic_bounds("empty") == (1, 0)


async def test_webhook_dedup_within_ttl(store) -> None:  # type: ignore[no-untyped-def]
    first = await store.ingest_webhook(ev("webhooks.s", data=b"p"), source="s", dedup_key="e1",
                                       audit_headers={"h": "1"}, now=100.0, dedup_ttl=50.0)
    dup = await store.ingest_webhook(ev("webhooks.s", data=b"p"), source="s", dedup_key="e1",
                                     audit_headers={}, now=120.0, dedup_ttl=50.0)
    other_source = await store.ingest_webhook(ev("webhooks.o"), source="o", dedup_key="e1",
                                              audit_headers={}, now=120.0, dedup_ttl=50.0)
    later = await store.ingest_webhook(ev("webhooks.s"), source="s", dedup_key="e1",
                                       audit_headers={}, now=151.0, dedup_ttl=50.0)
    assert not first.duplicate and dup.duplicate and dup.event.id == first.event.id
    assert not other_source.duplicate and not later.duplicate
    assert await store.topic_bounds("webhooks.s") == (1, 2)


async def test_group_members_never_share_an_in_flight_event(store) -> None:  # type: ignore[no-untyped-def]
    ids = [(await store.append_event(ev(), now=1.0)).id for _ in range(5)]
    a = await store.claim("g", ["t"], "a", now=2.0, policy=POLICY, limit=3)
    b = await store.claim("g", ["t"], "b", now=2.0, policy=POLICY, limit=3)
    assert [d.event.id for d in a] == ids[:3] and [d.event.id for d in b] == ids[3:]
    assert {d.attempt for d in a + b} == {1}
    assert await store.claim("g", ["t"], "c", now=2.0, policy=POLICY, limit=3) == []


async def test_ack_outcomes(store) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        await store.append_event(ev(), now=1.0)
    d = await store.claim("g", ["t"], "a", now=2.0, policy=POLICY, limit=3)
    ok, unknown = await store.settle("g", [d[0].event.id, "evt_nope"], AckOutcome.SUCCESS,
                                     error="", now=3.0, policy=POLICY, retry_delay=no_delay)
    assert (ok, unknown) == (1, ["evt_nope"])
    await store.settle("g", [d[1].event.id], AckOutcome.RETRY, error="boom", now=3.0,
                       policy=POLICY, retry_delay=lambda n: 10.0 * n)
    await store.settle("g", [d[2].event.id], AckOutcome.DEAD_LETTER, error="poison", now=3.0,
                       policy=POLICY, retry_delay=no_delay)
    # a settled event cannot be settled again
    assert (await store.settle("g", [d[0].event.id], AckOutcome.SUCCESS, error="", now=4.0,
                               policy=POLICY, retry_delay=no_delay)) == (0, [d[0].event.id])
    assert await store.claim("g", ["t"], "a", now=12.9, policy=POLICY, limit=5) == []
    again = await store.claim("g", ["t"], "a", now=13.0, policy=POLICY, limit=5)
    assert [(x.event.id, x.attempt) for x in again] == [(d[1].event.id, 2)]
    records = {r.event_id: r for r in await store.list_deliveries(group="g")}
    assert records[d[0].event.id].status is DeliveryStatus.COMPLETED
    assert records[d[1].event.id].status is DeliveryStatus.DELIVERED
    assert records[d[1].event.id].last_error == "boom"
    assert records[d[2].event.id].status is DeliveryStatus.DEAD
    assert records[d[2].event.id].last_error == "poison"


async def test_ack_timeout_redelivers_then_dead_letters(store) -> None:  # type: ignore[no-untyped-def]
    e = await store.append_event(ev(), now=1.0)
    seen = []
    now = 2.0
    for _ in range(5):
        got = await store.claim("g", ["t"], "a", now=now, policy=POLICY, limit=1)
        seen += [(x.event.id, x.attempt) for x in got]
        now += POLICY.ack_timeout
    assert seen == [(e.id, 1), (e.id, 2), (e.id, 3)]
    (dead,) = await store.list_deliveries(group="g", status=DeliveryStatus.DEAD)
    assert dead.attempts == 3 and "ack timeout" in dead.last_error


async def test_requeue_replays_dead_events(store) -> None:  # type: ignore[no-untyped-def]
    e = await store.append_event(ev(), now=1.0)
    await store.claim("g", ["t"], "a", now=2.0, policy=POLICY, limit=1)
    await store.settle("g", [e.id], AckOutcome.DEAD_LETTER, error="x", now=3.0, policy=POLICY,
                       retry_delay=no_delay)
    assert await store.requeue("g", now=4.0) == 1
    (back,) = await store.claim("g", ["t"], "b", now=4.0, policy=POLICY, limit=1)
    assert (back.event.id, back.attempt) == (e.id, 1)


async def test_departed_member_events_go_to_others_at_once(store) -> None:  # type: ignore[no-untyped-def]
    e = await store.append_event(ev(), now=1.0)
    await store.claim("g", ["t"], "a", now=2.0, policy=POLICY, limit=1)
    assert await store.release_consumer("g", "a", now=3.0) == 1
    (got,) = await store.claim("g", ["t"], "b", now=3.0, policy=POLICY, limit=1)
    assert (got.event.id, got.attempt) == (e.id, 2)


async def test_groups_are_independent_and_start_positions(store) -> None:  # type: ignore[no-untyped-def]
    old = await store.append_event(ev(), now=1.0)
    early = await store.claim("g1", ["t"], "a", now=2.0, policy=POLICY, limit=5)
    late = await store.claim("g2", ["t"], "a", now=2.0,
                             policy=GroupPolicy(start="latest"), limit=5)
    new = await store.append_event(ev(), now=3.0)
    late2 = await store.claim("g2", ["t"], "a", now=3.0, policy=GroupPolicy(start="latest"),
                              limit=5)
    assert [d.event.id for d in early] == [old.id]
    assert late == [] and [d.event.id for d in late2] == [new.id]
    assert await store.group_exists("g1") and not await store.group_exists("nope")


async def test_pending_listing_and_counts(store) -> None:  # type: ignore[no-untyped-def]
    for _ in range(4):
        await store.append_event(ev(), now=1.0)
    await store.claim("g", ["t"], "a", now=2.0, policy=POLICY, limit=1)
    pending = await store.list_deliveries(group="g", status=DeliveryStatus.PENDING)
    assert [r.offset for r in pending] == [2, 3, 4]
    counts = await store.count_deliveries()
    assert counts[("g", "t", "pending")] == 3 and counts[("g", "t", "delivered")] == 1
    assert await store.next_due("g", ["t"]) == 2.0 + POLICY.ack_timeout

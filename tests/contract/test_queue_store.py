"""Contract: queued calls (#16) on every backend: the same rules for adding, leasing,
settling, cancelling, replaying and ordering, whichever store keeps them."""

from __future__ import annotations

from typing import Any, cast

from sidecar.core.calls.models import CallRequest, CallResult
from sidecar.core.calls.queue.models import QueuedCall, QueuedState
from sidecar.core.calls.queue.store import QueueStore
from sidecar.storage import Storage
from tests.contract.conftest import OpenStore

T0 = 1_800_000_000.0


def new(call_id: str, key: str, *, integration: str = "erp", due: float = T0,
        ordering_key: str = "", fingerprint: str = "fp") -> QueuedCall:
    return QueuedCall(id=call_id, request=CallRequest(integration, "POST", "/orders",
                                                      body=b"\x00{}", idempotency_key=key),
                      fingerprint=fingerprint, created_at=T0, result_topic="calls.erp",
                      ordering_key=ordering_key, next_attempt_at=due)


def q(store: Storage) -> Any:
    return cast(QueueStore, store)


async def test_add_is_idempotent_by_integration_and_key(store: Storage) -> None:
    call, added = await q(store).queue_add(new("qc_1", "k1"))
    assert added and call.id == "qc_1"
    held, added = await q(store).queue_add(new("qc_2", "k1", fingerprint="other"))
    assert not added and (held.id, held.fingerprint) == ("qc_1", "fp")
    _, added = await q(store).queue_add(new("qc_3", "k1", integration="crm"))
    assert added  # keys are per integration
    got = await q(store).queue_get("qc_1")
    assert got is not None and got.request.body == b"\x00{}" and got.state is QueuedState.QUEUED
    assert await q(store).queue_get("qc_missing:{odd}") is None


async def test_take_leases_what_is_due_within_each_integrations_slots(store: Storage) -> None:
    for i in range(3):
        await q(store).queue_add(new(f"qc_{i}", f"k{i}", due=T0 + i))
    await q(store).queue_add(new("qc_later", "kl", due=T0 + 100))
    await q(store).queue_add(new("qc_crm", "kc", integration="crm"))
    taken = await q(store).queue_take(now=T0 + 5, wants={"erp": 2}, owner="a", lease=60.0)
    assert [c.id for c in taken] == ["qc_0", "qc_1"]
    assert {c.state for c in taken} == {QueuedState.RUNNING}
    more = await q(store).queue_take(now=T0 + 5, wants={"erp": 5}, owner="b", lease=60.0)
    assert [c.id for c in more] == ["qc_2"]  # nothing leased twice, nothing not yet due
    # A store shared by replicas also wakes when a lease runs out (a dead replica's
    # calls are taken over then); with SQLite the leases are this process's own.
    lease_end = T0 + 5 + 60.0
    assert await q(store).queue_next_due(integrations=["erp"]) == (
        lease_end if store.backend == "redis" else T0 + 100)
    assert await q(store).queue_next_due(integrations=[]) is None
    counts = await q(store).queue_counts()
    assert counts[("erp", "running")] == 3 and counts[("erp", "queued")] == 1
    assert counts[("crm", "queued")] == 1
    assert await q(store).queue_overdue(now=T0 + 5) == {"crm": T0}


async def test_ordering_keys_lease_only_the_head(store: Storage) -> None:
    await q(store).queue_add(new("qc_a", "ka", ordering_key="cust-1"))
    await q(store).queue_add(new("qc_b", "kb", ordering_key="cust-1"))
    await q(store).queue_add(new("qc_c", "kc", ordering_key="cust-2"))
    taken = await q(store).queue_take(now=T0, wants={"erp": 10}, owner="a", lease=60.0)
    assert sorted(c.id for c in taken) == ["qc_a", "qc_c"]
    # The head goes back to wait for a retry: its follower still waits behind it.
    head = next(c for c in taken if c.id == "qc_a")
    back = head.moved(state=QueuedState.QUEUED, attempts=1, next_attempt_at=T0 + 50)
    assert (await q(store).queue_settle(back, owner="a", now=T0)) is not None
    assert await q(store).queue_take(now=T0 + 10, wants={"erp": 10}, owner="a",
                                     lease=60.0) == []
    assert await q(store).queue_next_due(integrations=["erp"]) == T0 + 50
    again = await q(store).queue_take(now=T0 + 50, wants={"erp": 10}, owner="a", lease=60.0)
    assert [c.id for c in again] == ["qc_a"]
    done = again[0].moved(state=QueuedState.SUCCEEDED, next_attempt_at=None, attempts=2,
                          finished_at=T0 + 51,
                          response=CallResult(200, (("a", "b"),), b"ok", attempts=2,
                                              duration=0.25))
    assert (await q(store).queue_settle(done, owner="a", now=T0 + 51)) is not None
    follower = await q(store).queue_take(now=T0 + 51, wants={"erp": 10}, owner="a",
                                         lease=60.0)
    assert [c.id for c in follower] == ["qc_b"]
    stored = await q(store).queue_get("qc_a")
    assert stored is not None and stored.response is not None
    assert (stored.state, stored.response.body, stored.attempts, stored.response.duration) == (
        QueuedState.SUCCEEDED, b"ok", 2, 0.25)


async def test_settle_needs_the_lease_and_a_lost_lease_writes_nothing(
        open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    await q(a).queue_add(new("qc_1", "k1"))
    [call] = await q(a).queue_take(now=T0, wants={"erp": 1}, owner="a", lease=10.0)
    assert await q(a).queue_renew(["qc_1"], owner="a", until=T0 + 30) == 1
    assert await q(b).queue_renew(["qc_1"], owner="b", until=T0 + 90) == 0
    done = call.moved(state=QueuedState.SUCCEEDED, finished_at=T0 + 1, next_attempt_at=None)
    assert await q(b).queue_settle(done, owner="b", now=T0 + 1) is None
    settled = await q(a).queue_settle(done, owner="a", now=T0 + 1)
    assert settled is not None and settled.state is QueuedState.SUCCEEDED
    assert [c.id for c in await q(a).queue_unannounced()] == ["qc_1"]
    await q(a).queue_mark_announced("qc_1")
    assert await q(a).queue_unannounced() == []


async def test_cancel_and_replay(store: Storage) -> None:
    await q(store).queue_add(new("qc_wait", "k1", due=T0 + 3600))
    cancelled = await q(store).queue_cancel("qc_wait", now=T0)
    assert cancelled is not None and cancelled.state is QueuedState.CANCELLED
    assert cancelled.finished_at == T0
    assert await q(store).queue_take(now=T0 + 7200, wants={"erp": 9}, owner="a",
                                     lease=60.0) == []
    # A cancel while an attempt runs ends the call after it, unless it succeeded.
    await q(store).queue_add(new("qc_run", "k2"))
    [running] = await q(store).queue_take(now=T0, wants={"erp": 9}, owner="a", lease=60.0)
    requested = await q(store).queue_cancel("qc_run", now=T0)
    assert requested is not None and requested.cancel_requested
    assert requested.state is QueuedState.RUNNING
    retry = running.moved(state=QueuedState.QUEUED, attempts=1, next_attempt_at=T0 + 5)
    ended = await q(store).queue_settle(retry, owner="a", now=T0 + 1)
    assert ended is not None and ended.state is QueuedState.CANCELLED
    replayed = await q(store).queue_replay("qc_run", now=T0 + 10)
    assert replayed is not None and (replayed.state, replayed.attempts) == (
        QueuedState.QUEUED, 0)
    assert not replayed.cancel_requested
    [back] = await q(store).queue_take(now=T0 + 10, wants={"erp": 9}, owner="a", lease=60.0)
    assert back.id == "qc_run"
    assert await q(store).queue_replay("qc_nope", now=T0) is None
    listed = await q(store).queue_list(state=QueuedState.CANCELLED)
    assert [c.id for c in listed] == ["qc_wait"]


async def test_finished_calls_are_pruned_after_their_retention(store: Storage) -> None:
    for i, key in enumerate(("old", "recent", "open")):
        await q(store).queue_add(new(f"qc_{key}", key, due=T0 + i))
    [old] = await q(store).queue_take(now=T0, wants={"erp": 1}, owner="a", lease=60.0)
    finished = old.moved(state=QueuedState.SUCCEEDED, next_attempt_at=None, finished_at=T0)
    assert await q(store).queue_settle(finished, owner="a", now=T0) is not None
    assert (await q(store).queue_cancel("qc_recent", now=T0 + 100)) is not None
    assert await q(store).queue_prune(before=T0 + 50) == 1
    assert await q(store).queue_get("qc_old") is None
    assert (await q(store).queue_get("qc_recent")) is not None  # finished too recently
    assert (await q(store).queue_get("qc_open")) is not None  # never while unfinished
    assert await q(store).queue_prune(before=T0 + 10_000) == 1
    assert await q(store).queue_unannounced() == []
    counts = await q(store).queue_counts()
    assert counts == {("erp", "queued"): 1}
    _, added = await q(store).queue_add(new("qc_again", "old"))
    assert added  # the pruned call's key is free again

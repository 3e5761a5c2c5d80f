"""Contract of the shared backend: a replica's queued call is never attempted by two
replicas at once, and a dead replica's calls are taken over once its lease runs out."""

from __future__ import annotations

from tests.contract.conftest import OpenStore
from tests.contract.test_queue_store import T0, new, q

BACKENDS = ["redis", "redis-cluster"]


async def test_a_renewed_lease_is_never_taken_and_an_expired_one_is(
        open_store: OpenStore) -> None:
    a, b = await open_store(), await open_store()
    await q(a).queue_add(new("qc_1", "k1"))
    await q(a).queue_add(new("qc_2", "k2"))
    held = await q(a).queue_take(now=T0, wants={"erp": 2}, owner="a", lease=60.0)
    assert sorted(c.id for c in held) == ["qc_1", "qc_2"]
    # Replica a keeps renewing qc_1 (its attempt is slow) but dies holding qc_2.
    for t in (20.0, 40.0, 59.0):
        assert await q(a).queue_renew(["qc_1"], owner="a", until=T0 + t + 60.0) == 1
        assert await q(b).queue_take(now=T0 + t, wants={"erp": 2}, owner="b",
                                     lease=60.0) == []
    [taken] = await q(b).queue_take(now=T0 + 61.0, wants={"erp": 2}, owner="b", lease=60.0)
    assert taken.id == "qc_2" and q(b).takeovers == 1
    # a's late outcome for the call it lost is not written.
    late = taken.moved(attempts=1)
    assert await q(a).queue_settle(late, owner="a", now=T0 + 62.0) is None

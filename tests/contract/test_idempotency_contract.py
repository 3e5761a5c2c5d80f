"""Contract: idempotency records (claim rules, retention, pruning) on every backend."""

from __future__ import annotations

import pytest

from sidecar.errors import StorageUnavailable
from sidecar.storage import ClaimStatus, IdempotencyClaim, Storage
from tests.contract.conftest import OpenStore

#: The event store and idempotency run on a Sentinel-managed Redis too.
ALSO_ON_SENTINEL = True


async def test_claim_rules(store: Storage) -> None:
    claim = store.idempotency_claim
    assert (await claim("a", "k", "fp1", now=0.0, lease=10.0)).status is ClaimStatus.CLAIMED
    assert (await claim("a", "k", "fp1", now=1.0, lease=10.0)).status is ClaimStatus.IN_FLIGHT
    assert (await claim("a", "k", "fp2", now=1.0, lease=10.0)).status is ClaimStatus.CONFLICT
    # scopes are separate key spaces
    assert (await claim("b", "k", "fp2", now=1.0, lease=10.0)).status is ClaimStatus.CLAIMED
    # an abandoned in-flight claim can be taken over once its lease runs out
    assert (await claim("a", "k", "fp1", now=11.0, lease=10.0)).status is ClaimStatus.CLAIMED
    await store.idempotency_release("a", "k")
    assert (await claim("a", "k", "fp3", now=12.0, lease=10.0)).status is ClaimStatus.CLAIMED
    await store.idempotency_complete("a", "k", b"r", now=13.0, ttl=100.0)
    assert (await claim("a", "k", "fp3", now=50.0, lease=10.0)).response == b"r"
    # a different request with a completed key is still a conflict
    assert (await claim("a", "k", "fp4", now=50.0, lease=10.0)).status is ClaimStatus.CONFLICT
    # releasing a completed key does not drop the stored answer
    await store.idempotency_release("a", "k")
    assert (await claim("a", "k", "fp3", now=60.0, lease=10.0)).status is ClaimStatus.COMPLETED
    # the answer is kept up to, not including, its expiry
    assert (await claim("a", "k", "fp3", now=112.9, lease=10.0)).status is ClaimStatus.COMPLETED
    # after the retention the key is free again
    assert (await claim("a", "k", "fp9", now=113.0, lease=10.0)).status is ClaimStatus.CLAIMED


async def test_completed_answer_is_bytes_exact(store: Storage) -> None:
    body = bytes(range(256)) + b"\x00tail"
    await store.idempotency_claim("s", "k", "fp", now=1.0, lease=5.0)
    await store.idempotency_complete("s", "k", body, now=2.0, ttl=10.0)
    assert await store.idempotency_claim("s", "k", "fp", now=3.0, lease=5.0) == (
        IdempotencyClaim(ClaimStatus.COMPLETED, body))
    await store.idempotency_claim("s", "empty", "fp", now=1.0, lease=5.0)
    await store.idempotency_complete("s", "empty", b"", now=2.0, ttl=10.0)
    assert (await store.idempotency_claim("s", "empty", "fp", now=3.0, lease=5.0)
            ).response == b""


async def test_scope_and_key_with_separators_do_not_collide(store: Storage) -> None:
    claim = store.idempotency_claim
    assert (await claim("publish:a:b", "c", "fp1", now=0.0, lease=10.0)).status is (
        ClaimStatus.CLAIMED)
    assert (await claim("publish:a", "b:c", "fp2", now=0.0, lease=10.0)).status is (
        ClaimStatus.CLAIMED)
    assert (await claim("p%3Aa", "{k}", "fp3", now=0.0, lease=10.0)).status is (
        ClaimStatus.CLAIMED)
    assert (await claim("p:a", "{k}", "fp4", now=0.0, lease=10.0)).status is ClaimStatus.CLAIMED


async def test_complete_or_release_of_an_unknown_key_is_harmless(store: Storage) -> None:
    await store.idempotency_complete("s", "never-claimed", b"x", now=1.0, ttl=10.0)
    await store.idempotency_release("s", "never-claimed")
    assert (await store.idempotency_claim("s", "never-claimed", "fp", now=2.0, lease=1.0)
            ).status is ClaimStatus.CLAIMED


async def test_prune_is_bounded(store: Storage) -> None:
    for i in range(25):
        await store.idempotency_claim("s", f"k{i}", "fp", now=0.0, lease=1.0)
    await store.idempotency_claim("s", "fresh", "fp", now=0.0, lease=1000.0)
    assert await store.prune(now=10.0, limit=10) == 10
    assert await store.prune(now=10.0, limit=10) == 10
    assert await store.prune(now=10.0, limit=10) == 5
    assert await store.prune(now=10.0, limit=10) == 0
    # the live claim survived; the pruned keys are free
    assert (await store.idempotency_claim("s", "fresh", "fp", now=10.0, lease=1.0)
            ).status is ClaimStatus.IN_FLIGHT
    assert (await store.idempotency_claim("s", "k3", "other", now=10.0, lease=1.0)
            ).status is ClaimStatus.CLAIMED


async def test_records_survive_a_reopen(open_store: OpenStore) -> None:
    first = await open_store()
    await first.idempotency_claim("s", "in-flight", "fp", now=10.0, lease=1000.0)
    await first.idempotency_claim("s", "done", "fp", now=10.0, lease=1000.0)
    await first.idempotency_complete("s", "done", b"\x00\x01body", now=11.0, ttl=1000.0)
    await first.close()
    await first.close()  # closing twice is harmless
    with pytest.raises(StorageUnavailable, match="closed"):
        await first.check()

    again = await open_store()
    assert (await again.idempotency_claim("s", "in-flight", "fp", now=20.0, lease=5.0)
            ).status is ClaimStatus.IN_FLIGHT
    done = await again.idempotency_claim("s", "done", "fp", now=20.0, lease=5.0)
    assert done.status is ClaimStatus.COMPLETED and done.response == b"\x00\x01body"
    assert await again.schema_version() >= 1
    await again.check()

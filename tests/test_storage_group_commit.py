"""SQLite group commit: appends and webhook ingests queued together share a transaction.

Each caller still gets its own result only after its rows committed; a write
that fails is rolled back alone; nothing waits when the store is idle.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.events.models import IngestResult, NewEvent
from sidecar.errors import StorageUnavailable
from sidecar.storage import SqliteStorage
from sidecar.storage.sqlite import MAX_WRITE_BATCH

NOW = 1_000.0
TOPIC = "webhooks.stripe"


def record_batches(store: SqliteStorage) -> list[int]:
    """Sizes of the batches the store commits from now on."""
    sizes: list[int] = []
    original = store._commit_batch

    def counting(fns: Sequence[Callable[[], Any]], **kw: Any) -> Any:
        sizes.append(len(fns))
        return original(fns, **kw)

    # A spy on this one store's method, not a subclass: the fixture built the store.
    store._commit_batch = counting  # type: ignore[method-assign]
    return sizes


def rows(store: SqliteStorage, sql: str) -> list[tuple[Any, ...]]:
    """Read through a second connection: only committed rows are visible."""
    with sqlite3.connect(store.path) as conn:
        return list(conn.execute(sql))


async def ingest(store: SqliteStorage, event_id: str, key: str) -> IngestResult:
    return await store.ingest_webhook(NewEvent(event_id, TOPIC, "invoice.paid", b"{}"),
                                      source="stripe", dedup_key=key, audit_headers={},
                                      now=NOW, dedup_ttl=3600.0)


async def hold_thread(store: SqliteStorage) -> tuple[threading.Event, asyncio.Future[None]]:
    """Keep the database thread busy until the returned event is set."""
    release, busy = threading.Event(), threading.Event()

    def block() -> None:
        busy.set()
        release.wait(10)

    held = asyncio.ensure_future(store._run(block))
    assert await asyncio.to_thread(busy.wait, 10)
    return release, held


async def test_concurrent_ingests_share_commits_and_each_gets_its_own_result(
        store: SqliteStorage) -> None:
    sizes = record_batches(store)
    n = MAX_WRITE_BATCH + 100
    release, held = await hold_thread(store)
    calls = [asyncio.ensure_future(ingest(store, f"evt_{i}", f"key_{i}")) for i in range(n)]
    # A provider retry of the first event, queued behind it: answered as a duplicate.
    calls.append(asyncio.ensure_future(ingest(store, "evt_again", "key_0")))
    await asyncio.sleep(0.01)
    assert not any(c.done() for c in calls)  # nobody answered before a commit
    release.set()
    await held
    results = await asyncio.gather(*calls)
    assert [r.duplicate for r in results] == [False] * n + [True]
    assert sorted(r.event.offset for r in results[:n]) == list(range(1, n + 1))
    assert results[-1].event.id == "evt_0"
    assert rows(store, "SELECT COUNT(*) FROM events") == [(n,)]
    assert rows(store, "SELECT COUNT(*) FROM webhook_events") == [(n,)]
    # The first write went alone (the thread was idle); the rest queued behind it,
    # in batches of at most MAX_WRITE_BATCH.
    assert sizes == [1, MAX_WRITE_BATCH, n + 1 - 1 - MAX_WRITE_BATCH]


async def test_an_idle_store_commits_a_lone_write_at_once(store: SqliteStorage) -> None:
    sizes = record_batches(store)
    for i in range(3):
        result = await ingest(store, f"evt_{i}", f"key_{i}")
        assert result.event.offset == i + 1
    assert sizes == [1, 1, 1]


async def test_a_failing_write_is_rolled_back_alone(store: SqliteStorage) -> None:
    await store.append_event(NewEvent("evt_taken", TOPIC), now=NOW)
    sizes = record_batches(store)
    release, held = await hold_thread(store)
    first = asyncio.ensure_future(store.append_event(NewEvent("evt_a", TOPIC), now=NOW))
    good = asyncio.ensure_future(ingest(store, "evt_b", "key_b"))
    bad = asyncio.ensure_future(ingest(store, "evt_taken", "key_bad"))  # id not unique
    last = asyncio.ensure_future(store.append_event(NewEvent("evt_c", TOPIC), now=NOW))
    release.set()
    await held
    appended, ingested, refused, appended_last = await asyncio.gather(
        first, good, bad, last, return_exceptions=True)
    assert sizes == [1, 3]  # evt_a alone, then the three that queued meanwhile
    assert isinstance(refused, sqlite3.IntegrityError)
    assert not isinstance(appended, BaseException)
    assert not isinstance(appended_last, BaseException)
    assert not isinstance(ingested, BaseException)
    assert [appended.offset, appended_last.offset] == [2, 4]
    assert ingested.event.offset == 3
    # The failed write's topic increment and dedup row went with it.
    assert rows(store, "SELECT id, seq FROM events ORDER BY seq") == [
        ("evt_taken", 1), ("evt_a", 2), ("evt_b", 3), ("evt_c", 4)]
    assert rows(store, "SELECT last_seq FROM topics") == [(4,)]
    assert rows(store, "SELECT dedup_key FROM webhook_events") == [("key_b",)]


async def test_a_write_that_ends_the_transaction_does_not_lose_the_others(
        store: SqliteStorage) -> None:
    """SQLite abandons the whole transaction on some errors: the others run again."""
    sizes = record_batches(store)
    release, held = await hold_thread(store)

    def kills_the_transaction() -> None:
        store.db.conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    writes: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(store.append_event(NewEvent("evt_0", TOPIC), now=NOW))]
    writes += [asyncio.ensure_future(store.append_event(NewEvent(f"evt_{i}", TOPIC), now=NOW))
               for i in (1, 2)]
    writes.append(asyncio.ensure_future(store._write(kills_the_transaction)))
    writes.append(asyncio.ensure_future(store.append_event(NewEvent("evt_3", TOPIC), now=NOW)))
    release.set()
    await held
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert sizes == [1, 4]
    assert isinstance(results[3], sqlite3.OperationalError)
    assert [r.offset for r in results if not isinstance(r, BaseException)] == [1, 2, 3, 4]
    assert rows(store, "SELECT id FROM events ORDER BY seq") == [
        ("evt_0",), ("evt_1",), ("evt_2",), ("evt_3",)]


async def test_a_cancelled_caller_that_was_still_queued_writes_nothing(
        store: SqliteStorage) -> None:
    release, held = await hold_thread(store)
    first = asyncio.ensure_future(ingest(store, "evt_1", "key_1"))
    await asyncio.sleep(0)
    queued = asyncio.ensure_future(ingest(store, "evt_2", "key_2"))
    await asyncio.sleep(0)
    queued.cancel()
    release.set()
    await held
    assert (await first).event.offset == 1
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert rows(store, "SELECT id FROM events") == [("evt_1",)]


async def test_writes_after_close_report_unavailable(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    await store.open()
    await store.close()
    with pytest.raises(StorageUnavailable, match="closed"):
        await ingest(store, "evt_1", "key_1")
    with pytest.raises(StorageUnavailable, match="closed"):
        await store.append_event(NewEvent("evt_2", TOPIC), now=NOW)

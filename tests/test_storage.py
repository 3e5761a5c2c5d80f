"""SQLite storage: migrations on empty and existing files, durability, idempotency records."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from sidecar.errors import StorageUnavailable
from sidecar.storage import ClaimStatus, SqliteStorage
from sidecar.storage.migrations import MIGRATIONS, Migration, SchemaTooNew

LATEST = MIGRATIONS[-1].version


def _v_test_notes(db: sqlite_utils.Database) -> None:
    db.table("notes").create({"id": int, "text": str}, pk="id")


def _v_test_broken(db: sqlite_utils.Database) -> None:
    db.table("half").create({"id": int}, pk="id")
    raise RuntimeError("migration failed halfway")


NEXT = (*MIGRATIONS, Migration(LATEST + 1, "test notes", _v_test_notes))


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def query(path: Path, sql: str) -> object:
    """Read through a second connection, as another process would."""
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchone()[0]


async def test_migrations_on_empty_database(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "fresh")
    await store.open()
    try:
        assert store.applied_migrations == [m.version for m in MIGRATIONS]
        assert await store.schema_version() == LATEST
        assert {"schema_migrations", "idempotency"} <= tables(store.path)
        assert query(store.path, "PRAGMA journal_mode") == "wal"
    finally:
        await store.close()


async def test_migrations_on_existing_database_apply_only_new_ones(tmp_path: Path) -> None:
    old = SqliteStorage(tmp_path)
    await old.open()
    claim = await old.idempotency_claim("pay", "k1", "fp", now=100.0, lease=30.0)
    assert claim.status is ClaimStatus.CLAIMED
    await old.idempotency_complete("pay", "k1", b"answer", now=101.0, ttl=3600.0)
    await old.close()

    new = SqliteStorage(tmp_path, migrations=NEXT)
    await new.open()
    try:
        assert new.applied_migrations == [LATEST + 1]
        assert await new.schema_version() == LATEST + 1
        assert "notes" in tables(new.path)
        again = await new.idempotency_claim("pay", "k1", "fp", now=200.0, lease=30.0)
        assert again == type(again)(ClaimStatus.COMPLETED, b"answer")
    finally:
        await new.close()

    reopened = SqliteStorage(tmp_path, migrations=NEXT)
    await reopened.open()
    assert reopened.applied_migrations == []
    await reopened.close()


async def test_failed_migration_leaves_no_trace(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path, migrations=(*MIGRATIONS,
                                                Migration(LATEST + 1, "broken", _v_test_broken)))
    with pytest.raises(RuntimeError, match="halfway"):
        await store.open()
    assert "half" not in tables(store.path)
    good = SqliteStorage(tmp_path)
    await good.open()
    assert await good.schema_version() == LATEST
    await good.close()


async def test_refuses_a_database_from_a_newer_sidecar(tmp_path: Path) -> None:
    newer = SqliteStorage(tmp_path, migrations=NEXT)
    await newer.open()
    await newer.close()
    older = SqliteStorage(tmp_path)
    with pytest.raises(SchemaTooNew, match=f"version {LATEST + 1}"):
        await older.open()


async def test_reopened_database_keeps_its_data(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    await store.open()
    await store.idempotency_claim("s", "in-flight", "fp", now=10.0, lease=1000.0)
    await store.idempotency_claim("s", "done", "fp", now=10.0, lease=1000.0)
    await store.idempotency_complete("s", "done", b"\x00\x01body", now=11.0, ttl=1000.0)
    await store.close()
    await store.close()  # closing twice is harmless

    again = SqliteStorage(tmp_path)
    await again.open()
    try:
        assert (await again.idempotency_claim("s", "in-flight", "fp", now=20.0, lease=5.0)
                ).status is ClaimStatus.IN_FLIGHT
        done = await again.idempotency_claim("s", "done", "fp", now=20.0, lease=5.0)
        assert done.status is ClaimStatus.COMPLETED and done.response == b"\x00\x01body"
    finally:
        await again.close()


async def test_idempotency_claim_rules(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    await store.open()
    try:
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
        # releasing a completed key does not drop the stored answer
        await store.idempotency_release("a", "k")
        assert (await claim("a", "k", "fp3", now=60.0, lease=10.0)).status is (
            ClaimStatus.COMPLETED)
        # after the retention the key is free again
        assert (await claim("a", "k", "fp9", now=114.0, lease=10.0)).status is (
            ClaimStatus.CLAIMED)
    finally:
        await store.close()


async def test_prune_is_bounded(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    await store.open()
    try:
        for i in range(25):
            await store.idempotency_claim("s", f"k{i}", "fp", now=0.0, lease=1.0)
        await store.idempotency_claim("s", "fresh", "fp", now=0.0, lease=1000.0)
        assert await store.prune(now=10.0, limit=10) == 10
        assert await store.prune(now=10.0, limit=10) == 10
        assert await store.prune(now=10.0, limit=10) == 5
        assert await store.prune(now=10.0, limit=10) == 0
        assert query(store.path, "SELECT COUNT(*) FROM idempotency") == 1
    finally:
        await store.close()


async def test_unusable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SqliteStorage(blocker / "data")
    with pytest.raises(StorageUnavailable, match="cannot open database"):
        await store.open()


async def test_closed_storage_reports_unavailable(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path)
    await store.open()
    await store.close()
    with pytest.raises(StorageUnavailable, match="closed"):
        await store.check()

"""The embedded storage backend: one SQLite file (WAL) in the data directory.

sqlite3 blocks, so every statement runs on one dedicated thread; the event
loop only awaits it. One writer thread also means no lock contention.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from sidecar.errors import StorageUnavailable
from sidecar.storage.base import ClaimStatus, IdempotencyClaim
from sidecar.storage.migrations import MIGRATIONS, Migration, current_version, migrate
from sidecar.storage.sqlite_events import SqliteEventsMixin

T = TypeVar("T")

DB_FILENAME = "sidecar.db"


class SqliteStorage(SqliteEventsMixin):
    backend = "sqlite"

    def __init__(
        self,
        data_dir: str | Path,
        *,
        migrations: Sequence[Migration] = MIGRATIONS,
        synchronous: str = "FULL",
    ) -> None:
        self.path = Path(data_dir) / DB_FILENAME
        self._migrations = migrations
        # FULL: a committed row survives power loss, not only a process crash.
        self._synchronous = synchronous
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite_utils.Database | None = None
        self.applied_migrations: list[int] = []

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: no implicit transactions; we BEGIN explicitly.
            conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailable(f"cannot open database {self.path}: {exc}") from exc
        db = sqlite_utils.Database(conn)
        try:
            db.enable_wal()
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA foreign_keys=ON")
            self.applied_migrations = migrate(db, self._migrations, time.time())
        except BaseException:
            conn.close()
            raise
        self._db = db
        if current_version(db) >= 2:
            with db.atomic():
                self._recover_in_flight(time.time())

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def _close() -> None:
            if self._db is not None:
                # Fold the WAL back so the file is self-contained after exit.
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
                self._db = None

        try:
            await asyncio.get_running_loop().run_in_executor(executor, _close)
        finally:
            executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StorageUnavailable("storage is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise StorageUnavailable("storage is closed")
        return self._db

    async def check(self) -> None:
        def _check() -> None:
            try:
                self.db.execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                raise StorageUnavailable(f"database {self.path} is not usable: {exc}") from exc

        await self._run(_check)

    async def schema_version(self) -> int:
        return await self._run(lambda: current_version(self.db))

    # ------------------------------------------------------------------ idempotency

    async def idempotency_claim(
        self, scope: str, key: str, fingerprint: str, *, now: float, lease: float
    ) -> IdempotencyClaim:
        def _claim() -> IdempotencyClaim:
            db = self.db
            with db.atomic():
                row = db.execute(
                    "SELECT fingerprint, state, response, expires_at FROM idempotency "
                    "WHERE scope = ? AND key = ?",
                    [scope, key],
                ).fetchone()
                if row is not None and row[3] > now:
                    if row[0] != fingerprint:
                        return IdempotencyClaim(ClaimStatus.CONFLICT)
                    if row[1] == "completed":
                        return IdempotencyClaim(ClaimStatus.COMPLETED, bytes(row[2]))
                    return IdempotencyClaim(ClaimStatus.IN_FLIGHT)
                db.execute(
                    "INSERT OR REPLACE INTO idempotency "
                    "(scope, key, fingerprint, state, response, created_at, expires_at) "
                    "VALUES (?, ?, ?, 'in_flight', NULL, ?, ?)",
                    [scope, key, fingerprint, now, now + lease],
                )
                return IdempotencyClaim(ClaimStatus.CLAIMED)

        return await self._run(_claim)

    async def idempotency_complete(
        self, scope: str, key: str, response: bytes, *, now: float, ttl: float
    ) -> None:
        def _complete() -> None:
            with self.db.atomic():
                self.db.execute(
                    "UPDATE idempotency SET state = 'completed', response = ?, expires_at = ? "
                    "WHERE scope = ? AND key = ?",
                    [response, now + ttl, scope, key],
                )

        await self._run(_complete)

    async def idempotency_release(self, scope: str, key: str) -> None:
        def _release() -> None:
            with self.db.atomic():
                self.db.execute(
                    "DELETE FROM idempotency WHERE scope = ? AND key = ? AND state = 'in_flight'",
                    [scope, key],
                )

        await self._run(_release)

    async def prune(self, *, now: float, limit: int = 1000,
                    events_before: float | None = None,
                    durable_topics: Mapping[str, float] | None = None,
                    max_per_topic: int | None = None) -> int:
        durable = dict(durable_topics or {})

        def _prune() -> int:
            db = self.db
            removed = 0
            with db.atomic():
                removed += db.execute(
                    "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency "
                    "WHERE expires_at <= ? LIMIT ?)", [now, limit]).rowcount
                if current_version(db) < 2:
                    return removed
                removed += db.execute(
                    "DELETE FROM webhook_events WHERE rowid IN (SELECT rowid FROM "
                    "webhook_events WHERE expires_at <= ? LIMIT ?)", [now, limit]).rowcount
                cutoffs: list[tuple[str, list[Any]]] = []
                for topic, before in durable.items():
                    cutoffs.append(("e.topic = ? AND e.time < ?", [topic, before]))
                if events_before is not None:
                    marks = ",".join("?" * len(durable))
                    clause = f"e.topic NOT IN ({marks}) AND " if durable else ""
                    cutoffs.append((clause + "e.time < ?", [*durable, events_before]))
                if max_per_topic is not None:
                    for topic, last in db.execute("SELECT topic, last_seq FROM topics"):
                        if topic not in durable:
                            cutoffs.append(("e.topic = ? AND e.seq <= ?",
                                            [topic, int(last) - max_per_topic]))
                for where, args in cutoffs:
                    removed += db.execute(
                        "DELETE FROM group_pending WHERE rowid IN (SELECT p.rowid FROM "
                        f"group_pending p JOIN events e ON e.id = p.event_id WHERE {where} "
                        "LIMIT ?)", [*args, limit]).rowcount
                    removed += db.execute(
                        "DELETE FROM events WHERE rowid IN (SELECT e.rowid FROM events e "
                        f"WHERE {where} LIMIT ?)", [*args, limit]).rowcount
            return int(removed)

        return await self._run(_prune)

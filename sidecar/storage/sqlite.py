"""The embedded storage backend: one SQLite file (WAL) in the data directory.

sqlite3 blocks, so every statement runs on one dedicated thread; the event
loop only awaits it. One writer thread also means no lock contention.

Group commit. Event appends and webhook ingests (``_write``) that arrive while
the thread is busy wait in a queue and then share one transaction, so one
fsync covers many of them: the first write of an idle moment starts at once;
writes arriving meanwhile form the next batch (at most ``MAX_WRITE_BATCH``).
Each write runs in its own savepoint, so one that fails is rolled back alone
and fails alone; each caller gets its result only after the transaction that
holds its rows has committed (``synchronous=FULL``, as before).

Writes that need not survive a power loss (``durable=False``: live Publish
appends, unless configured otherwise) commit with ``synchronous=NORMAL``: in WAL
mode that is atomic and survives a crash or restart of the sidecar, only not
an OS crash or power loss, and it needs no fsync. When the database is idle
(no write queued or running, the thread not busy) such writes run on the event
loop's thread instead of queueing for the database thread -- those arriving in
one turn of the loop in one transaction at its end: a hop between threads (and
the GIL handed back and forth) costs more than the statements. A later durable
commit fsyncs the log, earlier rows included. Because commits on the loop's
thread could otherwise meet SQLite's automatic checkpoint (two fsyncs and a
copy), the connection is set back for the database thread's work, and that
thread checkpoints once the loop's commits have written about as much as SQLite
would allow before checkpointing -- on a connection of its own, so that writes
go on meanwhile instead of waiting for its fsyncs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from sidecar.core.idempotency import ClaimStatus, IdempotencyClaim
from sidecar.errors import StorageUnavailable
from sidecar.storage.migrations import MIGRATIONS, Migration, current_version, migrate
from sidecar.storage.sqlite_events import SqliteEventsMixin
from sidecar.storage.sqlite_queue import SqliteQueueMixin

T = TypeVar("T")

DB_FILENAME = "sidecar.db"
#: Most writes one group commit carries (bounds the time a transaction holds
#: the thread, and the work redone if SQLite abandons a transaction).
MAX_WRITE_BATCH = 256
#: Log pages after which SQLite checkpoints (its default), and after which the
#: database thread does so for inline writes.
CHECKPOINT_PAGES = 1000
PAGE_SIZE = 4096
#: How long the database thread waits for a lock another connection holds.
BUSY_TIMEOUT_MS = 10_000

#: A queued write: the work (run on the database thread), its caller's future, and
#: whether its commit must be fsynced.
_Write = tuple[Callable[[], Any], "asyncio.Future[Any]", bool]
#: What one write of a batch came to: (True, result) or (False, exception).
_Outcome = tuple[bool, Any]


def _settle(futures: Sequence[asyncio.Future[Any]], outcomes: Sequence[_Outcome]) -> None:
    """Hand each caller still waiting its write's result or error."""
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


def _not_failed(outcome: _Outcome | None) -> bool:
    return outcome is None or bool(outcome[0])


class SqliteStorage(SqliteEventsMixin, SqliteQueueMixin):
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
        self._checkpointer: sqlite3.Connection | None = None
        self.applied_migrations: list[int] = []
        self._writes: collections.deque[_Write] = collections.deque()
        self._writing = False
        #: Held by whichever thread is using the connection (the database thread, or
        #: the event loop for an inline write).
        self._lock = threading.Lock()
        #: Non-durable writes gathered in this turn of the loop, committed at its end
        #: (the work, the caller's future, about how many bytes it writes).
        self._inline: list[tuple[Callable[[], Any], asyncio.Future[Any], int]] = []
        #: The connection is set for non-durable commits (see _relax) ...
        self._relaxed = False
        #: ... and not to wait for locks (on the loop's thread).
        self._no_wait = False
        #: Log pages (about) that inline writes added since their last checkpoint.
        self._inline_pages = 0

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
            # Used by one thread at a time (self._lock): the database thread, or the
            # event loop's for an inline write.
            conn = sqlite3.connect(str(self.path), isolation_level=None,
                                   timeout=BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailable(f"cannot open database {self.path}: {exc}") from exc
        # No plugin discovery: it scans every installed package (importlib.metadata
        # and zipfile at start-up), and the sidecar uses none.
        db = sqlite_utils.Database(conn, execute_plugins=False)
        try:
            db.enable_wal()
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA foreign_keys=ON")
            self.applied_migrations = migrate(db, self._migrations, time.time())
        except BaseException:
            conn.close()
            raise
        self._db = db
        # A second connection, for checkpoints only: a checkpoint (two fsyncs and a
        # copy) then runs beside the writes instead of holding the main connection.
        self._checkpointer = sqlite3.connect(str(self.path), isolation_level=None,
                                             timeout=BUSY_TIMEOUT_MS / 1000,
                                             check_same_thread=False)
        if current_version(db) >= 2:
            with db.atomic():
                self._recover_in_flight(time.time())

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def _close() -> None:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None
            if self._db is not None:
                # Fold the WAL back so the file is self-contained after exit.
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
                self._db = None

        try:
            await asyncio.get_running_loop().run_in_executor(executor, _close)
        finally:
            executor.shutdown(wait=True)

    def _locked(self, fn: Callable[[], T]) -> T:
        """On the database thread: ``fn`` with the connection to itself, at its own
        durability settings."""
        with self._lock:
            if self._db is not None:
                self._restore()
            return fn()

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StorageUnavailable("storage is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._locked, fn)
        except sqlite3.OperationalError as exc:
            # Disk full, I/O error, locked: the store cannot serve right now.
            raise StorageUnavailable(f"database {self.path.name}: {exc}") from exc

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise StorageUnavailable("storage is closed")
        return self._db

    # ------------------------------------------------------------------ group commit

    async def _write(self, fn: Callable[[], T], *, durable: bool = True, size: int = 0) -> T:
        """Run ``fn`` (statements, no transaction control) in a group commit.

        Returns once the transaction holding ``fn``'s statements has committed;
        raises what ``fn`` raised (its statements rolled back, the batch's others
        unaffected) or, when the commit itself fails, that error. ``durable=False``:
        the commit need not be fsynced, and runs on this thread when the database
        is idle (``size``: about how many bytes it writes).
        """
        if self._executor is None:
            raise StorageUnavailable("storage is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not durable and not self._writing and not self._writes:
            # Nothing queued or running: this write, and those arriving in the same
            # turn of the loop, commit together on this thread (see _flush_inline).
            self._inline.append((fn, future, size))
            if len(self._inline) == 1:
                loop.call_soon(self._flush_inline, loop)
            return await future
        if self._inline:  # gathered before this one: they go first (commits in call order)
            self._writes.extend((f, fut, False) for f, fut, _ in self._inline)
            self._inline.clear()
        self._writes.append((fn, future, durable))
        if not self._writing:
            self._start_batch(loop)
        return await future

    def _flush_inline(self, loop: asyncio.AbstractEventLoop) -> None:
        """Commit the writes gathered for this thread, in one transaction without fsync;
        or, when the database thread is busy or has a batch in flight, or another
        connection (another process on the file) holds the write lock, queue them for
        the database thread (behind any batch: callers get results in commit order)."""
        batch = [w for w in self._inline if not w[1].done()]
        self._inline.clear()
        if not batch:
            return
        outcomes: list[_Outcome] | None = None
        if not self._writing and self._executor is not None and self._lock.acquire(
                blocking=False):
            try:
                outcomes = self._commit_here([fn for fn, _, _ in batch])
            finally:
                self._lock.release()
        if outcomes is None:
            self._writes.extend((fn, future, False) for fn, future, _ in batch)
            if not self._writing:
                self._start_batch(loop)
            return
        _settle([future for _, future, _ in batch], outcomes)
        # A row, its index entries and the topic's counter: a few pages each at least.
        self._inline_pages += sum(3 + size // PAGE_SIZE for _, _, size in batch)
        if self._inline_pages >= CHECKPOINT_PAGES and self._executor is not None:
            self._inline_pages = 0
            self._executor.submit(self._checkpoint)

    def _commit_here(self, fns: Sequence[Callable[[], Any]]) -> list[_Outcome] | None:
        """On the loop's thread (lock held): ``fns`` in one transaction without fsync;
        None when another connection holds the write lock (nothing ran)."""
        try:
            self._relax()
            conn = self.db.conn
            if not self._no_wait:
                # Never wait here for a lock another connection holds: the database
                # thread does the waiting (its busy timeout comes back in _restore).
                conn.execute("PRAGMA busy_timeout=0")
                self._no_wait = True
            # IMMEDIATE: the write lock is taken first, so "busy" comes before anything ran.
            return self._commit_savepoints(conn, fns, begin="BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorname.startswith("SQLITE_BUSY"):
                return None
            return [(False, StorageUnavailable(f"database {self.path.name}: {exc}"))] * len(fns)
        except Exception as exc:
            return [(False, exc)] * len(fns)

    def _relax(self) -> None:
        """No fsync on commit, no automatic checkpoint (lock held)."""
        if not self._relaxed:
            conn = self.db.conn
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._relaxed = True

    def _restore(self) -> None:
        """The connection's own settings again, after _relax and the loop's no-wait
        (lock held)."""
        conn = self.db.conn
        if self._relaxed:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
            self._relaxed = False
        if self._no_wait:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._no_wait = False

    def _checkpoint(self) -> None:
        """On the database thread, on its own connection (writes go on meanwhile, on the
        loop's thread too): copy the log into the database."""
        if self._checkpointer is not None:
            with contextlib.suppress(sqlite3.Error):  # busy readers: the next one catches up
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand every queued write (up to the bound) to the thread as one batch."""
        while self._writes:
            batch: list[_Write] = []
            while self._writes and len(batch) < MAX_WRITE_BATCH:
                write = self._writes.popleft()
                if not write[1].done():  # a cancelled caller's write is skipped
                    batch.append(write)
            if not batch:
                continue
            executor = self._executor
            if executor is None:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(StorageUnavailable("storage is closed"))
                continue
            self._writing = True
            done = asyncio.wrap_future(
                executor.submit(self._locked, functools.partial(
                    self._commit_batch, [fn for fn, _, _ in batch],
                    durable=any(d for _, _, d in batch))), loop=loop)
            done.add_done_callback(functools.partial(self._finish_batch, loop, batch))
            return
        self._writing = False

    def _finish_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Write],
                      done: asyncio.Future[list[_Outcome]]) -> None:
        error = (asyncio.CancelledError() if done.cancelled() else done.exception())
        outcomes: list[_Outcome] = ([(False, error)] * len(batch) if error is not None
                                    else done.result())
        _settle([future for _, future, _ in batch], outcomes)
        self._writing = False
        if self._writes:
            self._start_batch(loop)

    def _commit_batch(self, fns: Sequence[Callable[[], Any]], *, durable: bool = True
                      ) -> list[_Outcome]:
        """On the database thread: every write in one transaction, each in a savepoint
        (fsynced when ``durable``)."""
        if not durable:
            self._relax()  # _locked set it back for everything else
        return self._commit_savepoints(self.db.conn, fns)

    @staticmethod
    def _commit_savepoints(conn: sqlite3.Connection, fns: Sequence[Callable[[], Any]],
                           begin: str = "BEGIN") -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [None] * len(fns)
        todo = list(range(len(fns)))
        while todo:
            lost_at: int | None = None
            conn.execute(begin)
            try:
                for i in todo:
                    conn.execute("SAVEPOINT batch_item")
                    try:
                        outcomes[i] = (True, fns[i]())
                    except Exception as exc:
                        outcomes[i] = (False, exc)
                        if not conn.in_transaction:
                            # The error ended the whole transaction (SQLite does that
                            # on some I/O errors): the writes before it are gone too.
                            lost_at = i
                            break
                        conn.execute("ROLLBACK TO batch_item")
                    conn.execute("RELEASE batch_item")
                if lost_at is None:
                    conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # keep the original error
                        conn.execute("ROLLBACK")
                raise
            if lost_at is None:
                break
            # Run the batch again without the write that failed (each round drops one).
            todo = [i for i in todo if i != lost_at and _not_failed(outcomes[i])]
            for i in todo:
                outcomes[i] = None
        return [o if o is not None else (False, RuntimeError("write not run")) for o in outcomes]

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

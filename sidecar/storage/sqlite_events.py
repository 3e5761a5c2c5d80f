"""SQLite event log, webhook de-duplication and durable consumer groups.

A mixin of ``SqliteStorage``: every method runs on its single database thread,
each in one transaction, so claims and acks never race.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import sqlite_utils

from sidecar.core.events.models import (
    AckOutcome,
    Delivery,
    DeliveryRecord,
    DeliveryStatus,
    GroupPolicy,
    IngestResult,
    NewEvent,
    StoredEvent,
)

T = TypeVar("T")
_EVENT_COLS = "id, topic, seq, type, data, content_type, attributes, time"


def _event(row: Sequence[Any]) -> StoredEvent:
    return StoredEvent(id=row[0], topic=row[1], offset=int(row[2]), type=row[3],
                       data=bytes(row[4]), content_type=row[5],
                       attributes=json.loads(row[6]), time=float(row[7]))


def _append(db: sqlite_utils.Database, event: NewEvent, now: float) -> StoredEvent:
    seq = db.execute(
        "INSERT INTO topics (topic, last_seq) VALUES (?, 1) "
        "ON CONFLICT (topic) DO UPDATE SET last_seq = last_seq + 1 RETURNING last_seq",
        [event.topic],
    ).fetchone()[0]
    db.execute(
        f"INSERT INTO events ({_EVENT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [event.id, event.topic, seq, event.type, event.data, event.content_type,
         json.dumps(event.attributes, separators=(",", ":")), now],
    )
    return StoredEvent(event.id, event.topic, int(seq), event.type, event.data,
                       event.content_type, dict(event.attributes), now)


class SqliteEventsMixin:
    """Needs ``self.db`` and ``self._run`` from ``SqliteStorage``."""

    @property
    def db(self) -> sqlite_utils.Database:  # pragma: no cover - provided by the host
        raise NotImplementedError

    async def _run(self, fn: Callable[[], T]) -> T:  # pragma: no cover - provided by the host
        raise NotImplementedError

    async def _write(self, fn: Callable[[], T], *, durable: bool = True,
                     size: int = 0) -> T:  # pragma: no cover - provided by the host
        raise NotImplementedError

    # ------------------------------------------------------------------ event log

    async def append_event(self, event: NewEvent, *, now: float,
                           durable: bool = True) -> StoredEvent:
        # A group commit: the write shares a transaction (and its fsync) with the
        # writes queued alongside it, in a savepoint of its own; or, not durable on
        # an idle database, a transaction of its own at once (see SqliteStorage).
        return await self._write(lambda: _append(self.db, event, now), durable=durable,
                                 size=len(event.data))

    async def ingest_webhook(self, event: NewEvent, *, source: str, dedup_key: str,
                             audit_headers: dict[str, str], now: float,
                             dedup_ttl: float) -> IngestResult:
        def _do() -> IngestResult:  # in a savepoint of a group commit (see _write)
            db = self.db
            row = db.execute(
                "SELECT event_id, expires_at FROM webhook_events "
                "WHERE source = ? AND dedup_key = ?", [source, dedup_key]).fetchone()
            if row is not None and row[1] > now:
                found = db.execute(f"SELECT {_EVENT_COLS} FROM events WHERE id = ?",
                                   [row[0]]).fetchone()
                stored = _event(found) if found else StoredEvent(
                    row[0], event.topic, 0, event.type, b"", event.content_type, {}, now)
                return IngestResult(stored, duplicate=True)
            stored = _append(db, event, now)
            db.execute(
                "INSERT OR REPLACE INTO webhook_events "
                "(source, dedup_key, event_id, headers, received_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [source, dedup_key, event.id, json.dumps(audit_headers), now,
                 now + dedup_ttl])
            return IngestResult(stored, duplicate=False)

        return await self._write(_do)

    async def read_events(self, topic: str, *, after: int, limit: int) -> list[StoredEvent]:
        def _do() -> list[StoredEvent]:
            rows = self.db.execute(
                f"SELECT {_EVENT_COLS} FROM events WHERE topic = ? AND seq > ? "
                "ORDER BY seq LIMIT ?", [topic, after, limit]).fetchall()
            return [_event(r) for r in rows]

        return await self._run(_do)

    async def topic_bounds(self, topic: str) -> tuple[int, int]:
        """(first retained offset, last offset); (0, 0) for an empty topic."""
        def _do() -> tuple[int, int]:
            last = self.db.execute("SELECT last_seq FROM topics WHERE topic = ?",
                                   [topic]).fetchone()
            first = self.db.execute("SELECT MIN(seq) FROM events WHERE topic = ?",
                                    [topic]).fetchone()
            last_seq = int(last[0]) if last else 0
            return (int(first[0]) if first and first[0] is not None else last_seq + 1,
                    last_seq)

        return await self._run(_do)

    # ------------------------------------------------------------------ consumer groups

    async def claim(self, group: str, topics: Sequence[str], consumer: str, *, now: float,
                    policy: GroupPolicy, limit: int) -> list[Delivery]:
        def _do() -> list[Delivery]:
            db = self.db
            out: list[Delivery] = []
            with db.atomic():
                marks = ",".join("?" * len(topics))
                cols = ", ".join(f"e.{c.strip()}" for c in _EVENT_COLS.split(","))
                due = db.execute(
                    f"SELECT p.event_id, p.attempts, p.status, {cols}"
                    f" FROM group_pending p LEFT JOIN events e ON e.id = p.event_id "
                    f"WHERE p.grp = ? AND p.status IN ('delivered', 'failed') AND p.due_at <= ? "
                    f"AND p.topic IN ({marks}) ORDER BY p.topic, p.seq LIMIT ?",
                    [group, now, *topics, limit]).fetchall()
                for row in due:
                    event_id, attempts, status = row[0], int(row[1]), row[2]
                    if row[3] is None:
                        self._dead(db, group, event_id, "the event left the log (retention)",
                                   now)
                    elif attempts >= policy.max_attempts:
                        why = ("ack timeout" if status == "delivered" else "retry requested")
                        self._dead(db, group, event_id,
                                   f"gave up after {attempts} attempts ({why})", now, keep=True)
                    else:
                        db.execute(
                            "UPDATE group_pending SET status = 'delivered', attempts = ?, "
                            "consumer = ?, due_at = ?, updated_at = ? "
                            "WHERE grp = ? AND event_id = ?",
                            [attempts + 1, consumer, now + policy.ack_timeout, now, group,
                             event_id])
                        out.append(Delivery(_event(row[3:]), attempts + 1))
                for topic in topics:
                    if len(out) >= limit:
                        break
                    cursor = self._cursor(db, group, topic, policy)
                    rows = db.execute(
                        f"SELECT {_EVENT_COLS} FROM events WHERE topic = ? AND seq > ? "
                        "ORDER BY seq LIMIT ?", [topic, cursor, limit - len(out)]).fetchall()
                    for r in rows:
                        event = _event(r)
                        db.execute(
                            "INSERT OR REPLACE INTO group_pending (grp, event_id, topic, seq, "
                            "status, attempts, consumer, due_at, last_error, updated_at) "
                            "VALUES (?, ?, ?, ?, 'delivered', 1, ?, ?, '', ?)",
                            [group, event.id, topic, event.offset, consumer,
                             now + policy.ack_timeout, now])
                        out.append(Delivery(event, 1))
                    if rows:
                        db.execute("UPDATE group_cursors SET last_seq = ? WHERE grp = ? "
                                   "AND topic = ?", [int(rows[-1][2]), group, topic])
            return out

        return await self._run(_do)

    @staticmethod
    def _cursor(db: sqlite_utils.Database, group: str, topic: str, policy: GroupPolicy) -> int:
        row = db.execute("SELECT last_seq FROM group_cursors WHERE grp = ? AND topic = ?",
                         [group, topic]).fetchone()
        if row is not None:
            return int(row[0])
        start = 0
        if policy.start == "latest":
            last = db.execute("SELECT last_seq FROM topics WHERE topic = ?", [topic]).fetchone()
            start = int(last[0]) if last else 0
        db.execute("INSERT INTO group_cursors (grp, topic, last_seq) VALUES (?, ?, ?)",
                   [group, topic, start])
        return start

    @staticmethod
    def _dead(db: sqlite_utils.Database, group: str, event_id: str, error: str, now: float,
              *, keep: bool = False) -> None:
        db.execute("UPDATE group_pending SET status = 'dead', due_at = NULL, updated_at = ?, "
                   "last_error = CASE WHEN ? AND last_error != '' THEN last_error || '; ' || ? "
                   "ELSE ? END WHERE grp = ? AND event_id = ?",
                   [now, keep, error, error, group, event_id])

    async def settle(self, group: str, event_ids: Sequence[str], outcome: AckOutcome, *,
                     error: str, now: float, policy: GroupPolicy,
                     retry_delay: Callable[[int], float]) -> tuple[int, list[str]]:
        def _do() -> tuple[int, list[str]]:
            db = self.db
            settled, unknown = 0, []
            with db.atomic():
                for event_id in event_ids:
                    row = db.execute("SELECT status, attempts FROM group_pending "
                                     "WHERE grp = ? AND event_id = ?",
                                     [group, event_id]).fetchone()
                    if row is None or row[0] != "delivered":
                        unknown.append(event_id)
                        continue
                    attempts = int(row[1])
                    if outcome is AckOutcome.SUCCESS:
                        db.execute("UPDATE group_pending SET status = 'completed', "
                                   "due_at = NULL, updated_at = ? WHERE grp = ? AND event_id = ?",
                                   [now, group, event_id])
                    elif outcome is AckOutcome.DEAD_LETTER or attempts >= policy.max_attempts:
                        self._dead(db, group, event_id, error or "dead-lettered by the app", now)
                    else:
                        db.execute("UPDATE group_pending SET status = 'failed', due_at = ?, "
                                   "last_error = ?, updated_at = ? WHERE grp = ? "
                                   "AND event_id = ?",
                                   [now + retry_delay(attempts), error, now, group, event_id])
                    settled += 1
            return settled, unknown

        return await self._run(_do)

    async def release_consumer(self, group: str, consumer: str, *, now: float) -> int:
        """A member left: its in-flight events become due now, for the others."""
        def _do() -> int:
            with self.db.atomic():
                return int(self.db.execute(
                    "UPDATE group_pending SET due_at = ? WHERE grp = ? AND consumer = ? "
                    "AND status = 'delivered'", [now, group, consumer]).rowcount)

        return await self._run(_do)

    async def next_due(self, group: str, topics: Sequence[str]) -> float | None:
        def _do() -> float | None:
            marks = ",".join("?" * len(topics))
            row = self.db.execute(
                f"SELECT MIN(due_at) FROM group_pending WHERE grp = ? AND status IN "
                f"('delivered', 'failed') AND topic IN ({marks})", [group, *topics]).fetchone()
            return float(row[0]) if row and row[0] is not None else None

        return await self._run(_do)

    async def group_exists(self, group: str) -> bool:
        def _do() -> bool:
            return self.db.execute("SELECT 1 FROM group_cursors WHERE grp = ? LIMIT 1",
                                   [group]).fetchone() is not None

        return await self._run(_do)

    async def list_deliveries(self, *, group: str | None = None, topic: str | None = None,
                              status: DeliveryStatus | None = None,
                              limit: int = 100) -> list[DeliveryRecord]:
        def _do() -> list[DeliveryRecord]:
            db = self.db
            if status is DeliveryStatus.PENDING:
                return self._pending_records(db, group, topic, limit)
            where, args = ["1 = 1"], []
            for col, val in (("p.grp", group), ("p.topic", topic),
                             ("p.status", status.value if status else None)):
                if val is not None:
                    where.append(f"{col} = ?")
                    args.append(val)
            rows = db.execute(
                "SELECT p.grp, p.event_id, p.topic, p.seq, COALESCE(e.type, ''), p.status, "
                "p.attempts, p.consumer, p.last_error, p.due_at, COALESCE(e.time, 0) "
                "FROM group_pending p LEFT JOIN events e ON e.id = p.event_id "
                f"WHERE {' AND '.join(where)} ORDER BY p.topic, p.seq LIMIT ?",
                [*args, limit]).fetchall()
            return [DeliveryRecord(r[0], r[1], r[2], int(r[3]), r[4], DeliveryStatus(r[5]),
                                   int(r[6]), r[7], r[8], r[9], float(r[10])) for r in rows]

        return await self._run(_do)

    @staticmethod
    def _pending_records(db: sqlite_utils.Database, group: str | None, topic: str | None,
                         limit: int) -> list[DeliveryRecord]:
        where, args = ["1 = 1"], []
        for col, val in (("c.grp", group), ("c.topic", topic)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        rows = db.execute(
            "SELECT c.grp, e.id, e.topic, e.seq, e.type, e.time FROM group_cursors c "
            "JOIN events e ON e.topic = c.topic AND e.seq > c.last_seq "
            f"WHERE {' AND '.join(where)} ORDER BY e.topic, e.seq LIMIT ?",
            [*args, limit]).fetchall()
        return [DeliveryRecord(r[0], r[1], r[2], int(r[3]), r[4], DeliveryStatus.PENDING, 0, "",
                               "", None, float(r[5])) for r in rows]

    async def count_deliveries(self) -> dict[tuple[str, str, str], int]:
        """(group, topic, status) -> count, for gauges; pending = beyond the cursor."""
        def _do() -> dict[tuple[str, str, str], int]:
            db = self.db
            out: dict[tuple[str, str, str], int] = {}
            for g, t, s, n in db.execute("SELECT grp, topic, status, COUNT(*) FROM group_pending "
                                         "GROUP BY grp, topic, status"):
                out[(g, t, s)] = int(n)
            for g, t, n in db.execute(
                    "SELECT c.grp, c.topic, COALESCE(tp.last_seq, 0) - c.last_seq "
                    "FROM group_cursors c LEFT JOIN topics tp ON tp.topic = c.topic"):
                out[(g, t, "pending")] = max(0, int(n))
            return out

        return await self._run(_do)

    async def requeue(self, group: str, *, event_ids: Sequence[str] = (),
                      statuses: Sequence[DeliveryStatus] = (DeliveryStatus.DEAD,),
                      now: float) -> int:
        """Replay: dead (or failed) events become due now with a fresh attempt count."""
        def _do() -> int:
            where = ["grp = ?", f"status IN ({','.join('?' * len(statuses))})"]
            args: list[Any] = [group, *(s.value for s in statuses)]
            if event_ids:
                where.append(f"event_id IN ({','.join('?' * len(event_ids))})")
                args += list(event_ids)
            with self.db.atomic():
                return int(self.db.execute(
                    "UPDATE group_pending SET status = 'failed', attempts = 0, due_at = ?, "
                    f"updated_at = ? WHERE {' AND '.join(where)}", [now, now, *args]).rowcount)

        return await self._run(_do)

    def _recover_in_flight(self, now: float) -> None:
        """After a restart no member holds anything: in-flight events are due at once."""
        # Due "at the beginning of time": at once on any clock, injected ones included.
        self.db.execute("UPDATE group_pending SET due_at = 0 WHERE status = 'delivered'")

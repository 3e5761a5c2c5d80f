"""SQLite queued calls (``sidecar.core.calls.queue.store.QueueStore``).

A mixin of ``SqliteStorage``: writes are group commits (fsynced before they return),
reads run on the database thread. One process uses a database file, so a RUNNING call
is this process's own until it settles (its lease is a record, never taken over), and
a call RUNNING at start-up belonged to a process that died: ``queue_recover`` makes it
due again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import sqlite_utils

from sidecar.core.calls.queue.codec import decode_call, encode_call
from sidecar.core.calls.queue.models import QueuedCall, QueuedState
from sidecar.core.calls.queue.store import settled

T = TypeVar("T")
_FINAL = tuple(s.value for s in QueuedState if s.final)
#: A call ``q`` that may run now as far as ordering goes: no key, or the oldest
#: unfinished call of its key (parameters: the final states).
_HEAD = ("(q.ordering_key = '' OR q.seq = (SELECT MIN(h.seq) FROM queued_calls h "
         "WHERE h.integration = q.integration AND h.ordering_key = q.ordering_key "
         f"AND h.state NOT IN ({','.join('?' * len(_FINAL))})))")


def _row(call: QueuedCall, now: float) -> list[Any]:
    return [call.state.value, call.next_attempt_at if call.state is QueuedState.QUEUED else None,
            int(call.announced), now, encode_call(call)]


def _get(db: sqlite_utils.Database, call_id: str) -> QueuedCall | None:
    row = db.execute("SELECT doc FROM queued_calls WHERE id = ?", [call_id]).fetchone()
    return None if row is None else decode_call(bytes(row[0]))


def _put(db: sqlite_utils.Database, call: QueuedCall, now: float, *,
         lease_owner: str = "", lease_until: float | None = None) -> None:
    db.execute("UPDATE queued_calls SET state = ?, due_at = ?, announced = ?, updated_at = ?, "
               "doc = ?, lease_owner = ?, lease_until = ? WHERE id = ?",
               [*_row(call, now), lease_owner, lease_until, call.id])


class SqliteQueueMixin:
    """Needs ``self.db``, ``self._run`` and ``self._write`` from ``SqliteStorage``."""

    #: One process per file: nothing is ever taken over.
    takeovers: int = 0

    @property
    def db(self) -> sqlite_utils.Database:  # pragma: no cover - provided by the host
        raise NotImplementedError

    async def _run(self, fn: Callable[[], T]) -> T:  # pragma: no cover - provided by the host
        raise NotImplementedError

    async def _write(self, fn: Callable[[], T], *, durable: bool = True,
                     size: int = 0) -> T:  # pragma: no cover - provided by the host
        raise NotImplementedError

    async def queue_add(self, call: QueuedCall) -> tuple[QueuedCall, bool]:
        def add() -> tuple[QueuedCall, bool]:
            db = self.db
            row = db.execute("SELECT doc FROM queued_calls WHERE integration = ? AND "
                             "idem_key = ?", [call.integration, call.idempotency_key]
                             ).fetchone()
            if row is not None:
                return decode_call(bytes(row[0])), False
            db.execute(
                "INSERT INTO queued_calls (id, integration, idem_key, ordering_key, state, "
                "due_at, announced, updated_at, doc, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [call.id, call.integration, call.idempotency_key, call.ordering_key,
                 *_row(call, call.created_at), call.created_at])
            return call, True

        return await self._write(add, size=len(call.request.body))

    async def queue_get(self, call_id: str) -> QueuedCall | None:
        return await self._run(lambda: _get(self.db, call_id))

    async def queue_take(self, *, now: float, wants: Mapping[str, int], owner: str,
                         lease: float, scan: int = 500) -> list[QueuedCall]:
        def take() -> list[QueuedCall]:
            db = self.db
            left = dict(wants)
            names = [name for name, n in left.items() if n > 0]
            if not names:
                return []
            rows = db.execute(
                "SELECT q.integration, q.doc FROM queued_calls q WHERE q.state = 'queued' "
                f"AND q.due_at <= ? AND q.integration IN ({','.join('?' * len(names))}) "
                f"AND {_HEAD} ORDER BY q.due_at LIMIT ?",
                [now, *names, *_FINAL, scan]).fetchall()
            taken = []
            for integration, doc in rows:
                if left[integration] <= 0:
                    continue
                call = decode_call(bytes(doc)).moved(state=QueuedState.RUNNING)
                _put(db, call, now, lease_owner=owner, lease_until=now + lease)
                left[integration] -= 1
                taken.append(call)
            return taken

        # No fsync: a lease lost to a power cut leaves the call queued or running, and a
        # running call is due again at the next start (at least once either way).
        return await self._write(take, durable=False)

    async def queue_settle(self, call: QueuedCall, *, owner: str,
                           now: float) -> QueuedCall | None:
        def settle() -> QueuedCall | None:
            db = self.db
            row = db.execute("SELECT doc, lease_owner, state FROM queued_calls WHERE id = ?",
                             [call.id]).fetchone()
            if row is None or row[1] != owner or row[2] != QueuedState.RUNNING.value:
                return None
            final = settled(call, decode_call(bytes(row[0])), now)
            _put(db, final, now)
            return final

        return await self._write(settle)

    async def queue_renew(self, ids: Collection[str], *, owner: str, until: float) -> int:
        def renew() -> int:
            n = 0
            for call_id in ids:
                n += self.db.execute(
                    "UPDATE queued_calls SET lease_until = ? WHERE id = ? AND lease_owner = ? "
                    "AND state = 'running'", [until, call_id, owner]).rowcount
            return n

        return await self._write(renew, durable=False) if ids else 0

    async def queue_mark_announced(self, call_id: str) -> None:
        def mark() -> None:
            call = _get(self.db, call_id)
            if call is not None:
                self.db.execute("UPDATE queued_calls SET announced = 1, doc = ? WHERE id = ?",
                                [encode_call(call.moved(announced=True)), call_id])

        # No fsync: a mark lost to a power cut appends the outcome once more (at least once).
        await self._write(mark, durable=False)

    async def queue_next_due(self, *, integrations: Collection[str]) -> float | None:
        def next_due() -> float | None:
            if not integrations:
                return None
            marks = ",".join("?" * len(integrations))
            # Only calls that could be taken then: of these integrations, and the head
            # of their ordering key (a follower waits for its head to settle).
            row = self.db.execute(
                f"SELECT MIN(q.due_at) FROM queued_calls q WHERE q.state = 'queued' AND "
                f"q.integration IN ({marks}) AND {_HEAD}",
                [*integrations, *_FINAL]).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._run(next_due)

    async def queue_cancel(self, call_id: str, *, now: float) -> QueuedCall | None:
        def cancel() -> QueuedCall | None:
            call = _get(self.db, call_id)
            if call is None or call.state.final:
                return call
            if call.state is QueuedState.QUEUED:
                call = call.moved(state=QueuedState.CANCELLED, next_attempt_at=None,
                                  finished_at=now)
                _put(self.db, call, now)
            else:
                call = call.moved(cancel_requested=True)
                self.db.execute("UPDATE queued_calls SET doc = ? WHERE id = ?",
                                [encode_call(call), call_id])
            return call

        return await self._write(cancel)

    async def queue_replay(self, call_id: str, *, now: float) -> QueuedCall | None:
        def replay() -> QueuedCall | None:
            call = _get(self.db, call_id)
            if call is None or call.state not in (QueuedState.FAILED, QueuedState.DEAD,
                                                  QueuedState.CANCELLED):
                return call
            call = call.moved(state=QueuedState.QUEUED, attempts=0, next_attempt_at=now,
                              finished_at=None, response=None, announced=False,
                              cancel_requested=False, created_at=now)
            _put(self.db, call, now)
            return call

        return await self._write(replay)

    async def queue_unannounced(self, *, limit: int = 100) -> list[QueuedCall]:
        def unannounced() -> list[QueuedCall]:
            rows = self.db.execute(
                "SELECT doc FROM queued_calls WHERE announced = 0 AND state IN "
                "('succeeded', 'failed', 'dead') LIMIT ?", [limit]).fetchall()
            return [decode_call(bytes(r[0])) for r in rows]

        return await self._run(unannounced)

    async def queue_recover(self, *, now: float) -> int:
        def recover() -> int:
            rows = self.db.execute(
                "SELECT doc FROM queued_calls WHERE state = 'running'").fetchall()
            for row in rows:
                call = decode_call(bytes(row[0])).moved(state=QueuedState.QUEUED,
                                                         next_attempt_at=now)
                _put(self.db, call, now)
            return len(rows)

        return await self._write(recover)

    async def queue_list(self, *, state: QueuedState | None = None,
                         integration: str | None = None,
                         limit: int = 100) -> list[QueuedCall]:
        def listed() -> list[QueuedCall]:
            where, args = [], []
            if state is not None:
                where.append("state = ?")
                args.append(state.value)
            if integration is not None:
                where.append("integration = ?")
                args.append(integration)
            sql = "SELECT doc FROM queued_calls"
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = self.db.execute(sql + " ORDER BY seq LIMIT ?", [*args, limit]).fetchall()
            return [decode_call(bytes(r[0])) for r in rows]

        return await self._run(listed)

    async def queue_counts(self) -> dict[tuple[str, str], int]:
        def counts() -> dict[tuple[str, str], int]:
            rows = self.db.execute("SELECT integration, state, n FROM queued_call_counts "
                                   "WHERE n > 0").fetchall()
            return {(r[0], r[1]): int(r[2]) for r in rows}

        return await self._run(counts)

    async def queue_overdue(self, *, now: float) -> dict[str, float]:
        def overdue() -> dict[str, float]:
            rows = self.db.execute("SELECT integration, MIN(due_at) FROM queued_calls "
                                   "WHERE state = 'queued' AND due_at <= ? GROUP BY integration",
                                   [now]).fetchall()
            return {r[0]: float(r[1]) for r in rows}

        return await self._run(overdue)

    async def queue_prune(self, *, before: float, limit: int = 1000) -> int:
        def prune() -> int:
            marks = ",".join("?" * len(_FINAL))
            return int(self.db.execute(
                "DELETE FROM queued_calls WHERE seq IN (SELECT seq FROM queued_calls WHERE "
                f"state IN ({marks}) AND updated_at < ? LIMIT ?)",
                [*_FINAL, before, limit]).rowcount)

        return await self._write(prune, durable=False)

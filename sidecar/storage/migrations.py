"""Versioned SQLite schema changes, applied in order, each in its own transaction.

A released migration is never edited: add a new one instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlite_utils


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sqlite_utils.Database], None]


def _v1_idempotency(db: sqlite_utils.Database) -> None:
    table = db.table("idempotency")
    table.create(
        {
            "scope": str,
            "key": str,
            "fingerprint": str,
            "state": str,  # in_flight | completed
            "response": bytes,
            "created_at": float,
            "expires_at": float,
        },
        pk=("scope", "key"),
        not_null={"fingerprint", "state", "created_at", "expires_at"},
    )
    table.create_index(["expires_at"])


def _v2_events(db: sqlite_utils.Database) -> None:
    # ``seq`` is the per-topic offset ("offset" is an SQL keyword).
    db.executescript("""
        CREATE TABLE topics (
            topic TEXT PRIMARY KEY,
            last_seq INTEGER NOT NULL
        );
        CREATE TABLE events (
            topic TEXT NOT NULL,
            seq INTEGER NOT NULL,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            data BLOB NOT NULL,
            content_type TEXT NOT NULL,
            attributes TEXT NOT NULL,
            time REAL NOT NULL,
            PRIMARY KEY (topic, seq)
        );
        CREATE INDEX events_time ON events (time);
        CREATE TABLE webhook_events (
            source TEXT NOT NULL,
            dedup_key TEXT NOT NULL,
            event_id TEXT NOT NULL,
            headers TEXT NOT NULL,
            received_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (source, dedup_key)
        );
        CREATE INDEX webhook_events_expiry ON webhook_events (expires_at);
        CREATE TABLE group_cursors (
            grp TEXT NOT NULL,
            topic TEXT NOT NULL,
            last_seq INTEGER NOT NULL,
            PRIMARY KEY (grp, topic)
        );
        CREATE TABLE group_pending (
            grp TEXT NOT NULL,
            event_id TEXT NOT NULL,
            topic TEXT NOT NULL,
            seq INTEGER NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            consumer TEXT NOT NULL,
            due_at REAL,
            last_error TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (grp, event_id)
        );
        CREATE INDEX group_pending_due ON group_pending (grp, status, due_at);
        CREATE INDEX group_pending_updated ON group_pending (status, updated_at);
    """)


def _v3_queued_calls(db: sqlite_utils.Database) -> None:
    # ``doc`` is the whole call (sidecar.core.calls.queue.codec); the columns are what
    # the queue looks calls up by. ``seq`` is the enqueue order (ordering keys).
    db.executescript("""
        CREATE TABLE queued_calls (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            integration TEXT NOT NULL,
            idem_key TEXT NOT NULL,
            ordering_key TEXT NOT NULL,
            state TEXT NOT NULL,
            due_at REAL,
            lease_owner TEXT NOT NULL DEFAULT '',
            lease_until REAL,
            announced INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            doc BLOB NOT NULL,
            UNIQUE (integration, idem_key)
        );
        CREATE INDEX queued_calls_due ON queued_calls (state, due_at);
        CREATE INDEX queued_calls_lease ON queued_calls (state, lease_until);
        CREATE INDEX queued_calls_order ON queued_calls (integration, ordering_key, state, seq);
        CREATE INDEX queued_calls_unannounced ON queued_calls (announced, state);
        -- Calls per integration and state, kept by triggers: the metrics and the status
        -- page read it at a cost that does not grow with the queue.
        CREATE TABLE queued_call_counts (
            integration TEXT NOT NULL,
            state TEXT NOT NULL,
            n INTEGER NOT NULL,
            PRIMARY KEY (integration, state)
        );
        CREATE TRIGGER queued_calls_added AFTER INSERT ON queued_calls BEGIN
            INSERT INTO queued_call_counts (integration, state, n)
            VALUES (NEW.integration, NEW.state, 1)
            ON CONFLICT (integration, state) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER queued_calls_moved AFTER UPDATE OF state ON queued_calls
        WHEN OLD.state != NEW.state BEGIN
            UPDATE queued_call_counts SET n = n - 1
            WHERE integration = OLD.integration AND state = OLD.state;
            INSERT INTO queued_call_counts (integration, state, n)
            VALUES (NEW.integration, NEW.state, 1)
            ON CONFLICT (integration, state) DO UPDATE SET n = n + 1;
        END;
        CREATE TRIGGER queued_calls_removed AFTER DELETE ON queued_calls BEGIN
            UPDATE queued_call_counts SET n = n - 1
            WHERE integration = OLD.integration AND state = OLD.state;
        END;
    """)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "idempotency records", _v1_idempotency),
    Migration(2, "event log, webhook de-duplication, durable consumer groups", _v2_events),
    Migration(3, "queued calls", _v3_queued_calls),
)


class SchemaTooNew(Exception):
    """The database was written by a newer sidecar; refusing to touch it."""


def current_version(db: sqlite_utils.Database) -> int:
    if "schema_migrations" not in db.table_names():
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(db: sqlite_utils.Database, migrations: Sequence[Migration], now: float) -> list[int]:
    """Apply every migration newer than the database; returns the versions applied."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError("migration versions must be unique and ascending")
    with db.atomic():
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
    have = current_version(db)
    known = versions[-1] if versions else 0
    if have > known:
        raise SchemaTooNew(
            f"database schema is at version {have} but this sidecar knows versions up to "
            f"{known}; upgrade the sidecar or point it at another data directory"
        )
    applied = []
    for m in migrations:
        if m.version <= have:
            continue
        # One transaction per migration: a failure leaves no half-applied schema.
        with db.atomic():
            m.apply(db)
            db.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?,?,?)",
                [m.version, m.description, now],
            )
        applied.append(m.version)
    return applied

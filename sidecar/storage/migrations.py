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


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "idempotency records", _v1_idempotency),
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

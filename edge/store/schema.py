"""The store's SQLite schema, its version in PRAGMA user_version, and the migrations."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from edge.store.records import StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def _schema_v1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    conn.execute(
        """CREATE TABLE persons (
            person_id TEXT PRIMARY KEY,
            name BLOB,
            created REAL NOT NULL,
            updated REAL NOT NULL
        )"""
    )
    # AUTOINCREMENT: a template id is never reused, so an old blob cannot be replayed into a
    # later row with the same id.
    conn.execute(
        """CREATE TABLE templates (
            template_id INTEGER PRIMARY KEY AUTOINCREMENT,
            person_id TEXT NOT NULL REFERENCES persons(person_id) ON DELETE CASCADE,
            model_id TEXT NOT NULL,
            dim INTEGER NOT NULL,
            masked INTEGER NOT NULL,
            synthetic INTEGER NOT NULL,
            source TEXT NOT NULL,
            embedding BLOB NOT NULL,
            crop BLOB,
            created REAL NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX templates_person ON templates(person_id)")


# Version n upgrades a store at version n-1; add v2 here, never edit a shipped one.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _schema_v1}
assert max(MIGRATIONS) == SCHEMA_VERSION

TEMPLATE_COLUMNS = "template_id, person_id, model_id, dim, masked, synthetic, source, embedding"


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: Path) -> bool:
    """Bring the schema up to date inside the caller's write transaction.

    Returns True when the file was empty and the schema was just created (the caller then
    writes the store's identity in the same transaction: a store exists completely or not at
    all).
    """
    current = user_version(conn)  # read under the write lock: another process may have won
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {current} is newer than this MaskGate knows "
            f"({SCHEMA_VERSION}); upgrade MaskGate"
        )
    if current == 0:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        if tables:
            raise StoreError(
                f"{path}: not a MaskGate template store (tables {', '.join(tables)}, "
                "no schema version)"
            )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        log.info("template store %s: migrating to schema %d", path, version)
        MIGRATIONS[version](conn)
        conn.execute(f"PRAGMA user_version = {version}")
    return current == 0

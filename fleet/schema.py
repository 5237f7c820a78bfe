"""The registry's tables, and the migrations that bring an older file up to date.

A migration is appended, never edited: `PRAGMA user_version` says how many have run.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE persons (person_id TEXT PRIMARY KEY, name TEXT, created REAL NOT NULL,"
        " updated REAL NOT NULL)",
        # Photos stay on the server; doors receive the embeddings made from them.
        "CREATE TABLE photos (photo_id INTEGER PRIMARY KEY, person_id TEXT NOT NULL"
        " REFERENCES persons ON DELETE CASCADE, data BLOB NOT NULL, added REAL NOT NULL)",
        # One row per embedding: float32 little-endian, as the door stores it.
        "CREATE TABLE embeddings (embedding_id INTEGER PRIMARY KEY, person_id TEXT NOT NULL"
        " REFERENCES persons ON DELETE CASCADE, model_id TEXT NOT NULL, masked INTEGER NOT NULL,"
        " vector BLOB NOT NULL, source TEXT NOT NULL)",
        "CREATE INDEX embeddings_person ON embeddings(person_id, model_id)",
        "CREATE TABLE groups (name TEXT PRIMARY KEY, created REAL NOT NULL)",
        "CREATE TABLE person_groups (person_id TEXT NOT NULL REFERENCES persons ON DELETE"
        " CASCADE, group_name TEXT NOT NULL REFERENCES groups ON DELETE CASCADE,"
        " PRIMARY KEY (person_id, group_name))",
        "CREATE TABLE doors (device_id TEXT PRIMARY KEY, model_id TEXT NOT NULL,"
        " added REAL NOT NULL, online INTEGER NOT NULL DEFAULT 0, last_seen REAL,"
        " state_version INTEGER, state_hash TEXT, state_count INTEGER, state_time REAL,"
        " confirmed_hash TEXT, confirmed_time REAL, flagged TEXT, flagged_time REAL,"
        " last_event REAL)",
        "CREATE TABLE door_groups (device_id TEXT NOT NULL REFERENCES doors ON DELETE CASCADE,"
        " group_name TEXT NOT NULL REFERENCES groups ON DELETE CASCADE,"
        " PRIMARY KEY (device_id, group_name))",
        # Every hash the fleet has asked a door to hold: a door reporting any other is flagged.
        "CREATE TABLE door_hashes (device_id TEXT NOT NULL REFERENCES doors ON DELETE CASCADE,"
        " hash TEXT NOT NULL, time REAL NOT NULL, PRIMARY KEY (device_id, hash))",
        "CREATE TABLE events (event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL,"
        " time REAL NOT NULL, kind TEXT NOT NULL, person TEXT, decision TEXT, body TEXT NOT NULL)",
        "CREATE INDEX events_time ON events(time)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Run the migrations the file lacks, each in one transaction; returns the new version."""
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"registry schema {version} is newer than this fleet ({SCHEMA_VERSION})"
                )
            if version == SCHEMA_VERSION:
                conn.execute("COMMIT")
                return version
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

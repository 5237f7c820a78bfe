"""A durable outbox: messages that must reach the broker are on disk before they are sent.

A row is written (WAL, synchronous=FULL: it survives a power cut) before the publish and
deleted only when the broker acknowledged it (MQTT v5 PUBACK). Rows left by a broker outage
or a crash are published again, in order, on the next connection. Delivery is therefore
at least once: a message acknowledged just before a crash may be sent twice, so consumers
de-duplicate on the message's own id (an event's event_id).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# On a Pi an outage of days at a few events a minute stays far below this; beyond it the
# oldest rows go (logged) so a dead broker cannot fill the SD card.
MAX_ROWS = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
    retain INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


class OutboxError(RuntimeError):
    """The outbox file cannot be opened or written (permissions, full disk, corruption)."""


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Outbox:
    """SQLite-backed FIFO of unacknowledged messages; safe to use from several threads."""

    def __init__(self, path: Path, max_rows: int = MAX_ROWS) -> None:
        self.path = Path(path)
        self.max_rows = max_rows
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection guarded by a lock: writes are rare (events, not frames).
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=10
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise OutboxError(f"{self.path}: cannot open the MQTT outbox: {err}") from None
        pending = self.count()
        if pending:
            log.info(
                "outbox %s: %d message(s) from an earlier run wait to be sent", self.path, pending
            )

    def put(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, coalesce: bool = False
    ) -> int:
        """Store a message before it is published; returns its id.

        coalesce: drop older pending rows of the same topic first (retained state topics,
        where only the newest value matters).
        """
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        try:
            return self._put(topic, payload, qos, retain, coalesce)
        except sqlite3.Error as err:  # full disk, read-only filesystem, corruption
            raise OutboxError(f"{self.path}: cannot store a message: {err}") from None

    def _put(self, topic: str, payload: bytes, qos: int, retain: bool, coalesce: bool) -> int:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if coalesce:
                self._db.execute("DELETE FROM outbox WHERE topic = ?", (topic,))
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                (topic, bytes(payload), qos, int(retain), time.time()),
            )
            oid = int(cur.lastrowid or 0)
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
            if n > self.max_rows:
                drop = n - self.max_rows
                self._db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                    (drop,),
                )
                log.error(
                    "outbox full (%d rows): dropped the %d oldest undelivered message(s)",
                    self.max_rows,
                    drop,
                )
        return oid

    def remove(self, oid: int) -> None:
        """Forget a message the broker acknowledged."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (oid,))

    def contains(self, oid: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM outbox WHERE id = ?", (oid,)).fetchone()
        return row is not None

    def pending(self) -> list[OutboxMessage]:
        """Every unacknowledged message, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox ORDER BY id"
            ).fetchall()
        return [OutboxMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def count(self) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        return int(n)

    def close(self) -> None:
        with self._lock:
            self._db.close()

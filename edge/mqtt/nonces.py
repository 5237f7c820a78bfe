"""The replay ledger: every accepted signed request's nonce, on disk before the request acts.

A signed request must act at most once, across restarts and power loss. So its nonce is
committed (SQLite WAL, synchronous=FULL: it survives a power cut, like the outbox) before the
handler runs; a crash after the commit loses the request, never doubles it. A nonce is kept
until the request it came with has expired (exp + clock skew) and then pruned; the largest
expiry pruned so far is kept as `forgotten_until`, and a request expiring no later than that
is refused, so a clock set back after a prune cannot revive a forgotten nonce.

A ledger that did not exist before (first start, a wiped state directory) knows nothing of
earlier requests: requests issued before it was created are refused (`created`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

# Live nonces are kept until their request expires; this many at once is far beyond any real
# use (max_validity_s ≤ 1 h), so hitting it means a flood: refuse rather than forget.
MAX_LIVE_NONCES = 100_000
_PRUNE_EVERY = 256  # claims between prunes of expired nonces

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, keep_until REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS nonces_keep_until ON nonces(keep_until)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL)",
)


class LedgerError(RuntimeError):
    """The ledger cannot record a nonce (full disk, read-only file system): do not act."""


class Claim(Enum):
    FRESH = "fresh"  # recorded: the request may act
    REPLAYED = "replayed"  # seen before
    FORGOTTEN = "forgotten"  # expires before what the ledger still remembers
    TOO_MANY = "too_many"  # the ledger is full of live nonces (a flood)


class NonceLedger:
    """Durable set of used nonces (`path`), or an in-memory one (`path=None`, for tools/tests).

    Thread-safe: the door's request lanes claim from several threads.
    """

    def __init__(
        self,
        path: Path | None,
        max_live: int = MAX_LIVE_NONCES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_live = max_live
        self._lock = threading.Lock()
        self._claims = 0
        self._db = self._open(clock())
        self.created = self._meta("created")
        self.forgotten_until = self._meta("forgotten_until")
        (self._live,) = self._db.execute("SELECT COUNT(*) FROM nonces").fetchone()

    def _open(self, now: float) -> sqlite3.Connection:
        if self.path is None:
            db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._initialise(db, now)
            return db
        try:
            return self._connect(self.path, now)
        except sqlite3.DatabaseError as err:
            # A damaged ledger must not keep the door from starting: set it aside and start a
            # new one, which refuses every request issued before now (see `created`).
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(now)}")
            log.error("replay ledger %s is damaged (%s); moved to %s", self.path, err, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{self.path}{suffix}")
                if src.exists():
                    src.rename(Path(f"{aside}{suffix}"))
            return self._connect(self.path, now)

    @classmethod
    def _connect(cls, path: Path, now: float) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=10
            )
        except OSError as err:
            raise LedgerError(f"{path}: cannot open the replay ledger: {err}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a committed nonce survives a power cut
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            cls._initialise(db, now)
        except sqlite3.OperationalError as err:  # permissions, read-only or full disk
            db.close()
            raise LedgerError(f"{path}: cannot open the replay ledger: {err}") from None
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _initialise(db: sqlite3.Connection, now: float) -> None:
        with db:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            # The first start (or a wiped state directory) creates the ledger: remember when.
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('created', ?)", (now,))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('forgotten_until', 0)")

    def _meta(self, key: str) -> float:
        (value,) = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return float(value)

    def __len__(self) -> int:
        with self._lock:
            return self._live

    def claim(self, nonce: str, keep_until: float, now: float) -> Claim:
        """Record `nonce` until `keep_until`; committed to disk when this returns FRESH.

        Raises LedgerError when it cannot be recorded: the request must then not act.
        """
        nonce = nonce.lower()  # hex: "AB" and "ab" are the same nonce
        with self._lock:
            try:
                return self._claim(nonce, keep_until, now)
            except sqlite3.Error as err:
                where = self.path or "memory"
                raise LedgerError(f"{where}: cannot record the request's nonce: {err}") from None

    def _claim(self, nonce: str, keep_until: float, now: float) -> Claim:
        if keep_until <= self.forgotten_until:
            return Claim.FORGOTTEN
        db = self._db
        self._claims += 1
        if self._claims % _PRUNE_EVERY == 0 or self._live >= self.max_live:
            self._prune(now)
        if self._live >= self.max_live:
            seen = db.execute("SELECT 1 FROM nonces WHERE nonce = ?", (nonce,)).fetchone()
            return Claim.REPLAYED if seen else Claim.TOO_MANY
        # One statement, committed (and synced) on its own: the nonce is on disk, or not.
        inserted = db.execute(
            "INSERT INTO nonces (nonce, keep_until) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (nonce, keep_until),
        ).rowcount
        if not inserted:
            return Claim.REPLAYED
        self._live += 1
        return Claim.FRESH

    def _prune(self, now: float) -> None:
        db = self._db
        with db:
            db.execute("BEGIN IMMEDIATE")
            (newest,) = db.execute(
                "SELECT MAX(keep_until) FROM nonces WHERE keep_until < ?", (now,)
            ).fetchone()
            if newest is None:
                return
            db.execute("DELETE FROM nonces WHERE keep_until < ?", (now,))
            forgotten = max(self.forgotten_until, float(newest))
            db.execute("UPDATE meta SET value = ? WHERE key = 'forgotten_until'", (forgotten,))
        self.forgotten_until = forgotten
        (self._live,) = db.execute("SELECT COUNT(*) FROM nonces").fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""The Store: one SQLite file (WAL, synchronous=FULL, secure_delete=ON) of encrypted templates.

On open every name and embedding is decrypted, hashed and checked against the seal, so rows
added, removed or altered behind MaskGate's back are caught. The decrypted set is kept in
memory, so reads, hashes and galleries cost no decryption.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from edge.imageio import ImageError, decode_image
from edge.match import Gallery
from edge.store.checks import (
    MAX_TEMPLATES_PER_PERSON,
    MODEL_ID,
    check_dims,
    check_embedding,
    check_name,
    check_person_id,
    check_templates,
    check_text,
)
from edge.store.content import Person, Row, content_hash, model_dims
from edge.store.keys import load_key
from edge.store.records import PersonInfo, PersonNotFound, StoreError, StoreState, Template
from edge.store.schema import SCHEMA_VERSION, TEMPLATE_COLUMNS, migrate, user_version
from edge.store.sealing import Sealer

if TYPE_CHECKING:
    from edge.config import Config

log = logging.getLogger(__name__)

_BUSY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class _Pending:
    """A written but not yet committed content: adopted only after COMMIT."""

    persons: dict[str, Person]
    version: int
    hash: str


class Store:
    """Encrypted template store; safe for one writer thread plus readers (one lock).

    Decrypted names and embeddings are kept in memory (verified on open), so reads, hashes and
    galleries cost no decryption. A change committed by another process (the CLI beside a
    running daemon) is noticed through PRAGMA data_version and reloaded.
    """

    def __init__(self, path: Path, key: bytes, keep_crops: bool = True) -> None:
        self.path = Path(path)
        self.keep_crops = keep_crops
        self._sealer = Sealer(self.path, key)
        self._lock = threading.RLock()
        self._persons: dict[str, Person] = {}
        self._version = 0
        self._hashes: dict[str | None, str] = {}
        self._data_version = -1
        self._conn: sqlite3.Connection | None = self._connect()
        try:
            self._migrate()
            with self._lock, self._sql("key check") as conn:
                self._sealer.check_key(conn)
            self._quick_check()
            with self._read_snapshot() as conn:
                self._adopt_loaded(conn)
            if not keep_crops:
                self._purge_crops()
        except BaseException:
            self.close()
            raise
        log.info(
            "template store %s: version %d, %d persons",
            self.path,
            self._version,
            len(self._persons),
        )

    @classmethod
    def open(cls, cfg: Config) -> Store:
        """The store and key named by config.yaml, relative paths in daemon.state_dir."""
        path = cfg.state_path(cfg.store.path)
        try:
            exists = path.stat().st_size > 0  # an empty file is a store that was never created
        except FileNotFoundError:
            exists = False
        except OSError as err:
            raise StoreError(f"{path}: cannot reach the store: {err.strerror or err}") from None
        key = load_key(cfg.state_path(cfg.store.key_file), cfg.store.credential, create=not exists)
        return cls(path, key, keep_crops=cfg.store.keep_crops)

    # -- connection plumbing ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Create the file 0600 ourselves; SQLite gives -wal and -shm the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            mode = stat.S_IMODE(self.path.stat().st_mode)
            if mode & 0o077:
                log.warning("%s had mode %04o; setting 0600", self.path, mode)
                self.path.chmod(0o600)
        except OSError as err:
            raise StoreError(
                f"{self.path}: cannot create the store: {err.strerror or err}"
            ) from None
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL journaling (got {mode})")
            conn.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives power loss
            conn.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed, not just unlinked
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as err:
            conn.close()
            raise StoreError(f"{self.path}: not a MaskGate template store ({err})") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._conn

    @contextmanager
    def _sql(self, what: str) -> Iterator[sqlite3.Connection]:
        """SQLite errors become StoreErrors that say what was being done."""
        try:
            yield self._db()
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: {what}: {err}") from err

    @contextmanager
    def _transaction(self, what: str) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any error; holds the lock throughout."""
        with self._lock, self._sql(what) as conn:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write
            try:
                self._refresh(conn)
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read_snapshot(self) -> Iterator[sqlite3.Connection]:
        """One consistent read of several tables."""
        with self._lock, self._sql("read") as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _refresh(self, conn: sqlite3.Connection) -> None:
        """Reload when another connection committed since our last look."""
        if conn.execute("PRAGMA data_version").fetchone()[0] == self._data_version:
            return
        log.info("template store %s changed on disk; reloading", self.path)
        if conn.in_transaction:
            self._adopt_loaded(conn)
        else:  # seal and rows must come from one snapshot
            with self._read_snapshot() as snapshot:
                self._adopt_loaded(snapshot)

    def _reading(self) -> sqlite3.Connection:
        """Lock must be held: the connection, with the in-memory content up to date."""
        with self._sql("read") as conn:
            self._refresh(conn)
        return conn

    # -- opening ---------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._sql("schema check") as conn:
            if user_version(conn) == SCHEMA_VERSION:
                return
        with self._lock, self._sql("schema migration") as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if migrate(conn, self.path):
                    self._sealer.initialise(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _quick_check(self) -> None:
        with self._lock, self._sql("integrity check") as conn:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            raise StoreError(f"{self.path}: the SQLite file is damaged: {'; '.join(rows[:5])}")

    # -- loading ---------------------------------------------------------------------------------

    def _load(self, conn: sqlite3.Connection) -> tuple[dict[str, Person], int, str]:
        """Decrypt every name and embedding and check them against the seal."""
        version, sealed = self._sealer.read_seal(conn)
        rows: dict[str, list[Row]] = {}
        for r in conn.execute(f"SELECT {TEMPLATE_COLUMNS} FROM templates ORDER BY template_id"):
            pid, t, tid = self._sealer.open_template(r)
            rows.setdefault(pid, []).append(
                Row(tid, t.model_id, t.masked, t.synthetic, t.embedding)
            )
        persons: dict[str, Person] = {}
        for pid, blob, created, updated in conn.execute(
            "SELECT person_id, name, created, updated FROM persons"
        ):
            name = self._sealer.open_name(pid, blob)
            persons[pid] = Person(name, created, updated, tuple(rows.pop(pid, ())))
        if rows:
            raise StoreError(f"{self.path}: templates of unknown persons {sorted(rows)}")
        digest = content_hash(persons)
        if digest != sealed:
            raise StoreError(
                f"{self.path}: the template set does not match its seal (version {version}): "
                "rows were added, removed or altered outside MaskGate"
            )
        return persons, version, digest

    def _adopt_loaded(self, conn: sqlite3.Connection) -> None:
        data_version = conn.execute("PRAGMA data_version").fetchone()[0]
        persons, version, digest = self._load(conn)
        self._adopt(_Pending(persons, version, digest))
        self._data_version = data_version

    def _adopt(self, pending: _Pending) -> None:
        self._persons, self._version = pending.persons, pending.version
        self._hashes = {None: pending.hash}

    # -- writing ---------------------------------------------------------------------------------

    def _seal(self, conn: sqlite3.Connection, persons: dict[str, Person]) -> _Pending:
        pending = _Pending(persons, self._version + 1, content_hash(persons))
        self._sealer.write_seal(conn, pending.version, pending.hash)
        return pending

    def _put_person(
        self, conn: sqlite3.Connection, person_id: str, name: str | None, created: float, now: float
    ) -> None:
        blob = self._sealer.seal_name(person_id, name)
        conn.execute(
            "INSERT INTO persons (person_id, name, created, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(person_id) DO UPDATE SET name = excluded.name, updated = excluded.updated",
            (person_id, blob, created, now),
        )

    def _put_templates(
        self, conn: sqlite3.Connection, person_id: str, templates: Sequence[Template], now: float
    ) -> list[Row]:
        # Ids are taken explicitly (we hold the write lock) so the associated data can name
        # the row before it is inserted.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'templates'").fetchone()
        next_id = (row[0] if row else 0) + 1
        out = []
        for tid, t in enumerate(templates, next_id):
            emb, crop = self._sealer.seal_template(person_id, tid, t, self.keep_crops)
            conn.execute(
                "INSERT INTO templates (template_id, person_id, model_id, dim, masked, synthetic,"
                " source, embedding, crop, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tid,
                    person_id,
                    t.model_id,
                    t.embedding.shape[0],
                    int(t.masked),
                    int(t.synthetic),
                    t.source,
                    emb,
                    crop,
                    now,
                ),
            )
            out.append(Row(tid, t.model_id, t.masked, t.synthetic, t.embedding))
        return out

    def _after_write(self, pending: _Pending, removed: bool) -> StoreState:
        """Called after COMMIT: adopt the new content; push deleted bytes out of the WAL."""
        self._adopt(pending)
        if removed:
            self._checkpoint()
        return self._state_locked(None)

    def _checkpoint(self) -> None:
        # secure_delete zeroed the rows in the new pages, but the WAL still holds older copies
        # of those pages until they are checkpointed and the WAL is truncated. The change is
        # committed already: a failure here is logged, never reported as a failed write.
        try:
            busy = self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as err:
            log.warning("%s: checkpoint after a deletion failed: %s", self.path, err)
            return
        if busy:
            log.warning(
                "%s: a reader in another process kept the WAL; deleted templates leave it at "
                "the next checkpoint",
                self.path,
            )

    def enroll(
        self,
        person_id: str,
        name: str | None,
        templates: Sequence[Template],
        replace: bool = False,
    ) -> StoreState:
        """Add templates for a person (created if new) in one transaction; durable on return.

        `name` None keeps the current name. `replace` drops the person's old templates first.
        """
        check_person_id(person_id)
        name = check_name(name, person_id)
        clean = check_templates(person_id, templates, self.keep_crops)
        with self._lock:
            with self._transaction(f"enroll {person_id}") as conn:
                old = self._persons.get(person_id)
                kept = old.rows if old is not None and not replace else ()
                dims = model_dims(self._persons, skip=person_id if replace else None)
                check_dims(dims, person_id, clean)
                if len(kept) + len(clean) > MAX_TEMPLATES_PER_PERSON:
                    raise StoreError(
                        f"{person_id}: would hold {len(kept) + len(clean)} templates, at most "
                        f"{MAX_TEMPLATES_PER_PERSON} allowed"
                    )
                now = time.time()
                removed = replace and old is not None and bool(old.rows)
                if removed:
                    conn.execute("DELETE FROM templates WHERE person_id = ?", (person_id,))
                name = name if name is not None else (old.name if old is not None else None)
                created = old.created if old is not None else now
                self._put_person(conn, person_id, name, created, now)
                rows = self._put_templates(conn, person_id, clean, now)
                persons = dict(self._persons)
                persons[person_id] = Person(name, created, now, (*kept, *rows))
                pending = self._seal(conn, persons)
            log.info("enrolled %s: %d template(s) (replace=%s)", person_id, len(clean), replace)
            return self._after_write(pending, removed)

    def delete(self, person_id: str) -> StoreState:
        """Remove a person with every template and crop; the bytes are overwritten."""
        with self._lock:
            with self._transaction(f"delete {person_id}") as conn:
                if person_id not in self._persons:
                    raise PersonNotFound(f"{self.path}: no person {person_id!r} in the store")
                conn.execute("DELETE FROM persons WHERE person_id = ?", (person_id,))  # cascades
                persons = dict(self._persons)
                del persons[person_id]
                pending = self._seal(conn, persons)
            log.info("deleted person %s", person_id)
            return self._after_write(pending, removed=True)

    def replace_all(
        self, persons: Sequence[tuple[str, str | None, Sequence[Template]]]
    ) -> StoreState:
        """Make the store hold exactly these persons (a server's full sync): all or nothing."""
        if not isinstance(persons, Sequence):
            raise StoreError("replace_all needs a list of (person_id, name, templates)")
        batch: list[tuple[str, str | None, list[Template]]] = []
        dims: dict[str, int] = {}
        for i, item in enumerate(persons, 1):
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise StoreError(f"replace_all entry {i}: expected (person_id, name, templates)")
            pid = check_person_id(item[0])
            if any(pid == b[0] for b in batch):
                raise StoreError(f"replace_all entry {i}: person {pid!r} appears twice")
            clean = check_templates(pid, item[2], self.keep_crops)
            check_dims(dims, pid, clean)
            batch.append((pid, check_name(item[1], pid), clean))
        with self._lock:
            with self._transaction("replace all") as conn:
                removed = bool(self._persons)
                conn.execute("DELETE FROM templates")
                conn.execute("DELETE FROM persons")
                now = time.time()
                new: dict[str, Person] = {}
                for pid, name, templates in batch:
                    old = self._persons.get(pid)
                    created = old.created if old is not None else now
                    self._put_person(conn, pid, name, created, now)
                    rows = self._put_templates(conn, pid, templates, now)
                    new[pid] = Person(name, created, now, tuple(rows))
                pending = self._seal(conn, new)
            log.info("replaced the template set: %d persons", len(new))
            return self._after_write(pending, removed)

    def delete_model(self, model_id: str) -> StoreState:
        """Drop every template of one model (e.g. the old embedder after reembed)."""
        with self._lock:
            with self._transaction(f"delete model {model_id}") as conn:
                hit = {
                    pid
                    for pid, p in self._persons.items()
                    for r in p.rows
                    if r.model_id == model_id
                }
                if not hit:
                    return self._state_locked(None)
                conn.execute("DELETE FROM templates WHERE model_id = ?", (model_id,))
                now = time.time()
                conn.executemany(
                    "UPDATE persons SET updated = ? WHERE person_id = ?", [(now, p) for p in hit]
                )
                persons = dict(self._persons)
                for pid in hit:
                    p = persons[pid]
                    rows = tuple(r for r in p.rows if r.model_id != model_id)
                    persons[pid] = Person(p.name, p.created, now, rows)
                pending = self._seal(conn, persons)
            log.info("deleted the templates of model %s (%d persons)", model_id, len(hit))
            return self._after_write(pending, removed=True)

    def _purge_crops(self) -> None:
        with self._lock:
            with self._transaction("remove crops") as conn:
                n = conn.execute("UPDATE templates SET crop = NULL WHERE crop IS NOT NULL").rowcount
                if n == 0:
                    return
                pending = self._seal(conn, self._persons)
            log.info("store.keep_crops is off: removed %d stored crops", n)
            self._after_write(pending, removed=True)

    def reembed(self, model_id: str, embed: Callable[[np.ndarray], np.ndarray]) -> int:
        """Add `model_id` templates computed by `embed` (BGR 112×112 → vector) from stored crops.

        Each distinct crop of a person without a `model_id` template yet gets one, with the
        flags and source of the template it came from; old templates stay (see delete_model).
        The embedding runs outside the lock; the writes are one transaction, refused if the
        store changed meanwhile. Returns the number of templates added.
        """
        check_text(model_id, "model id", "reembed", MODEL_ID)
        with self._lock:
            self._reading()
            version = self._version
            todo = self._crops_to_reembed(model_id)
        made: dict[str, list[Template]] = {}
        for pid, tid, t in todo:
            where = f"reembed template {tid} of person {pid!r}"
            try:
                image = decode_image(t.crop_jpeg or b"", where)
            except ImageError as err:
                raise StoreError(str(err)) from None
            vector = np.asarray(embed(image)).reshape(-1)
            emb = check_embedding(vector, where)
            made.setdefault(pid, []).append(
                Template(emb, model_id, t.masked, t.synthetic, t.source, t.crop_jpeg)
            )
        if not made:
            return 0
        with self._lock:
            with self._transaction(f"reembed {model_id}") as conn:
                if self._version != version:
                    raise StoreError(f"{self.path}: the store changed during reembed; run it again")
                dims = model_dims(self._persons)
                now = time.time()
                persons = dict(self._persons)
                for pid, templates in made.items():
                    check_dims(dims, pid, templates)
                    conn.execute("UPDATE persons SET updated = ? WHERE person_id = ?", (now, pid))
                    rows = self._put_templates(conn, pid, templates, now)
                    p = persons[pid]
                    persons[pid] = Person(p.name, p.created, now, (*p.rows, *rows))
                pending = self._seal(conn, persons)
            count = sum(len(t) for t in made.values())
            log.info("re-embedded %d crops for model %s", count, model_id)
            self._after_write(pending, removed=False)
            return count

    def _crops_to_reembed(self, model_id: str) -> list[tuple[str, int, Template]]:
        """(person, template id, template) for each distinct crop lacking a `model_id` template."""
        covered: set[tuple[str, bytes | None]] = set()  # already has a template of the model
        seen: set[tuple[str, bytes | None]] = set()
        candidates: list[tuple[str, int, Template]] = []
        query = f"SELECT {TEMPLATE_COLUMNS}, crop FROM templates WHERE crop IS NOT NULL"
        with self._sql("read crops") as conn:
            rows = conn.execute(query + " ORDER BY template_id").fetchall()
        for r in rows:
            pid, t, tid = self._sealer.open_template(r)
            key = (pid, t.crop_jpeg)
            if t.model_id == model_id:
                covered.add(key)
            elif key not in seen:  # one photo may have made templates for several models
                seen.add(key)
                candidates.append((pid, tid, t))
        return [c for c in candidates if (c[0], c[2].crop_jpeg) not in covered]

    # -- reading ---------------------------------------------------------------------------------

    def list(self) -> list[PersonInfo]:
        """Every person, by id."""
        with self._lock:
            self._reading()
            return [self._info(pid) for pid in sorted(self._persons)]

    def get(self, person_id: str) -> PersonInfo:
        with self._lock:
            self._reading()
            if person_id not in self._persons:
                raise PersonNotFound(f"{self.path}: no person {person_id!r} in the store")
            return self._info(person_id)

    def _info(self, person_id: str) -> PersonInfo:
        p = self._persons[person_id]
        models = sorted({r.model_id for r in p.rows})
        return PersonInfo(person_id, p.name, len(p.rows), models, p.created, p.updated)

    def templates(self, person_id: str) -> list[Template]:
        """A person's templates, decrypted (crops included), in enrollment order."""
        with self._lock:
            conn = self._reading()
            if person_id not in self._persons:
                raise PersonNotFound(f"{self.path}: no person {person_id!r} in the store")
            with self._sql(f"read templates of {person_id}"):
                rows = conn.execute(
                    f"SELECT {TEMPLATE_COLUMNS}, crop FROM templates WHERE person_id = ? "
                    "ORDER BY template_id",
                    (person_id,),
                ).fetchall()
            return [self._sealer.open_template(r)[1] for r in rows]

    def gallery(self, model_id: str, masked: bool | None = None) -> Gallery:
        """A float32 gallery of one model's templates, labelled by person id.

        `masked` True/False keeps only masked/unmasked templates. An empty gallery has dim 0.
        """
        with self._lock:
            self._reading()
            blocks = []
            for pid in sorted(self._persons):
                embs = [
                    r.embedding
                    for r in self._persons[pid].rows
                    if r.model_id == model_id and (masked is None or r.masked == masked)
                ]
                if embs:
                    blocks.append((pid, np.stack(embs).astype(np.float32)))
        return Gallery.from_blocks(blocks[0][1].shape[1] if blocks else 0, blocks)

    def state(self, model_id: str | None = None) -> StoreState:
        """Version and hash of the set; with `model_id`, counts and hash cover that model only."""
        with self._lock:
            self._reading()
            return self._state_locked(model_id)

    def _state_locked(self, model_id: str | None) -> StoreState:
        if model_id not in self._hashes:
            self._hashes[model_id] = content_hash(self._persons, model_id)
        rows = [r for p in self._persons.values() for r in p.rows]
        selected = [r for r in rows if model_id is None or r.model_id == model_id]
        persons = sum(
            1
            for p in self._persons.values()
            if model_id is None or any(r.model_id == model_id for r in p.rows)
        )
        return StoreState(
            version=self._version,
            hash=self._hashes[model_id],
            persons=persons,
            templates=len(selected),
            model_ids=sorted({r.model_id for r in rows}),
            model_id=model_id,
        )

    def integrity_check(self) -> str:
        """'ok', or one line per problem: SQLite structure, every blob (crops too), the seal."""
        problems: list[str] = []
        with self._lock:
            with self._sql("integrity check") as conn:
                rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
            if rows != ["ok"]:
                problems += rows
            try:
                with self._read_snapshot() as conn:
                    self._sealer.verify_key_check(conn)
                    self._load(conn)
                    query = f"SELECT {TEMPLATE_COLUMNS}, crop FROM templates WHERE crop IS NOT NULL"
                    for r in conn.execute(query):
                        try:
                            self._sealer.open_template(r)
                        except StoreError as err:
                            problems.append(str(err))
            except StoreError as err:
                problems.append(str(err))
        return "\n".join(problems) if problems else "ok"

    # -- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

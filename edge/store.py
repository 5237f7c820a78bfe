"""The door's template store: encrypted embeddings in one SQLite file in the state directory.

File (schema v1, kept in PRAGMA user_version; WAL, synchronous=FULL, secure_delete=ON):
  meta(key, value)        store_id (16 random bytes), key_check, seal
  persons(person_id, name, created, updated)
  templates(template_id, person_id, model_id, dim, masked, synthetic, source,
            embedding, crop, created)

Display names, embeddings and aligned crops are encrypted with AES-256-GCM, each blob stored as
nonce (12 random bytes) || ciphertext || tag. The associated data binds a blob to this store
(store_id) and to its row, plaintext metadata included (person id, template id, model id, dim,
flags, source), so a flipped bit, a blob moved to another row or an edited flag fails
authentication. The key_check record tells a wrong key (another device's store) apart from
damage. The seal holds the encrypted (version, content hash) of the whole set: on open every
name and embedding is decrypted and hashed, so rows added or removed behind MaskGate's back are
caught too. Person ids, model ids, sources, flags and timestamps are plaintext: person ids
should therefore be opaque ids, not names.

The key is 32 bytes, kept as 64 hex digits and a newline (raw 32-byte files are accepted too),
in a 0600 key file or a systemd credential (LoadCredential=).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.imageio import ImageError, decode_image
from edge.match import Gallery

if TYPE_CHECKING:
    from edge.config import Config

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_TEMPLATES_PER_PERSON = 256
MAX_DIM = 4096
MAX_CROP_BYTES = 1 << 20
MAX_NAME_CHARS = 200
# Embedders L2-normalise; a little slack lets float16 round trips through a server pass.
UNIT_TOLERANCE = 0.02

_PERSON_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MODEL_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII without spaces
_AD_DOMAIN = b"maskgate-store/1"
_KEY_CHECK = b"maskgate template key check v1"
_HASH_DOMAIN = b"maskgate-template-set/1\n"
_BUSY_TIMEOUT_S = 10.0


class StoreError(RuntimeError):
    """The template store cannot do what was asked; the message names the file and the problem."""


@dataclass(eq=False)  # eq would compare arrays element-wise and fail on truth value
class Template:
    """One embedding of a person, and how it was made."""

    embedding: np.ndarray  # float32, 1-D, L2-normalised
    model_id: str  # manifest id of the embedder that made it
    masked: bool = False
    synthetic: bool = False  # made from a rendered variant (e.g. a drawn-on mask)
    source: str = "photo"  # "photo", "server", "variant:<name>", ...
    crop_jpeg: bytes | None = None  # aligned 112×112 face, to re-embed for a new model


@dataclass(frozen=True)
class PersonInfo:
    person_id: str
    name: str | None
    templates: int
    models: list[str]  # sorted model ids of the person's templates
    created: float  # unix seconds
    updated: float


@dataclass(frozen=True)
class StoreState:
    version: int  # only grows; every committed change bumps it
    hash: str  # sha256 hex of the template set, see _content_hash()
    persons: int
    templates: int
    model_ids: list[str]  # every model id in the store, sorted
    model_id: str | None = None  # set when persons/templates/hash cover only this model


# -- keys ----------------------------------------------------------------------------------------


def load_key(key_file: Path, credential: str | None, *, create: bool = True) -> bytes:
    """The 32-byte store key: a systemd credential when one is passed, else the key file.

    A missing key file is created (random key, mode 0600) unless `create` is False, which
    Store.open passes when a store already exists: a fresh key could never open it.
    """
    cred = _credential_path(credential)
    if cred is not None and cred.is_file():
        log.info("template key from systemd credential %s", credential)
        return _parse_key(_read_secret(cred, f"systemd credential {credential!r}"), str(cred))
    key_file = Path(key_file)
    try:
        return _read_key_file(key_file)
    except FileNotFoundError:
        if not create:
            raise StoreError(
                f"{key_file}: key file missing; the existing template store can only be opened "
                "with the key it was created with (restore the key file or re-enroll)"
            ) from None
    return _create_key_file(key_file)


def _credential_path(credential: str | None) -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not credential or not directory:
        return None
    if "/" in credential or credential in (".", ".."):
        raise StoreError(f"systemd credential name {credential!r} must be a plain file name")
    return Path(directory) / credential


def _read_secret(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise StoreError(f"{path}: cannot read {what}: {err.strerror or err}") from None


def _read_key_file(path: Path) -> bytes:
    """Read and check a key file; FileNotFoundError passes through to mean 'create one'."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise StoreError(f"{path}: cannot open key file: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # the opened file itself: no window for a swap
        if not stat.S_ISREG(st.st_mode):
            raise StoreError(f"{path}: key file is not a regular file")
        if st.st_mode & 0o077:
            raise StoreError(
                f"{path}: key file is accessible by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`"
            )
        data = f.read(257)
    return _parse_key(data, str(path))


def _parse_key(data: bytes, where: str) -> bytes:
    # Raw 32 bytes, or 64 hex digits (what `openssl rand -hex 32` writes).
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise StoreError(
        f"{where}: not a template key: expected 32 raw bytes or 64 hex digits, "
        f"found {len(data)} bytes"
    )


def _create_key_file(path: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)  # exact mode whatever the umask
                f.write(key.hex().encode("ascii") + b"\n")
                f.flush()
                os.fsync(f.fileno())
            # link() fails if the name exists: a complete key appears atomically, never half
            # written, and a racing process keeps the key that won.
            os.link(tmp, path)
        except FileExistsError:
            log.info("key file %s appeared meanwhile; using it", path)
            return _read_key_file(path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except OSError as err:
        raise StoreError(f"{path}: cannot create key file: {err.strerror or err}") from None
    log.warning(
        "created a new template key %s: back it up, the store is unreadable without it", path
    )
    return key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- validation ----------------------------------------------------------------------------------


def _check_person_id(person_id: object) -> str:
    if not isinstance(person_id, str) or not _PERSON_ID.fullmatch(person_id):
        raise StoreError(
            f"person id {person_id!r} is invalid: use 1-64 characters of A-Z a-z 0-9 _ . -"
        )
    return person_id


def _check_name(name: object, person_id: str) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise StoreError(
            f"{person_id}: display name must be a text of 1-{MAX_NAME_CHARS} characters"
        )
    if not name.isprintable():
        raise StoreError(f"{person_id}: display name contains control characters")
    return name


def _check_embedding(value: object, where: str) -> np.ndarray:
    try:
        emb = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise StoreError(f"{where}: embedding is not an array: {err}") from None
    if emb.dtype.kind not in "fiu":
        raise StoreError(f"{where}: embedding must hold numbers, not {emb.dtype}")
    if emb.ndim != 1 or not 2 <= emb.shape[0] <= MAX_DIM:
        raise StoreError(
            f"{where}: embedding must be one vector of 2-{MAX_DIM} values, got shape {emb.shape}"
        )
    emb = emb.astype("<f4")  # a fresh copy, so callers cannot change it later
    if not np.all(np.isfinite(emb)):
        raise StoreError(f"{where}: embedding contains NaN or infinity")
    norm = float(np.linalg.norm(emb))
    if abs(norm - 1.0) > UNIT_TOLERANCE:
        raise StoreError(
            f"{where}: embedding norm is {norm:.4g}; templates must be L2-normalised "
            f"(norm 1 ± {UNIT_TOLERANCE})"
        )
    emb.setflags(write=False)
    return emb


def _check_text(value: object, what: str, where: str, pattern: re.Pattern[str] | None) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 128
        or not value.isprintable()
        or (pattern is not None and not pattern.fullmatch(value))
    ):
        rule = "printable ASCII, no spaces" if pattern is not None else "printable characters"
        raise StoreError(f"{where}: {what} {value!r} is invalid (1-128 {rule})")
    return value


def _check_template(t: object, where: str, keep_crop: bool) -> Template:
    if not isinstance(t, Template):
        raise StoreError(f"{where}: expected a Template, got {type(t).__name__}")
    for flag in ("masked", "synthetic"):
        if not isinstance(getattr(t, flag), (bool, np.bool_)):
            raise StoreError(f"{where}: {flag} must be True or False")
    crop = t.crop_jpeg
    if crop is not None:
        if not isinstance(crop, bytes) or not crop.startswith(b"\xff\xd8"):
            raise StoreError(f"{where}: crop_jpeg must be JPEG bytes")
        if len(crop) > MAX_CROP_BYTES:
            raise StoreError(f"{where}: crop_jpeg is {len(crop)} bytes, over {MAX_CROP_BYTES}")
    return Template(
        embedding=_check_embedding(t.embedding, where),
        model_id=_check_text(t.model_id, "model id", where, _MODEL_ID),
        masked=bool(t.masked),
        synthetic=bool(t.synthetic),
        source=_check_text(t.source, "source", where, None),
        crop_jpeg=crop if keep_crop else None,
    )


def _check_templates(person_id: str, templates: object, keep_crops: bool) -> list[Template]:
    if not isinstance(templates, Sequence) or isinstance(templates, (str, bytes)):
        raise StoreError(f"{person_id}: templates must be a list of Template")
    if not templates:
        raise StoreError(f"{person_id}: at least one template is needed")
    if len(templates) > MAX_TEMPLATES_PER_PERSON:
        raise StoreError(
            f"{person_id}: {len(templates)} templates, at most {MAX_TEMPLATES_PER_PERSON} allowed"
        )
    return [
        _check_template(t, f"{person_id}: template {i}", keep_crops)
        for i, t in enumerate(templates, 1)
    ]


def _check_dims(dims: dict[str, int], person_id: str, templates: Sequence[Template]) -> None:
    """Every model's embeddings share one size; `dims` (model → size) is updated in place."""
    for i, t in enumerate(templates, 1):
        dim = t.embedding.shape[0]
        expected = dims.setdefault(t.model_id, dim)
        if dim != expected:
            raise StoreError(
                f"{person_id}: template {i}: model {t.model_id!r} embeddings have {expected} "
                f"dimensions, this one has {dim}"
            )


# -- content and its hash ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """A decrypted template as the hash and the gallery see it."""

    template_id: int
    model_id: str
    masked: bool
    synthetic: bool
    embedding: np.ndarray  # read-only little-endian float32


@dataclass(frozen=True)
class _Person:
    name: str | None
    created: float
    updated: float
    rows: tuple[_Row, ...] = field(default=())


def _lp(data: bytes | str) -> bytes:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


def _content_hash(persons: Mapping[str, _Person], model_id: str | None = None) -> str:
    """sha256 hex of the template set, the same for the same set on any device.

    Canonical form, lp(x) = 4-byte big-endian length + UTF-8 bytes:
      "maskgate-template-set/1\\n"
      per person, by person id: "P" lp(id) (0x00 | 0x01 lp(name)) count(4 bytes BE)
        per template, by (model id, masked, synthetic, embedding bytes):
          "T" lp(model id) masked(1 byte) synthetic(1 byte) dim(4 bytes BE) float32 LE values
    With `model_id`, only that model's templates count, and persons without any are left out.
    """
    h = hashlib.sha256(_HASH_DOMAIN)
    for person_id in sorted(persons):  # ids are ASCII: str order is byte order
        person = persons[person_id]
        rows = [r for r in person.rows if model_id is None or r.model_id == model_id]
        if model_id is not None and not rows:
            continue
        name = b"\x00" if person.name is None else b"\x01" + _lp(person.name)
        h.update(b"P" + _lp(person_id) + name + struct.pack(">I", len(rows)))
        keyed = [
            (r.model_id.encode(), r.masked, r.synthetic, r.embedding.tobytes(), r) for r in rows
        ]
        for model, masked, synthetic, emb, r in sorted(keyed, key=lambda k: k[:4]):
            h.update(b"T" + _lp(model) + bytes([masked, synthetic]))
            h.update(struct.pack(">I", r.embedding.shape[0]) + emb)
    return h.hexdigest()


def _model_dims(persons: Mapping[str, _Person], skip: str | None = None) -> dict[str, int]:
    return {
        r.model_id: r.embedding.shape[0]
        for pid, p in persons.items()
        if pid != skip
        for r in p.rows
    }


# -- schema --------------------------------------------------------------------------------------


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
_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _schema_v1}
assert max(_MIGRATIONS) == SCHEMA_VERSION

_TEMPLATE_COLUMNS = "template_id, person_id, model_id, dim, masked, synthetic, source, embedding"


# -- the store -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pending:
    """A written but not yet committed content: adopted only after COMMIT."""

    persons: dict[str, _Person]
    version: int
    hash: str


class Store:
    """Encrypted template store; safe for one writer thread plus readers (one lock).

    Decrypted names and embeddings are kept in memory (verified on open), so reads, hashes and
    galleries cost no decryption. A change committed by another process (the CLI beside a
    running daemon) is noticed through PRAGMA data_version and reloaded.
    """

    def __init__(self, path: Path, key: bytes, keep_crops: bool = True) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise StoreError(f"{path}: the store key must be {KEY_BYTES} bytes")
        self.path = Path(path)
        self.keep_crops = keep_crops
        self._aead = AESGCM(key)
        self._lock = threading.RLock()
        self._persons: dict[str, _Person] = {}
        self._version = 0
        self._hashes: dict[str | None, str] = {}
        self._data_version = -1
        self._conn: sqlite3.Connection | None = self._connect()
        try:
            self._migrate()
            self._store_id = self._check_key()
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

    def _user_version(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        with self._sql("schema check") as conn:
            if self._user_version(conn) == SCHEMA_VERSION:
                return
        with self._lock, self._sql("schema migration") as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._migrate_locked(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _migrate_locked(self, conn: sqlite3.Connection) -> None:
        current = self._user_version(conn)  # again: another process may have migrated meanwhile
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {current} is newer than this MaskGate knows "
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
                    f"{self.path}: not a MaskGate template store (tables {', '.join(tables)}, "
                    "no schema version)"
                )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            log.info("template store %s: migrating to schema %d", self.path, version)
            _MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version}")
        if current == 0:
            self._initialise(conn)

    def _initialise(self, conn: sqlite3.Connection) -> None:
        # Same transaction as the schema: a store exists completely or not at all.
        self._store_id = secrets.token_bytes(16)
        check = self._encrypt(_KEY_CHECK, self._ad("key-check"))
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("store_id", self._store_id), ("key_check", check)],
        )
        self._write_seal(conn, 0, _content_hash({}))

    def _meta(self, conn: sqlite3.Connection, key: str) -> bytes:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None or not isinstance(row[0], bytes):
            raise StoreError(f"{self.path}: damaged store: its {key} record is missing")
        return row[0]

    def _check_key(self) -> bytes:
        with self._lock, self._sql("key check") as conn:
            self._store_id = self._meta(conn, "store_id")
            blob = self._meta(conn, "key_check")
        try:
            ok = self._decrypt(blob, self._ad("key-check"), "key check") == _KEY_CHECK
        except StoreError:
            ok = False
        if not ok:
            raise StoreError(
                f"{self.path} was encrypted with a different key: it belongs to another device "
                "or key file (or its key record is damaged)"
            )
        return self._store_id

    def _quick_check(self) -> None:
        with self._lock, self._sql("integrity check") as conn:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            raise StoreError(f"{self.path}: the SQLite file is damaged: {'; '.join(rows[:5])}")

    # -- crypto ----------------------------------------------------------------------------------

    def _ad(self, kind: str, *fields: object) -> bytes:
        """Associated data: this store, the blob's kind and its row's identifying fields."""
        parts = [_AD_DOMAIN, self._store_id, kind.encode()]
        parts += [str(int(f) if isinstance(f, bool) else f).encode() for f in fields]
        return b"".join(_lp(p) for p in parts)

    def _template_ad(self, kind: str, person_id: str, template_id: int, t: Template) -> bytes:
        # Every plaintext column of the row takes part: editing a flag breaks the tag too.
        meta = (t.model_id, t.embedding.shape[0], t.masked, t.synthetic, t.source)
        return self._ad(kind, person_id, template_id, *meta)

    def _encrypt(self, plain: bytes, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)  # fresh per blob; never reused with this key
        return nonce + self._aead.encrypt(nonce, plain, ad)

    def _decrypt(self, blob: object, ad: bytes, what: str) -> bytes:
        if not isinstance(blob, bytes) or len(blob) < NONCE_BYTES + TAG_BYTES:
            raise StoreError(f"{self.path}: {what} is truncated or not an encrypted blob")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)
        except InvalidTag:
            raise StoreError(
                f"{self.path}: {what} failed authentication: altered, corrupted or moved from "
                "another row"
            ) from None

    def _write_seal(self, conn: sqlite3.Connection, version: int, digest: str) -> None:
        plain = struct.pack(">Q", version) + bytes.fromhex(digest)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('seal', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (self._encrypt(plain, self._ad("seal")),),
        )

    def _read_seal(self, conn: sqlite3.Connection) -> tuple[int, str]:
        plain = self._decrypt(self._meta(conn, "seal"), self._ad("seal"), "the version seal")
        return struct.unpack(">Q", plain[:8])[0], plain[8:].hex()

    # -- loading ---------------------------------------------------------------------------------

    def _decode_template(self, row: Sequence[Any]) -> tuple[str, Template, int]:
        """A templates row (see _TEMPLATE_COLUMNS, crop optional at the end) decrypted."""
        tid, pid, model_id, dim, masked, synthetic, source, blob = row[:8]
        meta = (model_id, dim, bool(masked), bool(synthetic), source)
        what = f"template {tid} of person {pid!r} (model {model_id})"
        plain = self._decrypt(blob, self._ad("emb", pid, tid, *meta), what)
        if len(plain) != 4 * dim:
            raise StoreError(f"{self.path}: {what} holds {len(plain)} bytes for {dim} values")
        crop = None
        if len(row) > 8 and row[8] is not None:
            crop = self._decrypt(row[8], self._ad("crop", pid, tid, *meta), f"crop of {what}")
        emb = np.frombuffer(plain, "<f4")  # a read-only view of immutable bytes
        return pid, Template(emb, model_id, bool(masked), bool(synthetic), source, crop), tid

    def _load(self, conn: sqlite3.Connection) -> tuple[dict[str, _Person], int, str]:
        """Decrypt every name and embedding and check them against the seal."""
        version, sealed = self._read_seal(conn)
        rows: dict[str, list[_Row]] = {}
        for r in conn.execute(f"SELECT {_TEMPLATE_COLUMNS} FROM templates ORDER BY template_id"):
            pid, t, tid = self._decode_template(r)
            rows.setdefault(pid, []).append(
                _Row(tid, t.model_id, t.masked, t.synthetic, t.embedding)
            )
        persons: dict[str, _Person] = {}
        for pid, blob, created, updated in conn.execute(
            "SELECT person_id, name, created, updated FROM persons"
        ):
            name = None
            if blob is not None:
                plain = self._decrypt(blob, self._ad("name", pid), f"name of person {pid!r}")
                name = plain.decode("utf-8")
            persons[pid] = _Person(name, created, updated, tuple(rows.pop(pid, ())))
        if rows:
            raise StoreError(f"{self.path}: templates of unknown persons {sorted(rows)}")
        digest = _content_hash(persons)
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

    def _seal(self, conn: sqlite3.Connection, persons: dict[str, _Person]) -> _Pending:
        pending = _Pending(persons, self._version + 1, _content_hash(persons))
        self._write_seal(conn, pending.version, pending.hash)
        return pending

    def _put_person(
        self, conn: sqlite3.Connection, person_id: str, name: str | None, created: float, now: float
    ) -> None:
        blob = None if name is None else self._encrypt(name.encode(), self._ad("name", person_id))
        conn.execute(
            "INSERT INTO persons (person_id, name, created, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(person_id) DO UPDATE SET name = excluded.name, updated = excluded.updated",
            (person_id, blob, created, now),
        )

    def _put_templates(
        self, conn: sqlite3.Connection, person_id: str, templates: Sequence[Template], now: float
    ) -> list[_Row]:
        # Ids are taken explicitly (we hold the write lock) so the associated data can name
        # the row before it is inserted.
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'templates'").fetchone()
        next_id = (row[0] if row else 0) + 1
        out = []
        for tid, t in enumerate(templates, next_id):
            emb = self._encrypt(t.embedding.tobytes(), self._template_ad("emb", person_id, tid, t))
            crop = None
            if t.crop_jpeg is not None and self.keep_crops:
                crop = self._encrypt(t.crop_jpeg, self._template_ad("crop", person_id, tid, t))
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
            out.append(_Row(tid, t.model_id, t.masked, t.synthetic, t.embedding))
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
        _check_person_id(person_id)
        name = _check_name(name, person_id)
        clean = _check_templates(person_id, templates, self.keep_crops)
        with self._lock:
            with self._transaction(f"enroll {person_id}") as conn:
                old = self._persons.get(person_id)
                kept = old.rows if old is not None and not replace else ()
                dims = _model_dims(self._persons, skip=person_id if replace else None)
                _check_dims(dims, person_id, clean)
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
                persons[person_id] = _Person(name, created, now, (*kept, *rows))
                pending = self._seal(conn, persons)
            log.info("enrolled %s: %d template(s) (replace=%s)", person_id, len(clean), replace)
            return self._after_write(pending, removed)

    def delete(self, person_id: str) -> StoreState:
        """Remove a person with every template and crop; the bytes are overwritten."""
        with self._lock:
            with self._transaction(f"delete {person_id}") as conn:
                if person_id not in self._persons:
                    raise StoreError(f"{self.path}: no person {person_id!r} in the store")
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
            pid = _check_person_id(item[0])
            if any(pid == b[0] for b in batch):
                raise StoreError(f"replace_all entry {i}: person {pid!r} appears twice")
            clean = _check_templates(pid, item[2], self.keep_crops)
            _check_dims(dims, pid, clean)
            batch.append((pid, _check_name(item[1], pid), clean))
        with self._lock:
            with self._transaction("replace all") as conn:
                removed = bool(self._persons)
                conn.execute("DELETE FROM templates")
                conn.execute("DELETE FROM persons")
                now = time.time()
                new: dict[str, _Person] = {}
                for pid, name, templates in batch:
                    old = self._persons.get(pid)
                    created = old.created if old is not None else now
                    self._put_person(conn, pid, name, created, now)
                    rows = self._put_templates(conn, pid, templates, now)
                    new[pid] = _Person(name, created, now, tuple(rows))
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
                    persons[pid] = _Person(p.name, p.created, now, rows)
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
        _check_text(model_id, "model id", "reembed", _MODEL_ID)
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
            emb = _check_embedding(vector, where)
            made.setdefault(pid, []).append(
                Template(emb, model_id, t.masked, t.synthetic, t.source, t.crop_jpeg)
            )
        if not made:
            return 0
        with self._lock:
            with self._transaction(f"reembed {model_id}") as conn:
                if self._version != version:
                    raise StoreError(f"{self.path}: the store changed during reembed; run it again")
                dims = _model_dims(self._persons)
                now = time.time()
                persons = dict(self._persons)
                for pid, templates in made.items():
                    _check_dims(dims, pid, templates)
                    conn.execute("UPDATE persons SET updated = ? WHERE person_id = ?", (now, pid))
                    rows = self._put_templates(conn, pid, templates, now)
                    p = persons[pid]
                    persons[pid] = _Person(p.name, p.created, now, (*p.rows, *rows))
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
        query = f"SELECT {_TEMPLATE_COLUMNS}, crop FROM templates WHERE crop IS NOT NULL"
        with self._sql("read crops") as conn:
            rows = conn.execute(query + " ORDER BY template_id").fetchall()
        for r in rows:
            pid, t, tid = self._decode_template(r)
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
                raise StoreError(f"{self.path}: no person {person_id!r} in the store")
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
                raise StoreError(f"{self.path}: no person {person_id!r} in the store")
            with self._sql(f"read templates of {person_id}"):
                rows = conn.execute(
                    f"SELECT {_TEMPLATE_COLUMNS}, crop FROM templates WHERE person_id = ? "
                    "ORDER BY template_id",
                    (person_id,),
                ).fetchall()
            return [self._decode_template(r)[1] for r in rows]

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
            self._hashes[model_id] = _content_hash(self._persons, model_id)
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
                    if self._meta(conn, "store_id") != self._store_id:
                        problems.append(f"{self.path}: the store id changed while open")
                    self._decrypt(self._meta(conn, "key_check"), self._ad("key-check"), "key check")
                    self._load(conn)
                    query = (
                        f"SELECT {_TEMPLATE_COLUMNS}, crop FROM templates WHERE crop IS NOT NULL"
                    )
                    for r in conn.execute(query):
                        try:
                            self._decode_template(r)
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

"""Encryption of the store's blobs and the seal over the whole template set.

Display names, embeddings and aligned crops are encrypted with AES-256-GCM, each blob stored as
nonce (12 random bytes) || ciphertext || tag. The associated data binds a blob to this store
(store_id) and to its row, plaintext metadata included (person id, template id, model id, dim,
flags, source), so a flipped bit, a blob moved to another row or an edited flag fails
authentication. The key_check record tells a wrong key (another device's store) apart from
damage. The seal holds the encrypted (version, content hash) of the whole set.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.store.content import content_hash, lp
from edge.store.keys import KEY_BYTES
from edge.store.records import StoreError, Template

NONCE_BYTES = 12
TAG_BYTES = 16
_AD_DOMAIN = b"maskgate-store/1"
_KEY_CHECK = b"maskgate template key check v1"


class Sealer:
    """Encrypts and authenticates one store's blobs; `path` only names the store in errors."""

    def __init__(self, path: Path, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise StoreError(f"{path}: the store key must be {KEY_BYTES} bytes")
        self.path = path
        self._aead = AESGCM(key)
        self.store_id = b""  # set by initialise() or check_key()

    # -- the store's identity ----------------------------------------------------------------

    def initialise(self, conn: sqlite3.Connection) -> None:
        """Write a new store's id, key check and empty seal (in the schema's transaction)."""
        self.store_id = secrets.token_bytes(16)
        check = self.encrypt(_KEY_CHECK, self.ad("key-check"))
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("store_id", self.store_id), ("key_check", check)],
        )
        self.write_seal(conn, 0, content_hash({}))

    def check_key(self, conn: sqlite3.Connection) -> None:
        """Adopt the store's id and prove the key opens it (a clear error for another key)."""
        self.store_id = self.meta(conn, "store_id")
        try:
            ok = self.decrypt(self.meta(conn, "key_check"), self.ad("key-check"), "key check")
            ok = ok == _KEY_CHECK
        except StoreError:
            ok = False
        if not ok:
            raise StoreError(
                f"{self.path} was encrypted with a different key: it belongs to another device "
                "or key file (or its key record is damaged)"
            )

    def verify_key_check(self, conn: sqlite3.Connection) -> None:
        """Raise StoreError when the key check record no longer authenticates."""
        if self.meta(conn, "store_id") != self.store_id:
            raise StoreError(f"{self.path}: the store id changed while open")
        self.decrypt(self.meta(conn, "key_check"), self.ad("key-check"), "key check")

    def meta(self, conn: sqlite3.Connection, key: str) -> bytes:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None or not isinstance(row[0], bytes):
            raise StoreError(f"{self.path}: damaged store: its {key} record is missing")
        return row[0]

    # -- blobs -------------------------------------------------------------------------------

    def ad(self, kind: str, *fields: object) -> bytes:
        """Associated data: this store, the blob's kind and its row's identifying fields."""
        parts = [_AD_DOMAIN, self.store_id, kind.encode()]
        parts += [str(int(f) if isinstance(f, bool) else f).encode() for f in fields]
        return b"".join(lp(p) for p in parts)

    def seal_template(
        self, person_id: str, template_id: int, t: Template, keep_crop: bool
    ) -> tuple[bytes, bytes | None]:
        """The encrypted embedding and (when kept) crop of a row about to be inserted."""
        # Every plaintext column of the row takes part: editing a flag breaks the tag too.
        meta = (t.model_id, t.embedding.shape[0], t.masked, t.synthetic, t.source)
        emb = self.encrypt(t.embedding.tobytes(), self.ad("emb", person_id, template_id, *meta))
        crop = None
        if t.crop_jpeg is not None and keep_crop:
            crop = self.encrypt(t.crop_jpeg, self.ad("crop", person_id, template_id, *meta))
        return emb, crop

    def encrypt(self, plain: bytes, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)  # fresh per blob; never reused with this key
        return nonce + self._aead.encrypt(nonce, plain, ad)

    def decrypt(self, blob: object, ad: bytes, what: str) -> bytes:
        if not isinstance(blob, bytes) or len(blob) < NONCE_BYTES + TAG_BYTES:
            raise StoreError(f"{self.path}: {what} is truncated or not an encrypted blob")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], ad)
        except InvalidTag:
            raise StoreError(
                f"{self.path}: {what} failed authentication: altered, corrupted or moved from "
                "another row"
            ) from None

    def seal_name(self, person_id: str, name: str | None) -> bytes | None:
        return None if name is None else self.encrypt(name.encode(), self.ad("name", person_id))

    def open_name(self, person_id: str, blob: bytes | None) -> str | None:
        if blob is None:
            return None
        plain = self.decrypt(blob, self.ad("name", person_id), f"name of person {person_id!r}")
        return plain.decode("utf-8")

    def open_template(self, row: Sequence[Any]) -> tuple[str, Template, int]:
        """A templates row (schema.TEMPLATE_COLUMNS, crop optional at the end) decrypted."""
        tid, pid, model_id, dim, masked, synthetic, source, blob = row[:8]
        meta = (model_id, dim, bool(masked), bool(synthetic), source)
        what = f"template {tid} of person {pid!r} (model {model_id})"
        plain = self.decrypt(blob, self.ad("emb", pid, tid, *meta), what)
        if len(plain) != 4 * dim:
            raise StoreError(f"{self.path}: {what} holds {len(plain)} bytes for {dim} values")
        crop = None
        if len(row) > 8 and row[8] is not None:
            crop = self.decrypt(row[8], self.ad("crop", pid, tid, *meta), f"crop of {what}")
        emb = np.frombuffer(plain, "<f4")  # a read-only view of immutable bytes
        return pid, Template(emb, model_id, bool(masked), bool(synthetic), source, crop), tid

    # -- the seal ----------------------------------------------------------------------------

    def write_seal(self, conn: sqlite3.Connection, version: int, digest: str) -> None:
        plain = struct.pack(">Q", version) + bytes.fromhex(digest)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('seal', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (self.encrypt(plain, self.ad("seal")),),
        )

    def read_seal(self, conn: sqlite3.Connection) -> tuple[int, str]:
        plain = self.decrypt(self.meta(conn, "seal"), self.ad("seal"), "the version seal")
        return struct.unpack(">Q", plain[:8])[0], plain[8:].hex()

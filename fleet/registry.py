"""The registry: people, their embeddings and photos, access groups, doors, and what each door
last reported. One SQLite file (WAL); every admin change is one IMMEDIATE transaction, so two
admins changing it at once are serialised by SQLite and neither change is lost.

Every change to what a door should hold bumps `revision` (in `meta`), so the fleet service
knows to recompute expectations without polling tables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from edge.enroll import EnrollmentError, ReadyEmbedding, check_embeddings
from edge.mqtt.messages import SyncPerson
from edge.store import StoreError
from edge.store.checks import check_name
from edge.store.content import lp
from fleet.schema import migrate

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_BUSY_TIMEOUT_S = 30.0
KNOWN_HASHES_KEPT = 64  # per door


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message names what and why."""


@dataclass(frozen=True)
class StoredEmbedding:
    model_id: str
    masked: bool
    vector: np.ndarray  # float32, as stored


@dataclass(frozen=True)
class ExpectedPerson:
    """One person as a door should hold them: name and this model's embeddings."""

    person_id: str
    name: str | None
    embeddings: tuple[StoredEmbedding, ...]

    @cached_property
    def digest(self) -> str:
        """Identifies this version of the person (name and embeddings)."""
        h = hashlib.sha256(b"P" + lp(self.person_id))
        h.update(b"\x00" if self.name is None else b"\x01" + lp(self.name))
        for e in self.embeddings:
            h.update(lp(e.model_id) + bytes([e.masked]) + struct.pack(">I", e.vector.shape[0]))
            h.update(np.ascontiguousarray(e.vector, "<f4").tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class DoorRow:
    device_id: str
    model_id: str
    groups: tuple[str, ...]
    online: bool
    last_seen: float | None
    state_version: int | None
    state_hash: str | None
    state_count: int | None
    state_time: float | None
    confirmed_hash: str | None
    confirmed_time: float | None
    flagged: str | None
    flagged_time: float | None
    last_event: float | None


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise RegistryError(f"{what} {value!r}: use 1–64 of A-Z a-z 0-9 _ . -")
    return value


class Registry:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            if stat.S_IMODE(self.path.stat().st_mode) & 0o077:
                self.path.chmod(0o600)  # names and embeddings are personal data
        except OSError as err:
            raise RegistryError(f"{self.path}: cannot create the registry: {err}") from None
        self._conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            if self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise RegistryError(f"{self.path}: cannot switch to WAL journaling")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            migrate(self._conn)
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise RegistryError(f"{self.path}: not a fleet registry ({err})") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _write(self, what: str, bump: bool = True) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if bump:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('revision', '1') ON CONFLICT(key)"
                        " DO UPDATE SET value = CAST(value AS INTEGER) + 1"
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as err:
            raise RegistryError(f"{what}: {err}") from None
        except sqlite3.Error as err:
            raise RegistryError(f"{self.path}: {what}: {err}") from None

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        row = self._conn.execute(sql, args).fetchone()
        return None if row is None else row[0]

    def revision(self) -> int:
        value = self._one("SELECT value FROM meta WHERE key = 'revision'")
        return int(value) if value is not None else 0

    def meta(self, key: str) -> str | None:
        return self._one("SELECT value FROM meta WHERE key = ?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        with self._write(f"set {key}", bump=False) as c:
            c.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET"
                " value = excluded.value",
                (key, value),
            )

    # -- people --------------------------------------------------------------------------------

    def add_person(
        self,
        person_id: str,
        name: str | None,
        groups: Iterable[str] = (),
        embeddings: Sequence[StoredEmbedding] = (),
        photos: Sequence[bytes] = (),
        source: str = "server",
    ) -> None:
        check_id(person_id, "person id")
        now = time.time()
        with self._write(f"add person {person_id}") as c:
            if self._one("SELECT 1 FROM persons WHERE person_id = ?", (person_id,)):
                raise RegistryError(f"person {person_id!r} exists already (use person update)")
            c.execute(
                "INSERT INTO persons (person_id, name, created, updated) VALUES (?, ?, ?, ?)",
                (person_id, name, now, now),
            )
            self._put_embeddings(c, person_id, embeddings, source)
            for data in photos:
                c.execute(
                    "INSERT INTO photos (person_id, data, added) VALUES (?, ?, ?)",
                    (person_id, data, now),
                )
            self._join(c, person_id, groups)
            self._check_person(c, person_id)

    def update_person(
        self,
        person_id: str,
        name: str | None = None,
        add_groups: Iterable[str] = (),
        remove_groups: Iterable[str] = (),
        embeddings: Sequence[StoredEmbedding] | None = None,
        photos: Sequence[bytes] = (),
        source: str = "server",
    ) -> None:
        """Change a person; `embeddings` (when given) replace that model's embeddings."""
        with self._write(f"update person {person_id}") as c:
            if not self._one("SELECT 1 FROM persons WHERE person_id = ?", (person_id,)):
                raise RegistryError(f"no person {person_id!r} in the registry")
            now = time.time()
            if name is not None:
                c.execute("UPDATE persons SET name = ? WHERE person_id = ?", (name, person_id))
            if embeddings:
                for model in {e.model_id for e in embeddings}:
                    c.execute(
                        "DELETE FROM embeddings WHERE person_id = ? AND model_id = ?",
                        (person_id, model),
                    )
                self._put_embeddings(c, person_id, embeddings, source)
            for data in photos:
                c.execute(
                    "INSERT INTO photos (person_id, data, added) VALUES (?, ?, ?)",
                    (person_id, data, now),
                )
            self._join(c, person_id, add_groups)
            for g in remove_groups:
                c.execute(
                    "DELETE FROM person_groups WHERE person_id = ? AND group_name = ?",
                    (person_id, g),
                )
            c.execute("UPDATE persons SET updated = ? WHERE person_id = ?", (now, person_id))
            self._check_person(c, person_id)

    def revoke_person(self, person_id: str) -> list[str]:
        """Take the person out of every group in one write; returns the groups it was in."""
        with self._write(f"revoke person {person_id}") as c:
            if not self._one("SELECT 1 FROM persons WHERE person_id = ?", (person_id,)):
                raise RegistryError(f"no person {person_id!r} in the registry")
            groups = [
                r[0]
                for r in c.execute(
                    "SELECT group_name FROM person_groups WHERE person_id = ? ORDER BY 1",
                    (person_id,),
                )
            ]
            c.execute("DELETE FROM person_groups WHERE person_id = ?", (person_id,))
            now = time.time()
            c.execute("UPDATE persons SET updated = ? WHERE person_id = ?", (now, person_id))
        return groups

    def remove_person(self, person_id: str) -> None:
        with self._write(f"remove person {person_id}") as c:
            if not c.execute("DELETE FROM persons WHERE person_id = ?", (person_id,)).rowcount:
                raise RegistryError(f"no person {person_id!r} in the registry")

    def _put_embeddings(
        self,
        c: sqlite3.Connection,
        person_id: str,
        embeddings: Sequence[StoredEmbedding],
        source: str,
    ) -> None:
        for e in embeddings:
            check_id(e.model_id, "model id")
            c.execute(
                "INSERT INTO embeddings (person_id, model_id, masked, vector, source)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    person_id,
                    e.model_id,
                    int(e.masked),
                    np.asarray(e.vector, dtype="<f4").ravel().tobytes(),
                    source,
                ),
            )

    def _check_person(self, c: sqlite3.Connection, person_id: str) -> None:
        """Refuse, inside the write, a person some door would refuse: by the doors' own rules
        (the request model, the store's name check, the embedding check), and one vector size
        per model across the registry. A person no door takes would never confirm anywhere."""
        name = self._one("SELECT name FROM persons WHERE person_id = ?", (person_id,))
        by_model: dict[str, list[tuple[bool, np.ndarray]]] = {}
        for model, masked, blob in c.execute(
            "SELECT model_id, masked, vector FROM embeddings WHERE person_id = ?"
            " ORDER BY embedding_id",
            (person_id,),
        ):
            by_model.setdefault(model, []).append((bool(masked), np.frombuffer(blob, "<f4")))
        try:
            check_name(name, person_id)
            for model, rows in by_model.items():
                sizes = {v.shape[0] for _, v in rows}
                other = self._one(
                    "SELECT length(vector) FROM embeddings WHERE model_id = ? AND person_id != ?"
                    " LIMIT 1",
                    (model, person_id),
                )
                if other:
                    sizes.add(other // 4)
                if len(sizes) > 1:
                    raise RegistryError(
                        f"{person_id}: {model} embeddings of {sorted(sizes)} values; "
                        "one model makes one size"
                    )
                SyncPerson.model_validate(
                    {
                        "person_id": person_id,
                        "name": name,
                        "embeddings": [
                            {"model_id": model, "masked": m, "vector": v.tolist()} for m, v in rows
                        ],
                    }
                )
                ready = [ReadyEmbedding(model, v, m) for m, v in rows]
                check_embeddings(ready, model, sizes.pop())
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise RegistryError(
                f"{person_id}: a door would refuse this person ({where}: {first['msg']})"
            ) from None
        except (StoreError, EnrollmentError) as err:
            raise RegistryError(f"{person_id}: a door would refuse this person ({err})") from None

    def _join(self, c: sqlite3.Connection, person_id: str, groups: Iterable[str]) -> None:
        for g in groups:
            self._ensure_group(c, g)
            c.execute(
                "INSERT OR IGNORE INTO person_groups (person_id, group_name) VALUES (?, ?)",
                (person_id, g),
            )

    def _ensure_group(self, c: sqlite3.Connection, group: str) -> None:
        check_id(group, "group")
        c.execute(
            "INSERT OR IGNORE INTO groups (name, created) VALUES (?, ?)", (group, time.time())
        )

    def persons(self) -> list[dict[str, Any]]:
        out = []
        for pid, name in self._conn.execute(
            "SELECT person_id, name FROM persons ORDER BY person_id"
        ).fetchall():
            groups = [
                r[0]
                for r in self._conn.execute(
                    "SELECT group_name FROM person_groups WHERE person_id = ? ORDER BY 1", (pid,)
                )
            ]
            models = dict(
                self._conn.execute(
                    "SELECT model_id, COUNT(*) FROM embeddings WHERE person_id = ? GROUP BY 1",
                    (pid,),
                ).fetchall()
            )
            out.append({"person_id": pid, "name": name, "groups": groups, "embeddings": models})
        return out

    def photos(self, person_id: str) -> list[bytes]:
        return [
            r[0]
            for r in self._conn.execute(
                "SELECT data FROM photos WHERE person_id = ? ORDER BY photo_id", (person_id,)
            )
        ]

    def has_person(self, person_id: str) -> bool:
        return bool(self._one("SELECT 1 FROM persons WHERE person_id = ?", (person_id,)))

    # -- groups and doors ----------------------------------------------------------------------

    def grant(self, group: str, doors: Iterable[str]) -> None:
        """Let `group` through these doors."""
        with self._write(f"grant {group}") as c:
            self._ensure_group(c, group)
            for d in doors:
                self._need_door(d)
                c.execute(
                    "INSERT OR IGNORE INTO door_groups (device_id, group_name) VALUES (?, ?)",
                    (d, group),
                )

    def revoke_group(self, group: str, doors: Iterable[str]) -> None:
        with self._write(f"revoke {group}") as c:
            for d in doors:
                self._need_door(d)
                c.execute(
                    "DELETE FROM door_groups WHERE device_id = ? AND group_name = ?", (d, group)
                )

    def _need_door(self, device_id: str) -> None:
        if not self._one("SELECT 1 FROM doors WHERE device_id = ?", (device_id,)):
            raise RegistryError(f"no door {device_id!r} in the registry (door add first)")

    def add_door(self, device_id: str, model_id: str, groups: Iterable[str] = ()) -> None:
        check_id(device_id, "device id")
        check_id(model_id, "model id")
        with self._write(f"add door {device_id}") as c:
            c.execute(
                "INSERT INTO doors (device_id, model_id, added) VALUES (?, ?, ?)",
                (device_id, model_id, time.time()),
            )
            for g in groups:
                self._ensure_group(c, g)
                c.execute(
                    "INSERT INTO door_groups (device_id, group_name) VALUES (?, ?)",
                    (device_id, g),
                )

    def add_doors(self, doors: Sequence[tuple[str, str, Sequence[str]]]) -> None:
        """Many doors in one transaction (a site roll-out, the simulator)."""
        now = time.time()
        with self._write(f"add {len(doors)} doors") as c:
            for device_id, model_id, groups in doors:
                check_id(device_id, "device id")
                c.execute(
                    "INSERT INTO doors (device_id, model_id, added) VALUES (?, ?, ?)",
                    (device_id, model_id, now),
                )
                for g in groups:
                    self._ensure_group(c, g)
                    c.execute(
                        "INSERT INTO door_groups (device_id, group_name) VALUES (?, ?)",
                        (device_id, g),
                    )

    def doors(self) -> list[DoorRow]:
        groups: dict[str, list[str]] = {}
        for d, g in self._conn.execute("SELECT device_id, group_name FROM door_groups ORDER BY 2"):
            groups.setdefault(d, []).append(g)
        rows = self._conn.execute(
            "SELECT device_id, model_id, online, last_seen, state_version, state_hash,"
            " state_count, state_time, confirmed_hash, confirmed_time, flagged, flagged_time,"
            " last_event FROM doors ORDER BY device_id"
        ).fetchall()
        return [DoorRow(r[0], r[1], tuple(groups.get(r[0], ())), bool(r[2]), *r[3:]) for r in rows]

    # -- what each door should hold ------------------------------------------------------------

    def expectations(self) -> dict[str, tuple[str, dict[str, ExpectedPerson]]]:
        """device id -> (model id, {person id: ExpectedPerson}) for every door, in one read."""
        conn = self._conn
        conn.execute("BEGIN")
        try:
            names = dict(conn.execute("SELECT person_id, name FROM persons"))
            members: dict[str, set[str]] = {}
            for pid, g in conn.execute("SELECT person_id, group_name FROM person_groups"):
                members.setdefault(g, set()).add(pid)
            embs: dict[tuple[str, str], list[StoredEmbedding]] = {}
            for pid, model, masked, blob in conn.execute(
                "SELECT person_id, model_id, masked, vector FROM embeddings ORDER BY embedding_id"
            ):
                vec = np.frombuffer(blob, dtype="<f4")
                embs.setdefault((pid, model), []).append(StoredEmbedding(model, bool(masked), vec))
            door_groups: dict[str, set[str]] = {}
            for d, g in conn.execute("SELECT device_id, group_name FROM door_groups"):
                door_groups.setdefault(d, set()).add(g)
            doors = conn.execute("SELECT device_id, model_id FROM doors").fetchall()
        finally:
            conn.execute("COMMIT")
        out: dict[str, tuple[str, dict[str, ExpectedPerson]]] = {}
        cache: dict[tuple[str, str], ExpectedPerson] = {}
        for device_id, model in doors:
            persons: dict[str, ExpectedPerson] = {}
            for g in door_groups.get(device_id, ()):
                for pid in members.get(g, ()):
                    if pid in persons or (pid, model) not in embs:
                        continue  # no embedding for this door's model: nothing to send it
                    if (pid, model) not in cache:
                        cache[(pid, model)] = ExpectedPerson(
                            pid, names[pid], tuple(embs[(pid, model)])
                        )
                    persons[pid] = cache[(pid, model)]
            out[device_id] = (model, persons)
        return out

    # -- what doors report (written by the fleet service) -------------------------------------

    def known_hashes(self, device_id: str) -> set[str]:
        return {
            r[0]
            for r in self._conn.execute(
                "SELECT hash FROM door_hashes WHERE device_id = ?", (device_id,)
            )
        }

    def record(
        self,
        states: Sequence[dict[str, Any]] = (),
        events: Sequence[dict[str, Any]] = (),
        hashes: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A batch from the fleet service: door states, events/audit records, sent hashes."""
        if not (states or events or hashes):
            return
        now = time.time()
        with self._write("record door reports", bump=False) as c:
            for s in states:
                c.execute(
                    "UPDATE doors SET online = :online, last_seen = :last_seen,"
                    " state_version = :version, state_hash = :hash, state_count = :count,"
                    " state_time = :state_time, confirmed_hash = :confirmed_hash,"
                    " confirmed_time = :confirmed_time, flagged = :flagged,"
                    " flagged_time = :flagged_time, last_event = COALESCE(:last_event, last_event)"
                    " WHERE device_id = :device_id",
                    s,
                )
            for e in events:
                c.execute(
                    "INSERT OR IGNORE INTO events (event_id, device_id, time, kind, person,"
                    " decision, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        e["event_id"],
                        e["device_id"],
                        e["time"],
                        e["kind"],
                        e.get("person"),
                        e.get("decision"),
                        json.dumps(e["body"], sort_keys=True),
                    ),
                )
            for device_id, h in hashes:
                c.execute(
                    "INSERT OR REPLACE INTO door_hashes (device_id, hash, time) VALUES (?, ?, ?)",
                    (device_id, h, now),
                )
            for device_id in {d for d, _ in hashes}:
                # The newest few, and always the set the door last reported: a door offline
                # through many changes comes back holding it, and is behind, not tampered with.
                c.execute(
                    "DELETE FROM door_hashes WHERE device_id = ? AND hash NOT IN (SELECT hash"
                    " FROM door_hashes WHERE device_id = ? ORDER BY time DESC LIMIT ?)"
                    " AND hash IS NOT (SELECT state_hash FROM doors WHERE device_id = ?)",
                    (device_id, device_id, KNOWN_HASHES_KEPT, device_id),
                )

    def events(
        self,
        since: float | None = None,
        door: str | None = None,
        person: str | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        sql = "SELECT time, device_id, kind, person, decision, body FROM events WHERE 1 = 1"
        args: list[Any] = []
        if since is not None:
            sql += " AND time >= ?"
            args.append(since)
        if door is not None:
            sql += " AND device_id = ?"
            args.append(door)
        if person is not None:
            sql += " AND person = ?"
            args.append(person)
        sql += " ORDER BY time DESC LIMIT ?"  # the newest `limit`, printed oldest first
        args.append(limit)
        rows = self._conn.execute(sql, args).fetchall()
        return [
            {
                "time": t,
                "device_id": d,
                "kind": k,
                "person": p,
                "decision": dec,
                "body": json.loads(b),
            }
            for t, d, k, p, dec, b in reversed(rows)
        ]

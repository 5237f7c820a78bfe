"""The template set as the hash and the gallery see it, and its canonical content hash."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

_HASH_DOMAIN = b"maskgate-template-set/1\n"


@dataclass(frozen=True)
class Row:
    """A decrypted template as the hash and the gallery see it."""

    template_id: int
    model_id: str
    masked: bool
    synthetic: bool
    embedding: np.ndarray  # read-only little-endian float32


@dataclass(frozen=True)
class Person:
    name: str | None
    created: float
    updated: float
    rows: tuple[Row, ...] = field(default=())


def lp(data: bytes | str) -> bytes:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return struct.pack(">I", len(raw)) + raw


def content_hash(persons: Mapping[str, Person], model_id: str | None = None) -> str:
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
        name = b"\x00" if person.name is None else b"\x01" + lp(person.name)
        h.update(b"P" + lp(person_id) + name + struct.pack(">I", len(rows)))
        keyed = [
            (r.model_id.encode(), r.masked, r.synthetic, r.embedding.tobytes(), r) for r in rows
        ]
        for model, masked, synthetic, emb, r in sorted(keyed, key=lambda k: k[:4]):
            h.update(b"T" + lp(model) + bytes([masked, synthetic]))
            h.update(struct.pack(">I", r.embedding.shape[0]) + emb)
    return h.hexdigest()


def model_dims(persons: Mapping[str, Person], skip: str | None = None) -> dict[str, int]:
    return {
        r.model_id: r.embedding.shape[0]
        for pid, p in persons.items()
        if pid != skip
        for r in p.rows
    }

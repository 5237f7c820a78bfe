"""What a door should hold, as the door itself would hash it, and the requests that make it so.

The expected hash is computed with the door's own code: each embedding goes through
`edge.enroll.check_embeddings` (the door's normalisation of a server's embedding) and the set
through `edge.store.content.content_hash`, filtered to the door's model as its state is.
So "the door's retained hash equals the expected hash" means the door holds exactly these
persons, names and embeddings — nothing more (a revoked person), nothing less.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge.enroll import ReadyEmbedding, check_embeddings
from edge.store.content import Person, Row, content_hash
from fleet.registry import ExpectedPerson

MAX_CACHED_PERSONS = 200_000


def _vector_list(v: np.ndarray) -> list[float]:
    # float32 -> Python float is exact, and its repr round-trips: the door parses the same bits.
    return [float(x) for x in v]


def embedding_payload(p: ExpectedPerson) -> list[dict[str, Any]]:
    return [
        {"model_id": e.model_id, "vector": _vector_list(e.vector), "masked": e.masked}
        for e in p.embeddings
    ]


def enroll_payload(p: ExpectedPerson) -> dict[str, Any]:
    return {
        "person_id": p.person_id,
        "name": p.name,
        "embeddings": embedding_payload(p),
        "replace": True,
    }


def sync_payload(persons: Mapping[str, ExpectedPerson]) -> dict[str, Any]:
    return {
        "persons": [
            {"person_id": p.person_id, "name": p.name, "embeddings": embedding_payload(p)}
            for _, p in sorted(persons.items())
        ]
    }


def door_person(p: ExpectedPerson, model_id: str) -> Person:
    """The person as the door's store will hold it after an enroll or sync from the fleet."""
    ready = [ReadyEmbedding(e.model_id, e.vector, e.masked) for e in p.embeddings]
    dim = p.embeddings[0].vector.shape[0]
    templates = check_embeddings(ready, model_id, dim)
    rows = tuple(
        Row(i, t.model_id, t.masked, t.synthetic, np.ascontiguousarray(t.embedding, "<f4"))
        for i, t in enumerate(templates)
    )
    return Person(p.name, 0.0, 0.0, rows)


def person_digest(p: ExpectedPerson) -> str:
    """Identifies one version of a person (name and embeddings): what changed since last time."""
    return p.digest


class HashCache:
    """Door-side Person objects per person version, so a hash over hundreds of persons costs
    sorting and hashing only (no re-normalisation) when one person changes."""

    def __init__(self) -> None:
        self._persons: dict[tuple[str, str], Person] = {}

    def person(self, p: ExpectedPerson, model_id: str) -> Person:
        key = (person_digest(p), model_id)
        got = self._persons.get(key)
        if got is None:
            if len(self._persons) > MAX_CACHED_PERSONS:
                self._persons.clear()  # old versions of changed persons; rebuilt on demand
            got = self._persons[key] = door_person(p, model_id)
        return got

    def hash(self, persons: Mapping[str, ExpectedPerson], model_id: str) -> str:
        return content_hash({pid: self.person(p, model_id) for pid, p in persons.items()}, model_id)

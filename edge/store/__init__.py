"""The door's template store: encrypted embeddings in one SQLite file in the state directory.

File (schema v1, kept in PRAGMA user_version; WAL, synchronous=FULL, secure_delete=ON):
  meta(key, value)        store_id (16 random bytes), key_check, seal
  persons(person_id, name, created, updated)
  templates(template_id, person_id, model_id, dim, masked, synthetic, source,
            embedding, crop, created)

One file per concern: `records` (what it holds and reports), `keys` (the AES key file or
systemd credential), `checks` (input rules), `content` (the canonical content hash),
`schema` (tables and migrations), `sealing` (AES-GCM blobs bound to their rows, the seal over
the set) and `store` (the Store itself). Person ids, model ids, sources, flags and timestamps
are plaintext: person ids should therefore be opaque ids, not names.
"""

from edge.store.keys import load_key
from edge.store.records import PersonInfo, PersonNotFound, StoreError, StoreState, Template
from edge.store.schema import SCHEMA_VERSION
from edge.store.store import Store

__all__ = [
    "SCHEMA_VERSION",
    "PersonInfo",
    "PersonNotFound",
    "Store",
    "StoreError",
    "StoreState",
    "Template",
    "load_key",
]

"""Crash-test child: writes batches into a template store until it is killed.

Usage: store_writer.py DB KEY_FILE RUN SEED

Prints "READY" once the store is open, then for each batch "BEGIN <pid> <n> <gen>" before the
write and "ACK <pid> <n> <gen>" only after Store.enroll returned, each line flushed. A batch is
one person with n templates, all with source "<pid>#<gen>"; every third batch replaces an
earlier person of this run, so interrupted replacements are exercised too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edge.store import Store, Template, load_key

DIM = 128


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    db, key_file, run, seed = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    rng = np.random.default_rng(seed)
    store = Store(db, load_key(key_file, None))
    _say("READY")
    made: list[str] = []
    for i in range(1_000_000):
        if i % 3 == 2:
            pid, replace = made[int(rng.integers(len(made)))], True
        else:
            pid, replace = f"r{run}-{i}", False
            made.append(pid)
        n = 1 + int(rng.integers(6))
        vectors = rng.normal(size=(n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        # Random "JPEG" crops of a few KB spill into SQLite overflow pages.
        crop = b"\xff\xd8" + rng.bytes(int(rng.integers(1000, 6000)))
        source = f"{pid}#{i}"
        templates = [
            Template(v, "m", bool(j % 2), False, source, crop) for j, v in enumerate(vectors)
        ]
        _say(f"BEGIN {pid} {n} {i}")
        store.enroll(pid, None, templates, replace=replace)
        _say(f"ACK {pid} {n} {i}")


if __name__ == "__main__":
    main()

"""Crash-test child: claims nonces in a replay ledger until it is killed.

Usage: nonce_claimer.py DB RUN

Prints "READY" once the ledger is open, then for each nonce "TRY <nonce>" before the claim and
"ACK <nonce>" only after the claim returned FRESH, each line flushed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from edge.mqtt.nonces import Claim, NonceLedger


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    db, run = Path(sys.argv[1]), int(sys.argv[2])
    ledger = NonceLedger(db)
    _say("READY")
    for i in range(1_000_000):
        nonce = f"{run:08x}{i:08x}"
        _say(f"TRY {nonce}")
        if ledger.claim(nonce, keep_until=1e12, now=1.0) is not Claim.FRESH:
            raise SystemExit(f"{nonce} was not fresh")
        _say(f"ACK {nonce}")


if __name__ == "__main__":
    main()

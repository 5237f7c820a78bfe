"""The replay ledger on a real SQLite file: durable, bounded, pruned, and crash-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.mqtt.nonces import Claim, LedgerError, NonceLedger

REPO_ROOT = Path(__file__).resolve().parent.parent
CLAIMER = REPO_ROOT / "tests" / "helpers" / "nonce_claimer.py"


def test_claims_survive_reopening_and_hex_case_does_not_matter(tmp_path: Path) -> None:
    ledger = NonceLedger(tmp_path / "n.db", clock=lambda: 100.0)
    assert ledger.claim("ab" * 8, keep_until=200.0, now=100.0) is Claim.FRESH
    assert ledger.claim("AB" * 8, keep_until=200.0, now=101.0) is Claim.REPLAYED
    ledger.close()
    again = NonceLedger(tmp_path / "n.db", clock=lambda: 150.0)
    assert again.created == 100.0  # the first start, not this one
    assert again.claim("ab" * 8, keep_until=200.0, now=150.0) is Claim.REPLAYED
    assert len(again) == 1


def test_bounded_then_pruned_and_a_pruned_nonce_stays_refused(tmp_path: Path) -> None:
    ledger = NonceLedger(tmp_path / "n.db", max_live=3, clock=lambda: 0.0)
    for i in range(3):
        assert ledger.claim(f"{i:016x}", keep_until=100.0, now=0.0) is Claim.FRESH
    assert ledger.claim("f" * 16, keep_until=100.0, now=1.0) is Claim.TOO_MANY
    assert ledger.claim(f"{1:016x}", keep_until=100.0, now=1.0) is Claim.REPLAYED
    # Later the old nonces have expired: full means prune, and the new one fits.
    assert ledger.claim("f" * 16, keep_until=300.0, now=200.0) is Claim.FRESH
    assert len(ledger) == 1 and ledger.forgotten_until == 100.0
    ledger.close()
    # A clock set back cannot revive a forgotten nonce: its expiry is within the watermark.
    again = NonceLedger(tmp_path / "n.db", clock=lambda: 50.0)
    assert again.claim(f"{0:016x}", keep_until=100.0, now=50.0) is Claim.FORGOTTEN


def test_a_damaged_ledger_is_set_aside_and_a_new_one_refuses_older_requests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "n.db"
    path.write_bytes(b"this is not a database" * 100)
    ledger = NonceLedger(path, clock=lambda: 500.0)
    assert ledger.created == 500.0  # requests issued before now are refused by the verifier
    assert ledger.claim("ab" * 8, keep_until=600.0, now=500.0) is Claim.FRESH
    assert list(tmp_path.glob("n.db.damaged-*")), "the damaged file is kept for inspection"
    assert "damaged" in caplog.text


def test_an_unwritable_ledger_refuses_instead_of_acting(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores file modes: make the write fail by closing the file under the ledger
        ledger = NonceLedger(tmp_path / "n.db")
        ledger._db.close()
    else:
        ledger = NonceLedger(tmp_path / "n.db")
        (tmp_path / "n.db").chmod(0o400)
        ledger.close()
        ledger = NonceLedger(tmp_path / "n.db")
    with pytest.raises(LedgerError, match="cannot record the request's nonce"):
        ledger.claim("cd" * 8, keep_until=1e12, now=1.0)


def test_sigkill_during_claims_never_loses_an_acknowledged_nonce(tmp_path: Path) -> None:
    """A claim that returned FRESH is on disk: after any kill it is refused as a replay."""
    db = tmp_path / "n.db"
    rng = np.random.default_rng(7)
    acknowledged: list[str] = []
    for run in range(20):
        proc = subprocess.Popen(
            [sys.executable, str(CLAIMER), str(db), str(run)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        target = int(rng.integers(5, 60))
        seen = 0
        for line in proc.stdout:
            kind, nonce = line.split()
            if kind == "ACK":
                acknowledged.append(nonce)
                seen += 1
            if seen >= target:
                break
        proc.send_signal(signal.SIGKILL)  # somewhere inside a claim, or between two
        proc.wait(10)
        proc.stdout.close()
    ledger = NonceLedger(db)
    assert len(acknowledged) >= 20 * 5
    for nonce in acknowledged:
        assert ledger.claim(nonce, keep_until=1e12, now=1.0) is Claim.REPLAYED, nonce

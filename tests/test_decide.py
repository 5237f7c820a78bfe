"""The unlock policy, frame by frame, on a controlled clock."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import DecisionConfig, LivenessConfig
from edge.decide import Decider, Observation
from edge.liveness import LivenessSample, LivenessTracker, eye_aspect_ratio


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def obs(clock: Clock, person: str | None, score: float = 0.6, yaw: float = 0.0) -> Observation:
    return Observation(
        t=clock.t,
        person=person,
        best=person or "someone",
        score=score,
        threshold=0.42,
        masked=False,
        yaw=yaw,
    )


def run(dec: Decider, clock: Clock, people: list[str | None], yaws=None, dt: float = 0.1):
    out = []
    for i, p in enumerate(people):
        clock.t += dt
        out += dec.observe(obs(clock, p, yaw=(yaws[i] if yaws else 0.0)))
    return out


NO_LIVENESS = LivenessConfig(enabled=False)


def test_k_of_n_unlocks_once() -> None:
    clock = Clock()
    dec = Decider(DecisionConfig(k=3, n=5), NO_LIVENESS, clock)
    out = run(dec, clock, ["ann", None, "ann", "ann"])
    assert [d.decision for d in out] == ["unlock"]
    assert out[0].person == "ann" and out[0].frames == 4 and out[0].liveness == "disabled"
    # Still in front of the camera during the cooldown: no second pulse.
    assert run(dec, clock, ["ann"] * 6) == []


def test_votes_must_be_for_the_same_person() -> None:
    clock = Clock()
    dec = Decider(DecisionConfig(k=3, n=5), NO_LIVENESS, clock)
    out = run(dec, clock, ["ann", "bob", "ann", "bob", None])
    assert [d.decision for d in out] == ["deny"]


def test_stranger_is_denied_once_per_attempt_then_locked_out_growing() -> None:
    clock = Clock()
    cfg = DecisionConfig(k=3, n=5, lockout_after=2, lockout_s=30, lockout_max_s=50, attempt_gap_s=2)
    dec = Decider(cfg, NO_LIVENESS, clock)
    assert [d.decision for d in run(dec, clock, [None] * 12)] == ["deny"]  # one attempt
    clock.t += 3  # the face left: the next frames are a new attempt
    out = run(dec, clock, [None] * 5)
    assert [d.decision for d in out] == ["deny", "lockout"]
    assert "30 s" in out[1].reason and dec.locked_out()
    # Even the right person is ignored during a lockout.
    assert run(dec, clock, ["ann"] * 5) == []
    clock.t += 31
    run(dec, clock, [None] * 5)
    clock.t += 3
    out = run(dec, clock, [None] * 5)
    assert out[-1].decision == "lockout" and "50 s" in out[-1].reason  # doubled, capped at 50


def test_unlock_resets_failures() -> None:
    clock = Clock()
    dec = Decider(DecisionConfig(k=2, n=3, lockout_after=2, attempt_gap_s=1), NO_LIVENESS, clock)
    run(dec, clock, [None] * 3)
    assert dec.failures == 1
    clock.t += 2
    assert run(dec, clock, ["ann", "ann"])[0].decision == "unlock"
    assert dec.failures == 0


def test_liveness_needs_movement_before_unlock() -> None:
    clock = Clock()
    live = LivenessConfig(enabled=True, window_s=2.0, min_yaw_change_deg=8)
    dec = Decider(DecisionConfig(k=3, n=5), live, clock)
    # A still face (a photo) matches but never moves: pending, then denied once the window passed.
    out = run(dec, clock, ["ann"] * 30, yaws=[2.0] * 30)
    assert [d.decision for d in out] == ["deny"]
    assert "liveness" in out[0].reason and out[0].liveness == "pending"
    clock.t += 5
    out = run(dec, clock, ["ann"] * 4, yaws=[0.0, 5.0, 10.0, 12.0])
    assert [d.decision for d in out] == ["unlock"] and out[0].liveness == "movement"


def test_blink_detection_from_eye_aspect_ratio() -> None:
    tracker = LivenessTracker(LivenessConfig(enabled=True, window_s=3.0, blink_ratio=0.6))
    t = 0.0
    for ear in [0.30, 0.31, 0.30, 0.12, 0.10, 0.29, 0.30]:
        t += 0.05
        tracker.add(LivenessSample(t, ear, 0.0))
    assert tracker.status(t) == "blink"
    assert tracker.status(t + 3.5) == "pending"  # outside the window


def test_eyes_closed_for_long_is_not_a_blink() -> None:
    tracker = LivenessTracker(LivenessConfig(enabled=True, window_s=5.0))
    t = 0.0
    for ear in [0.3] * 3 + [0.1] * 40 + [0.3]:
        t += 0.05
        tracker.add(LivenessSample(t, ear, 0.0))
    assert tracker.status(t) == "pending"


def test_eye_aspect_ratio_on_a_real_mesh(processed) -> None:
    r = processed("face_recognition/obama.jpg")
    assert r.face.mesh is not None
    ear = eye_aspect_ratio(r.face.mesh.points)
    assert 0.15 < ear < 0.5  # open eyes
    squeezed = r.face.mesh.points.copy()
    for upper, lower in ((160, 144), (158, 153), (385, 380), (387, 373)):
        mid = (squeezed[upper] + squeezed[lower]) / 2
        squeezed[upper] = squeezed[lower] = mid
    assert eye_aspect_ratio(squeezed) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(ear)


def test_one_unlock_per_visit_and_cooldown_on_return() -> None:
    clock = Clock()
    dec = Decider(DecisionConfig(k=2, n=3, cooldown_s=10, attempt_gap_s=1), NO_LIVENESS, clock)
    assert [d.decision for d in run(dec, clock, ["ann"] * 2)] == ["unlock"]
    assert run(dec, clock, ["ann"] * 200) == []  # stays 20 s: still one unlock for this visit
    clock.t += 2  # leaves and comes back after the cooldown
    assert [d.decision for d in run(dec, clock, ["ann"] * 2)] == ["unlock"]
    clock.t += 2  # back again at once: within the cooldown, nothing
    assert run(dec, clock, ["ann"] * 5) == []

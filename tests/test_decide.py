"""The unlock policy, frame by frame, on a controlled clock."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge.config import DecisionConfig, LivenessConfig
from edge.decide import Decider, Observation
from edge.liveness import eye_aspect_ratio
from edge.track import Sighting
from edge.vision.facerender import rotation
from edge.vision.landmarks import Face


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


FACE = (np.random.default_rng(0).normal(size=128)).astype(np.float32)
FACE /= np.linalg.norm(FACE)


def obs(
    clock: Clock,
    person: str | None,
    score: float = 0.6,
    emb: np.ndarray = FACE,
    mesh: Face | None = None,
) -> Observation:
    points = mesh.points if mesh is not None else None
    return Observation(
        sighting=Sighting(clock.t, (200, 100, 200, 240), 0.0, 0.0, emb, points),
        person=person,
        best=person or "someone",
        score=score,
        threshold=0.42,
        masked=False,
        mesh=mesh,
    )


def run(dec: Decider, clock: Clock, people: list[str | None], meshes=None, dt: float = 0.1):
    out = []
    for i, p in enumerate(people):
        clock.t += dt
        out += dec.observe(obs(clock, p, mesh=meshes[i] if meshes else None))
    return out


NO_LIVENESS = LivenessConfig(enabled=False)


def test_k_of_n_unlocks_once() -> None:
    clock = Clock()
    dec = Decider(DecisionConfig(k=3, n=5), NO_LIVENESS, clock)
    out = run(dec, clock, ["ann", None, "ann", "ann"])
    assert [d.decision for d in out] == ["unlock"]
    assert out[0].person == "ann" and out[0].frames == 4
    assert out[0].liveness == "disabled parallax=0.000 eyes=1.00 cuts=0"
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


@pytest.fixture(scope="module")
def mesh(processed) -> Face:
    face = processed("face_recognition/obama.jpg").face.mesh
    assert face is not None
    return face


def turned(face: Face, yaw: float) -> Face:
    """The mesh of the same head turned by `yaw` degrees (points moved with their depth)."""
    c = np.array([*face.points.mean(0), face.depth.mean()])
    p = (np.column_stack([face.points, face.depth]) - c) @ rotation(yaw, 0, 0).T + c
    return Face(p[:, :2].astype(np.float32), p[:, 2].astype(np.float32), face.box, yaw, 0, 0)


def test_liveness_needs_3d_movement_on_one_track_before_unlock(mesh: Face) -> None:
    clock = Clock()
    dec = Decider(DecisionConfig(k=3, n=5), LivenessConfig(window_s=2.0), clock)
    # A still face (a photo) matches but never moves: pending, then denied once the window passed.
    out = run(dec, clock, ["ann"] * 30, meshes=[mesh] * 30)
    assert [d.decision for d in out] == ["deny"]
    assert "liveness" in out[0].reason
    assert out[0].liveness.startswith("none parallax=0.000 eyes=1.00 cuts=0"), out[0].liveness
    clock.t += 5  # a new visit: the head turns
    head = [turned(mesh, 12 * math.sin(i / 3)) for i in range(12)]
    out = run(dec, clock, ["ann"] * 12, meshes=head)
    assert [d.decision for d in out] == ["unlock"]
    assert out[0].liveness.startswith("3d-motion parallax=0.0"), out[0].liveness
    assert len(out[0].liveness) <= 64  # what the MQTT event schema allows


def other_photo(rng: np.random.Generator) -> np.ndarray:
    """The embedding of another photo of the same person: cosine 0.6 with FACE."""
    v = rng.normal(size=128)
    v -= v @ FACE * FACE
    v = 0.6 * FACE + 0.8 * v / np.linalg.norm(v)
    return v.astype(np.float32)


def test_a_cut_empties_the_votes_and_the_evidence(mesh: Face) -> None:
    clock = Clock()
    rng = np.random.default_rng(1)
    dec = Decider(DecisionConfig(k=3, n=5), LivenessConfig(window_s=2.0), clock)
    other = other_photo(rng)
    # Two matching frames of one photo, then the next photo: two more votes are not three.
    out = []
    for emb in (FACE, FACE, other, other):
        clock.t += 0.1
        out += dec.observe(obs(clock, "ann", emb=emb, mesh=mesh))
    assert out == [] and dec.cuts == 1
    clock.t += 0.1
    assert dec.observe(obs(clock, "ann", emb=other, mesh=mesh)) == []  # 3 votes, no liveness
    # One photo showing the head turned one way, the next the other way: the parallax lies
    # only across the cut, so neither track has any.
    clock.t += 5
    views = [(FACE, turned(mesh, -10))] * 6 + [(other, turned(mesh, 10))] * 6
    for emb, m in views:
        clock.t += 0.1
        assert dec.observe(obs(clock, "ann", emb=emb, mesh=m)) == []
    assert dec.cuts == 1 and dec.liveness.status(clock.t).kind == "none"


def test_a_slideshow_is_refused_over_the_visit_not_each_track(mesh: Face) -> None:
    """Photos swapped every second restart the track each time, yet the visit's window runs
    on: the door says no (and counts the failure) instead of waiting for ever."""
    clock = Clock()
    dec = Decider(DecisionConfig(k=3, n=5), LivenessConfig(window_s=2.0), clock)
    rng = np.random.default_rng(2)
    out = []
    for _ in range(4):
        emb = other_photo(rng)
        for _ in range(10):
            clock.t += 0.1
            out += dec.observe(obs(clock, "ann", emb=emb, mesh=mesh))
    assert [d.decision for d in out] == ["deny"]
    assert "liveness" in out[0].reason and out[0].liveness.endswith("cuts=2"), out[0]
    assert dec.failures == 1


def test_a_face_unseen_for_half_a_second_is_a_new_track(mesh: Face) -> None:
    clock = Clock()
    dec = Decider(DecisionConfig(k=3, n=5), LivenessConfig(window_s=2.0), clock)
    run(dec, clock, ["ann"] * 2, meshes=[mesh] * 2)
    for _ in range(7):  # 0.7 s without a face: the same visit (attempt_gap_s 3 s), a new track
        clock.t += 0.1
        dec.no_face(clock.t)
    assert dec.cuts == 1 and len(dec._window) == 0
    run(dec, clock, ["ann"] * 2, meshes=[mesh] * 2)
    assert dec.cuts == 1


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

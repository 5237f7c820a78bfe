"""Where the face is: the mesh's largest face, cross-checked by the second detector.

The mesh gives 478 points (liveness and the tight crop need them) and its 5 alignment points;
YuNet gives a box and 5 points of its own. When both see the face and their 5 points disagree
by more than `max_disagreement` eye distances, the mesh was fitted badly (it happens on heavily
masked faces) and YuNet's points align the face; when only YuNet sees it, YuNet's box and points
are used. On mfr2-dev this took masked-vs-unmasked TAR@FAR=1e-2 from 0.938 to 0.975, the EER
from 5.0 % to 1.9 %, and the masked images the pipeline failed on from 7 (3 with retries) to 0
of 85.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge.vision.align import five_points
from edge.vision.detector import Detection, YuNetDetector
from edge.vision.landmarks import Face, MeshBackend


@dataclass(frozen=True)
class FaceLocation:
    box: tuple[int, int, int, int]  # x, y, w, h: the tight face box
    five: np.ndarray  # (5, 2) alignment points in ArcFace template order
    yaw: float
    pitch: float
    mesh: Face | None  # None when only the detector found the face
    source: str  # "mesh", "detector" (mesh misfitted) or "detector-only"
    faces_seen: int = 1  # faces either model saw in the frame (enrollment wants exactly one)

    @property
    def width(self) -> int:
        return self.box[2]


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance between two 5-point sets, in units of b's eye distance."""
    eye = float(np.linalg.norm(b[0] - b[1]))
    return float(np.linalg.norm(a - b, axis=1).mean() / max(eye, 1e-6))


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def yaw_from_five(p: np.ndarray) -> float:
    """Rough yaw from how far the nose tip sits from the eyes' midline (no head-pose matrix)."""
    eye = float(np.linalg.norm(p[1] - p[0]))
    offset = float(p[2, 0] - (p[0, 0] + p[1, 0]) / 2) / max(eye, 1e-6)
    return math.degrees(math.asin(max(-1.0, min(1.0, offset / 0.55))))


def _from_detection(d: Detection, seen: int) -> FaceLocation:
    return FaceLocation(
        d.box, d.points, yaw_from_five(d.points), 0.0, None, "detector-only", max(seen, 1)
    )


# A check whose points disagree by more than this share of `max_disagreement` leaves a doubt:
# the next frame is checked too. Well-fitted meshes sit at 0.06-0.14 eye distances from
# YuNet's points on rendered live clips (bare and masked), misfits above 0.3.
DOUBT = 0.75


class CrossCheck:
    """When the second detector looks on the camera stream (video mode).

    A mesh tracked from frame to frame that the detector found well fitted stays so from one
    frame to the next: the detector checks a continuing track every `every` frames, and at
    once when there is no mesh, the mesh's box jumped (the mesh was found afresh, or another
    face), time jumped, or the last check had a doubt (the mesh misfitted or near
    `max_disagreement`, the detector did not see the mesh's face, or saw a larger one). Still
    photos are always cross-checked.
    """

    MIN_IOU = 0.5  # the mesh box overlaps the last frame's at least this much on one track

    def __init__(self, every: int, max_gap_s: float) -> None:
        self.every = every
        self.max_gap_ms = max_gap_s * 1000.0  # a longer gap is a new track (decision.track)
        self._since: int | None = None  # frames since the last check; None: check now
        self._box: tuple[int, int, int, int] | None = None
        self._t: int | None = None

    def due(self, faces: list[Face], timestamp_ms: int | None) -> bool:
        if not faces or self._since is None or self._since + 1 >= self.every:
            return True
        if timestamp_ms is None or self._t is None:
            return True
        dt = timestamp_ms - self._t
        if dt <= 0 or dt > self.max_gap_ms:
            return True
        return self._box is None or _iou(faces[0].box, self._box) < self.MIN_IOU

    def update(self, box: tuple[int, int, int, int] | None, t: int | None, checked: bool,
               doubt: bool) -> None:  # fmt: skip
        self._box, self._t = box, t
        if box is None or doubt:
            self._since = None
        elif checked:
            self._since = 0
        elif self._since is not None:
            self._since += 1


class FrameDetections:
    """The detector's faces in one frame, computed on the first ask only: the mesh may need
    them to start a track (edge/vision/mesh_litert.py) and the cross-check to judge it."""

    def __init__(self, detector: YuNetDetector | None, image: np.ndarray) -> None:
        self._detector, self._image = detector, image
        self.result: list[Detection] | None = None

    def __call__(self) -> list[Detection]:
        if self.result is None:
            self.result = self._detector.detect(self._image) if self._detector else []
        return self.result


def locate(
    image: np.ndarray,
    landmarker: MeshBackend,
    detector: YuNetDetector | None,
    max_disagreement: float,
    timestamp_ms: int | None = None,
    cross: CrossCheck | None = None,
) -> FaceLocation | None:
    """The largest face, or None when neither model finds one. `cross`: the camera stream's
    schedule for the detector (None: it looks at every image)."""
    seeds = FrameDetections(detector, image)
    faces = landmarker.detect(image, timestamp_ms, seeds)
    # A detection the mesh already asked for is a check that costs nothing more.
    checked = detector is not None and (
        seeds.result is not None or cross is None or cross.due(faces, timestamp_ms)
    )
    dets = seeds() if checked else []
    seen = max(len(faces), len(dets))
    if not faces:
        if cross is not None:
            cross.update(None, timestamp_ms, checked, True)
        return _from_detection(dets[0], seen) if dets else None
    mesh = faces[0]
    # A detector face that is clearly larger than the mesh's face is the real largest face.
    if (
        dets
        and dets[0].box[2] * dets[0].box[3] > 2.0 * mesh.box[2] * mesh.box[3]
        and _iou(dets[0].box, mesh.box) < 0.3
    ):
        if cross is not None:
            cross.update(mesh.box, timestamp_ms, checked, True)
        return _from_detection(dets[0], seen)
    mesh5 = five_points(mesh.points, mesh.mirrored)
    source, five = "mesh", mesh5
    match = max(dets, key=lambda d: _iou(d.box, mesh.box), default=None)
    doubt = checked
    if match is not None and _iou(match.box, mesh.box) > 0.2:
        gap = disagreement(mesh5, match.points)
        doubt = gap > DOUBT * max_disagreement
        if gap > max_disagreement:
            source, five = "detector", match.points
    if cross is not None:
        cross.update(mesh.box, timestamp_ms, checked, doubt)
    return FaceLocation(mesh.box, five, mesh.yaw, mesh.pitch, mesh, source, seen)

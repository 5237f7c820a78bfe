"""Face mesh run directly with LiteRT: `landmarks.type: litert` (the default).

The FaceLandmarker bundle's own mesh model (face_landmarks_detector.tflite: 478 points with
irises, and a presence score) is run alone on a crop of the frame, without the Tasks graph
around it, which cost more than the model itself (issue 9: the landmark stage 10.5 → 3.9 ms p50
on a photo folder, peak RSS of `edge bench` 317 → 270 MB).

Where the crop (ROI) comes from follows MediaPipe's own rules. A new face (a still photo, a new
track, a track whose presence score fell below the floor): the cross-check detector's face
(YuNet; locate() hands the same detection to the cross-check, so one call serves both), mapped
onto the ROI the tracker would give it, then once more from the mesh found there. A continuing
track: the previous frame's mesh, its points' box turned so the eye corners 33 → 263 lie level,
square on the long side, ×1.5. The crop is warped to the model's input, normalised as the
manifest says, and the points mapped back to the frame. Head pose: MediaPipe's geometry
pipeline (a pinhole camera, depth estimated in two rounds, a weighted Procrustes fit of the
bundle's canonical face).
"""

from __future__ import annotations

import logging
import math
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.manifest import InputSpec, ManifestError
from edge.nativelog import quiet_native_logs
from edge.vision.detector import Detection
from edge.vision.landmarks import Face, Seeds, face_box, pose_from_rotation
from edge.vision.onnx_session import normalise

log = logging.getLogger(__name__)

MESH_MEMBER = "face_landmarks_detector.tflite"
GEOMETRY_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"
POINTS = 478
ROI_SCALE = 1.5  # MediaPipe: the face's rect ×1.5, square on its long side
EYE_CORNERS = (33, 263)  # MediaPipe's rotation keypoints from landmarks to the next frame's ROI
# YuNet's box is not BlazeFace's, for which MediaPipe's ×1.5 was made: on 110 unmasked faces
# (lfw-subset and the registry test photos, not the evaluation set) the tracker's ROI was
# max(w, h) / 0.738 of YuNet's box (IQR 0.039), centred 0.041 of its side below the box's
# centre (sd 0.013). ROIs ×1.5 of YuNet's box lost the mesh on 37 of mfr2-dev's 133 faces.
DETECTOR_BOX_TO_ROI = 1 / 0.738
DETECTOR_ROI_DROP = 0.041
MIN_ROI_PX = 8.0  # a smaller crop holds no face the quality gates would pass
# MediaPipe's face geometry assumes a pinhole camera with this vertical field of view and near
# plane when it turns screen points into metric ones for the pose fit.
CAMERA_FOV_Y_DEG = 63.0
CAMERA_NEAR = 1.0


class LiteRTUnavailable(ManifestError):
    """The LiteRT runtime (package ai-edge-litert) is not installed."""


@dataclass(frozen=True)
class Roi:
    """A square crop of the frame: centre, side (pixels) and angle (radians, its x axis)."""

    cx: float
    cy: float
    side: float
    angle: float

    @classmethod
    def from_points(cls, pts: np.ndarray) -> Roi:
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        dx, dy = pts[EYE_CORNERS[1]] - pts[EYE_CORNERS[0]]
        side = ROI_SCALE * max(x1 - x0, y1 - y0)
        return cls(float(x0 + x1) / 2, float(y0 + y1) / 2, float(side), math.atan2(dy, dx))

    @classmethod
    def from_detection(cls, det: Detection) -> Roi:
        """The ROI the tracker would give the detector's face, turned level with its eyes."""
        x, y, w, h = det.box
        side = DETECTOR_BOX_TO_ROI * max(w, h)
        dx, dy = det.points[1] - det.points[0]  # eye (image left) → eye (image right)
        angle = math.atan2(float(dy), float(dx))
        # The drop is along the face's own down direction (y rotated by the angle).
        drop = DETECTOR_ROI_DROP * side
        cx = x + w / 2 - drop * math.sin(angle)
        cy = y + h / 2 + drop * math.cos(angle)
        return cls(cx, cy, side, angle)


def _rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


# ---------------------------------------------------------------- the bundle's canonical face


def _varint(b: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(b):
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return value, i


def _fields(b: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a protobuf message, read without its schema."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(b, i)
            yield field, wire, value
            continue
        if wire == 2:
            n, i = _varint(b, i)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i + n > len(b):
            raise ValueError("truncated protobuf field")
        yield field, wire, b[i : i + n]
        i += n


@dataclass(frozen=True)
class CanonicalFace:
    """The bundle's canonical face (vertices, 3-D) and the weighted points the pose fit uses."""

    vertices: np.ndarray  # (468, 3) float64
    ids: np.ndarray  # (k,) landmark ids
    weights: np.ndarray  # (k,) float64, summing to 1

    @classmethod
    def parse(cls, blob: bytes) -> CanonicalFace:
        """From MediaPipe's GeometryPipelineMetadata: canonical_mesh (1) is a Mesh3d whose
        vertex_buffer (3) holds x, y, z, u, v per vertex; procrustes_landmark_basis (2) holds
        {landmark_id (1), weight (2)} pairs."""
        verts: list[float] = []
        ids: list[int] = []
        weights: list[float] = []
        for field, wire, value in _fields(blob):
            if field == 1 and wire == 2:
                assert isinstance(value, bytes)
                for g, w, v in _fields(value):
                    if g == 3 and w == 5:
                        verts.append(struct.unpack("<f", v)[0])  # type: ignore[arg-type]
                    elif g == 3 and w == 2:
                        verts.extend(struct.unpack(f"<{len(v) // 4}f", v))  # type: ignore[arg-type]
            elif field == 2 and wire == 2:
                assert isinstance(value, bytes)
                lid, wt = 0, 0.0
                for g, _w, v in _fields(value):
                    if g == 1:
                        lid = int(v)  # type: ignore[arg-type]
                    elif g == 2:
                        wt = struct.unpack("<f", v)[0]  # type: ignore[arg-type]
                ids.append(lid)
                weights.append(wt)
        if not verts or len(verts) % 5 or not ids:
            raise ValueError("no canonical mesh or landmark basis in the geometry metadata")
        vertices = np.asarray(verts, np.float64).reshape(-1, 5)[:, :3]
        id_arr = np.asarray(ids)
        w_arr = np.asarray(weights, np.float64)
        if id_arr.max() >= len(vertices) or w_arr.sum() <= 0:
            raise ValueError("landmark basis does not fit the canonical mesh")
        return cls(vertices, id_arr, w_arr / w_arr.sum())

    def _fit(self, dst: np.ndarray) -> tuple[np.ndarray, float]:
        """Rotation and scale of the weighted similarity that maps the canonical basis points
        onto `dst` (k, 3)."""
        src, w = self.vertices[self.ids], self.weights
        a, b = src - w @ src, dst - w @ dst
        u, _, vt = np.linalg.svd((b * w[:, None]).T @ a)
        d = np.sign(np.linalg.det(u @ vt))  # a rotation, never a reflection
        r = u @ np.diag([1.0, 1.0, d]) @ vt
        scale = float(np.sum(w * np.einsum("ij,ij->i", a @ r.T, b)) / np.sum(w * (a * a).sum(1)))
        return r, scale

    def pose(
        self, pts: np.ndarray, depth: np.ndarray, w: int, h: int
    ) -> tuple[float, float, float]:
        """Yaw, pitch, roll (degrees) of the mesh (pixels, depth on x's scale) in a w×h frame.

        MediaPipe's geometry pipeline, as it describes itself: the screen points are placed on
        the camera's near plane, their depth estimated in two rounds (a scale fit, then the
        points unprojected through the pinhole and fitted again), and the canonical face fitted
        onto the metric points. A plain weak-perspective fit turned close, large faces too far
        (mfr2-dev: |yaw| ×1.19 the Tasks pose)."""
        ids = self.ids
        h_near = 2 * CAMERA_NEAR * math.tan(math.radians(CAMERA_FOV_Y_DEG) / 2)
        w_near = h_near * w / h
        x = pts[ids, 0] / w * w_near - w_near / 2
        y = (1 - pts[ids, 1] / h) * h_near - h_near / 2
        z = depth[ids] / w * w_near
        offset = float(z.mean())

        def metric(scale: float) -> np.ndarray:
            zm = (z - offset + CAMERA_NEAR) / scale
            return np.column_stack([x * zm / CAMERA_NEAR, y * zm / CAMERA_NEAR, -zm])

        _, s1 = self._fit(np.column_stack([x, y, -z]))
        _, s2 = self._fit(metric(s1))
        r, _ = self._fit(metric(s1 * s2))
        return pose_from_rotation(r)


# ---------------------------------------------------------------- the backend


def _interpreter(model: bytes, threads: int):  # -> ai_edge_litert Interpreter
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise LiteRTUnavailable(
            f"landmarks.type 'litert' needs the package ai-edge-litert ({err}); run "
            "./install.sh, or set landmarks.type: tasks"
        ) from None
    with quiet_native_logs():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        it = Interpreter(model_content=model, num_threads=threads)
        it.allocate_tensors()
    return it


class LiteRTMesh:
    """The mesh model alone (see the module's doc). One caller at a time per instance."""

    def __init__(
        self,
        task_file: Path,
        spec: InputSpec,
        threads: int = 2,
        min_presence_confidence: float = 0.5,
        video: bool = False,
    ) -> None:
        try:
            with zipfile.ZipFile(task_file) as bundle:
                model = bundle.read(MESH_MEMBER)
                geometry = bundle.read(GEOMETRY_MEMBER)
            self.canonical = CanonicalFace.parse(geometry)
        except (OSError, KeyError, zipfile.BadZipFile, ValueError) as err:
            raise ManifestError(
                f"{task_file}: not a usable face landmarker bundle ({err})"
            ) from None
        self._it = _interpreter(model, threads)
        inp = self._it.get_input_details()[0]
        w, h = spec.size
        shape = tuple(int(d) for d in inp["shape"])
        if spec.layout != "NHWC" or shape != (1, h, w, 3):
            raise ManifestError(
                f"{task_file}: the mesh model takes {shape}, the manifest says "
                f"{spec.layout} {w}×{h}"
            )
        self._in = inp["index"]
        outs = {tuple(d["shape"]): d["index"] for d in self._it.get_output_details()}
        try:
            self._points = outs[(1, 1, 1, POINTS * 3)]
            self._presence = outs[(1, 1, 1, 1)]
        except KeyError:
            raise ManifestError(
                f"{task_file}: the mesh model's outputs {sorted(outs)} hold no {POINTS} points "
                "and presence score"
            ) from None
        self.size = w
        self.spec = spec
        self.min_presence = min_presence_confidence
        self.video = video
        self._roi: Roi | None = None  # the camera stream's track: the next frame's crop
        self.presence = 0.0  # the last mesh's presence score
        with quiet_native_logs():  # XNNPACK prepares its kernels on the first invoke
            self._it.invoke()

    def close(self) -> None:
        self._roi = None

    def __enter__(self) -> LiteRTMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mesh(self, bgr: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        """(478, 3) points in frame pixels (x, y, depth) meshed on `roi`, and the presence."""
        n = self.size
        # dst = R(-angle)(src - c)·n/side + n/2 in continuous coordinates, where MediaPipe puts
        # pixel centres at +0.5; OpenCV indexes them at integers.
        a = _rotation(-roi.angle) * (n / roi.side)
        t = np.array([n / 2, n / 2]) - a @ np.array([roi.cx, roi.cy])
        t = t + a @ np.array([0.5, 0.5]) - 0.5
        crop = cv2.warpAffine(
            bgr, np.hstack([a, t[:, None]]), (n, n),
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
        )  # fmt: skip
        if self.spec.color == "RGB":
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        self._it.set_tensor(self._in, normalise(crop, self.spec)[None])
        self._it.invoke()
        raw = self._it.get_tensor(self._points).reshape(POINTS, 3)
        logit = float(self._it.get_tensor(self._presence).reshape(()))
        presence = 1.0 / (1.0 + math.exp(-max(min(logit, 50.0), -50.0)))
        out = np.empty((POINTS, 3), np.float32)
        uv = (raw[:, :2] / n - 0.5) * roi.side  # crop-centred, in frame pixels
        out[:, :2] = uv @ _rotation(roi.angle).T + (roi.cx, roi.cy)
        out[:, 2] = raw[:, 2] / n * roi.side
        return out, presence

    def _from_detector(self, bgr: np.ndarray, seeds: Seeds | None) -> np.ndarray | None:
        dets = seeds() if seeds is not None else []
        if not dets:
            return None
        roi = Roi.from_detection(dets[0])  # the largest face
        if roi.side < MIN_ROI_PX:
            return None
        pts, self.presence = self.mesh(bgr, roi)
        if self.presence >= self.min_presence:  # once more on the crop the tracker would use
            pts, self.presence = self.mesh(bgr, Roi.from_points(pts[:, :2]))
        return pts

    def detect(
        self, bgr: np.ndarray, timestamp_ms: int | None = None, seeds: Seeds | None = None
    ) -> list[Face]:
        """The largest face (or none). A still photo, or a camera stream without a track,
        needs `seeds`: without a detector's face there is nothing to mesh.

        As in MediaPipe, the presence score decides whether the mesh is tracked into the next
        frame, not whether a face the detector found gets a mesh: a masked face often scores
        low (mfr2-dev: 31 of 85 masked faces under 0.5, their meshes mostly well fitted), and a
        misfitted mesh is caught by the cross-check (edge/vision/locate.py)."""
        pts = None
        if self.video and self._roi is not None:
            pts, self.presence = self.mesh(bgr, self._roi)
            if self.presence < self.min_presence:
                pts = None
        if pts is None:
            pts = self._from_detector(bgr, seeds)
        self._roi = None
        if pts is None:
            return []
        xy = np.ascontiguousarray(pts[:, :2])
        if self.video and self.presence >= self.min_presence:
            roi = Roi.from_points(xy)
            self._roi = roi if roi.side >= MIN_ROI_PX else None
        h, w = bgr.shape[:2]
        yaw, pitch, roll = self.canonical.pose(xy, pts[:, 2], w, h)
        return [Face(xy, pts[:, 2].copy(), face_box(xy, w, h), yaw, pitch, roll)]

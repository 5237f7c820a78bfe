"""Face mesh landmarks: the face type every mesh backend returns, and the backend interface.

Two backends run the same model (the 478-point attention mesh with irises from Google's
FaceLandmarker bundle), chosen by `landmarks.type`:

- `litert` (edge/vision/mesh_litert.py, the default): the mesh model alone through LiteRT, on a
  crop found by the cross-check detector (YuNet) or by the previous frame's mesh;
- `tasks` (edge/vision/mesh_tasks.py): MediaPipe's Tasks FaceLandmarker graph, with its own
  BlazeFace detector.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from edge.vision.detector import Detection

# The detector's faces in the frame being meshed, computed at most once (edge/vision/locate.py).
Seeds = Callable[[], "list[Detection]"]


@dataclass(frozen=True)
class Face:
    """One face: mesh points in pixels, its box, and its head pose."""

    points: np.ndarray  # (478, 2) float32, pixel coordinates in the frame
    depth: np.ndarray  # (478,) float32, relative depth (same scale as x)
    box: tuple[int, int, int, int]  # x, y, w, h of the mesh points, clipped to the frame
    yaw: float  # degrees, + = turned to the camera's right
    pitch: float  # degrees, + = looking up
    roll: float  # degrees
    # True when found on the mirrored image: mesh indices then name the other side's points.
    mirrored: bool = False

    @property
    def width(self) -> int:
        return self.box[2]


class MeshBackend(Protocol):
    """What locate() and the pipeline need of a landmark backend."""

    video: bool  # tracks one face across frames (the camera stream) rather than still photos

    def detect(
        self, bgr: np.ndarray, timestamp_ms: int | None = None, seeds: Seeds | None = None
    ) -> list[Face]:
        """Faces found, largest first. `seeds`: the detector's faces in this frame, asked
        for only if the backend needs them (a backend with its own detector ignores them)."""
        ...

    def close(self) -> None: ...


def pose_from_rotation(r: np.ndarray) -> tuple[float, float, float]:
    """Yaw, pitch, roll in degrees from a head rotation (MediaPipe's face geometry frame)."""
    sy = math.hypot(r[0, 0], r[1, 0])
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    yaw = math.degrees(math.atan2(-r[2, 0], sy))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, pitch, roll


def face_box(points: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    """The points' bounding box (x, y, w, h), clipped to a w×h frame."""
    x0, y0 = np.floor(points.min(0)).astype(int)
    x1, y1 = np.ceil(points.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    return int(x0), int(y0), int(max(x1 - x0, 0)), int(max(y1 - y0, 0))

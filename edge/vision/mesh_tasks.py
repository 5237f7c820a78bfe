"""Face mesh landmarks with MediaPipe's FaceLandmarker (Tasks API): `landmarks.type: tasks`.

Why the Tasks API: the legacy `mediapipe.solutions` FaceMesh is gone from mediapipe 0.10.30 on
and pins numpy<2 / protobuf<5; the Tasks FaceLandmarker is maintained, runs on the same wheel on
x86_64 and aarch64, gives the 478-point refined mesh (irises included) and a head-pose matrix,
and measured 6.3 ms (video mode) / 7.6 ms (image mode) per 512² frame on the 2-core CPU, on a par
with the legacy solution's 5.5–8 ms.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.nativelog import quiet_native_logs
from edge.vision.landmarks import Face, Seeds, face_box, pose_from_rotation

log = logging.getLogger(__name__)


class _Deferred(types.ModuleType):
    """Stands in for a module while mediapipe imports; the real one loads on first use."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or sys.modules.get(self.__name__) is self:
            raise AttributeError(name)  # still standing in (the import system probes)
        return getattr(importlib.import_module(self.__name__), name)


def import_tasks() -> tuple[Any, Any, Any]:
    """(mediapipe, BaseOptions, tasks vision), without matplotlib.

    mediapipe's vision package imports its drawing helpers, and they `matplotlib.pyplot`:
    41 MB of resident memory for plots the door never draws. While mediapipe imports,
    matplotlib is a stand-in that loads the real one if anything ever draws.
    """
    deferred = {}
    if "matplotlib" not in sys.modules:
        for name in ("matplotlib", "matplotlib.pyplot"):
            sys.modules[name] = deferred[name] = _Deferred(name)
        deferred["matplotlib"].pyplot = deferred["matplotlib.pyplot"]
    try:
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision
    finally:
        for name, module in deferred.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
    return mp, BaseOptions, vision


class TasksMesh:
    """Wraps mediapipe's FaceLandmarker; `video=True` tracks across frames (faster, daemon)."""

    def __init__(
        self,
        task_file: Path,
        max_faces: int = 3,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        video: bool = False,
    ) -> None:
        # Imported here: mediapipe is heavy and only the perception path needs it.
        mp, BaseOptions, vision = import_tasks()

        self._mp = mp
        self.video = video
        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(task_file)),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            num_faces=max_faces,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            min_tracking_confidence=0.5,
            output_face_blendshapes=False,
            output_facial_transformation_matrixes=True,
        )
        with quiet_native_logs():  # its graph prints INFO/WARNING lines from C++ as it loads
            self._lm = vision.FaceLandmarker.create_from_options(opts)
        self._last_ts = -1
        # BlazeFace (short range) misses faces that fill the frame, often when masked; still
        # images get retried with a border and mirrored (on mfr2-dev: 7/85 → 1/85 missed).
        self.retries: tuple[tuple[float, bool], ...] = (
            () if video else ((0.25, False), (0.5, False), (0.25, True), (0.5, True))
        )

    def close(self) -> None:
        if self._lm is not None:
            self._lm.close()
            self._lm = None

    def __enter__(self) -> TasksMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def detect(
        self, bgr: np.ndarray, timestamp_ms: int | None = None, seeds: Seeds | None = None
    ) -> list[Face]:
        """All faces found, largest first (retrying padded/mirrored views of still images).
        `seeds` is not needed: the graph runs its own detector (BlazeFace)."""
        faces = self._detect_once(bgr, timestamp_ms)
        for pad, mirror in self.retries:
            if faces:
                break
            h, w = bgr.shape[:2]
            p = round(pad * max(h, w))
            view = cv2.flip(bgr, 1) if mirror else bgr
            view = cv2.copyMakeBorder(view, p, p, p, p, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            faces = [_unview(f, p, w, h, mirror) for f in self._detect_once(view, None)]
        return faces

    def _detect_once(self, bgr: np.ndarray, timestamp_ms: int | None) -> list[Face]:
        if self._lm is None:
            raise RuntimeError("landmarker is closed")
        h, w = bgr.shape[:2]
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=rgb)
        if self.video:
            # Video mode needs strictly increasing timestamps.
            ts = timestamp_ms if timestamp_ms is not None else self._last_ts + 1
            ts = max(ts, self._last_ts + 1)
            self._last_ts = ts
            res = self._lm.detect_for_video(image, ts)
        else:
            res = self._lm.detect(image)
        faces = []
        mats = res.facial_transformation_matrixes or []
        for i, lms in enumerate(res.face_landmarks):
            arr = np.array([(p.x, p.y, p.z) for p in lms], dtype=np.float32)
            pts = arr[:, :2] * np.array([w, h], dtype=np.float32)
            rotation = np.asarray(mats[i])[:3, :3] if i < len(mats) else None
            yaw, pitch, roll = (0.0, 0.0, 0.0) if rotation is None else pose_from_rotation(rotation)
            faces.append(
                Face(
                    points=pts,
                    depth=arr[:, 2] * w,
                    box=face_box(pts, w, h),
                    yaw=yaw,
                    pitch=pitch,
                    roll=roll,
                )
            )
        faces.sort(key=lambda f: f.box[2] * f.box[3], reverse=True)
        return faces


def _unview(face: Face, pad: int, w: int, h: int, mirrored: bool) -> Face:
    """Map a face found on a padded (and maybe mirrored) view back to the original image."""
    pts = face.points - pad
    if mirrored:
        pts[:, 0] = (w - 1) - pts[:, 0]
    return Face(
        points=pts,
        depth=face.depth,
        box=face_box(pts, w, h),
        yaw=-face.yaw if mirrored else face.yaw,
        pitch=face.pitch,
        roll=-face.roll if mirrored else face.roll,
        mirrored=mirrored,
    )

"""A second face detector (YuNet, through OpenCV) that gives a box and 5 points per face.

The mesh's own detector (BlazeFace short range) misses some masked faces and now and then fits
its mesh onto the forehead of a heavily masked face; YuNet, trained with masked faces in view,
catches those. Its 5 points come in ArcFace template order.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.nativelog import quiet_native_logs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, w, h
    points: (
        np.ndarray
    )  # (5, 2) float32: eye, eye, nose tip, mouth corner, mouth corner (image left first)
    score: float


class YuNetDetector:
    def __init__(self, model: Path, score_threshold: float = 0.6, max_side: int = 640) -> None:
        with quiet_native_logs():  # OpenCV's DNN warns about targets as it loads
            self._det = cv2.FaceDetectorYN.create(
                str(model), "", (320, 320), score_threshold, 0.3, 50
            )
        self.max_side = max_side
        # OpenCV's detector keeps per-call state (input size): one caller at a time.
        self._lock = threading.Lock()

    def detect(self, bgr: np.ndarray) -> list[Detection]:
        """Faces, largest first. Big frames are shrunk first: YuNet's cost grows with pixels."""
        h, w = bgr.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        img = (
            cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            if scale < 1
            else bgr
        )
        with self._lock:
            self._det.setInputSize((img.shape[1], img.shape[0]))
            _, faces = self._det.detect(img)
        out = []
        for f in faces if faces is not None else []:
            box = f[:4] / scale
            x0, y0 = max(int(box[0]), 0), max(int(box[1]), 0)
            x1, y1 = min(int(box[0] + box[2]), w), min(int(box[1] + box[3]), h)
            if x1 <= x0 or y1 <= y0:
                continue
            pts = (f[4:14].reshape(5, 2) / scale).astype(np.float32)
            out.append(Detection((x0, y0, x1 - x0, y1 - y0), pts, float(f[14])))
        out.sort(key=lambda d: d.box[2] * d.box[3], reverse=True)
        return out

"""Quality gates: each failure carries a machine-readable reason and a readable message."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import QualityConfig
from edge.vision.locate import FaceLocation


class FaceRejected(ValueError):
    """The image holds no usable face; `reason` is one of NO_FACE, TOO_SMALL, TURNED, BLURRED."""

    NO_FACE = "no_face"
    TOO_SMALL = "face_too_small"
    TURNED = "face_turned"
    BLURRED = "too_blurred"
    BAD_IMAGE = "bad_image"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Quality:
    face_px: int
    yaw: float
    pitch: float
    sharpness: float

    def as_dict(self) -> dict[str, float]:
        return {
            "face_px": self.face_px,
            "yaw": round(self.yaw, 1),
            "pitch": round(self.pitch, 1),
            "sharpness": round(self.sharpness, 1),
        }


def sharpness(aligned: np.ndarray) -> float:
    """Variance of the Laplacian of the aligned face: low means blurred or out of focus."""
    gray = cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY) if aligned.ndim == 3 else aligned
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def check_geometry(face: FaceLocation, cfg: QualityConfig) -> None:
    """Size and pose gates, cheap enough to run before alignment."""
    if face.width < cfg.min_face_px:
        raise FaceRejected(
            FaceRejected.TOO_SMALL,
            f"face too small: {face.width} px wide, at least {cfg.min_face_px} px needed",
        )
    if abs(face.yaw) > cfg.max_yaw_deg:
        raise FaceRejected(
            FaceRejected.TURNED,
            f"face turned too far: yaw {face.yaw:.0f}° (limit {cfg.max_yaw_deg:.0f}°)",
        )
    if abs(face.pitch) > cfg.max_pitch_deg:
        raise FaceRejected(
            FaceRejected.TURNED,
            f"face tilted too far: pitch {face.pitch:.0f}° (limit {cfg.max_pitch_deg:.0f}°)",
        )


def check_sharpness(aligned: np.ndarray, cfg: QualityConfig) -> float:
    s = sharpness(aligned)
    if s < cfg.min_sharpness:
        raise FaceRejected(
            FaceRejected.BLURRED,
            f"face too blurred: sharpness {s:.1f} (at least {cfg.min_sharpness:.1f})",
        )
    return s

"""The mask verdict of one track, reused on the camera stream until the track or its look changes.

A face followed from frame to frame (edge/track.py) keeps its mask on or off for many frames, so
the mask classifier runs once per track and its verdict is reused. It runs again when
- the track is new or was cut (another face, a photo swapped, a gap, a jump),
- `max_frames` frames of the track have passed since it last ran,
- the identity embedding moved away from the frame it last ran on (cosine below
  `min_similarity`): putting a mask on or taking it off moves it far,
- the lower face of the aligned crop (nose to chin, where a mask sits) changed colour by more
  than `max_lower_change` since then: the direct sign of a mask put on or taken off,
- or the last verdict was not confident (its probability within `margin` of the cut-off), so
  a face near the masked / unmasked boundary, whose threshold choice is in doubt, is classified
  every frame.
Only the camera stream (video mode, with timestamps) reuses verdicts; still photos are always
classified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import MaskReuseConfig, TrackConfig
from edge.track import Sighting, Track
from edge.vision.locate import FaceLocation

# The lower face in the 112×112 ArcFace crop, where any mask sits: from just above the nose
# tip's row (template y 71.7) to the chin, between the mouth corners and a little beyond (x 41
# and 71). Narrower than the cheeks, so a turning head shows no background there.
LOWER_ROWS = slice(70, 108)
LOWER_COLS = slice(30, 82)
LOWER_SIZE = (8, 6)  # (w, h) it is shrunk to: the colour layout, not texture or noise


def lower_face(aligned_bgr: np.ndarray) -> np.ndarray:
    """The lower face of an aligned crop: a small CIELAB patch, 0-1.

    Measured on rendered live clips and registry photos with every synthetic mask
    (bench/mask_reuse.py): frames of one track up to 15
    apart differ by at most 0.028; a mask put on or taken off changes it by at least 0.049.
    """
    patch = aligned_bgr[LOWER_ROWS, LOWER_COLS]
    small = cv2.resize(patch, LOWER_SIZE, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2LAB).astype(np.float32) / 255.0


def lower_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute colour difference between two lower-face patches (0-1)."""
    return float(np.abs(a - b).mean())


@dataclass(frozen=True)
class _Verdict:
    track: int
    prob: float
    embedding: np.ndarray
    lower: np.ndarray
    frames: int = 0  # frames of the track since the classifier ran


class MaskReuse:
    """Decides, frame by frame of one stream, whether the last mask verdict still holds."""

    def __init__(
        self,
        cfg: MaskReuseConfig,
        track: TrackConfig,
        blink_max_rigid: float,
        mask_probability: float,
    ) -> None:
        self.cfg = cfg
        self.cut_off = mask_probability
        self.track = Track(track, blink_max_rigid)
        self._last: _Verdict | None = None
        self.classified = 0  # frames the classifier ran on
        self.reused = 0  # frames that reused a verdict

    def reset(self) -> None:
        self.track.reset()
        self._last = None

    def follow(self, face: FaceLocation, t: float, embedding: np.ndarray) -> int:
        """Continue the stream's track with this frame's face; returns its track id."""
        mesh = face.mesh if face.mesh is not None and face.source == "mesh" else None
        s = Sighting(
            t=t,
            box=face.box,
            yaw=face.yaw,
            pitch=face.pitch,
            embedding=embedding,
            mesh=mesh.points if mesh is not None else None,
        )
        if self.track.last is not None and t < self.track.last.t:
            self.track.reset()  # the clock went back: another stream
        self.track.follow(s)
        return self.track.id

    def probability(
        self,
        face: FaceLocation,
        t: float,
        embedding: np.ndarray,
        aligned: np.ndarray,
        classify: Callable[[], float],
    ) -> tuple[float, bool]:
        """This frame's mask probability: (the track's verdict, True) when it still holds,
        else (`classify()`, False)."""
        track = self.follow(face, t, embedding)
        v = self._last
        lower = lower_face(aligned)
        if (
            v is not None
            and v.track == track
            and v.frames + 1 < self.cfg.max_frames
            and abs(v.prob - self.cut_off) >= self.cfg.margin
            and float(np.dot(embedding, v.embedding)) >= self.cfg.min_similarity
            and lower_change(lower, v.lower) <= self.cfg.max_lower_change
        ):
            self._last = _Verdict(v.track, v.prob, v.embedding, v.lower, v.frames + 1)
            self.reused += 1
            return v.prob, True
        prob = float(classify())
        self._last = _Verdict(track, prob, embedding, lower)
        self.classified += 1
        return prob, False

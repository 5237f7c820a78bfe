"""Liveness from the face mesh: a blink or a head movement within a time window.

A printed photo or a still screen neither blinks nor turns its head the way a person does. This
is a cheap first line, not a defence against a video replay or a 3-D mask: say so to users.

Blink: the eye aspect ratio (EAR: eyelid opening over eye width, from mesh points) drops below
`blink_ratio` × the face's open-eye EAR and comes back. Movement: the head's yaw spans at least
`min_yaw_change_deg` within the window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from edge.config import LivenessConfig

# Mesh indices: eye corners, then two upper/lower lid pairs, per eye.
_RIGHT_EYE = (33, 133, (160, 144), (158, 153))
_LEFT_EYE = (362, 263, (385, 380), (387, 373))


def eye_aspect_ratio(mesh: np.ndarray) -> float:
    """Mean EAR of both eyes from the 478-point mesh (pixels)."""
    ratios = []
    for c0, c1, (u0, l0), (u1, l1) in (_RIGHT_EYE, _LEFT_EYE):
        width = float(np.linalg.norm(mesh[c0] - mesh[c1]))
        opening = float(np.linalg.norm(mesh[u0] - mesh[l0]) + np.linalg.norm(mesh[u1] - mesh[l1]))
        ratios.append(opening / (2.0 * max(width, 1e-6)))
    return float(np.mean(ratios))


@dataclass(frozen=True)
class LivenessSample:
    t: float  # seconds (monotonic)
    ear: float | None  # None when the mesh is unavailable (detector-only face)
    yaw: float


class LivenessTracker:
    """Per-track evidence of life; `reset()` when the face leaves."""

    def __init__(self, cfg: LivenessConfig) -> None:
        self.cfg = cfg
        self._samples: deque[LivenessSample] = deque()
        self._open_ear = 0.0  # the face's open-eye EAR: a slowly decaying maximum
        self._closed_at: float | None = None
        self._blink_at: float | None = None

    def reset(self) -> None:
        self._samples.clear()
        self._open_ear = 0.0
        self._closed_at = None
        self._blink_at = None

    def add(self, sample: LivenessSample) -> None:
        self._samples.append(sample)
        while self._samples and sample.t - self._samples[0].t > self.cfg.window_s:
            self._samples.popleft()
        if sample.ear is None:
            return
        self._open_ear = max(sample.ear, self._open_ear * 0.98)
        closed = sample.ear < self.cfg.blink_ratio * self._open_ear
        if closed and self._closed_at is None:
            self._closed_at = sample.t
        elif not closed and self._closed_at is not None:
            # Eyes shut then open again: a blink (a long closure is not one).
            if sample.t - self._closed_at < 1.0:
                self._blink_at = sample.t
            self._closed_at = None

    def status(self, now: float) -> str:
        """'disabled', 'blink', 'movement' (evidence within the window) or 'pending'."""
        if not self.cfg.enabled:
            return "disabled"
        if self._blink_at is not None and now - self._blink_at <= self.cfg.window_s:
            return "blink"
        yaws = [s.yaw for s in self._samples if now - s.t <= self.cfg.window_s]
        if yaws and max(yaws) - min(yaws) >= self.cfg.min_yaw_change_deg:
            return "movement"
        return "pending"

    def passed(self, now: float) -> bool:
        return self.status(now) in ("disabled", "blink", "movement")

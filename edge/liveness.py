"""Liveness on one track: 3-D head motion (the mesh is not a moving plane) or a rigid blink.

A print or a screen is flat: however it is moved, tilted or turned, the 2-D mesh points of one
frame map onto another frame's by a plane homography, to within landmark noise. A real head
turning does not: the nose, cheeks and jaw move with parallax. For two frames of the track at
most `max_pair_s` apart, the test measures the plane's residual (RMS, in units of the face's
RMS radius) and how much of it a rigid 3-D face explains instead (an affine camera on the
mesh's own depth); movement counts when that explained parallax reaches `min_parallax`. The
3-D model keeps a mesh that merely wobbles (a glare sweeping a masked face on a screen bends
MediaPipe's fit, without depth) from passing for a head, and the short pair interval keeps
slow drift of a tracked mesh out. The parallax must build up over several frames: no single
frame step may carry more than `max_step_share` of the plane residual (a swapped photo, even
its own mirror image, changes all at once).

A blink is a local change: both eyes' openings fall below `blink_ratio` of what the widest-open
recent frame, carried over by the rest of the face's homography, predicts, while the rest of
the face stays rigid (residual at most `blink_max_rigid`), and open again within
`blink_max_s`. A photo bent or squeezed narrows the eyes with the face around them: no blink.

Neither stops a video replay on a screen or a 3-D mask (see the README's threat model). The
tracker holds evidence of one track only: the decider resets it on a cut.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.config import LivenessConfig

MESH_POINTS = 478
# Eyelid contours, the ring of points around them, and the irises: they move in a blink.
_EYE_CONTOURS = (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246)
_EYE_CONTOURS += (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466)
_EYE_RINGS = (247, 30, 29, 27, 28, 56, 190, 130, 25, 110, 24, 23, 22, 26, 112, 243)
_EYE_RINGS += (467, 260, 259, 257, 258, 286, 414, 359, 255, 339, 254, 253, 252, 256, 341, 463)
# The lips move when a person talks: not evidence of a 3-D head.
_LIPS = (0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185)
_LIPS += (191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405)
_LIPS += (409, 415)
_MOVING = set(_EYE_CONTOURS) | set(_EYE_RINGS) | set(_LIPS)
# The rigid part of the face: every third remaining mesh point (iris excluded) is plenty for a
# homography and keeps each fit well under a millisecond.
RIGID = np.array([i for i in range(468) if i not in _MOVING][::3])

# Eye corners, then two upper/lower lid pairs, per eye (the classic eye aspect ratio).
_RIGHT_EYE = (33, 133, (160, 144), (158, 153))
_LEFT_EYE = (362, 263, (385, 380), (387, 373))
KEYFRAME_S = 0.2  # spacing of the reference frames the current one is compared with
_REOPEN = 0.5  # eyes count as open again this far from blink_ratio back to fully open


def eye_openings(mesh: np.ndarray) -> tuple[float, float]:
    """Eye aspect ratio (lid opening over eye width) of the right and left eye."""
    out = []
    for c0, c1, (u0, l0), (u1, l1) in (_RIGHT_EYE, _LEFT_EYE):
        width = float(np.linalg.norm(mesh[c0] - mesh[c1]))
        opening = float(np.linalg.norm(mesh[u0] - mesh[l0]) + np.linalg.norm(mesh[u1] - mesh[l1]))
        out.append(opening / (2.0 * max(width, 1e-6)))
    return out[0], out[1]


def eye_aspect_ratio(mesh: np.ndarray) -> float:
    """Mean EAR of both eyes from the 478-point mesh (pixels)."""
    return float(np.mean(eye_openings(mesh)))


def face_scale(points: np.ndarray) -> float:
    """RMS distance of the points from their centroid: the face's size, whatever its pose."""
    return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))


def fit_plane(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares homography taking points `a` onto `b`, and its residual.

    The residual is the RMS point error over `a`'s face_scale: 0 for any view of a plane
    (noise aside), growing with the parallax of a 3-D surface turning.
    """
    h, _ = cv2.findHomography(a.astype(np.float64), b.astype(np.float64), 0)
    if h is None:  # degenerate points (all on a line): nothing measurable
        return np.eye(3), 0.0
    pred = cv2.perspectiveTransform(a[None].astype(np.float64), h)[0]
    err = float(np.sqrt(((pred - b) ** 2).sum(1).mean()))
    return h, err / max(face_scale(a), 1e-6)


def plane_residual(a: np.ndarray, b: np.ndarray) -> float:
    """How far points `b` are from any plane view of points `a` (see fit_plane)."""
    return fit_plane(a, b)[1]


def depth_residual(a: np.ndarray, depth: np.ndarray, b: np.ndarray) -> float:
    """RMS residual (over face_scale) of points `b` as an affine camera's view of the 3-D
    points (`a`, `depth`): what a rigid head turning and moving leaves unexplained."""
    x = np.column_stack([a, depth, np.ones(len(a))])
    p, *_ = np.linalg.lstsq(x, b, rcond=None)
    err = x @ p - b
    return float(np.sqrt((err**2).sum(1).mean())) / max(face_scale(a), 1e-6)


def parallax(a: np.ndarray, depth: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(plane residual, the part of it a 3-D face explains) from frame a to frame b."""
    plane = plane_residual(a, b)
    return plane, max(0.0, plane - depth_residual(a, depth, b))


def eye_closure(ref: np.ndarray, mesh: np.ndarray) -> tuple[float, float]:
    """How open the eyes of `mesh` are against what `ref`'s eyes, carried over by the rest of
    the face's homography, predict (the more open eye decides: both close in a blink; 1 = as
    open), and that homography's residual (how far the rest of the face changed shape)."""
    h, rigid = fit_plane(ref[RIGID], mesh[RIGID])
    pred = cv2.perspectiveTransform(ref[None].astype(np.float64), h)[0]
    now, then = eye_openings(mesh), eye_openings(pred)
    return max(n / max(p, 1e-6) for n, p in zip(now, then, strict=True)), rigid


@dataclass(frozen=True)
class Evidence:
    """What liveness saw on the track: which test passed and the measured values.

    parallax: the largest parallax a 3-D face explains between two frames of the track;
    eyes: the deepest rigid eye closure (opening over the predicted opening; 1 = no closure).
    """

    kind: str  # "disabled" | "blink" | "3d-motion" | "none"
    parallax: float
    eyes: float

    @property
    def passed(self) -> bool:
        return self.kind != "none"

    def __str__(self) -> str:
        return f"{self.kind} parallax={self.parallax:.3f} eyes={self.eyes:.2f}"


@dataclass(frozen=True)
class _Frame:
    t: float
    mesh: np.ndarray  # (478, 2)
    rigid: np.ndarray  # mesh[RIGID]
    depth: np.ndarray  # depth of the rigid points
    ear: float  # mean eye aspect ratio


def _expire(q: deque[tuple[float, Any]], horizon: float) -> None:
    while q and q[0][0] < horizon:
        q.popleft()


class LivenessTracker:
    """Evidence of life from one track's meshes; `reset()` on a cut or when the face leaves."""

    def __init__(self, cfg: LivenessConfig) -> None:
        self.cfg = cfg
        self._frames = 0
        self._prev: _Frame | None = None
        # Queues of (time, item), oldest first, dropped once too old to matter.
        self._keys: deque[tuple[float, _Frame]] = deque()  # references for the plane test
        self._steps: deque[tuple[float, float]] = deque()  # plane residual of each step
        self._recent: deque[tuple[float, _Frame]] = deque()  # the last blink_max_s
        self._closed_at: float | None = None
        self._open_ref: _Frame | None = None  # the open frame the current closing is measured on
        self._closure = 1.0  # deepest closure of the current closing
        self._motion: deque[tuple[float, float]] = deque()  # parallax that passed
        self._blinks: deque[tuple[float, float]] = deque()  # deepest closure of whole blinks
        self._parallax: deque[tuple[float, float]] = deque()  # each frame's best parallax
        self._eyes: deque[tuple[float, float]] = deque()  # each rigid frame's closure

    def reset(self) -> None:
        self.__init__(self.cfg)

    def add(self, t: float, mesh: np.ndarray, depth: np.ndarray) -> None:
        """One frame of the track: a trusted mesh's (478, 2) points and (478,) depth."""
        if mesh.shape[0] < MESH_POINTS:
            return
        rigid, z = mesh[RIGID].astype(np.float64), depth[RIGID].astype(np.float64)
        frame = _Frame(t, mesh, rigid, z, eye_aspect_ratio(mesh))
        self._frames += 1
        for q in (self._keys, self._steps):
            _expire(q, t - self.cfg.max_pair_s)
        for q in (self._motion, self._blinks, self._parallax, self._eyes):
            _expire(q, t - self.cfg.window_s)
        _expire(self._recent, t - self.cfg.blink_max_s)
        if self._prev is not None:
            self._steps.append((t, plane_residual(self._prev.rigid, frame.rigid)))
        self._prev = frame
        self._motion_test(frame)
        self._blink_test(frame)
        self._recent.append((t, frame))
        # The mesh's first frame is found by detection, later ones by tracking, and the two
        # fits differ by about the noise bound: a reference must be a tracked frame.
        if self._frames > 1 and (not self._keys or t - self._keys[-1][0] >= KEYFRAME_S):
            self._keys.append((t, frame))

    def _motion_test(self, frame: _Frame) -> None:
        best, passed = 0.0, False
        for t_key, key in self._keys:
            plane, explained = parallax(key.rigid, key.depth, frame.rigid)
            best = max(best, explained)
            if passed or explained < self.cfg.min_parallax:
                continue
            # Built up step by step, as a head turns; a photo swapped changes all at once.
            largest = max((s for t, s in self._steps if t > t_key), default=0.0)
            passed = largest <= self.cfg.max_step_share * plane
        if passed:
            self._motion.append((frame.t, best))
        self._parallax.append((frame.t, best))

    def _blink_test(self, frame: _Frame) -> None:
        if not self._recent:
            return
        # Against the widest-open frame of the last blink_max_s: how open should the eyes be
        # now, were they still open? While they are closed, against the frame they closed
        # from: eyes kept shut past blink_max_s would otherwise "reopen" against a shut frame.
        ref = self._open_ref if self._closed_at is not None else None
        if ref is None:
            ref = max((f for _, f in self._recent), key=lambda f: f.ear)
        closure, rigid = eye_closure(ref.mesh, frame.mesh)
        if rigid > self.cfg.blink_max_rigid:
            self._closed_at = None  # the face itself moved or bent: its eyes prove nothing
            return
        self._eyes.append((frame.t, closure))
        if closure < self.cfg.blink_ratio:
            if self._closed_at is None:
                self._closed_at, self._closure, self._open_ref = frame.t, closure, ref
            self._closure = min(self._closure, closure)
        elif closure >= self.cfg.blink_ratio + _REOPEN * (1.0 - self.cfg.blink_ratio):
            if self._closed_at is not None and frame.t - self._closed_at <= self.cfg.blink_max_s:
                self._blinks.append((frame.t, self._closure))
            self._closed_at = None

    def status(self, now: float) -> Evidence:
        """The evidence within the window before `now` (the best of each kind)."""
        horizon = now - self.cfg.window_s
        parallax = max((p for t, p in self._parallax if t >= horizon), default=0.0)
        eyes = min((c for t, c in self._eyes if t >= horizon), default=1.0)
        if not self.cfg.enabled:
            return Evidence("disabled", parallax, eyes)
        blinks = [c for t, c in self._blinks if t >= horizon]
        if blinks:
            return Evidence("blink", parallax, min(blinks))
        if any(t >= horizon for t, _ in self._motion):
            return Evidence("3d-motion", parallax, eyes)
        return Evidence("none", parallax, eyes)

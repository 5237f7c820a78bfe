"""Track continuity: is this frame's face the previous frame's face, moved as a person moves?

A track is one face followed across consecutive frames. Between two frames its identity
embedding stays close and its box and pose change no faster than a head can move; a photo
swapped for another (even of the same person), one face leaving and another entering, or a
jump in position, size or pose is a cut. Liveness evidence and the k-of-n votes belong to one
track, so a cut starts both again.

The identity test is the one that catches a swapped photo: consecutive frames of a rendered
live head score a cosine of at least 0.89 (every frame, or every 2nd or 3rd as a loaded door
sees them), different photos of one person at most 0.79 (bench/pad_bounds.py). Two kinds of
frame are not compared but carry the last compared embedding on: a frame aligned on the second
detector's points instead of a trusted mesh, and a blink, which moves a masked face's
embedding as far as a swap does (down to 0.72). A blink is told from a swap the way the
liveness test tells it: the eyes close while the rest of the face keeps its shape (plane
residual at most `blink_max_rigid` against the last compared frame); a new photo changes the
face's shape too, so it is compared. The motion bounds are physiological limits (a head does
not cross its own width in a tenth of a second); they catch gross jumps, not a careful swap.
A photo and its own mirror image score alike (0.88–0.98): that swap is left to the liveness
test, which refuses parallax that appears in one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from edge.config import TrackConfig
from edge.liveness import eye_closure

# The shortest interval a step is judged over: at a faster camera, per-frame jitter (not
# motion) would dominate a rate.
MIN_DT = 1.0 / 30.0
# Eyes at least this open (against what the last compared frame predicts) are not blinking:
# a masked face's embedding moves with even a half-closed lid.
EYES_OPEN = 0.9


@dataclass(frozen=True)
class Sighting:
    """What the continuity test needs of one frame's face."""

    t: float
    box: tuple[int, int, int, int]
    yaw: float
    pitch: float
    embedding: np.ndarray | None  # unit vector; None when the frame was not judged
    mesh: np.ndarray | None = None  # (478, 2) points of a trusted mesh, else None


@dataclass(frozen=True)
class Step:
    """The change between two consecutive sightings."""

    dt: float
    speed: float  # face widths per second
    zoom: float  # |ln(width ratio)| per second
    turn_rate: float  # degrees per second, the larger of yaw and pitch
    similarity: float  # cosine of the two embeddings (1.0 when one is missing)


def step(a: Sighting, b: Sighting) -> Step:
    dt = max(b.t - a.t, MIN_DT)
    (ax, ay, aw, ah), (bx, by, bw, bh) = a.box, b.box
    width = max((aw + bw) / 2.0, 1.0)
    shift = math.hypot((bx + bw / 2) - (ax + aw / 2), (by + bh / 2) - (ay + ah / 2)) / width
    zoom = abs(math.log(max(bw, 1) / max(aw, 1)))
    turn = max(abs(b.yaw - a.yaw), abs(b.pitch - a.pitch))
    sim = 1.0
    if a.embedding is not None and b.embedding is not None:
        sim = float(np.dot(a.embedding, b.embedding))
    return Step(b.t - a.t, shift / dt, zoom / dt, turn / dt, sim)


def cut_reason(s: Step, cfg: TrackConfig) -> str | None:
    """Why two sightings are not one face moving, or None when they are."""
    if s.dt > cfg.max_gap_s:
        return f"face unseen for {s.dt:.2f} s"
    if s.similarity < cfg.min_similarity:
        return f"identity jumped (cosine {s.similarity:.2f} < {cfg.min_similarity:.2f})"
    if s.speed > cfg.max_speed:
        return f"position jumped ({s.speed:.1f} > {cfg.max_speed:.1f} face widths/s)"
    if s.zoom > cfg.max_zoom:
        return f"size jumped ({s.zoom:.1f} > {cfg.max_zoom:.1f} /s)"
    if s.turn_rate > cfg.max_turn_rate:
        return f"pose jumped ({s.turn_rate:.0f} > {cfg.max_turn_rate:.0f} deg/s)"
    return None


class Track:
    """The face being followed: `follow()` each sighting; a cut starts a new track."""

    def __init__(self, cfg: TrackConfig, blink_max_rigid: float) -> None:
        self.cfg = cfg
        self.blink_max_rigid = blink_max_rigid
        self.last: Sighting | None = None  # None: no track
        self._compared: Sighting | None = None  # the last frame whose identity was compared
        self.id = 0  # counts the tracks started: a new id after every cut or reset

    def reset(self) -> None:
        self.last = self._compared = None

    def follow(self, s: Sighting) -> str | None:
        """Continue the track with `s`; returns why it is a cut (the track then restarts
        from `s`), or None."""
        comparable = self._comparable(s)
        if not comparable:
            s = replace(s, embedding=self.last.embedding if self.last is not None else None)
        reason = None
        if self.last is not None:
            reason = cut_reason(step(self.last, s), self.cfg)
            if reason is not None:
                self.reset()
        if self.last is None:
            self.id += 1
        self.last = s
        if comparable:
            self._compared = s
        return reason

    def _comparable(self, s: Sighting) -> bool:
        """Whether this frame's embedding is comparable with the track's."""
        if s.embedding is None or s.mesh is None:
            return False  # not judged, or aligned without the mesh
        ref = self._compared
        if ref is None or ref.mesh is None:
            return True
        closure, rigid = eye_closure(ref.mesh, s.mesh)
        # The face changed shape, not only its eyes (a new photo): compare.
        return rigid > self.blink_max_rigid or closure >= EYES_OPEN

"""One camera frame through the door's decision path: pipeline → observation → decider.

The daemon's frame loop and `edge pad` (presentation-attack measurement) both call
`judge_frame`, so the numbers `edge pad` reports describe what the door does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge.config import MatchConfig
from edge.decide import Decider, Decision, Observation
from edge.match import Gallery, threshold_for
from edge.pipeline import FaceResult, Pipeline
from edge.track import Sighting
from edge.vision.landmarks import Face
from edge.vision.locate import FaceLocation
from edge.vision.quality import FaceRejected


def trusted_mesh(face: FaceLocation) -> Face | None:
    """The mesh, unless it was judged misfitted (YuNet aligned instead) or is missing: its
    jitter would look like a blink or parallax."""
    return face.mesh if face.mesh is not None and face.source == "mesh" else None


def sighting(face: FaceLocation, t: float, result: FaceResult | None = None) -> Sighting:
    mesh = trusted_mesh(face)
    return Sighting(
        t=t,
        box=face.box,
        yaw=face.yaw,
        pitch=face.pitch,
        embedding=result.embedding if result is not None else None,
        mesh=mesh.points if mesh is not None else None,
    )


def observation(
    r: FaceResult, t: float, gallery: Gallery | None, match: MatchConfig
) -> Observation:
    """A judged frame: the best match, its threshold for the mask state, and the track data."""
    found = gallery.search(r.embedding) if gallery is not None else None
    thr = threshold_for(match, r.masked)
    score = found.score if found and found.label else -1.0
    person = found.label if found and found.label and score >= thr else None
    return Observation(
        sighting=sighting(r.face, t, r),
        person=person,
        best=found.label if found else None,
        score=score,
        threshold=thr,
        masked=r.masked,
        mesh=trusted_mesh(r.face),
    )


@dataclass(frozen=True)
class Judged:
    """What one frame came to: a face or not, its observation when judged, the decisions."""

    present: bool
    observation: Observation | None = None
    decisions: list[Decision] = field(default_factory=list)


def judge_frame(
    pipeline: Pipeline,
    decider: Decider,
    gallery: Gallery | None,
    match: MatchConfig,
    image: np.ndarray,
    t: float,
) -> Judged:
    """Process one frame captured at `t` (monotonic s) and let the decider weigh it."""
    ts = int(t * 1000)
    try:
        face = pipeline.detect(image, ts)
    except FaceRejected:  # no face, or not an image
        decider.no_face(t)
        return Judged(False)
    try:
        r = pipeline.process(image, ts, face=face)
    except FaceRejected:
        # A face, but too small, turned or blurred to judge: neither vote nor failure, but it
        # is still the same face moving, so it keeps its track.
        decider.seen(sighting(face, t))
        return Judged(True)
    obs = observation(r, t, gallery, match)
    return Judged(True, obs, decider.observe(obs))

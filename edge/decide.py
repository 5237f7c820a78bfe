"""Frames → door decisions: k of the last n frames, liveness, cooldown, growing lockout.

Pure logic over observations (no models, no I/O), so the policy is tested frame by frame.
A "visit" is a face seen without a gap longer than `attempt_gap_s`; a visit whose window of
n good-quality frames fills without k matches of one person is one failed attempt. Within a
visit, a "track" is one face followed continuously (edge/track.py): a cut (a photo swapped, a
jump) empties the k-of-n window and the liveness evidence, which both belong to one track.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from edge.config import DecisionConfig, LivenessConfig
from edge.liveness import LivenessTracker
from edge.track import Sighting, Track
from edge.vision.landmarks import Face

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One good-quality frame of the face in front of the door."""

    sighting: Sighting  # capture time, box, pose, embedding: the track's continuity
    person: str | None  # best match if at or above its threshold, else None
    best: str | None  # best gallery match whatever its score (for the record)
    score: float
    threshold: float
    masked: bool
    mesh: Face | None = None  # a trusted mesh (points and depth): liveness evidence

    @property
    def t(self) -> float:
        """Capture time, monotonic seconds."""
        return self.sighting.t


@dataclass
class Decision:
    decision: str  # "unlock" | "deny" | "lockout"
    person: str | None
    score: float
    threshold: float
    masked: bool
    liveness: str  # the evidence and its measured values, e.g. "blink parallax=0.012 eyes=0.21"
    frames: int
    latency_ms: float
    reason: str
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return asdict(self)


class Decider:
    def __init__(
        self,
        cfg: DecisionConfig,
        liveness: LivenessConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.liveness = LivenessTracker(liveness)
        self._window: deque[Observation] = deque(maxlen=cfg.n)
        self._last_t: float | None = None
        self.track = Track(cfg.track, liveness.blink_max_rigid)
        self._visit_start: float | None = None
        self.cuts = 0  # tracks cut short during this visit
        self._denied = False
        self._served = False  # this visit already opened the door: once per visit
        self.failures = 0
        self.lockout_until = 0.0
        self._next_lockout = cfg.lockout_s
        self._cooldown: dict[str, float] = {}

    # -- state ----------------------------------------------------------------------------
    def locked_out(self, now: float | None = None) -> bool:
        return (self.clock() if now is None else now) < self.lockout_until

    def _end_visit(self) -> None:
        self._window.clear()
        self.liveness.reset()
        self.track.reset()
        self._denied = False
        self._served = False
        self._last_t = None
        self._visit_start = None
        self.cuts = 0

    def _cut(self, reason: str) -> None:
        """The face followed is not the one before: votes and liveness start again."""
        self.cuts += 1
        log.info("track cut: %s; votes and liveness start again", reason)
        self._window.clear()
        self.liveness.reset()

    def no_face(self, t: float) -> None:
        """No face in this frame: after `track.max_gap_s` the track, after `attempt_gap_s`
        the attempt is over."""
        if self._last_t is None:
            return
        gap = t - self._last_t
        if gap > self.cfg.attempt_gap_s:
            self._end_visit()
        elif gap > self.cfg.track.max_gap_s and self.track.last is not None:
            self.track.reset()
            self._cut(f"face unseen for {gap:.2f} s")

    def seen(self, s: Sighting) -> None:
        """A face too small, turned or blurred to judge: it keeps (or cuts) its track only."""
        if not self.locked_out():
            self._follow(s)

    def _follow(self, s: Sighting) -> None:
        """Continue the visit and the track with this sighting, or cut the track."""
        if self._last_t is not None and s.t - self._last_t > self.cfg.attempt_gap_s:
            self._end_visit()
        reason = self.track.follow(s)
        if reason is not None:
            self._cut(reason)
        self._last_t = s.t
        if self._visit_start is None:
            self._visit_start = s.t

    # -- decisions ------------------------------------------------------------------------
    def observe(self, obs: Observation) -> list[Decision]:
        now = self.clock()
        if self.locked_out(now):
            return []  # the lockout was announced when it began
        self._follow(obs.sighting)
        if self._served:
            return []  # opened for this visit; the next one starts after the face has left
        self._window.append(obs)
        if obs.mesh is not None:
            self.liveness.add(obs.t, obs.mesh.points, obs.mesh.depth)

        votes = Counter(o.person for o in self._window if o.person is not None)
        if votes:
            person, count = votes.most_common(1)[0]
            if count >= self.cfg.k:
                return self._try_unlock(person, now)
        if len(self._window) == self.cfg.n and not self._denied:
            return self._fail("no enrolled person matched", now)
        return []

    def _summary(self, person: str | None) -> tuple[float, float, bool]:
        """Best score, its threshold and mask state among the window's frames for `person`."""
        frames = [o for o in self._window if person is None or o.person == person]
        best = max(frames, key=lambda o: o.score)
        return best.score, best.threshold, best.masked

    def _decision(self, kind: str, person: str | None, reason: str, now: float) -> Decision:
        score, thr, masked = self._summary(person)
        last = self._window[-1]
        return Decision(
            decision=kind,
            person=person,
            score=round(score, 4),
            threshold=thr,
            masked=masked,
            liveness=f"{self.liveness.status(now)} cuts={self.cuts}",
            frames=len(self._window),
            latency_ms=round(max(now - last.t, 0.0) * 1000, 1),
            reason=reason,
        )

    def _try_unlock(self, person: str, now: float) -> list[Decision]:
        if now < self._cooldown.get(person, 0.0):
            return []  # let in moments ago: no second pulse while they walk through
        if not self.liveness.status(now).passed:
            span = self._window[-1].t - (self._visit_start or self._window[-1].t)
            # Give a live person the whole window to blink or move before saying no; counted
            # over the visit, so a slideshow whose cuts keep restarting its tracks is refused.
            if span >= self.liveness.cfg.window_s and not self._denied:
                why = "no blink or 3-D head movement on one track (liveness)"
                return self._fail(why, now, person)
            return []
        d = self._decision("unlock", person, f"{self.cfg.k} of {len(self._window)} frames", now)
        self._cooldown[person] = now + self.cfg.cooldown_s
        self.failures = 0
        self._next_lockout = self.cfg.lockout_s
        self._window.clear()
        self.liveness.reset()
        self._served = True
        log.info("unlock for %s (score %.3f, liveness %s)", person, d.score, d.liveness)
        return [d]

    def _fail(self, reason: str, now: float, person: str | None = None) -> list[Decision]:
        self._denied = True
        self.failures += 1
        out = [self._decision("deny", person, reason, now)]
        if self.failures >= self.cfg.lockout_after:
            seconds = self._next_lockout
            self.lockout_until = now + seconds
            self._next_lockout = min(seconds * 2, self.cfg.lockout_max_s)
            self.failures = 0
            lock = self._decision(
                "lockout",
                None,
                f"{self.cfg.lockout_after} failed attempts: locked out for {seconds:.0f} s",
                now,
            )
            out.append(lock)
            log.warning("lockout for %.0f s after repeated failed attempts", seconds)
            self._end_visit()
        return out

"""Frames → door decisions: k of the last n frames, liveness, cooldown, growing lockout.

Pure logic over observations (no models, no I/O), so the policy is tested frame by frame.
One "track" is a face seen without a gap longer than `attempt_gap_s`; a track whose window of
n good-quality frames fills without k matches of one person is one failed attempt.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from edge.config import DecisionConfig, LivenessConfig
from edge.liveness import LivenessSample, LivenessTracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One good-quality frame of the face in front of the door."""

    t: float  # capture time, monotonic seconds
    person: str | None  # best match if at or above its threshold, else None
    best: str | None  # best gallery match whatever its score (for the record)
    score: float
    threshold: float
    masked: bool
    yaw: float
    ear: float | None = None


@dataclass
class Decision:
    decision: str  # "unlock" | "deny" | "lockout"
    person: str | None
    score: float
    threshold: float
    masked: bool
    liveness: str
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
        self._track_start: float | None = None
        self._denied = False
        self._served = False  # this track already opened the door: once per visit
        self.failures = 0
        self.lockout_until = 0.0
        self._next_lockout = cfg.lockout_s
        self._cooldown: dict[str, float] = {}

    # -- state ----------------------------------------------------------------------------
    def locked_out(self, now: float | None = None) -> bool:
        return (self.clock() if now is None else now) < self.lockout_until

    def _end_track(self) -> None:
        self._window.clear()
        self.liveness.reset()
        self._denied = False
        self._served = False
        self._last_t = None
        self._track_start = None

    def no_face(self, t: float) -> None:
        """No usable face in this frame: after `attempt_gap_s` the attempt is over."""
        if self._last_t is not None and t - self._last_t > self.cfg.attempt_gap_s:
            self._end_track()

    # -- decisions ------------------------------------------------------------------------
    def observe(self, obs: Observation) -> list[Decision]:
        now = self.clock()
        if self.locked_out(now):
            return []  # the lockout was announced when it began
        if self._last_t is not None and obs.t - self._last_t > self.cfg.attempt_gap_s:
            self._end_track()
        self._last_t = obs.t
        if self._served:
            return []  # opened for this visit; the next one starts after the face has left
        if self._track_start is None:
            self._track_start = obs.t
        self._window.append(obs)
        self.liveness.add(LivenessSample(obs.t, obs.ear, obs.yaw))

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
            liveness=self.liveness.status(now),
            frames=len(self._window),
            latency_ms=round(max(now - last.t, 0.0) * 1000, 1),
            reason=reason,
        )

    def _try_unlock(self, person: str, now: float) -> list[Decision]:
        if now < self._cooldown.get(person, 0.0):
            return []  # let in moments ago: no second pulse while they walk through
        if not self.liveness.passed(now):
            span = self._window[-1].t - (self._track_start or self._window[-1].t)
            # Give a live person the whole window to blink or move before saying no.
            if span >= self.liveness.cfg.window_s and not self._denied:
                return self._fail("no blink or head movement (liveness)", now, person)
            return []
        d = self._decision("unlock", person, f"{self.cfg.k} of {len(self._window)} frames", now)
        self._cooldown[person] = now + self.cfg.cooldown_s
        self.failures = 0
        self._next_lockout = self.cfg.lockout_s
        self._window.clear()
        self.liveness.reset()
        self._served = True
        log.info("unlock for %s (score %.3f)", person, d.score)
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
            self._end_track()
        return out

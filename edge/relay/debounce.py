"""Debounce an input line from its timestamped edges.

A door contact bounces for a few milliseconds when the door shuts; a new level counts only once it
has held for the whole period. Both backends feed this the same way (edge events plus the current
value), so the mock contact debounces exactly like the real line's software fallback.
"""

from __future__ import annotations


class Debouncer:
    """The debounced logical level of one input.

    feed() takes every edge (monotonic seconds, level) in time order; value(now) is the last level
    that held for at least `period_s`. Not thread-safe: the owner serialises calls.
    """

    def __init__(self, level: bool, period_s: float, t: float) -> None:
        if period_s < 0:
            raise ValueError(f"debounce period must be >= 0, got {period_s}")
        self.period_s = period_s
        self._stable = level
        self._raw = level  # the latest level seen, which may still be bouncing
        self._since = t  # when _raw was first seen

    @property
    def raw(self) -> bool:
        return self._raw

    def feed(self, level: bool, t: float) -> None:
        # An edge stamped before the previous one (clock mix-up, resync read) counts as "now".
        t = max(t, self._since)
        self._settle(t)
        if level != self._raw:
            self._raw, self._since = level, t

    def value(self, now: float) -> bool:
        self._settle(now)
        return self._stable

    def _settle(self, now: float) -> None:
        if self._raw != self._stable and now - self._since >= self.period_s:
            self._stable = self._raw

"""A small progress bar on stderr (tqdm is not a dependency of the project).

On a terminal it redraws one line at most 5 times a second; into a log file or a pipe it
writes a plain line at most every `log_every_s` seconds, so long runs stay visible in CI logs
without flooding them.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 24


class Progress:
    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "it",
        stream: TextIO | None = None,
        log_every_s: float = 10.0,
        enabled: bool = True,
    ) -> None:
        self.total, self.label, self.unit = max(total, 0), label, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every_s = log_every_s
        self.enabled = enabled
        self.t0 = time.monotonic()
        self._last = -1e9
        self.done = 0
        self._start = 0

    def start_at(self, done: int) -> None:
        """Begin counting from `done` (a resumed run): the rate counts only new work."""
        self.done = self._start = done

    def update(self, done: int, **postfix: float | str) -> None:
        self.done = done
        now = time.monotonic()
        final = done >= self.total
        interval = 0.2 if self.tty else self.log_every_s
        if not self.enabled or (now - self._last < interval and not final):
            return
        self._last = now
        self.stream.write(("\r" if self.tty else "") + self._line(now, postfix))
        if final or not self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def _line(self, now: float, postfix: dict[str, float | str]) -> str:
        elapsed = max(now - self.t0, 1e-6)
        rate = (self.done - self._start) / elapsed
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * _WIDTH)
        extra = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items()
        )
        return (
            f"{self.label} [{bar:<{_WIDTH}}] {self.done}/{self.total} "
            f"{rate:.2f} {self.unit}/s {_clock(elapsed)}<{_clock(left)} {extra}".rstrip()
        )


def _clock(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
        if s >= 3600
        else f"{s // 60:02d}:{s % 60:02d}"
    )

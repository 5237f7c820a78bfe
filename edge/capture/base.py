"""Frame sources and the newest-frame grabber.

A source is one camera, stream, video or folder behind open/read/close. The grabber reads a source
on its own thread and keeps only the newest frame, so a slow pipeline always sees the present
instead of working through a queue of stale frames.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

log = logging.getLogger(__name__)

# Makes a config path absolute (Config.resolve); sources take it in from_config().
Resolve = Callable[[Path], Path]


class CaptureError(RuntimeError):
    """A source cannot be opened or read; the message names the source (secrets masked)."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One captured image. eq=False: comparing frames would compare whole arrays."""

    image: np.ndarray  # BGR, uint8, H×W×3
    index: int  # per-source sequence number; only grows, also across reconnects and loops
    t_capture: float  # time.monotonic() when the frame became available
    decode_ms: float  # time spent decoding/converting it, as far as the backend can tell


# user:password@ in any scheme://; greedy up to the last '@' so an unescaped '@' inside the
# password is masked too.
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):[^\s/]*@")
# Query parameters that commonly carry credentials (?password=..., &token=...).
_SECRET_PARAM = re.compile(
    r"(?P<head>[?&;](?:pass|password|passwd|pwd|token|key|secret|auth|sig|signature)=)[^&;\s]*",
    re.IGNORECASE,
)


def mask_secrets(text: str) -> str:
    """Text with URL passwords and credential query parameters replaced by ***."""
    text = _USERINFO.sub(r"\g<head>:***@", text)
    return _SECRET_PARAM.sub(r"\g<head>***", text)


class FrameSource(ABC):
    """One camera, stream, file or folder.

    open() raises CaptureError naming the source; read() returns the next Frame, None at the end
    of a finite source, and raises CaptureError when a live source fails. close() is idempotent.
    Sources are used from one thread, except interrupt(), which any thread may call.
    """

    # The config `type` this class serves (see make_source); empty for sources built by hand.
    type_key: ClassVar[str] = ""

    def __init__(self) -> None:
        self._next_index = 0
        self._interrupted = threading.Event()

    @classmethod
    def from_config(cls, cfg: Any, resolve: Resolve) -> FrameSource:
        """Build from this kind's camera config model; `resolve` makes paths absolute."""
        raise NotImplementedError(f"{cls.__name__} has no config form")

    @property
    @abstractmethod
    def live(self) -> bool:
        """True for cameras and streams (reconnect on failure), False for files (they end)."""

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def read(self) -> Frame | None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def describe(self) -> str:
        """A short human description, safe to log (no passwords)."""

    def interrupt(self) -> None:
        """Cut short any paced wait in read(), now and later: the owner is shutting down.

        Blocking backend calls (a camera that hangs) cannot be interrupted; their own
        timeouts apply.
        """
        self._interrupted.set()

    def _frame(self, image: np.ndarray, t_capture: float, decode_ms: float) -> Frame:
        """Wrap an image with the next sequence number."""
        frame = Frame(image=image, index=self._next_index, t_capture=t_capture, decode_ms=decode_ms)
        self._next_index += 1
        return frame

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pacer:
    """Hands frames over at a fixed rate for files and folders, which could be read far faster.

    Never bursts to catch up: a reader that fell behind by more than a frame restarts the schedule.
    """

    def __init__(self, interval_s: float, wake: threading.Event) -> None:
        self.interval_s = interval_s
        self._wake = wake
        self._due: float | None = None

    def wait(self) -> None:
        now = time.monotonic()
        if self._due is None or now - self._due > self.interval_s:
            self._due = now
        elif self._due > now:
            self._wake.wait(self._due - now)
        self._due += self.interval_s

    def reset(self) -> None:
        self._due = None


@dataclass(frozen=True)
class GrabberStats:
    """A consistent snapshot of a grabber's state, for metrics and `edge doctor`."""

    source: str
    frames_read: int
    dropped: int
    reconnects: int
    decode_ms: float | None
    last_frame_age_s: float
    connected: bool
    ended: bool
    error: str | None


class FrameGrabber:
    """Reads a source on a background thread and keeps only the newest frame.

    Live sources are reopened `reconnect_s` after an open or read failure, forever; finite
    sources end (``ended``) at their last frame or at their first failure. Every failure is
    logged and kept in ``error``; the thread never dies silently. Single use: start() once.
    """

    _EMA_ALPHA = 0.1  # decode-latency smoothing: ~10 frames of memory

    def __init__(
        self,
        source: FrameSource,
        reconnect_s: float = 2.0,
        hold: threading.Event | None = None,
    ) -> None:
        if reconnect_s <= 0:
            raise ValueError("reconnect_s must be positive")
        self.source = source
        self.reconnect_s = reconnect_s
        # Set by the demo and tests: after the first frame, reading waits until `hold` is set,
        # so a clip does not run on while enrollment is still being sent.
        self.hold = hold
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        # State below is guarded by _cond.
        self._slot: Frame | None = None  # the one frame held, not yet taken by latest()
        self._last_t: float | None = None
        self._frames_read = 0
        self._dropped = 0
        self._reconnects = 0
        self._decode_ms: float | None = None
        self._connected = False
        self._ended = False
        self._error: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> FrameGrabber:
        if self._thread is not None:
            raise RuntimeError("a FrameGrabber can be started only once")
        self._running = True
        self._thread = threading.Thread(
            target=self._run, name=f"capture:{self.source.describe()}"[:60], daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop reading and wait for the thread; the source is closed. Safe to call again."""
        self._stop.set()
        self.source.interrupt()
        thread = self._thread
        if thread is None:
            self._close_source()  # never started: nothing else will close it
            return
        if thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                # Closing from here would race the read still blocked in the backend; the
                # thread closes the source itself when that read returns.
                log.warning(
                    "%s: capture thread still blocked after %.1f s", self.source.describe(), timeout
                )
        with self._cond:
            self._cond.notify_all()  # wake latest() callers

    def __enter__(self) -> FrameGrabber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- consumer side ---------------------------------------------------------------------

    def latest(self, timeout: float) -> Frame | None:
        """The newest frame not yet returned, waiting up to `timeout` seconds for one.

        None on timeout, or at once when the grabber has ended or stopped and holds no frame.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._slot is None:
                if not self._running:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame, self._slot = self._slot, None
            return frame

    def wait_first_frame(self, timeout: float) -> bool:
        """Wait until the source delivered its first frame; False on timeout or when the
        grabber ended or stopped without one (`error` says why)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._frames_read == 0:
                remaining = deadline - time.monotonic()
                if not self._running or remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def last_frame_age(self) -> float:
        """Seconds since the newest frame was captured; inf before the first one."""
        with self._cond:
            return math.inf if self._last_t is None else time.monotonic() - self._last_t

    @property
    def running(self) -> bool:
        """The thread is (still) reading: started, not stopped, not ended."""
        return self._running

    @property
    def ended(self) -> bool:
        """A finite source ran out or failed for good (not set by stop())."""
        return self._ended

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def error(self) -> str | None:
        """The current problem, None while healthy (kept after a finite source failed)."""
        return self._error

    @property
    def frames_read(self) -> int:
        return self._frames_read

    @property
    def dropped(self) -> int:
        """Frames replaced by a newer one before latest() took them."""
        return self._dropped

    @property
    def reconnects(self) -> int:
        """Attempts to reopen a live source after a failure (successful or not)."""
        return self._reconnects

    @property
    def decode_ms(self) -> float | None:
        """Smoothed decode latency; None before the first frame."""
        return self._decode_ms

    def stats(self) -> GrabberStats:
        age = self.last_frame_age()
        with self._cond:
            return GrabberStats(
                source=self.source.describe(),
                frames_read=self._frames_read,
                dropped=self._dropped,
                reconnects=self._reconnects,
                decode_ms=self._decode_ms,
                last_frame_age_s=age,
                connected=self._connected,
                ended=self._ended,
                error=self._error,
            )

    # --- capture thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and not self._session():
                pass
        except Exception as err:  # a bug here must show, not just end the thread
            log.exception("%s: capture thread failed", self.source.describe())
            with self._cond:
                self._error = f"capture thread failed: {err}"
        finally:
            self._close_source()
            with self._cond:
                self._running = False
                self._connected = False
                self._cond.notify_all()

    def _session(self) -> bool:
        """Open the source and read until it ends or fails. True when there is nothing more."""
        src = self.source
        try:
            src.open()
        except Exception as err:
            self._close_source()  # a half-open source may hold the device
            return self._failed("open", err)
        with self._cond:
            self._connected = True
            self._error = None
        log.info("%s: opened", src.describe())
        try:
            while not self._stop.is_set():
                frame = src.read()
                if frame is None:
                    if src.live:
                        raise CaptureError(f"{src.describe()}: returned no frame")
                    log.info("%s: end after %d frames", src.describe(), self._frames_read)
                    with self._cond:
                        self._ended = True
                    return True
                self._publish(frame)
                while self.hold is not None and not self.hold.is_set():
                    if self._stop.wait(0.05):
                        return True
            return True
        except Exception as err:
            return self._failed("read", err)
        finally:
            with self._cond:
                self._connected = False
            self._close_source()  # before any reopen: a camera can be held by one handle only

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            if self._slot is not None:
                self._dropped += 1
            self._slot = frame
            self._last_t = frame.t_capture
            self._frames_read += 1
            if self._decode_ms is None:
                self._decode_ms = frame.decode_ms
            else:
                self._decode_ms += self._EMA_ALPHA * (frame.decode_ms - self._decode_ms)
            self._cond.notify_all()

    def _failed(self, stage: str, err: Exception) -> bool:
        """Record a failure; for a live source wait reconnect_s. True when the grabber is done."""
        name = self.source.describe()
        # CaptureError messages already name the source (masked); others may not.
        msg = mask_secrets(str(err) if isinstance(err, CaptureError) else f"{name}: {err!r}")
        with self._cond:
            self._error = f"{stage} failed: {msg}"
        if not self.source.live:
            log.error("%s failed, source ends: %s", stage, msg)
            with self._cond:
                self._ended = True
            return True
        if self._stop.is_set():
            return True
        log.warning("%s failed: %s; reconnecting in %g s", stage, msg, self.reconnect_s)
        if self._stop.wait(self.reconnect_s):
            return True
        with self._cond:
            self._reconnects += 1
            attempt = self._reconnects
        log.info("%s: reconnect attempt %d", name, attempt)
        return False

    def _close_source(self) -> None:
        try:
            self.source.close()
        except Exception:
            log.exception("%s: close failed", self.source.describe())

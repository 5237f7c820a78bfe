"""A video file: a stand-in camera for demos, benchmarks and tests."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import cv2

from .base import CaptureError, Frame, Pacer, Resolve
from .cvcapture import CvCaptureSource

if TYPE_CHECKING:
    from ..config import FileCamera

log = logging.getLogger(__name__)

_FALLBACK_FPS = 25.0  # for containers that do not say (some MJPEG streams saved raw)


class FileSource(CvCaptureSource):
    type_key: ClassVar[str] = "file"
    live = False
    _grab_is_work = True  # nothing to wait for: grab() is all demuxing and decoding

    def __init__(self, path: Path | str, loop: bool = False, realtime: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.loop = loop
        self.realtime = realtime
        self.fps: float | None = None  # known once open
        self._pacer: Pacer | None = None
        self._frames_this_pass = 0

    @classmethod
    def from_config(cls, cfg: FileCamera, resolve: Resolve) -> FileSource:
        return cls(resolve(cfg.path), loop=cfg.loop, realtime=cfg.realtime)

    def describe(self) -> str:
        return f"file {self.path}"

    def _open_capture(self) -> cv2.VideoCapture:
        if not self.path.is_file():
            what = "not a file" if self.path.exists() else "no such file"
            raise CaptureError(f"{self.describe()}: {what}")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise CaptureError(f"{self.describe()}: cannot decode (not a video OpenCV can read)")
        return cap

    def open(self) -> None:
        super().open()
        assert self._cap is not None
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        if not (math.isfinite(fps) and 0 < fps <= 1000):
            log.warning(
                "%s: no usable frame rate (%s); pacing at %.0f fps",
                self.describe(),
                fps,
                _FALLBACK_FPS,
            )
            fps = _FALLBACK_FPS
        self.fps = fps
        self._pacer = Pacer(1.0 / fps, self._interrupted) if self.realtime else None
        self._frames_this_pass = 0

    def read(self) -> Frame | None:
        """Next frame at the file's own rate (when realtime); None at the end unless looping."""
        if self._pacer is not None:
            self._pacer.wait()
        frame = self._grab()
        if frame is None and self.loop and self._frames_this_pass > 0:
            # Reopening is the one rewind every backend and codec honours.
            self.close()
            self._cap = self._open_capture()
            self._frames_this_pass = 0
            frame = self._grab()
        if frame is None:
            return None
        self._frames_this_pass += 1
        return frame

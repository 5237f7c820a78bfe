"""What the cv2.VideoCapture sources (v4l2, gstreamer, url, file) have in common."""

from __future__ import annotations

import time
from abc import abstractmethod

import cv2
import numpy as np

from .base import CaptureError, Frame, FrameSource


def as_bgr(image: np.ndarray, where: str) -> np.ndarray:
    """Backends may hand over grey or BGRA images (e.g. a GRAY8 appsink); the pipeline wants BGR."""
    if image.dtype != np.uint8:
        raise CaptureError(f"{where}: frames are {image.dtype}, expected uint8")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise CaptureError(f"{where}: unexpected frame shape {image.shape}")


class CvCaptureSource(FrameSource):
    """A source read through cv2.VideoCapture; subclasses say how to open it."""

    # Whether grab() only waits for the next frame (cameras) or does the decoding work itself
    # (a file, where nothing is waited for): decides what decode_ms measures.
    _grab_is_work = False

    def __init__(self) -> None:
        super().__init__()
        self._cap: cv2.VideoCapture | None = None

    @abstractmethod
    def _open_capture(self) -> cv2.VideoCapture:
        """An opened capture, or CaptureError saying why not."""

    def open(self) -> None:
        self.close()
        self._cap = self._open_capture()

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def read(self) -> Frame | None:
        """Next frame; raises CaptureError when the backend has none (a live source dropped)."""
        frame = self._grab()
        if frame is None:
            raise CaptureError(f"{self.describe()}: no frame from the device (disconnected?)")
        return frame

    def _grab(self) -> Frame | None:
        """The next frame, or None when the backend has none to give."""
        if self._cap is None:
            raise CaptureError(f"{self.describe()}: read before open")
        # For a camera grab() waits for the frame and retrieve() decodes/converts it, so
        # t_capture is the arrival time and only retrieve() counts as decoding. (FFmpeg decodes
        # inside grab(), so for a url source decode_ms is mostly the colour conversion.)
        t_start = time.monotonic()
        if not self._cap.grab():
            return None
        t_capture = time.monotonic()
        ok, image = self._cap.retrieve()
        t_done = time.monotonic()
        decode_ms = (t_done - (t_start if self._grab_is_work else t_capture)) * 1000.0
        if not ok or image is None:
            return None
        return self._frame(as_bgr(image, self.describe()), t_capture, decode_ms)

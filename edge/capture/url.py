"""A network stream (RTSP, HTTP MJPEG/HLS) through OpenCV's FFmpeg backend."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

import cv2

from .base import CaptureError, Resolve, mask_secrets
from .cvcapture import CvCaptureSource

if TYPE_CHECKING:
    from ..config import UrlCamera

log = logging.getLogger(__name__)

SCHEMES = ("rtsp", "rtsps", "http", "https")


class UrlSource(CvCaptureSource):
    type_key: ClassVar[str] = "url"
    live = True

    def __init__(self, url: str, open_timeout_s: float = 5.0, read_timeout_s: float = 5.0) -> None:
        super().__init__()
        self._url = url.strip()  # private: holds credentials; describe() is the loggable form
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s

    @classmethod
    def from_config(cls, cfg: UrlCamera, resolve: Resolve) -> UrlSource:
        if cfg.width or cfg.height:
            log.warning("camera width/height are ignored for url streams: the camera decides")
        return cls(cfg.url.get_secret_value())

    def describe(self) -> str:
        return f"url {mask_secrets(self._url)}"

    def _open_capture(self) -> cv2.VideoCapture:
        scheme = urlsplit(self._url).scheme.lower()
        if scheme not in SCHEMES:
            raise CaptureError(
                f"{self.describe()}: unsupported scheme {scheme or '(none)'!r};"
                f" expected one of {', '.join(SCHEMES)}"
            )
        # Without timeouts a stalled stream blocks read() for minutes (FFmpeg's default),
        # which would hide a dead camera from the reconnect logic and stall stop().
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000),
        ]  # fmt: skip
        cap = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"{self.describe()}: cannot open the stream (unreachable, wrong path or"
                " credentials, or OpenCV lacks FFmpeg)"
            )
        return cap

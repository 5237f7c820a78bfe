"""A GStreamer pipeline ending in appsink (Jetson CSI cameras via nvarguscamerasrc, RTSP
with hardware decoding). Needs an OpenCV built with GStreamer; pip's wheels are not."""

from __future__ import annotations

import functools
import logging
import re
from typing import TYPE_CHECKING, ClassVar

import cv2

from .base import CaptureError, Resolve, mask_secrets
from .cvcapture import CvCaptureSource

if TYPE_CHECKING:
    from ..config import GStreamerCamera

log = logging.getLogger(__name__)

_USER_PW = re.compile(r"(\buser-pw\s*=\s*)(\"[^\"]*\"|\S+)")


@functools.lru_cache(maxsize=1)
def opencv_has_gstreamer() -> bool:
    """Whether this cv2 can open GStreamer pipelines (read from its build information)."""
    found = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(found) and found.group(1).upper() != "NO"


class GStreamerSource(CvCaptureSource):
    type_key: ClassVar[str] = "gstreamer"
    live = True

    def __init__(self, pipeline: str) -> None:
        super().__init__()
        self.pipeline = pipeline.strip()

    @classmethod
    def from_config(cls, cfg: GStreamerCamera, resolve: Resolve) -> GStreamerSource:
        if cfg.width or cfg.height:
            log.warning("camera width/height are ignored for gstreamer: set caps in the pipeline")
        return cls(cfg.pipeline)

    def describe(self) -> str:
        # Pipelines may embed rtsp://user:password@ locations or rtspsrc's user-pw property.
        masked = _USER_PW.sub(r"\g<1>***", mask_secrets(self.pipeline))
        return f"gstreamer '{masked}'"

    def _open_capture(self) -> cv2.VideoCapture:
        if not opencv_has_gstreamer():
            raise CaptureError(
                f"{self.describe()}: this OpenCV ({cv2.__version__}) was built without GStreamer"
                " (pip's opencv-python-headless is); use the system's python3-opencv, build"
                " OpenCV with WITH_GSTREAMER=ON, or choose a v4l2 or url camera"
            )
        if not re.search(r"\bappsink\b", self.pipeline):
            raise CaptureError(f"{self.describe()}: the pipeline must end in appsink")
        cap = cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"{self.describe()}: cannot start the pipeline (try it with gst-launch-1.0,"
                " replacing appsink by fakesink)"
            )
        return cap

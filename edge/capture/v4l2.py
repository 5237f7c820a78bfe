"""A V4L2 camera (USB webcam, Pi camera through libcamera's V4L2 layer) by path or index."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import cv2

from .base import CaptureError, Resolve
from .cvcapture import CvCaptureSource

if TYPE_CHECKING:
    from ..config import V4L2Camera

log = logging.getLogger(__name__)


class V4L2Source(CvCaptureSource):
    type_key: ClassVar[str] = "v4l2"
    live = True

    def __init__(
        self,
        device: str | int = 0,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        super().__init__()
        # "0" from a command line means index 0, not a file called 0.
        if isinstance(device, str) and device.isdigit():
            device = int(device)
        self.device = device
        self.width = width
        self.height = height
        self.fps = fps

    @classmethod
    def from_config(cls, cfg: V4L2Camera, resolve: Resolve) -> V4L2Source:
        return cls(cfg.device, cfg.width, cfg.height, cfg.fps)

    def describe(self) -> str:
        if isinstance(self.device, int):
            return f"v4l2 index {self.device}"
        return f"v4l2 {self.device}"

    def _open_capture(self) -> cv2.VideoCapture:
        if isinstance(self.device, str) and not Path(self.device).exists():
            raise CaptureError(f"{self.describe()}: no such device")
        cap = cv2.VideoCapture(self.device, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise CaptureError(
                f"{self.describe()}: cannot open (not a capture device, busy, or no permission:"
                " is the user in the 'video' group?)"
            )
        # A one-frame driver queue: the grabber wants the newest frame, not a backlog.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        requested = {
            cv2.CAP_PROP_FRAME_WIDTH: self.width,
            cv2.CAP_PROP_FRAME_HEIGHT: self.height,
            cv2.CAP_PROP_FPS: self.fps,
        }
        for prop, value in requested.items():
            if value is not None:
                cap.set(prop, float(value))
        got = (
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            cap.get(cv2.CAP_PROP_FPS),
        )
        # Drivers round requests to the nearest mode they support; say so rather than guess.
        if (self.width and got[0] != self.width) or (self.height and got[1] != self.height):
            log.warning(
                "%s: asked for %sx%s, the driver gave %dx%d",
                self.describe(),
                self.width,
                self.height,
                got[0],
                got[1],
            )
        log.info("%s: %dx%d at %.1f fps", self.describe(), got[0], got[1], got[2])
        return cap

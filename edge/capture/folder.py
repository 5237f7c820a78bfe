"""A folder of still images handed over in name order, like a slow camera."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..imageio import ImageError, decode_image, read_file
from .base import CaptureError, Frame, FrameSource, Pacer, Resolve

if TYPE_CHECKING:
    from ..config import FolderCamera

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


class FolderSource(FrameSource):
    type_key: ClassVar[str] = "folder"
    live = False

    def __init__(self, path: Path | str, fps: float = 5.0, loop: bool = False) -> None:
        super().__init__()
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.path = Path(path)
        self.fps = fps
        self.loop = loop
        self.files: list[Path] = []  # the images found at open()
        self._pos = 0
        self._good_this_pass = 0
        self._pacer = Pacer(1.0 / fps, self._interrupted)
        self._open = False

    @classmethod
    def from_config(cls, cfg: FolderCamera, resolve: Resolve) -> FolderSource:
        return cls(resolve(cfg.path), fps=cfg.fps, loop=cfg.loop)

    def describe(self) -> str:
        return f"folder {self.path}"

    def open(self) -> None:
        if not self.path.is_dir():
            what = "not a folder" if self.path.exists() else "no such folder"
            raise CaptureError(f"{self.describe()}: {what}")
        try:
            entries = list(self.path.iterdir())
        except OSError as err:
            raise CaptureError(f"{self.describe()}: cannot list: {err.strerror or err}") from None
        self.files = sorted(
            (p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
            key=lambda p: p.name,
        )
        if not self.files:
            raise CaptureError(
                f"{self.describe()}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        self._pos = 0
        self._good_this_pass = 0
        self._pacer.reset()
        self._open = True

    def close(self) -> None:
        self._open = False

    def read(self) -> Frame | None:
        """Next readable image at `fps`; unreadable ones are logged and skipped."""
        if not self._open:
            raise CaptureError(f"{self.describe()}: read before open")
        while True:
            if self._pos >= len(self.files):
                if self._good_this_pass == 0:
                    # Ending here keeps loop=True from spinning on a folder of broken files.
                    log.warning("%s: no readable image in a whole pass", self.describe())
                    return None
                if not self.loop:
                    return None
                self._pos = 0
                self._good_this_pass = 0
            path = self.files[self._pos]
            self._pos += 1
            image, decode_ms = self._load(path)
            if image is None:
                continue
            self._good_this_pass += 1
            # Paced after loading, so the rate holds however long decoding took.
            self._pacer.wait()
            return self._frame(image, time.monotonic(), decode_ms)

    def _load(self, path: Path) -> tuple[np.ndarray | None, float]:
        try:
            # Bounded like every image: a huge file or picture is skipped, not decoded.
            data = read_file(path)
            t0 = time.monotonic()
            image = decode_image(data, path.name)
        except ImageError as err:
            log.warning("%s: skipping %s", self.describe(), err)
            return None, 0.0
        return image, (time.monotonic() - t0) * 1000.0

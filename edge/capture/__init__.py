"""Camera sources and the newest-frame grabber.

source = make_source(config.camera, config.resolve)
with FrameGrabber(source, reconnect_s=config.camera.reconnect_s) as grabber:
    frame = grabber.latest(timeout=1.0)
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .base import (
    CaptureError,
    Frame,
    FrameGrabber,
    FrameSource,
    GrabberStats,
    Resolve,
    mask_secrets,
)
from .file import FileSource
from .folder import FolderSource
from .gstreamer import GStreamerSource
from .url import UrlSource
from .v4l2 import V4L2Source

if TYPE_CHECKING:
    from ..config import CameraConfig

# Config `type` -> source class. Each class builds itself from its own config model.
SOURCES: dict[str, type[FrameSource]] = {
    cls.type_key: cls for cls in (V4L2Source, GStreamerSource, UrlSource, FileSource, FolderSource)
}


def _as_is(path: Path) -> Path:
    return path


def make_source(cfg: CameraConfig, resolve: Resolve = _as_is) -> FrameSource:
    """The source for a camera config; `resolve` makes relative paths absolute (Config.resolve)."""
    cls = SOURCES.get(cfg.type)
    if cls is None:
        raise CaptureError(f"unknown camera type {cfg.type!r}; known: {', '.join(sorted(SOURCES))}")
    return cls.from_config(cfg, resolve)


def make_grabber(
    cfg: CameraConfig, resolve: Resolve = _as_is, hold: threading.Event | None = None
) -> FrameGrabber:
    """A (not yet started) grabber over the configured source, with its reconnect delay."""
    return FrameGrabber(make_source(cfg, resolve), reconnect_s=cfg.reconnect_s, hold=hold)


__all__ = [
    "SOURCES",
    "CaptureError",
    "FileSource",
    "FolderSource",
    "Frame",
    "FrameGrabber",
    "FrameSource",
    "GStreamerSource",
    "GrabberStats",
    "Resolve",
    "UrlSource",
    "V4L2Source",
    "make_grabber",
    "make_source",
    "mask_secrets",
]

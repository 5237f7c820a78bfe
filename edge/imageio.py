"""Reading images from files with errors that say what is wrong with the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class ImageError(ValueError):
    """A file that is not a usable image; the message names the file and the problem."""


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode JPEG/PNG/... bytes to a BGR uint8 array."""
    if not data:
        raise ImageError(f"{name}: empty file")
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if arr is None or arr.size == 0:
        raise ImageError(f"{name}: not a decodable image (corrupt or unsupported format)")
    return arr


def read_image(path: Path | str) -> np.ndarray:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as err:
        raise ImageError(f"{p}: cannot read: {err.strerror or err}") from None
    return decode_image(data, str(p))

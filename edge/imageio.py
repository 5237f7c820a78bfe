"""Reading images, bounded: the declared size is checked before anything is decoded.

A 35 KB PNG can declare 6000×6000 pixels and a 0.25 MB one 16000×16000: decoding them costs
gigabytes and minutes. So every image is first identified from its header (JPEG, PNG, WebP or
BMP: what cameras and phones produce), its width × height checked against
`limits.max_image_pixels`, and only then decoded. Other formats (TIFF, GIF, PPM, HDR, EXR,
JPEG 2000, ...) are refused by name: each is one more decoder and one more way to declare a
huge picture.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from edge.config import LimitsConfig

DEFAULT_LIMITS = LimitsConfig()


class ImageError(ValueError):
    """A file that is not a usable image; the message names the file and the problem."""


# Magic numbers of formats OpenCV could decode but MaskGate does not accept.
_REFUSED = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF8", "GIF"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"#?RGBE", "Radiance HDR"),
    (b"v/1\x01", "OpenEXR"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"Y\xa6j\x95", "Sun raster"),
    (b"PF", "PFM"),
    (b"Pf", "PFM"),
)
# JPEG start-of-frame markers (baseline, extended, progressive, lossless, arithmetic).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(data: bytes, name: str = "image") -> tuple[str, int, int]:
    """(format, width, height) from the header alone; ImageError when it cannot be read."""
    try:
        if data.startswith(b"\xff\xd8"):
            return ("JPEG", *_jpeg_size(data, name))
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            if data[12:16] != b"IHDR":
                raise ImageError(f"{name}: not a decodable image: damaged PNG (no IHDR header)")
            width, height = struct.unpack(">II", data[16:24])
            return "PNG", width, height
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return ("WebP", *_webp_size(data, name))
        if data.startswith(b"BM"):
            (dib,) = struct.unpack("<I", data[14:18])
            if dib == 12:  # BITMAPCOREHEADER: 16-bit sizes
                width, height = struct.unpack("<hh", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
            return "BMP", abs(width), abs(height)  # a negative height means top-down rows
    except struct.error:
        raise ImageError(f"{name}: not a decodable image: truncated header") from None
    for magic, kind in _REFUSED:
        if data.startswith(magic):
            raise ImageError(f"{name}: {kind} images are not accepted (use JPEG, PNG, WebP or BMP)")
    if data[:1] == b"P" and data[1:2] in b"123456" and len(data) > 1:
        raise ImageError(f"{name}: PNM images are not accepted (use JPEG, PNG, WebP or BMP)")
    raise ImageError(
        f"{name}: not a decodable image: not JPEG, PNG, WebP or BMP (corrupt or unsupported format)"
    )


def _jpeg_size(data: bytes, name: str) -> tuple[int, int]:
    # Walk the marker segments up to the first start-of-frame, which declares the size.
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError(
                f"{name}: not a decodable image: damaged JPEG (bad marker at byte {pos})"
            )
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if height == 0:  # "defined later by a DNL marker": not supported by the decoder
                raise ImageError(f"{name}: JPEG without a declared height is not accepted")
            return width, height
        if length < 2:
            raise ImageError(
                f"{name}: not a decodable image: damaged JPEG (segment length {length})"
            )
        pos += 2 + length
    raise ImageError(f"{name}: not a decodable image: damaged JPEG (no frame header)")


def _webp_size(data: bytes, name: str) -> tuple[int, int]:
    chunk = data[12:16]
    body = data[20:]
    if chunk == b"VP8 ":  # lossy: 3-byte frame tag, start code, 14-bit sizes
        if body[3:6] != b"\x9d\x01\x2a":
            raise ImageError(f"{name}: not a decodable image: damaged WebP (no VP8 start code)")
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature, then 14-bit (size - 1) fields
        if body[:1] != b"\x2f":
            raise ImageError(f"{name}: not a decodable image: damaged WebP (no VP8L signature)")
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (canvas size - 1) fields
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        return width, height
    raise ImageError(f"{name}: not a decodable image: damaged WebP (unknown chunk {chunk!r})")


def checked_size(
    data: bytes, name: str = "image", limits: LimitsConfig = DEFAULT_LIMITS
) -> tuple[str, int, int]:
    """(format, width, height) of an image that may be decoded; ImageError when it may not."""
    if not data:
        raise ImageError(f"{name}: empty file")
    kind, width, height = image_size(data, name)
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: {kind} declares an empty picture ({width}×{height})")
    if width * height > limits.max_image_pixels:
        raise ImageError(
            f"{name}: {kind} of {width}×{height} pixels ({width * height / 1e6:.1f} MP) exceeds "
            f"limits.max_image_pixels ({limits.max_image_pixels / 1e6:g} MP)"
        )
    return kind, width, height


def decode_image(
    data: bytes, name: str = "image", limits: LimitsConfig = DEFAULT_LIMITS
) -> np.ndarray:
    """Decode JPEG/PNG/WebP/BMP bytes to a BGR uint8 array, refusing oversized pictures."""
    kind = checked_size(data, name, limits)[0]
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise ImageError(f"{name}: {kind} could not be decoded ({err.err or err})") from None
    if arr is None or arr.size == 0:
        raise ImageError(f"{name}: not a decodable image (corrupt or unsupported format)")
    return arr


def read_image(path: Path | str, limits: LimitsConfig = DEFAULT_LIMITS) -> np.ndarray:
    """An image file as BGR uint8; ImageError naming the file when it is unusable or too big."""
    return decode_image(read_file(path, limits), str(path), limits)


def read_file(path: Path | str, limits: LimitsConfig = DEFAULT_LIMITS) -> bytes:
    """An image file's bytes, refused (ImageError) when larger than the limit."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limits.max_image_file_bytes:
            raise ImageError(
                f"{p}: file of {size / 2**20:.1f} MiB exceeds limits.max_image_file_bytes "
                f"({limits.max_image_file_bytes / 2**20:g} MiB)"
            )
        return p.read_bytes()
    except OSError as err:
        raise ImageError(f"{p}: cannot read: {err.strerror or err}") from None

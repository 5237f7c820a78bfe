"""read_image / decode_image: real files decode to BGR uint8; bad files name themselves."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import LimitsConfig
from edge.imageio import ImageError, decode_image, read_image


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("face_recognition/obama.jpg", (1137, 910, 3)),
        ("insightface/Tom_Hanks_54745.png", (112, 112, 3)),
    ],
)
def test_real_photos_decode_to_bgr_uint8(test_data: Path, name: str, shape: tuple) -> None:
    image = read_image(test_data / name)
    assert image.shape == shape and image.dtype == np.uint8
    # The same as OpenCV's own reader: BGR order, no conversion of our own.
    np.testing.assert_array_equal(image, cv2.imread(str(test_data / name), cv2.IMREAD_COLOR))


@pytest.mark.parametrize("kind", ["gray", "bgra", "gray16"])
def test_other_pixel_formats_become_three_channel_uint8(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    if kind == "gray":
        arr = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    elif kind == "bgra":
        arr = rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)
    else:
        arr = rng.integers(0, 65536, (40, 30), dtype=np.uint16)
    f = tmp_path / f"{kind}.png"
    assert cv2.imwrite(str(f), arr)
    image = read_image(f)
    assert image.shape == (40, 30, 3) and image.dtype == np.uint8
    if kind == "bgra":
        np.testing.assert_array_equal(image, arr[:, :, :3])


def test_decode_image_uses_the_given_name() -> None:
    with pytest.raises(
        ImageError, match=r"^upload\.jpg: not a decodable image: not JPEG, PNG, WebP or BMP"
    ):
        decode_image(b"not an image at all", "upload.jpg")
    with pytest.raises(ImageError, match=r"^frame: empty file"):
        decode_image(b"", "frame")


def test_random_bytes_are_an_image_error(tmp_path: Path) -> None:
    bad = tmp_path / "noise.jpg"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ImageError, match="corrupt or unsupported format") as err:
        read_image(bad)
    assert str(bad) in str(err.value)


@pytest.mark.parametrize("name", ["face_recognition/obama.jpg", "insightface/Tom_Hanks_54745.png"])
def test_truncated_image_is_an_image_error(test_data: Path, tmp_path: Path, name: str) -> None:
    data = (test_data / name).read_bytes()
    cut = tmp_path / f"cut-{Path(name).name}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt") as err:
        read_image(cut)
    assert str(cut) in str(err.value)


def test_empty_file_is_an_image_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file") as err:
        read_image(empty)
    assert str(empty) in str(err.value)


def test_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read") as err:
        read_image(tmp_path / "absent.jpg")
    assert "absent.jpg" in str(err.value)


# ------------------------------------------------------------------ decompression bombs


def png_bomb(width: int, height: int) -> bytes:
    """A real, valid PNG of width×height black pixels: tiny on disk, huge decoded.

    Written row by row through zlib so the test never holds the decoded picture itself.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)  # filter byte + RGB
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def declared(data: bytes, fmt: str, width: int, height: int) -> bytes:
    """A real small image whose header is patched to declare width×height."""
    b = bytearray(data)
    if fmt == "jpg":
        pos = 2
        while b[pos + 1] not in (0xC0, 0xC1, 0xC2):
            pos += 2 + struct.unpack(">H", b[pos + 2 : pos + 4])[0]
        b[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    elif fmt == "bmp":
        b[18:26] = struct.pack("<ii", width, height)
    elif fmt == "webp":  # lossy VP8: 14-bit sizes after the start code
        assert bytes(b[12:16]) == b"VP8 "
        b[26:30] = struct.pack("<HH", width, height)
    return bytes(b)


def test_png_bombs_are_refused_from_the_header_alone() -> None:
    small = png_bomb(6000, 6000)  # the 35 KB PNG of the report: 108 MB decoded
    assert len(small) < 200_000
    with pytest.raises(
        ImageError, match=r"bomb\.png: PNG of 6000×6000 pixels \(36\.0 MP\) exceeds"
    ):
        decode_image(small, "bomb.png")
    # Within the bound the same construction decodes: the refusal is the size, not the file.
    ok = decode_image(png_bomb(2000, 1500), "fine.png")
    assert ok.shape == (1500, 2000, 3)


@pytest.mark.parametrize(
    ("fmt", "size"), [("jpg", (60000, 60000)), ("bmp", (30000, 20000)), ("webp", (16000, 16000))]
)
def test_huge_declared_sizes_are_refused_before_decoding(
    test_data: Path, fmt: str, size: tuple[int, int]
) -> None:
    photo = cv2.imread(str(test_data / "face_recognition/obama.jpg"))
    params = [cv2.IMWRITE_WEBP_QUALITY, 90] if fmt == "webp" else []  # lossy: a VP8 header
    ok, buf = cv2.imencode(f".{fmt}", photo[:200, :200], params)
    assert ok
    data = declared(buf.tobytes(), fmt, *size)
    with pytest.raises(ImageError, match=r"exceeds limits\.max_image_pixels"):
        decode_image(data, f"x.{fmt}")
    # The unpatched file is fine.
    assert decode_image(buf.tobytes(), f"x.{fmt}").shape == (200, 200, 3)


@pytest.mark.parametrize(
    ("ext", "kind"), [(".tiff", "TIFF"), (".ppm", "PNM"), (".hdr", "Radiance HDR")]
)
def test_other_decodable_formats_are_refused_by_name(ext: str, kind: str) -> None:
    image = np.zeros((20, 20, 3), np.float32 if ext == ".hdr" else np.uint8)
    ok, buf = cv2.imencode(ext, image)
    assert ok and cv2.imdecode(buf, cv2.IMREAD_COLOR) is not None  # OpenCV would decode it
    with pytest.raises(ImageError, match=f"x{ext}: {kind} images are not accepted"):
        decode_image(buf.tobytes(), f"x{ext}")
    for magic, name in ((b"GIF89a", "GIF"), (b"v/1\x01", "OpenEXR")):
        with pytest.raises(ImageError, match=f"{name} images are not accepted"):
            decode_image(magic + b"\0" * 64, "y")


def test_the_bounds_come_from_config(tmp_path: Path) -> None:
    photo = tmp_path / "p.png"
    photo.write_bytes(png_bomb(400, 300))
    with pytest.raises(ImageError, match=r"0\.1 MP"):
        read_image(photo, LimitsConfig(max_image_pixels=100_000))
    assert read_image(photo, LimitsConfig(max_image_pixels=120_000)).shape == (300, 400, 3)
    noise = tmp_path / "noise.png"  # incompressible: well over 64 KiB on disk
    assert cv2.imwrite(
        str(noise), np.random.default_rng(0).integers(0, 256, (200, 200, 3), np.uint8)
    )
    with pytest.raises(
        ImageError, match=r"noise\.png: file of 0\.1 MiB exceeds limits\.max_image_file_bytes"
    ):
        read_image(noise, LimitsConfig(max_image_file_bytes=2**16))

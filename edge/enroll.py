"""Photos or ready embeddings → templates in the store, through the door's own pipeline.

Every photo must show exactly one usable face; a refused photo names its index and the reason.
`variants` is the one place where extra template variants of a photo are made (e.g. the same
face with a synthetic mask); each variant goes through the pipeline like a photo and is stored
as a synthetic template.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from edge.config import EnrollConfig
from edge.pipeline import FaceResult, Pipeline
from edge.store import Store, StoreState, Template
from edge.vision.quality import FaceRejected

log = logging.getLogger(__name__)

# A variant maker: (photo, its pipeline result) -> [(variant name, variant image), ...]
VariantFn = Callable[[np.ndarray, FaceResult], list[tuple[str, np.ndarray]]]


def masked_variants(count: int, kinds: Sequence[str]) -> VariantFn:
    """Synthetic medical masks rendered on an unmasked photo (edge/vision/maskrender.py).

    Deterministic per photo (the seed comes from the pixels), so re-enrolling the same photo
    gives the same templates on every door.
    """
    from edge.vision.maskrender import MaskDB, render_mask

    db = MaskDB.load()

    def make(image: np.ndarray, r: FaceResult) -> list[tuple[str, np.ndarray]]:
        mesh = r.face.mesh
        if count == 0 or r.masked or mesh is None or r.face.source != "mesh":
            return []  # a masked photo needs no mask; a misfitted mesh would misplace it
        seed = int.from_bytes(hashlib.sha256(image.tobytes()).digest()[:8], "little")
        out = []
        for kind in list(kinds)[:count]:
            try:
                masked = render_mask(
                    image,
                    mesh.points,
                    r.face.yaw,
                    np.random.default_rng(seed),
                    mirrored=mesh.mirrored,
                    db=db,
                    kind=kind,
                )
            except ValueError as err:
                log.info("no %s variant: %s", kind, err)
                continue
            out.append((f"mask-{kind}", masked))
        return out

    return make


def variants_from_config(cfg: EnrollConfig) -> list[VariantFn]:
    return [masked_variants(cfg.masked_variants, cfg.variant_kinds)] if cfg.masked_variants else []


class EnrollmentError(ValueError):
    """A request that cannot be enrolled; `reason` is machine-readable."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ReadyEmbedding:
    model_id: str
    vector: np.ndarray
    masked: bool


def check_embeddings(
    embeddings: Sequence[ReadyEmbedding], model_id: str, dim: int
) -> list[Template]:
    """Ready embeddings from a server as templates; only this door's model id is accepted.

    Embeddings of another model are refused rather than guessed at: the store keeps the
    aligned crops of photo enrollments, so templates are re-computed locally on a model
    change, and a server re-sends embeddings made by the door's model.
    """
    if not embeddings:
        raise EnrollmentError("no_embeddings", "no embeddings given")
    out = []
    for i, e in enumerate(embeddings, 1):
        if e.model_id != model_id:
            raise EnrollmentError(
                "wrong_model",
                f"embedding {i} was made by model {e.model_id!r}; this door runs {model_id!r}",
            )
        v = np.asarray(e.vector, np.float32).ravel()
        if v.shape[0] != dim or not np.all(np.isfinite(v)):
            raise EnrollmentError(
                "bad_embedding",
                f"embedding {i} has {v.shape[0]} values (or non-finite ones); "
                f"{dim} finite values expected",
            )
        # Exactly rounded (float64 squares are exact, fsum and sqrt correctly rounded): the
        # same bits on every CPU and BLAS, so a server can compute this door's content hash of
        # what it sent (the fleet's confirmation). np.linalg.norm's float32 dot product depends
        # on the summation order of the platform's BLAS.
        norm = math.sqrt(math.fsum(x * x for x in v.astype(np.float64).tolist()))
        if norm < 1e-6:
            raise EnrollmentError("bad_embedding", f"embedding {i} is all zeros")
        unit = (v / np.float32(norm)).astype(np.float32)
        out.append(Template(unit, e.model_id, e.masked, False, "server", None))
    return out


class Enroller:
    def __init__(
        self,
        pipeline: Pipeline,
        store: Store,
        variants: Sequence[VariantFn] = (),
        keep_crops: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.store = store
        self.variants = list(variants)
        self.keep_crops = keep_crops

    def _template(self, r: FaceResult, synthetic: bool, source: str) -> Template:
        crop = None
        if self.keep_crops:
            ok, buf = cv2.imencode(".jpg", r.aligned, [cv2.IMWRITE_JPEG_QUALITY, 95])
            crop = buf.tobytes() if ok else None
        return Template(
            embedding=r.embedding.astype(np.float32),
            model_id=self.pipeline.model_id,
            masked=r.masked,
            synthetic=synthetic,
            source=source,
            crop_jpeg=crop,
        )

    def templates_from_photos(
        self, images: Sequence[np.ndarray], check: Callable[[], None] | None = None
    ) -> list[Template]:
        """Templates of each photo and its variants. `check` runs before each pipeline pass and
        may raise to give up (a request past its time limit)."""
        if not images:
            raise EnrollmentError("no_photos", "no photos given")
        check = check or (lambda: None)
        out: list[Template] = []
        for i, image in enumerate(images, 1):
            check()
            try:
                r = self.pipeline.process(image, still=True)
            except FaceRejected as err:
                raise EnrollmentError(err.reason, f"photo {i}: {err}") from None
            if r.face.faces_seen > 1:
                raise EnrollmentError(
                    "several_faces",
                    f"photo {i}: {r.face.faces_seen} faces; an enrollment photo must show one",
                )
            out.append(self._template(r, synthetic=False, source="photo"))
            for make in self.variants:
                for name, variant in make(image, r):
                    check()
                    try:
                        rv = self.pipeline.process(variant, still=True)
                    except FaceRejected as err:
                        log.info("photo %d: variant %s not usable: %s", i, name, err)
                        continue
                    out.append(self._template(rv, synthetic=True, source=f"variant:{name}"))
        return out

    def enroll_photos(
        self, person_id: str, name: str | None, images: Sequence[np.ndarray], replace: bool = False
    ) -> StoreState:
        templates = self.templates_from_photos(images)
        state = self.store.enroll(person_id, name, templates, replace=replace)
        log.info(
            "enrolled %s from %d photo(s): %d templates", person_id, len(images), len(templates)
        )
        return state

    def check_embeddings(self, embeddings: Sequence[ReadyEmbedding]) -> list[Template]:
        return check_embeddings(embeddings, self.pipeline.model_id, self.pipeline.embedder.dim)

    def enroll_embeddings(
        self,
        person_id: str,
        name: str | None,
        embeddings: Sequence[ReadyEmbedding],
        replace: bool = False,
    ) -> StoreState:
        return self.store.enroll(person_id, name, self.check_embeddings(embeddings), replace)

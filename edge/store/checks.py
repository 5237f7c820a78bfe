"""Checks of what callers hand the store: ids, names, embeddings, templates, dimensions.

Every failure is a StoreError naming the person (and template) and the rule it broke.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from edge.store.records import StoreError, Template

MAX_TEMPLATES_PER_PERSON = 256
MAX_DIM = 4096
MAX_CROP_BYTES = 1 << 20
MAX_NAME_CHARS = 200
# Embedders L2-normalise; a little slack lets float16 round trips through a server pass.
UNIT_TOLERANCE = 0.02

PERSON_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MODEL_ID = re.compile(r"[\x21-\x7e]{1,128}")  # printable ASCII without spaces


def check_person_id(person_id: object) -> str:
    if not isinstance(person_id, str) or not PERSON_ID.fullmatch(person_id):
        raise StoreError(
            f"person id {person_id!r} is invalid: use 1-64 characters of A-Z a-z 0-9 _ . -"
        )
    return person_id


def check_name(name: object, person_id: str) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise StoreError(
            f"{person_id}: display name must be a text of 1-{MAX_NAME_CHARS} characters"
        )
    if not name.isprintable():
        raise StoreError(f"{person_id}: display name contains control characters")
    return name


def check_embedding(value: object, where: str) -> np.ndarray:
    try:
        emb = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise StoreError(f"{where}: embedding is not an array: {err}") from None
    if emb.dtype.kind not in "fiu":
        raise StoreError(f"{where}: embedding must hold numbers, not {emb.dtype}")
    if emb.ndim != 1 or not 2 <= emb.shape[0] <= MAX_DIM:
        raise StoreError(
            f"{where}: embedding must be one vector of 2-{MAX_DIM} values, got shape {emb.shape}"
        )
    emb = emb.astype("<f4")  # a fresh copy, so callers cannot change it later
    if not np.all(np.isfinite(emb)):
        raise StoreError(f"{where}: embedding contains NaN or infinity")
    norm = float(np.linalg.norm(emb))
    if abs(norm - 1.0) > UNIT_TOLERANCE:
        raise StoreError(
            f"{where}: embedding norm is {norm:.4g}; templates must be L2-normalised "
            f"(norm 1 ± {UNIT_TOLERANCE})"
        )
    emb.setflags(write=False)
    return emb


def check_text(value: object, what: str, where: str, pattern: re.Pattern[str] | None) -> str:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 128
        or not value.isprintable()
        or (pattern is not None and not pattern.fullmatch(value))
    ):
        rule = "printable ASCII, no spaces" if pattern is not None else "printable characters"
        raise StoreError(f"{where}: {what} {value!r} is invalid (1-128 {rule})")
    return value


def check_template(t: object, where: str, keep_crop: bool) -> Template:
    if not isinstance(t, Template):
        raise StoreError(f"{where}: expected a Template, got {type(t).__name__}")
    for flag in ("masked", "synthetic"):
        if not isinstance(getattr(t, flag), (bool, np.bool_)):
            raise StoreError(f"{where}: {flag} must be True or False")
    crop = t.crop_jpeg
    if crop is not None:
        if not isinstance(crop, bytes) or not crop.startswith(b"\xff\xd8"):
            raise StoreError(f"{where}: crop_jpeg must be JPEG bytes")
        if len(crop) > MAX_CROP_BYTES:
            raise StoreError(f"{where}: crop_jpeg is {len(crop)} bytes, over {MAX_CROP_BYTES}")
    return Template(
        embedding=check_embedding(t.embedding, where),
        model_id=check_text(t.model_id, "model id", where, MODEL_ID),
        masked=bool(t.masked),
        synthetic=bool(t.synthetic),
        source=check_text(t.source, "source", where, None),
        crop_jpeg=crop if keep_crop else None,
    )


def check_templates(person_id: str, templates: object, keep_crops: bool) -> list[Template]:
    if not isinstance(templates, Sequence) or isinstance(templates, (str, bytes)):
        raise StoreError(f"{person_id}: templates must be a list of Template")
    if not templates:
        raise StoreError(f"{person_id}: at least one template is needed")
    if len(templates) > MAX_TEMPLATES_PER_PERSON:
        raise StoreError(
            f"{person_id}: {len(templates)} templates, at most {MAX_TEMPLATES_PER_PERSON} allowed"
        )
    return [
        check_template(t, f"{person_id}: template {i}", keep_crops)
        for i, t in enumerate(templates, 1)
    ]


def check_dims(dims: dict[str, int], person_id: str, templates: Sequence[Template]) -> None:
    """Every model's embeddings share one size; `dims` (model → size) is updated in place."""
    for i, t in enumerate(templates, 1):
        dim = t.embedding.shape[0]
        expected = dims.setdefault(t.model_id, dim)
        if dim != expected:
            raise StoreError(
                f"{person_id}: template {i}: model {t.model_id!r} embeddings have {expected} "
                f"dimensions, this one has {dim}"
            )

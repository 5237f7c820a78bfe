"""Photos become embeddings on the server, through the door's own pipeline and variants, so
doors receive embeddings and photos never leave the server."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from edge.config import load_config
from edge.enroll import Enroller, variants_from_config
from edge.imageio import decode_image
from fleet.registry import MAX_EMBEDDINGS, StoredEmbedding

log = logging.getLogger(__name__)


def embed_photos(photos: Sequence[bytes], door_config: Path | None) -> list[StoredEmbedding]:
    """Embeddings of these photos (and their masked variants) by the door's model."""
    from edge.pipeline import Pipeline  # loads the models: only when photos are given

    cfg = load_config(door_config)
    pipeline = Pipeline(cfg, video=False)
    try:
        enroller = Enroller(pipeline, None, variants_from_config(cfg.enroll), keep_crops=False)  # type: ignore[arg-type]
        images = [decode_image(data, f"photo {i}", cfg.limits) for i, data in enumerate(photos, 1)]
        templates = enroller.templates_from_photos(images)
    finally:
        close = getattr(pipeline, "close", None)
        if close is not None:
            close()
    out = [StoredEmbedding(t.model_id, t.masked, t.embedding) for t in templates]
    if len(out) > MAX_EMBEDDINGS:
        log.info(
            "keeping %d of %d embeddings (a door takes %d)",
            MAX_EMBEDDINGS,
            len(out),
            MAX_EMBEDDINGS,
        )
        out = out[:MAX_EMBEDDINGS]
    return out

"""Photos become embeddings on the server, through the door's own pipeline and variants, so
doors receive embeddings and photos never leave the server."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from edge.config import ConfigError, load_config
from edge.enroll import Enroller, variants_from_config
from edge.imageio import decode_image
from edge.mqtt.messages import MAX_EMBEDDINGS
from fleet.config import FleetConfigError
from fleet.registry import StoredEmbedding

log = logging.getLogger(__name__)


def embed_photos(photos: Sequence[bytes], door_config: Path | None) -> list[StoredEmbedding]:
    """Embeddings of these photos (and their masked variants) by the door's model."""
    # Loads the models: only when photos are given.
    from edge.commands.common import CommandError, open_pipeline

    try:
        cfg = load_config(door_config)
        with open_pipeline(cfg) as pipeline:
            variants = variants_from_config(cfg.enroll)
            enroller = Enroller(pipeline, None, variants, keep_crops=False)  # type: ignore[arg-type]
            images = [
                decode_image(data, f"photo {i}", cfg.limits) for i, data in enumerate(photos, 1)
            ]
            templates = enroller.templates_from_photos(images)
    except (ConfigError, CommandError) as err:  # a bad config or a missing model: one line
        raise FleetConfigError(f"door_config: {err}") from None
    out = [StoredEmbedding(t.model_id, t.masked, t.embedding) for t in templates]
    if len(out) > MAX_EMBEDDINGS:
        log.info("keeping %d of %d embeddings (a request carries %d)", MAX_EMBEDDINGS, len(out),
                 MAX_EMBEDDINGS)  # fmt: skip
        out = out[:MAX_EMBEDDINGS]
    return out

"""What the sub-commands share: loading config and pipeline, errors, dataset embedding."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Config, ConfigError, load_config
from edge.enroll import VariantFn
from edge.evaluate import Sample
from edge.imageio import ImageError, read_image
from edge.manifest import ManifestError
from edge.pipeline import FaceResult, Pipeline
from edge.vision.quality import FaceRejected

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """A failure the user can act on: printed as one `error:` line, no traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def config_from(args: Any) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as err:
        raise CommandError(str(err)) from None


@contextmanager
def open_pipeline(cfg: Config, video: bool = False) -> Iterator[Pipeline]:
    try:
        pipe = Pipeline(cfg, video=video)
    except ManifestError as err:
        raise CommandError(str(err)) from None
    try:
        yield pipe
    finally:
        pipe.close()


def process_file(pipe: Pipeline, path: Path | str) -> FaceResult:
    """One photo through the pipeline; unusable photos become a CommandError naming the file."""
    try:
        return pipe.process(read_image(path, pipe.cfg.limits))
    except ImageError as err:
        raise CommandError(str(err)) from None
    except FaceRejected as err:
        raise CommandError(f"{path}: {err} ({err.reason})") from None


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


class Progress:
    """A one-line progress counter on stderr (only when stderr is a terminal, or forced)."""

    def __init__(self, total: int, label: str, enabled: bool | None = None) -> None:
        self.total, self.label = total, label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and done < self.total):
            return
        self._last = now
        rate = done / max(now - self.t0, 1e-6)
        eta = (self.total - done) / rate if rate > 0 else 0
        sys.stderr.write(f"\r{self.label}: {done}/{self.total} ({rate:.1f}/s, {eta:.0f}s left) ")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def embed_samples(
    pipe: Pipeline,
    samples: Sequence[Sample],
    on_fail: Callable[[Sample, str], None] | None = None,
    variants: Sequence[VariantFn] = (),
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray | None] | None]:
    """Embeddings (NaN rows where the face could not be acquired), mask decisions, and each
    image's extra templates from enrollment's variant makers (None without variants)."""
    emb = np.full((len(samples), pipe.embedder.dim), np.nan, np.float32)
    masked = np.zeros(len(samples), bool)
    extra: list[np.ndarray | None] | None = [None] * len(samples) if variants else None
    progress = Progress(len(samples), "embedding")
    for i, s in enumerate(samples):
        try:
            image = read_image(s.path, pipe.cfg.limits)
            r = pipe.process(image)
            emb[i], masked[i] = r.embedding, r.masked
            if extra is not None:
                extra[i] = _variant_embeddings(pipe, image, r, variants)
        except (ImageError, FaceRejected) as err:
            log.info("%s: %s", s.path, err)
            if on_fail:
                on_fail(s, str(err))
        progress.update(i + 1)
    return emb, masked, extra


def _variant_embeddings(
    pipe: Pipeline, image: np.ndarray, r: FaceResult, variants: Sequence[VariantFn]
) -> np.ndarray | None:
    """What enrollment would store besides the photo itself (same code path as the door)."""
    out = []
    for make in variants:
        for _name, variant in make(image, r):
            try:
                out.append(pipe.process(variant, still=True).embedding)
            except FaceRejected:
                continue
    return np.stack(out) if out else None

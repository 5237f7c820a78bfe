"""Face embeddings through ONNX Runtime, L2-normalised."""

from __future__ import annotations

import logging

import numpy as np

from edge.config import RuntimeConfig
from edge.manifest import Manifest, ManifestError, ModelEntry, verify
from edge.vision.onnx_session import make_session, to_tensor

log = logging.getLogger(__name__)


class Embedder:
    def __init__(self, manifest: Manifest, entry: ModelEntry, runtime: RuntimeConfig) -> None:
        if entry.input.alignment != "arcface112":
            raise ManifestError(
                f"embedder {entry.id!r} expects {entry.input.alignment} crops, not arcface112"
            )
        self.entry = entry
        self.model_id = entry.id
        self.dim = entry.output.size
        self._sess = make_session(verify(manifest, entry), runtime)
        self._in = entry.input.name or self._sess.get_inputs()[0].name
        self._out = entry.output.name or self._sess.get_outputs()[0].name
        # Fixed-batch graphs (SFace is exported for batch 1) are fed one crop at a time.
        b = self._sess.get_inputs()[0].shape[0]
        self._fixed_batch = isinstance(b, int) and b == 1
        self.provider = self._sess.get_providers()[0]
        self.embed([np.zeros((*entry.input.size[::-1], 3), np.uint8)])  # warm-up

    def embed(self, aligned_bgr: list[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 unit vectors for N aligned 112×112 BGR crops."""
        x = to_tensor(aligned_bgr, self.entry.input)
        if self._fixed_batch and len(x) > 1:
            y = np.concatenate(
                [self._sess.run([self._out], {self._in: x[i : i + 1]})[0] for i in range(len(x))]
            )
        else:
            y = self._sess.run([self._out], {self._in: x})[0]
        y = y.reshape(len(x), -1).astype(np.float32)
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return y / np.maximum(norms, 1e-12)

    def end_profiling(self) -> str | None:
        """Close the runtime profile (runtime.profile_dir) and return its file, if profiling."""
        path = self._sess.end_profiling()
        return path or None

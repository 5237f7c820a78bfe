"""Mask / no-mask classification of the tight mesh face box through ONNX Runtime."""

from __future__ import annotations

import numpy as np

from edge.config import RuntimeConfig
from edge.manifest import Manifest, ManifestError, ModelEntry, verify
from edge.vision.onnx_session import make_session, to_tensor


class MaskClassifier:
    def __init__(self, manifest: Manifest, entry: ModelEntry, runtime: RuntimeConfig) -> None:
        classes = entry.output.classes or []
        if "masked" not in classes or entry.output.kind != "log_softmax":
            raise ManifestError(
                f"mask model {entry.id!r} must give log_softmax over classes incl. 'masked'"
            )
        self.entry = entry
        self._masked_idx = classes.index("masked")
        self._sess = make_session(verify(manifest, entry), runtime)
        self._in = entry.input.name or self._sess.get_inputs()[0].name
        self._out = entry.output.name or self._sess.get_outputs()[0].name
        self.mask_probability([np.zeros((*entry.input.size[::-1], 3), np.uint8)])  # warm-up

    def mask_probability(self, crops_bgr: list[np.ndarray]) -> np.ndarray:
        """P(masked) for each tight face crop, shape (N,)."""
        x = to_tensor(crops_bgr, self.entry.input)
        logp = self._sess.run([self._out], {self._in: x})[0]
        return np.exp(logp[:, self._masked_idx]).astype(np.float32)

    def end_profiling(self) -> str | None:
        """Close the runtime profile (runtime.profile_dir) and return its file, if profiling."""
        path = self._sess.end_profiling()
        return path or None

"""Cosine matching: 1:1 and vectorised 1:N over a float32 gallery."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.config import MatchConfig


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (normalised here, so raw vectors are fine too)."""
    a = np.asarray(a, np.float32).ravel()
    b = np.asarray(b, np.float32).ravel()
    if a.shape != b.shape:
        raise ValueError(f"embedding sizes differ: {a.shape[0]} vs {b.shape[0]}")
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b) / den if den > 0 else 0.0


def threshold_for(cfg: MatchConfig, masked: bool) -> float:
    """Masked probes get their own threshold (a mask hides half the face)."""
    return cfg.threshold_masked if masked else cfg.threshold_unmasked


@dataclass(frozen=True)
class Match:
    label: str | None  # best person, or None for an empty gallery
    score: float
    index: int  # row of the best template, -1 when empty


class Gallery:
    """Templates as one contiguous float32 matrix; several rows may share a label.

    float32 on purpose: NumPy's float16 matmul is ~16× slower on CPUs.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._m = np.zeros((0, dim), np.float32)
        self.labels: list[str] = []

    @classmethod
    def from_blocks(cls, dim: int, blocks: list[tuple[str, np.ndarray]]) -> Gallery:
        """Build in one copy from (label, (N, dim) templates) blocks: add() re-copies per call."""
        g = cls(dim)
        mats = [np.asarray(b, np.float32).reshape(-1, dim) for _, b in blocks]
        if mats:
            m = np.vstack(mats)
            g._m = np.ascontiguousarray(
                m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
            )
            g.labels = [
                label for (label, _), b in zip(blocks, mats, strict=True) for _ in range(len(b))
            ]
        return g

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, label: str, embeddings: np.ndarray) -> None:
        """Add one (dim,) vector or an (N, dim) block of templates for `label`."""
        e = np.asarray(embeddings, np.float32)
        if e.ndim == 1:
            e = e[None]
        if e.ndim != 2 or e.shape[1] != self.dim:
            raise ValueError(
                f"templates for {label!r} have shape {e.shape}: the gallery holds "
                f"{self.dim}-dimension embeddings"
            )
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        self._m = np.ascontiguousarray(np.vstack([self._m, e]))
        self.labels.extend([label] * len(e))

    def scores(self, probe: np.ndarray) -> np.ndarray:
        """Cosine of the probe against every template, shape (N,)."""
        p = np.asarray(probe, np.float32).ravel()
        if p.shape[0] != self.dim:
            raise ValueError(f"probe has {p.shape[0]} dimensions, gallery {self.dim}")
        p = p / max(float(np.linalg.norm(p)), 1e-12)
        return self._m @ p

    def best_per_label(self, probe: np.ndarray) -> dict[str, float]:
        """Each person's best template score."""
        out: dict[str, float] = {}
        for label, s in zip(self.labels, self.scores(probe).tolist(), strict=True):
            if s > out.get(label, -2.0):
                out[label] = s
        return out

    def search(self, probe: np.ndarray) -> Match:
        if not self.labels:
            return Match(None, float("-inf"), -1)
        s = self.scores(probe)
        i = int(np.argmax(s))
        return Match(self.labels[i], float(s[i]), i)

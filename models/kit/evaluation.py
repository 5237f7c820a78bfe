"""Verification metrics for a model in training, and the daemon's own evaluation of an export.

In training, held-out identities are embedded by the torch model and scored with the metric
functions of `edge.evaluate` (the ones `python -m edge evaluate` reports), all pairs.
An exported model is evaluated by `python -m edge evaluate` itself, in a subprocess, with a
throwaway config and manifest that add the new embedder: same landmarks, alignment,
preprocessing and ONNX Runtime session as the door.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from edge.config import DEFAULT_CONFIG, PROJECT_ROOT
from edge.evaluate import auc, equal_error_rate, tar_at_far
from models.kit.data import normalise

log = logging.getLogger(__name__)


@torch.no_grad()
def embed_crops(
    model: torch.nn.Module,
    crops_bgr: np.ndarray,
    device: torch.device | str = "cpu",
    batch: int = 64,
) -> np.ndarray:
    """(N, D) float32 unit embeddings of aligned BGR crops, the model in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(crops_bgr), batch):
            x = torch.from_numpy(normalise(np.asarray(crops_bgr[i : i + batch]))).to(device)
            out.append(torch.nn.functional.normalize(model(x).float(), dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def pair_scores(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of every unordered pair: (genuine, impostor)."""
    a, b = np.triu_indices(len(emb), k=1)
    scores = np.einsum("ij,ij->i", emb[a], emb[b]).astype(np.float64)
    same = labels[a] == labels[b]
    return scores[same], scores[~same]


def separation(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """d′: distance between the genuine and impostor score means in pooled standard deviations."""
    pooled = np.sqrt((genuine.var() + impostor.var()) / 2.0)
    return float((genuine.mean() - impostor.mean()) / max(pooled, 1e-12))


def verification_report(emb: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """AUC, EER, TAR@FAR 1e-2/1e-3 (None where too few impostors), mean scores and d′."""
    gen, imp = pair_scores(emb, labels)
    if not len(gen) or not len(imp):
        raise ValueError(f"need genuine and impostor pairs, have {len(gen)} and {len(imp)}")
    eer, eer_threshold = equal_error_rate(gen, imp)
    return {
        "pairs": {"genuine": len(gen), "impostor": len(imp)},
        "auc": auc(gen, imp),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "tar_at_far": {
            "1e-2": tar_at_far(gen, imp, 1e-2)["tar"],
            "1e-3": tar_at_far(gen, imp, 1e-3)["tar"],
        },
        "genuine_mean": float(gen.mean()),
        "impostor_mean": float(imp.mean()),
        "separation": separation(gen, imp),
    }


# --------------------------------------------------------------------------------------------
# The daemon's own evaluation of an exported model
# --------------------------------------------------------------------------------------------


def write_eval_config(
    model_file: Path, entry: dict[str, Any], folder: Path, base_config: Path | None = None
) -> Path:
    """A config.yaml + manifest in `folder` that make `entry` the embedder; returns the config."""
    base_config = base_config or DEFAULT_CONFIG
    cfg = yaml.safe_load(base_config.read_text(encoding="utf-8")) or {}
    models_cfg = cfg.setdefault("models", {})
    manifest_path = Path(models_cfg.get("manifest", "models/manifest.yaml"))
    if not manifest_path.is_absolute():
        manifest_path = base_config.resolve().parent / manifest_path
    manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
    # Absolute files: the throwaway manifest lives elsewhere but points at the real models.
    for spec in manifest["models"].values():
        spec["file"] = str((manifest_path.parent / spec["file"]).resolve())
    new = {k: v for k, v in entry.items() if k != "id"}
    new["file"] = str(model_file.resolve())
    manifest["models"][entry["id"]] = new
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), "utf-8")
    models_cfg["manifest"] = str(folder / "manifest.yaml")
    models_cfg["embedder"] = entry["id"]
    # Keep the TensorRT cache and state where the base config meant them to be.
    runtime = cfg.setdefault("runtime", {})
    trt = Path(runtime.get("trt_cache_dir", ".state/trt-cache"))
    runtime["trt_cache_dir"] = str(trt if trt.is_absolute() else base_config.parent / trt)
    out = folder / "config.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return out


def evaluate_with_daemon(
    model_file: Path,
    entry: dict[str, Any],
    data: Path,
    protocol: str = "all",
    base_config: Path | None = None,
) -> dict[str, Any]:
    """`python -m edge evaluate --json` with this model as the embedder; returns its report."""
    with tempfile.TemporaryDirectory(prefix="maskgate-kit-eval-") as tmp:
        cfg = write_eval_config(model_file, entry, Path(tmp), base_config)
        cmd = [sys.executable, "-m", "edge", "-c", str(cfg), "evaluate", "--data", str(data)]
        cmd += ["--protocol", protocol, "--json"]
        log.info("running %s", " ".join(cmd))
        # stderr is passed through: the daemon's own progress counter shows there.
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"edge evaluate failed (exit {proc.returncode})")
    return json.loads(proc.stdout)

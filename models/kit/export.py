"""Backbone → ONNX (dynamic batch), checked against torch, described by a manifest entry.

The parity check feeds the same real aligned crops to torch (through `data.normalise`) and to
ONNX Runtime (through the daemon's own `to_tensor` with the manifest entry's input spec), so it
also proves the entry's colour order and normalisation are the ones training used. Below the
cosine floor the export is refused: the file is removed and no entry is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import yaml

from edge.config import RuntimeConfig
from edge.manifest import ModelEntry, sha256_file
from edge.vision.onnx_session import make_session, to_tensor
from models.kit.data import INPUT_NAME, input_spec, normalise

log = logging.getLogger(__name__)

OPSET = 17
OUTPUT_NAME = "embedding"
MODELS_ROOT = Path(__file__).resolve().parent.parent  # manifest files are relative to models/
DEFAULT_PARITY = 0.9999


class ExportRefused(RuntimeError):
    """The exported model does not match what it was exported from closely enough."""


@dataclass(frozen=True)
class Parity:
    cosine_min: float
    cosine_mean: float
    max_abs_diff: float
    crops: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            "cosine_min": round(self.cosine_min, 7),
            "cosine_mean": round(self.cosine_mean, 7),
            "max_abs_diff": float(f"{self.max_abs_diff:.3g}"),
            "crops": self.crops,
        }


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(den, 1e-12)


def export_onnx(model: torch.nn.Module, path: Path, opset: int = OPSET) -> Path:
    """Write `model` (eval mode) as ONNX: input `input` N×3×112×112, output `embedding` N×D."""
    if opset < 17:
        raise ValueError(f"opset {opset} < 17: the INT8 and TensorRT paths are built for opset 17+")
    model = model.eval().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, 112, 112)
    tmp = path.with_suffix(".part.onnx")
    with warnings.catch_warnings():
        # The torch.export-based exporter needs onnxscript, which the project does not ship;
        # the TorchScript exporter handles this plain CNN exactly and warns about its future.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(tmp),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    proto = onnx.load(str(tmp))
    onnx.checker.check_model(proto)
    tmp.replace(path)
    log.info("exported %s (opset %d, %.1f MB)", path, opset, path.stat().st_size / 1e6)
    return path


def cpu_session(path: Path, threads: int = 2):  # -> ort.InferenceSession
    """The daemon's own ONNX Runtime session (same options), on the CPU provider."""
    return make_session(path, RuntimeConfig(providers=["cpu"], threads=threads))


def onnx_embeddings(path: Path, crops_bgr: np.ndarray, batch: int = 16) -> np.ndarray:
    """Raw (unnormalised) ONNX outputs for BGR crops, preprocessed as the daemon does."""
    sess = cpu_session(path)
    spec = input_spec(sess.get_inputs()[0].name)
    out = []
    for i in range(0, len(crops_bgr), batch):
        x = to_tensor(list(crops_bgr[i : i + batch]), spec)
        out.append(sess.run(None, {spec.name: x})[0])
    return np.concatenate(out)


@torch.no_grad()
def torch_embeddings(model: torch.nn.Module, crops_bgr: np.ndarray, batch: int = 16) -> np.ndarray:
    model = model.eval().cpu()
    out = [
        model(torch.from_numpy(normalise(crops_bgr[i : i + batch]))).numpy()
        for i in range(0, len(crops_bgr), batch)
    ]
    return np.concatenate(out)


def check_parity(model: torch.nn.Module, path: Path, crops_bgr: np.ndarray) -> Parity:
    if not len(crops_bgr):
        raise ValueError("parity needs at least one real aligned crop")
    ref = torch_embeddings(model, crops_bgr)
    got = onnx_embeddings(path, crops_bgr)
    c = cosines(ref, got)
    return Parity(float(c.min()), float(c.mean()), float(np.abs(ref - got).max()), len(c))


def export_checked(
    model: torch.nn.Module,
    path: Path,
    crops_bgr: np.ndarray,
    min_cosine: float = DEFAULT_PARITY,
    opset: int = OPSET,
) -> Parity:
    """Export, then refuse (remove the file, raise ExportRefused) if any crop's cosine between
    torch and ONNX Runtime is below `min_cosine`."""
    export_onnx(model, path, opset)
    parity = check_parity(model, path, crops_bgr)
    log.info(
        "parity on %d real crops: cosine min %.6f mean %.6f, max |diff| %.2e",
        parity.crops,
        parity.cosine_min,
        parity.cosine_mean,
        parity.max_abs_diff,
    )
    if parity.cosine_min < min_cosine:
        path.unlink(missing_ok=True)
        raise ExportRefused(
            f"ONNX output differs from torch: cosine min {parity.cosine_min:.6f} < {min_cosine} "
            f"on {parity.crops} crops; {path} removed"
        )
    return parity


# --------------------------------------------------------------------------------------------
# Manifest entries
# --------------------------------------------------------------------------------------------


def manifest_file(path: Path) -> str:
    """`path` as the manifest names files: relative to models/ where possible."""
    p = path.resolve()
    try:
        return str(p.relative_to(MODELS_ROOT))
    except ValueError:
        return str(p)


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def versions() -> dict[str, str]:
    import onnxruntime

    return {
        "torch": str(torch.__version__),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def trained_origin(checkpoint: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    """How a trained model came to be (the proposed `kind: trained` origin schema)."""
    cfg = ckpt["config"]
    loss = cfg["loss"]
    return {
        "kind": "trained",
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "step": int(ckpt["step"]),
        "config_sha256": config_digest(cfg),
        "backbone": cfg["model"]["backbone"],
        "loss": f"{loss['kind']} s={loss['s']} m={loss['m']}",
        "data": str(cfg["data"]["train_dir"]),
        "identities": len(ckpt["identities"]),
        "transform": "onnx_export",
        "tools": versions(),
    }


def embedder_entry(
    model_id: str,
    path: Path,
    embedding_size: int,
    origin: dict[str, Any],
    licence: str,
    notes: str | None = None,
) -> dict[str, Any]:
    """A manifest entry for an embedder; validated against edge/manifest.py where it can be."""
    spec = input_spec()
    entry: dict[str, Any] = {
        "id": model_id,
        "role": "embedder",
        "file": manifest_file(path),
        "sha256": sha256_file(path),
        "format": "onnx",
        "input": {
            "name": spec.name,
            "size": list(spec.size),
            "layout": spec.layout,
            "color": spec.color,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "alignment": spec.alignment,
        },
        "output": {"name": OUTPUT_NAME, "size": embedding_size, "kind": "embedding"},
        "origin": origin,
        "licence": licence,
    }
    if notes:
        entry["notes"] = notes
    ModelEntry.model_validate(entry)  # exactly what the daemon's manifest loader accepts
    return entry


def write_entries(entries: list[dict[str, Any]], path: Path) -> Path:
    """A YAML snippet in manifest.yaml's shape (`models: {id: {...}}`), ready to merge."""
    body = {"models": {e["id"]: {k: v for k, v in e.items() if k != "id"} for e in entries}}
    header = (
        "# Manifest entries written by `python -m models.export`: merge them into\n"
        "# models/manifest.yaml (and commit the model file) to ship a trained embedder.\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(body, Dumper=_EntryDumper, sort_keys=False, width=100)
    path.write_text(header + text, encoding="utf-8")
    return path


class _EntryDumper(yaml.SafeDumper):
    """Short lists of numbers on one line (`size: [112, 112]`), as manifest.yaml writes them."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = len(data) <= 4 and all(isinstance(v, (int, float)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_EntryDumper.add_representer(list, _represent_list)


def read_entries(path: Path) -> dict[str, dict[str, Any]]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ValueError(f"{path}: expected `models: {{id: entry}}`")
    return {str(k): {**v, "id": str(k)} for k, v in raw["models"].items()}

"""Measure the activation ranges that models/int8_pointwise.py quantizes an embedder with.

    python -m models.calibrate_int8                 # sface -> models/calibration/sface_int8.json
    python -m models.calibrate_int8 --check         # recompute and compare, change nothing

Calibration crops: the registry test photos under tests/.data (never the dev sets), each
aligned by the door's own pipeline, and each again with one synthetic mask (seed 0), so the
ranges cover masked faces too. The nodes quantized: every Gemm and every 1×1 Conv of one group
whose input is at most `--max-side` pixels a side: SFace's late pointwise layers, which hold most
of its arithmetic on small activations; its early layers stay float (issue 9).
Each tensor's range is its `--percentile` / (100 − percentile) over all crops' values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from models.int8_pointwise import CALIBRATION_DIR, FORMAT, fold_batchnorm

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / ".data"


def pointwise_nodes(model: Any, max_side: int) -> list[str]:
    """Gemm nodes, and 1×1 single-group Conv nodes whose input is at most max_side a side."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.value_info, *inferred.graph.input]
    }
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type == "Gemm":
            chosen.append(node.name)
        elif node.op_type == "Conv":
            attrs = {a.name: a for a in node.attribute}
            group = attrs["group"].i if "group" in attrs else 1
            w = inits.get(node.input[1], [])
            side = shapes.get(node.input[0], [0, 0, 0, 0])[-2:]
            if group == 1 and w[2:] == [1, 1] and 0 < max(side) <= max_side:
                chosen.append(node.name)
    return chosen


def calibration_crops(cfg: Any) -> list[np.ndarray]:
    """Input tensors of the embedder for each registry photo, bare and masked."""
    from edge.imageio import read_image
    from edge.pipeline import Pipeline
    from edge.vision.maskrender import NoMeshError, default_db, mask_face
    from edge.vision.onnx_session import to_tensor
    from edge.vision.quality import FaceRejected

    out = []
    rng, db = np.random.default_rng(0), default_db()
    with Pipeline(cfg) as pipe:
        spec = pipe.embedder.entry.input
        for f in sorted(PHOTOS.glob("*/*.jpg")):
            try:
                image = read_image(f)
                out.append(to_tensor([pipe.process(image).aligned], spec))
                masked = mask_face(pipe, image, rng, db=db)[0]
                out.append(to_tensor([pipe.process(masked).aligned], spec))
            except (FaceRejected, NoMeshError) as err:
                print(f"  {f.name}: skipped ({err})", file=sys.stderr)
    if not out:
        raise SystemExit(f"no calibration crops under {PHOTOS}: run ./install.sh first")
    return out


def measure(
    model_bytes: bytes, crops: list[np.ndarray], max_side: int, percentile: float
) -> dict[str, Any]:
    """The calibration record for model_bytes: nodes to quantize and their tensors' ranges."""
    import onnx
    import onnxruntime as ort

    model = onnx.load_from_string(model_bytes)
    fold_batchnorm(model)
    nodes = pointwise_nodes(model, max_side)
    by_name = {n.name: n for n in model.graph.node}
    tensors = sorted({t for n in nodes for t in (by_name[n].input[0], by_name[n].output[0])})
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in present)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # exact float
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = sess.get_inputs()[0].name
    seen: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for x in crops:
        for t, v in zip(tensors, sess.run(tensors, {feed: x}), strict=True):
            seen[t].append(v.ravel())
    ranges = {}
    for t in tensors:
        v = np.concatenate(seen[t])
        ranges[t] = [float(np.percentile(v, 100 - percentile)), float(np.percentile(v, percentile))]
    return {
        "format": FORMAT,
        "how": f"python -m models.calibrate_int8 (crops: {len(crops)}, percentile {percentile}, "
        f"max side {max_side})",
        "weight_max": 63,
        "nodes": nodes,
        "ranges": ranges,
    }


def main(argv: list[str] | None = None) -> int:
    from edge.config import load_config
    from edge.manifest import load_manifest, verify

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sface", help="float embedder in the manifest")
    ap.add_argument("--out", type=Path, default=None, help="default: models/calibration/")
    ap.add_argument("--max-side", type=int, default=14, help="largest input side quantized")
    ap.add_argument("--percentile", type=float, default=99.99, help="range percentile")
    ap.add_argument("--check", action="store_true", help="compare with the recorded file")
    args = ap.parse_args(argv)
    cfg = load_config()
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    src = verify(manifest, manifest.get(args.model, "embedder"))
    out = args.out or CALIBRATION_DIR / f"{args.model}_int8.json"
    record = measure(src.read_bytes(), calibration_crops(cfg), args.max_side, args.percentile)
    if args.check:
        old = json.loads(out.read_text())
        worst = max(
            abs(a - b) / max(abs(b), 1e-6)
            for t in old["ranges"]
            for a, b in zip(record["ranges"].get(t, [np.inf] * 2), old["ranges"][t], strict=True)
        )
        same = old["nodes"] == record["nodes"]
        print(f"{out}: same nodes {same}; largest relative range change {worst:.2e}")
        return 0 if same and worst < 0.05 else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{out}: {len(record['nodes'])} nodes, {len(record['ranges'])} tensor ranges")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 9's quantized embedder beside the float one it came from: both provisioned graphs
(`sface`, `sface_int8`: models/int8_pointwise.py from models/calibration/sface_int8.json),
their embeddings' cosine on a photo folder's aligned crops and their latency, alternated:

    python -m bench.quantize_sface [--eval ../shared/data/mfr2-dev] [--runs 200] [--threads 2]

TAR at FAR on the dev set comes from `python -m edge evaluate` with `models.embedder` set to
each (README, "Speed").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edge.config import RuntimeConfig, load_config
from edge.imageio import read_image
from edge.manifest import load_manifest
from edge.pipeline import Pipeline
from edge.vision.embed import Embedder
from edge.vision.quality import FaceRejected


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", type=Path, default=None, help="photo folder for the cosine check")
    ap.add_argument("--float", default="sface", help="float embedder id")
    ap.add_argument("--int8", default="sface_int8", help="quantized embedder id")
    ap.add_argument("--runs", type=int, default=200, help="timed runs of each")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    args = ap.parse_args(argv)
    cfg = load_config()
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    runtime = RuntimeConfig(providers=["cpu"], threads=args.threads)
    models = {m: Embedder(manifest, manifest.get(m, "embedder"), runtime)
              for m in (args.float, args.int8)}  # fmt: skip
    crops = []
    with Pipeline(cfg) as pipe:
        for f in sorted(args.eval.glob("*/*")) if args.eval else []:
            try:
                crops.append(pipe.process(read_image(f)).aligned)
            except (FaceRejected, ValueError):
                continue
    if crops:
        a, b = (np.concatenate([e.embed([c]) for c in crops]) for e in models.values())
        cos = (a * b).sum(axis=1)
        print(
            f"cosine {args.int8} to {args.float} on {len(crops)} crops of {args.eval}: "
            f"min {cos.min():.4f}, mean {cos.mean():.4f}"
        )
    crop = crops[0] if crops else np.full((112, 112, 3), 128, np.uint8)
    times: dict[str, list[float]] = {m: [] for m in models}
    for k in range(args.runs + 10):
        for m in models if k % 2 else reversed(list(models)):
            t0 = time.perf_counter()
            models[m].embed([crop])
            if k >= 10:  # warm-up first
                times[m].append((time.perf_counter() - t0) * 1e3)
    f50, i50 = (float(np.median(times[m])) for m in models)
    print(
        f"p50 {args.float} {f50:.2f} ms, {args.int8} {i50:.2f} ms "
        f"({args.int8} / {args.float} {i50 / f50:.2f}; {args.threads} threads, alternated)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 9's quantized-embedder experiment: static INT8 (QDQ, per-channel) of the shipped SFace
graph, calibrated on aligned crops of the registry test photos (each also with one synthetic
mask, seed 0), compared with the float graph it came from:

    python -m bench.quantize_sface --out /tmp/sface_int8.onnx [--eval ../shared/data/mfr2-dev]

It prints the cosine to the float embedding on --eval's crops and both graphs' latency
(alternated, 2 threads). Not shipped: on this CPU (AVX2, no VNNI) it was not faster than the
float graph and lost 2 genuine pairs at FAR 1e-3 on mfr2-dev (README, "bench").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from edge.config import load_config
from edge.imageio import read_image
from edge.manifest import load_manifest, verify
from edge.pipeline import Pipeline
from edge.vision.maskrender import NoMeshError, default_db, mask_face
from edge.vision.onnx_session import to_tensor
from edge.vision.quality import FaceRejected

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / ".data"


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="where to write the INT8 graph")
    ap.add_argument("--eval", type=Path, default=None, help="photo folder for the cosine check")
    ap.add_argument("--percentile", type=float, default=99.99, help="calibration percentile")
    args = ap.parse_args(argv)
    cfg = load_config()
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    src = verify(manifest, manifest.get(cfg.models.embedder, "embedder"))
    cal: list[np.ndarray] = []
    test: list[np.ndarray] = []
    with Pipeline(cfg) as pipe:
        spec = pipe.embedder.entry.input
        rng, db = np.random.default_rng(0), default_db()
        for f in sorted(PHOTOS.glob("*/*.jpg")):
            try:
                image = read_image(f)
                cal.append(to_tensor([pipe.process(image).aligned], spec))
                masked = mask_face(pipe, image, rng, db=db)[0]
                cal.append(to_tensor([pipe.process(masked).aligned], spec))
            except (FaceRejected, NoMeshError):
                continue
        for f in sorted(args.eval.glob("*/*")) if args.eval else []:
            try:
                test.append(to_tensor([pipe.process(read_image(f)).aligned], spec))
            except (FaceRejected, ValueError):
                continue
    name = pipe.embedder.entry.input.name or "data"

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(cal)

        def get_next(self) -> dict | None:
            x = next(self.it, None)
            return None if x is None else {name: x}

    quantize_static(
        str(src),
        str(args.out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.Percentile,
        extra_options={"CalibPercentile": args.percentile},
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    f32 = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    i8 = ort.InferenceSession(str(args.out), so, providers=["CPUExecutionProvider"])
    print(f"{len(cal)} calibration crops; {args.out} {args.out.stat().st_size / 1e6:.1f} MB")
    if test:
        cos = []
        for x in test:
            a, b = (s.run(None, {name: x})[0].ravel() for s in (f32, i8))
            cos.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
        print(f"cosine to float on {len(test)} crops: min {min(cos):.3f}, mean {np.mean(cos):.3f}")
    x = cal[0]
    times: dict[str, list[float]] = {"float": [], "int8": []}
    for k in range(100):
        for label, s in (("float", f32), ("int8", i8)) if k % 2 else (("int8", i8), ("float", f32)):
            t0 = time.perf_counter()
            s.run(None, {name: x})
            times[label].append((time.perf_counter() - t0) * 1e3)
    f50, i50 = (float(np.median(times[k])) for k in ("float", "int8"))
    print(f"p50 float {f50:.2f} ms, int8 {i50:.2f} ms (int8 / float {i50 / f50:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The dlib peer's frame path, timed: run by bench/peer_dlib.py with the peer's own venv (dlib-bin,
face_recognition, face_recognition_models), never with MaskGate's. Standard library, numpy,
Pillow and face_recognition only.

Per frame, as `edge bench` does for MaskGate: decode (apart), then detect (HOG, the default of
face_recognition, one upsampling), encode the largest face (5-point landmarks + the 128-d
ResNet, face_recognition's defaults) and match it against a 1,000-template gallery; `total` is
detect + encode + match. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}  # edge/capture/folder.py's


def pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None}
    a = np.asarray(values)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", type=Path, required=True, help="folder of images (looped)")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--gallery-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="pin to this many cores")
    args = ap.parse_args()
    if args.threads is not None:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))

    import face_recognition
    import PIL

    files = sorted(f for f in args.source.iterdir() if f.suffix.lower() in SUFFIXES)
    if not files:
        print(f"{args.source}: no images", file=sys.stderr)
        return 2
    gallery = np.random.default_rng(0).standard_normal((args.gallery_size, 128))
    stages: dict[str, list[float]] = {"decode": [], "detect": [], "encode": [], "match": []}
    totals: list[float] = []
    no_face = 0
    wall0 = cpu0 = None
    for n in range(args.frames + args.warmup):
        if n == args.warmup:
            wall0, cpu0 = time.perf_counter(), os.times()
        timed = n >= args.warmup
        t0 = time.perf_counter()
        image = face_recognition.load_image_file(str(files[n % len(files)]))
        t1 = time.perf_counter()
        boxes = face_recognition.face_locations(image)  # (top, right, bottom, left), HOG
        t2 = time.perf_counter()
        if not boxes:
            no_face += timed
            continue
        box = max(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]))
        (enc,) = face_recognition.face_encodings(image, [box])
        t3 = time.perf_counter()
        int(np.argmin(face_recognition.face_distance(gallery, enc)))
        t4 = time.perf_counter()
        if timed:
            for k, a, b in (("decode", t0, t1), ("detect", t1, t2), ("encode", t2, t3)):
                stages[k].append((b - a) * 1e3)
            stages["match"].append((t4 - t3) * 1e3)
            totals.append((t4 - t1) * 1e3)
    wall = time.perf_counter() - wall0
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    out = {
        "source": str(args.source),
        "frames": args.frames,
        "faces": len(totals),
        "no_face": no_face,
        "stages": {k: pct(v) for k, v in stages.items()},
        "total": pct(totals),
        "fps": round(args.frames / wall, 2),
        "cpu_percent": round(100 * cpu / wall, 1),
        # Distribution versions (face_recognition 1.3.0 says 1.2.3 in its __version__).
        "versions": {
            "dlib-bin": version("dlib-bin"),
            "face_recognition": version("face_recognition"),
            "face_recognition_models": version("face_recognition_models"),
            "numpy": np.__version__,
            "pillow": PIL.__version__,
        },
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

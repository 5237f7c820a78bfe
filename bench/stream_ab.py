"""Issue 9 on a camera stream: the old per-frame behaviour (YuNet and the mask classifier on
every frame) against the new one (YuNet every `landmarks.detector_every` frames of a track, the
mask verdict reused along the track), alternated in blocks of frames in one process so both see
the same load:

    python -m bench.pad_clips --out /tmp/pad-clips --set door
    python -m bench.stream_ab --source /tmp/pad-clips/live-obama-turn-bare [--blocks 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edge.config import load_config
from edge.imageio import read_image
from edge.maskreuse import MaskReuse
from edge.pipeline import Pipeline
from edge.vision.locate import CrossCheck

STAGES = ("landmarks", "align", "mask", "embed", "total")
BLOCK = 20  # frames per block; the first 2 of each (a new track in both modes) are not timed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, required=True, help="folder of camera frames")
    ap.add_argument("--blocks", type=int, default=12, help="blocks of 20 frames per mode")
    args = ap.parse_args(argv)
    cfg = load_config()
    frames = [read_image(f) for f in sorted(args.source.glob("*.jpg"))]
    if not frames:
        raise SystemExit(f"{args.source}: no .jpg frames")
    times: dict[str, dict[str, list[float]]] = {m: {s: [] for s in STAGES} for m in ("old", "new")}
    with Pipeline(cfg, video=True) as pipe:
        ts, i = 1000, 0
        for block in range(args.blocks):
            for mode in ("old", "new") if block % 2 == 0 else ("new", "old"):
                old = mode == "old"
                pipe.cross_check = CrossCheck(
                    1 if old else cfg.landmarks.detector_every, cfg.decision.track.max_gap_s
                )
                pipe.mask_reuse = None if old else MaskReuse(
                    cfg.mask_reuse, cfg.decision.track, cfg.liveness.blink_max_rigid,
                    cfg.match.mask_probability,
                )  # fmt: skip
                for k in range(BLOCK):
                    ts, i = ts + 66, i + 1
                    r = pipe.process(frames[i % len(frames)], ts)
                    if k < 2:
                        continue
                    for s, v in r.timings_ms.items():
                        times[mode][s].append(v)
                    times[mode]["total"].append(sum(r.timings_ms.values()))
    print(f"{'stage':<10} {'old p50':>8} {'new p50':>8} {'ratio':>6}   "
          f"{'old p95':>8} {'new p95':>8} {'ratio':>6}")  # fmt: skip
    for s in STAGES:
        o, n = np.asarray(times["old"][s]), np.asarray(times["new"][s])
        o50, n50, o95, n95 = (float(np.percentile(a, q)) for q in (50, 95) for a in (o, n))
        print(f"{s:<10} {o50:8.2f} {n50:8.2f} {n50 / o50:6.2f}   {o95:8.2f} {n95:8.2f} "
              f"{n95 / o95:6.2f}")  # fmt: skip
    print(f"{len(times['old']['total'])} timed frames per mode")
    return 0


if __name__ == "__main__":
    sys.exit(main())

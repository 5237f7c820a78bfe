"""The same clips through the door's decision logic as it was before issue 7, for comparison:

    python -m bench.pad_before --clips /tmp/pad-clips [--rev f6ea715] [--json]

Loads edge/config.py, edge/liveness.py and edge/decide.py of REV from git (liveness then was a
blink, or a yaw range of 8 degrees anywhere in the window, with no notion of a track) and plays
every clip through today's pipeline into that decider, on the clip's clock, as `edge pad` does.
Prints which clips opened the door and each live clip's time to unlock.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

from edge.config import PROJECT_ROOT, load_config
from edge.imageio import read_image
from edge.match import threshold_for
from edge.pad import Clip, enroll_gallery, load_clips
from edge.pipeline import Pipeline
from edge.vision.quality import FaceRejected

BEFORE = "f6ea715"  # main when issue 7 was taken up


def load_before(rev: str) -> types.SimpleNamespace:
    """REV's config, liveness and decide modules, importing each other (not today's)."""
    mods: dict[str, types.ModuleType] = {}
    for name in ("config", "liveness", "decide"):
        src = subprocess.run(
            ["git", "show", f"{rev}:edge/{name}.py"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for dep in mods:
            src = src.replace(f"from edge.{dep} import", f"from _before.{dep} import")
        module = types.ModuleType(f"_before.{name}")
        module.__file__ = str(PROJECT_ROOT / "edge" / f"{name}.py")  # config.py finds its root
        sys.modules[module.__name__] = module
        exec(compile(src, f"{rev}:edge/{name}.py", "exec"), module.__dict__)
        mods[name] = module
    return types.SimpleNamespace(**mods)


def replay(old, pipe: Pipeline, gallery, cfg, clip: Clip, t0: float) -> dict:
    now = [t0]
    dec = old.decide.Decider(
        old.config.DecisionConfig(), old.config.LivenessConfig(), lambda: now[0]
    )
    unlocks, first_face, present = [], None, False
    for i, path in enumerate(clip.frames):
        t = now[0] = t0 + i / clip.fps
        image = read_image(path)
        ts = int(t * 1000)
        try:  # the door's frame step as it was
            face = pipe.detect(image, ts) if not present else None
            r = pipe.process(image, ts, face=face)
        except FaceRejected as err:
            present = err.reason not in (FaceRejected.NO_FACE, FaceRejected.BAD_IMAGE)
            if not present:
                dec.no_face(t)
            continue
        present = True
        first_face = t if first_face is None else first_face
        match = gallery.search(r.embedding)
        thr = threshold_for(cfg.match, r.masked)
        mesh = r.face.mesh
        obs = old.decide.Observation(
            t=t,
            person=match.label if match.score >= thr else None,
            best=match.label,
            score=match.score,
            threshold=thr,
            masked=r.masked,
            yaw=r.face.yaw,
            ear=old.liveness.eye_aspect_ratio(mesh.points)
            if mesh is not None and r.face.source == "mesh"
            else None,
        )
        for d in dec.observe(obs):
            if d.decision == "unlock":
                unlocks.append(
                    {"t": round(t - first_face, 3), "person": d.person, "liveness": d.liveness}
                )
    for k in range(3):  # nobody for a moment: the mesh stops tracking this clip's face
        with contextlib.suppress(FaceRejected):
            pipe.detect(np.zeros((64, 64, 3), np.uint8), int((t + 1 + k) * 1000))
    ttu = next((u["t"] for u in unlocks if u["person"] == clip.person), None)
    return {"name": clip.name, "kind": clip.kind, "unlocks": unlocks, "time_to_unlock_s": ttu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=Path, required=True)
    ap.add_argument("--rev", default=BEFORE, help="git revision of the decider to replay")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    old = load_before(args.rev)
    cfg = load_config()
    enroll, clips = load_clips(args.clips)
    results = []
    with Pipeline(cfg, video=True) as pipe:
        gallery = enroll_gallery(pipe, cfg, enroll)
        for i, clip in enumerate(clips):
            print(f"[{i + 1}/{len(clips)}] {clip.name}", file=sys.stderr, flush=True)
            results.append(replay(old, pipe, gallery, cfg, clip, 1000.0 + 100 * i))
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
        return 0
    for r in results:
        u = r["unlocks"]
        what = f"opened ({u[0]['liveness']}) at {u[0]['t']:.1f} s" if u else "refused"
        print(f"{r['name']:<34} {r['kind']:<13} {what}")
    live = [r["time_to_unlock_s"] for r in results if r["kind"] == "live"]
    got = [t for t in live if t is not None]
    attacks = [r for r in results if r["kind"] != "live"]
    print(
        f"attacks opened: {sum(bool(r['unlocks']) for r in attacks)}/{len(attacks)}; live "
        f"unlocked {len(got)}/{len(live)}, time to unlock median {np.median(got):.2f} s, "
        f"mean {np.mean(got):.2f} s, max {max(got):.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 9: the two mesh backends on the same frames, alternated in blocks in one process:

    python -m bench.pad_clips --out /tmp/pad-clips --set door
    python -m bench.litert_mesh --source /tmp/pad-clips/live-obama-turn-bare \\
        --source ../shared/data/lfw-subset/Colin_Powell [--threads 2] [--n 240] [--json]
    python -m bench.litert_mesh --rss    # peak RSS: Tasks vs LiteRT, each in its own process

(a) `tasks`: edge.vision.mesh_tasks.TasksMesh in video mode, one face (landmarks.type: tasks).
(b) `litert`: edge.vision.mesh_litert.LiteRTMesh in video mode, the default (landmarks.type:
    litert): the bundle's mesh model alone, on a crop from the previous frame's mesh or, on a
    new track, from YuNet's face.

Both go through edge.vision.locate.locate with the door's CrossCheck (YuNet every
`landmarks.detector_every` frames of a track), so the `stage` times are the landmark stage as
the pipeline times it; `mesh` times are the mesh call alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.vision.align import five_points
from edge.vision.landmarks import Face

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = (
    Path("/tmp/pad-clips/live-obama-turn-bare"),
    ROOT.parent / "shared/data/lfw-subset/Colin_Powell",
)
LANDMARK_MODEL = "face_landmarks_detector.tflite"
GEOMETRY = "geometry_pipeline_metadata_landmarks.binarypb"
ROI_SCALE = 1.5  # MediaPipe: face rect ×1.5, square on the long side
EYE_CORNERS = (33, 263)  # MediaPipe's rotation keypoints for the landmarks → next-frame ROI


class Counting:
    """YuNet, counting the frames it looked at (for a new track or a cross-check)."""

    def __init__(self, det: Any) -> None:
        self.det, self.calls = det, 0

    def detect(self, bgr: np.ndarray) -> list:
        self.calls += 1
        return self.det.detect(bgr)


class Timed:
    """Times the wrapped landmarker's detect()."""

    def __init__(self, lm: Any) -> None:
        self.lm, self.video, self.last_ms, self.last_cpu_ms = lm, lm.video, 0.0, 0.0

    def detect(self, bgr: np.ndarray, timestamp_ms: int | None = None) -> list[Face]:
        t0, c0 = time.perf_counter(), time.process_time()
        r = self.lm.detect(bgr, timestamp_ms)
        self.last_ms = (time.perf_counter() - t0) * 1e3
        self.last_cpu_ms = (time.process_time() - c0) * 1e3  # all threads of the process
        return r


# ---------------------------------------------------------------- A/B timing and agreement


def load_frames(src: Path) -> list[np.ndarray]:
    from edge.imageio import read_image

    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not files:
        raise SystemExit(f"{src}: no .jpg/.png frames")
    return [read_image(f) for f in files]


def _pct(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a), q)) if a else float("nan")


def ab(src: Path, threads: int, n: int, block: int) -> dict[str, Any]:
    from edge.config import load_config
    from edge.manifest import load_manifest, verify
    from edge.vision.detector import YuNetDetector
    from edge.vision.locate import CrossCheck, locate
    from edge.vision.mesh_litert import LiteRTMesh
    from edge.vision.mesh_tasks import TasksMesh

    cfg = load_config()
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    entry = manifest.get(cfg.models.landmarker, "landmarks")
    task = verify(manifest, entry)
    yunet = YuNetDetector(verify(manifest, manifest.get(cfg.models.detector, "detector")))
    cv2.setNumThreads(threads)
    frames = load_frames(src)
    lmc = cfg.landmarks
    tasks = TasksMesh(
        task,
        max_faces=1,
        min_detection_confidence=lmc.min_detection_confidence,
        min_presence_confidence=lmc.min_presence_confidence,
        video=True,
    )
    litert = LiteRTMesh(task, entry.input, threads, lmc.min_presence_confidence, video=True)
    counting = Counting(yunet)
    gap_s = cfg.decision.track.max_gap_s
    paths = {
        "tasks": (Timed(tasks), yunet, CrossCheck(lmc.detector_every, gap_s)),
        "litert": (Timed(litert), counting, CrossCheck(lmc.detector_every, gap_s)),
    }
    for lm, det, cross in paths.values():  # warm-up, off the record
        locate(frames[0], lm, det, lmc.max_disagreement, 0, cross)
    litert.close()  # start the timed frames without a track
    counting.calls = 0
    times: dict[str, dict[str, list[float]]] = {
        k: {"mesh": [], "stage": [], "mesh_cpu": []} for k in paths
    }
    found = {k: 0 for k in paths}
    results: dict[str, dict[int, Any]] = {k: {} for k in paths}
    seq = [i % len(frames) for i in range(n)]
    ts0 = 1000
    for b, start in enumerate(range(0, len(seq), block)):
        order = ("tasks", "litert") if b % 2 == 0 else ("litert", "tasks")
        for name in order:
            lm, det, cross = paths[name]
            for k in range(start, min(start + block, len(seq))):
                img = frames[seq[k]]
                ts = ts0 + 66 * k
                t0 = time.perf_counter()
                loc = locate(img, lm, det, lmc.max_disagreement, ts, cross)
                stage = (time.perf_counter() - t0) * 1e3
                times[name]["mesh"].append(lm.last_ms)
                times[name]["stage"].append(stage)
                times[name]["mesh_cpu"].append(lm.last_cpu_ms)
                if loc is not None and loc.mesh is not None:
                    found[name] += 1
                    results[name][k] = loc
    # Agreement on the frames both meshed.
    both = sorted(set(results["tasks"]) & set(results["litert"]))
    d_all, d_iod, d5, d5_iod, dz, dyaw, dpitch, droll = [], [], [], [], [], [], [], []
    for k in both:
        a, b_ = results["tasks"][k].mesh, results["litert"][k].mesh
        iod = float(np.linalg.norm(a.points[468] - a.points[473]))
        d = np.linalg.norm(a.points - b_.points, axis=1)
        d_all.append(d)
        d_iod.append(d / iod)
        e = np.linalg.norm(five_points(a.points) - five_points(b_.points), axis=1)
        d5.append(e)
        d5_iod.append(e / iod)
        za, zb = a.depth - a.depth.mean(), b_.depth - b_.depth.mean()
        dz.append(np.abs(za - zb) / iod)
        dyaw.append(abs(a.yaw - b_.yaw))
        dpitch.append(abs(a.pitch - b_.pitch))
        droll.append(abs(a.roll - b_.roll))

    def summ(x: list[np.ndarray]) -> dict[str, float]:
        if not x:
            return {}
        arr = np.concatenate([np.ravel(v) for v in x])
        per_frame = [float(np.mean(v)) for v in x]
        return {
            "mean": float(arr.mean()),
            "p95": float(np.percentile(arr, 95)),
            "max": float(arr.max()),
            "worst_frame_mean": float(max(per_frame)),
        }

    out: dict[str, Any] = {
        "source": str(src),
        "frames": len(frames),
        "timed_per_path": len(seq),
        "threads": threads,
        "found": found,
        "litert_detector_calls": counting.calls,
    }
    for name in paths:
        for s in ("mesh", "stage"):
            out[f"{name}_{s}_p50"] = _pct(times[name][s], 50)
            out[f"{name}_{s}_p95"] = _pct(times[name][s], 95)
    for name in paths:
        out[f"{name}_mesh_cpu_mean"] = float(np.mean(times[name]["mesh_cpu"]))
    out["ratio_mesh_cpu_mean"] = out["litert_mesh_cpu_mean"] / out["tasks_mesh_cpu_mean"]
    for s in ("mesh", "stage"):
        out[f"ratio_{s}_p50"] = out[f"litert_{s}_p50"] / out[f"tasks_{s}_p50"]
        out[f"ratio_{s}_p95"] = out[f"litert_{s}_p95"] / out[f"tasks_{s}_p95"]
    out["compared_frames"] = len(both)
    out["points_px"] = summ(d_all)
    out["points_iod"] = summ(d_iod)
    out["five_px"] = summ(d5)
    out["five_iod"] = summ(d5_iod)
    out["depth_iod"] = summ(dz)
    out["yaw_deg"] = summ([np.asarray(dyaw)])
    out["pitch_deg"] = summ([np.asarray(dpitch)])
    out["roll_deg"] = summ([np.asarray(droll)])
    tasks.close()
    return out


# ---------------------------------------------------------------- peak RSS, one path per process


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(path: str, src: Path, frames_n: int, threads: int) -> dict[str, Any]:
    """The camera-stream pipeline (YuNet, SFace, mask classifier, and one mesh path) on `src`."""
    from edge.config import load_config
    from edge.pipeline import Pipeline
    from edge.vision.quality import FaceRejected

    cfg = load_config()
    cfg = cfg.model_copy(
        update={
            "landmarks": cfg.landmarks.model_copy(update={"type": path}),
            "runtime": cfg.runtime.model_copy(update={"threads": threads}),
        }
    )
    after_import = vm_hwm_mb()
    frames = load_frames(src)
    n_ok = 0
    with Pipeline(cfg, video=True) as pipe:
        loaded = vm_hwm_mb()
        for k in range(frames_n):
            try:
                pipe.process(frames[k % len(frames)], 1000 + 66 * k)
                n_ok += 1
            except FaceRejected:
                pass
    mods = sorted(m for m in ("mediapipe", "ai_edge_litert", "torch") if m in sys.modules)
    return {
        "path": path,
        "vm_hwm_mb": vm_hwm_mb(),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "hwm_after_imports_mb": after_import,
        "hwm_after_load_mb": loaded,
        "frames_ok": n_ok,
        "modules": mods,
    }


def rss(src: Path, frames_n: int, threads: int, rounds: int) -> list[dict[str, Any]]:
    out = []
    for r in range(rounds):
        for path in ("tasks", "litert") if r % 2 == 0 else ("litert", "tasks"):
            cmd = [sys.executable, "-m", "bench.litert_mesh", "--rss-child", path, "--source",
                   str(src), "--frames", str(frames_n), "--threads", str(threads)]  # fmt: skip
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SystemExit(f"{path} child failed:\n{res.stderr[-2000:]}")
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--source", type=Path, action="append", help="folder of frames (repeatable)")
    ap.add_argument("--threads", type=int, default=2, help="LiteRT (and OpenCV) threads")
    ap.add_argument("--n", type=int, default=240, help="timed frames per path and folder")
    ap.add_argument("--rounds", type=int, default=2, help="RSS: processes per path")
    ap.add_argument("--block", type=int, default=20, help="frames per A/B block")
    ap.add_argument("--rss", action="store_true", help="peak RSS of each path, own processes")
    ap.add_argument("--frames", type=int, default=100, help="frames per RSS child")
    ap.add_argument("--rss-child", choices=("tasks", "litert"), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print everything as JSON")
    args = ap.parse_args(argv)
    sources = args.source or list(DEFAULT_SOURCES)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, sources[0], args.frames, args.threads)))
        return 0
    if args.rss:
        res = rss(sources[0], args.frames, args.threads, args.rounds)
        if args.json:
            print(json.dumps(res, indent=1))
        for r in res:
            print(f"{r['path']:<7} VmHWM {r['vm_hwm_mb']:6.1f} MB  (after imports "
                  f"{r['hwm_after_imports_mb']:.1f}, after loading {r['hwm_after_load_mb']:.1f}; "
                  f"{r['frames_ok']} frames ok; {', '.join(r['modules'])})")  # fmt: skip
        return 0
    allres = [ab(s, args.threads, args.n, args.block) for s in sources]
    if args.json:
        print(json.dumps(allres, indent=1))
        return 0
    for r in allres:
        print(f"\n{r['source']}: {r['frames']} frames, {r['timed_per_path']} per path, blocks of "
              f"{args.block}; meshed tasks {r['found']['tasks']}, litert {r['found']['litert']} "
              f"(YuNet looked at {r['litert_detector_calls']} of litert's frames)")  # fmt: skip
        print(f"{'ms':<7} {'tasks p50':>9} {'litert p50':>10} {'ratio':>6}   "
              f"{'tasks p95':>9} {'litert p95':>10} {'ratio':>6}")  # fmt: skip
        for s in ("mesh", "stage"):
            print(f"{s:<7} {r[f'tasks_{s}_p50']:9.2f} {r[f'litert_{s}_p50']:10.2f} "
                  f"{r[f'ratio_{s}_p50']:6.2f}   {r[f'tasks_{s}_p95']:9.2f} "
                  f"{r[f'litert_{s}_p95']:10.2f} {r[f'ratio_{s}_p95']:6.2f}")  # fmt: skip
        tc, dc, rc = r["tasks_mesh_cpu_mean"], r["litert_mesh_cpu_mean"], r["ratio_mesh_cpu_mean"]
        print(f"CPU time per mesh call (all threads), mean ms: tasks {tc:.2f}, litert {dc:.2f}, "
              f"ratio {rc:.2f}")  # fmt: skip
        print(f"tasks vs litert on {r['compared_frames']} frames (mean / p95 / max / worst frame):")
        for key, unit in (("points_px", "478 pts px"), ("points_iod", "478 pts IOD"),
                          ("five_px", "5 pts px"), ("five_iod", "5 pts IOD"),
                          ("depth_iod", "z IOD"), ("yaw_deg", "yaw °"),
                          ("pitch_deg", "pitch °"), ("roll_deg", "roll °")):  # fmt: skip
            v = r[key]
            if v:
                print(f"  {unit:<12} {v['mean']:8.3f} {v['p95']:8.3f} {v['max']:8.3f} "
                      f"{v['worst_frame_mean']:8.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

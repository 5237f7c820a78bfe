"""Issue 9 feasibility: the face mesh's own TFLite model run directly with LiteRT, beside the
Tasks FaceLandmarker the door uses, on the same frames, alternated in blocks in one process:

    python -m bench.pad_clips --out /tmp/pad-clips --set door
    pip install ai-edge-litert          # this experiment only: not a MaskGate dependency
    python -m bench.litert_mesh --source /tmp/pad-clips/live-obama-turn-bare \\
        --source ../shared/data/lfw-subset/Colin_Powell [--threads 2] [--n 240] [--json]
    python -m bench.litert_mesh --rss    # peak RSS: Tasks vs direct, each in its own process

(a) `tasks`: edge.vision.landmarks.Landmarker in video mode, one face, as the camera stream uses it.
(b) `direct`: face_landmarks_detector.tflite unpacked from the provisioned face_landmarker.task
    (no network) and run with `ai_edge_litert.interpreter.Interpreter`. The region of interest
    comes from the previous frame's mesh (MediaPipe's own rule: the points' box, rotated so the
    eye corners 33 → 263 lie level, square, ×1.5) or, on a new track, from YuNet's box and eyes
    (then refined once from the mesh found in it). The crop is warped to the model's 256×256
    input (RGB, 0..1) and the 478 points mapped back. Head pose: weighted Procrustes of the mesh
    onto the canonical face model shipped in the .task (geometry_pipeline_metadata).

Both go through edge.vision.locate.locate with the door's CrossCheck (YuNet every
`landmarks.detector_every` frames of a track), so the `stage` times are the landmark stage as
the pipeline times it; `mesh` times are the mesh call alone.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.vision.align import five_points
from edge.vision.landmarks import Face, _box, _pose_from_matrix

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCES = (
    Path("/tmp/pad-clips/live-obama-turn-bare"),
    ROOT.parent / "shared/data/lfw-subset/Colin_Powell",
)
LANDMARK_MODEL = "face_landmarks_detector.tflite"
GEOMETRY = "geometry_pipeline_metadata_landmarks.binarypb"
ROI_SCALE = 1.5  # MediaPipe: face rect ×1.5, square on the long side
EYE_CORNERS = (33, 263)  # MediaPipe's rotation keypoints for the landmarks → next-frame ROI


def import_litert() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "bench.litert_mesh needs the package 'ai-edge-litert' (not a MaskGate dependency): "
            f"pip install ai-edge-litert  ({e})"
        ) from e
    return Interpreter


# ---------------------------------------------------------------- the .task bundle


def task_member(task: Path, name: str) -> bytes:
    with zipfile.ZipFile(task) as z:
        return z.read(name)


def _varint(b: bytes, i: int) -> tuple[int, int]:
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return r, i


def _fields(b: bytes):
    """(field, wire type, value) of a protobuf message, without its schema."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        f, t = key >> 3, key & 7
        if t == 0:
            v, i = _varint(b, i)
        elif t == 2:
            n, i = _varint(b, i)
            v, i = b[i : i + n], i + n
        elif t == 5:
            v, i = b[i : i + 4], i + 4
        elif t == 1:
            v, i = b[i : i + 8], i + 8
        else:
            raise ValueError(f"wire type {t}")
        yield f, t, v


def canonical_face(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical mesh vertices (468, 3) and the Procrustes basis (landmark ids, weights) from
    MediaPipe's GeometryPipelineMetadata (canonical_mesh = 1: Mesh3d with vertex_buffer = 3 as
    x, y, z, u, v per vertex; procrustes_landmark_basis = 2: {landmark_id = 1, weight = 2})."""
    verts: list[float] = []
    ids, weights = [], []
    for f, t, v in _fields(blob):
        if f == 1 and t == 2:
            for g, u, w in _fields(v):
                if g == 3 and u == 5:
                    verts.append(struct.unpack("<f", w)[0])
                elif g == 3 and u == 2:
                    verts.extend(struct.unpack(f"<{len(w) // 4}f", w))
        elif f == 2 and t == 2:
            lid, wt = 0, 0.0
            for g, _u, w in _fields(v):
                if g == 1:
                    lid = w
                elif g == 2:
                    wt = struct.unpack("<f", w)[0]
            ids.append(lid)
            weights.append(wt)
    vb = np.asarray(verts, np.float64).reshape(-1, 5)[:, :3]
    return vb, np.asarray(ids), np.asarray(weights, np.float64)


def procrustes_pose(
    pts: np.ndarray, depth: np.ndarray, canon: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> tuple[float, float, float]:
    """Yaw, pitch, roll (degrees, Landmarker's convention) of a weighted similarity fit of the
    canonical face onto the mesh (weak perspective: x right, y up, z towards the camera)."""
    verts, ids, w = canon
    src = verts[ids]
    dst = np.column_stack([pts[ids, 0], -pts[ids, 1], -depth[ids]]).astype(np.float64)
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    a, b = src - ms, dst - md
    u, _, vt = np.linalg.svd((b * w[:, None]).T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    r = u @ np.diag([1.0, 1.0, d]) @ vt
    m = np.eye(4)
    m[:3, :3] = r
    return _pose_from_matrix(m)


# ---------------------------------------------------------------- the direct path


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


class DirectMesh:
    """The mesh model alone: Landmarker.detect's interface (one face, video mode only)."""

    video = True

    def __init__(
        self,
        task: Path,
        detector: Any,
        threads: int = 2,
        min_presence: float = 0.5,
        refine_new: bool = True,
    ) -> None:
        Interpreter = import_litert()
        self._it = Interpreter(model_content=task_member(task, LANDMARK_MODEL), num_threads=threads)
        self._it.allocate_tensors()
        inp = self._it.get_input_details()[0]
        self._in = inp["index"]
        self.size = int(inp["shape"][1])
        outs = {tuple(d["shape"]): d["index"] for d in self._it.get_output_details()}
        self._pts_idx = next(i for s, i in outs.items() if s[-1] == 478 * 3)
        self._score_idx = outs[(1, 1, 1, 1)]
        self.canon = canonical_face(task_member(task, GEOMETRY))
        self.detector = detector
        self.min_presence = min_presence
        self.refine_new = refine_new
        self._roi: tuple[float, float, float, float] | None = None  # cx, cy, side, angle
        self.detector_runs = 0
        self.last_presence = 0.0

    def close(self) -> None:
        pass

    def reset(self) -> None:
        self._roi = None
        self.detector_runs = 0

    # ROI: centre, side and angle (radians, the ROI's x axis in image coordinates, y down)
    @staticmethod
    def roi_from_points(pts: np.ndarray, a: int, b: int) -> tuple[float, float, float, float]:
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        dx, dy = pts[b] - pts[a]
        angle = math.atan2(float(dy), float(dx))
        side = ROI_SCALE * max(x1 - x0, y1 - y0)
        return (float(x0 + x1) / 2, float(y0 + y1) / 2, float(side), angle)

    @staticmethod
    def roi_from_detection(det: Any) -> tuple[float, float, float, float]:
        x, y, w, h = det.box
        dx, dy = det.points[1] - det.points[0]
        return (x + w / 2, y + h / 2, ROI_SCALE * max(w, h), math.atan2(float(dy), float(dx)))

    def run(
        self, bgr: np.ndarray, roi: tuple[float, float, float, float]
    ) -> tuple[np.ndarray, float]:
        """(478, 3) points (x, y in frame pixels, z in pixels) and the presence score."""
        cx, cy, side, angle = roi
        n = self.size
        # dst = R(-angle)(src - c) * n/side + n/2, in continuous coordinates (pixel centres at
        # +0.5, as MediaPipe maps normalised ones); cv2 indexes pixel centres at integers.
        a = _rot(-angle) * (n / side)
        t = np.array([n / 2, n / 2]) - a @ np.array([cx, cy])
        t = t + a @ np.array([0.5, 0.5]) - 0.5
        crop = cv2.warpAffine(
            bgr,
            np.hstack([a, t[:, None]]),
            (n, n),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        self._it.set_tensor(self._in, (rgb.astype(np.float32) * (1 / 255.0))[None])
        self._it.invoke()
        raw = self._it.get_tensor(self._pts_idx).reshape(478, 3)
        score = float(self._it.get_tensor(self._score_idx).reshape(()))
        presence = 1.0 / (1.0 + math.exp(-score))
        uv = (raw[:, :2] / n - 0.5) * side
        xy = uv @ _rot(angle).T + np.array([cx, cy])
        out = np.empty((478, 3), np.float32)
        out[:, :2] = xy
        out[:, 2] = raw[:, 2] / n * side
        return out, presence

    def detect(self, bgr: np.ndarray, timestamp_ms: int | None = None) -> list[Face]:
        h, w = bgr.shape[:2]
        mesh = None
        if self._roi is not None:
            mesh, p = self.run(bgr, self._roi)
            if p < self.min_presence:
                mesh, self._roi = None, None
        if mesh is None:  # a new track: YuNet's face, then once more from the mesh found in it
            self.detector_runs += 1
            dets = self.detector.detect(bgr)
            if not dets:
                return []
            mesh, p = self.run(bgr, self.roi_from_detection(dets[0]))
            if self.refine_new and p >= self.min_presence:
                mesh, p = self.run(bgr, self.roi_from_points(mesh[:, :2], *EYE_CORNERS))
            if p < self.min_presence:
                return []
        self.last_presence = p
        self._roi = self.roi_from_points(mesh[:, :2], *EYE_CORNERS)
        pts = np.ascontiguousarray(mesh[:, :2])
        yaw, pitch, roll = procrustes_pose(pts, mesh[:, 2], self.canon)
        return [Face(pts, mesh[:, 2].copy(), _box(pts, w, h), yaw, pitch, roll)]


class OnceDetector:
    """YuNet, its answer kept for the same frame: the direct path asks it for a new track's
    ROI and locate() for the cross-check; in production one call would serve both."""

    def __init__(self, det: Any) -> None:
        self.det = det
        self._img: np.ndarray | None = None
        self._res: list = []

    def detect(self, bgr: np.ndarray) -> list:
        if bgr is not self._img:
            self._img, self._res = bgr, self.det.detect(bgr)
        return self._res


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
    from edge.vision.landmarks import Landmarker
    from edge.vision.locate import CrossCheck, locate

    cfg = load_config()
    manifest = load_manifest(cfg.resolve(cfg.models.manifest))
    task = verify(manifest, manifest.get(cfg.models.landmarker, "landmarks"))
    yunet = YuNetDetector(verify(manifest, manifest.get(cfg.models.detector, "detector")))
    cv2.setNumThreads(threads)
    frames = load_frames(src)
    lmc = cfg.landmarks
    tasks = Landmarker(
        task,
        max_faces=1,
        min_detection_confidence=lmc.min_detection_confidence,
        min_presence_confidence=lmc.min_presence_confidence,
        video=True,
    )
    direct = DirectMesh(task, OnceDetector(yunet), threads, lmc.min_presence_confidence)
    gap_s = cfg.decision.track.max_gap_s
    paths = {
        "tasks": (Timed(tasks), yunet, CrossCheck(lmc.detector_every, gap_s)),
        "direct": (Timed(direct), direct.detector, CrossCheck(lmc.detector_every, gap_s)),
    }
    for lm, _, _ in paths.values():  # warm-up, off the record
        lm.detect(frames[0], 0)
    direct.reset()
    times: dict[str, dict[str, list[float]]] = {
        k: {"mesh": [], "stage": [], "mesh_cpu": []} for k in paths
    }
    found = {k: 0 for k in paths}
    results: dict[str, dict[int, Any]] = {k: {} for k in paths}
    seq = [i % len(frames) for i in range(n)]
    ts0 = 1000
    for b, start in enumerate(range(0, len(seq), block)):
        order = ("tasks", "direct") if b % 2 == 0 else ("direct", "tasks")
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
    both = sorted(set(results["tasks"]) & set(results["direct"]))
    d_all, d_iod, d5, d5_iod, dz, dyaw, dpitch, droll = [], [], [], [], [], [], [], []
    for k in both:
        a, b_ = results["tasks"][k].mesh, results["direct"][k].mesh
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
        "direct_detector_runs": direct.detector_runs,
    }
    for name in paths:
        for s in ("mesh", "stage"):
            out[f"{name}_{s}_p50"] = _pct(times[name][s], 50)
            out[f"{name}_{s}_p95"] = _pct(times[name][s], 95)
    for name in paths:
        out[f"{name}_mesh_cpu_mean"] = float(np.mean(times[name]["mesh_cpu"]))
    out["ratio_mesh_cpu_mean"] = out["direct_mesh_cpu_mean"] / out["tasks_mesh_cpu_mean"]
    for s in ("mesh", "stage"):
        out[f"ratio_{s}_p50"] = out[f"direct_{s}_p50"] / out[f"tasks_{s}_p50"]
        out[f"ratio_{s}_p95"] = out[f"direct_{s}_p95"] / out[f"tasks_{s}_p95"]
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
    if path == "direct":
        import_litert()

        def make(self: Pipeline, video: bool) -> Any:
            return DirectMesh(
                self._task_file, OnceDetector(self.detector), threads,
                cfg.landmarks.min_presence_confidence,
            )  # fmt: skip

        Pipeline._make_landmarker = make  # type: ignore[method-assign]
    after_import = vm_hwm_mb()
    frames = load_frames(src)
    n_ok = 0
    with Pipeline(cfg, video=True) as pipe:
        if path == "direct":
            pipe.detector = pipe.landmarker.detector  # the same YuNet answer serves both
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
        for path in ("tasks", "direct") if r % 2 == 0 else ("direct", "tasks"):
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
    ap.add_argument("--rss-child", choices=("tasks", "direct"), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print everything as JSON")
    args = ap.parse_args(argv)
    sources = args.source or list(DEFAULT_SOURCES)
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, sources[0], args.frames, args.threads)))
        return 0
    import_litert()  # fail early, naming the package
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
              f"{args.block}; meshed tasks {r['found']['tasks']}, direct {r['found']['direct']} "
              f"(direct asked YuNet for a new track {r['direct_detector_runs']}×)")  # fmt: skip
        print(f"{'ms':<7} {'tasks p50':>9} {'direct p50':>10} {'ratio':>6}   "
              f"{'tasks p95':>9} {'direct p95':>10} {'ratio':>6}")  # fmt: skip
        for s in ("mesh", "stage"):
            print(f"{s:<7} {r[f'tasks_{s}_p50']:9.2f} {r[f'direct_{s}_p50']:10.2f} "
                  f"{r[f'ratio_{s}_p50']:6.2f}   {r[f'tasks_{s}_p95']:9.2f} "
                  f"{r[f'direct_{s}_p95']:10.2f} {r[f'ratio_{s}_p95']:6.2f}")  # fmt: skip
        tc, dc, rc = r["tasks_mesh_cpu_mean"], r["direct_mesh_cpu_mean"], r["ratio_mesh_cpu_mean"]
        print(f"CPU time per mesh call (all threads), mean ms: tasks {tc:.2f}, direct {dc:.2f}, "
              f"ratio {rc:.2f}")  # fmt: skip
        print(f"tasks vs direct on {r['compared_frames']} frames (mean / p95 / max / worst frame):")
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

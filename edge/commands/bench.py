"""bench: per-stage latency, frame rate, CPU and memory of the door's frame path."""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.capture import CaptureError, make_source
from edge.commands.common import CommandError, config_from, open_pipeline, print_json
from edge.config import Config, FileCamera, FolderCamera, V4L2Camera
from edge.match import Gallery
from edge.vision.onnx_session import profile_summary
from edge.vision.quality import FaceRejected

STAGES = ("decode", "landmarks", "align", "mask", "embed", "match")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time each stage on a folder of photos, a video file or a camera",
        description="Runs the door's frame path (landmarks in video mode, as the daemon does) on "
        "every frame and reports p50/p95 per stage, the total from landmarks through match for "
        "frames with one usable face, frames per second, CPU use and peak memory.",
    )
    p.add_argument(
        "--source", required=True, help="folder of images, video file, /dev/videoN or index"
    )
    p.add_argument("--frames", type=int, default=200, help="frames to time (folders loop)")
    p.add_argument("--warmup", type=int, default=5, help="frames run before timing starts")
    p.add_argument("--gallery-size", type=int, default=1000, help="templates to match against")
    p.add_argument("--still", action="store_true", help="image-mode landmarks (as enrollment uses)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="ONNX Runtime threads, and the process pinned to that many cores (so MediaPipe "
        "shares them too): --threads 1 stands in for one Raspberry Pi core",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="also print each ONNX model's slowest operators (ONNX Runtime's own profiler)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def _bench_config(args: argparse.Namespace, profile_dir: Path | None) -> Config:
    cfg = config_from(args)
    runtime: dict[str, Any] = {}
    if args.threads is not None:
        if not 1 <= args.threads <= (os.cpu_count() or 1):
            raise CommandError(f"--threads must be 1..{os.cpu_count()}, got {args.threads}")
        runtime["threads"] = args.threads
        # MediaPipe's and OpenCV's threads cannot be set: confine the whole process instead.
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    if profile_dir is not None:
        runtime["profile_dir"] = profile_dir
    if not runtime:
        return cfg
    return cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update=runtime)})


def _profiles(pipe: Any) -> dict[str, Any]:
    out = {}
    for name, model in (("embedder", pipe.embedder), ("mask", pipe.mask)):
        path = model.end_profiling()
        if path:
            runs, rows = profile_summary(path)
            total = sum(ms for _, ms, _ in rows)
            out[name] = {
                "model": model.entry.id,
                "runs": runs,
                "ms_per_run": round(total, 2),
                "operators": [
                    {
                        "op": op,
                        "ms_per_run": round(ms, 3),
                        "share": round(ms / total, 3),
                        "nodes": n,
                    }
                    for op, ms, n in rows[:8]
                ],
            }
    return out


def _camera_for(source: str) -> Any:
    p = Path(source)
    if p.is_dir():
        return FolderCamera(path=p, fps=240, loop=True)
    if p.is_file():
        return FileCamera(path=p, loop=True, realtime=False)
    if source.isdigit() or source.startswith("/dev/video"):
        return V4L2Camera(device=int(source) if source.isdigit() else source)
    raise CommandError(f"--source {source}: not a folder, a video file or a camera")


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None}
    a = np.asarray(values)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
    }


def run(args: argparse.Namespace) -> int:
    if args.frames < 1:
        raise CommandError("--frames must be at least 1")
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="maskgate-profile-") as tmp:
            return _run(args, Path(tmp))
    return _run(args, None)


def _run(args: argparse.Namespace, profile_dir: Path | None) -> int:
    cfg = _bench_config(args, profile_dir)
    source = make_source(_camera_for(args.source))
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    totals: list[float] = []
    rejected: dict[str, int] = {}
    reused = 0  # faces whose mask verdict came from their track (edge/maskreuse.py)
    with open_pipeline(cfg, video=not args.still) as pipe:
        rng = np.random.default_rng(0)
        gallery = Gallery(pipe.embedder.dim)
        gallery.add(
            "random", rng.standard_normal((args.gallery_size, pipe.embedder.dim)).astype(np.float32)
        )
        try:
            source.open()
        except CaptureError as err:
            raise CommandError(str(err)) from None
        try:
            n = 0
            cpu0 = wall0 = None
            while n < args.frames + args.warmup:
                frame = source.read()
                if frame is None:
                    break
                if n == args.warmup:  # start the clocks once models and caches are warm
                    cpu0, wall0 = os.times(), time.perf_counter()
                timed = n >= args.warmup
                n += 1
                try:
                    r = pipe.process(frame.image, timestamp_ms=int(frame.t_capture * 1000))
                except FaceRejected as err:
                    if timed:
                        rejected[err.reason] = rejected.get(err.reason, 0) + 1
                    continue
                t0 = time.perf_counter()
                gallery.search(r.embedding)
                match_ms = (time.perf_counter() - t0) * 1e3
                if not timed:
                    continue
                times["decode"].append(frame.decode_ms)
                for k, v in r.timings_ms.items():
                    times[k].append(v)
                times["match"].append(match_ms)
                reused += r.mask_reused
                totals.append(sum(r.timings_ms.values()) + match_ms)
            cpu1, wall1 = os.times(), time.perf_counter()
        finally:
            source.close()
        provider = pipe.embedder.provider
        profiles = _profiles(pipe) if profile_dir is not None else {}
    timed_frames = max(n - args.warmup, 0)
    if cpu0 is None or timed_frames == 0:
        raise CommandError(f"--source {args.source}: fewer than {args.warmup + 1} frames")
    wall = wall1 - wall0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    out = {
        "source": args.source,
        "frames": timed_frames,
        "faces": len(totals),
        "rejected": rejected,
        "mode": "still" if args.still else "video",
        "provider": provider,
        "threads": cfg.runtime.threads,
        "gallery_size": args.gallery_size,
        "stages": {s: _pct(v) for s, v in times.items()},
        "total": _pct(totals),
        "mask_classified": len(totals) - reused,
        "mask_reused": reused,
        "fps": round(timed_frames / wall, 2) if wall > 0 else None,
        "cpu_percent": round(100.0 * cpu / wall, 1) if wall > 0 else None,
        "cpu_count": os.cpu_count(),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    if profiles:
        out["profile"] = profiles
    if args.json:
        print_json(out)
    else:
        print(
            f"{out['frames']} frames ({out['faces']} with a usable face) from {args.source}, "
            f"{out['mode']} mode, {provider}, {cfg.runtime.threads} threads"
        )
        print(f"{'stage':<10} {'p50 ms':>8} {'p95 ms':>8}")
        for s in STAGES:
            st = out["stages"][s]
            print(f"{s:<10} {st['p50_ms'] or 0:>8.2f} {st['p95_ms'] or 0:>8.2f}")
        t = out["total"]
        print(
            f"{'total':<10} {t['p50_ms'] or 0:>8.2f} {t['p95_ms'] or 0:>8.2f}   (landmarks → match)"
        )
        print(
            f"fps {out['fps']}, CPU {out['cpu_percent']} % of one core ({os.cpu_count()} cores), "
            f"peak RSS {out['peak_rss_mb']} MB"
        )
        print(
            f"mask classifier ran on {out['mask_classified']} of {len(totals)} faces "
            f"(the track's verdict reused on {reused})"
        )
        if rejected:
            print(f"frames without a usable face: {rejected}")
        for name, prof in profiles.items():
            print(f"{name} ({prof['model']}): {prof['ms_per_run']:.2f} ms per run in operators")
            for row in prof["operators"]:
                print(
                    f"  {row['op']:<22} {row['ms_per_run']:>7.3f} ms  {100 * row['share']:>5.1f} %"
                    f"  ({row['nodes']} nodes)"
                )
    return 0

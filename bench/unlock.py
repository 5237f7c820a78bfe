"""Face to unlock: how long a visitor waits at the door, from the first camera frame that shows
the face to the relay pulse.

    python -m bench.unlock [--clips 8] [--camera-fps 30] [--json]

Each clip is a rendered live visitor (edge/vision/facerender.py, the live clips of
bench/pad_clips.py, half of them masked): `--lead` seconds of an empty scene, then the person
in front of the camera. The frames go through the door's own path as the daemon's frame loop
runs it (edge/daemon.py): a newest-frame grabber, frames taken at `decision.idle_fps` while no
face is present and at `decision.active_fps` once one is, each judged by edge/observe.py
(pipeline → observation → track, liveness, k of n) and each unlock handed to the door's
DoorOpener, which pulses the (mock) relay. The shipped config.yaml sets the rates and k of n.

Every clip is played twice, on two clocks:
- clip time: the camera's clock with processing taking no time, so the result is what the
  rates, k of n and the liveness evidence allow on any machine;
- wall time: each frame costs what judging it took on this machine, and meanwhile the camera
  moves on (the grabber hands over the newest frame when the loop is free again), as on a door.
Reported: the median, min and max over clips of each, masked and unmasked apart.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.pad_clips import ENROLL, PHOTOS, Builder, ClipSpec, full_set, wall
from edge.config import Config, RelayConfig, load_config
from edge.decide import Decider
from edge.observe import judge_frame
from edge.opener import DoorOpener
from edge.pad import enroll_gallery, show_nobody
from edge.pipeline import Pipeline
from edge.relay import make_relay
from edge.vision.facerender import camera

# Blank frames between plays: the video-mode mesh stops tracking the previous visitor.


@dataclass
class Play:
    """One play of a clip on one clock."""

    unlocked: bool
    face_to_unlock_s: float | None  # first frame showing the face → relay pulse
    judged: int  # frames the loop took (the others were dropped by the rate or while busy)
    liveness: str | None
    judge_ms: list[float]  # what judging (and acting on) each taken frame took here


def live_specs(n: int) -> list[ClipSpec]:
    """n live clips of bench/pad_clips.py, alternating unmasked and masked."""
    live = [s for s in full_set() if s.kind == "live"]
    bare = [s for s in live if not s.masked]
    masked = [s for s in live if s.masked]
    out = [c for pair in zip(bare, masked, strict=True) for c in pair]
    return out[:n]


def render(builder: Builder, spec: ClipSpec, fps: float, lead_s: float, seconds: float):
    """The frames a camera at `fps` sees: an empty scene for lead_s, then the visitor."""
    scene = builder.scene(spec)
    rng = np.random.default_rng(1000 + spec.seed)
    empty = wall(spec.seed)
    n_lead, n_face = round(lead_s * fps), round(seconds * fps)
    frames = [camera(empty, rng) for _ in range(n_lead)]
    frames += [camera(scene(i / fps), rng) for i in range(n_face)]
    return frames, n_lead


def play(
    pipe: Pipeline,
    gallery: Any,
    cfg: Config,
    frames: list[np.ndarray],
    first_face: int,
    fps: float,
    t0: float,
    wall_clock: bool,
) -> Play:
    """The daemon's frame loop over the frames of a camera running at `fps` from t0 (s)."""
    now = [t0]
    decider = Decider(cfg.decision, cfg.liveness, clock=lambda: now[0])
    relay = make_relay(RelayConfig(type="mock", pulse_s=cfg.relay.pulse_s))
    pulses: list[float] = []
    pulse = relay.pulse

    start = 0.0

    def recorded_pulse(seconds: float | None = None) -> bool:
        # On the wall clock the pulse comes once judging the frame is done.
        pulses.append(now[0] + (time.perf_counter() - start if wall_clock else 0.0))
        return pulse(seconds)

    relay.pulse = recorded_pulse  # type: ignore[method-assign]
    opener = DoorOpener(relay, None, None)
    face_present, next_due, i, judged, liveness = False, t0, 0, 0, None
    costs: list[float] = []
    try:
        while i < len(frames) and not pulses:
            t_capture = t0 + i / fps
            now[0] = max(now[0], t_capture)  # the loop waits for the next frame
            if now[0] < next_due:  # over the rate for this state: dropped
                i += 1
                continue
            rate = cfg.decision.active_fps if face_present else cfg.decision.idle_fps
            next_due = now[0] + 1.0 / rate
            start = time.perf_counter()
            out = judge_frame(pipe, decider, gallery, cfg.match, frames[i], t_capture)
            judged += 1
            face_present = out.present
            for d in out.decisions:  # as the daemon acts (Door._act): unlocks pulse the relay
                if d.decision == "unlock":
                    liveness = d.liveness
                    opener.decided({**d.as_dict(), "name": None}, open_s=cfg.relay.pulse_s)
            costs.append(time.perf_counter() - start)
            if wall_clock:
                now[0] += costs[-1]  # the door was busy with this frame
            # The grabber hands over the newest frame captured by now; older ones are gone.
            i = max(i + 1, int((now[0] - t0) * fps + 1e-9))
        show_nobody(pipe, decider, gallery, cfg.match, max(now[0], t0 + len(frames) / fps), fps)
    finally:
        opener.close()
        relay.lock()
        relay.close()
    t_face = t0 + first_face / fps
    return Play(
        bool(pulses),
        round(pulses[0] - t_face, 3) if pulses else None,
        judged,
        liveness,
        [1e3 * c for c in costs],
    )


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"clips": 0, "median_s": None, "min_s": None, "max_s": None}
    return {
        "clips": len(values),
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
    }


def measure(
    cfg: Config,
    specs: list[ClipSpec],
    fps: float = 30.0,
    lead_s: float = 1.0,
    seconds: float = 5.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Play every clip on both clocks; the report."""
    missing = sorted({s for spec in specs for s in spec.sources if not (PHOTOS / s).is_file()})
    if missing:
        raise FileNotFoundError(f"photos missing ({', '.join(missing)}): run fetch_test_data.py")
    clips = []
    judge_ms: list[float] = []
    with Pipeline(cfg, video=True) as pipe:
        people = sorted({s.person for s in specs})
        gallery = enroll_gallery(pipe, cfg, {p: [PHOTOS / f for f in ENROLL[p]] for p in people})
        builder = Builder(pipe)
        t0 = 1000.0  # any start: the video-mode mesh only needs increasing timestamps
        for n, spec in enumerate(specs, 1):
            if progress:
                progress(f"[{n}/{len(specs)}] {spec.name}")
            frames, first = render(builder, spec, fps, lead_s, seconds)
            row: dict[str, Any] = {"name": spec.name, "masked": spec.masked}
            for clock in ("clip", "wall"):
                p = play(pipe, gallery, cfg, frames, first, fps, t0, clock == "wall")
                t0 += 2 * len(frames) / fps + 10.0
                judge_ms += p.judge_ms
                row[clock] = {
                    "unlocked": p.unlocked,
                    "face_to_unlock_s": p.face_to_unlock_s,
                    "frames_judged": p.judged,
                    "liveness": p.liveness,
                }
            clips.append(row)
    d = cfg.decision
    report: dict[str, Any] = {
        "camera_fps": fps,
        "active_fps": d.active_fps,
        "idle_fps": d.idle_fps,
        "k": d.k,
        "n": d.n,
        "threads": cfg.runtime.threads,
        "lead_s": lead_s,
        "clip_s": seconds,
        # Per taken frame, both plays: the wall clock's cost of a frame on this machine.
        "judge_ms": {
            "p50": round(float(np.percentile(judge_ms, 50)), 1),
            "p95": round(float(np.percentile(judge_ms, 95)), 1),
        },
    }
    groups = {"all": (False, True), "unmasked": (False,), "masked": (True,)}
    for clock in ("clip", "wall"):
        report[clock] = {
            group: _stats(
                [
                    c[clock]["face_to_unlock_s"]
                    for c in clips
                    if c[clock]["unlocked"] and c["masked"] in masked
                ]
            )
            for group, masked in groups.items()
        }
        report[clock]["not_unlocked"] = [c["name"] for c in clips if not c[clock]["unlocked"]]
    report["clips"] = clips
    return report


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"camera {r['camera_fps']:g} fps; door at {r['idle_fps']:g} fps idle, "
        f"{r['active_fps']:g} fps with a face; {r['k']} of {r['n']} frames; "
        f"{r['threads']} threads; {r['lead_s']:g} s empty, then the visitor; judging a "
        f"frame took {r['judge_ms']['p50']:g} ms p50, {r['judge_ms']['p95']:g} ms p95 here",
        "",
        f"{'clip':<32} {'masked':<6} {'clip time s':>11} {'wall time s':>11}  "
        "judged (clip/wall)  liveness (clip time)",
    ]
    for c in r["clips"]:
        lines.append(
            f"{c['name']:<32} {'yes' if c['masked'] else 'no':<6} "
            f"{_s(c['clip']['face_to_unlock_s']):>11} {_s(c['wall']['face_to_unlock_s']):>11}  "
            f"{c['clip']['frames_judged']:>8} / {c['wall']['frames_judged']:<8}  "
            f"{c['clip']['liveness'] or '-'}"
        )
    lines += ["", f"{'face to unlock':<16} {'clips':>5} {'median s':>9} {'min s':>7} {'max s':>7}"]
    for clock in ("clip", "wall"):
        for group in ("all", "unmasked", "masked"):
            s = r[clock][group]
            lines.append(
                f"{clock + ' time, ' + group:<22} {s['clips']:>5} {_s(s['median_s']):>9} "
                f"{_s(s['min_s']):>7} {_s(s['max_s']):>7}"
            )
        if r[clock]["not_unlocked"]:
            lines.append(f"  not unlocked ({clock} time): {', '.join(r[clock]['not_unlocked'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=8, help="live clips, alternately masked")
    ap.add_argument("--camera-fps", type=float, default=30.0, help="the camera's frame rate")
    ap.add_argument("--lead", type=float, default=1.0, help="seconds of empty scene first")
    ap.add_argument("--seconds", type=float, default=5.0, help="seconds of the visitor")
    ap.add_argument("-c", "--config", default=None, help="config file (default: config.yaml)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    if not 1 <= args.clips <= len(live_specs(100)):
        ap.error(f"--clips must be 1..{len(live_specs(100))}")
    cfg = load_config(args.config)
    report = measure(
        cfg,
        live_specs(args.clips),
        args.camera_fps,
        args.lead,
        args.seconds,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

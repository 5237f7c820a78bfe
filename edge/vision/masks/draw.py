"""Draws the mask images of the database and writes db.json (run once; outputs are committed).

    python -m edge.vision.masks.draw

Every mask is drawn in one canonical face frame: the mean near-frontal MediaPipe mesh of
lfw-subset (35 faces, |yaw| < 8°), similarity-aligned and made left-right symmetric, in units of
the distance between the iris centres with the nose tip (mesh 1) at the origin, x to the image
right, y down. The keypoints below are that mesh's points, so a mask drawn over them lands on a
real face's same points when the renderer warps it. Drawing at 3× and shrinking gives clean
edges; each design comes in three poses: frontal, and turned either way, where the far side
follows the face's outline (the mask wraps round the cheek) and shows no ear loop.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.vision.maskrender import FACE_OVAL, MIRROR, add_margin, oval_rows

log = logging.getLogger(__name__)

OUT_DIR = Path(__file__).resolve().parent
S = 140  # mask-image pixels per canonical unit
SS = 3  # supersampling while drawing
X0, Y0, X1, Y1 = -1.45, -0.66, 1.45, 1.52  # the drawn part of the canonical frame
W, H = round((X1 - X0) * S), round((Y1 - Y0) * S)
MARGIN = 0.2  # ring past the face oval, as a fraction of the oval's radius (see add_margin)

# Image-left half and midline of the canonical mesh (points checked by plotting them on real
# faces): under the eyes across the cheeks (above any mask edge), the face oval, and a spread
# over nose, cheeks, mouth and chin so the triangles follow the face's relief.
MID = {6: -0.555, 197: -0.443, 4: -0.102, 1: 0.0, 2: 0.097, 164: 0.184, 0: 0.343, 17: 0.72,
       200: 0.937, 152: 1.259}  # fmt: skip
LEFT = {
    128: (-0.207, -0.485), 230: (-0.503, -0.446), 228: (-0.731, -0.467), 111: (-0.894, -0.438),
    234: (-1.126, -0.328), 93: (-1.113, -0.083), 132: (-1.078, 0.179), 58: (-1.009, 0.459),
    172: (-0.907, 0.682), 136: (-0.791, 0.842), 150: (-0.644, 0.985), 149: (-0.516, 1.086),
    176: (-0.377, 1.174), 148: (-0.211, 1.239), 47: (-0.28, -0.355), 118: (-0.705, -0.341),
    209: (-0.275, -0.181), 101: (-0.552, -0.236), 50: (-0.79, -0.119), 98: (-0.278, 0.046),
    36: (-0.493, -0.103), 187: (-0.873, 0.117), 206: (-0.524, 0.136), 216: (-0.61, 0.262),
    212: (-0.645, 0.457), 204: (-0.462, 0.741), 210: (-0.636, 0.707), 32: (-0.376, 0.96),
    201: (-0.175, 0.919),
}  # fmt: skip


def canonical_keypoints() -> dict[int, tuple[float, float]]:
    pts = {m: (0.0, y) for m, y in MID.items()}
    for m, (x, y) in LEFT.items():
        pts[m] = (x, y)
        pts[MIRROR[m]] = (-x, y)
    return pts


KEYPOINTS = canonical_keypoints()
OVAL = np.array([KEYPOINTS[m] for m in FACE_OVAL])

# Yaw ranges (degrees, Face.yaw: + = turned to the camera's right). They overlap so faces near
# a boundary get either look.
POSES = {"front": (-22.0, 22.0), "right": (14.0, 90.0), "left": (-90.0, -14.0)}


# --------------------------------------------------------------------------------------------
# Canvas: canonical units → supersampled pixels
# --------------------------------------------------------------------------------------------

HS, WS = H * SS, W * SS


@functools.cache
def grid() -> tuple[np.ndarray, np.ndarray]:
    """Canonical x and y of every supersampled pixel (built on first use, not at import)."""
    cols = (np.arange(WS) - (SS - 1) / 2) / (S * SS) + X0
    rows = (np.arange(HS) - (SS - 1) / 2) / (S * SS) + Y0
    gx, gy = np.meshgrid(cols.astype(np.float32), rows.astype(np.float32))
    return gx, gy


def to_px(pts: np.ndarray | Sequence[tuple[float, float]]) -> np.ndarray:
    """Canonical points → supersampled pixel coordinates (×16 fixed point for OpenCV)."""
    p = (np.asarray(pts, np.float64) - (X0, Y0)) * S * SS + (SS - 1) / 2
    return np.round(p * 16).astype(np.int32)


def spline(pts: Sequence[tuple[float, float]], per_seg: int = 12) -> np.ndarray:
    """Catmull-Rom curve through the points (open), in canonical units."""
    p = np.asarray(pts, np.float64)
    if len(p) < 3:
        return p
    ext = np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    out = []
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1 : i + 3]
        for t in np.linspace(0, 1, per_seg, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(
                0.5
                * (
                    2 * p1
                    + (p2 - p0) * t
                    + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                    + (3 * p1 - p0 - 3 * p2 + p3) * t3
                )
            )
    out.append(p[-1])
    return np.array(out)


def mirror(pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts) * (-1.0, 1.0)


def fill(poly: np.ndarray) -> np.ndarray:
    m = np.zeros((HS, WS), np.uint8)
    cv2.fillPoly(m, [to_px(poly)], 255, cv2.LINE_8, shift=4)
    return m.astype(np.float32) / 255.0


def stroke(line: np.ndarray, width: float, dashed: float = 0.0) -> np.ndarray:
    """A polyline `width` canonical units wide; `dashed` > 0 draws dashes of that length."""
    m = np.zeros((HS, WS), np.uint8)
    thick = max(1, round(width * S * SS))
    segments = [line] if dashed <= 0 else _dashes(line, dashed)
    for seg in segments:
        cv2.polylines(m, [to_px(seg)], False, 255, thick, cv2.LINE_8, shift=4)
    return m.astype(np.float32) / 255.0


def _dashes(line: np.ndarray, length: float) -> list[np.ndarray]:
    seg = np.linalg.norm(np.diff(line, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    out = []
    start = 0.0
    while start < s[-1]:
        ts = np.linspace(start, min(start + length, s[-1]), 4)
        out.append(np.stack([np.interp(ts, s, line[:, 0]), np.interp(ts, s, line[:, 1])], 1))
        start += 2 * length
    return out


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def offset(line: np.ndarray, d: float) -> np.ndarray:
    """The curve moved `d` along its left normal (inward for our outlines' halves)."""
    tang = np.gradient(line, axis=0)
    tang /= np.maximum(np.linalg.norm(tang, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tang[:, 1], tang[:, 0]], 1)
    return line + d * normal


def rgb(r: int, g: int, b: int) -> np.ndarray:
    """A colour given as sRGB bytes → BGR float."""
    return np.array([b, g, r], np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# Mask shapes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Image-left half of an outline, from the top centre round to the bottom centre."""

    top: tuple[tuple[float, float], ...]  # top centre → top corner
    side: tuple[tuple[float, float], ...]  # below the top corner → above the bottom corner
    bottom: tuple[tuple[float, float], ...]  # bottom corner → bottom centre

    def half(self) -> np.ndarray:
        return spline(self.top + self.side + self.bottom)

    def outline(self) -> np.ndarray:
        h = self.half()
        return np.vstack([h, mirror(h)[::-1][1:]])

    def top_curve(self) -> np.ndarray:
        return spline(self.top)

    def bottom_curve(self) -> np.ndarray:
        return spline(self.bottom)

    def side_curve(self) -> np.ndarray:
        return spline((self.top[-1], *self.side, self.bottom[0]))

    def y_top(self, x: np.ndarray) -> np.ndarray:
        """Height of the top edge over |x| (held level past the corner)."""
        c = self.top_curve()
        return np.interp(np.abs(x), -c[:, 0], c[:, 1])


def silhouette(shape: Shape, pose: str) -> np.ndarray:
    """Alpha of the mask body: the outline, and on a turned face's far side out to the oval."""
    gx, gy = grid()
    alpha = fill(shape.outline())
    far = far_sign(pose)
    if far:
        # The far cheek turns away: the mask wraps round it, so what shows reaches the outline.
        wrap = fill(OVAL) * (shape.y_top(gx) <= gy) * (gx * far > 0.3)
        alpha = np.maximum(alpha, wrap)
    return alpha


def far_sign(pose: str) -> int:
    """+1 when the face's far side is image right (turned right), -1 turned left, 0 frontal."""
    return {"front": 0, "right": 1, "left": -1}[pose]


def near_sides(pose: str) -> list[int]:
    """Sides (-1 image left, +1 image right) whose edge and ear loop face the camera."""
    far = far_sign(pose)
    return [s for s in (-1, 1) if s != far]


def base_shade(pose: str) -> np.ndarray:
    """Broad form of a mask over a face: the sides and the part under the chin turn away."""
    gx, gy = grid()
    sh = 1.0 - 0.09 * (gx / 1.1) ** 2 - 0.12 * smoothstep(1.05, 1.34, gy)
    far = far_sign(pose)
    if far:
        sh *= 1.0 - 0.07 * smoothstep(0.2, 1.1, gx * far)
    return sh


@functools.cache
def hull_fade() -> np.ndarray:
    """1 well inside the area the renderer warps (keypoints + ring), fading to 0 at its edge."""
    mesh = tuple(KEYPOINTS)
    pts = np.array([KEYPOINTS[m] for m in mesh])
    ring = add_margin(pts, oval_rows(mesh), MARGIN)
    hull = cv2.convexHull(ring.astype(np.float32)).reshape(-1, 2)
    inside = (fill(hull) * 255).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5) / (S * SS)
    return smoothstep(0.02, 0.08, dist)


def loops(shape: Shape, pose: str, width: float) -> np.ndarray:
    """Alpha of the ear loops: from the near corners toward the ears, fading past the face."""
    alpha = np.zeros((HS, WS), np.float32)
    top, bot = np.array(shape.top[-1]), np.array(shape.bottom[0])
    for side in near_sides(pose):
        t = top * (-side, 1)
        b = bot * (-side, 1)
        ear = np.array([1.5 * side, -0.4])
        for start, bend in ((t, (0.12, -0.03)), (b, (0.14, -0.18))):
            mid = start + np.array(bend) * (side, 1)
            alpha = np.maximum(alpha, stroke(spline([start, mid, ear]), width))
    return alpha * hull_fade()


def band(curve: np.ndarray, width: float, inside: float) -> np.ndarray:
    """A strip `width` wide along a curve, on its `inside` side (+1 left normal, -1 right)."""
    mid = offset(curve, inside * width / 2)
    return stroke(mid, width)


# --------------------------------------------------------------------------------------------
# Designs
# --------------------------------------------------------------------------------------------

SURGICAL = Shape(
    top=((0, -0.47), (-0.09, -0.46), (-0.19, -0.425), (-0.30, -0.37), (-0.45, -0.32),
         (-0.65, -0.29), (-0.88, -0.28), (-1.06, -0.275)),
    side=((-1.065, -0.05), (-1.04, 0.25)),
    bottom=((-0.97, 0.56), (-0.88, 0.74), (-0.78, 0.88), (-0.66, 1.01), (-0.52, 1.12),
            (-0.37, 1.21), (-0.19, 1.28), (0, 1.305)),
)  # fmt: skip
N95 = Shape(
    top=((0, -0.455), (-0.14, -0.445), (-0.32, -0.395), (-0.55, -0.31), (-0.78, -0.19)),
    side=((-0.95, -0.02), (-1.02, 0.22)),
    bottom=((-0.99, 0.48), (-0.88, 0.74), (-0.70, 0.98), (-0.48, 1.16), (-0.24, 1.28),
            (0, 1.32)),
)  # fmt: skip
KN95 = Shape(
    top=((0, -0.47), (-0.15, -0.43), (-0.35, -0.365), (-0.6, -0.31), (-0.85, -0.26),
         (-1.04, -0.24)),
    side=((-1.05, 0.05), (-1.02, 0.35)),
    bottom=((-0.95, 0.55), (-0.78, 0.76), (-0.56, 0.97), (-0.32, 1.16), (-0.12, 1.29),
            (0, 1.33)),
)  # fmt: skip
CLOTH = Shape(
    top=((0, -0.47), (-0.12, -0.455), (-0.28, -0.40), (-0.5, -0.33), (-0.75, -0.285),
         (-1.02, -0.27)),
    side=((-1.04, 0.05), (-1.02, 0.35)),
    bottom=((-0.96, 0.55), (-0.84, 0.75), (-0.66, 0.96), (-0.44, 1.13), (-0.22, 1.25),
            (0, 1.30)),
)  # fmt: skip


@dataclass
class Layers:
    """A mask being drawn: body colour, shading, alpha, then straps over it."""

    colour: np.ndarray  # (HS, WS, 3) BGR 0..1
    shade: np.ndarray  # (HS, WS)
    alpha: np.ndarray  # (HS, WS)

    def paint(self, where: np.ndarray, colour: np.ndarray, opacity: float = 1.0) -> None:
        a = (where * opacity)[..., None]
        self.colour = self.colour * (1 - a) + colour * a

    def overlay(self, where: np.ndarray, colour: np.ndarray, shade: float = 0.95) -> None:
        """Something on top of the mask (a strap): own colour, own alpha, flat shading."""
        a = where[..., None]
        self.colour = self.colour * (1 - a) + colour * a
        self.shade = self.shade * (1 - where) + shade * where
        self.alpha = np.maximum(self.alpha, where)

    def image(self) -> np.ndarray:
        """8-bit BGRA at the final size (area-averaged with premultiplied colour)."""
        # Dark fabric still shows its folds: a sheen adds to what shading alone would multiply.
        dark = 1.0 - self.colour.mean(axis=2, keepdims=True)
        sheen = 0.3 * dark**2 * (self.shade[..., None] - 1.0)
        col = np.clip(self.colour * self.shade[..., None] + sheen, 0, 1) * self.alpha[..., None]
        small = cv2.resize(
            np.dstack([col, self.alpha]).astype(np.float32), (W, H), interpolation=cv2.INTER_AREA
        )
        a = small[..., 3:]
        straight = np.where(a > 1e-4, small[..., :3] / np.maximum(a, 1e-4), 0)
        return np.clip(np.dstack([straight, a]) * 255 + 0.5, 0, 255).astype(np.uint8)


def mottle(rng: np.random.Generator, sigma: float, amount: float) -> np.ndarray:
    """Soft fabric unevenness (smooth, so the PNGs stay small; the renderer adds grain)."""
    n = cv2.GaussianBlur(rng.normal(0, 1, (HS, WS)).astype(np.float32), (0, 0), sigma * SS)
    return 1.0 + amount * n / max(float(n.std()), 1e-6)


def draw_surgical(colour: np.ndarray, pose: str, rng: np.random.Generator) -> Layers:
    gx, gy = grid()
    shape = SURGICAL
    alpha = silhouette(shape, pose)
    lay = Layers(np.broadcast_to(colour, (HS, WS, 3)).copy(), base_shade(pose), alpha)
    sh = lay.shade
    # Three pleats, gathered at the side seams and opened over nose, mouth and chin.
    for c, s in ((0.10, -0.06), (0.47, 0.13), (0.84, 0.32)):
        t = np.clip(1 - (np.abs(gx) / 1.06) ** 2, 0, 1) ** 0.7
        d = gy - (s + (c - s) * t)
        sh += 0.07 * np.exp(-(((d + 0.012) / 0.012) ** 2))  # the fold's lip catches light
        sh -= 0.16 * np.where(d > 0, np.exp(-d / 0.03), 0) * smoothstep(-0.004, 0.004, d)
    dark = colour.mean() < 0.3
    edge_tone = 1.10 if dark else 0.95
    top, bottom = shape.top_curve(), shape.bottom_curve()
    # Bound top and bottom edges: a strip of their own tone, its fold line and its stitching.
    full_top = np.vstack([top[::-1], mirror(top)[1:]])  # left to right: normal points down
    full_bottom = np.vstack([bottom, mirror(bottom)[::-1][1:]])
    for curve, w, inward in ((full_top, 0.055, 1), (full_bottom, 0.05, -1)):
        strip = band(curve, w, inward) * alpha
        sh *= 1 + (edge_tone - 1) * strip
        sh -= 0.08 * stroke(offset(curve, inward * w), 0.008) * alpha
        sh -= 0.10 * stroke(offset(curve, inward * w * 0.5), 0.006, dashed=0.018) * alpha
    for side in near_sides(pose):
        seam = shape.side_curve() * (-side, 1)
        strip = band(seam, 0.075, side) * alpha
        sh *= 1 + (edge_tone - 1) * strip
        sh -= 0.08 * stroke(offset(seam, side * 0.075), 0.008) * alpha
    # The nose wire lifts the top binding over the bridge of the nose.
    wire = top[np.abs(top[:, 0]) < 0.3]
    wire = np.vstack([wire[::-1], mirror(wire)[1:]])
    sh += 0.06 * stroke(offset(wire, 0.028), 0.018) * alpha
    sh *= mottle(rng, 3.0, 0.012)
    loop_colour = np.clip(colour * 1.1 + 0.05, 0, 1) if not dark else colour * 1.4
    lay.overlay(loops(shape, pose, 0.022), loop_colour)
    return lay


def draw_n95(colour: np.ndarray, pose: str, rng: np.random.Generator, valve: bool) -> Layers:
    gx, gy = grid()
    shape = N95
    alpha = silhouette(shape, pose)
    r2 = (gx / 1.0) ** 2 + ((gy - 0.42) / 0.9) ** 2
    sh = base_shade(pose) * (1.05 - 0.17 * np.clip(r2, 0, 1.4))  # a moulded dome
    lay = Layers(np.broadcast_to(colour, (HS, WS, 3)).copy(), sh, alpha)
    rim = offset(shape.outline(), -0.035)
    lay.shade *= 1 - 0.07 * stroke(rim, 0.07) * alpha
    lay.shade -= 0.07 * stroke(offset(shape.outline(), -0.07), 0.007) * alpha
    # A faint moulding seam across the cup.
    lay.shade -= 0.03 * stroke(spline([(-0.95, 0.3), (-0.5, 0.36), (0, 0.38), (0.5, 0.36),
                                       (0.95, 0.3)]), 0.01) * alpha  # fmt: skip
    clip_line = spline([(-0.3, -0.365), (-0.14, -0.405), (0, -0.41), (0.14, -0.405),
                        (0.3, -0.365)])  # fmt: skip
    metal = stroke(clip_line, 0.055) * alpha
    lay.paint(metal, rgb(196, 198, 204))
    lay.shade += 0.08 * stroke(offset(clip_line, 0.012), 0.012) * alpha
    lay.shade *= mottle(rng, 1.5, 0.02)
    if valve:
        draw_valve(lay)
    # Two head straps leave the cup's near side toward the back of the head.
    for y, end_y in ((-0.05, -0.3), (0.6, -0.165)):
        la = np.zeros((HS, WS), np.float32)
        for side in near_sides(pose):
            x = float(np.interp(y, [-0.02, 0.22, 0.48, 0.74], [0.95, 1.02, 0.99, 0.88]))
            start = np.array([x * side, y])
            end = np.array([1.5 * side, end_y])
            la = np.maximum(la, stroke(spline([start, (start + end) / 2, end]), 0.03))
        lay.overlay(la * hull_fade(), rgb(238, 214, 150))
    return lay


def draw_valve(lay: Layers) -> None:
    """An exhalation valve: a rounded plastic housing with slots, in front of the mouth."""
    gx, gy = grid()
    cx, cy, hw, hh = 0.0, 0.52, 0.23, 0.19
    body = np.zeros((HS, WS), np.uint8)
    c = to_px([(cx, cy)])[0]
    axes = (round(hw * S * SS * 16), round(hh * S * SS * 16))
    cv2.ellipse(body, (int(c[0]), int(c[1])), axes, 0, 0, 360, 255, -1, cv2.LINE_8, 4)
    b = body.astype(np.float32) / 255.0 * lay.alpha
    lay.paint(b, rgb(226, 228, 230))
    u, v = (gx - cx) / hw, (gy - cy) / hh
    r = np.sqrt(u**2 + v**2)
    lay.shade = lay.shade * (1 - b) + b * (1.06 - 0.12 * v - 0.15 * smoothstep(0.8, 1.0, r))
    ring = b * np.exp(-(((r - 0.62) / 0.05) ** 2))
    lay.shade -= 0.12 * ring
    for k in range(-2, 3):
        slot = b * (np.abs(v - k * 0.2) < 0.035) * (np.abs(u) < 0.4)
        lay.shade -= 0.35 * slot


def draw_kn95(colour: np.ndarray, pose: str, rng: np.random.Generator) -> Layers:
    gx, gy = grid()
    shape = KN95
    alpha = silhouette(shape, pose)
    far = far_sign(pose) or 1
    # Two flat panels folded down the middle: the one turned toward the light is brighter.
    panel = np.where(gx * far > 0, 0.9, 1.0).astype(np.float32)
    sh = base_shade(pose) * panel
    lay = Layers(np.broadcast_to(colour, (HS, WS, 3)).copy(), sh, alpha)
    dark = colour.mean() < 0.3
    fold = spline([(0, -0.47), (0, 0.4), (0, 1.33)])
    lay.shade += (0.07 if not dark else 0.12) * stroke(offset(fold, 0.01), 0.012) * alpha
    lay.shade -= 0.08 * stroke(offset(fold, -0.012), 0.012) * alpha
    # Heat-sealed border and centre seam, embossed with a grid of dots.
    seal = np.maximum(band(shape.outline(), 0.065, -1), stroke(fold, 0.06)) * alpha
    dots = ((np.mod(gx, 0.035) < 0.012) & (np.mod(gy, 0.035) < 0.012)).astype(np.float32)
    lay.shade -= (0.06 + 0.1 * dots) * seal
    crease = offset(np.vstack([shape.top_curve()[::-1], mirror(shape.top_curve())[1:]]), 0.1)
    lay.shade -= 0.05 * stroke(crease, 0.01) * alpha
    lay.shade *= mottle(rng, 2.0, 0.012)
    lay.overlay(loops(shape, pose, 0.032), colour * (1.25 if dark else 0.98))
    return lay


def plaid(base: np.ndarray) -> np.ndarray:
    gx, gy = grid()
    light = rgb(70, 94, 150)
    red = rgb(170, 45, 50)
    col = np.broadcast_to(base, (HS, WS, 3)).copy()
    for coord in (gx, gy):
        stripe = (np.mod(coord + 0.05, 0.26) < 0.09).astype(np.float32)[..., None]
        col = col * (1 - 0.45 * stripe) + light * 0.45 * stripe
        thin = (np.abs(np.mod(coord, 0.26) - 0.2) < 0.008).astype(np.float32)[..., None]
        col = col * (1 - 0.8 * thin) + red * 0.8 * thin
    return col


def dots(base: np.ndarray) -> np.ndarray:
    gx, gy = grid()
    col = np.broadcast_to(base, (HS, WS, 3)).copy()
    row = np.floor(gy / 0.11)  # a staggered grid of spots
    dy = np.mod(gy, 0.11) - 0.055
    dx = np.mod(gx + 0.055 * (row % 2), 0.11) - 0.055
    spot = smoothstep(0.022, 0.018, np.sqrt(dx**2 + dy**2))[..., None]
    return col * (1 - spot) + rgb(238, 232, 222) * spot


def twill(base: np.ndarray) -> np.ndarray:
    gx, gy = grid()
    weave = 1 + 0.05 * np.sin((gx + gy) * 2 * math.pi / 0.03)
    return base * weave[..., None]


def draw_cloth(
    base: np.ndarray,
    pattern: Callable[[np.ndarray], np.ndarray],
    pose: str,
    rng: np.random.Generator,
) -> Layers:
    gx, gy = grid()
    shape = CLOTH
    alpha = silhouette(shape, pose)
    sh = base_shade(pose)
    # Soft cloth wrinkles toward the sides where the fabric gathers.
    sh += 0.035 * np.sin(gy * 24 + 1.3 * gx) * smoothstep(0.45, 1.0, np.abs(gx))
    lay = Layers(pattern(base), sh, alpha)
    seam = spline([(0, -0.47), (0.01, 0.0), (0, 0.5), (-0.01, 1.0), (0, 1.30)])
    lay.shade += 0.08 * stroke(offset(seam, 0.012), 0.014) * alpha
    lay.shade -= 0.12 * stroke(offset(seam, -0.01), 0.012) * alpha
    for side in (-1, 1):
        lay.shade -= 0.12 * stroke(offset(seam, side * 0.035), 0.008, dashed=0.02) * alpha
    hem = shape.outline()
    lay.shade -= 0.10 * stroke(offset(hem, -0.05), 0.008, dashed=0.02) * alpha
    lay.shade *= 1 - 0.05 * band(hem, 0.05, -1) * alpha
    lay.shade *= mottle(rng, 2.5, 0.015)
    lay.overlay(loops(shape, pose, 0.03), base * 0.9)
    return lay


@dataclass(frozen=True)
class Design:
    type: str
    colour: str
    draw: Callable[[str, np.random.Generator], Layers]


def designs() -> list[Design]:
    surgical = {
        "blue": rgb(146, 192, 224),
        "white": rgb(238, 240, 241),
        "black": rgb(40, 40, 44),
        "pink": rgb(236, 168, 190),
        "green": rgb(150, 204, 182),
    }
    out = [
        Design("surgical", name, lambda p, r, c=c: draw_surgical(c, p, r))
        for name, c in surgical.items()
    ]
    out += [
        Design("n95", "white", lambda p, r: draw_n95(rgb(240, 240, 236), p, r, valve=False)),
        Design("n95", "white_valve", lambda p, r: draw_n95(rgb(240, 240, 236), p, r, True)),
        Design("kn95", "white", lambda p, r: draw_kn95(rgb(242, 242, 242), p, r)),
        Design("kn95", "black", lambda p, r: draw_kn95(rgb(36, 36, 38), p, r)),
        Design("cloth", "navy_plaid", lambda p, r: draw_cloth(rgb(30, 40, 78), plaid, p, r)),
        Design("cloth", "black", lambda p, r: draw_cloth(rgb(34, 34, 37), twill, p, r)),
        Design("cloth", "red_dots", lambda p, r: draw_cloth(rgb(140, 30, 45), dots, p, r)),
    ]
    return out


def keypoint_table() -> list[dict[str, float | int]]:
    """Keypoints in mask-image pixels (pixel centres at integers)."""
    return [
        {"mesh": m, "x": round((x - X0) * S, 2), "y": round((y - Y0) * S, 2)}
        for m, (x, y) in sorted(KEYPOINTS.items())
    ]


def _dump(db: dict) -> str:
    """JSON with one line per keypoint and per short list: readable, and a diff shows a change."""
    text = json.dumps(db, indent=1)
    text = re.sub(r"\{\s+(\"mesh\"[^}]*?)\s+\}", lambda m: "{" + " ".join(m[1].split()) + "}", text)
    text = re.sub(r"\[\s+(-?[\d.]+),\s+(-?[\d.]+)\s+\]", r"[\1, \2]", text)
    return text + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    entries = []
    keypoints = keypoint_table()
    for i, d in enumerate(designs()):
        for pose, yaw in POSES.items():
            mask_id = f"{d.type}_{d.colour}_{pose}"
            rng = np.random.default_rng(1000 + i)  # the same fabric in every pose
            img = d.draw(pose, rng).image()
            name = f"{mask_id}.png"
            cv2.imwrite(str(OUT_DIR / name), img, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            log.info("%s: %d bytes", name, (OUT_DIR / name).stat().st_size)
            entries.append(
                {
                    "id": mask_id,
                    "type": d.type,
                    "colour": d.colour,
                    "pose": pose,
                    "yaw": list(yaw),
                    "image": name,
                    "margin": MARGIN,
                    "keypoints": keypoints,
                }
            )
    db = {
        "about": "Synthetic masks drawn by draw.py; keypoints are MediaPipe face-mesh indices at "
        "their positions in the mask image (pixels); yaw in degrees, + = face turned to the "
        "camera's right; margin: ring past the face oval (see maskrender.add_margin).",
        "masks": entries,
    }
    (OUT_DIR / "db.json").write_text(_dump(db), encoding="utf-8")
    log.info("wrote %d masks to %s", len(entries), OUT_DIR / "db.json")


if __name__ == "__main__":
    main()

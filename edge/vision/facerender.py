"""A face photo rendered as a live head: turned in 3-D with the mesh's depth, and blinking.

No registry package ships a real video of a face, so live test clips are rendered from photos:
each mesh triangle is moved in 3-D (rotated about the head's centre with the depth the face
mesh estimated) and its pixels are warped piecewise-affinely onto the projected triangle,
drawn back to front so the nose hides the cheek behind it. Hair and ears sit on a ring of
points that turns with the head; the scene past a second ring stays still. A blink moves both
eyelids' mesh points together low in the eye, so the eye folds away under lid skin (the eye
painted over with the face's skin tone) and a lash line.

What this can prove: the door accepts 3-D parallax and eyelid motion *of the kind rendered*
(a rigid mesh turning, a lid closing). It cannot prove that real people pass: real skin,
hair, lighting and sensors are not modelled, and the depth is MediaPipe's own estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.vision.landmarks import Face
from edge.vision.maskrender import delaunay, inverse_affines

# The face oval (MediaPipe's FACE_OVAL connections, in order around the face).
OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400)
OVAL += (377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103)
OVAL += (67, 109)
# Eyelid contours, lower and upper point of each pair from one corner to the other.
LID_PAIRS = (
    (7, 246), (163, 161), (144, 160), (145, 159), (153, 158), (154, 157), (155, 173),
    (249, 466), (390, 388), (373, 387), (374, 386), (380, 385), (381, 384), (382, 398),
)  # fmt: skip
IRIS = {"right": tuple(range(468, 473)), "left": tuple(range(473, 478))}
# The ring of mesh points just above each upper-lid point (the lid's skin lies between).
ABOVE_LID = (247, 30, 29, 27, 28, 56, 190, 467, 260, 259, 257, 258, 286, 414)
EYE_CORNERS = {"right": (33, 133), "left": (263, 362)}
# Cheek patches under each eye (mesh points round them): the face's skin tone.
_CHEEK_RIGHT = (116, 117, 118, 119, 100, 142, 203, 206, 207, 187, 123)
_CHEEK_LEFT = (345, 346, 347, 348, 329, 371, 423, 426, 427, 411, 352)
_EYE_OF_PAIR = ("right",) * 7 + ("left",) * 7
MESH_POINTS = 478
_HEAD_RING = 0.35  # hair, ears, neck: turns with the head (fraction of the oval's radius)
_SCENE_RING = 1.1  # past this the scene stands still


def warp_triangles(
    src: np.ndarray,
    src_pts: np.ndarray,
    dst_pts: np.ndarray,
    tris: np.ndarray,
    order: np.ndarray,
    canvas: np.ndarray,
) -> np.ndarray:
    """Paint each triangle of `src` (at `src_pts`) onto `dst_pts` of a copy of `canvas`.

    Triangles are rasterised in `order` (later ones cover earlier ones) into an id map; each
    covered pixel then samples `src` through its triangle's inverse affine, in one remap.
    """
    h, w = canvas.shape[:2]
    # Only the box the triangles cover is rasterised and resampled.
    used = dst_pts[np.unique(tris[order])]
    x0, y0 = (max(int(v), 0) for v in np.floor(used.min(0)))
    x1, y1 = min(int(np.ceil(used[:, 0].max())) + 1, w), min(int(np.ceil(used[:, 1].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return canvas.copy()
    local = dst_pts - (x0, y0)
    ids = np.zeros((y1 - y0, x1 - x0), np.int32)
    for t in order:
        poly = np.round(local[tris[t]] * 16).astype(np.int32)
        cv2.fillConvexPoly(ids, poly, int(t) + 1, cv2.LINE_8, shift=4)
    inv = inverse_affines(dst_pts, src_pts, tris)
    ys, xs = np.nonzero(ids)
    m = inv[ids[ys, xs] - 1]
    gx, gy = xs + x0, ys + y0  # frame coordinates
    map_x = np.full(ids.shape, -1.0, np.float32)
    map_y = np.full(ids.shape, -1.0, np.float32)
    map_x[ys, xs] = m[:, 0, 0] * gx + m[:, 0, 1] * gy + m[:, 0, 2]
    map_y[ys, xs] = m[:, 1, 0] * gx + m[:, 1, 1] * gy + m[:, 1, 2]
    warped = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    out = canvas.copy()
    out[gy, gx] = warped[ys, xs]
    return out


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3×3 rotation (degrees) in image axes: x right, y down, z away from the camera."""
    a, b, c = (math.radians(v) for v in (yaw, pitch, roll))
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class HeadPose:
    """One rendered frame's head: angles in degrees, shift in pixels, eyelid closure 0–1."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    dx: float = 0.0
    dy: float = 0.0
    blink: float = 0.0


class LiveHead:
    """A photo and its face mesh (points + depth), ready to render turned and blinking."""

    def __init__(self, image: np.ndarray, face: Face) -> None:
        if face.points.shape[0] != MESH_POINTS or face.mirrored:
            raise ValueError("a 478-point mesh found on the unmirrored image is needed")
        self.image = image
        h, w = image.shape[:2]
        pts = face.points.astype(np.float64)
        z = face.depth.astype(np.float64)
        oval = np.array(OVAL)
        centre = pts[oval].mean(0)
        self.centre = np.array([centre[0], centre[1], float(z[oval].mean())])
        head = pts[oval] + _HEAD_RING * (pts[oval] - centre)
        scene = pts[oval] + _SCENE_RING * (pts[oval] - centre)
        border = np.array(
            [(x, y) for x in np.linspace(0, w - 1, 5) for y in np.linspace(0, h - 1, 5)
             if x in (0, w - 1) or y in (0, h - 1)]
        )  # fmt: skip
        self.src = np.vstack([pts, head, scene, border])
        # The head ring keeps its oval point's depth: deeper, it would fold over the far cheek.
        self.z = np.concatenate([z, z[oval]])
        self.n_moving = len(pts) + len(head)
        self.tris = delaunay(self.src)
        # Closed lids meet low in the opening (the upper lid does most of a blink), so the eye
        # between them folds away to nothing.
        self.closed = {}
        for lower, upper in LID_PAIRS:
            meet = pts[lower] + 0.2 * (pts[upper] - pts[lower])
            self.closed[upper] = self.closed[lower] = meet
        for eye in ("right", "left"):
            uppers = [u for (_, u), e in zip(LID_PAIRS, _EYE_OF_PAIR, strict=True) if e == eye]
            line = np.array([self.closed[u] for u in uppers])
            for i in IRIS[eye]:
                self.closed[i] = line[np.argmin(np.abs(line[:, 0] - pts[i, 0]))]
        # A closed lid's texture: the eye and the lashes above it painted over with the skin
        # around them, so the lid stretched down over the eye shows skin, not lashes.
        hole = np.zeros(image.shape[:2], np.uint8)
        self.lash_lines = []
        for eye in ("right", "left"):
            rows = [k for k, e in enumerate(_EYE_OF_PAIR) if e == eye]
            c0, c1 = EYE_CORNERS[eye]
            upper = pts[[LID_PAIRS[k][1] for k in rows]]
            # Half way up to the next ring: higher, the brow's dark hairs would bleed in.
            lid = upper + 0.5 * (pts[[ABOVE_LID[k] for k in rows]] - upper)
            lower = pts[[LID_PAIRS[k][0] for k in rows]]
            ring = np.vstack([pts[c0], lid, pts[c1], lower[::-1]])
            cv2.fillPoly(hole, [np.round(ring).astype(np.int32)], 255)
            self.lash_lines.append([c0, *[LID_PAIRS[k][1] for k in rows], c1])
        eye_w = float(np.linalg.norm(pts[33] - pts[133]))
        hole = cv2.dilate(hole, np.ones((3, 3), np.uint8), iterations=max(1, round(eye_w / 15)))
        # Skin tone from the cheek under the eyes (the lids above are often in shadow), blended
        # with the inpainted surroundings for texture, feathered at the edge.
        cheek = np.zeros_like(hole)
        for patch in (_CHEEK_RIGHT, _CHEEK_LEFT):
            hull = cv2.convexHull(np.round(pts[list(patch)]).astype(np.int32))
            cv2.fillConvexPoly(cheek, hull, 255)
        skin = np.median(image[cheek > 0], axis=0).astype(np.float32)
        painted = cv2.inpaint(image, hole, max(3.0, eye_w / 6), cv2.INPAINT_TELEA)
        painted = 0.4 * painted.astype(np.float32) + 0.6 * skin
        alpha = cv2.GaussianBlur(hole.astype(np.float32) / 255, (0, 0), max(1.0, eye_w / 20))
        closed = image * (1 - alpha[..., None]) + painted * alpha[..., None]
        self.closed_image = np.clip(closed + 0.5, 0, 255).astype(np.uint8)

    def points(self, pose: HeadPose) -> tuple[np.ndarray, np.ndarray]:
        """Where the source points land (N, 2), and their depth (N,) for the painter."""
        face = self.src[: self.n_moving].copy()
        b = float(np.clip(pose.blink, 0.0, 1.0))
        if b > 0:
            for i, p in self.closed.items():
                face[i] = face[i] + b * (p - face[i])
        p3 = np.column_stack([face, self.z]) - self.centre
        rot = p3 @ rotation(pose.yaw, pose.pitch, pose.roll).T
        moved = rot[:, :2] + self.centre[:2] + (pose.dx, pose.dy)
        return np.vstack([moved, self.src[self.n_moving :]]), rot[:, 2]

    def render(self, pose: HeadPose) -> np.ndarray:
        dst, depth = self.points(pose)
        # Back to front: the still scene first, then the head's triangles farthest first.
        tri_depth = np.full(len(self.tris), np.inf)
        moving = (self.tris < self.n_moving).all(1)
        tri_depth[moving] = depth[self.tris[moving]].mean(1)
        order = np.argsort(-tri_depth, kind="stable")
        # Triangles of the still scene alone map onto themselves: left as they are.
        order = order[(self.tris[order] < self.n_moving).any(1)]
        b = float(np.clip(pose.blink, 0.0, 1.0))
        tex = self.image if b == 0 else cv2.addWeighted(self.closed_image, b, self.image, 1 - b, 0)
        out = warp_triangles(tex, self.src, dst, self.tris, order, self.image)
        if b > 0.3:
            # The lashes of a closed lid: a soft dark line where the lids meet.
            eye_w = float(np.linalg.norm(dst[33] - dst[133]))
            lashes = out.copy()
            for line in self.lash_lines:
                pts = np.round(dst[line] * 16).astype(np.int32)
                cv2.polylines(lashes, [pts], False, (40, 35, 35), max(1, round(0.05 * eye_w)),
                              cv2.LINE_AA, shift=4)  # fmt: skip
            a = min(1.0, (b - 0.3) / 0.5) * 0.6
            out = cv2.addWeighted(lashes, a, out, 1 - a, 0)
        return out


def frame_face(
    image: np.ndarray,
    box: tuple[int, int, int, int],
    size: tuple[int, int] = (640, 480),
    face_px: float = 200.0,
    centre: tuple[float, float] | None = None,
) -> np.ndarray:
    """The photo scaled and shifted so its face box is `face_px` wide at `centre` of a frame
    of `size` (w, h), as a door camera at arm's length frames a visitor."""
    x, y, w, h = box
    s = face_px / max(w, 1)
    cx, cy = centre or (size[0] / 2, size[1] * 0.47)
    m = np.array([[s, 0, cx - s * (x + w / 2)], [0, s, cy - s * (y + h / 2)]])
    flags = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, m, size, flags=flags, borderMode=cv2.BORDER_REFLECT101)


def camera(image: np.ndarray, rng: np.random.Generator, noise: float = 2.0) -> np.ndarray:
    """What a camera adds to a rendered scene: a little optical blur and sensor noise."""
    out = cv2.GaussianBlur(image, (0, 0), 0.6).astype(np.float32)
    out += rng.normal(0.0, noise, out.shape).astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def blink_profile(t: float, at: float, closing_s: float = 0.1, closed_s: float = 0.1) -> float:
    """Eyelid closure at time t of a blink starting at `at` (0 open, 1 shut): lids fall in
    `closing_s`, stay shut `closed_s` and rise twice as slowly, as a spontaneous blink does
    (about 0.3 s in all)."""
    u = t - at
    if u < 0 or u > closing_s * 3 + closed_s:
        return 0.0
    if u < closing_s:
        return u / closing_s
    if u < closing_s + closed_s:
        return 1.0
    return max(0.0, 1.0 - (u - closing_s - closed_s) / (2 * closing_s))


MOTIONS = ("turn", "nod", "blink", "turn+blink", "still")


def live_motion(style: str, t: float, seed: int = 0) -> HeadPose:
    """A visitor's head at time t (s): turning, nodding, standing still and blinking, or a
    small turn with a blink; always swaying a little, as nobody stands perfectly still.
    "still" does not move at all (to measure landmark noise)."""
    if style not in MOTIONS:
        raise ValueError(f"unknown motion {style!r}: one of {', '.join(MOTIONS)}")
    if style == "still":
        return HeadPose()
    r = np.random.default_rng(seed)
    period, amp, phase = r.uniform(2.2, 3.0), r.uniform(11.0, 15.0), r.uniform(0, 0.5)
    sway = dict(dx=4 * math.sin(0.8 * t + phase), dy=2 * math.sin(1.1 * t))
    w = 2 * math.pi * t / period
    if style == "turn":
        return HeadPose(yaw=amp * math.sin(w), pitch=2 * math.sin(0.7 * w), **sway)
    if style == "nod":
        return HeadPose(pitch=0.8 * amp * math.sin(w), yaw=2 * math.sin(0.5 * w), **sway)
    blink = max(blink_profile(t, 1.0 + phase), blink_profile(t, 3.2 + phase))
    if style == "blink":
        return HeadPose(blink=blink, **sway)
    return HeadPose(yaw=0.6 * amp * math.sin(w), blink=blink, **sway)

"""Synthetic medical masks on real faces, from the face mesh (numpy + OpenCV only).

Each mask image of the database (`masks/db.json`, drawn by `masks/draw.py`) carries keypoints
that name face-mesh landmarks, and the yaw range it was drawn for. For a face: pick a mask
whose range holds the face's yaw, triangulate the mask's keypoints (Delaunay, once per mask),
warp every triangle onto the face's matching mesh points (piecewise affine), light the mask like
the skin it covers and composite it with a feathered edge. Training uses it as an augmentation
(`MaskAugment`), evaluation to write masked copies of a dataset, enrollment to add masked
templates; all three share this one code path.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.vision.landmarks import Face

log = logging.getLogger(__name__)

MASK_DIR = Path(__file__).resolve().with_name("masks")
DEFAULT_DB = MASK_DIR / "db.json"
KINDS = ("surgical", "n95", "kn95", "cloth")
MESH_POINTS = 478

# The face oval from the right cheek (image left on an unmirrored face) under the chin to the
# left cheek. Masks hang past it (straps, under the chin), so a margin ring is extrapolated
# outward from these points, in the mask image and on the face alike.
FACE_OVAL = (234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152)
FACE_OVAL += (377, 400, 378, 379, 365, 397, 288, 361, 323, 454)

# Left/right partners of the mesh indices the masks use (midline points are their own). Measured
# by reflecting a mean near-frontal mesh of lfw-subset; a face found on a mirrored image names
# each side's points by the other side's index, so its mesh is read through this table.
_PAIRS = (
    (128, 357), (230, 450), (228, 448), (111, 340), (234, 454), (93, 323), (132, 361),
    (58, 288), (172, 397), (136, 365), (150, 379), (149, 378), (176, 400), (148, 377),
    (47, 277), (118, 347), (209, 429), (101, 330), (50, 280), (98, 327), (36, 266),
    (187, 411), (206, 426), (216, 436), (212, 432), (204, 424), (210, 430), (32, 262),
    (201, 421), (33, 263), (133, 362), (159, 386), (145, 374), (468, 473),
)  # fmt: skip
MIDLINE = (6, 197, 4, 1, 2, 164, 0, 17, 200, 152)
MIRROR: dict[int, int] = {i: i for i in MIDLINE}
MIRROR.update({a: b for a, b in _PAIRS})
MIRROR.update({b: a for a, b in _PAIRS})

# Outer eye corners: their distance is the face's scale (it does not shrink with a smile).
_EYE_CORNERS = (33, 263)
_PYRAMID_LEVELS = 4
# Mean chromaticity (B, G, R summing to 1) of the lower-face skin over lfw-subset and the test
# photos (109 faces): the colour of skin under average light.
_SKIN_CHROMA = np.array([0.255, 0.313, 0.432], np.float32)


@dataclass(frozen=True)
class MaskEntry:
    """One mask image: its look, the yaw range it suits and its keypoints (mask pixels)."""

    id: str
    type: str
    colour: str
    pose: str  # front, left or right: where the face it was drawn for is turned
    yaw_range: tuple[float, float]  # degrees, in Face.yaw's convention
    image: Path
    mesh: tuple[int, ...]  # mesh index of each keypoint
    points: np.ndarray  # (K, 2) float32 keypoint positions in the mask image, pixels
    margin: float  # how far the ring extends past the face oval (fraction of its radius)

    def fits(self, yaw: float) -> bool:
        return self.yaw_range[0] <= yaw <= self.yaw_range[1]


@dataclass(frozen=True)
class _Prepared:
    """What rendering needs of one mask, computed once: pyramid, points with ring, triangles."""

    levels: tuple[np.ndarray, ...]  # premultiplied float32 BGRA, halved per level
    points: np.ndarray  # (K + R, 2) float64 keypoints then ring points, level-0 pixels
    oval_rows: np.ndarray  # rows of `points` that lie on FACE_OVAL, in oval order
    triangles: np.ndarray  # (T, 3) int32 rows of `points`, counter-clockwise in the mask
    width: float  # 234 ↔ 454 distance in the mask image: the level choice compares it
    n_keypoints: int  # rows of `points` before the ring


class MaskDB:
    """The mask database: entries by id, choice by yaw, prepared images cached per mask."""

    def __init__(self, entries: list[MaskEntry], source: Path | None = None) -> None:
        if not entries:
            raise ValueError(f"{source or 'mask database'}: no masks")
        self.entries = entries
        self.source = source
        self._by_id = {e.id: e for e in entries}
        if len(self._by_id) != len(entries):
            raise ValueError(f"{source or 'mask database'}: duplicate mask ids")
        self._prepared: dict[str, _Prepared] = {}

    @classmethod
    def load(cls, path: Path | str = DEFAULT_DB) -> MaskDB:
        """Read db.json; every problem is a ValueError naming the file and the entry."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the mask database: {err}") from None
        items = raw.get("masks") if isinstance(raw, dict) else None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected an object with a 'masks' list")
        return cls([_parse_entry(item, path, i) for i, item in enumerate(items)], path)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def get(self, mask_id: str) -> MaskEntry:
        try:
            return self._by_id[mask_id]
        except KeyError:
            raise ValueError(f"unknown mask {mask_id!r}; known: {', '.join(self.ids)}") from None

    def choose(
        self,
        yaw: float,
        rng: np.random.Generator | None = None,
        kind: str | list[str] | tuple[str, ...] | None = None,
    ) -> MaskEntry:
        """A mask of `kind` (one or several types) whose yaw range holds `yaw`.

        Random with `rng`, the first fitting entry without it. Outside every range, the masks
        whose range ends nearest the yaw are the candidates (a strongly turned face still gets
        the mask drawn for the strongest turn).
        """
        kinds = (kind,) if isinstance(kind, str) else tuple(kind or ())
        unknown = [k for k in kinds if k not in {e.type for e in self.entries}]
        if unknown:
            known = sorted({e.type for e in self.entries})
            raise ValueError(f"unknown mask type {unknown[0]!r}; known: {', '.join(known)}")
        pool = [e for e in self.entries if not kinds or e.type in kinds]
        if not math.isfinite(yaw):
            raise ValueError(f"yaw must be a finite number of degrees, got {yaw}")
        fitting = [e for e in pool if e.fits(yaw)]
        if not fitting:
            gap = {e.id: min(abs(yaw - e.yaw_range[0]), abs(yaw - e.yaw_range[1])) for e in pool}
            best = min(gap.values())
            fitting = [e for e in pool if gap[e.id] <= best + 1e-6]
        if rng is None:
            return fitting[0]
        return fitting[int(rng.integers(len(fitting)))]

    def prepared(self, mask_id: str) -> _Prepared:
        if mask_id not in self._prepared:
            self._prepared[mask_id] = _prepare(self.get(mask_id))
        return self._prepared[mask_id]


def _parse_entry(item: Any, path: Path, i: int) -> MaskEntry:
    where = f"{path}: masks[{i}]"
    try:
        kps = item["keypoints"]
        mesh = tuple(int(k["mesh"]) for k in kps)
        pts = np.array([(float(k["x"]), float(k["y"])) for k in kps], np.float32)
        lo, hi = (float(v) for v in item["yaw"])
        entry = MaskEntry(
            id=str(item["id"]),
            type=str(item["type"]),
            colour=str(item["colour"]),
            pose=str(item.get("pose", "front")),
            yaw_range=(lo, hi),
            image=path.parent / str(item["image"]),
            mesh=mesh,
            points=pts,
            margin=float(item.get("margin", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: malformed entry ({err!r})") from None
    if entry.type not in KINDS:
        raise ValueError(f"{where}: type {entry.type!r} is not one of {', '.join(KINDS)}")
    if not lo < hi:
        raise ValueError(f"{where}: yaw range [{lo}, {hi}] is empty")
    bad = [m for m in mesh if not 0 <= m < MESH_POINTS or m not in MIRROR]
    if bad or len(set(mesh)) != len(mesh) or len(mesh) < 3:
        raise ValueError(f"{where}: keypoints must be distinct known mesh indices (bad: {bad})")
    if not all(m in mesh for m in (234, 454)):
        raise ValueError(f"{where}: keypoints must include the oval ends 234 and 454")
    if not entry.image.is_file():
        raise ValueError(f"{where}: mask image not found: {entry.image}")
    return entry


# --------------------------------------------------------------------------------------------
# Geometry shared by the mask images and the faces
# --------------------------------------------------------------------------------------------


def oval_rows(mesh: tuple[int, ...]) -> np.ndarray:
    """Rows of a keypoint list that lie on the face oval, in oval order."""
    row = {m: r for r, m in enumerate(mesh)}
    return np.array([row[m] for m in FACE_OVAL if m in row], np.int64)


def add_margin(points: np.ndarray, rows: np.ndarray, margin: float) -> np.ndarray:
    """Append a ring of points `margin` × their distance outward from the oval's centre.

    The same rule on the mask image and on the face makes the ring an extrapolation of the
    oval, so what a mask draws just past the face's edge (straps, under the chin) lands just
    past the face's edge in the photo.
    """
    if margin <= 0 or len(rows) == 0:
        return np.asarray(points, np.float64)
    pts = np.asarray(points, np.float64)
    oval = pts[rows]
    ring = oval + margin * (oval - oval.mean(0))
    return np.vstack([pts, ring])


def delaunay(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles (rows of `points`), counter-clockwise in image coordinates."""
    pts = np.asarray(points, np.float64)
    x0, y0 = np.floor(pts.min(0)) - 2
    x1, y1 = np.ceil(pts.max(0)) + 2
    sub = cv2.Subdiv2D((int(x0), int(y0), int(x1 - x0) + 1, int(y1 - y0) + 1))
    # Subdiv2D hands back coordinates, not ids: map each vertex to its nearest input point.
    sub.insert([(float(x), float(y)) for x, y in pts])
    tris = []
    for t in sub.getTriangleList().reshape(-1, 3, 2):
        d = np.linalg.norm(pts[None, :, :] - t[:, None, :], axis=2)
        rows = d.argmin(1)
        if d[np.arange(3), rows].max() > 1e-3 or len(set(rows.tolist())) < 3:
            continue  # a triangle on Subdiv2D's outer bounding vertices
        a, b, c = pts[rows]
        cross = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        tris.append(rows if cross > 0 else rows[[0, 2, 1]])
    return np.array(tris, np.int32).reshape(-1, 3)


def triangle_areas(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Signed areas (positive = counter-clockwise in image coordinates, y down)."""
    a, b, c = (points[triangles[:, k]] for k in range(3))
    return 0.5 * (
        (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    )


def _prepare(entry: MaskEntry) -> _Prepared:
    rgba = cv2.imread(str(entry.image), cv2.IMREAD_UNCHANGED)
    if rgba is None or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise ValueError(f"{entry.image}: expected an RGBA PNG")
    img = rgba.astype(np.float32) / 255.0
    img[..., :3] *= img[..., 3:]  # premultiplied: resampling then never bleeds dark fringes
    levels = [img]
    for _ in range(_PYRAMID_LEVELS - 1):
        levels.append(cv2.pyrDown(levels[-1]))
    rows = oval_rows(entry.mesh)
    pts = add_margin(entry.points, rows, entry.margin)
    tris = delaunay(pts)
    areas = triangle_areas(pts, tris)
    tris = tris[areas > 0.5]  # hull slivers of collinear boundary points carry nothing
    row = {m: r for r, m in enumerate(entry.mesh)}
    width = float(np.linalg.norm(pts[row[234]] - pts[row[454]]))
    log.debug("mask %s: %d points, %d triangles", entry.id, len(pts), len(tris))
    return _Prepared(tuple(levels), pts, rows, tris, width, len(entry.mesh))


@functools.cache
def default_db() -> MaskDB:
    """The project's mask database, loaded once per process."""
    return MaskDB.load(DEFAULT_DB)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def render_mask(
    image_bgr: np.ndarray,
    mesh_points: np.ndarray,
    yaw: float,
    rng: np.random.Generator | None = None,
    mask_id: str | None = None,
    mirrored: bool = False,
    *,
    db: MaskDB | None = None,
    kind: str | list[str] | tuple[str, ...] | None = None,
    jitter: bool = True,
) -> np.ndarray:
    """A copy of `image_bgr` with a mask drawn on the face whose mesh is `mesh_points`.

    mesh_points: (478, 2) pixel coordinates (Face.points); yaw in degrees (Face.yaw) picks a
    mask drawn for that turn unless `mask_id` names one; `mirrored` is Face.mirrored. With an
    `rng` the mask is chosen at random and its fit, colour and grain jitter a little (training);
    without one the output depends on the inputs only. Raises ValueError on a bad image, a
    missing or degenerate mesh, or a mask region wholly outside the image.
    """
    img = _check_image(image_bgr)
    mesh = _check_mesh(mesh_points)
    db = db or default_db()
    entry = db.get(mask_id) if mask_id else db.choose(float(yaw), rng, kind)
    prep = db.prepared(entry.id)
    idx = [MIRROR[m] for m in entry.mesh] if mirrored else list(entry.mesh)
    eyes = [MIRROR[m] for m in _EYE_CORNERS] if mirrored else list(_EYE_CORNERS)
    scale = float(np.linalg.norm(mesh[eyes[0]] - mesh[eyes[1]]))
    dst = mesh[idx].astype(np.float64)
    _check_geometry(dst, scale, prep, len(entry.mesh))
    jit = rng if jitter else None
    if jit is not None:
        dst = _jitter_points(dst, scale, jit)
    dst = add_margin(dst, prep.oval_rows, entry.margin)
    out = img.copy()
    warped = _warp(prep, dst, img.shape[:2])
    if warped is None:
        raise ValueError("the mask region lies outside the image")
    rgba, (x0, y0) = warped
    h, w = rgba.shape[:2]
    roi = out[y0 : y0 + h, x0 : x0 + w]
    sigma = max(0.5, 0.008 * scale)  # a photo's edge is never one pixel sharp
    rgba = cv2.GaussianBlur(rgba, (0, 0), sigma)
    lit = _light(rgba, roi, img, (x0, y0), scale, jit)
    alpha = rgba[..., 3:]
    blend = roi.astype(np.float32) * (1.0 - alpha) + lit * 255.0
    out[y0 : y0 + h, x0 : x0 + w] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    return out


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an 8-bit BGR image, got {kind}")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise ValueError(f"expected an H×W×3 BGR image, got shape {image.shape}")
    return image


def _check_mesh(mesh_points: np.ndarray | None) -> np.ndarray:
    if mesh_points is None:
        raise ValueError("no face mesh: the mask needs the 478 mesh points of the face")
    mesh = np.asarray(mesh_points, np.float64)
    if mesh.ndim != 2 or mesh.shape[0] != MESH_POINTS or mesh.shape[1] < 2:
        raise ValueError(f"expected ({MESH_POINTS}, 2) mesh points in pixels, got {mesh.shape}")
    mesh = mesh[:, :2]
    if not np.isfinite(mesh).all():
        raise ValueError("the face mesh has non-finite points")
    return mesh


def _check_geometry(dst: np.ndarray, scale: float, prep: _Prepared, k: int) -> None:
    """A mesh that cannot carry a mask: collapsed, or far too small to see."""
    hull = cv2.convexHull(dst.astype(np.float32))
    area = float(cv2.contourArea(hull))
    if scale < 4.0 or area < 100.0:
        raise ValueError(
            f"degenerate face mesh (eye-corner distance {scale:.1f} px, "
            f"lower-face area {area:.0f} px²)"
        )
    # Faces come in many turns; a mesh with most triangles collapsed is not a face.
    tris = prep.triangles[(prep.triangles < k).all(1)]
    flat = np.abs(triangle_areas(dst, tris)) < 1e-6 * area
    if flat.mean() > 0.5:
        raise ValueError("degenerate face mesh: most mask triangles have no area")


def _jitter_points(dst: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """How a mask sits varies: a little lower or higher, wider, tilted, never over the eyes."""
    centre = dst.mean(0)
    s = rng.uniform(0.97, 1.03)
    a = math.radians(rng.uniform(-2.0, 2.0))
    rot = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    shift = np.array([rng.uniform(-0.02, 0.02), rng.uniform(-0.01, 0.04)]) * scale
    noise = rng.normal(0.0, 0.004 * scale, dst.shape)
    return (dst - centre) @ rot.T + centre + shift + noise


def _warp(
    prep: _Prepared, dst: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The mask warped triangle by triangle onto `dst`: premultiplied BGRA of the covered box.

    Rather than one warpAffine per triangle, each output pixel looks up which triangle covers
    it (rasterised once) and that triangle's inverse affine; a single remap then samples the
    mask. Back-facing triangles (folded behind the nose on a turned face) are rasterised first
    so the surface facing the camera wins.
    """
    hgt, wid = shape
    x0 = max(math.floor(dst[:, 0].min()), 0)
    y0 = max(math.floor(dst[:, 1].min()), 0)
    x1 = min(math.ceil(dst[:, 0].max()) + 1, wid)
    y1 = min(math.ceil(dst[:, 1].max()) + 1, hgt)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    # The pyramid level nearest the face's size from above: bilinear sampling never skips texels.
    face_w = float(np.linalg.norm(dst[prep.oval_rows[0]] - dst[prep.oval_rows[-1]]))
    ratio = prep.width / max(face_w, 1.0)
    level = int(np.clip(math.floor(math.log2(max(ratio, 1.0))), 0, len(prep.levels) - 1))
    src = (prep.points + 0.5) / (2**level) - 0.5
    tris = prep.triangles
    local = dst - (x0, y0)
    # Paint order: ring triangles (past the face's edge, behind it), then triangles folded
    # behind the nose on a turned face, then the surface facing the camera, which wins.
    rank = (tris < prep.n_keypoints).all(1).astype(np.int8) + (triangle_areas(local, tris) > 0)
    order = np.argsort(rank, kind="stable")
    ids = np.zeros((y1 - y0, x1 - x0), np.int32)
    for t in order:
        poly = np.round(local[tris[t]] * 16).astype(np.int32)
        cv2.fillConvexPoly(ids, poly, int(t) + 1, cv2.LINE_8, shift=4)
    inv = inverse_affines(local, src, tris)
    covered = ids > 0
    if not covered.any():
        return None
    ys, xs = np.nonzero(covered)
    m = inv[ids[covered] - 1]
    map_x = np.full(ids.shape, -10.0, np.float32)
    map_y = np.full(ids.shape, -10.0, np.float32)
    map_x[ys, xs] = m[:, 0, 0] * xs + m[:, 0, 1] * ys + m[:, 0, 2]
    map_y[ys, xs] = m[:, 1, 0] * xs + m[:, 1, 1] * ys + m[:, 1, 2]
    warped = cv2.remap(
        prep.levels[level], map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return warped, (x0, y0)


def inverse_affines(dst: np.ndarray, src: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """(T, 2, 3) affines taking each triangle at `dst` back onto the same one at `src`."""
    d = np.concatenate([dst[tris], np.ones((len(tris), 3, 1))], axis=2)  # (T, 3, 3)
    s = src[tris]  # (T, 3, 2)
    # A folded triangle can be singular on the face: give it a least-squares map, not a crash.
    det = np.abs(np.linalg.det(d))
    out = np.zeros((len(tris), 2, 3))
    ok = det > 1e-9
    if ok.any():
        out[ok] = np.linalg.solve(d[ok], s[ok]).transpose(0, 2, 1)
    for t in np.nonzero(~ok)[0]:
        out[t] = np.linalg.lstsq(d[t], s[t], rcond=None)[0].T
    return out.astype(np.float32)


def _light(
    rgba: np.ndarray,
    roi: np.ndarray,
    image: np.ndarray,
    origin: tuple[int, int],
    scale: float,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """The mask's premultiplied colour lit like the face under it (0..1, BGR)."""
    alpha = rgba[..., 3]
    weight = alpha > 0.5
    if weight.sum() < 16:
        return rgba[..., :3]
    lum = cv2.cvtColor(roi, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    under = lum[weight]
    lo, med, hi = np.percentile(under, (10, 50, 95))
    # Lips, teeth and nostrils are not lighting: clip them before the low-pass.
    clipped = np.clip(lum, lo, hi)
    shade = _lowpass_ratio(clipped, weight.astype(np.float32), 0.3 * scale, float(med))
    gain = _exposure(lum, weight, image, origin, rgba.shape[:2], float(med))
    x0, y0 = origin
    h, w = rgba.shape[:2]
    around = image[max(0, y0 - h) : y0 + 2 * h, max(0, x0 - w) : x0 + 2 * w]
    tint = _tint(roi, weight, around)
    colour = rgba[..., :3] * (shade[..., None] * gain) * tint
    # Light across a black mask is still seen (as sheen), though multiplying black gives black.
    colour += (0.12 * gain * (shade - 1.0))[..., None] * rgba[..., 3:]
    if rng is not None:
        colour = colour * rng.uniform(0.92, 1.06) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
        grain = rng.normal(0.0, 1.0, alpha.shape).astype(np.float32)
    else:
        grain = np.random.default_rng(0).normal(0.0, 1.0, alpha.shape).astype(np.float32)
    # Sensor grain: a flat synthetic surface is the first thing that gives a paste-on away.
    colour += (grain * (1.6 / 255.0))[..., None] * rgba[..., 3:]
    return np.clip(colour, 0.0, rgba[..., 3:])


def _lowpass_ratio(lum: np.ndarray, weight: np.ndarray, sigma: float, ref: float) -> np.ndarray:
    """Broad light over the masked skin relative to its median (normalised convolution)."""
    h, w = lum.shape
    k = max(1, round(min(h, w) / 24))  # blur on a small copy: the light is smooth anyway
    small = (max(1, w // k), max(1, h // k))
    num = cv2.resize(lum * weight, small, interpolation=cv2.INTER_AREA)
    den = cv2.resize(weight, small, interpolation=cv2.INTER_AREA)
    s = max(sigma / k, 0.5)
    num = cv2.GaussianBlur(num, (0, 0), s)
    den = cv2.GaussianBlur(den, (0, 0), s)
    ratio = num / np.maximum(den, 1e-3) / max(ref, 1e-3)
    ratio = np.where(den > 1e-3, ratio, 1.0).astype(np.float32)
    log.debug("light: ratio %.2f..%.2f", float(ratio.min()), float(ratio.max()))
    ratio = cv2.resize(ratio, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(ratio, 0.45, 1.5)


def _exposure(
    lum: np.ndarray,
    weight: np.ndarray,
    image: np.ndarray,
    origin: tuple[int, int],
    size: tuple[int, int],
    skin: float,
) -> float:
    """How bright the scene is lit, from the skin and the face's brightest parts.

    Skin alone would darken masks on dark skin; highlights alone would light a mask brightly on
    a face in shadow against a bright window; their geometric mean is wrong by less either way.
    """
    x0, y0 = origin
    h, w = size
    box = image[max(0, y0 - h // 2) : y0 + h, x0 : x0 + w]
    white = float(np.percentile(cv2.cvtColor(box, cv2.COLOR_BGR2GRAY), 97)) / 255.0
    return float(np.clip(math.sqrt((skin / 0.45) * (white / 0.9)), 0.3, 1.15))


def _tint(roi: np.ndarray, weight: np.ndarray, around: np.ndarray) -> np.ndarray:
    """The light's colour cast, from the skin under the mask and from the face's surroundings.

    The skin shares the mask's light but has its own tone; grey world over the surroundings
    knows no skin tone but takes a lawn's green for green light. Their geometric mean, softened
    and clipped, is wrong by less than either.
    """
    skin = roi[weight].reshape(-1, 3).astype(np.float32).mean(0) + 1.0
    grey = around.reshape(-1, 3).astype(np.float32).mean(0) + 1.0
    cast = (skin / skin.sum() / _SKIN_CHROMA) * (grey / grey.mean())
    return np.clip(cast**0.25, 0.93, 1.07).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Faces from a pipeline; training augmentation
# --------------------------------------------------------------------------------------------


class NoMeshError(ValueError):
    """The face was found without a mesh (or not at all): there is nothing to fit a mask to."""


def face_mesh(pipeline: Any, image: np.ndarray) -> Face:
    """The largest face's mesh, found by the pipeline's landmarker (as the door finds it).

    Raises NoMeshError when no face is found, when only the second detector saw it (no mesh),
    or when the mesh disagrees with that detector (a misfitted mesh would misplace the mask).
    """
    from edge.vision.quality import FaceRejected  # the pipeline's own reason for no face

    try:
        loc = pipeline.detect(image)
    except FaceRejected as err:
        raise NoMeshError(f"no face to mask: {err}") from None
    if loc.mesh is None:
        raise NoMeshError("the face was found without a mesh (detector only): cannot fit a mask")
    if loc.source != "mesh":
        raise NoMeshError("the face mesh disagrees with the detector (misfitted): not masked")
    return loc.mesh


def mask_face(
    pipeline: Any,
    image: np.ndarray,
    rng: np.random.Generator | None = None,
    mask_id: str | None = None,
    kind: str | list[str] | tuple[str, ...] | None = None,
    db: MaskDB | None = None,
) -> tuple[np.ndarray, str]:
    """Find the largest face's mesh with the pipeline and draw a mask on it.

    Returns (masked copy, mask id); raises NoMeshError as `face_mesh` does.
    """
    face = face_mesh(pipeline, image)
    db = db or default_db()
    entry = db.get(mask_id) if mask_id else db.choose(face.yaw, rng, kind)
    out = render_mask(image, face.points, face.yaw, rng, entry.id, face.mirrored, db=db)
    return out, entry.id


class MaskAugment:
    """Training transform: with `probability`, a random mask on a BGR image with a known mesh.

    Call it as `aug(image, mesh_points, yaw, mirrored=False)`; `apply` also says which mask
    was drawn (None when it left the image alone). A mesh that cannot carry a mask leaves the
    image unmasked and is counted in `skipped`: one bad sample must not stop a training run.
    """

    def __init__(
        self,
        probability: float,
        db: MaskDB | None = None,
        seed: int | None = None,
        kinds: tuple[str, ...] | None = None,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        self.probability = probability
        self.db = db or default_db()
        self.kinds = kinds
        self.rng = np.random.default_rng(seed)
        self.skipped = 0

    def apply(
        self, image: np.ndarray, mesh_points: np.ndarray, yaw: float, mirrored: bool = False
    ) -> tuple[np.ndarray, str | None]:
        if self.rng.random() >= self.probability:
            return image, None
        entry = self.db.choose(yaw, self.rng, self.kinds)
        try:
            out = render_mask(image, mesh_points, yaw, self.rng, entry.id, mirrored, db=self.db)
        except ValueError as err:
            self.skipped += 1
            log.debug("mask augmentation skipped: %s", err)
            return image, None
        return out, entry.id

    def __call__(
        self, image: np.ndarray, mesh_points: np.ndarray, yaw: float, mirrored: bool = False
    ) -> np.ndarray:
        return self.apply(image, mesh_points, yaw, mirrored)[0]

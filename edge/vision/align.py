"""The one canonical alignment: mesh points → 5 points → ArcFace 112×112 crop.

Enrollment, verification, training crops and evaluation all call `align_face`, so the door and
the model kit see faces the same way. A golden test pins the transform.
"""

from __future__ import annotations

import cv2
import numpy as np

# ArcFace's 112×112 reference positions: eye (image left), eye (image right), nose tip,
# mouth corner (image left), mouth corner (image right).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
ALIGNED_SIZE = 112

# Mesh indices in template order: iris centres (refined mesh), nose tip, mouth corners.
MESH_FIVE = (468, 473, 1, 61, 291)
# A mesh found on a mirrored image names each side's points by the other side's index.
MESH_FIVE_MIRRORED = (473, 468, 1, 291, 61)


def five_points(mesh: np.ndarray, mirrored: bool = False) -> np.ndarray:
    """The 5 ArcFace points from a 478-point mesh (pixels), shape (5, 2)."""
    if mesh.shape[0] < 478:
        raise ValueError(f"need the 478-point refined mesh, got {mesh.shape[0]} points")
    idx = MESH_FIVE_MIRRORED if mirrored else MESH_FIVE
    return mesh[list(idx), :2].astype(np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) mapping src onto dst; 2×3.

    Umeyama's closed form: exact and deterministic, with no RANSAC randomness.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # no reflections
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_face(image: np.ndarray, points5: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """Warp `image` so points5 land on the ArcFace template; returns a size×size crop."""
    template = ARCFACE_TEMPLATE * (size / ALIGNED_SIZE)
    m = similarity_transform(points5, template)
    return cv2.warpAffine(
        image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def mesh_box_crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The tight face box of the mesh points (forehead to chin, cheek to cheek): no hair.

    The mask classifier was trained on tight detector boxes; padding the crop ruins it.
    """
    x, y, w, h = box
    crop = image[y : y + h, x : x + w]
    if crop.size == 0:
        raise ValueError(f"empty face box {box}")
    return crop
